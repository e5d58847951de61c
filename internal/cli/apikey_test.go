package cli

import (
	"strings"
	"testing"
	"time"
)

func TestParseExpiry(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"30d":                  now.Add(30 * 24 * time.Hour),
		"12h":                  now.Add(12 * time.Hour),
		"1h30m":                now.Add(90 * time.Minute),
		"2031-06-07T08:09:10Z": time.Date(2031, 6, 7, 8, 9, 10, 0, time.UTC),
		"2031-06-07":           time.Date(2031, 6, 7, 0, 0, 0, 0, time.Local),
	} {
		got, err := parseExpiry(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseExpiry(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"soon", "0d", "-1d", "1.5d", "0s", "-2h", "99999d", "d"} {
		if got, err := parseExpiry(in, now); err == nil {
			t.Errorf("parseExpiry(%q) = %v, want an error", in, got)
		} else if !strings.Contains(err.Error(), in) {
			t.Errorf("parseExpiry(%q): error %q does not name the value", in, err)
		}
	}
}
