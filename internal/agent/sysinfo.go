package agent

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procDir is where procfs is mounted.
var procDir = "/proc"

// readProc reads a procfs file, or returns nil.
func readProc(name string) []byte {
	b, err := readSmallFile(filepath.Join(procDir, name))
	if err != nil {
		return nil
	}
	return b
}

// uptimeSeconds returns the seconds since boot (/proc/uptime), or 0.
func uptimeSeconds() float64 {
	fields := strings.Fields(string(readProc("uptime")))
	if len(fields) == 0 {
		return 0
	}
	s, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || s < 0 {
		return 0
	}
	return s
}

// bootTime returns the wall-clock boot time: btime from /proc/stat, or
// now minus the uptime.
func bootTime(now time.Time, uptime float64) time.Time {
	if v, ok := procField(readProc("stat"), "btime"); ok {
		if sec, err := strconv.ParseInt(v, 10, 64); err == nil && sec > 0 {
			return time.Unix(sec, 0).UTC()
		}
	}
	return now.Add(-time.Duration(uptime * float64(time.Second))).Truncate(time.Second).UTC()
}

// memAvailableKiB returns MemAvailable from /proc/meminfo, or 0.
func memAvailableKiB() uint64 {
	v, ok := procField(readProc("meminfo"), "MemAvailable:")
	if !ok {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// load1 returns the one-minute load average from /proc/loadavg, or 0.
func load1() float64 {
	fields := strings.Fields(string(readProc("loadavg")))
	if len(fields) == 0 {
		return 0
	}
	l, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || l < 0 {
		return 0
	}
	return l
}

// kernelRelease returns the kernel release (uname -r).
func kernelRelease() string {
	return strings.TrimSpace(string(readProc("sys/kernel/osrelease")))
}

// hostname returns the guest's host name, or "".
func hostname() string {
	h, _ := os.Hostname()
	return h
}

// procField returns the first value after key in the line of b that starts
// with key (as in "MemAvailable:  1234 kB" or "btime 1700000000").
func procField(b []byte, key string) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == key {
			return fields[1], true
		}
	}
	return "", false
}
