package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

const testMAC = "02:ab:cd:00:00:05"

// fakeNet is netOps over an in-memory set of links. It records every call
// but LinkByMAC, and can be told to fail one kind of call.
type fakeNet struct {
	mu     sync.Mutex
	links  map[string]*fakeLink
	calls  []string
	failOn string    // the first word of a call that fails, e.g. "route"
	appear time.Time // links other than lo do not exist before this
	route  string    // the default route, "dev via gw"
}

type fakeLink struct {
	mac    net.HardwareAddr
	up     bool
	mtu    int
	addrs  []netip.Prefix
	routes []netip.Prefix // link-scope routes through it
}

// newFakeNet returns lo and eth0 (with testMAC, down, an old address) and
// eth1 (another MAC).
func newFakeNet() *fakeNet {
	return &fakeNet{links: map[string]*fakeLink{
		"lo":   {mtu: 65536, addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}},
		"eth0": {mac: mustMAC(testMAC), mtu: 1500, addrs: []netip.Prefix{netip.MustParsePrefix("10.9.9.9/8"), netip.MustParsePrefix("2001:db8::9/64")}},
		"eth1": {mac: mustMAC("02:ab:cd:00:00:06"), mtu: 1500},
	}}
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// do records a call and returns the link it is about.
func (f *fakeNet) do(call, name string) (*fakeLink, error) {
	f.calls = append(f.calls, call)
	if strings.HasPrefix(call, f.failOn+" ") && f.failOn != "" {
		return nil, fmt.Errorf("fake %s failure", f.failOn)
	}
	l, ok := f.links[name]
	if !ok || (name != "lo" && time.Now().Before(f.appear)) {
		return nil, errors.New("link not found")
	}
	return l, nil
}

func (f *fakeNet) LinkByMAC(mac net.HardwareAddr) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Now().Before(f.appear) {
		return "", errNoLink
	}
	for name, l := range f.links {
		if l.mac.String() == mac.String() {
			return name, nil
		}
	}
	return "", errNoLink
}

func (f *fakeNet) LinkUp(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.do("up "+name, name)
	if err == nil {
		l.up = true
	}
	return err
}

func (f *fakeNet) ReplaceAddr(name string, addr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.do("addr "+name+" "+addr.String(), name)
	if err != nil {
		return err
	}
	l.addrs = slices.DeleteFunc(l.addrs, func(p netip.Prefix) bool { return p.Addr().Is4() == addr.Addr().Is4() })
	l.addrs = append(l.addrs, addr)
	return nil
}

func (f *fakeNet) SetMTU(name string, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.do(fmt.Sprint("mtu ", name, " ", mtu), name)
	if err == nil {
		l.mtu = mtu
	}
	return err
}

func (f *fakeNet) ReplaceDefaultRoute(name string, gw netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.do("route "+name+" via "+gw.String(), name); err != nil {
		return err
	}
	f.route = name + " via " + gw.String()
	return nil
}

// FirstNIC returns the first link by name with a MAC, but lo.
func (f *fakeNet) FirstNIC() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Now().Before(f.appear) {
		return "", errNoLink
	}
	var names []string
	for name, l := range f.links {
		if name != "lo" && l.mac != nil {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "", errNoLink
	}
	return slices.Min(names), nil
}

func (f *fakeNet) IPv4Addrs(name string) ([]netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[name]
	if !ok {
		return nil, errors.New("link not found")
	}
	var v4 []netip.Prefix
	for _, p := range l.addrs {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		}
	}
	return v4, nil
}

func (f *fakeNet) AddLinkAddr(name string, addr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.do("addr+ "+name+" "+addr.String(), name)
	if err == nil && !slices.Contains(l.addrs, addr) {
		l.addrs = append(l.addrs, addr)
	}
	return err
}

func (f *fakeNet) DelAddr(name string, addr netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.do("addr- "+name+" "+addr.String(), name)
	if err == nil {
		l.addrs = slices.DeleteFunc(l.addrs, func(p netip.Prefix) bool { return p == addr })
	}
	return err
}

// AddLinkRoute reports a route to dst through any link as already there.
func (f *fakeNet) AddLinkRoute(name string, dst netip.Prefix) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.do("route+ "+name+" "+dst.String(), name)
	if err != nil {
		return false, err
	}
	for _, other := range f.links {
		if slices.Contains(other.routes, dst) {
			return false, nil
		}
	}
	l.routes = append(l.routes, dst)
	return true, nil
}

func (f *fakeNet) DelLinkRoute(name string, dst netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, err := f.do("route- "+name+" "+dst.String(), name)
	if err == nil {
		l.routes = slices.DeleteFunc(l.routes, func(p netip.Prefix) bool { return p == dst })
	}
	return err
}

// state describes the links and the route.
func (f *fakeNet) state() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range f.links {
			if !yield(n) {
				return
			}
		}
	}) {
		l := f.links[name]
		fmt.Fprintf(&b, "%s up=%v mtu=%d addrs=%v", name, l.up, l.mtu, l.addrs)
		if len(l.routes) > 0 {
			fmt.Fprintf(&b, " routes=%v", l.routes)
		}
		b.WriteString("; ")
	}
	return b.String() + "default " + f.route
}

func (f *fakeNet) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func testNetwork() *agentapi.NetworkConfig {
	return &agentapi.NetworkConfig{
		MAC: testMAC, Address: "172.30.0.5/24", Gateway: "172.30.0.1",
		DNS: []string{"172.30.0.1", "2001:db8::53"}, MTU: 1450,
	}
}

// netOptions returns options that configure the network through fn and
// write resolv.conf in a temporary directory, whose path is returned.
func netOptions(t *testing.T, token []byte, fn *fakeNet) (Options, string, *logBuffer) {
	t.Helper()
	opts, logs := testOptions(t, token)
	opts.netOps = fn
	opts.linkTimeout = 5 * time.Second
	opts.resolvConf = filepath.Join(t.TempDir(), "resolv.conf")
	return opts, opts.resolvConf, logs
}

const wantResolvConf = "# Written by hearth-agent from the host's network configuration.\n" +
	"nameserver 172.30.0.1\nnameserver 2001:db8::53\n"

func TestNetworkConfigured(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			token := newToken(t)
			fn := newFakeNet()
			opts, resolv, _ := netOptions(t, token, fn)
			host, guestConn := tr.connect(t)
			startGuest(t, guestConn, token, opts)
			port := listenAny(t)

			s := connectSession(t, host, token, agentapi.Config{
				RequiredPorts: []int{port}, HeartbeatInterval: time.Hour, Network: testNetwork(),
			})
			ev := expectEvent(t, s, agentapi.TypeNetworkReady)
			if ev.Interface != "eth0" || ev.Address != "172.30.0.5/24" || ev.Gateway != "172.30.0.1" || ev.DNSError != "" {
				t.Fatalf("network_ready %+v", ev)
			}
			expectEvent(t, s, agentapi.TypePortReady)
			if ev := expectEvent(t, s, agentapi.TypeReady); ev.Interface != "eth0" || ev.Address != "172.30.0.5/24" {
				t.Fatalf("ready %+v", ev)
			}

			want := []string{"up lo", "addr eth0 172.30.0.5/24", "mtu eth0 1450", "up eth0", "route eth0 via 172.30.0.1"}
			if got := fn.takeCalls(); !slices.Equal(got, want) {
				t.Fatalf("calls %q, want %q", got, want)
			}
			// The old IPv4 address is gone; IPv6 and the other links are untouched.
			wantState := "eth0 up=true mtu=1450 addrs=[2001:db8::9/64 172.30.0.5/24]; eth1 up=false mtu=1500 addrs=[]; " +
				"lo up=true mtu=65536 addrs=[127.0.0.1/8]; default eth0 via 172.30.0.1"
			if got := fn.state(); got != wantState {
				t.Fatalf("state\n%s, want\n%s", got, wantState)
			}
			b, err := os.ReadFile(resolv)
			if err != nil || string(b) != wantResolvConf {
				t.Fatalf("resolv.conf %q, %v; want %q", b, err, wantResolvConf)
			}
			if fi, err := os.Stat(resolv); err != nil || fi.Mode().Perm() != 0o644 {
				t.Fatalf("resolv.conf mode: %v, %v", fi.Mode(), err)
			}
			if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(resolv), ".resolv.conf.tmp-*")); len(leftovers) > 0 {
				t.Fatalf("temporary files left: %v", leftovers)
			}
		})
	}
}

// TestNetworkMinimal checks a network with neither MTU, gateway nor DNS.
func TestNetworkMinimal(t *testing.T) {
	token := newToken(t)
	fn := newFakeNet()
	opts, resolv, _ := netOptions(t, token, fn)
	host, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	s := connectSession(t, host, token, agentapi.Config{Network: &agentapi.NetworkConfig{MAC: testMAC, Address: "172.30.0.5/32"}})
	if ev := expectEvent(t, s, agentapi.TypeNetworkReady); ev.Gateway != "" {
		t.Fatalf("network_ready %+v", ev)
	}
	expectEvent(t, s, agentapi.TypeReady)
	want := []string{"up lo", "addr eth0 172.30.0.5/32", "up eth0"}
	if got := fn.takeCalls(); !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	if _, err := os.Stat(resolv); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("resolv.conf written: %v", err)
	}
}

// TestNetworkLinkAppearsLate checks that the agent waits for the NIC and
// reports nothing else before.
func TestNetworkLinkAppearsLate(t *testing.T) {
	token := newToken(t)
	fn := newFakeNet()
	fn.appear = time.Now().Add(300 * time.Millisecond)
	opts, _, _ := netOptions(t, token, fn)
	host, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	port := listenAny(t) // open at once: only the network holds ready back

	s := connectSession(t, host, token, agentapi.Config{RequiredPorts: []int{port}, Network: testNetwork()})
	ev := expectEvent(t, s, agentapi.TypeNetworkReady)
	if ev.At.Before(fn.appear) {
		t.Fatalf("network_ready at %v, before the link appeared at %v", ev.At, fn.appear)
	}
	expectEvent(t, s, agentapi.TypePortReady)
	expectEvent(t, s, agentapi.TypeReady)
}

func TestNetworkFailed(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(o *Options, f *fakeNet)
		wantErr string
	}{
		{"route fails", func(o *Options, f *fakeNet) { f.failOn = "route" }, "set default route via 172.30.0.1 on eth0: fake route failure"},
		{"address fails", func(o *Options, f *fakeNet) { f.failOn = "addr" }, "set address 172.30.0.5/24 on eth0"},
		{"no such link", func(o *Options, f *fakeNet) {
			delete(f.links, "eth0")
			o.linkTimeout = 200 * time.Millisecond
		}, "find link with mac 02:ab:cd:00:00:05 within 200ms: no such link"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := newToken(t)
			fn := newFakeNet()
			opts, _, logs := netOptions(t, token, fn)
			tt.setup(&opts, fn)
			host, guestConn := unixPair(t)
			startGuest(t, guestConn, token, opts)
			port := listenAny(t)

			s := connectSession(t, host, token, agentapi.Config{
				RequiredPorts: []int{port}, HeartbeatInterval: 10 * time.Millisecond, Network: testNetwork(),
			})
			ev := expectEvent(t, s, agentapi.TypeNetworkFailed)
			if !strings.Contains(ev.Error, tt.wantErr) {
				t.Fatalf("network_failed %q, want it to contain %q", ev.Error, tt.wantErr)
			}
			logs.waitFor(t, "network configuration failed")
			// Nothing follows: no port_ready, no ready, no heartbeats; but
			// the agent still answers requests.
			if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			select {
			case ev := <-s.Events():
				t.Fatalf("event after network_failed: %+v", ev)
			case <-time.After(300 * time.Millisecond):
			}
		})
	}
}

// TestNetworkInvalidFromHost checks that the agent validates the network
// too, answering a bad one with network_failed.
func TestNetworkInvalidFromHost(t *testing.T) {
	token := newToken(t)
	fn := newFakeNet()
	opts, _, _ := netOptions(t, token, fn)
	hostConn, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	h := newRawHost(t, hostConn)

	bad := testNetwork()
	bad.Gateway = "10.0.0.1"
	h.handshake(token, agentapi.Config{Network: bad})
	var failed agentapi.NetworkFailed
	if err := h.next(agentapi.TypeNetworkFailed).DecodeBody(&failed); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(failed.Error, "invalid network config: network gateway") {
		t.Fatalf("network_failed %q", failed.Error)
	}
	if calls := fn.takeCalls(); len(calls) != 0 {
		t.Fatalf("calls %q for an invalid network", calls)
	}
}

// TestNetworkResolvConfFails checks that an unwritable resolv.conf is
// reported but not fatal.
func TestNetworkResolvConfFails(t *testing.T) {
	token := newToken(t)
	fn := newFakeNet()
	opts, _, _ := netOptions(t, token, fn)
	opts.resolvConf = filepath.Join(t.TempDir(), "missing-dir", "resolv.conf")
	host, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)

	s := connectSession(t, host, token, agentapi.Config{Network: testNetwork()})
	ev := expectEvent(t, s, agentapi.TypeNetworkReady)
	if !strings.Contains(ev.DNSError, "missing-dir") {
		t.Fatalf("network_ready dns error %q", ev.DNSError)
	}
	expectEvent(t, s, agentapi.TypeReady)
}

// sharedConn is one host connection over a stream that outlives it, as a
// restarted host daemon reconnecting to the same virtio-serial port looks
// to the guest: Close only interrupts blocked I/O.
type sharedConn struct {
	net.Conn
	once sync.Once
}

func (c *sharedConn) Close() error {
	c.once.Do(func() { c.Conn.SetDeadline(time.Unix(1, 0)) })
	return nil
}

// TestNetworkReappliedOnReconnect checks that a host that reconnects and
// sends the same config again gets network_ready and ready again, and
// that re-applying changes nothing.
func TestNetworkReappliedOnReconnect(t *testing.T) {
	token := newToken(t)
	fn := newFakeNet()
	opts, resolv, _ := netOptions(t, token, fn)
	host, guestConn := unixPair(t)
	startGuest(t, guestConn, token, opts)
	cfg := agentapi.Config{HeartbeatInterval: 20 * time.Millisecond, Network: testNetwork()}

	var states, calls []string
	var inode uint64
	for i := range 3 {
		host.SetDeadline(time.Time{})
		s := connectSession(t, &sharedConn{Conn: host}, token, cfg)
		expectEvent(t, s, agentapi.TypeNetworkReady)
		expectEvent(t, s, agentapi.TypeReady)
		expectEvent(t, s, agentapi.TypeHeartbeat)
		s.Close()

		states = append(states, fn.state())
		calls = append(calls, strings.Join(fn.takeCalls(), ", "))
		fi, err := os.Stat(resolv)
		if err != nil {
			t.Fatal(err)
		}
		ino := fi.Sys().(*syscall.Stat_t).Ino
		if i > 0 && ino != inode {
			t.Fatalf("reconnect %d rewrote resolv.conf", i)
		}
		inode = ino
	}
	for i := 1; i < len(states); i++ {
		if states[i] != states[0] || calls[i] != calls[0] {
			t.Fatalf("round %d: state %s after %s; round 0: %s after %s", i, states[i], calls[i], states[0], calls[0])
		}
	}
}

func TestWriteResolvConfReplacesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "stub-resolv.conf")
	if err := os.WriteFile(target, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	servers := []netip.Addr{netip.MustParseAddr("192.0.2.53")}
	if err := writeResolvConf(path, servers); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("resolv.conf is not a regular file: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "nameserver 127.0.0.53\n" {
		t.Fatalf("symlink target changed: %q", b)
	}
	if b, _ := os.ReadFile(path); string(b) != string(resolvConfContent(servers)) {
		t.Fatalf("resolv.conf %q", b)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
