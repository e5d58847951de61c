package vmnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/network"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/test/testrun"
)

// env is a Service in a network namespace made for the test.
type env struct {
	t    *testing.T
	ns   string
	svc  *Service
	host *network.Host
	st   store.Store
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace with a bridge, TAPs and nftables tables")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs the nft binary to read the ruleset back (apt-get install nftables)")
	}
	name := testrun.NetnsName("vmnet")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	cfg := network.Config{Subnet: netip.MustParsePrefix("172.30.0.0/24")}.WithDefaults()
	host, err := network.NewHost(cfg, network.WithNetNS(h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	st, err := sqlite.Open(context.Background(), t.TempDir()+"/h.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := New(host, st, []string{"192.0.2.53"}, vm.Egress{Mode: "open"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Reconcile(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ns: name, svc: svc, host: host, st: st}
}

func (e *env) vm(id string) string {
	e.t.Helper()
	if err := e.st.CreateVM(context.Background(), store.VM{ID: id, State: store.StateBooting, CreatedAt: time.Now()}); err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *env) ruleset() string {
	e.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", e.ns, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		e.t.Fatalf("nft list ruleset: %v %s", err, out)
	}
	return string(out)
}

func (e *env) counts() (taps, leases int) {
	e.t.Helper()
	tm, err := e.host.TAPs(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	ls, err := e.st.ListLeases(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return len(tm), len(ls)
}

// Attach and Detach 200 times: nothing may accumulate, and the ruleset
// returns to the empty baseline byte for byte.
func TestCreateDeleteCyclesLeaveNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	baseline := e.ruleset()
	for i := range 200 {
		id := e.vm(fmt.Sprintf("vm-cycle-%03d", i))
		egress := vm.Egress{Mode: "open"}
		if i%3 == 1 {
			egress = vm.Egress{Mode: "allowlist", Allow: []vm.EgressRule{{CIDR: "203.0.113.0/24", Protocol: "tcp", Port: 443}}}
		}
		a, err := e.svc.Attach(ctx, id, egress)
		if err != nil {
			t.Fatalf("cycle %d: attach: %v", i, err)
		}
		if i == 0 && (a.Gateway != "172.30.0.1" || !strings.HasPrefix(a.Address, "172.30.0.") || a.DNS[0] != "192.0.2.53") {
			t.Fatalf("attachment: %+v", a)
		}
		if err := e.svc.Detach(ctx, id); err != nil {
			t.Fatalf("cycle %d: detach: %v", i, err)
		}
	}
	if taps, leases := e.counts(); taps != 0 || leases != 0 {
		t.Fatalf("after 200 cycles: %d taps, %d leases", taps, leases)
	}
	if got := e.ruleset(); got != baseline {
		t.Fatalf("ruleset differs from the empty baseline:\n--- got\n%s\n--- want\n%s", got, baseline)
	}
}

// Twenty VMs attach at once: no address, TAP or MAC is given twice.
func TestConcurrentAttachNoDuplicates(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ids := make([]string, 20)
	for i := range ids {
		ids[i] = e.vm(fmt.Sprintf("vm-conc-%02d", i))
	}
	var wg sync.WaitGroup
	atts := make([]vm.NetAttachment, len(ids))
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			atts[i], errs[i] = e.svc.Attach(ctx, id, vm.Egress{Mode: "open"})
		}()
	}
	wg.Wait()
	seen := map[string]string{}
	for i, a := range atts {
		if errs[i] != nil {
			t.Fatalf("%s: %v", ids[i], errs[i])
		}
		for _, k := range []string{"ip " + a.Address, "tap " + a.TAP, "mac " + a.MAC} {
			if other, dup := seen[k]; dup {
				t.Fatalf("%s given to %s and %s", k, other, ids[i])
			}
			seen[k] = ids[i]
		}
	}
	if taps, leases := e.counts(); taps != 20 || leases != 20 {
		t.Fatalf("%d taps, %d leases for 20 vms", taps, leases)
	}
	// Attach is idempotent.
	again, err := e.svc.Attach(ctx, ids[0], vm.Egress{Mode: "open"})
	if err != nil || again.Address != atts[0].Address || again.TAP != atts[0].TAP {
		t.Fatalf("second attach: %+v %v (first %+v)", again, err, atts[0])
	}
}

// Reconcile keeps exactly the held VMs: stray TAPs and leases go, held ones
// keep their address and TAP.
func TestReconcileRemovesStrays(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	keep, stray := e.vm("vm-keep"), e.vm("vm-stray")
	ka, err := e.svc.Attach(ctx, keep, vm.Egress{Mode: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Attach(ctx, stray, vm.Egress{Mode: "open"}); err != nil {
		t.Fatal(err)
	}
	withKeep := e.ruleset()
	// A new service, as after a restart, told only about vm-keep.
	svc2, err := New(e.host, e.st, nil, vm.Egress{Mode: "open"})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc2.Reconcile(ctx, map[string]vm.NetAttachment{keep: ka}); err != nil {
		t.Fatal(err)
	}
	taps, err := e.host.TAPs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(taps) != 1 || taps[ka.TAP] != keep {
		t.Fatalf("taps after reconcile: %v", taps)
	}
	ls, _ := e.st.ListLeases(ctx)
	if len(ls) != 1 || ls[0].VMID != keep || ls[0].IP+"/24" != ka.Address {
		t.Fatalf("leases after reconcile: %+v", ls)
	}
	if got := e.ruleset(); got == withKeep || strings.Contains(got, stray) || !strings.Contains(got, keep) {
		t.Fatalf("rules after reconcile still mention the stray or lost the kept vm:\n%s", got)
	}
}

// A refused Attach (its address is taken in the firewall by a VM the
// service does not know) leaves nothing behind: no slot, TAP, lease or
// rules of its own; the other VM's rules stay.
func TestAttachRefusedLeavesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	baseline := e.ruleset()
	squatter := network.Slot{VMID: "vm-squatter", TAP: "hthsquatter", MAC: network.MACFor("vm-squatter"),
		IP: netip.MustParseAddr("172.30.0.2"), Egress: network.EgressPolicy{Mode: network.EgressOpen}}
	if err := e.host.AddSlot(ctx, squatter); err != nil {
		t.Fatal(err)
	}
	withSquatter := e.ruleset()
	id := e.vm("vm-refused")
	_, err := e.svc.Attach(ctx, id, vm.Egress{Mode: "open"})
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("Attach onto a taken address = %v, want ErrConflict", err)
	}
	e.svc.mu.Lock()
	_, kept := e.svc.slots[id]
	e.svc.mu.Unlock()
	if taps, leases := e.counts(); kept || taps != 0 || leases != 0 {
		t.Fatalf("after a refused Attach: slot kept %v, %d taps, %d leases", kept, taps, leases)
	}
	if got := e.ruleset(); got != withSquatter {
		t.Fatalf("a refused Attach changed the rules:\n--- got\n%s\n--- want\n%s", got, withSquatter)
	}
	if err := e.host.RemoveSlot(ctx, squatter.VMID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Attach(ctx, id, vm.Egress{Mode: "open"}); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Detach(ctx, id); err != nil {
		t.Fatal(err)
	}
	if got := e.ruleset(); got != baseline {
		t.Fatalf("ruleset differs from the baseline:\n--- got\n%s\n--- want\n%s", got, baseline)
	}
}

// TestValidateEgressRefusesDenied: a policy naming only destinations the
// host denies every VM is refused before anything is created, with the
// reason, including the host's own subnets as its routes are now.
func TestValidateEgressRefusesDenied(t *testing.T) {
	e := newEnv(t)
	allow := func(cidr string) vm.Egress {
		return vm.Egress{Mode: "allowlist", Allow: []vm.EgressRule{{CIDR: cidr, Protocol: "tcp", Port: 443}}}
	}
	for _, ok := range []vm.Egress{{Mode: "open"}, {Mode: "none"}, allow("198.51.100.0/24"), allow("192.0.2.0/24")} {
		if err := e.svc.ValidateEgress(ok); err != nil {
			t.Errorf("ValidateEgress(%+v) = %v", ok, err)
		}
	}
	for cidr, want := range map[string]string{
		"169.254.169.254": "link-local",
		"168.63.129.16":   "Azure",
		"10.1.0.0/16":     "private",
		"100.64.0.1":      "carrier-grade NAT",
	} {
		err := e.svc.ValidateEgress(allow(cidr))
		if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateEgress(%s) = %v, want an invalid-argument error saying %q", cidr, err, want)
		}
	}
	// The host joins 192.0.2.0/24 (a DHCP lease on a new interface).
	for _, args := range [][]string{
		{"link", "add", "lan0", "type", "veth", "peer", "name", "lan1"},
		{"addr", "add", "192.0.2.10/24", "dev", "lan0"},
		{"link", "set", "lan0", "up"},
		{"link", "set", "lan1", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", e.ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	if changed, err := e.host.RefreshHostRoutes(context.Background()); err != nil || !changed {
		t.Fatalf("RefreshHostRoutes() = %v, %v; want a change", changed, err)
	}
	err := e.svc.ValidateEgress(allow("192.0.2.0/24"))
	if err == nil || !strings.Contains(err.Error(), "the host's own network (192.0.2.0/24") {
		t.Fatalf("ValidateEgress(the host's network) = %v", err)
	}
}

// TestNewRefusesDeniedDefault: a configured default policy that names a
// destination no VM may reach stops the daemon at start with the reason.
func TestNewRefusesDeniedDefault(t *testing.T) {
	e := newEnv(t)
	_, err := New(e.host, e.st, nil, vm.Egress{Mode: "allowlist", Allow: []vm.EgressRule{{CIDR: "192.168.0.0/24"}}})
	if err == nil || !strings.Contains(err.Error(), "network.default_egress") || !strings.Contains(err.Error(), "private") {
		t.Fatalf("New() = %v, want a refusal of the private default", err)
	}
}
