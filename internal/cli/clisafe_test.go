package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/safetext"
)

// What a hostile guest can get into an API answer (an agent version, a
// failure reason, its console) to take over the terminal of whoever runs
// the CLI.
const evil = "boom\x1b]0;owned\x07\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07\u009b31m\u202eevil\x7f"

// hostileAPI answers like a daemon relaying a hostile guest's text, as an
// older daemon that did not clean it would.
func hostileAPI(t *testing.T) (addr string) {
	vm := map[string]any{"id": "vm-1", "user": "alice", "state": "failed", "failure_reason": "guest says " + evil,
		"agent": map[string]any{"version": evil}, "console_tail": "login: " + evil + "\n"}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"vms": []any{vm}})
	})
	mux.HandleFunc("GET /v1/vms/vm-1", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(vm)
	})
	mux.HandleFunc("GET /v1/vms/vm-1/wait", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusConflict)
		json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": "conflict",
			"message": "vm vm-1 is failed: guest says " + evil}, "vm": vm})
	})
	mux.HandleFunc("GET /v1/vms/vm-1/console", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("[    0.1] booting\r\n" + evil + "\xe2\x82"))
		w.(http.Flusher).Flush()
		w.Write([]byte("\xac end\n"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func runCLI(t *testing.T, addr string, args ...string) (stdout, stderr string) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "hearth.toml")
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	args = append(args, "--config", cfg, "--state-dir", dir, "--addr", addr, "--key", "k")
	var out, errOut bytes.Buffer
	Main(args, &out, &errOut)
	return out.String(), errOut.String()
}

// No guest text reaches the terminal with a control character in it.
func TestCLIPrintsNoGuestControlCharacters(t *testing.T) {
	addr := hostileAPI(t)
	for _, args := range [][]string{
		{"vm", "list"},
		{"vm", "get", "vm-1"},
		{"vm", "wait", "vm-1", "--timeout", "1s"},
		{"vm", "console", "vm-1"},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			stdout, stderr := runCLI(t, addr, args...)
			for name, s := range map[string]string{"stdout": stdout, "stderr": stderr} {
				if !safetext.IsClean(s) {
					t.Errorf("%s carries control characters: %q", name, s)
				}
			}
			if !strings.Contains(stdout+stderr, "boom") {
				t.Errorf("the text itself is gone: %q %q", stdout, stderr)
			}
		})
	}
	// The console's bytes as they are, when asked for.
	stdout, _ := runCLI(t, addr, "vm", "console", "vm-1", "--raw")
	if !strings.Contains(stdout, evil) {
		t.Errorf("--raw changed the console: %q", stdout)
	}
	stdout, _ = runCLI(t, addr, "vm", "console", "vm-1")
	if !strings.Contains(stdout, "booting\n") || !strings.Contains(stdout, "€ end") {
		t.Errorf("console cleaned wrongly: %q", stdout)
	}
}
