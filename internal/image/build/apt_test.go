package build

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestHostAptEntries(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	deb822 := "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n" +
		"Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n"
	if err := os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(deb822), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sources.list"), []byte("# x\ndeb [arch=amd64] http://mirror.example/debian/ bookworm main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := hostAptEntries(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []aptEntry{
		{"http://mirror.example/debian", "bookworm"},
		{"http://deb.debian.org/debian", "bookworm"},
		{"http://deb.debian.org/debian", "bookworm-updates"},
		{"http://deb.debian.org/debian-security", "bookworm-security"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
}

func TestAptFailureNamesPackage(t *testing.T) {
	out := "Reading package lists...\nBuilding dependency tree...\nE: Unable to locate package nosuchpkg\n"
	err := aptFailure(nil, out)
	if want := `package "nosuchpkg": E: Unable to locate package nosuchpkg`; err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
}
