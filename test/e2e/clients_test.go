package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/test/connflood"
	"github.com/hearth-project/hearth/test/netnstest"
)

// The real daemon, with its default [api] limits, against hostile
// clients: 24,000 connections from the administrator's own address that
// each send a request without a key and then idle; a body trickled a byte
// every 2 s, headers trickled, silence and an idle keep-alive, each cut
// within 60 s; and exec requests a real guest agent would refuse, each a
// 400 naming the field.
func TestHostileClients(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 10*time.Minute)

	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal", MemoryMiB: 192})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.alice.WaitVM(ctx, v.ID, "ready", bootWait); err != nil {
		t.Fatal(err)
	}

	t.Run("exec input", func(t *testing.T) {
		for name, c := range map[string]struct{ body, field string }{
			"too many argv entries":  {`{"argv":[` + strings.TrimSuffix(strings.Repeat(`"a",`, 1025), ",") + `]}`, "argv"},
			"env without =":          {`{"argv":["env"],"env":["FOO"]}`, "env"},
			"relative dir":           {`{"argv":["ls"],"dir":"tmp"}`, "dir"},
			"NUL in argv":            {`{"argv":["echo","a\u0000b"]}`, "argv"},
			"overflowing timeout":    {`{"argv":["ls"],"timeout_seconds":9223372037}`, "timeout_seconds"},
			"timeout wrapping to 2s": {`{"argv":["ls"],"timeout_seconds":36028797018963970}`, "timeout_seconds"},
		} {
			msg, err := badExec(ctx, d.alice, v.ID, c.body)
			if err != nil || !strings.Contains(msg, c.field) {
				t.Errorf("%s: %q %v; want a 400 naming %s", name, msg, err, c.field)
			}
		}
		res, err := d.alice.Exec(ctx, v.ID, api.ExecRequest{Argv: []string{"echo", "still", "fine"}})
		if err != nil || strings.TrimSpace(res.Stdout) != "still fine" {
			t.Fatalf("a valid exec after the refusals: %+v %v", res, err)
		}
	})

	t.Run("idle flood", func(t *testing.T) {
		// More than the daemon's descriptors where it inherits CI's
		// limit of 20,000, so holding them all would lock everyone out.
		start := time.Now()
		fl := connflood.Open(t, d.addr, 24000, connflood.Options{Prefix: []string{"ip", "netns", "exec", d.netns}, RequestEvery: 1})
		t.Logf("%d connections opened in %s (%d failed)", fl.Opened, time.Since(start), fl.Failed)
		// On a new connection: the admin client's pooled one may be among
		// those held.
		start = time.Now()
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		vms, err := d.client(d.admin.Key).ListVMs(actx, api.ListVMsParams{})
		if err != nil || len(vms) != 1 {
			t.Fatalf("admin request with %d flood connections open: %v", fl.Opened, err)
		}
		t.Logf("admin answered in %s", time.Since(start))
		fl.Close()
	})

	t.Run("slow and idle clients", func(t *testing.T) {
		dial := netnstest.Dialer(d.netns)
		cases := map[string]func(c net.Conn){
			"trickled body": func(c net.Conn) {
				_, _ = io.WriteString(c, "POST /v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+d.alice.Key+
					"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
				go func() {
					for range 60 {
						time.Sleep(2 * time.Second)
						if _, err := io.WriteString(c, " "); err != nil {
							return
						}
					}
				}()
			},
			"trickled headers": func(c net.Conn) {
				go func() {
					for _, b := range []byte("GET /v1/vms HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 60)) {
						if _, err := c.Write([]byte{b}); err != nil {
							return
						}
						time.Sleep(time.Second)
					}
				}()
			},
			"silent": func(net.Conn) {},
			"idle keep-alive": func(c net.Conn) {
				_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			},
		}
		var wg sync.WaitGroup
		for name, f := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := dial(ctx, "tcp", d.addr)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				start := time.Now()
				f(c)
				_ = c.SetReadDeadline(time.Now().Add(90 * time.Second))
				br := bufio.NewReader(c)
				status := ""
				if resp, err := http.ReadResponse(br, nil); err == nil {
					status = resp.Status
					_, _ = io.Copy(io.Discard, resp.Body)
				}
				if _, err := br.ReadByte(); err == nil || isTimeout(err) {
					t.Errorf("%s: still open after %s (err %v)", name, time.Since(start), err)
					return
				}
				t.Logf("%s: cut after %s (answer %q)", name, time.Since(start).Round(time.Second), status)
				if d := time.Since(start); d > 60*time.Second {
					t.Errorf("%s: cut only after %s", name, d)
				}
				if name == "trickled body" && !strings.HasPrefix(status, "408") {
					t.Errorf("trickled body answered %q, want 408", status)
				}
			}()
		}
		wg.Wait()
	})
}

// badExec posts body, as it is, as an exec request for VM id and returns
// the message of the 400 it answers, or an error saying what it answered
// instead.
func badExec(ctx context.Context, c *client.Client, id, body string) (string, error) {
	resp, err := c.API().ExecVMWithBody(ctx, id, "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	ans, err := api.ParseExecVMResponse(resp)
	if err != nil {
		return "", err
	}
	if ans.JSON400 == nil {
		return "", fmt.Errorf("answer %s: %s", resp.Status, ans.Body)
	}
	return ans.JSON400.Error.Message, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
