package procstat

import (
	"os"
	"testing"
	"time"
)

func TestCPUTimeAndNumCPU(t *testing.T) {
	before := CPUTime(os.Getpid())
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	if got := CPUTime(os.Getpid()); got <= before {
		t.Fatalf("CPU time %v after spinning, %v before", got, before)
	}
	if CPUTime(-1) != 0 {
		t.Fatal("a missing process has CPU time")
	}
	if NumCPU() < 1 {
		t.Fatalf("NumCPU = %d", NumCPU())
	}
}
