package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/hearth-project/hearth/internal/agent/guestuser"
	"github.com/hearth-project/hearth/internal/agent/procs"
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/workapi"
	"github.com/hearth-project/hearth/test/testrun"
)

// workClient is the host's end of a data channel connection.
type workClient struct {
	t  *testing.T
	cc *http2.ClientConn
	c  *http.Client
}

// dialWork proves token on c and speaks HTTP/2 over it, as the host does.
func dialWork(t *testing.T, c net.Conn, token []byte) *workClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc, err := workapi.HostPreamble(ctx, c, token)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &workClient{t: t, cc: cc, c: &http.Client{Transport: cc}}
}

// call sends a request and decodes its JSON answer, which must have
// status.
func (w *workClient) call(method, path string, body any, status int, out any) {
	w.t.Helper()
	var r io.Reader
	if b, ok := body.([]byte); ok {
		r = bytes.NewReader(b)
	} else if body != nil {
		j, _ := json.Marshal(body)
		r = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, "http://agent"+path, r)
	resp, err := w.c.Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		w.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			w.t.Fatal(err)
		}
	}
}

// output reads a process's output to its exit.
func (w *workClient) output(id string) (string, *workapi.Exit) {
	w.t.Helper()
	resp, err := w.c.Get("http://agent/processes/" + id + "/output?offset=0&follow=1")
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	fr := workapi.NewFrameReader(resp.Body)
	var out strings.Builder
	for {
		f, err := fr.Next()
		if err != nil {
			w.t.Fatalf("output: %v (have %q)", err, out.String())
		}
		switch f.Kind {
		case workapi.FrameStdout, workapi.FrameStderr:
			out.Write(f.Data)
		case workapi.FrameExit:
			return out.String(), f.Exit
		}
	}
}

// workOptions sets opts up to run processes as the user running the test,
// named hearth in a passwd of the test's own.
func workOptions(t *testing.T, opts Options) Options {
	t.Helper()
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	line := fmt.Sprintf("hearth:x:%d:%d::%s:/bin/sh\n", os.Geteuid(), os.Getegid(), dir)
	if err := os.WriteFile(passwd, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(group, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	opts.procs = procs.Config{
		Users: guestuser.Files{Passwd: passwd, Group: group},
		Env:   []string{testrun.OwnerEnv + "=" + os.Getenv(testrun.OwnerEnv)},
	}
	return opts
}

// TestDataChannelListener runs the agent with its data channel on a Unix
// socket: a process started over one connection runs on, and is found
// again, over the next.
func TestDataChannelListener(t *testing.T) {
	t.Cleanup(checkGoroutines(t))
	token := newToken(t)
	opts, _ := testOptions(t, token)
	opts = workOptions(t, opts)
	dir, err := os.MkdirTemp("", "hearth") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(agentapi.FormatToken(token)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.TokenSources = []string{tokenFile}
	opts.Listen = "unix:" + filepath.Join(dir, "ctl.sock")
	opts.DataListen = "unix:" + filepath.Join(dir, "data.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	stop := sync.OnceValue(func() error { cancel(); return <-done })
	t.Cleanup(func() {
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v", err)
		}
	})

	dial := func() net.Conn {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.Dial("unix", filepath.Join(dir, "data.sock"))
			if err == nil {
				t.Cleanup(func() { c.Close() })
				return c
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	first := dialWork(t, dial(), token)
	var p workapi.Process
	first.call("POST", "/processes", workapi.ProcessSpec{Argv: []string{"sh", "-c", "read x; echo got $x"}, Stdin: true}, http.StatusCreated, &p)
	first.cc.Close()

	// A wrong token gets no answer: the host's preamble fails.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	if _, err := workapi.HostPreamble(ctx2, dial(), newToken(t)); !errors.Is(err, workapi.ErrBadProof) {
		t.Errorf("preamble with a wrong token: %v", err)
	}

	second := dialWork(t, dial(), token)
	var q workapi.Process
	second.call("GET", "/processes/"+p.ID, nil, http.StatusOK, &q)
	if q.State != workapi.StateRunning {
		t.Fatalf("after a reconnect: %+v", q)
	}
	defer func() {
		if t.Failed() {
			var q workapi.Process
			second.call("GET", "/processes/"+p.ID, nil, http.StatusOK, &q)
			t.Logf("%+v %+v", q, q.Exit)
			out, _ := second.output(p.ID)
			t.Logf("%q", out)
		}
	}()
	second.call("POST", "/processes/"+p.ID+"/stdin?eof=1", []byte("again\n"), http.StatusNoContent, nil)
	if out, e := second.output(p.ID); out != "got again\n" || e.Code == nil || *e.Code != 0 {
		t.Errorf("output %q, exit %+v", out, e)
	}

	// The agent kills what still runs when it stops.
	var r workapi.Process
	second.call("POST", "/processes", workapi.ProcessSpec{Argv: []string{"sleep", "100"}}, http.StatusCreated, &r)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
	if err := syscall.Kill(r.PID, 0); err == nil {
		t.Errorf("process %d outlived the agent", r.PID)
	}
}

// TestWorkMuxErrors checks that a request no route takes is answered
// with an ErrorBody too.
func TestWorkMuxErrors(t *testing.T) {
	h := workMux(procs.NewManager(procs.Config{}))
	for _, tc := range []struct {
		method, path string
		status       int
		allow, want  string
	}{
		{"GET", "/nope", http.StatusNotFound, "", "GET /nope: not found"},
		{"DELETE", "/processes", http.StatusMethodNotAllowed, "GET, HEAD, POST", "DELETE /processes: method not allowed"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, "http://agent"+tc.path, nil))
		var e workapi.ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || rec.Code != tc.status || e.Error != tc.want ||
			rec.Header().Get("Allow") != tc.allow || rec.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %q %v, headers %v", tc.method, tc.path, rec.Code, rec.Body.String(), err, rec.Header())
		}
	}
}

func TestDataChannelChoice(t *testing.T) {
	for _, tc := range []struct {
		control    channel
		dataListen string
		want       channel
		ok         bool
	}{
		{channel{}, "", channel{}, true},
		{channel{network: "vsock", port: 1024}, "", channel{network: "vsock", port: workapi.VsockPort}, true},
		{channel{network: "unix", path: "/x"}, "", channel{}, false},
		{channel{network: "unix", path: "/x"}, "unix:/y", channel{network: "unix", path: "/y"}, true},
		{channel{}, "vsock", channel{network: "vsock", port: workapi.VsockPort}, true},
		{channel{}, "vsock:7", channel{network: "vsock", port: 7}, true},
	} {
		got, ok, err := dataChannel(tc.control, Options{DataListen: tc.dataListen})
		if err != nil || ok != tc.ok || got != tc.want {
			t.Errorf("dataChannel(%v, %q) = %v, %v, %v; want %v, %v", tc.control, tc.dataListen, got, ok, err, tc.want, tc.ok)
		}
	}
	if err := (Options{DataListen: "tcp:1"}).Validate(); err == nil || !strings.Contains(err.Error(), "data channel") {
		t.Errorf("bad -data-listen: %v", err)
	}
}
