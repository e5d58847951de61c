package build

import "testing"

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
