package workapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// agentOn serves h as an agent would on every connection ln accepts:
// preamble, then HTTP/2.
func agentOn(t *testing.T, ln net.Listener, h http.Handler) (hangup func()) {
	t.Helper()
	srv := &http2.Server{}
	conns := make(chan net.Conn, 16)
	hangup = func() {
		for {
			select {
			case c := <-conns:
				c.Close()
			default:
				return
			}
		}
	}
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- raw
			go func() {
				conn, err := GuestPreamble(raw, token)
				if err != nil {
					raw.Close()
					return
				}
				srv.ServeConn(conn, &http2.ServeConnOpts{Handler: h})
			}()
		}
	}()
	return hangup
}

func TestClientCallsAndReconnects(t *testing.T) {
	ln, err := net.Listen("unix", t.TempDir()+"/data.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dials atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /processes/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "huge" {
			w.Write([]byte(`{"id":"` + strings.Repeat("x", MaxJSONBody) + `"}`))
			return
		}
		if r.PathValue("id") != "p1" {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(ErrorBody{Error: "no process \x1b[31mp9"})
			return
		}
		json.NewEncoder(w).Encode(Process{ID: "p1", State: StateRunning})
	})
	mux.HandleFunc("GET /processes/{id}/output", func(w http.ResponseWriter, r *http.Request) {
		WriteOutput(w, FrameStdout, 0, []byte("hello"))
		code := 0
		WriteJSONFrame(w, FrameExit, Exit{Code: &code})
	})
	hangup := agentOn(t, ln, mux)
	c := NewClient(func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "unix", ln.Addr().String())
	}, token)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	p, err := c.Process(ctx, "p1")
	if err != nil || p.ID != "p1" {
		t.Fatalf("process: %+v %v", p, err)
	}
	_, err = c.Process(ctx, "p9")
	var we *Error
	if !errors.As(err, &we) || we.Status != 404 || strings.Contains(we.Message, "\x1b") || !strings.Contains(we.Message, "no process") {
		t.Fatalf("want a clean 404, got %#v", err)
	}
	if _, err := c.Process(ctx, "huge"); err == nil || !strings.Contains(err.Error(), "over") {
		t.Fatalf("an oversized answer was taken: %v", err)
	}
	out, err := c.Output(ctx, "p1", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	f, err := out.Next()
	if err != nil || string(f.Data) != "hello" {
		t.Fatalf("frame %+v %v", f, err)
	}
	if f, err = out.Next(); err != nil || f.Exit == nil {
		t.Fatalf("exit frame %+v %v", f, err)
	}
	out.Close()
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d connections for sequential calls, want 1", n)
	}
	// A broken connection is replaced on the next call.
	hangup() // the agent goes away (as on a reboot)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err = c.Process(ctx, "p1"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("after the agent hung up: %v", err)
	}
	if n := dials.Load(); n < 2 {
		t.Fatalf("no new connection after a hang-up")
	}
}
