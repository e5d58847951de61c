package config

import (
	"strings"
	"testing"
)

func TestSize(t *testing.T) {
	for text, want := range map[string]Size{"16MiB": 16 << 20, "1 GiB": 1 << 30, "128KiB": 128 << 10, "512": 512, "7B": 7, "2TiB": 2 << 40, "0": 0} {
		var s Size
		if err := s.UnmarshalText([]byte(text)); err != nil || s != want {
			t.Errorf("%q: %d, %v; want %d", text, s, err, want)
		}
	}
	for _, bad := range []string{"", "16MB", "-1MiB", "1.5GiB", "MiB", "99999999TiB"} {
		var s Size
		if err := s.UnmarshalText([]byte(bad)); err == nil || !strings.Contains(err.Error(), "KiB") {
			t.Errorf("%q accepted as %d (err %v)", bad, s, err)
		}
	}
	for s, want := range map[Size]string{16 << 20: "16MiB", 1 << 30: "1GiB", 1536: "1536B", 3 << 10: "3KiB", 0: "0B"} {
		if got := s.String(); got != want {
			t.Errorf("%d formats as %q; want %q", s, got, want)
		}
	}
}

func TestSizesFromEnv(t *testing.T) {
	c, err := Load("", []string{"HEARTH_STATE_DIR_MIN_FREE=2GiB", "HEARTH_CONSOLE_MAX_SIZE=4MiB", "HEARTH_CONSOLE_RATE=64KiB"})
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDirMinFree != 2<<30 || c.Console.MaxSize != 4<<20 || c.Console.Rate != 64<<10 {
		t.Fatalf("%+v %+v", c.StateDirMinFree, c.Console)
	}
	if _, err := Load("", []string{"HEARTH_CONSOLE_BURST=lots"}); err == nil || !strings.Contains(err.Error(), "HEARTH_CONSOLE_BURST") {
		t.Fatalf("a bad size in the environment: %v", err)
	}
}
