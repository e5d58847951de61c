// Command netbench measures per-VM network setup and teardown — TAP,
// address lease and firewall rules — done by hearth (netlink, nftables in
// one batch, a lease in SQLite) against the old system's way: `ip tuntap
// add`, `ip link set master`, `ip link set up` and an `iptables` rule per
// VM, each a process. Both run in the same process, interleaved.
//
// Run it as root inside a network namespace made for it (bench/run.sh does:
// `ip netns exec NS bin/netbench`); it refuses to run in the host's.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/network"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmnet"
)

func main() {
	runs := flag.Int("runs", 200, "setup/teardown cycles per side")
	resident := flag.Int("resident", 20, "VMs attached during the measurement (steady state)")
	flag.Parse()
	if err := run(*runs, *resident); err != nil {
		fmt.Fprintln(os.Stderr, "netbench:", err)
		os.Exit(1)
	}
}

// inOwnNetns reports whether this process runs in a namespace made with
// `ip netns add` (one of /run/netns/*).
func inOwnNetns() bool {
	var self syscall.Stat_t
	if syscall.Stat("/proc/self/ns/net", &self) != nil {
		return false
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		var st syscall.Stat_t
		if syscall.Stat("/run/netns/"+e.Name(), &st) == nil && st.Ino == self.Ino && st.Dev == self.Dev {
			return true
		}
	}
	return false
}

func run(runs, resident int) error {
	if !inOwnNetns() {
		return fmt.Errorf("run me inside a network namespace made for the benchmark (ip netns exec NS ...)")
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "netbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(ctx, dir+"/h.db")
	if err != nil {
		return err
	}
	defer st.Close()
	cfg := network.Config{Bridge: "benchbr0", Subnet: netip.MustParsePrefix("172.30.0.0/22"), TAPPrefix: "hb"}
	host, err := network.NewHost(cfg)
	if err != nil {
		return err
	}
	defer host.Close()
	svc, err := vmnet.New(host, st, nil, vm.Egress{Mode: "open"})
	if err != nil {
		return err
	}
	if err := svc.Reconcile(ctx, nil); err != nil { // bridge, forwarding, tables
		return err
	}
	defer func() { _ = host.Teardown(ctx) }()
	if err := oldSetup(); err != nil {
		return err
	}
	defer oldTeardown(resident)

	newVM := func(i int) (string, error) {
		id := fmt.Sprintf("vm-bench-%05d", i)
		return id, st.CreateVM(ctx, store.VM{ID: id, State: store.StateBooting, CreatedAt: time.Now()})
	}
	for i := range resident {
		id, err := newVM(i)
		if err != nil {
			return err
		}
		if _, err := svc.Attach(ctx, id, vm.Egress{Mode: "open"}); err != nil {
			return err
		}
		if err := oldAttach(i); err != nil {
			return err
		}
	}
	var hUp, hDown, oUp, oDown []time.Duration
	for i := resident; i < resident+runs; i++ {
		id, err := newVM(i)
		if err != nil {
			return err
		}
		t := time.Now()
		if _, err := svc.Attach(ctx, id, vm.Egress{Mode: "allowlist", Allow: []vm.EgressRule{{CIDR: "203.0.113.0/24", Protocol: "tcp", Port: 443}}}); err != nil {
			return err
		}
		hUp = append(hUp, time.Since(t))
		t = time.Now()
		if err := svc.Detach(ctx, id); err != nil {
			return err
		}
		hDown = append(hDown, time.Since(t))

		t = time.Now()
		if err := oldAttach(i); err != nil {
			return err
		}
		oUp = append(oUp, time.Since(t))
		t = time.Now()
		if err := oldDetach(i); err != nil {
			return err
		}
		oDown = append(oDown, time.Since(t))
	}
	fmt.Printf("## per-VM network setup and teardown (%d cycles, %d VMs resident)\n\n", runs, resident)
	fmt.Println("| | hearth p50 | hearth p99 | old way p50 | old way p99 | old / hearth (p50) |")
	fmt.Println("|---|---|---|---|---|---|")
	row := func(name string, h, o []time.Duration) {
		fmt.Printf("| %s | %s | %s | %s | %s | **%.1f×** |\n", name, ms(pct(h, 50)), ms(pct(h, 99)), ms(pct(o, 50)), ms(pct(o, 99)),
			float64(pct(o, 50))/float64(pct(h, 50)))
	}
	row("setup (TAP + lease + rules)", hUp, oUp)
	row("teardown", hDown, oDown)
	fmt.Println()
	fmt.Println("hearth: netlink TAP with ownership alias, lease in SQLite, and the VM's own nftables chains plus its")
	fmt.Println("verdict-map elements (isolation, anti-spoofing, per-VM egress) added or removed in one batch; the")
	fmt.Println("shared chains never change. Old way: `ip tuntap add`, `ip link set master`, `ip link set up`,")
	fmt.Println("`iptables -A` (and `iptables -D`, `ip link delete`), one process each, and no isolation at all.")
	return nil
}

// The old system's way, as processes.

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func oldTAP(i int) string { return fmt.Sprintf("fc-%08x", i) }
func oldIP(i int) string  { return fmt.Sprintf("192.168.%d.%d", 100+i/250, 2+i%250) }

func oldSetup() error {
	for _, c := range [][]string{
		{"ip", "link", "add", "fcbr0", "type", "bridge"},
		{"ip", "addr", "add", "192.168.100.1/16", "dev", "fcbr0"},
		{"ip", "link", "set", "fcbr0", "up"},
		{"iptables", "-N", "FC-EGRESS"},
		{"iptables", "-A", "FORWARD", "-i", "fcbr0", "-j", "FC-EGRESS"},
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.168.0.0/16", "!", "-o", "fcbr0", "-j", "MASQUERADE"},
	} {
		if err := sh(c...); err != nil {
			return err
		}
	}
	return nil
}

func oldTeardown(resident int) {
	for i := range resident {
		_ = sh("ip", "link", "delete", oldTAP(i))
	}
	_ = sh("iptables", "-t", "nat", "-F")
	_ = sh("iptables", "-F")
	_ = sh("iptables", "-X", "FC-EGRESS")
	_ = sh("ip", "link", "delete", "fcbr0")
}

func oldAttach(i int) error {
	tap := oldTAP(i)
	for _, c := range [][]string{
		{"ip", "tuntap", "add", "dev", tap, "mode", "tap"},
		{"ip", "link", "set", tap, "master", "fcbr0"},
		{"ip", "link", "set", tap, "up"},
		{"iptables", "-A", "FC-EGRESS", "-s", oldIP(i), "-j", "ACCEPT"},
	} {
		if err := sh(c...); err != nil {
			return err
		}
	}
	return nil
}

func oldDetach(i int) error {
	if err := sh("iptables", "-D", "FC-EGRESS", "-s", oldIP(i), "-j", "ACCEPT"); err != nil {
		return err
	}
	return sh("ip", "link", "delete", oldTAP(i))
}

func pct(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p/100)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
