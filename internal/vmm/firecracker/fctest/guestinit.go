package fctest

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// guestInitArg, as a binary's first argument, makes MaybeGuestInit turn the
// process into the fake guest's init.
const guestInitArg = "__fctest_guest_init"

// MaybeGuestInit must be called first thing by every binary that starts a
// fctest Server with an agent (the fake firecracker's main, a test's
// TestMain). When the process was started as the fake guest's init, it
// does not return.
//
// As root, the fake starts the agent as PID 1 of new PID and mount
// namespaces, like the init of a guest: its /proc/cmdline is the kernel
// command line the guest was booted with, and a power-off or reboot it asks
// for (reboot(2)) ends its namespace, not the host — the kernel turns
// reboot(2) in a non-initial PID namespace into the death of that
// namespace's init. The fake sees that death and exits as Firecracker does
// when its guest reboots.
func MaybeGuestInit() {
	if len(os.Args) < 4 || os.Args[1] != guestInitArg {
		return
	}
	if err := guestInit(os.Args[2]); err != nil {
		fmt.Fprintf(os.Stderr, "fctest guest init: %v\n", err)
		os.Exit(1)
	}
	argv := os.Args[3:]
	err := syscall.Exec(argv[0], argv, os.Environ())
	fmt.Fprintf(os.Stderr, "fctest guest init: exec %s: %v\n", argv[0], err)
	os.Exit(1)
}

// selfPath is the running binary, to start again as the guest's init. In a
// jail there is no /proc, but the jailer starts its binary by absolute path.
func selfPath() (string, error) {
	if filepath.IsAbs(os.Args[0]) {
		return os.Args[0], nil
	}
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the running binary for the guest init: %w", err)
	}
	return p, nil
}

// guestInit sets up the guest's view: nothing it mounts reaches the host's
// mount namespace, its /proc shows only its PID namespace, and
// /proc/cmdline is the file cmdline.
func guestInit(cmdline string) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("not the init of a new PID namespace (pid %d)", os.Getpid())
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := os.MkdirAll("/proc", 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	if err := unix.Mount(cmdline, "/proc/cmdline", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind the guest command line: %w", err)
	}
	return nil
}
