package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// outside is a network namespace standing in for the host's upstream
// router and, behind it, the internet, joined to the daemon's namespace by
// a veth pair on the host's own network (192.0.2.0/24, which VMs must not
// reach); the daemon's default route leads there. The internet's
// addresses (outsideIP and any a test adds) live in the outside namespace.
// Nothing leaves these namespaces.
type outside struct {
	ns       string
	hostAddr string // the daemon side of the link
	addr     string // the outside's address on the internet
	mu       sync.Mutex
	peers    []string // remote addresses seen by the outside servers
}

const (
	outsideHostIP = "192.0.2.1"    // the daemon on the host's network: VMs are masqueraded to it
	routerIP      = "192.0.2.2"    // the outside on the host's network
	outsideIP     = "198.51.100.2" // the outside on the internet
)

func newOutside(t *testing.T, d *daemon, extra ...string) *outside {
	t.Helper()
	o := &outside{ns: newNetns(t), hostAddr: outsideHostIP, addr: outsideIP}
	sh(t, "ip", "-n", d.netns, "link", "add", "veth-out", "type", "veth", "peer", "name", "veth-in", "netns", o.ns)
	sh(t, "ip", "-n", d.netns, "addr", "add", outsideHostIP+"/24", "dev", "veth-out")
	sh(t, "ip", "-n", d.netns, "link", "set", "veth-out", "up")
	sh(t, "ip", "-n", d.netns, "route", "add", "default", "via", routerIP)
	sh(t, "ip", "-n", o.ns, "addr", "add", routerIP+"/24", "dev", "veth-in")
	for _, a := range append([]string{outsideIP}, extra...) {
		sh(t, "ip", "-n", o.ns, "addr", "add", a+"/32", "dev", "veth-in")
	}
	sh(t, "ip", "-n", o.ns, "link", "set", "veth-in", "up")
	return o
}

// serve answers every TCP connection on port, at any of the outside's
// addresses, with "outside-ok" and records who connected (a NATed VM shows
// up as the daemon side's address).
func (o *outside) serve(t *testing.T, port int) {
	t.Helper()
	serveIn(t, o.ns, fmt.Sprintf(":%d", port), func(c net.Conn) { // every address the outside holds
		o.mu.Lock()
		o.peers = append(o.peers, c.RemoteAddr().String())
		o.mu.Unlock()
		br := bufio.NewReader(c)
		_, _ = http.ReadRequest(br)
		_, _ = c.Write([]byte("HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\noutside-ok"))
		c.Close()
	})
}

func (o *outside) seen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.peers...)
}

func vmIP(t *testing.T, v api.VM) string {
	t.Helper()
	if v.Network.Address == "" {
		t.Fatalf("vm %s has no network: %+v", v.ID, v)
	}
	p, err := netip.ParsePrefix(v.Network.Address)
	if err != nil {
		t.Fatal(err)
	}
	return p.Addr().String()
}

// guest runs argv in the VM; it returns the exit code and the output.
func guest(t *testing.T, c *client.Client, id string, argv ...string) (int, string) {
	t.Helper()
	return guestIn(t, c, id, "", argv...)
}

// guestHTTP fetches http://ip:port/path from inside the VM with busybox nc
// (the static busybox's wget crashes resolving names without NSS).
func guestHTTP(t *testing.T, c *client.Client, id, ip string, port int, path string) (int, string) {
	t.Helper()
	code, out := guestIn(t, c, id, "GET "+path+" HTTP/1.0\r\n\r\n", "/bin/busybox", "nc", "-w", "3", ip, fmt.Sprint(port))
	if code == 0 && !strings.Contains(out, " 200 ") {
		code = 1 // connected, but not the answer we wanted
	}
	return code, out
}

func guestIn(t *testing.T, c *client.Client, id, stdin string, argv ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// As root: these look at the guest's system (its network, its
	// devices), not at the workspace user's work.
	res, err := c.Exec(ctx, id, api.ExecRequest{Argv: argv, Stdin: stdin, TimeoutSeconds: 20, User: "root"})
	if err != nil {
		t.Fatalf("exec %v in %s: %v", argv, id, err)
	}
	return res.ExitCode, res.Stdout + res.Stderr
}

func bootAll(t *testing.T, c *client.Client, reqs ...api.CreateVM) []api.VM {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	vms := make([]api.VM, len(reqs))
	for i, r := range reqs {
		v, err := c.CreateVM(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		vms[i] = v
	}
	for i := range vms {
		v, err := c.WaitVM(ctx, vms[i].ID, "ready", bootWait)
		if err != nil {
			t.Fatalf("vm %d not ready: %v", i, err)
		}
		vms[i] = v
	}
	return vms
}

func withEgress(e api.Egress) api.CreateVM {
	return api.CreateVM{Image: "minimal", Network: api.CreateVMNetwork{Egress: &e}}
}

// TestVMNetworkIsolationAndEgress: each VM is reachable from the host over
// TCP; VMs cannot reach each other (TCP or ICMP) nor the host; egress goes
// through NAT when the policy allows and nowhere when it does not.
func TestVMNetworkIsolationAndEgress(t *testing.T) {
	d := newDaemon(t)
	out := newOutside(t, d)
	out.serve(t, 8080)
	out.serve(t, 8081)
	vms := bootAll(t, d.alice,
		withEgress(api.Egress{Mode: "open"}),
		withEgress(api.Egress{Mode: "none"}),
		withEgress(api.Egress{Mode: "allowlist", Allow: []api.EgressRule{{CIDR: outsideIP + "/32", Protocol: "tcp", Port: 8080}}}),
	)
	open, closed, listed := vms[0], vms[1], vms[2]
	ipOpen, ipClosed := vmIP(t, open), vmIP(t, closed)
	if ipOpen == ipClosed || ipOpen == vmIP(t, listed) {
		t.Fatalf("duplicate addresses: %s %s %s", ipOpen, ipClosed, vmIP(t, listed))
	}

	// The guest configured exactly what the host gave it.
	if code, o := guest(t, d.alice, open.ID, "/bin/busybox", "ip", "-4", "addr", "show", "dev", "eth0"); code != 0 || !strings.Contains(o, open.Network.Address) {
		t.Fatalf("guest address: %d %s", code, o)
	}

	// Host → VM over TCP: a server in each guest, reached from the host side.
	for _, v := range vms {
		if code, o := guest(t, d.alice, v.ID, "/bin/busybox", "httpd", "-p", "7000", "-h", "/etc"); code != 0 {
			t.Fatalf("start httpd in %s: %s", v.ID, o)
		}
	}
	for _, v := range vms {
		if err := hostGet(d, "http://"+vmIP(t, v)+":7000/hostname"); err != nil {
			t.Errorf("host cannot reach %s: %v", v.ID, err)
		}
	}

	// VM ↔ VM: dropped, TCP and ICMP.
	if code, o := guestHTTP(t, d.alice, open.ID, ipClosed, 7000, "/hostname"); code == 0 {
		t.Errorf("vm reached another vm over TCP: %s", o)
	}
	if code, o := guest(t, d.alice, open.ID, "/bin/busybox", "ping", "-c", "1", "-W", "2", ipClosed); code == 0 {
		t.Errorf("vm pinged another vm: %s", o)
	}

	// VM → host: nothing by default (a server on the bridge address).
	gw := open.Network.Gateway
	hostServe(t, d, gw+":9999")
	if code, o := guest(t, d.alice, open.ID, "/bin/busybox", "nc", "-w", "3", gw, "9999"); code == 0 {
		t.Errorf("vm reached the host on %s:9999: %s", gw, o)
	}

	// VM → outside: through NAT when allowed.
	code, o := guestHTTP(t, d.alice, open.ID, outsideIP, 8080, "/")
	if code != 0 || !strings.Contains(o, "outside-ok") {
		t.Fatalf("open vm cannot reach the outside: %d %s", code, o)
	}
	for _, p := range out.seen() {
		if !strings.HasPrefix(p, outsideHostIP+":") {
			t.Errorf("outside saw %s, want the NAT address %s", p, outsideHostIP)
		}
	}
	if code, o := guestHTTP(t, d.alice, closed.ID, outsideIP, 8080, "/"); code == 0 {
		t.Errorf("egress none reached the outside: %s", o)
	}
	if code, o := guestHTTP(t, d.alice, listed.ID, outsideIP, 8080, "/"); code != 0 {
		t.Errorf("allowlisted port unreachable: %s", o)
	}
	if code, o := guestHTTP(t, d.alice, listed.ID, outsideIP, 8081, "/"); code == 0 {
		t.Errorf("port outside the allowlist reached: %s", o)
	}
}

// hostGet makes an HTTP request from the daemon's namespace (the host side).
func hostGet(d *daemon, url string) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: nsDialer(d.netns)}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// TestNetworkSurvivesKill9: after kill -9 and a restart, adopted VMs keep
// their addresses, traffic still flows, and the next VM gets a new address.
func TestNetworkSurvivesKill9(t *testing.T) {
	d := newDaemon(t)
	out := newOutside(t, d)
	out.serve(t, 8080)
	vms := bootAll(t, d.alice, withEgress(api.Egress{Mode: "open"}), withEgress(api.Egress{Mode: "open"}))
	before := map[string]string{}
	for _, v := range vms {
		before[v.ID] = vmIP(t, v)
		if code, o := guest(t, d.alice, v.ID, "/bin/busybox", "httpd", "-p", "7000", "-h", "/etc"); code != 0 {
			t.Fatal(o)
		}
	}
	d.kill9()
	d.start()
	for _, v := range vms {
		got, err := d.alice.WaitVM(ctxT(t, time.Minute), v.ID, "ready", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if vmIP(t, got) != before[v.ID] {
			t.Fatalf("%s changed address across the restart: %s -> %s", v.ID, before[v.ID], vmIP(t, got))
		}
		if err := hostGet(d, "http://"+before[v.ID]+":7000/hostname"); err != nil {
			t.Errorf("host cannot reach %s after restart: %v", v.ID, err)
		}
		if code, o := guestHTTP(t, d.alice, v.ID, outsideIP, 8080, "/"); code != 0 {
			t.Errorf("%s lost egress after restart: %s", v.ID, o)
		}
	}
	next := bootAll(t, d.alice, api.CreateVM{Image: "minimal"})[0]
	for id, ip := range before {
		if vmIP(t, next) == ip {
			t.Fatalf("new vm got %s, still held by %s", ip, id)
		}
	}
}
