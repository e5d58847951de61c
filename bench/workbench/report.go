package main

import (
	"cmp"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/hearth-project/hearth/bench/internal/procstat"
)

// pct is the nearest-rank percentile p (0-100) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	return s[max(i, 1)-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// medianRate is the median transfer by speed.
func medianRate(rs []rate) rate {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b rate) int { return cmp.Compare(a.d, b.d) })
	return s[(len(s)-1)/2]
}

func rates(rs []rate) string {
	var out []string
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%.1f", r.mibps()))
	}
	return strings.Join(out, ", ")
}

func (r *results) print(c config) {
	qemu, _ := exec.Command("qemu-system-x86_64", "--version").Output()
	qemuVer := strings.TrimPrefix(strings.SplitN(string(qemu), "\n", 2)[0], "QEMU emulator version ")
	sshVer, _ := exec.Command("ssh", "-V").CombinedOutput()
	fmt.Println("## work API vs OpenSSH")
	fmt.Println()
	fmt.Printf("Made by `WORK_RUNS=%d ./bench/run.sh work` as root on %s: accel %s, %d vCPU host, QEMU %s; one VM "+
		"(%d vCPUs, %d MiB) of bench/workbench/workspace-ssh.yaml (images/workspace.yaml without Node.js and the CLIs, "+
		"with Debian's openssh-server 9.2 and netcat-openbsd). The daemon, its bridge and the bench share a network namespace made "+
		"for the run; the bench reaches the guest through hearth's API on loopback (plain HTTP/1.1) and over TCP "+
		"across the bridge. sshd runs only for the benchmark, started as root through the process API with a host key and an "+
		"authorized key made for the run; host client %s, default ciphers, no compression, no connection sharing. "+
		"Both sides run as the workspace user. Methods are interleaved run by run. Host load average (1 min): %s at the start, "+
		"%s at the end.\n\n",
		c.runs, time.Now().UTC().Format("2006-01-02"), r.accel, procstat.NumCPU(), qemuVer, r.vcpus, r.mem,
		strings.TrimSpace(string(sshVer)), r.load0, r.load1)

	fmt.Printf("Command start → first output byte, `echo x`, %d runs each:\n\n", c.runs)
	fmt.Println("| method | p50 | p99 | ssh / method (p50) |")
	fmt.Println("|---|---|---|---|")
	sshP50 := pct(r.start[mSSH], 50)
	for _, m := range []string{mProcess, mExecAPI, mExecCLI, mSSH} {
		p50 := pct(r.start[m], 50)
		fmt.Printf("| %s | %s | %s | %.1f× |\n", m, ms(p50), ms(pct(r.start[m], 99)), float64(sshP50)/float64(p50))
	}
	fmt.Println()

	mib := float64(c.streamBytes) / (1 << 20)
	fmt.Printf("Output stream throughput, `%s` (%.0f MiB), first byte → last byte, %d runs each:\n\n", "head -c "+fmt.Sprint(c.streamBytes)+" /dev/zero", mib, c.streams)
	fmt.Println("| method | median | runs (MiB/s) | of raw TCP |")
	fmt.Println("|---|---|---|---|")
	raw := medianRate(r.stream[mRawTCP]).mibps()
	for _, m := range []string{mProcess, mAttach, mSSH, mRawTCP} {
		x := medianRate(r.stream[m]).mibps()
		fmt.Printf("| %s | **%.1f MiB/s** | %s | %.0f %% |\n", m, x, rates(r.stream[m]), 100*x/raw)
	}
	fmt.Println()
	fmt.Println("Where the host's CPU went during those streams, from the start of each command to its end, summed over " +
		"the runs: cores kept busy, and CPU time per MiB delivered (which the host's other load changes less than the rates):")
	fmt.Println()
	fmt.Println("| method | daemon | QEMU (guest vCPUs + I/O) | client (bench; ssh) | QEMU per MiB | daemon + client per MiB |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, m := range []string{mProcess, mAttach, mSSH, mRawTCP} {
		var d, q, cl, w time.Duration
		for _, u := range r.streamCPU[m] {
			d, q, cl, w = d+u.daemon, q+u.qemu, cl+u.client, w+u.wall
		}
		mibs := float64(int64(len(r.streamCPU[m]))*c.streamBytes) / (1 << 20)
		cores := func(x time.Duration) float64 { return x.Seconds() / w.Seconds() }
		per := func(x time.Duration) string { return ms(time.Duration(float64(x) / mibs)) }
		fmt.Printf("| %s | %.2f | %.2f | %.2f | %s | %s |\n", m, cores(d), cores(q), cores(cl), per(q), per(d+cl))
	}
	fmt.Println()
	proc, ssh := medianRate(r.stream[mProcess]).mibps(), medianRate(r.stream[mSSH]).mibps()
	fmt.Printf("Goals: output stream ≥ ssh: **%s** (%.1f vs %.1f MiB/s); ≥ 50 %% of raw TCP: **%s** (%.0f %%). "+
		"Bytes the SSE streams reported dropped: %d.\n\n",
		map[bool]string{true: "met", false: "missed"}[proc >= ssh], proc, ssh,
		map[bool]string{true: "met", false: "missed"}[proc >= raw/2], 100*proc/raw, r.drops)

	fmt.Printf("Keystroke echo round trip, a PTY `cat` in the guest (the echo is the guest PTY's), %d keys each:\n\n", c.keys)
	fmt.Println("| method | p50 | p99 |")
	fmt.Println("|---|---|---|")
	for _, m := range []string{mAttach, mSSHTTY} {
		fmt.Printf("| %s | %s | %s |\n", m, ms(pct(r.keys[m], 50)), ms(pct(r.keys[m], 99)))
	}
	fmt.Println()

	fmt.Printf("%d MiB random file, upload and download (each copy's SHA-256 checked), %d runs each:\n\n", c.fileBytes>>20, c.files)
	fmt.Println("| method | upload median | upload runs (MiB/s) | download median | download runs (MiB/s) |")
	fmt.Println("|---|---|---|---|---|")
	for _, m := range []string{mFiles, mSCP} {
		fmt.Printf("| %s | **%.1f MiB/s** | %s | **%.1f MiB/s** | %s |\n", m, medianRate(r.upload[m]).mibps(), rates(r.upload[m]),
			medianRate(r.download[m]).mibps(), rates(r.download[m]))
	}
	fmt.Println()
}
