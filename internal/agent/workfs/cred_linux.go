package workfs

import (
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"unsafe"

	"golang.org/x/sys/unix"
)

// run runs fn on a fresh OS thread whose filesystem credentials are c's,
// and returns its error (see the package comment). fn must do its path
// operations itself, on its own goroutine: a goroutine it started would
// run on another thread, as root.
func (c Cred) run(fn func() error) error {
	done := make(chan error, 1)
	go c.runLocked(fn, done)
	return <-done
}

func (c Cred) runLocked(fn func() error, done chan<- error) {
	runtime.LockOSThread()
	if unix.Gettid() == unix.Getpid() {
		// The main thread is parked for good, not ended, when its
		// goroutine exits locked: it would keep c's credentials. Holding
		// it, so that the runtime cannot hand it out, run on another.
		inner := make(chan error, 1)
		go c.runLocked(fn, inner)
		done <- <-inner
		runtime.UnlockOSThread()
		return
	}
	// Never unlocked: when this goroutine returns, the runtime ends the
	// thread with it rather than reuse a thread that carries c's
	// credentials.
	defer func() {
		if p := recover(); p != nil {
			done <- fail(http.StatusInternalServerError, "acting as %s: panic: %v", c.Name, p)
		}
	}()
	if err := c.become(); err != nil {
		done <- err
		return
	}
	done <- fn()
}

// become gives the calling thread, which must be locked to its goroutine,
// c's supplementary groups and filesystem gid and uid, and checks that it
// has them.
func (c Cred) become() error {
	groups := slices.Clone(c.Groups)
	var gp *uint32
	if len(groups) > 0 {
		gp = &groups[0]
	}
	if _, _, errno := unix.RawSyscall(sysSetgroups, uintptr(len(groups)), uintptr(unsafe.Pointer(gp)), 0); errno != 0 {
		return c.credError("setgroups", errno)
	}
	got := make([]uint32, len(groups)+1)
	n, _, errno := unix.RawSyscall(sysGetgroups, uintptr(len(got)), uintptr(unsafe.Pointer(&got[0])), 0)
	if errno != 0 {
		return c.credError("getgroups", errno)
	}
	// The kernel keeps the groups sorted (and duplicates as given).
	slices.Sort(groups)
	got = got[:n]
	slices.Sort(got)
	if !slices.Equal(got, groups) {
		return c.credError("setgroups", fmt.Errorf("the thread's groups are %v, not %v", got, groups))
	}
	if err := setfsid(sysSetfsgid, c.GID); err != nil {
		return c.credError("setfsgid", err)
	}
	if err := setfsid(sysSetfsuid, c.UID); err != nil {
		return c.credError("setfsuid", err)
	}
	return nil
}

// setfsid sets the thread's filesystem uid or gid to id. The call
// reports no error, only the previous value, so a second call with the
// same id reads what the first one left.
func setfsid(trap uintptr, id uint32) error {
	_, _, _ = unix.RawSyscall(trap, uintptr(id), 0, 0)
	cur, _, _ := unix.RawSyscall(trap, uintptr(id), 0, 0)
	if uint32(cur) != id {
		return fmt.Errorf("the thread's id is %d, not %d", uint32(cur), id)
	}
	return nil
}

func (c Cred) credError(op string, err error) error {
	return fail(http.StatusInternalServerError, "act as %s (uid %d): %s: %v", c.Name, c.UID, op, err)
}
