package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// HostTSCkHz returns the host CPU frequency in kHz from /proc/cpuinfo (the
// first "cpu MHz" line). QEMU guests on -M microvm under TCG need it as
// tsc_early_khz: microvm has no HPET or PM timer to calibrate the TSC
// against, and without it a loaded host can hang the guest at boot.
//
// On hosts with frequency scaling "cpu MHz" is the current, not the
// nominal, frequency; the value is only a calibration hint for the guest.
func HostTSCkHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseCPUInfoKHz(f)
}

// parseCPUInfoKHz extracts the first "cpu MHz" value, in kHz.
func parseCPUInfoKHz(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || mhz <= 0 || math.IsInf(mhz, 0) {
			return 0, fmt.Errorf("cpuinfo: bad cpu MHz %q", strings.TrimSpace(val))
		}
		return int(math.Round(mhz * 1000)), nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("cpuinfo: %w", err)
	}
	return 0, errors.New("cpuinfo: no \"cpu MHz\" line")
}
