package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/coder/websocket"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// A daemon that starts a process and, on its attach socket, speaks the
// terminal protocol: hello, the input echoed as output, exit 7 at eof.
func fakeShellDaemon(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/vms/{id}/processes", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Argv []string           `json:"argv"`
			PTY  api.CreateTerminal `json:"pty"`
		}
		if r.Header.Get("Authorization") != "Bearer k" || json.NewDecoder(r.Body).Decode(&body) != nil || len(body.Argv) == 0 || body.PTY.Cols != 80 {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"id":"p1"}`))
	})
	mux.HandleFunc("GET /v1/vms/{id}/processes/{pid}/attach", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer k" || r.PathValue("pid") != "p1" || r.URL.Query().Get("offset") != "0" {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no process"}}`))
			return
		}
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		ctx := r.Context()
		_ = ws.Write(ctx, websocket.MessageText, []byte(`{"type":"hello","process":"p1","offset":0}`))
		for {
			typ, p, err := ws.Read(ctx)
			if err != nil {
				return
			}
			if typ == websocket.MessageBinary {
				_ = ws.Write(ctx, websocket.MessageBinary, p)
				continue
			}
			var c api.TerminalControl
			if json.Unmarshal(p, &c) == nil && c.Type == api.TerminalControlTypeEOF {
				_ = ws.Write(ctx, websocket.MessageText, []byte(`{"type":"exit","code":7}`))
				_ = ws.Close(websocket.StatusNormalClosure, "process exited")
				return
			}
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestShellForwardsInputAndExitCode(t *testing.T) {
	srv := fakeShellDaemon(t)
	in, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = in.WriteString("echo hello\n")
	_, _ = in.Seek(0, 0)
	var stdout, stderr bytes.Buffer
	err = vmShell(context.Background(), client.New(srv.URL, "k"), "vm1", shellOptions{}, in, output{stdout: &stdout, stderr: &stderr})
	var ec exitCode
	if !errors.As(err, &ec) || ec != 7 {
		t.Fatalf("vm shell returned %v, want exit status 7", err)
	}
	if stdout.String() != "echo hello\n" {
		t.Fatalf("output %q", stdout.String())
	}
	if code := Main([]string{"vm", "shell", "--addr", srv.URL, "--key", "wrong", "vm1"}, &stdout, &stderr); code != 1 {
		t.Fatalf("a refused shell exited %d, want 1", code)
	}
}
