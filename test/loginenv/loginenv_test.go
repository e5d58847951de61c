package loginenv

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/image/spec"
	"github.com/hearth-project/hearth/internal/provider"
)

// The line-based edit of browser.yaml must still give a valid spec with
// the fake CLI and without Node.js, or the login test and benchmark would
// build an image that silently differs from what they claim.
func TestSpec(t *testing.T) {
	bin := []byte("\x7fELF fake binary\x00\xff")
	path, err := WriteSpec(t.TempDir(), "browser-login-test", writeTemp(t, bin))
	if err != nil {
		t.Fatal(err)
	}
	s, err := spec.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "browser-login-test" || s.Role != "browser" {
		t.Errorf("name %q role %q", s.Name, s.Role)
	}
	if s.Node != nil || len(s.NPM) != 0 || slices.Contains(s.KeyFiles, "/usr/local/bin/node") {
		t.Errorf("Node.js left in: node %+v npm %v key files %v", s.Node, s.NPM, s.KeyFiles)
	}
	var found bool
	for _, f := range s.Files {
		if f.Path == FakeCLIPath {
			found = true
			if !bytes.Equal(f.Data(), bin) || f.Mode.Perm() != 0o755 {
				t.Errorf("fake CLI file: mode %v, content differs: %v", f.Mode.Perm(), !bytes.Equal(f.Data(), bin))
			}
		}
	}
	if !found {
		t.Errorf("no %s in the spec's files", FakeCLIPath)
	}
	if !slices.Contains(s.Ports, 5900) || !slices.Contains(s.Packages, "chromium") {
		t.Errorf("the browser parts are gone: ports %v packages %v", s.Ports, s.Packages)
	}
}

func TestProvider(t *testing.T) {
	dir := t.TempDir()
	if err := WriteProviders(dir, AuthBase("198.51.100.2")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "fake_cli.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := provider.Parse(b, "fake_cli.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"FAKE_AUTHORIZE_URL=http://198.51.100.2:8080/authorize", "FAKE_TOKEN_URL=http://198.51.100.2:8080/token"}
	for _, w := range want {
		if !slices.Contains(p.Login.Env, w) {
			t.Errorf("env %v lacks %s", p.Login.Env, w)
		}
	}
	if p.Name != "fake_cli" || !strings.Contains(strings.Join(p.Login.Argv, " "), "fakeprovider") {
		t.Errorf("provider %q argv %v", p.Name, p.Login.Argv)
	}
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fakeprovider")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
