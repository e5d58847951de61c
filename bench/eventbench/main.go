// Command eventbench measures how one user's idle event streams affect
// another user's writes. It runs hearth's API in process on loopback with
// the real SQLite store and the lifecycle manager over the in-memory fake
// driver (no guests: only the API, the store and the event bus are
// measured). User bob creates a VM, waits for it to be ready, deletes it and
// waits for it to be destroyed, again and again; each cycle writes six
// events. Meanwhile user alice holds -streams idle GET /v1/events streams
// open, or none. Rounds alternate between the two, so drift in the
// machine's load hits both sides alike.
//
//	go run ./bench/eventbench -streams 300 -rounds 3 -duration 10s
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vm/vmfake"
)

func main() {
	streams := flag.Int("streams", 300, "idle event streams alice holds open")
	rounds := flag.Int("rounds", 3, "rounds per side")
	duration := flag.Duration("duration", 10*time.Second, "length of one round")
	streamCap := flag.Int("stream-cap", -1, "the server's cap on one user's concurrent streams (-1: the configured default, 0: none)")
	flag.Parse()
	if err := run(*streams, *rounds, *duration, *streamCap); err != nil {
		fmt.Fprintln(os.Stderr, "eventbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	base        string
	alice, bob  string
	hc          *http.Client
	streamsOpen func() int
}

func run(streams, rounds int, duration time.Duration, streamCap int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "eventbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(ctx, dir+"/hearth.db")
	if err != nil {
		return err
	}
	defer st.Close()
	now := time.Now().UTC()
	for _, u := range []string{"alice", "bob"} {
		if err := st.CreateUser(ctx, store.User{ID: u, Name: u, CreatedAt: now}); err != nil {
			return err
		}
	}
	if err := st.PutImage(ctx, store.Image{ID: "0123456789abcdef0123", Name: "minimal", Role: "minimal",
		KernelPath: "/k", InitrdPath: "/i", RootfsPath: "/r", CreatedAt: now, Status: store.ImageVerified}); err != nil {
		return err
	}
	key := func(user string) (string, error) {
		k, rec, err := auth.NewKey(user, store.ScopeUser, user, now)
		if err != nil {
			return "", err
		}
		return k, st.CreateAPIKey(ctx, rec)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mgr := vm.New(vm.Config{
		VMsDir: dir + "/vms", Roles: map[string][]int{"minimal": {}},
		DefaultVCPUs: 1, MaxVCPUs: 4, DefaultMemoryMiB: 128, MinMemoryMiB: 64, MaxMemoryMiB: 2048,
		BootTimeout: 30 * time.Second, MaxBootTimeout: time.Minute, StopTimeout: 10 * time.Millisecond, // the fake agent never powers off: no grace to wait
		HeartbeatInterval: time.Second, HeartbeatTimeout: 30 * time.Second,
	}, vm.Deps{Store: st, Driver: vmfake.NewDriver(), Agents: &vmfake.Agents{}, Network: vmfake.NewNetwork(), Log: log})
	if err := mgr.Start(ctx); err != nil {
		return err
	}
	defer func() { _ = mgr.Shutdown(context.Background()) }()
	srv := &api.Server{VMs: mgr, Store: st, Verifier: &auth.Verifier{Keys: st, Now: time.Now}, Log: log, Version: "bench",
		Ready: func() bool { return true }}
	configure(srv, streamCap)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv.Handler()}
	go func() { _ = hs.Serve(ln) }() // ends with Close
	defer hs.Close()

	b := &bench{base: "http://" + ln.Addr().String(), hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	if b.alice, err = key("alice"); err != nil {
		return err
	}
	if b.bob, err = key("bob"); err != nil {
		return err
	}
	// Warm up: the first cycles pay for connections and page cache.
	if _, _, err := b.cycles(ctx, 2*time.Second); err != nil {
		return err
	}

	var idle, loaded []float64
	var lat0, latN []time.Duration
	accepted, refused := 0, map[int]int{}
	for range rounds {
		rate, lats, err := b.cycles(ctx, duration)
		if err != nil {
			return err
		}
		idle, lat0 = append(idle, rate), append(lat0, lats...)

		sctx, cancel := context.WithCancel(ctx)
		ok, codes, wg := b.openStreams(sctx, streams)
		accepted = ok
		refused = codes
		rate, lats, err = b.cycles(ctx, duration)
		cancel()
		wg.Wait()
		if err != nil {
			return err
		}
		loaded, latN = append(loaded, rate), append(latN, lats...)
	}
	fmt.Printf("bob's VM cycles (create → ready → delete → destroyed, 6 events each) with alice's idle GET /v1/events streams; %d rounds of %s per side, alternating\n\n", rounds, duration)
	fmt.Println("| alice's streams asked | held open | refused | bob's cycles/s (median of rounds) | bob's events/s | cycle p50 | cycle p99 |")
	fmt.Println("|---|---|---|---|---|---|---|")
	fmt.Printf("| 0 | 0 | 0 | %.1f | %.0f | %s | %s |\n", median(idle), 6*median(idle), pct(lat0, 50), pct(lat0, 99))
	fmt.Printf("| %d | %d | %s | %.1f | %.0f | %s | %s |\n", streams, accepted, codesString(refused), median(loaded), 6*median(loaded), pct(latN, 50), pct(latN, 99))
	fmt.Printf("\nslowdown (idle / with streams, median): **%.2f×**\n", median(idle)/median(loaded))
	return nil
}

// cycles runs bob's create/delete cycles for d and returns cycles per
// second and each cycle's duration.
func (b *bench) cycles(ctx context.Context, d time.Duration) (float64, []time.Duration, error) {
	var lats []time.Duration
	start := time.Now()
	for time.Since(start) < d {
		t0 := time.Now()
		var v struct {
			ID string `json:"id"`
		}
		if err := b.do(ctx, "POST", "/v1/vms", `{"image":"minimal"}`, http.StatusAccepted, &v); err != nil {
			return 0, nil, err
		}
		if err := b.do(ctx, "GET", "/v1/vms/"+v.ID+"/wait?state=ready&timeout=30s", "", http.StatusOK, nil); err != nil {
			return 0, nil, err
		}
		if err := b.do(ctx, "DELETE", "/v1/vms/"+v.ID, "", http.StatusAccepted, nil); err != nil {
			return 0, nil, err
		}
		if err := b.do(ctx, "GET", "/v1/vms/"+v.ID+"/wait?state=destroyed&timeout=30s", "", http.StatusOK, nil); err != nil {
			return 0, nil, err
		}
		lats = append(lats, time.Since(t0))
	}
	return float64(len(lats)) / time.Since(start).Seconds(), lats, nil
}

func (b *bench) do(ctx context.Context, method, path, body string, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, b.base+path, bytes.NewBufferString(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+b.bob)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want && !(method == "DELETE" && resp.StatusCode == http.StatusOK) {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, data)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// openStreams opens n of alice's event streams and keeps reading them
// until ctx ends. It returns once every request has been answered: how
// many streams are open and the status codes of the refused ones.
func (b *bench) openStreams(ctx context.Context, n int) (int, map[int]int, *sync.WaitGroup) {
	tr := &http.Transport{MaxIdleConnsPerHost: -1}
	hc := &http.Client{Transport: tr}
	var (
		mu      sync.Mutex
		open    int
		refused = map[int]int{}
		wg      sync.WaitGroup
		ready   sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		ready.Add(1)
		go func() {
			defer wg.Done()
			once := sync.OnceFunc(ready.Done)
			defer once()
			req, err := http.NewRequestWithContext(ctx, "GET", b.base+"/v1/events", nil)
			if err != nil {
				return
			}
			req.Header.Set("Authorization", "Bearer "+b.alice)
			req.Header.Set("Accept", "text/event-stream")
			resp, err := hc.Do(req)
			if err != nil {
				mu.Lock()
				refused[0]++
				mu.Unlock()
				return
			}
			defer resp.Body.Close()
			mu.Lock()
			if resp.StatusCode == http.StatusOK {
				open++
			} else {
				refused[resp.StatusCode]++
			}
			mu.Unlock()
			once()
			if resp.StatusCode == http.StatusOK {
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
				}
			}
		}()
	}
	ready.Wait()
	go func() { <-ctx.Done(); tr.CloseIdleConnections() }()
	return open, refused, &wg
}

func codesString(m map[int]int) string {
	if len(m) == 0 {
		return "0"
	}
	s := ""
	for code, n := range m {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%d × %d", n, code)
	}
	return s
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s) - 1) * p / 100
	return fmt.Sprintf("%.1f ms", float64(s[i].Microseconds())/1000)
}

// configure applies the server settings the bench varies: the cap on one
// user's streams is the configured default unless -stream-cap says
// otherwise (0: no cap, to measure the filtering alone).
func configure(srv *api.Server, streamCap int) {
	srv.MaxStreams = config.Default().Events.MaxStreamsPerUser
	if streamCap >= 0 {
		srv.MaxStreams = streamCap
	}
}
