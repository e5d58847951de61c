package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// report prints the markdown section.
func report(c config, sides []*side, res []result, versions string) {
	fmt.Printf("## browser viewer: WebSocket↔VNC bridge (hearth, websockify, direct TCP)\n\n")
	fmt.Printf("Made by `./bench/run.sh viewer` on %s, %d vCPUs: %s, and direct TCP as the floor; "+
		"a Go client and a VNC-like server (RFB version, then a raw stream or an echo) on loopback, "+
		"the sides taking turns in one run. CPU and memory are the bridge's whole process tree from /proc "+
		"(websockify forks a process per connection: its listener and every child, reaped ones through cutime/cstime). "+
		"MB = 10⁶ bytes.\n\n", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(), versions)
	fmt.Printf("| path | throughput (median of %d × %d MiB) | bridge CPU per GB | RTT p50 (%d × %d B) | RTT p99 | bridge CPU per open (%d) | open → RFB version p50 | Pss per idle viewer (%d) | Pss with %d idle (none) |\n",
		c.runs, c.streamBytes>>20, c.trips, echoSize, c.opens, c.idle, c.idle)
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for i, s := range sides {
		r := res[i]
		cells := []string{s.name, fmt.Sprintf("%.0f MB/s", median(r.mbps))}
		if s.pid == 0 {
			cells = append(cells, "—")
		} else {
			cells = append(cells, fmt.Sprintf("%.2f s", r.streamCPU.Seconds()/(float64(r.streamed)/1e9)))
		}
		cells = append(cells, us(percentile(r.rtt, 50)), us(percentile(r.rtt, 99)))
		if s.pid == 0 {
			cells = append(cells, "—")
		} else {
			cells = append(cells, fmt.Sprintf("%.2f ms", float64(r.openCPU)/float64(time.Millisecond)/float64(c.opens)))
		}
		cells = append(cells, us(percentile(r.openLat, 50)))
		if s.pid == 0 {
			cells = append(cells, "—", "—")
		} else {
			cells = append(cells, fmt.Sprintf("%.0f KiB", perViewer(r, c.idle)),
				fmt.Sprintf("%s (%s)", mib(r.pss), mib(r.basePss)))
		}
		fmt.Printf("| %s |\n", strings.Join(cells, " | "))
	}
	direct, hearth, wsfy := res[0], res[1], res[2]
	thrW := median(hearth.mbps) / median(wsfy.mbps)
	thrD := median(hearth.mbps) / median(direct.mbps)
	rtt := float64(percentile(hearth.rtt, 50)) / float64(percentile(direct.rtt, 50))
	kib := perViewer(hearth, c.idle)
	goals := []struct {
		name, text string
		met        bool
	}{
		{"throughput against websockify", fmt.Sprintf("hearth throughput **%.2f× websockify** (goal ≥ 2×", thrW), thrW >= 2},
		{"throughput against direct TCP", fmt.Sprintf("**%.0f %% of direct** (goal ≥ 60 %%", 100*thrD), thrD >= 0.6},
		{"round-trip time", fmt.Sprintf("hearth RTT p50 **%.2f× direct** (goal < 2×", rtt), rtt < 2},
		{"memory per idle viewer", fmt.Sprintf("**%.0f KiB per idle hearth viewer** (goal < 100 KiB", kib), kib < 100},
	}
	var parts, missed []string
	for _, g := range goals {
		verdict := "met"
		if !g.met {
			verdict = "**missed**"
			missed = append(missed, g.name)
		}
		parts = append(parts, g.text+": "+verdict+")")
	}
	fmt.Printf("\nGoals: %s.", strings.Join(parts, "; "))
	if len(missed) == 0 {
		fmt.Println(" All met.")
	} else {
		fmt.Printf(" Missed: %s.\n", strings.Join(missed, "; "))
	}
	buf := "its default chunk (128 KiB, each sent in one write)"
	if c.hearthBuffer > 0 {
		buf = fmt.Sprintf("BufferSize %d (**not** hearth's default)", c.hearthBuffer)
	}
	fmt.Printf("\nhearth's process is the bridge as hearth runs it: WebSocket accepted by viewer.Accept (\"binary\" subprotocol, "+
		"compression off), viewer.Bridge with a 20 s ping, a 30 min idle limit and %s (no token check or logging); "+
		"websockify runs with its defaults (no heartbeat). "+
		"Pss per idle viewer = (Pss with %d idle viewers − Pss with none) / %d, after it settles.\n", buf, c.idle, c.idle)
}

// perViewer is the Pss each idle viewer added, in KiB.
func perViewer(r result, n int) float64 {
	return float64(r.pss-r.basePss) / float64(n)
}

func us(d time.Duration) string {
	if d >= time.Millisecond {
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
