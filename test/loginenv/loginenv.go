// Package loginenv builds what a provider login against fakes needs, for
// the end-to-end login test (test/e2e) and the login benchmark
// (bench/loginbench), so that both run the same setup: the browser image's
// spec with the fake provider CLI of test/fakeprovider baked in, and a
// providers directory whose fake_cli login talks to the fake authorization
// server of test/fakeauth.
package loginenv

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hearth-project/hearth/images"
	"github.com/hearth-project/hearth/providers"
)

// FakeAuthPort is the port the fake authorization server listens on.
const FakeAuthPort = 8080

// FakeCLIPath is where Spec puts the fake provider CLI in the guest (on
// the login's PATH, as fake_cli's argv expects).
const FakeCLIPath = "/usr/local/bin/fakeprovider"

// Spec returns the browser image's spec (images/browser.yaml) named name,
// with fakeCLI (a static build of test/fakeprovider) at FakeCLIPath and
// without Node.js and the real CLIs, which the fake does not need.
func Spec(name string, fakeCLI []byte) ([]byte, error) {
	src, err := images.FS.ReadFile("browser.yaml")
	if err != nil {
		return nil, err
	}
	var out []string
	skip, placed := false, false
	for _, line := range strings.Split(string(src), "\n") {
		switch {
		case strings.HasPrefix(line, "name: "):
			line = "name: " + name
		case line == "node:" || line == "npm:":
			skip = true
			continue
		case skip && (strings.HasPrefix(line, "  ")):
			continue
		case line == "  - /usr/local/bin/node":
			continue
		case line == "files:":
			line = "files:\n  - path: " + FakeCLIPath + "\n    mode: \"0755\"\n    content_base64: " + base64.StdEncoding.EncodeToString(fakeCLI)
			placed = true
		}
		skip = false
		out = append(out, line)
	}
	if !placed {
		return nil, errors.New("images/browser.yaml has no top-level files: list to add the fake provider CLI to")
	}
	return []byte(strings.Join(out, "\n")), nil
}

// WriteSpec writes Spec, with the fake CLI binary read from fakeCLI, to
// dir/<name>.yaml and returns that path (what `hearth image build
// --profile` takes).
func WriteSpec(dir, name, fakeCLI string) (string, error) {
	bin, err := os.ReadFile(fakeCLI)
	if err != nil {
		return "", err
	}
	spec, err := Spec(name, bin)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, spec, 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// Provider returns the fake_cli provider (providers/testdata) with its
// login pointed at the fake authorization server at authBase, e.g.
// "http://198.51.100.2:8080" as the guest reaches it.
func Provider(authBase string) ([]byte, error) {
	src, err := providers.TestFS.ReadFile("testdata/fake_cli.yaml")
	if err != nil {
		return nil, err
	}
	y := strings.Replace(string(src), "\n  argv:", "\n  env:\n    - FAKE_AUTHORIZE_URL="+authBase+"/authorize\n    - FAKE_TOKEN_URL="+authBase+"/token\n  argv:", 1)
	if y == string(src) {
		return nil, errors.New("fake_cli.yaml has no login argv to put the env before")
	}
	return []byte(y), nil
}

// WriteProviders writes Provider(authBase) into dir as fake_cli.yaml; dir
// is then the daemon's providers directory (HEARTH_PROVIDERS_DIR).
func WriteProviders(dir, authBase string) error {
	y, err := Provider(authBase)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "fake_cli.yaml"), y, 0o644)
}

// AuthBase is the fake authorization server's base URL at ip.
func AuthBase(ip string) string {
	return fmt.Sprintf("http://%s:%d", ip, FakeAuthPort)
}
