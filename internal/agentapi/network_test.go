package agentapi

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func validNetwork() NetworkConfig {
	return NetworkConfig{
		MAC: "02:ab:cd:00:00:05", Address: "172.30.0.5/24", Gateway: "172.30.0.1",
		DNS: []string{"172.30.0.1", "2001:db8::53"}, MTU: 1450,
	}
}

func TestNetworkConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(n *NetworkConfig)
		wantErr string // "" means valid
	}{
		{"valid", func(n *NetworkConfig) {}, ""},
		{"no gateway, dns or mtu", func(n *NetworkConfig) { n.Gateway, n.DNS, n.MTU = "", nil, 0 }, ""},
		{"upper-case mac", func(n *NetworkConfig) { n.MAC = "02:AB:CD:00:00:05" }, ""},
		{"host route", func(n *NetworkConfig) { n.Address, n.Gateway = "172.30.0.5/32", "" }, ""},
		{"point to point", func(n *NetworkConfig) { n.Address, n.Gateway = "172.30.0.4/31", "172.30.0.5" }, ""},
		{"ipv6", func(n *NetworkConfig) { n.Address, n.Gateway, n.MTU = "2001:db8::5/64", "2001:db8::1", 1500 }, ""},
		{"ipv6 link-local gateway", func(n *NetworkConfig) { n.Address, n.Gateway, n.MTU = "2001:db8::5/64", "fe80::1", 0 }, ""},

		{"bad mac", func(n *NetworkConfig) { n.MAC = "02:ab:cd" }, "mac"},
		{"long mac", func(n *NetworkConfig) { n.MAC = "02:00:00:00:00:00:00:01" }, "6-byte"},
		{"multicast mac", func(n *NetworkConfig) { n.MAC = "01:00:5e:00:00:01" }, "multicast"},
		{"zero mac", func(n *NetworkConfig) { n.MAC = "00:00:00:00:00:00" }, "zeros"},
		{"no prefix", func(n *NetworkConfig) { n.Address = "172.30.0.5" }, "address"},
		{"prefix 0", func(n *NetworkConfig) { n.Address, n.Gateway = "172.30.0.5/0", "" }, "prefix length 0"},
		{"loopback", func(n *NetworkConfig) { n.Address, n.Gateway = "127.0.0.2/8", "" }, "unicast"},
		{"link-local", func(n *NetworkConfig) { n.Address, n.Gateway = "169.254.0.5/16", "" }, "unicast"},
		{"multicast", func(n *NetworkConfig) { n.Address, n.Gateway = "224.0.0.5/24", "" }, "unicast"},
		{"network address", func(n *NetworkConfig) { n.Address = "172.30.0.0/24" }, "network or broadcast"},
		{"broadcast address", func(n *NetworkConfig) { n.Address = "172.30.0.255/24" }, "network or broadcast"},
		{"mapped", func(n *NetworkConfig) { n.Address, n.Gateway = "::ffff:172.30.0.5/120", "" }, "IPv4-mapped"},
		{"gateway off-link", func(n *NetworkConfig) { n.Gateway = "172.31.0.1" }, "not a host of 172.30.0.0/24"},
		{"gateway broadcast", func(n *NetworkConfig) { n.Gateway = "172.30.0.255" }, "not a host"},
		{"gateway family", func(n *NetworkConfig) { n.Gateway = "2001:db8::1" }, "family"},
		{"gateway is address", func(n *NetworkConfig) { n.Gateway = "172.30.0.5" }, "own address"},
		{"gateway zone", func(n *NetworkConfig) { n.Address, n.Gateway, n.MTU = "2001:db8::5/64", "fe80::1%eth0", 0 }, "zones"},
		{"gateway garbage", func(n *NetworkConfig) { n.Gateway = "gw" }, "gateway"},
		{"too many dns", func(n *NetworkConfig) { n.DNS = []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"} }, "at most 3"},
		{"duplicate dns", func(n *NetworkConfig) { n.DNS = []string{"192.0.2.1", "192.0.2.1"} }, "duplicate"},
		{"multicast dns", func(n *NetworkConfig) { n.DNS = []string{"224.0.0.1"} }, "dns"},
		{"dns garbage", func(n *NetworkConfig) { n.DNS = []string{"dns.example"} }, "dns"},
		{"mtu too small", func(n *NetworkConfig) { n.MTU = 67 }, "mtu 67"},
		{"mtu too large", func(n *NetworkConfig) { n.MTU = 65536 }, "mtu 65536"},
		{"ipv6 mtu too small", func(n *NetworkConfig) { n.Address, n.Gateway, n.MTU = "2001:db8::5/64", "", 1200 }, "mtu 1200"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := validNetwork()
			tt.edit(&n)
			err := n.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				// Config.Validate covers the network too.
				if err := (Config{HeartbeatInterval: DefaultHeartbeatInterval, Network: &n}).Validate(); err != nil {
					t.Fatalf("Config.Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
			if (Config{HeartbeatInterval: DefaultHeartbeatInterval, Network: &n}).Validate() == nil {
				t.Fatal("Config.Validate() accepted the network")
			}
		})
	}
}

func TestCheckInterfaceName(t *testing.T) {
	for _, ok := range []string{"eth0", "enp0s3", "a", "x-y_z.1", "abcdefghijklmno"} {
		if err := CheckInterfaceName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "abcdefghijklmnop", "a/b", "a:b", "a b", "a\x00", "\xff"} {
		if err := CheckInterfaceName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestHandshakeRefusesBadNetwork checks that the host validates the network
// it would send, before sending anything.
func TestHandshakeRefusesBadNetwork(t *testing.T) {
	host, guest := net.Pipe()
	g := newFakeGuest(t, guest)
	g.run(func() { io.Copy(io.Discard, g.conn) })
	n := validNetwork()
	n.Gateway = "10.0.0.1"
	_, err := Handshake(ctxTimeout(t, time.Second), host, testToken, Config{Network: &n})
	if err == nil || !strings.Contains(err.Error(), "gateway") {
		t.Fatalf("Handshake = %v, want a gateway error", err)
	}
}

// networkSession starts a session whose config requests validNetwork and
// port 80.
func networkSession(t *testing.T) (*Session, *fakeGuest) {
	t.Helper()
	n := validNetwork()
	return startSession(t, Config{RequiredPorts: []int{80}, Network: &n}, func(g *fakeGuest) {
		cfg := g.authenticate(testToken)
		if cfg.Network == nil || cfg.Network.MAC != n.MAC || cfg.Network.Address != n.Address ||
			cfg.Network.Gateway != n.Gateway || len(cfg.Network.DNS) != 2 || cfg.Network.MTU != 1450 {
			t.Errorf("guest got network %+v, want %+v", cfg.Network, n)
		}
	})
}

func TestSessionNetworkThenReady(t *testing.T) {
	s, g := networkSession(t)
	g.run(func() {
		g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.5/24", Gateway: "172.30.0.1", DNSError: "read-only file system"})
		g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.5/24", Gateway: "172.30.0.1"}) // duplicate: ignored
		g.send(TypePortReady, 0, PortReady{Port: 80})
		g.send(TypeReady, 0, Ready{Ports: []int{80}, Network: &ReadyNetwork{Interface: "eth0", Address: "172.30.0.5/24"}})
	})
	ev := nextEvent(t, s)
	if ev.Type != TypeNetworkReady || ev.Interface != "eth0" || ev.Address != "172.30.0.5/24" ||
		ev.Gateway != "172.30.0.1" || ev.DNSError != "read-only file system" {
		t.Fatalf("first event %+v, want network_ready", ev)
	}
	if ev := nextEvent(t, s); ev.Type != TypePortReady || ev.Port != 80 {
		t.Fatalf("second event %+v, want port_ready 80", ev)
	}
	if ev := nextEvent(t, s); ev.Type != TypeReady || ev.Interface != "eth0" || ev.Address != "172.30.0.5/24" {
		t.Fatalf("third event %+v, want ready on eth0", ev)
	}
}

// TestSessionReadyWithoutNetworkField checks that the network in ready is
// optional once network_ready came.
func TestSessionReadyWithoutNetworkField(t *testing.T) {
	s, g := networkSession(t)
	g.run(func() {
		g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.5/24", Gateway: "172.30.0.1"})
		g.send(TypePortReady, 0, PortReady{Port: 80})
		g.send(TypeReady, 0, Ready{Ports: []int{80}})
	})
	for _, want := range []string{TypeNetworkReady, TypePortReady, TypeReady} {
		if ev := nextEvent(t, s); ev.Type != want {
			t.Fatalf("event %+v, want %s", ev, want)
		}
	}
}

func TestSessionNetworkFailed(t *testing.T) {
	s, g := networkSession(t)
	g.run(func() {
		g.send(TypeNetworkFailed, 0, NetworkFailed{Error: "no link with mac 02:ab:cd:00:00:05"})
		g.send(TypeNetworkFailed, 0, NetworkFailed{Error: "again"}) // duplicate: ignored
		ping := g.expect(TypePing)
		g.send(TypeResult, ping.ID, PingResult{GuestTime: time.Now()})
		g.send(TypeReady, 0, Ready{Ports: []int{80}}) // a violation: no network_ready
		io.Copy(io.Discard, g.conn)
	})
	if ev := nextEvent(t, s); ev.Type != TypeNetworkFailed || ev.Error != "no link with mac 02:ab:cd:00:00:05" {
		t.Fatalf("event %+v, want network_failed", ev)
	}
	// The session goes on: the host decides what a failed network means.
	if _, err := s.Ping(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	if !errors.Is(s.Err(), ErrProtocol) {
		t.Fatalf("Err() = %v, want ErrProtocol", s.Err())
	}
	for ev := range s.Events() {
		t.Fatalf("unexpected event %+v", ev)
	}
}

func TestSessionNetworkViolations(t *testing.T) {
	good := NetworkReady{Interface: "eth0", Address: "172.30.0.5/24", Gateway: "172.30.0.1"}
	tests := []struct {
		name    string
		network bool // request validNetwork
		guest   func(g *fakeGuest)
		wantErr string
	}{
		{"ready without network_ready", true, func(g *fakeGuest) {
			g.send(TypeReady, 0, Ready{Ports: []int{80}})
		}, "ready before network_ready"},
		{"port_ready before network_ready", true, func(g *fakeGuest) {
			g.send(TypePortReady, 0, PortReady{Port: 80})
		}, "port_ready before network_ready"},
		{"other address", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.6/24", Gateway: "172.30.0.1"})
		}, "network address"},
		{"other prefix length", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.5/16", Gateway: "172.30.0.1"})
		}, "network address"},
		{"other gateway", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.5/24", Gateway: "172.30.0.2"})
		}, "network gateway"},
		{"missing gateway", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0", Address: "172.30.0.5/24"})
		}, "network gateway"},
		{"bad interface", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, NetworkReady{Interface: "eth0/x", Address: "172.30.0.5/24", Gateway: "172.30.0.1"})
		}, "interface name"},
		{"huge dns error", true, func(g *fakeGuest) {
			bad := good
			bad.DNSError = strings.Repeat("e", MaxErrorText+1)
			g.send(TypeNetworkReady, 0, bad)
		}, "dns_error"},
		{"interface moves", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, good)
			moved := good
			moved.Interface = "eth1"
			g.send(TypeNetworkReady, 0, moved)
		}, "moved"},
		{"failed after ready", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, good)
			g.send(TypeNetworkFailed, 0, NetworkFailed{Error: "oops"})
		}, "network_failed after network_ready"},
		{"huge error text", true, func(g *fakeGuest) {
			g.send(TypeNetworkFailed, 0, NetworkFailed{Error: strings.Repeat("e", MaxErrorText+1)})
		}, "error is"},
		{"ready names another network", true, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, good)
			g.send(TypePortReady, 0, PortReady{Port: 80})
			g.send(TypeReady, 0, Ready{Ports: []int{80}, Network: &ReadyNetwork{Interface: "eth0", Address: "172.30.0.9/24"}})
		}, "ready network"},
		{"network_ready unrequested", false, func(g *fakeGuest) {
			g.send(TypeNetworkReady, 0, good)
		}, "no network was requested"},
		{"network_failed unrequested", false, func(g *fakeGuest) {
			g.send(TypeNetworkFailed, 0, NetworkFailed{Error: "x"})
		}, "no network was requested"},
		{"ready with unrequested network", false, func(g *fakeGuest) {
			g.send(TypePortReady, 0, PortReady{Port: 80})
			g.send(TypeReady, 0, Ready{Ports: []int{80}, Network: &ReadyNetwork{Interface: "eth0", Address: "172.30.0.5/24"}})
		}, "none was requested"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{RequiredPorts: []int{80}}
			if tt.network {
				n := validNetwork()
				cfg.Network = &n
			}
			s, g := startSession(t, cfg, func(g *fakeGuest) { g.authenticate(testToken) })
			g.run(func() {
				tt.guest(g)
				io.Copy(io.Discard, g.conn)
			})
			waitDone(t, s)
			if err := s.Err(); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Err() = %v, want ErrProtocol containing %q", err, tt.wantErr)
			}
			for ev := range s.Events() {
				if ev.Type == TypeReady {
					t.Fatalf("ready delivered: %+v", ev)
				}
			}
		})
	}
}
