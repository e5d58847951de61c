package app

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T, pattern string) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", pattern).Output()
	if err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

const mod = "github.com/hearth-project/hearth/"

// The guest agent is small and static: it must not drag in the daemon's
// store, HTTP API, drivers or image builder. (It does serve HTTP/2, the
// work API on its data channel, so net/http is in.)
func TestAgentDependenciesStaySmall(t *testing.T) {
	ps := listPackages(t, mod+"cmd/hearth-agent")
	forbidden := []string{"modernc.org/sqlite", "github.com/getkin", mod + "internal/store", mod + "internal/api",
		mod + "internal/vm", mod + "internal/image", mod + "internal/app", mod + "internal/cli"}
	for _, d := range ps[0].Deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("hearth-agent depends on %s", d)
			}
		}
	}
}

// internal/app is the only wiring point: only it (and the binaries, tests
// and benchmarks) may pick concrete backends; only the command line
// (internal/cli) imports internal/app, and only cmd/hearth imports the
// command line. depguard (.golangci.yml) holds the same rules file by
// file; this test sees what go list sees.
func TestOnlyAppWiresBackends(t *testing.T) {
	backends := []string{mod + "internal/store/sqlite", mod + "internal/vmm/qemu", mod + "internal/vmm/firecracker"}
	allowed := func(importer, imported string) bool {
		switch imported {
		case mod + "internal/app":
			return importer == mod+"internal/cli"
		case mod + "internal/cli":
			return importer == mod+"cmd/hearth"
		}
		switch {
		case importer == mod+"internal/app", strings.HasPrefix(importer, mod+"cmd/"), strings.HasPrefix(importer, mod+"bench/"):
			return true
		case slices.Contains(backends, importer):
			return true
		}
		return false
	}
	for _, p := range listPackages(t, mod+"...") {
		for _, imp := range p.Imports {
			if !slices.Contains(backends, imp) && imp != mod+"internal/app" && imp != mod+"internal/cli" {
				continue
			}
			if !allowed(p.ImportPath, imp) {
				t.Errorf("%s imports %s; wire it in internal/app (called by internal/cli, called by cmd/hearth) instead", p.ImportPath, imp)
			}
		}
	}
}

// Every package says what it is for.
func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t, mod+"...") {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no package comment", p.ImportPath)
		}
	}
}
