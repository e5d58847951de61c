package image

import (
	"strings"
	"testing"
)

func TestParseCPUInfoKHz(t *testing.T) {
	const cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.098\n\nprocessor\t: 1\ncpu MHz\t\t: 1800.000\n"
	khz, err := parseCPUInfoKHz(strings.NewReader(cpuinfo))
	if err != nil || khz != 2596098 {
		t.Fatalf("got %d, %v; want 2596098", khz, err)
	}
	if _, err := parseCPUInfoKHz(strings.NewReader("processor : 0\n")); err == nil {
		t.Error("missing cpu MHz accepted")
	}
	if _, err := parseCPUInfoKHz(strings.NewReader("cpu MHz : fast\n")); err == nil {
		t.Error("non-numeric cpu MHz accepted")
	}
}

func TestHostTSCkHz(t *testing.T) {
	khz, err := HostTSCkHz()
	if err != nil {
		t.Skipf("no usable /proc/cpuinfo: %v", err)
	}
	if khz < 100_000 || khz > 10_000_000 {
		t.Errorf("implausible host TSC %d kHz", khz)
	}
}

func TestDefaultCacheDir(t *testing.T) {
	t.Setenv("HEARTH_CACHE_DIR", "/srv/hearth-cache")
	if d := DefaultCacheDir(); d != "/srv/hearth-cache" {
		t.Errorf("DefaultCacheDir() = %q with HEARTH_CACHE_DIR set", d)
	}
	t.Setenv("HEARTH_CACHE_DIR", "")
	if d := DefaultCacheDir(); d == "" {
		t.Error("empty default cache dir")
	}
}

func TestKernelDependency(t *testing.T) {
	cases := []struct{ depends, name, version string }{
		{"linux-image-6.1.0-57-amd64 (= 6.1.192-3)", "linux-image-6.1.0-57-amd64", "6.1.192-3"},
		{"linux-image-6.1.0-57-amd64", "linux-image-6.1.0-57-amd64", ""},
		{"kmod, linux-image-6.12.9-amd64 (>= 6.12)", "linux-image-6.12.9-amd64", ""},
		{"linux-image-amd64 | linux-image-6.1.0-57-amd64:amd64 (= 1)", "linux-image-6.1.0-57-amd64", "1"},
		{"kmod, linux-base (>= 4.3~)", "", ""},
	}
	for _, c := range cases {
		name, version := kernelDependency(c.depends)
		if name != c.name || version != c.version {
			t.Errorf("kernelDependency(%q) = %q, %q; want %q, %q", c.depends, name, version, c.name, c.version)
		}
	}
}

func TestParseControlStanza(t *testing.T) {
	out := "Package: linux-image-amd64\nVersion: 6.1.192-3\nDescription: Linux\n for 64-bit PCs\nDepends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\n\nPackage: second\nVersion: 1\n"
	f := parseControlStanza([]byte(out))
	if f["Version"] != "6.1.192-3" || f["Depends"] != "linux-image-6.1.0-57-amd64 (= 6.1.192-3)" || f["Package"] != "linux-image-amd64" {
		t.Errorf("fields = %v", f)
	}
}
