// Command guestbench measures what a hostile guest costs the daemon and
// the other users: one user's guest agent (test/hostileagent, under the
// fake Firecracker) floods heartbeats while that user holds idle event
// streams open, and another user's cheap authenticated GET /v1/vms is
// timed, idle and during the flood. Each row is its own daemon:
//
//  1. limits off (every [agent] bound raised out of reach): the guest is
//     bounded by nothing, as before hearth bounded guests;
//  2. hearth's defaults;
//  3. the defaults, but a VM is never failed for its violations
//     (agent.max_violations raised), so the guest keeps reconnecting and
//     flooding for the whole sample.
//
// It needs root; bench/run.sh runs it inside a network namespace made for
// it and writes its table into docs/BENCHMARKS.md.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/bench/internal/procstat"
	"github.com/hearth-project/hearth/internal/client"
)

func main() {
	hearthBin := flag.String("hearth", "bin/hearth", "hearth binary")
	agentBin := flag.String("agent", "bin/hearth-agent", "hearth-agent binary (for the image)")
	hostileBin := flag.String("hostile", "bin/hostileagent", "test/hostileagent binary")
	fcBin := flag.String("firecracker", "bin/firecracker", "test/fakefirecracker binary")
	sample := flag.Duration("sample", 20*time.Second, "how long to measure during a flood, at most")
	streams := flag.Int("streams", 300, "idle event streams the attacker holds")
	flag.Parse()
	for _, p := range []*string{hearthBin, agentBin, hostileBin, fcBin} {
		*p, _ = filepath.Abs(*p)
	}
	b := bench{hearth: *hearthBin, agent: *agentBin, hostile: *hostileBin, fc: *fcBin, sample: *sample, streams: *streams}
	if err := b.run(); err != nil {
		fmt.Fprintln(os.Stderr, "guestbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	hearth, agent, hostile, fc string
	sample                     time.Duration
	streams                    int
}

// row is one daemon's result.
type row struct {
	name                   string
	written                int64 // heartbeats the guest's channel took
	cpu                    time.Duration
	outcome                string
	idle, withStreams, bad []time.Duration
	held, refused          int // the attacker's event streams
}

const (
	limitsOff = `[agent]
max_messages_per_second = 1e12
message_burst = 1000000000000
max_bytes_per_second = 1e15
byte_burst = 1000000000000000
max_violations = 1000000000

[events]
max_streams_per_user = 1000000
`
	allStreams = `[events]
max_streams_per_user = 1000
`
	neverFail = `[agent]
max_violations = 1000000000
`
)

func (b bench) run() error {
	var rows []row
	for _, c := range []struct{ name, toml string }{
		{"limits off (nothing bounds the guest)", limitsOff},
		{"hearth defaults", ""},
		{"hearth defaults, every stream allowed (events.max_streams_per_user = 1000)", allStreams},
		{"hearth defaults, VM never failed (agent.max_violations = 10⁹)", neverFail},
	} {
		r, err := b.one(c.name, c.toml)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		rows = append(rows, r)
	}
	fmt.Printf("## hostile guest: heartbeat flood while its user opens %d idle event streams\n\n", b.streams)
	fmt.Printf("Made by `./bench/run.sh guest`: %d vCPUs. The guest is test/hostileagent under the fake Firecracker: the real agent, "+
		"authenticated with its VM's token, writing heartbeats as fast as its vsock socket takes them once ready, across reconnects. "+
		"Each daemon is attacked twice, from the attacker's VM being ready until it failed or %s passed: once alone, for the daemon's "+
		"CPU (utime+stime from /proc) and the heartbeats the guest wrote, once while another user times GET /v1/vms (one request "+
		"every 2 ms at most), which he also timed idle and with the attacker's streams open.\n\n", procstat.NumCPU(), b.sample)
	fmt.Println("| daemon | attacker's streams held / refused (429) | heartbeats the guest wrote | daemon CPU | CPU per million heartbeats | the attacker's VM | other user's p99: idle | + streams | + flood (requests) | flood / idle | flood / streams |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		per := "–"
		if r.written >= 100000 {
			per = fmt.Sprintf("%.2f s", r.cpu.Seconds()/(float64(r.written)/1e6))
		}
		fmt.Printf("| %s | %d / %d | %s | %s | %s | %s | %s | %s | %s (%d) | **%.1f×** | %.1f× |\n", r.name, r.held, r.refused, count(r.written), ms(r.cpu), per, r.outcome,
			ms(p99(r.idle)), ms(p99(r.withStreams)), ms(p99(r.bad)), len(r.bad),
			float64(p99(r.bad))/float64(p99(r.idle)), float64(p99(r.bad))/float64(p99(r.withStreams)))
	}
	fmt.Println()
	return nil
}

// one runs a daemon with agentTOML as its config, and the attack.
func (b bench) one(name, agentTOML string) (row, error) {
	r := row{name: name}
	state, err := os.MkdirTemp("", "hgbench-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(state)
	cfg := filepath.Join(state, "hearth.toml")
	if err := os.WriteFile(cfg, []byte(agentTOML), 0o600); err != nil {
		return r, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return r, err
	}
	addr := l.Addr().String()
	l.Close()
	env := append(os.Environ(), "HEARTH_STATE_DIR="+state, "HEARTH_LISTEN="+addr, "HEARTH_CONFIG="+cfg,
		"HEARTH_IMAGE_DIR=/var/cache/hearth/bench-images", "HEARTH_LOG_LEVEL=warn",
		"HEARTH_VM_DRIVER=firecracker", "HEARTH_FIRECRACKER_BINARY="+b.fc,
		"HEARTH_FAKEFC_AGENT="+b.hostile, "HEARTH_HOSTILE=heartbeat-flood")
	cli := func(args ...string) (string, error) {
		cmd := exec.Command(b.hearth, args...)
		cmd.Env = env
		out, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok {
			return "", fmt.Errorf("hearth %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return strings.TrimSpace(string(out)), err
	}
	if _, err := cli("image", "build", "--profile", "minimal", "--agent", b.agent); err != nil {
		return r, err
	}
	aliceKey, err := cli("apikey", "create", "--user", "alice")
	if err != nil {
		return r, err
	}
	bobKey, err := cli("apikey", "create", "--user", "bob")
	if err != nil {
		return r, err
	}
	logf, err := os.Create(filepath.Join(state, "hearth.log"))
	if err != nil {
		return r, err
	}
	defer logf.Close()
	d := exec.Command(b.hearth, "serve")
	d.Env, d.Stdout, d.Stderr = env, logf, logf
	if err := d.Start(); err != nil {
		return r, err
	}
	defer func() { _ = d.Process.Signal(syscall.SIGTERM); _ = d.Wait() }()
	alice, bob := client.New(addr, aliceKey), client.New(addr, bobKey)
	for i := 0; bob.Readyz(context.Background()) != nil; i++ {
		if i > 400 {
			return r, fmt.Errorf("daemon did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pid := d.Process.Pid

	r.idle = latencies(ctx, bob, 2000, nil)
	sctx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	if r.held, r.refused, err = openStreams(sctx, addr, aliceKey, b.streams); err != nil {
		return r, err
	}
	r.withStreams = latencies(ctx, bob, 2000, nil)

	// Two attacks: the first with nothing else going on, for the daemon's
	// CPU; the second while bob times his requests.
	for pass := 0; pass < 2; pass++ {
		v, err := alice.CreateVM(ctx, api.CreateVM{Image: "minimal"})
		if err != nil {
			return r, err
		}
		if _, err := alice.WaitVM(ctx, v.ID, "ready", 2*time.Minute); err != nil {
			return r, fmt.Errorf("the attacker's vm: %w", err)
		}
		cpu0, start := procstat.CPUTime(pid), time.Now()
		failed := make(chan api.VM, 1)
		go func() {
			got, err := alice.WaitVM(ctx, v.ID, "failed", b.sample)
			if err != nil {
				if cur, err := alice.GetVM(ctx, v.ID); err == nil {
					got = cur
				}
			}
			failed <- got
		}()
		if pass == 0 {
			v := <-failed
			r.cpu = procstat.CPUTime(pid) - cpu0
			if v.State == "failed" {
				r.outcome = fmt.Sprintf("failed after %.1f s: %s", time.Since(start).Seconds(), v.FailureReason)
			} else {
				r.outcome = fmt.Sprintf("still %s after %s", v.State, b.sample)
			}
			console, err := alice.Console(ctx, v.ID, 0, false)
			if err != nil {
				return r, err
			}
			r.written = writtenBy(console)
			console.Close()
		} else {
			stop := make(chan struct{})
			go func() { <-failed; close(stop) }()
			r.bad = latencies(ctx, bob, 0, stop)
		}
		if _, err := alice.DeleteVM(ctx, v.ID); err != nil {
			return r, err
		}
		if _, err := alice.WaitVM(ctx, v.ID, "destroyed", time.Minute); err != nil {
			return r, err
		}
	}
	return r, nil
}

// openStreams opens n event streams as key and keeps reading them until
// ctx is done; it says how many the daemon took and how many it refused
// (429: the user's stream cap).
func openStreams(ctx context.Context, addr, key string, n int) (held, refused int, err error) {
	tr := &http.Transport{MaxIdleConnsPerHost: n}
	hc := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/v1/events", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := hc.Do(req)
		if err != nil {
			return held, refused, err
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			resp.Body.Close()
			refused++
			continue
		}
		if resp.StatusCode != 200 {
			resp.Body.Close()
			return held, refused, fmt.Errorf("GET /v1/events: %s", resp.Status)
		}
		held++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer resp.Body.Close()
			_, err := io.Copy(io.Discard, resp.Body)
			if ctx.Err() == nil {
				errs <- err
			}
		}()
	}
	go func() { wg.Wait(); close(errs) }()
	return held, refused, nil
}

// latencies times GET /v1/vms as c, one request every 2 ms at most: n of
// them or, if n is 0, until stop is closed.
func latencies(ctx context.Context, c *client.Client, n int, stop <-chan struct{}) []time.Duration {
	var ds []time.Duration
	for n == 0 || len(ds) < n {
		select {
		case <-stop:
			return ds
		default:
		}
		start := time.Now()
		if _, err := c.ListVMs(ctx, api.ListVMsParams{}); err != nil {
			return ds
		}
		ds = append(ds, time.Since(start))
		time.Sleep(2*time.Millisecond - time.Since(start))
	}
	return ds
}

var floodReport = regexp.MustCompile(`hostile: heartbeats written: (\d+)`)

// writtenBy sums the heartbeats the hostile guest reported on its console:
// each connection has its own flood, whose count starts again at zero.
func writtenBy(console io.Reader) int64 {
	var total, last int64
	sc := bufio.NewScanner(console)
	for sc.Scan() {
		if m := floodReport.FindStringSubmatch(sc.Text()); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			if n < last {
				total += last
			}
			last = n
		}
	}
	return total + last
}

func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)*99/100]
}

func ms(d time.Duration) string {
	if d >= time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func count(n int64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.2f M", float64(n)/1e6)
	case n >= 1e4:
		return fmt.Sprintf("%.0f k", float64(n)/1e3)
	}
	return strconv.FormatInt(n, 10)
}
