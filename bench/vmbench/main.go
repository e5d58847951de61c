// Command vmbench measures hearth against the bare alternative in one run:
//
//  1. create→ready latency: hearth (POST /v1/vms, then GET …/wait) against the
//     identical QEMU command started by hand and waited on for the same agent
//     signal (handshake + "ready"), runs interleaved;
//  2. p99 latency of GET /v1/vms while four VMs boot, and at idle;
//  3. daemon RSS and CPU per running VM.
//
// It needs root, QEMU and a hearth binary; bench/run.sh builds everything and
// writes docs/BENCHMARKS.md.
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/bench/internal/procstat"
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/proc"
	"github.com/hearth-project/hearth/internal/vmm/qemu"
)

func main() {
	hearthBin := flag.String("hearth", "bin/hearth", "hearth binary")
	agentBin := flag.String("agent", "bin/hearth-agent", "hearth-agent binary")
	runs := flag.Int("runs", 10, "create→ready runs per side")
	idle := flag.Duration("sample", 20*time.Second, "how long to sample RSS/CPU")
	flag.Parse()
	if err := run(*hearthBin, *agentBin, *runs, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "vmbench:", err)
		os.Exit(1)
	}
}

type daemon struct {
	cmd    *exec.Cmd
	env    []string
	bin    string
	state  string
	addr   string
	client *client.Client
}

func (d *daemon) hearth(args ...string) (string, error) {
	cmd := exec.Command(d.bin, args...)
	cmd.Env = append(os.Environ(), d.env...)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return "", fmt.Errorf("hearth %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

func run(hearthBin, agentBin string, runs int, sample time.Duration) error {
	hearthBin, _ = filepath.Abs(hearthBin)
	agentBin, _ = filepath.Abs(agentBin)
	state, err := os.MkdirTemp("", "hbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	d := &daemon{bin: hearthBin, state: state, addr: addr,
		env: []string{"HEARTH_STATE_DIR=" + state, "HEARTH_LISTEN=" + addr, "HEARTH_CONFIG=",
			"HEARTH_IMAGE_DIR=/var/cache/hearth/bench-images", "HEARTH_LOG_LEVEL=warn"}}
	if _, err := d.hearth("image", "build", "--profile", "minimal", "--agent", agentBin); err != nil {
		return err
	}
	key, err := d.hearth("apikey", "create", "--admin", "--user", "bench")
	if err != nil {
		return err
	}
	d.client = client.New(addr, key)
	logf, err := os.Create(filepath.Join(state, "hearth.log"))
	if err != nil {
		return err
	}
	d.cmd = exec.Command(hearthBin, "serve")
	d.cmd.Env = append(os.Environ(), d.env...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = d.cmd.Process.Signal(syscall.SIGTERM); _ = d.cmd.Wait() }()
	for i := 0; ; i++ {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 200 {
			return fmt.Errorf("daemon did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx := context.Background()
	imgs, err := d.client.ListImages(ctx)
	if err != nil {
		return err
	}
	host, err := d.client.Host(ctx)
	if err != nil {
		return err
	}
	imgDir := filepath.Join("/var/cache/hearth/bench-images", "minimal-"+imgs[0].ID[:16])
	accel := string(host.Capabilities.Accel)

	fmt.Printf("accel: %s, runs: %d per side, %d vCPU host\n\n", accel, runs, procstat.NumCPU())
	var hearthT, handT []time.Duration
	for i := 0; i < runs; i++ {
		t, err := byHand(ctx, imgDir, accel)
		if err != nil {
			return fmt.Errorf("by hand: %w", err)
		}
		handT = append(handT, t)
		t, err = viaHearth(ctx, d.client)
		if err != nil {
			return fmt.Errorf("hearth: %w", err)
		}
		hearthT = append(hearthT, t)
	}
	mh, mb := median(hearthT), median(handT)
	fmt.Println("## create → ready (agent handshake + ready), interleaved runs")
	fmt.Println()
	fmt.Println("| path | median | mean | min | max |")
	fmt.Println("|---|---|---|---|---|")
	fmt.Printf("| QEMU by hand (identical command, same agent signal) | %s | %s | %s | %s |\n", ms(mb), ms(mean(handT)), ms(minD(handT)), ms(maxD(handT)))
	fmt.Printf("| hearth (POST /v1/vms → GET /wait?state=ready) | %s | %s | %s | %s |\n", ms(mh), ms(mean(hearthT)), ms(minD(hearthT)), ms(maxD(hearthT)))
	fmt.Printf("\nhearth / by hand (median): **%.3f** (%+.1f %%)\n\n", float64(mh)/float64(mb), 100*(float64(mh)/float64(mb)-1))

	idleLat, err := listLatency(ctx, d.client, 0)
	if err != nil {
		return err
	}
	bootLat, err := listLatency(ctx, d.client, 4)
	if err != nil {
		return err
	}
	fmt.Println("## GET /v1/vms latency")
	fmt.Println()
	fmt.Println("| while | requests | p50 | p99 | max |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range []struct {
		name string
		lat  []time.Duration
	}{{"idle", idleLat}, {"four VMs boot (create → all ready)", bootLat}} {
		fmt.Printf("| %s | %d | %s | %s | %s |\n", r.name, len(r.lat), ms(pct(r.lat, 50)), ms(pct(r.lat, 99)), ms(maxD(r.lat)))
	}
	fmt.Println()

	return resources(ctx, d, sample)
}

// byHand starts the identical QEMU command hearth would, without hearth, and
// waits for the same agent signal.
func byHand(ctx context.Context, imgDir, accel string) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "hand-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	khz, _ := qemu.HostTSCkHz()
	drv, err := qemu.New(qemu.Config{Accel: accel, TSCkHz: khz})
	if err != nil {
		return 0, err
	}
	tok, _ := agentapi.NewToken()
	spec := vmm.Spec{ID: "bench-hand", Dir: dir, VCPUs: 1, MemoryMiB: 256,
		Kernel: filepath.Join(imgDir, "vmlinux"), Initrd: filepath.Join(imgDir, "initrd.img"), Rootfs: filepath.Join(imgDir, "rootfs.ext4")}
	h := vmm.Handle{Dir: dir, ConsoleStream: filepath.Join(dir, "console.sock"), AgentSocket: filepath.Join(dir, "agent.sock"),
		ControlSocket: filepath.Join(dir, "qmp.sock"), DiskPath: filepath.Join(dir, "disk.qcow2"), TokenPath: filepath.Join(dir, "token")}
	start := time.Now()
	if err := os.WriteFile(h.TokenPath, []byte(hex.EncodeToString(tok)), 0o600); err != nil {
		return 0, err
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", spec.Rootfs, "-F", "raw", h.DiskPath).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	if out, err := exec.Command("qemu-system-x86_64", drv.Args(spec, h)...).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu: %v: %s", err, out)
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	conn, err := agentapi.Dial(cctx, h.AgentSocket)
	if err != nil {
		return 0, err
	}
	s, err := agentapi.Handshake(cctx, conn, tok, agentapi.Config{HeartbeatInterval: 2 * time.Second})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	for ev := range s.Events() {
		if ev.Type == "ready" {
			break
		}
	}
	elapsed := time.Since(start)
	b, _ := os.ReadFile(filepath.Join(dir, "qemu.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	st, _ := proc.StartTime(pid)
	_ = proc.Signal(pid, st, syscall.SIGKILL)
	proc.WaitGone(pid, st, 10*time.Second)
	return elapsed, nil
}

func viaHearth(ctx context.Context, c *client.Client) (time.Duration, error) {
	start := time.Now()
	v, err := c.CreateVM(ctx, api.CreateVM{Image: "minimal", MemoryMiB: 256})
	if err != nil {
		return 0, err
	}
	if _, err := c.WaitVM(ctx, v.ID, "ready", 2*time.Minute); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	if _, err := c.DeleteVM(ctx, v.ID); err != nil {
		return 0, err
	}
	_, err = c.WaitVM(ctx, v.ID, "destroyed", time.Minute)
	return elapsed, err
}

// listLatency measures GET /v1/vms every 5 ms, either for 3 s at idle
// (boots == 0) or while `boots` VMs go from create to ready.
func listLatency(ctx context.Context, c *client.Client, boots int) ([]time.Duration, error) {
	var ids []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	errc := make(chan error, boots)
	done := make(chan struct{})
	for i := 0; i < boots; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := c.CreateVM(ctx, api.CreateVM{Image: "minimal", MemoryMiB: 256})
			if err != nil {
				errc <- err
				return
			}
			mu.Lock()
			ids = append(ids, v.ID)
			mu.Unlock()
			if _, err := c.WaitVM(ctx, v.ID, "ready", 3*time.Minute); err != nil {
				errc <- err
			}
		}()
	}
	if boots == 0 {
		go func() { time.Sleep(3 * time.Second); close(done) }()
	} else {
		go func() { wg.Wait(); close(done) }()
	}
	var lat []time.Duration
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-tick.C:
			t := time.Now()
			if _, err := c.ListVMs(ctx, api.ListVMsParams{}); err != nil {
				return nil, err
			}
			lat = append(lat, time.Since(t))
		}
	}
	close(errc)
	for err := range errc {
		return nil, err
	}
	for _, id := range ids {
		if _, err := c.DeleteVM(ctx, id); err != nil {
			return nil, err
		}
	}
	for _, id := range ids {
		if _, err := c.WaitVM(ctx, id, "destroyed", time.Minute); err != nil {
			return nil, err
		}
	}
	return lat, nil
}

// resources samples the daemon's RSS and CPU with 0 and with 4 ready VMs.
func resources(ctx context.Context, d *daemon, sample time.Duration) error {
	pid := d.cmd.Process.Pid
	measure := func() (rssKiB int64, cpu time.Duration) {
		time.Sleep(sample / 10) // settle
		c0 := procstat.CPUTime(pid)
		time.Sleep(sample)
		return rss(pid), procstat.CPUTime(pid) - c0
	}
	rss0, cpu0 := measure()
	var ids []string
	for i := 0; i < 4; i++ {
		v, err := d.client.CreateVM(ctx, api.CreateVM{Image: "minimal", MemoryMiB: 256})
		if err != nil {
			return err
		}
		ids = append(ids, v.ID)
	}
	for _, id := range ids {
		if _, err := d.client.WaitVM(ctx, id, "ready", 3*time.Minute); err != nil {
			return err
		}
	}
	rss4, cpu4 := measure()
	for _, id := range ids {
		_, _ = d.client.DeleteVM(ctx, id)
	}
	for _, id := range ids {
		_, _ = d.client.WaitVM(ctx, id, "destroyed", time.Minute)
	}
	pctOf := func(c time.Duration) float64 { return 100 * float64(c) / float64(sample) }
	fmt.Printf("## daemon resources (sampled %s; agent heartbeat every 2 s)\n\n", sample)
	fmt.Println("| running VMs | daemon RSS | daemon CPU |")
	fmt.Println("|---|---|---|")
	fmt.Printf("| 0 | %.1f MiB | %.3f %% of a core |\n", float64(rss0)/1024, pctOf(cpu0))
	fmt.Printf("| 4 | %.1f MiB | %.3f %% of a core |\n", float64(rss4)/1024, pctOf(cpu4))
	fmt.Printf("\nper running VM: **%+.2f MiB RSS, %+.3f %% of a core**\n", float64(rss4-rss0)/1024/4, (pctOf(cpu4)-pctOf(cpu0))/4)
	return nil
}

func rss(pid int) int64 {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

func sorted(ds []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func median(ds []time.Duration) time.Duration { return pct(ds, 50) }

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := sorted(ds)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

func mean(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t / time.Duration(len(ds))
}

func minD(ds []time.Duration) time.Duration { return sorted(ds)[0] }
func maxD(ds []time.Duration) time.Duration { s := sorted(ds); return s[len(s)-1] }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
