package vm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agent"
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/safetext"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/test/hostileagent/hostile"
)

// These tests run the supervisor against the real agent (internal/agent)
// over a real Unix socket, through the real dialer (vm.AgentAPIDialer),
// with package hostile making the agent misbehave once it is ready.

// countingStore counts writes to VM rows.
type countingStore struct {
	store.Store
	writes atomic.Int64
}

func (c *countingStore) UpdateVM(ctx context.Context, id, msg string, fn func(*store.VM) error) (store.VM, *store.Event, error) {
	c.writes.Add(1)
	return c.Store.UpdateVM(ctx, id, msg, fn)
}

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

type hostileEnv struct {
	*env
	st    *countingStore
	logs  *syncBuffer
	conns atomic.Int64 // agent connections accepted
}

// newHostileEnv returns a manager that talks to real agents with the real
// dialer, and no guest network; tweak, if set, changes its configuration.
func newHostileEnv(t *testing.T, tweak func(*vm.Config)) (*hostileEnv, *vm.Manager) {
	e := &hostileEnv{env: newEnv(t), logs: &syncBuffer{}}
	e.st = &countingStore{Store: e.env.st}
	cfg := e.config()
	if tweak != nil {
		tweak(&cfg)
	}
	m := startManager(t, cfg, vm.Deps{Store: e.st, Driver: e.driver, Agents: vm.AgentAPIDialer{},
		Log: slog.New(slog.NewTextHandler(e.logs, nil))})
	return e, m
}

// guest plays v's guest: the real agent, misbehaving as modes say, on
// every connection the host makes to v's agent socket.
func (e *hostileEnv) guest(v store.VM, modes ...string) {
	t := e.t
	t.Helper()
	tokenPath := filepath.Join(v.Dir, "token")
	deadline := time.Now().Add(10 * time.Second)
	var token []byte
	for {
		raw, err := os.ReadFile(tokenPath)
		if err == nil {
			token, err = agentapi.ParseToken(string(raw)) // fails while it is being written
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no token for %s: %v", v.ID, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ms, err := hostile.Modes(strings.Join(modes, ","))
	if err != nil {
		t.Fatal(err)
	}
	bad := hostile.New(ms)
	l, err := net.Listen("unix", filepath.Join(v.Dir, "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		l.Close()
		wg.Wait()
	})
	opts := agent.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), PowerOff: func() error { return nil }}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			e.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				stop := context.AfterFunc(ctx, func() { c.Close() })
				defer stop()
				_ = agent.Serve(ctx, bad.Wrap(c), token, opts)
			}()
		}
	}()
}

func (e *hostileEnv) create(m *vm.Manager, modes ...string) store.VM {
	v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		e.t.Fatal(err)
	}
	e.guest(v, modes...)
	return v
}

// A guest that breaks the protocol fails its VM with the reason after
// three violations: three connections, a handful of store writes and log
// lines, however fast it goes.
func TestAgentBreakingTheProtocolFailsTheVM(t *testing.T) {
	cases := []struct{ mode, reason string }{
		{hostile.HeartbeatFlood, "guest agent broke protocol: heartbeat flood (more than"},
		{hostile.BadPort, "guest agent broke protocol: port_ready: port 1 is not required (3 violations within 10m0s)"},
		{hostile.Malformed, "guest agent broke protocol: malformed message"},
		{hostile.Oversize, "guest agent broke protocol: heartbeat message of 328"},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			e, m := newHostileEnv(t, nil)
			v := e.create(m, c.mode)
			start := time.Now()
			v = waitFor(t, m, v.ID, store.StateFailed)
			if !strings.HasPrefix(v.FailureReason, c.reason) {
				t.Fatalf("failure reason %q, want it to start with %q", v.FailureReason, c.reason)
			}
			t.Logf("failed after %v: %s", time.Since(start).Round(time.Millisecond), v.FailureReason)
			if n := e.conns.Load(); n > vm.DefaultAgentMaxViolations {
				t.Errorf("%d agent connections, want at most %d", n, vm.DefaultAgentMaxViolations)
			}
			// pending → booting (+handle), ready (maybe), agent facts,
			// failed: never one per reconnect.
			if n := e.st.writes.Load(); n > 6 {
				t.Errorf("%d writes to the vm's row", n)
			}
			if n := strings.Count(e.logs.String(), "agent session ended"); n > 2 {
				t.Errorf("%d log lines about ended sessions:\n%s", n, e.logs.String())
			}
		})
	}
}

// A guest that, once ready, hangs up after every ready, before any
// heartbeat, is reconnected to with growing delays, and neither its
// connections nor its readys count as heartbeats: the VM fails one
// heartbeat timeout after its last heartbeat.
func TestReconnectsBackOffAndAreNotHeartbeats(t *testing.T) {
	e, m := newHostileEnv(t, nil)
	v := e.create(m, hostile.Hangup)
	ready := waitFor(t, m, v.ID, store.StateReady)
	v = waitFor(t, m, v.ID, store.StateFailed)
	took := v.StoppedAt.Sub(ready.ReadyAt)
	hbTimeout := e.config().HeartbeatTimeout
	if took < hbTimeout || took > 3*hbTimeout || !strings.Contains(v.FailureReason, "agent stopped answering") {
		t.Fatalf("failed %v after ready (heartbeat timeout %v): %q", took, hbTimeout, v.FailureReason)
	}
	// Three heartbeats came in the first 150 ms; none since.
	if v.LastHeartbeatAt.After(ready.ReadyAt.Add(time.Second)) {
		t.Errorf("last heartbeat %v, ready at %v: connections moved it", v.LastHeartbeatAt, ready.ReadyAt)
	}
	// Delays of 0.1-0.2 s, 0.2-0.4 s, then up to a third of the timeout.
	if n := e.conns.Load(); n < 2 || n > 10 {
		t.Errorf("%d connections in %v", n, took)
	}
	// The first end is logged, the others summed up once the supervisor
	// exits (just after the VM is failed).
	deadline := time.Now().Add(10 * time.Second)
	for e.conns.Load() > 2 && !strings.Contains(e.logs.String(), "more times in the last") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	logs := e.logs.String()
	if n := strings.Count(logs, "agent session ended"); n > 2 || (e.conns.Load() > 2 && !strings.Contains(logs, "more times in the last")) {
		t.Errorf("session ends logged %d times, want the first and a summary:\n%s", n, logs)
	}
	if n := e.st.writes.Load(); n > 6 {
		t.Errorf("%d writes to the vm's row", n)
	}
}

// The legitimate agent, heartbeating 100 times a second, stays well within
// the limits: one connection, no session ends.
func TestRealAgentStaysWithinLimits(t *testing.T) {
	e, m := newHostileEnv(t, func(c *vm.Config) {
		c.HeartbeatInterval = 10 * time.Millisecond
		c.AgentLimits = agentapi.Limits{MessageBurst: agentapi.MaxRequiredPorts + 2, MessageRate: 1}
	})
	v := e.create(m)
	waitFor(t, m, v.ID, store.StateReady)
	time.Sleep(4 * time.Second) // 400 heartbeats, more than the burst
	if v, err := m.Get(context.Background(), v.ID); err != nil || v.State != store.StateReady {
		t.Fatalf("vm %s: %v %q", v.State, err, v.FailureReason)
	}
	if n := e.conns.Load(); n != 1 {
		t.Errorf("%d connections", n)
	}
	if strings.Contains(e.logs.String(), "session ended") {
		t.Errorf("a session ended:\n%s", e.logs.String())
	}
}

// What the guest says about itself is stored clean.
func TestAgentVersionIsStoredClean(t *testing.T) {
	e, m := newHostileEnv(t, nil)
	v := e.create(m, hostile.EvilText)
	v = waitFor(t, m, v.ID, store.StateReady)
	if want := safetext.Line(hostile.EvilString, 256); v.AgentVersion != want || !safetext.IsClean(v.AgentVersion) {
		t.Fatalf("agent version stored as %q, want %q", v.AgentVersion, want)
	}
	if _, err := m.Delete(context.Background(), v.ID); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	waitFor(t, m, v.ID, store.StateDestroyed)
}

// A console tail is the guest's writing: it comes out clean, lines kept.
func TestConsoleTailIsClean(t *testing.T) {
	dir := t.TempDir()
	console := "[    0.1] booting\r\n" + hostile.EvilString + "\n\tlast line\n"
	if err := os.WriteFile(filepath.Join(dir, "console.log"), []byte(console), 0o600); err != nil {
		t.Fatal(err)
	}
	// A plain console file, as a VM started by an older hearth has.
	h := vmm.Handle{Dir: dir, ConsolePath: filepath.Join(dir, "console.log")}
	tail := vm.ConsoleTail(store.VM{Dir: dir, Handle: h.Marshal()}, 4096)
	if want := safetext.Text(console, 0); tail != want || !safetext.IsClean(tail) || !strings.Contains(tail, "\tlast line\n") {
		t.Fatalf("console tail %q, want %q", tail, want)
	}
}
