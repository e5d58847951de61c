package app

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/config"
)

func TestRaiseOpenFiles(t *testing.T) {
	var orig unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Setrlimit(unix.RLIMIT_NOFILE, &orig) })
	// Lower the soft limit, then ask for what the hard one allows.
	low := orig
	low.Cur = min(orig.Max, 256)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	want := min(orig.Max, 4096)
	got, err := raiseOpenFiles(want)
	var now unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &now)
	if err != nil || got != want || now.Cur != want {
		t.Fatalf("raise to %d: got %d (limit now %d), %v", want, got, now.Cur, err)
	}
	// Beyond the hard limit: as far as this process may go, and it says so.
	got, err = raiseOpenFiles(orig.Max + 1000)
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &now)
	if err != nil || got != now.Cur || (got != orig.Max && got != orig.Max+1000) {
		t.Fatalf("raise past the hard limit %d: got %d (limit now %d), %v", orig.Max, got, now.Cur, err)
	}
}

func TestDoctorReportsOpenFiles(t *testing.T) {
	cfg := config.Default()
	c := checkOpenFiles(cfg)
	if c.Name != "open files" || !strings.Contains(c.Detail, "api.max_connections 4096 needs 5120") {
		t.Fatalf("%+v", c)
	}
	var lim unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	cfg.API.MaxConnections = int(lim.Max) // more than the hard limit leaves room for
	if c := checkOpenFiles(cfg); !canRaiseHardLimits() && (c.Status != "WARN" || !strings.Contains(c.Fix, "LimitNOFILE")) {
		t.Fatalf("a cap the hard limit cannot hold: %+v", c)
	}
}
