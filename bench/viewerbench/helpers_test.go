package main

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	line := "4242 (web) sock (x)) S 17 4242 17 0 -1 4194560 1 0 0 0 250 37 9 4 20 0 1 0 100 1000 10 18446744073709551615\n"
	s, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{ppid: 17, utime: 250, stime: 37, cutime: 9, cstime: 4}
	if s != want {
		t.Fatalf("parseStat = %+v, want %+v", s, want)
	}
	if got := s.cpu(); got != 300*clockTick {
		t.Fatalf("cpu = %v, want %v", got, 300*clockTick)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 x S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) succeeded", bad)
		}
	}
}

func TestReadStatSelf(t *testing.T) {
	s, err := readStat(os.Getpid())
	if err != nil {
		t.Skip("no /proc:", err)
	}
	if s.ppid != os.Getppid() {
		t.Fatalf("ppid = %d, want %d", s.ppid, os.Getppid())
	}
	if pids := tree(os.Getppid()); len(pids) < 2 {
		t.Fatalf("tree of the parent = %v, want it and this process at least", pids)
	}
}

func TestParsePss(t *testing.T) {
	rollup := `55d4c0a00000-7ffd3e7fe000 ---p 00000000 00:00 0                          [rollup]
Rss:               12345 kB
Pss:                6789 kB
Pss_Anon:           5000 kB
`
	kib, err := parsePss([]byte(rollup))
	if err != nil || kib != 6789 {
		t.Fatalf("parsePss = %d, %v; want 6789", kib, err)
	}
	if _, err := parsePss([]byte("Rss: 1 kB\n")); err == nil {
		t.Fatal("parsePss without a Pss line succeeded")
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		ds = append(ds, time.Duration(i))
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0.1, 1}} {
		if got := percentile(ds, c.p); got != c.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if ds[0] != 100 {
		t.Fatal("percentile sorted its argument")
	}
	if percentile(nil, 50) != 0 {
		t.Fatal("percentile of nothing is not 0")
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Fatalf("median = %v, want 2", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Fatalf("median = %v, want 2.5", m)
	}
}

func TestTurnsAndShares(t *testing.T) {
	if got := turns(3, 4); got[0] != 1 || got[1] != 2 || got[2] != 0 {
		t.Fatalf("turns(3, 4) = %v", got)
	}
	total := 0
	for r := range rounds {
		total += share(203, r)
	}
	if total != 203 {
		t.Fatalf("shares of 203 add up to %d", total)
	}
}
