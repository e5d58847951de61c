package qemu

import (
	"strings"
	"testing"
)

func TestParseCPUInfoKHz(t *testing.T) {
	const cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.098\n\nprocessor\t: 1\ncpu MHz\t\t: 1800.000\n"
	khz, err := parseCPUInfoKHz(strings.NewReader(cpuinfo))
	if err != nil || khz != 2596098 {
		t.Fatalf("got %d, %v; want 2596098", khz, err)
	}
	if _, err := parseCPUInfoKHz(strings.NewReader("processor : 0\n")); err == nil {
		t.Error("missing cpu MHz accepted")
	}
	if _, err := parseCPUInfoKHz(strings.NewReader("cpu MHz : fast\n")); err == nil {
		t.Error("non-numeric cpu MHz accepted")
	}
}

func TestHostTSCkHz(t *testing.T) {
	khz, err := HostTSCkHz()
	if err != nil {
		t.Skipf("no usable /proc/cpuinfo: %v", err)
	}
	if khz < 100_000 || khz > 10_000_000 {
		t.Errorf("implausible host TSC %d kHz", khz)
	}
}
