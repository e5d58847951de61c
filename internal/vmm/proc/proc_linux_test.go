package proc

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestWatchAndSignalNonChild(t *testing.T) {
	// sh starts sleep in the background and exits: sleep is not our child.
	out, err := exec.Command("sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, c := range string(out) {
		if c >= '0' && c <= '9' {
			pid = pid*10 + int(c-'0')
		}
	}
	start, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(pid, start) {
		t.Fatal("sleep not alive")
	}
	if Alive(pid, start+1) {
		t.Fatal("a wrong start time must not match (recycled pid)")
	}
	ch, err := Watch(pid, start)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
		t.Fatal("watch fired while process runs")
	case <-time.After(100 * time.Millisecond):
	}
	if err := Signal(pid, start, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("watch did not fire after kill")
	}
	if !WaitGone(pid, start, time.Second) {
		t.Fatal("process still there")
	}
	// Signalling a gone process is not an error.
	if err := Signal(pid, start, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

func TestStartTimeMissing(t *testing.T) {
	if _, err := StartTime(1 << 30); err == nil {
		t.Fatal("expected error for missing pid")
	}
	if Alive(0, 0) || Alive(-1, 0) {
		t.Fatal("non-positive pid alive")
	}
}

func TestParentPID(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ppid, err := ParentPID(cmd.Process.Pid)
	if err != nil || ppid != os.Getpid() {
		t.Fatalf("parent of our child: %d %v, want %d", ppid, err, os.Getpid())
	}
	if _, err := ParentPID(1 << 30); err == nil {
		t.Fatal("expected error for missing pid")
	}
}

// A process that has exited but is not reaped yet (a zombie) is not alive.
func TestZombieNotAlive(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	start, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for Alive(pid, start) {
		if time.Now().After(deadline) {
			t.Fatal("an exited, unreaped process is still alive")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := StartTime(pid); err != nil {
		t.Fatalf("the zombie's stat is gone already (%v): the test proves nothing", err)
	}
}

// TestWaitGoneWithNoTimeLeft: a process that has exited (a zombie its
// parent has not reaped yet) is gone, even when WaitGone has no time left
// to wait for its watch to say so.
func TestWaitGoneWithNoTimeLeft(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	start, err := StartTime(pid)
	if err != nil {
		t.Skipf("the process ended before its start time was read: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for Alive(pid, start) {
		if time.Now().After(deadline) {
			t.Fatal("true did not exit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range 200 {
		if !WaitGone(pid, start, 0) {
			t.Fatalf("try %d: an exited process reported as still there", i)
		}
	}
}
