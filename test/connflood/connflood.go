// Package connflood floods an HTTP server with idle connections from
// helper processes, for tests of the API's connection limits. Each helper
// is the test binary itself, re-run, so it has a descriptor limit of its
// own: the flood cannot borrow the server's descriptors (as it would
// in-process), and the server's limit is what is tested.
//
// A test package that floods declares
//
//	func TestConnFloodHelper(t *testing.T) { connflood.Helper() }
//
// and calls Open.
package connflood

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	envAddr  = "HEARTH_CONNFLOOD_ADDR"
	envN     = "HEARTH_CONNFLOOD_N"
	envEvery = "HEARTH_CONNFLOOD_REQUEST_EVERY"
)

// Request is what every Options.RequestEvery-th flood connection sends,
// once, before it idles: a request without an API key (answered 401, then
// keep-alive idle). The others send nothing.
const Request = "GET /v1/vms HTTP/1.1\r\nHost: hearth\r\n\r\n"

// Options shape a flood.
type Options struct {
	// Prefix runs each helper (e.g. "ip netns exec NS"); may be empty.
	Prefix []string
	// PerHelper is the most connections one helper process opens.
	PerHelper int
	// RequestEvery: every RequestEvery-th connection sends Request (0:
	// none does).
	RequestEvery int
}

// Helper runs the flood when the process was started by Open, and returns
// at once otherwise. It opens the connections, says how many on stdout,
// and holds them until stdin closes.
func Helper() {
	addr, n := os.Getenv(envAddr), os.Getenv(envN)
	if addr == "" {
		return
	}
	count, err := strconv.Atoi(n)
	every, err2 := strconv.Atoi(os.Getenv(envEvery))
	if err != nil || err2 != nil {
		fmt.Println("bad", envN, n, envEvery, os.Getenv(envEvery))
		os.Exit(2)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var failed atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(count); i = next.Add(1) {
				c, err := net.DialTimeout("tcp", addr, 30*time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				if every > 0 && i%int64(every) == 0 {
					_, _ = io.WriteString(c, Request)
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	fmt.Printf("opened %d failed %d\n", len(conns), failed.Load())
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// Flood is a running flood.
type Flood struct {
	Opened, Failed int
	stops          []func()
}

// Close ends the helpers and their connections.
func (f *Flood) Close() {
	for _, s := range f.stops {
		s()
	}
	f.stops = nil
}

// Open floods addr with n connections from helper processes and returns
// once all are open.
func Open(t *testing.T, addr string, n int, o Options) *Flood {
	t.Helper()
	f := &Flood{}
	t.Cleanup(f.Close)
	type result struct {
		line string
		err  error
	}
	if o.PerHelper <= 0 {
		o.PerHelper = 5000
	}
	results := make(chan result, (n+o.PerHelper-1)/o.PerHelper)
	helpers := 0
	for left := n; left > 0; left -= o.PerHelper {
		args := append(append([]string{}, o.Prefix...), os.Args[0], "-test.run=^TestConnFloodHelper$", "-test.count=1")
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), envAddr+"="+addr, envN+"="+strconv.Itoa(min(left, o.PerHelper)),
			envEvery+"="+strconv.Itoa(o.RequestEvery))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		f.stops = append(f.stops, func() {
			stdin.Close()
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
		helpers++
		go func() {
			line, err := bufio.NewReader(stdout).ReadString('\n')
			results <- result{line, err}
		}()
	}
	for range helpers {
		r := <-results
		var opened, failed int
		if _, err := fmt.Sscanf(strings.TrimSpace(r.line), "opened %d failed %d", &opened, &failed); err != nil {
			t.Fatalf("flood helper said %q (%v)", r.line, r.err)
		}
		f.Opened += opened
		f.Failed += failed
	}
	return f
}
