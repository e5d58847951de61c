package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/firecracker/fctest"
	"github.com/hearth-project/hearth/internal/vmm/proc"
	"github.com/hearth-project/hearth/test/testrun"
)

// Binaries built once for the tests that run the driver against the fake
// Firecracker (test/fakefirecracker) and, as its guest, the real agent.
var (
	fakeFC   string
	agentBin string
	buildErr error
)

func TestMain(m *testing.M) {
	fctest.MaybeGuestInit()
	// Fake Firecrackers outlive a killed test binary unless removed:
	// testrun removes them on a signal or a near -timeout.
	stop := testrun.Guard()
	dir, err := testrun.TempDir("fcbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeFC, agentBin = filepath.Join(dir, "firecracker"), filepath.Join(dir, "hearth-agent")
	buildErr = build(map[string]string{fakeFC: "./test/fakefirecracker", agentBin: "./cmd/hearth-agent"})
	code := m.Run()
	stop()
	os.RemoveAll(dir)
	os.Exit(testrun.Finish(code))
}

func build(outs map[string]string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	for out, pkg := range outs {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", pkg, err, b)
		}
	}
	return nil
}

func needFake(t *testing.T) {
	t.Helper()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// fakeSpec is a VM whose kernel and image are small files (the fake opens
// them as Firecracker does, and boots nothing).
func fakeSpec(t *testing.T, id string) vmm.Spec {
	t.Helper()
	assets := t.TempDir()
	spec := vmm.Spec{ID: id, VCPUs: 2, MemoryMiB: 128,
		Kernel: filepath.Join(assets, "vmlinux"), Initrd: filepath.Join(assets, "initrd.img"),
		Rootfs: filepath.Join(assets, "rootfs.ext4"), Token: mustToken(t),
		NICs: []vmm.NIC{{TAP: "hfc" + id[len(id)-4:], MAC: "02:48:00:00:00:05", Address: "10.88.0.5/24", Gateway: "10.88.0.1"}}}
	for _, p := range []string{spec.Kernel, spec.Initrd} {
		if err := os.WriteFile(p, []byte("not a kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeSparseImage(t, spec.Rootfs)
	// Short: sockets live in the VM dir.
	dir, err := testrun.TempDir("fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	spec.Dir = filepath.Join(dir, id)
	return spec
}

// mustToken is a fresh token in its text form, as the manager makes it.
func mustToken(t *testing.T) []byte {
	t.Helper()
	tok, err := agentapi.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(agentapi.FormatToken(tok))
}

// requestLog points the fake at a request log and returns a reader of it.
func requestLog(t *testing.T) func() []fctest.Request {
	t.Helper()
	path := filepath.Join(t.TempDir(), "requests.jsonl")
	t.Setenv("HEARTH_FAKEFC_REQUEST_LOG", path)
	return func() []fctest.Request {
		f, err := os.Open(path)
		if err != nil {
			t.Fatalf("request log: %v", err)
		}
		defer f.Close()
		var reqs []fctest.Request
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r fctest.Request
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("request log line %q: %v", sc.Text(), err)
			}
			reqs = append(reqs, r)
		}
		return reqs
	}
}

// checkAccepted fails on any request the spec (or the fake, as
// Firecracker) refused, and returns the calls as "METHOD PATH" lines.
func checkAccepted(t *testing.T, reqs []fctest.Request) []string {
	t.Helper()
	var calls []string
	for _, r := range reqs {
		if r.Violation != "" {
			t.Errorf("%s %s breaks Firecracker's API spec: %s\nbody: %s", r.Method, r.Path, r.Violation, r.Body)
		}
		if r.Status >= 300 {
			t.Errorf("%s %s refused (%d): %s\nbody: %s", r.Method, r.Path, r.Status, r.Fault, r.Body)
		}
		calls = append(calls, r.Method+" "+r.Path)
	}
	return calls
}

func newFakeDriver(t *testing.T, cfg Config) *Driver {
	t.Helper()
	needFake(t)
	if cfg.Binary == "" {
		cfg.Binary = fakeFC
	}
	return newTestDriver(t, cfg)
}

// startVM prepares and starts spec's VM on d; it is stopped when the test
// ends.
func startVM(t *testing.T, d *Driver, spec vmm.Spec) vmm.Handle {
	t.Helper()
	h, err := d.Prepare(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context(), spec, &h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop(context.Background(), h, 0) })
	return h
}

// TestContractSequence runs create → start → pause → snapshot → resume →
// stop, then a restore of the snapshot as another VM → stop, through the
// fake, and fails on any request Firecracker's spec would reject.
func TestContractSequence(t *testing.T) {
	log := requestLog(t)
	var logs syncBuffer
	d := newFakeDriver(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := t.Context()
	spec := fakeSpec(t, "vm-contract1")
	h := startVM(t, d, spec)
	if !d.Alive(h) {
		t.Fatal("not alive after Start")
	}
	exited, err := d.Watch(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}
	snap, err := d.CreateSnapshot(ctx, h, filepath.Join(spec.Dir, "..", "snap"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx, h, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if d.Alive(h) {
		t.Fatal("alive after Stop")
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not see the process end")
	}
	if why := d.ExitReason(h); !strings.Contains(why, "exit_code=0") {
		t.Errorf("exit reason after a guest reboot: %q", why)
	}
	// Firecracker's log reaches hearth's, tagged with the VM, up to its
	// last line.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "exit_code=0") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := logs.String(); !strings.Contains(got, "msg=firecracker vm=vm-contract1") || !strings.Contains(got, "exit_code=0") {
		t.Errorf("firecracker's log was not forwarded into hearth's:\n%s", got)
	}
	if kept, err := keptLines(h, 1<<20); err != nil || !strings.Contains(strings.Join(kept, "\n"), "Running Firecracker") {
		t.Errorf("firecracker's own output is not in the kept log (%v): %q", err, kept)
	}
	if err := d.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}

	spec2 := fakeSpec(t, "vm-contract2")
	h2, err := d.Prepare(ctx, spec2)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Restore(ctx, spec2, &h2, snap); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop(ctx, h2, 0) })
	if err := d.Stop(ctx, h2, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	calls := checkAccepted(t, log())
	want := []string{
		// first VM
		"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs",
		"PUT /network-interfaces/eth0", "PUT /vsock", "PUT /mmds/config", "PUT /mmds", "PUT /serial",
		"PUT /actions", "PATCH /vm", "PUT /snapshot/create", "PATCH /vm", "PUT /actions",
		// the restored one
		"PUT /logger", "PUT /metrics", "PUT /snapshot/load", "PUT /mmds", "PATCH /vm", "PUT /actions",
	}
	if strings.Join(calls, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
}

// TestGoldenRequestsMeetTheSpec holds the golden requests themselves to
// the spec (they are what the contract sequence sends).
func TestGoldenRequestsMeetTheSpec(t *testing.T) {
	d := newTestDriver(t, Config{Binary: "/usr/local/bin/firecracker"})
	spec := goldenSpec()
	reqs := append(d.Requests(spec), d.RestoreRequests(spec)...)
	reqs = append(reqs, Request{"PUT", "/snapshot/create", d.snapshotCreate()}, Request{"PATCH", "/vm", VMState{State: "Paused"}},
		Request{"PUT", "/actions", Action{ActionType: ActionSendCtrlAltDel}})
	for _, r := range reqs {
		body, err := json.Marshal(r.Body)
		if err != nil {
			t.Fatal(err)
		}
		if err := fctest.Validate(r.Method, r.Path, body); err != nil {
			t.Errorf("%s %s: %v", r.Method, r.Path, err)
		}
	}
}

func TestStartWithoutBinary(t *testing.T) {
	d := newTestDriver(t, Config{Binary: "/nonexistent/firecracker"})
	spec := fakeSpec(t, "vm-nobin1")
	h, err := d.Prepare(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	err = d.Start(t.Context(), spec, &h)
	if err == nil || !strings.Contains(err.Error(), "firecracker binary not found: /nonexistent/firecracker") {
		t.Fatalf("start without a binary: %v", err)
	}
	if h.PID != 0 {
		t.Fatalf("a pid (%d) for a process that never started", h.PID)
	}
}

func TestStartAPISocketNeverAppears(t *testing.T) {
	t.Setenv("HEARTH_FAKEFC_NO_SOCKET", "1")
	d := newFakeDriver(t, Config{SocketTimeout: 300 * time.Millisecond})
	spec := fakeSpec(t, "vm-nosock1")
	h, err := d.Prepare(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	err = d.Start(t.Context(), spec, &h)
	if err == nil || !strings.Contains(err.Error(), "API socket") || !strings.Contains(err.Error(), "did not appear within 300ms") {
		t.Fatalf("start with no API socket: %v", err)
	}
	if !strings.Contains(err.Error(), "Running Firecracker") {
		t.Errorf("the error does not show what firecracker printed: %v", err)
	}
	assertGone(t, h)
}

func TestStartRefusedByFirecracker(t *testing.T) {
	log := requestLog(t)
	t.Setenv("HEARTH_FAKEFC_FAULT", "PUT /boot-source=Invalid kernel image: not an ELF file")
	d := newFakeDriver(t, Config{})
	spec := fakeSpec(t, "vm-refused")
	h, err := d.Prepare(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	err = d.Start(t.Context(), spec, &h)
	want := "firecracker refused PUT /boot-source (400): Invalid kernel image: not an ELF file"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("start refused: %v, want it to contain %q", err, want)
	}
	assertGone(t, h)
	// Nothing after the refusal was sent.
	reqs := log()
	if last := reqs[len(reqs)-1]; last.Path != "/boot-source" {
		t.Fatalf("last request %s %s, want the refused PUT /boot-source", last.Method, last.Path)
	}
	if err := d.Cleanup(t.Context(), h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.DiskPath); !os.IsNotExist(err) {
		t.Fatalf("disk left after cleanup: %v", err)
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func assertGone(t *testing.T, h vmm.Handle) {
	t.Helper()
	if h.PID > 0 && !proc.WaitGone(h.PID, h.PIDStart, 5*time.Second) {
		t.Fatalf("firecracker pid %d left running after a failed start", h.PID)
	}
}

// TestFindProcesses: a firecracker working in a VM directory under the VMs
// dir is found by that directory, and only under it; KillProcess ends it.
func TestFindProcesses(t *testing.T) {
	d := newFakeDriver(t, Config{})
	spec := fakeSpec(t, "vm-stray01")
	h, err := d.Prepare(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(t.Context(), spec, &h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop(t.Context(), h, 0) })
	vmsDir := filepath.Dir(spec.Dir)
	if found, _ := d.FindProcesses(t.TempDir()); len(found) != 0 {
		t.Fatalf("a process under another VMs dir listed: %v", found)
	}
	found, err := d.FindProcesses(vmsDir)
	want := []vmm.Process{{PID: h.PID, Start: h.PIDStart}}
	if err != nil || len(found) != 1 || !slices.Equal(found[filepath.Base(spec.Dir)], want) {
		t.Fatalf("found %v (%v), want %v", found, err, want)
	}
	if err := d.KillProcess(want[0]); err != nil {
		t.Fatal(err)
	}
	if d.Alive(h) {
		t.Fatal("still alive after KillProcess")
	}
}

// TestOwnChildrenAreNotListed: a firecracker-named process whose parent is
// a firecracker of the same VM (the fake's guest init, until it execs the
// agent) belongs to its parent and is not listed; one under another VM is.
func TestOwnChildrenAreNotListed(t *testing.T) {
	p := func(pid int) vmm.Process { return vmm.Process{PID: pid, Start: uint64(pid) * 10} }
	found := map[int]vmProcess{
		10: {"vm-a", p(10)},
		11: {"vm-a", p(11)}, // child of 10
		20: {"vm-b", p(20)},
		21: {"vm-c", p(21)}, // child of 20, but another VM's
		30: {"vm-a", p(30)}, // its parent is gone
	}
	parents := map[int]int{10: 1, 11: 10, 20: 1, 21: 20}
	got := topmost(found, func(pid int) (int, error) {
		if pp, ok := parents[pid]; ok {
			return pp, nil
		}
		return 0, os.ErrNotExist
	})
	for _, ps := range got {
		slices.SortFunc(ps, func(a, b vmm.Process) int { return a.PID - b.PID })
	}
	want := map[string][]vmm.Process{"vm-a": {p(10), p(30)}, "vm-b": {p(20)}, "vm-c": {p(21)}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
