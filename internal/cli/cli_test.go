package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Every command's -h says where it runs: client commands through the API
// from anywhere, host commands on this host as root with the daemon
// stopped if need be.
func TestEveryCommandSaysWhereItRuns(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "list"}, clientNote},
		{[]string{"vm", "create"}, clientNote},
		{[]string{"login", "start"}, clientNote},
		{[]string{"apikey", "list"}, "talk to the daemon through its API only"},
		{[]string{"apikey", "create"}, "runs on this host, as\nroot, and works with the daemon stopped"},
		{[]string{"image", "build"}, clientNote},
		{[]string{"image", "build"}, "--local builds on this host without the daemon"},
		{[]string{"image", "list"}, clientNote},
		{[]string{"image", "cancel"}, clientNote},
		{[]string{"vault", "rotate"}, hostNote},
		{[]string{"host", "setup"}, hostNote},
		{[]string{"doctor"}, hostNote},
		{[]string{"serve"}, "on this host, as root"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := Main(append(tc.args, "-h"), &out, &errOut); code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.Contains(errOut.String(), tc.want) || !strings.Contains(errOut.String(), "Flags:") {
				t.Errorf("-h does not say %q:\n%s", tc.want, errOut.String())
			}
		})
	}
	var out, errOut bytes.Buffer
	Main([]string{"help"}, &out, &errOut)
	for _, want := range []string{"Client commands talk to a running daemon through its API",
		"Host commands run on this host, as root, and work with the daemon stopped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("hearth help does not say %q", want)
		}
	}
}

// A client command needs an address and a key and nothing from the host:
// not the configuration (which another user may not be able to read), not
// a home directory.
func TestClientNeedsOnlyAddressAndKey(t *testing.T) {
	var gotKey string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotKey = r.Header.Get("Authorization")
		json.NewEncoder(w).Encode(map[string]any{"vms": []any{}})
	}))
	t.Cleanup(srv.Close)
	t.Setenv("HOME", "/nonexistent")
	t.Setenv("HEARTH_CONFIG", "/nonexistent/hearth.toml") // would fail to load
	t.Setenv("HEARTH_ADDR", strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("HEARTH_API_KEY", "hearth_k_secret")
	var out, errOut bytes.Buffer
	if code := Main([]string{"vm", "list"}, &out, &errOut); code != 0 {
		t.Fatalf("vm list: exit %d: %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "ID ") || gotKey != "Bearer hearth_k_secret" {
		t.Fatalf("vm list printed %q; the daemon saw key %q", out.String(), gotKey)
	}
	// Without a key, the configuration is what is left to go by: one
	// asked for by name must load.
	t.Setenv("HEARTH_API_KEY", "")
	out.Reset()
	errOut.Reset()
	if code := Main([]string{"vm", "list"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "/nonexistent/hearth.toml") {
		t.Fatalf("vm list without a key: exit %d: %s", code, errOut.String())
	}
}
