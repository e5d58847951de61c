package build

import "testing"

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
