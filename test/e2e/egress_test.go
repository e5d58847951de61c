package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// TestEgressOperatorNetwork: on a host whose policy is none, a user key
// cannot ask for open egress, an admin key can; the open VM reaches the
// internet but not private addresses, metadata services, the host's own
// network or its uplink address, except the private address the operator
// allows (network.allow_private); the gateway's host port stays reachable.
func TestEgressOperatorNetwork(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "hearth.toml")
	if err := os.WriteFile(cfg, []byte(`[network]
default_egress = "none"
host_ports = ["tcp/9999"]
allow_private = ["10.0.0.5"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newDaemon(t, "HEARTH_CONFIG="+cfg)
	const (
		publicIP  = "198.51.100.7"
		allowedIP = "10.0.0.5"
	)
	blockedIPs := []string{"10.0.0.6", "192.168.1.10", "100.100.100.200", "168.63.129.16"}
	out := newOutside(t, d, append([]string{publicIP, allowedIP}, blockedIPs...)...)
	out.serve(t, 8080)
	hostServe(t, d, "0.0.0.0:9999")

	// The ceiling: alice may not ask for open here; the admin may, for her.
	open := withEgress(api.Egress{Mode: "open"})
	_, err := d.alice.CreateVM(ctxT(t, time.Minute), open)
	var apiErr *client.Error
	if !errors.As(err, &apiErr) || apiErr.Status != 403 || !strings.Contains(apiErr.Message, `network.default_egress = "none"`) {
		t.Fatalf("alice asking for open egress on a none host: %v, want a 403 naming the policy", err)
	}
	open.User = "alice"
	v := bootAll(t, d.admin, open)[0]
	gw := v.Network.Gateway

	// Every address answers the host, so what the VM cannot reach below
	// is the firewall's doing.
	for _, ip := range append([]string{publicIP, allowedIP, routerIP}, blockedIPs...) {
		if err := hostGet(d, "http://"+ip+":8080/"); err != nil {
			t.Fatalf("the host cannot reach %s: %v", ip, err)
		}
	}
	reach := map[string]bool{
		publicIP + ":8080": true, allowedIP + ":8080": true, gw + ":9999": true,
		routerIP + ":8080": false, outsideHostIP + ":9999": false,
	}
	for _, ip := range blockedIPs {
		reach[ip+":8080"] = false
	}
	got := guestProbe(t, d.admin, v.ID, reach)
	for addr, want := range reach {
		if got[addr] != want {
			t.Errorf("open vm → %s: reached = %v, want %v", addr, got[addr], want)
		}
	}
}

// guestProbe opens a TCP connection from the VM to each address at once
// and reports which connected.
func guestProbe(t *testing.T, c *client.Client, id string, addrs map[string]bool) map[string]bool {
	t.Helper()
	var script strings.Builder
	for addr := range addrs {
		host, port, _ := strings.Cut(addr, ":")
		fmt.Fprintf(&script, "( /bin/busybox nc -w 3 %s %s </dev/null >/dev/null 2>&1 && echo 'ok %s' || echo 'no %s' ) &\n", host, port, addr, addr)
	}
	script.WriteString("wait\n")
	code, o := guest(t, c, id, "/bin/busybox", "sh", "-c", script.String())
	if code != 0 {
		t.Fatalf("probe script: %d %s", code, o)
	}
	got := map[string]bool{}
	for _, line := range strings.Split(o, "\n") {
		if verdict, addr, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			got[addr] = verdict == "ok"
		}
	}
	for addr := range addrs {
		if _, ok := got[addr]; !ok {
			t.Fatalf("no probe result for %s in %q", addr, o)
		}
	}
	return got
}
