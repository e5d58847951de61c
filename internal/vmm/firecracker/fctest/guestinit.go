package fctest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
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
	// The parent-death signal the fake set (SIGKILL, so that the guest
	// dies with its VMM) belongs to the thread it was set on, and an
	// exec from another thread of this process makes that thread the
	// process, without it. So the exec below runs on a locked thread,
	// which sets the signal again first.
	runtime.LockOSThread()
	if err := guestInit(os.Args[2]); err != nil {
		fmt.Fprintf(os.Stderr, "fctest guest init: %v\n", err)
		os.Exit(1)
	}
	argv := os.Args[3:]
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "fctest guest init: set the parent-death signal: %v\n", err)
		os.Exit(1)
	}
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
// mount namespace, its /proc shows only its PID namespace, /proc/cmdline is
// the file cmdline, and its /dev is its own (see guestDev).
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
	return guestDev()
}

// guestDev gives the guest a /dev of its own, as a guest kernel's devtmpfs
// would: the usual character devices, a private devpts, and its serial
// port, /dev/ttyS0 (and /dev/console), which is the guest init's standard
// output, the pipe the fake copies to its serial device. So a guest
// process writing its console goes where a real guest's would, and none of
// the host's devices (its own console among them) is in reach.
func guestDev() error {
	if err := unix.Mount("tmpfs", "/dev", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		if err := unix.Mknod("/dev/"+d.name, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", d.name, err)
		}
		// The umask must not narrow it.
		if err := os.Chmod("/dev/"+d.name, 0o666); err != nil {
			return err
		}
	}
	if err := os.Mkdir("/dev/pts", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	for link, target := range map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
		"stderr": "/proc/self/fd/2", "ttyS0": "/proc/1/fd/1", "console": "/proc/1/fd/1",
	} {
		if err := os.Symlink(target, "/dev/"+link); err != nil {
			return err
		}
	}
	return nil
}
