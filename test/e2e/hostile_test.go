package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/images"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/safetext"
	"github.com/hearth-project/hearth/test/hostileagent/hostile"
)

// A hostile guest agent (test/hostileagent: the real agent, which
// authenticates with its VM's token, made to misbehave once ready) against
// the real daemon, under the fake Firecracker and under QEMU.

// hostileSpec writes the minimal image's spec named "hostile", with the
// hostile agent's mode in /etc/hearth/hostile.
func hostileSpec(t *testing.T, mode string) string {
	t.Helper()
	src, err := images.FS.ReadFile("minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(src), "name: minimal\n", "name: hostile\n", 1)
	s = strings.Replace(s, "\nfiles:\n", "\nfiles:\n  - path: /etc/hearth/hostile\n    mode: \"0644\"\n    content: \""+mode+"\\n\"\n", 1)
	path := filepath.Join(t.TempDir(), "hostile.yaml")
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// fileSizes is the bytes in the files matching glob.
func fileSizes(glob string) int64 {
	paths, _ := filepath.Glob(glob)
	var n int64
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// logGrowth is the bytes of the daemon's log lines after offset, but the
// access log's (another user's requests, made to measure latency).
func logGrowth(path string, offset int64) int64 {
	b, _ := os.ReadFile(path)
	if int64(len(b)) < offset {
		return 0
	}
	return int64(len(withoutRequests(string(b[offset:]))))
}

// latencies runs cheap authenticated GETs as c, one every 2 ms at most,
// n of them or, if n is 0, until stop is closed, and returns how long
// each took.
func latencies(ctx context.Context, t *testing.T, c *client.Client, n int, stop <-chan struct{}) []time.Duration {
	var ds []time.Duration
	for n == 0 || len(ds) < n {
		select {
		case <-stop:
			return ds
		default:
		}
		start := time.Now()
		if _, err := c.ListVMs(ctx, api.ListVMsParams{}); err != nil {
			t.Errorf("GET /v1/vms: %v", err)
			return ds
		}
		ds = append(ds, time.Since(start))
		time.Sleep(2*time.Millisecond - time.Since(start))
	}
	return ds
}

func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)*99/100]
}

// attack is what a hostile guest cost the daemon, and its outcome.
type attack struct {
	vm                api.VM
	took              time.Duration // create → failed
	cpu               time.Duration // the daemon's, over that time
	logBytes, dbBytes int64
	idleP99, p99      time.Duration // another user's GET /v1/vms
	requests          int
}

// runAttack has alice create a VM from image and waits until it fails,
// while bob measures the API from the time the VM is ready until then;
// it returns what that cost the daemon.
func runAttack(t *testing.T, d *daemon, image string) attack {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	pid := d.cmd.Process.Pid
	idleCPU := procCPU(t, pid)
	idle := latencies(ctx, t, d.bob, 300, nil)
	// What bob's requests cost the daemon, to take out of the attack's.
	perRequest := (procCPU(t, pid) - idleCPU) / time.Duration(len(idle))

	logBefore, dbBefore := fileSizes(d.logPath), fileSizes(filepath.Join(d.stateDir, "hearth.db*"))
	cpuBefore := procCPU(t, pid)
	start := time.Now()
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: image})
	if err != nil {
		t.Fatal(err)
	}
	// The hostile agent misbehaves once ready: measure from then on (a
	// VM's boot has its own cost on a 2-CPU host, whatever its guest).
	if _, err := d.alice.WaitVM(ctx, v.ID, "ready", 2*time.Minute); err != nil {
		t.Logf("never ready: %v", err)
	}
	stop := make(chan struct{})
	var during []time.Duration
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		during = latencies(ctx, t, d.bob, 0, stop)
	}()
	for {
		v, err = d.alice.WaitVM(ctx, v.ID, "failed", time.Minute)
		var ae *client.Error
		if err == nil || !errors.As(err, &ae) || ae.Code != "wait_timeout" {
			break
		}
		if ctx.Err() != nil {
			break
		}
	}
	took, cpu := time.Since(start), procCPU(t, pid)-cpuBefore
	close(stop)
	wg.Wait()
	a := attack{took: took, cpu: max(0, cpu-time.Duration(len(during))*perRequest)}
	if err != nil {
		t.Fatalf("the hostile vm did not fail: %v\n%s", err, tail(d.log(), 4000))
	}
	a.vm = v
	a.logBytes = logGrowth(d.logPath, logBefore)
	a.dbBytes = fileSizes(filepath.Join(d.stateDir, "hearth.db*")) - dbBefore
	a.idleP99, a.p99, a.requests = p99(idle), p99(during), len(during)
	t.Logf("vm failed after %v: %s", a.took.Round(time.Millisecond), a.vm.FailureReason)
	t.Logf("daemon CPU %v (%v less bob's requests at %v each); log +%d B (access log aside); database +%d B; "+
		"bob's GET /v1/vms p99 %v idle, %v during (%d requests)",
		a.cpu, cpu, perRequest, a.logBytes, a.dbBytes, a.idleP99, a.p99, a.requests)
	return a
}

// check holds an attack to its bounds: cut off well before a CPU-second,
// a few log lines and rows, and, if latency, another user's API
// unaffected.
func (a attack) check(t *testing.T, reason string, latency bool) {
	t.Helper()
	if !strings.HasPrefix(a.vm.FailureReason, reason) {
		t.Errorf("failure reason %q, want it to start with %q", a.vm.FailureReason, reason)
	}
	if a.cpu > time.Second {
		t.Errorf("the daemon spent %v of CPU on the hostile guest", a.cpu)
	}
	if a.logBytes > 32<<10 {
		t.Errorf("the daemon's log grew by %d bytes", a.logBytes)
	}
	// Its rows and events, in the write-ahead log: a few transactions'
	// pages, never one per message or reconnect.
	if a.dbBytes > 1<<20 {
		t.Errorf("the database grew by %d bytes", a.dbBytes)
	}
	// Within 2× of idle while the guest misbehaves (a hundred requests
	// at least, or it was cut off too soon to tell); the machine is
	// shared, so 5 ms of slack.
	if latency && a.requests >= 100 && a.p99 > 2*a.idleP99+5*time.Millisecond {
		t.Errorf("another user's p99 went from %v idle to %v", a.idleP99, a.p99)
	}
}

// Under the fake Firecracker, whose guest is the hostile agent: a
// heartbeat flood is cut off and fails the VM with the reason; an agent
// whose version and network error are escape sequences has them stored
// clean, and the CLI prints none of them.
func TestHostileAgentUnderFirecracker(t *testing.T) {
	agentEnv := "HEARTH_FAKEFC_AGENT=" + filepath.Join(binDir, "hostileagent")
	t.Run("heartbeat flood", func(t *testing.T) {
		d := firecrackerDaemon(t, agentEnv, "HEARTH_HOSTILE="+hostile.HeartbeatFlood)
		a := runAttack(t, d, "minimal")
		a.check(t, "guest agent broke protocol: heartbeat flood", true)
		deadline := time.Now().Add(time.Minute)
		for len(fakeFirecrackers(d.stateDir)) != 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if got := fakeFirecrackers(d.stateDir); len(got) != 0 {
			t.Errorf("firecracker left running: %q", got)
		}
	})
	t.Run("evil text", func(t *testing.T) {
		d := firecrackerDaemon(t, agentEnv, "HEARTH_HOSTILE="+hostile.EvilText)
		a := runAttack(t, d, "minimal")
		want := "guest network setup failed: " + safetext.Line(hostile.EvilString, 0)
		if a.vm.FailureReason != want {
			t.Errorf("failure reason %q, want %q", a.vm.FailureReason, want)
		}
		if a.vm.Agent.Version != safetext.Line(hostile.EvilString, 0) {
			t.Errorf("agent %+v", a.vm.Agent)
		}
		for _, args := range [][]string{{"vm", "list"}, {"vm", "get", a.vm.ID}, {"vm", "wait", a.vm.ID, "--timeout", "5s"}} {
			out, _ := d.hearthAs(d.alice.Key, args...)
			if !safetext.IsClean(out) || !strings.Contains(out, "hacked") {
				t.Errorf("hearth %s printed %q", strings.Join(args, " "), out)
			}
		}
	})
}

// Under QEMU, with an image whose agent is the hostile one: a heartbeat
// flood while the guest also floods its console. Under TCG any busy guest's
// vCPU is a host thread that takes one of the machine's CPUs from everyone,
// hearth included, so another user's latency is held to what it is beside a
// well-behaved guest just as busy (a shell loop in a minimal VM), not to an
// idle host: what the hostile guest adds is hearth's part.
func TestHostileAgentUnderQEMU(t *testing.T) {
	d := newDaemon(t)
	start := time.Now()
	out := d.hearth("image", "build", "--local", "--profile", hostileSpec(t, hostile.HeartbeatFlood+","+hostile.Console),
		"--agent", filepath.Join(binDir, "hostileagent"))
	t.Logf("image in %s: %s", time.Since(start).Round(time.Second), lastLine(out))

	busyP99, busyN := beside(t, d, busyGuest(t, d))
	a := runAttack(t, d, "hostile")
	a.check(t, "guest agent broke protocol: heartbeat flood", false)
	t.Logf("bob's p99 beside a busy well-behaved guest: %v (%d requests); beside the hostile one: %v (%d)", busyP99, busyN, a.p99, a.requests)
	if a.requests >= 100 && a.p99 > 2*busyP99+5*time.Millisecond {
		t.Errorf("another user's p99 was %v beside the hostile guest, %v beside an equally busy well-behaved one", a.p99, busyP99)
	}
	// A failed VM's process is stopped right after it is marked failed.
	deadline := time.Now().Add(time.Minute)
	for len(qemuPIDs(d.stateDir)) != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if pids := qemuPIDs(d.stateDir); len(pids) != 0 {
		t.Errorf("qemu left running: %v", pids)
	}
	info, err := consolelog.Stat(filepath.Join(d.stateDir, "vms", a.vm.ID, "console"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("console: %d bytes written by the guest, %d on disk", info.Size, info.Disk)
}

// busyGuest boots a minimal VM whose guest spins a shell loop on its vCPU,
// as busy as a flooding guest, and returns its id; the VM is deleted when
// the test ends.
func busyGuest(t *testing.T, d *daemon) string {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = d.alice.DeleteVM(context.Background(), v.ID) })
	if _, err := d.alice.WaitVM(ctx, v.ID, "ready", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// In a session of its own, so the exec's end does not end it.
	if code, out := guest(t, d.alice, v.ID, "/bin/busybox", "setsid", "/bin/busybox", "sh", "-c",
		"while :; do :; done </dev/null >/dev/null 2>&1 &"); code != 0 {
		t.Fatalf("start the busy loop: %d %s", code, out)
	}
	return v.ID
}

// beside measures bob's GET /v1/vms for a few seconds while VM id runs,
// then deletes it; it returns the p99 and the number of requests.
func beside(t *testing.T, d *daemon, id string) (time.Duration, int) {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	stop := make(chan struct{})
	time.AfterFunc(5*time.Second, func() { close(stop) })
	ds := latencies(ctx, t, d.bob, 0, stop)
	if _, err := d.alice.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := d.alice.WaitVM(ctx, id, "destroyed", time.Minute); err != nil {
		t.Fatal(err)
	}
	return p99(ds), len(ds)
}
