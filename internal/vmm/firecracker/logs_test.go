package firecracker

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
)

// TestFollowForwardsLogAndMetrics: Firecracker's log lines and metrics
// reach hearth's log tagged with the VM, a line written in two parts is
// forwarded once whole, invalid metrics are dropped, and following ends
// with a last read after the process exits.
func TestFollowForwardsLogAndMetrics(t *testing.T) {
	var logs syncBuffer
	d := newTestDriver(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	dir := filepath.Join(t.TempDir(), "vm-logs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	appendTo := func(name, s string) {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	appendTo(fileLog, "before the daemon watched\n") // an earlier daemon forwarded it
	exited := make(chan struct{})
	d.follow(vmm.Handle{Dir: dir}, exited)
	appendTo(fileLog, "[vm-logs:main] Running Firecracker v1.16.1\n[vm-logs:fc_vcpu 0] half ")
	appendTo(fileMetrics, `{"utc_timestamp_ms":1,"vcpu":{"exit_io_in":3}}`+"\nnot json\n")
	time.Sleep(followInterval + 200*time.Millisecond)
	appendTo(fileLog, "a line\n")
	close(exited)
	deadline := time.Now().Add(3 * followInterval)
	for !strings.Contains(logs.String(), "half a line") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	got := logs.String()
	for _, want := range []string{
		`msg=firecracker vm=vm-logs line="[vm-logs:main] Running Firecracker v1.16.1"`,
		`line="[vm-logs:fc_vcpu 0] half a line"`,
		`msg="firecracker metrics" vm=vm-logs metrics="{\"utc_timestamp_ms\":1,\"vcpu\":{\"exit_io_in\":3}}"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %s in:\n%s", want, got)
		}
	}
	for _, unwanted := range []string{"before the daemon watched", "not json", "line=\"[vm-logs:fc_vcpu 0] half \""} {
		if strings.Contains(got, unwanted) {
			t.Errorf("forwarded %q:\n%s", unwanted, got)
		}
	}
}

func TestMountUnder(t *testing.T) {
	if m, err := mountUnder(t.TempDir()); err != nil || m != "" {
		t.Fatalf("a fresh temp dir has a mount under it: %q %v", m, err)
	}
	if m, err := mountUnder("/proc"); err != nil || m != "/proc" {
		t.Fatalf("mountUnder(/proc) = %q %v", m, err)
	}
}
