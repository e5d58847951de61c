package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

// TestStrayQEMUIsEndedOnStart: a QEMU started as hearth starts VMs (named
// hearth-<id>, its pidfile in a VM directory under this state dir) for a VM
// the store does not know is ended when the daemon starts; a QEMU of
// another state dir (another hearth on the host) is left alone.
func TestStrayQEMUIsEndedOnStart(t *testing.T) {
	d := newDaemon(t)
	d.stop()
	stray := startIdleQEMU(t, "vm-stray0000000001", filepath.Join(d.stateDir, "vms", "vm-stray0000000001", "qemu.pid"))
	other := startIdleQEMU(t, "vm-other0000000001", filepath.Join(t.TempDir(), "vms", "vm-other0000000001", "qemu.pid"))
	d.start() // ready only once the host is reconciled
	if alive(stray) {
		t.Fatalf("stray qemu %d still runs after the daemon started", stray.pid)
	}
	if !alive(other) {
		t.Fatalf("the qemu of another state dir (%d) was ended", other.pid)
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, "vms", "vm-stray0000000001")); !os.IsNotExist(err) {
		t.Fatalf("the stray's directory is still there: %v", err)
	}
}

type process struct {
	pid   int
	start string // field 22 of /proc/PID/stat
}

func startTime(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 20 || fields[0] == "Z" {
		return ""
	}
	return fields[19]
}

func alive(p process) bool { return startTime(p.pid) == p.start }

// startIdleQEMU daemonizes a QEMU that runs no guest, with hearth's name
// and pidfile conventions, and kills it when the test ends.
func startIdleQEMU(t *testing.T, id, pidfile string) process {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(pidfile), 0o700); err != nil {
		t.Fatal(err)
	}
	sh(t, "qemu-system-x86_64", "-name", "hearth-"+id, "-M", "none", "-S", "-nodefaults", "-no-user-config",
		"-display", "none", "-daemonize", "-pidfile", pidfile)
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	p := process{pid, startTime(pid)}
	t.Cleanup(func() {
		if alive(p) {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	})
	return p
}

// The crash tests kill the daemon (SIGKILL) at random points while it
// creates and deletes VMs, restart it each time, and check that the host
// holds exactly what the store accounts for. HEARTH_TEST_CRASH_SEED
// replays a run (its seed is logged).

// TestCrashesDuringCreateAndDeleteLeakNothing runs 30 crashes with QEMU.
// A create takes about a second under TCG (its process starts last), a
// delete a few seconds.
func TestCrashesDuringCreateAndDeleteLeakNothing(t *testing.T) {
	d := newDaemon(t, "HEARTH_STOP_TIMEOUT=4s")
	crashLoop(t, d, 30, 1500*time.Millisecond, "disk.qcow2")
}

// TestFirecrackerCrashesDuringCreateAndDeleteLeakNothing runs 20 crashes
// with the Firecracker driver against the fake, whose creates take a few
// hundred milliseconds.
func TestFirecrackerCrashesDuringCreateAndDeleteLeakNothing(t *testing.T) {
	d := firecrackerDaemon(t, "HEARTH_STOP_TIMEOUT=4s")
	crashLoop(t, d, 20, 500*time.Millisecond, "rootfs.ext4")
}

const (
	maxLiveVMs = 3               // VMs not destroyed kept at once (TCG guests are CPU-heavy)
	settleWait = 3 * time.Minute // for the host to match the store after a restart
)

// crashLoop crashes the daemon iterations times, each time at a point
// drawn from [0, window) after it was sent its requests.
func crashLoop(t *testing.T, d *daemon, iterations int, window time.Duration, disk string) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("HEARTH_TEST_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("HEARTH_TEST_CRASH_SEED: %v", err)
		}
	}
	t.Logf("seed %d (HEARTH_TEST_CRASH_SEED replays it)", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	ctx := ctxT(t, 30*time.Minute)
	started := time.Now()
	for i := range iterations {
		live := liveVMs(t, d)
		creates := 1 + rng.IntN(2)
		deletes := 0
		if len(live) > 0 {
			deletes = max(1, len(live)+creates-maxLiveVMs)
		}
		rng.Shuffle(len(live), func(a, b int) { live[a], live[b] = live[b], live[a] })
		var wg sync.WaitGroup
		for range creates {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = d.admin.CreateVM(ctx, api.CreateVM{Image: "minimal", User: "alice", MemoryMiB: 128})
			}()
		}
		for _, v := range live[:min(deletes, len(live))] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = d.admin.DeleteVM(ctx, v.ID)
			}()
		}
		// The crash point itself is what is random here, not a wait for
		// anything: the daemon dies wherever it is.
		delay := time.Duration(rng.Int64N(int64(window)))
		time.Sleep(delay)
		d.kill9()
		wg.Wait() // the requests end with the daemon
		d.start()
		settled := waitAccounted(t, d, disk)
		t.Logf("crash %d: %d created, %d deleted, killed after %s; settled in %s", i+1, creates, min(deletes, len(live)),
			delay.Round(time.Millisecond), settled.Round(100*time.Millisecond))
	}
	for _, v := range liveVMs(t, d) {
		if _, err := d.admin.DeleteVM(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	waitAccounted(t, d, disk)
	if n := len(liveVMs(t, d)); n != 0 {
		t.Fatalf("%d vms not destroyed after deleting them all", n)
	}
	t.Logf("%d crashes in %s; the restarted daemons ended %d vm processes their handles did not name", iterations,
		time.Since(started).Round(time.Second), strings.Count(d.log(), "ending vm process"))
}

// openStore opens the daemon's store (SQLite lets another process read it
// while the daemon runs).
func openStore(t *testing.T, d *daemon) *sqlite.DB {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(d.stateDir, "hearth.db"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func liveVMs(t *testing.T, d *daemon) []store.VM {
	t.Helper()
	st := openStore(t, d)
	defer st.Close()
	vms, err := st.ListVMs(context.Background(), store.VMFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return vms
}

// waitAccounted waits until no VM is in the middle of a step and the host
// holds exactly what the store accounts for, and returns how long that
// took. A leak never settles: the test fails with what is wrong.
func waitAccounted(t *testing.T, d *daemon, disk string) time.Duration {
	t.Helper()
	start := time.Now()
	var problems []string
	for {
		var busy bool
		busy, problems = unaccounted(t, d, disk)
		if !busy && len(problems) == 0 {
			return time.Since(start)
		}
		if time.Since(start) > settleWait {
			t.Fatalf("after %s the host does not match the store:\n%s", settleWait, strings.Join(problems, "\n"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// storedHandle and storedNetwork are the parts of a VM's stored handle and
// network this test compares with the host.
type storedHandle struct {
	PID      int    `json:"pid"`
	PIDStart uint64 `json:"pid_start"`
	DiskPath string `json:"disk_path"`
}

type storedNetwork struct {
	TAP     string `json:"tap"`
	Address string `json:"address"`
}

// unaccounted compares the store with the host: VMM processes, TAPs,
// leases, disks, VM directories and nftables elements. busy says a VM is
// between two resting points (pending, stopping, stopped, or booting
// before its process is recorded), where the two may legitimately differ.
func unaccounted(t *testing.T, d *daemon, disk string) (busy bool, problems []string) {
	t.Helper()
	st := openStore(t, d)
	defer st.Close()
	ctx := context.Background()
	vms, err := st.ListVMs(ctx, store.VMFilter{IncludeDestroyed: true})
	if err != nil {
		t.Fatal(err)
	}
	leases, err := st.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := inventory(t, d)
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	leaseOf := map[string]string{}
	for _, l := range leases {
		leaseOf[l.VMID] = l.IP
	}
	type want struct {
		live bool // holds a process, network and disk
		tap  string
		ip   string
	}
	wants := map[string]want{}
	for _, v := range vms {
		var h storedHandle
		var n storedNetwork
		if len(v.Handle) > 0 {
			if err := json.Unmarshal(v.Handle, &h); err != nil {
				bad("vm %s: handle: %v", v.ID, err)
			}
		}
		if len(v.Network) > 0 {
			if err := json.Unmarshal(v.Network, &n); err != nil {
				bad("vm %s: network: %v", v.ID, err)
			}
		}
		switch {
		case v.State == store.StatePending, v.State == store.StateStopping, v.State == store.StateStopped,
			v.State == store.StateBooting && h.PID == 0:
			busy = true
			problems = append(problems, fmt.Sprintf("vm %s is %s", v.ID, v.State))
			continue
		}
		live := v.State == store.StateBooting || v.State == store.StateReady
		ip, _, _ := strings.Cut(n.Address, "/")
		w := want{live: live}
		if live {
			w.tap, w.ip = n.TAP, ip
		}
		wants[v.ID] = w
		// Processes: exactly the recorded one while live, none after.
		procs := host.procs[v.ID]
		switch {
		case live && (len(procs) != 1 || procs[0].pid != h.PID || procs[0].start != strconv.FormatUint(h.PIDStart, 10)):
			bad("vm %s (%s) records pid %d, the host runs %v for it", v.ID, v.State, h.PID, procs)
		case !live && len(procs) > 0:
			bad("vm %s (%s) still has processes %v", v.ID, v.State, procs)
		}
		// Its lease, while live.
		if got, ok := leaseOf[v.ID]; live && (!ok || got != ip) {
			bad("vm %s (%s) records address %q, its lease is %q (%v)", v.ID, v.State, ip, got, ok)
		} else if !live && ok {
			bad("vm %s (%s) still holds lease %s", v.ID, v.State, got)
		}
		// Its disk, while live.
		diskPath := filepath.Join(d.stateDir, "vms", v.ID, disk)
		if _, err := os.Stat(diskPath); live && err != nil {
			bad("vm %s (%s): its disk is missing: %v", v.ID, v.State, err)
		} else if !live && err == nil {
			bad("vm %s (%s) still has its disk", v.ID, v.State)
		}
		// Its directory, until destroyed (a failed VM keeps its console).
		if live && !host.dirs[v.ID] {
			bad("vm %s (%s): its directory is missing", v.ID, v.State)
		} else if v.State == store.StateDestroyed && host.dirs[v.ID] {
			bad("vm %s (%s) still has its directory", v.ID, v.State)
		}
		if live && (n.TAP == "" || n.Address == "") {
			bad("vm %s (%s) records no network: %s", v.ID, v.State, v.Network)
		}
	}
	if busy {
		return true, problems
	}
	// Everything on the host must be some live VM's (or, for directories,
	// some VM's that is not destroyed).
	for id, procs := range host.procs {
		if !wants[id].live {
			bad("processes %v work for vm %s, which the store does not account for", procs, id)
		}
	}
	for tap, owner := range host.taps {
		if w := wants[owner]; !w.live || w.tap != tap {
			bad("tap %s (of vm %s) is no live vm's", tap, owner)
		}
	}
	for _, w := range wants {
		if w.live && w.tap != "" && !slices.Contains(keys(host.taps), w.tap) {
			bad("tap %s recorded but missing", w.tap)
		}
	}
	for id, ip := range leaseOf {
		if w, ok := wants[id]; !ok || !w.live || w.ip != ip {
			bad("lease %s of vm %s is no live vm's", ip, id)
		}
	}
	for id := range host.dirs {
		if _, ok := wants[id]; !ok {
			bad("directory of vm %s, which the store does not know", id)
		}
	}
	liveNets := 0
	egress, ports := map[string]bool{}, map[string]bool{}
	for _, w := range wants {
		if w.live && w.tap != "" {
			liveNets++
			egress[w.ip], ports[w.tap] = true, true
		}
	}
	if !equalSets(host.egress, egress) {
		bad("vm_egress holds %v, the live vms' addresses are %v", keys(host.egress), keys(egress))
	}
	if !equalSets(host.ports, ports) {
		bad("vm_ports holds %v, the live vms' taps are %v", keys(host.ports), keys(ports))
	}
	for table, n := range host.chains {
		if n != liveNets {
			bad("%s has %d vm chains for %d live vms with a network", table, n, liveNets)
		}
	}
	return false, problems
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func equalSets(a, b map[string]bool) bool { return slices.Equal(keys(a), keys(b)) }

// hostState is what the host holds for the daemon's VMs, found without
// hearth's code: processes from /proc, links with ip, rules with nft.
type hostState struct {
	procs  map[string][]process // VM id -> VMM processes working in its directory
	taps   map[string]string    // TAP -> the VM id its alias names
	dirs   map[string]bool      // VM directories
	egress map[string]bool      // keys of inet hearth vm_egress (addresses)
	ports  map[string]bool      // keys of bridge hearth vm_ports (TAPs)
	chains map[string]int       // "family table" -> number of VM chains
}

func inventory(t *testing.T, d *daemon) hostState {
	t.Helper()
	vmsDir := filepath.Join(d.stateDir, "vms") + "/"
	hs := hostState{procs: map[string][]process{}, taps: map[string]string{}, dirs: map[string]bool{},
		egress: map[string]bool{}, ports: map[string]bool{}, chains: map[string]int{}}
	entries, _ := os.ReadDir("/proc")
	vmmOf := map[int]string{}
	parents := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		var dir string
		switch {
		case strings.Contains(filepath.Base(args[0]), "qemu-system"):
			if i := slices.Index(args, "-pidfile"); i >= 0 && i+1 < len(args) {
				dir = args[i+1]
			}
		case args[0] == filepath.Join(binDir, "firecracker"):
			dir, _ = os.Readlink("/proc/" + e.Name() + "/cwd")
			dir += "/"
		}
		rest, ok := strings.CutPrefix(dir, vmsDir)
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, "/")
		vmmOf[pid] = id
		if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil {
			s := string(st)
			if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 1 {
				parents[pid], _ = strconv.Atoi(f[1])
			}
		}
	}
	for pid, id := range vmmOf {
		if vmmOf[parents[pid]] == id && !strings.Contains(procExe(pid), "qemu") {
			continue // the fake Firecracker's guest init, before it execs the agent
		}
		if p := (process{pid, startTime(pid)}); p.start != "" {
			hs.procs[id] = append(hs.procs[id], p)
		}
	}
	dirs, _ := os.ReadDir(vmsDir)
	for _, e := range dirs {
		hs.dirs[e.Name()] = true
	}
	var links []struct {
		Name  string `json:"ifname"`
		Alias string `json:"ifalias"`
	}
	if err := json.Unmarshal([]byte(sh(t, "ip", "-n", d.netns, "-j", "link", "show")), &links); err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if id, ok := strings.CutPrefix(l.Alias, "hearth:"); ok {
			hs.taps[l.Name] = id
		} else if strings.HasPrefix(l.Name, "hth") {
			hs.taps[l.Name] = "(no alias)"
		}
	}
	var rs struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	out, err := exec.Command("ip", "netns", "exec", d.netns, "nft", "-j", "list", "ruleset").Output()
	if err != nil {
		t.Fatalf("nft list ruleset: %v", err)
	}
	if err := json.Unmarshal(out, &rs); err != nil {
		t.Fatal(err)
	}
	for _, o := range rs.Nftables {
		if raw, ok := o["chain"]; ok {
			var c struct{ Family, Table, Name string }
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatal(err)
			}
			if c.Table == "hearth" {
				key := c.Family + " " + c.Table
				if _, seen := hs.chains[key]; !seen {
					hs.chains[key] = 0
				}
				if strings.HasPrefix(c.Name, "vm-") {
					hs.chains[key]++
				}
			}
		}
		if raw, ok := o["map"]; ok {
			var m struct {
				Family, Table, Name string
				Elem                []json.RawMessage
			}
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			var set map[string]bool
			switch {
			case m.Table == "hearth" && m.Name == "vm_egress":
				set = hs.egress
			case m.Table == "hearth" && m.Name == "vm_ports":
				set = hs.ports
			default:
				continue
			}
			for _, e := range m.Elem {
				var pair []json.RawMessage
				var key string
				if err := json.Unmarshal(e, &pair); err != nil || len(pair) != 2 || json.Unmarshal(pair[0], &key) != nil {
					t.Fatalf("unexpected element of %s: %s", m.Name, e)
				}
				set[key] = true
			}
		}
	}
	return hs
}

func procExe(pid int) string {
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return exe
}
