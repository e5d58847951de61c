package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of the times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// procStat is what the benchmark uses of /proc/<pid>/stat.
type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64 // clock ticks
}

// parseStat parses the contents of /proc/<pid>/stat. The command name (field
// 2) is in parentheses and may itself contain spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("stat %q: no command name", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("stat %q: %d fields after the command name", b, len(f))
	}
	var s procStat
	var err error
	if s.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, fmt.Errorf("stat ppid: %w", err)
	}
	for j, p := range []*int64{&s.utime, &s.stime, &s.cutime, &s.cstime} {
		if *p, err = strconv.ParseInt(f[11+j], 10, 64); err != nil {
			return procStat{}, fmt.Errorf("stat field %d: %w", 14+j, err)
		}
	}
	return s, nil
}

// cpu is the process's own time plus that of its children it has reaped.
func (s procStat) cpu() time.Duration {
	return time.Duration(s.utime+s.stime+s.cutime+s.cstime) * clockTick
}

// readStat reads /proc/<pid>/stat.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// tree returns root and every process descended from it that /proc lists
// (zombies included: their times move to the parent only when reaped).
func tree(root int) []int {
	ents, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := readStat(pid); err == nil {
			children[s.ppid] = append(children[s.ppid], pid)
		}
	}
	pids := []int{root}
	for i := 0; i < len(pids); i++ {
		pids = append(pids, children[pids[i]]...)
	}
	return pids
}

// treeCPU is the CPU time (user + system) used so far by root's process
// tree: each live process's own time plus, through cutime and cstime, that of
// every descendant already reaped. A process that vanishes between the
// listing and the read is skipped; callers read after the tree has settled.
func treeCPU(root int) (time.Duration, error) {
	var sum time.Duration
	for _, pid := range tree(root) {
		s, err := readStat(pid)
		if err != nil {
			if pid == root {
				return 0, err
			}
			continue
		}
		sum += s.cpu()
	}
	return sum, nil
}

// parsePss returns the Pss line of a /proc/<pid>/smaps_rollup, in KiB.
func parsePss(b []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "Pss:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("smaps_rollup: no Pss line")
}

// treePss sums the proportional set size of root's process tree, in KiB:
// pages shared between the processes (a forked child's copy-on-write
// pages) are counted once in all.
func treePss(root int) (int64, error) {
	var sum int64
	for _, pid := range tree(root) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			if pid == root {
				return 0, err
			}
			continue
		}
		kib, err := parsePss(b)
		if err != nil {
			if len(b) == 0 { // a zombie has no memory left
				continue
			}
			return 0, fmt.Errorf("pid %d: %w", pid, err)
		}
		sum += kib
	}
	return sum, nil
}
