// Package proc identifies and watches VM processes by PID across daemon
// restarts: a PID is only trusted together with its start time, and exit is
// observed through a pidfd, which works for processes the daemon did not
// start itself.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stat returns the fields of /proc/PID/stat after comm (field 2), which may
// contain spaces and parentheses: the first one is field 3 (state).
func stat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse stat of pid %d: no comm terminator", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// ParentPID returns the PID of pid's parent (field 4 of /proc/PID/stat).
func ParentPID(pid int) (int, error) {
	fields, err := stat(pid)
	if err != nil {
		return 0, err
	}
	if len(fields) < 2 {
		return 0, fmt.Errorf("parse stat of pid %d: %d fields", pid, len(fields))
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return 0, fmt.Errorf("parse parent of pid %d: %w", pid, err)
	}
	return ppid, nil
}

// StartTime returns the start time of pid in clock ticks since boot (field 22
// of /proc/PID/stat).
func StartTime(pid int) (uint64, error) {
	fields, err := stat(pid)
	if err != nil {
		return 0, err
	}
	return startTime(pid, fields)
}

// startTime is the start time in pid's stat fields (as stat returns them).
func startTime(pid int, fields []string) (uint64, error) {
	// fields[0] is field 3 (state); start time is field 22.
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("parse stat of pid %d: %d fields", pid, len(fields))
	}
	v, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse start time of pid %d: %w", pid, err)
	}
	return v, nil
}

// Alive reports whether pid runs, is not a zombie, and started at start.
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	fields, err := stat(pid)
	if err != nil {
		return false
	}
	st, err := startTime(pid, fields)
	return err == nil && st == start && fields[0] != "Z" && fields[0] != "X"
}

// Cmdline returns the NUL-separated arguments of pid.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// Watch returns a channel closed when the process pid (started at start)
// exits. It uses a pidfd, so it works for any process, child or not.
func Watch(pid int, start uint64) (<-chan struct{}, error) {
	done := make(chan struct{})
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			close(done)
			return done, nil
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// The pidfd pins the process identity; check it is still the same one.
	if !Alive(pid, start) {
		unix.Close(fd)
		close(done)
		return done, nil
	}
	go func() {
		defer close(done)
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n > 0 {
				return
			}
		}
	}()
	return done, nil
}

// Signal sends sig to pid if it is still the process that started at start.
func Signal(pid int, start uint64, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if !Alive(pid, start) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, err)
	}
	return nil
}

// WaitGone waits until the process is gone or d elapses; it reports whether
// the process is gone.
func WaitGone(pid int, start uint64, d time.Duration) bool {
	ch, err := Watch(pid, start)
	if err != nil {
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			if !Alive(pid, start) {
				return true
			}
			time.Sleep(50 * time.Millisecond)
		}
		return !Alive(pid, start)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		// Time is up, but the exit may be on its way (a short or spent
		// d makes both ready at once): ask the process itself.
		return !Alive(pid, start)
	}
}

// KillWait sends SIGKILL to the process pid that started at start and
// waits up to wait for it to be gone.
func KillWait(pid int, start uint64, wait time.Duration) error {
	if err := Signal(pid, start, syscall.SIGKILL); err != nil {
		return err
	}
	if !WaitGone(pid, start, wait) {
		return fmt.Errorf("pid %d survived SIGKILL", pid)
	}
	return nil
}
