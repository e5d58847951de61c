//go:build linux

package main

// The jailer mode: a fake of Firecracker's jailer that does the jailer's
// real work (chroot, device nodes, network namespace, cgroups, resource
// limits, dropping privileges, daemonizing) and then execs the fake
// firecracker inside the jail, as the jailer execs firecracker.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/vmm/firecracker/fctest"
)

// jailerArgs are the jailer's flags (Firecracker v1.16).
var jailerArgs = []argSpec{
	{"id", true, "", "Jail ID."},
	{"exec-file", true, "", "File path to exec into."},
	{"uid", true, "", "The user identifier the jailer switches to after exec."},
	{"gid", true, "", "The group identifier the jailer switches to after exec."},
	{"chroot-base-dir", true, "/srv/jailer", "The base folder where chroot jails are located."},
	{"netns", true, "", "Path to the network namespace this microVM should join."},
	{"daemonize", false, "", "Daemonize the jailer before exec (setsid, standard I/O to /dev/null)."},
	{"new-pid-ns", false, "", "Exec into a new PID namespace."},
	{"cgroup", true, "", "Cgroup and value to be set by the jailer: <cgroup_file>=<value>; repeatable."},
	{"resource-limit", true, "", "Resource limit: <resource>=<value> (fsize, no-file); repeatable."},
	{"cgroup-version", true, "1", "Select the cgroup version used by the jailer."},
	{"parent-cgroup", true, "", "Parent cgroup in which the cgroup of this microvm will be placed."},
	{"version", false, "", "Print the binary version number."},
}

var jailerMulti = map[string]bool{"cgroup": true, "resource-limit": true}

// Device numbers of the nodes the jailer creates in the jail.
const (
	devMiscMajor = 10
	devTunMinor  = 200
	devKVMMinor  = 232
)

// jail is a validated jailer command line.
type jail struct {
	id           string
	execFile     string // canonical path
	execName     string
	chrootDir    string
	uid, gid     int
	netns        string
	daemonize    bool
	newPIDNS     bool
	cgroupV      int
	parentCgroup string
	cgroups      [][2]string // file, value
	fsize        *uint64
	noFile       uint64
	extra        []string
	agent        string // HEARTH_FAKEFC_AGENT, canonical, if set

	startUS, startCPUUS uint64
}

// runJailer is the jailer mode. It returns only on failure (or, with
// --new-pid-ns, in the parent once the child is started).
func runJailer(args []string, stdout, stderr io.Writer) int {
	// setns and the exec must happen on one thread: namespaces are
	// per thread.
	runtime.LockOSThread()
	startUS := uint64(monotonicUS())
	startCPUUS := uint64(processCPUUS())

	p, err := parseArgs(jailerArgs, args, jailerMulti)
	if err == nil {
		for _, name := range []string{"id", "exec-file", "uid", "gid"} {
			if !p.help && !p.vers && !p.set[name] {
				err = fmt.Errorf("argument '%s' required, but not found", name)
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stdout, "Arguments parsing error: %v \n\nFor more information try --help.\n", err)
		return 1
	}
	if p.help {
		fmt.Fprintf(stdout, "Jailer v%s\n\n%s\nAny arguments after the -- separator will be supplied to the jailed binary.\n\n", fctest.SpecVersion, formatHelp(jailerArgs))
		return 0
	}
	if p.vers {
		fmt.Fprintf(stdout, "Jailer v%s\n\n", fctest.SpecVersion)
		return 0
	}
	j, err := newJail(p)
	if err == nil {
		j.startUS, j.startCPUUS = startUS, startCPUUS
		err = j.run(stderr)
	}
	// run returns only on failure, or in the parent with --new-pid-ns.
	if err != nil {
		fmt.Fprintf(stderr, "Jailer error: %v\n", err)
		return 1
	}
	return 0
}

func newJail(p *parsedArgs) (*jail, error) {
	j := &jail{id: p.values["id"], daemonize: p.set["daemonize"], newPIDNS: p.set["new-pid-ns"], netns: p.values["netns"], extra: p.extra, noFile: 2048}
	if err := validInstanceID(j.id); err != nil {
		return nil, fmt.Errorf("Invalid instance ID: %v", err)
	}
	exe, err := filepath.EvalSymlinks(p.values["exec-file"])
	if err == nil {
		exe, err = filepath.Abs(exe)
	}
	if err != nil {
		return nil, fmt.Errorf("Failed to canonicalize path %s: %v", p.values["exec-file"], err)
	}
	if fi, err := os.Stat(exe); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a file", exe)
	}
	j.execFile, j.execName = exe, filepath.Base(exe)
	if !strings.Contains(j.execName, "firecracker") {
		return nil, fmt.Errorf("Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": %s", j.execName)
	}
	base, err := filepath.EvalSymlinks(p.value(jailerArgs, "chroot-base-dir"))
	if err != nil {
		return nil, fmt.Errorf("Failed to canonicalize path %s: %v", p.value(jailerArgs, "chroot-base-dir"), err)
	}
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", base)
	}
	j.chrootDir = filepath.Join(base, j.execName, j.id, "root")
	for _, f := range []struct {
		name string
		dst  *int
	}{{"uid", &j.uid}, {"gid", &j.gid}} {
		n, err := strconv.ParseUint(p.values[f.name], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("Invalid %s: %s", f.name, p.values[f.name])
		}
		*f.dst = int(n)
	}
	j.parentCgroup = j.execName
	if pc, ok := p.values["parent-cgroup"]; ok {
		if filepath.IsAbs(pc) || strings.Contains("/"+pc+"/", "/../") || strings.Contains("/"+pc+"/", "/./") {
			return nil, errors.New("Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'")
		}
		j.parentCgroup = pc
	}
	v := p.value(jailerArgs, "cgroup-version")
	switch v {
	case "1", "2":
		j.cgroupV, _ = strconv.Atoi(v)
	default:
		return nil, fmt.Errorf("%s is an invalid cgroup version specifier", v)
	}
	if cg, ok := p.values["cgroup"]; ok {
		for _, c := range strings.Split(cg, "\n") {
			parts := strings.Split(c, "=")
			if len(parts) != 2 || parts[1] == "" || !strings.Contains(parts[0], ".") {
				return nil, fmt.Errorf("Invalid format for cgroups: %s", c)
			}
			j.cgroups = append(j.cgroups, [2]string{parts[0], parts[1]})
		}
	}
	if rl, ok := p.values["resource-limit"]; ok {
		for _, r := range strings.Split(rl, "\n") {
			name, val, ok := strings.Cut(r, "=")
			if !ok {
				return nil, fmt.Errorf("Invalid format for resources limits: %s", r)
			}
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("Invalid limit value for resource: %s: %v", val, err)
			}
			switch name {
			case "fsize":
				j.fsize = &n
			case "no-file":
				j.noFile = n
			default:
				return nil, fmt.Errorf("Invalid resource argument: %s", name)
			}
		}
	}
	if a := os.Getenv(envAgent); a != "" {
		if j.agent, err = filepath.Abs(a); err != nil {
			return nil, fmt.Errorf("%s: %v", envAgent, err)
		}
	}
	return j, nil
}

// run builds the jail and execs into it.
func (j *jail) run(stderr io.Writer) error {
	sanitizeProcess()
	if err := os.MkdirAll(j.chrootDir, 0o755); err != nil {
		return fmt.Errorf("Failed to create directory %s: %v", j.chrootDir, err)
	}
	if err := linkOrCopy(j.execFile, filepath.Join(j.chrootDir, j.execName)); err != nil {
		return err
	}
	if j.agent != "" {
		// Test-only: the fake guest's agent must be reachable in the jail.
		name := filepath.Base(j.agent)
		if err := linkOrCopy(j.agent, filepath.Join(j.chrootDir, name)); err != nil {
			return err
		}
		os.Setenv(envAgent, "/"+name)
	}
	if j.netns != "" {
		f, err := os.Open(j.netns)
		if err != nil {
			return fmt.Errorf("Failed to open file %s: %v", j.netns, err)
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			return fmt.Errorf("Failed to join network namespace: netns: %v", err)
		}
		// Not the jailer's doing: the fake guest's MMDS and agent talk
		// over this namespace's loopback, which a fresh namespace has
		// down (a real guest needs no host loopback).
		if err := loopbackUp(); err != nil {
			fmt.Fprintf(stderr, "jailer: warning: cannot bring lo up in %s: %v\n", j.netns, err)
		}
	}
	if err := j.setRlimits(); err != nil {
		return err
	}
	j.setupCgroups(stderr)
	var devNull *os.File
	if j.daemonize {
		var err error
		if devNull, err = os.OpenFile("/dev/null", os.O_RDWR, 0); err != nil {
			return fmt.Errorf("Failed to open /dev/null: %v", err)
		}
	}
	if err := syscall.Chroot(j.chrootDir); err != nil {
		return fmt.Errorf("Failed to chroot into %s: %v", j.chrootDir, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("Failed to chdir into chroot directory: %v", err)
	}
	for _, dir := range []string{"/", "/dev", "/dev/net", "/run"} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("Failed to create directory %s: %v", dir, err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("Failed to change permissions on %s: %v", dir, err)
		}
		if err := os.Chown(dir, j.uid, j.gid); err != nil {
			return fmt.Errorf("Failed to change owner for %s: %v", dir, err)
		}
	}
	for _, dev := range []struct {
		path  string
		minor uint32
	}{{"/dev/net/tun", devTunMinor}, {"/dev/kvm", devKVMMinor}} {
		if err := unix.Mknod(dev.path, unix.S_IFCHR|0o600, int(unix.Mkdev(devMiscMajor, dev.minor))); err != nil {
			return fmt.Errorf("Failed to create %s via mknod inside the jail: %v", dev.path, err)
		}
		if err := os.Chown(dev.path, j.uid, j.gid); err != nil {
			return fmt.Errorf("Failed to change owner for %s: %v", dev.path, err)
		}
	}
	if devNull != nil {
		if _, err := unix.Setsid(); err != nil {
			return fmt.Errorf("Failed to daemonize: setsid: %v", err)
		}
		for fd := 0; fd <= 2; fd++ {
			if err := unix.Dup2(int(devNull.Fd()), fd); err != nil {
				return fmt.Errorf("Failed to duplicate fd: %v", err)
			}
		}
		devNull.Close()
	}
	exe := "/" + j.execName
	if j.newPIDNS {
		return j.execInNewPIDNS(exe)
	}
	argv := j.argv(exe)
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %v", err)
	}
	if err := syscall.Setgid(j.gid); err != nil {
		return fmt.Errorf("setgid %d: %v", j.gid, err)
	}
	if err := syscall.Setuid(j.uid); err != nil {
		return fmt.Errorf("setuid %d: %v", j.uid, err)
	}
	err := syscall.Exec(exe, argv, os.Environ())
	return fmt.Errorf("Failed to exec into Firecracker: %v", err)
}

// argv is the jailed firecracker's command line, as the jailer builds it.
func (j *jail) argv(exe string) []string {
	parentCPU := uint64(processCPUUS()) - j.startCPUUS
	argv := []string{exe,
		"--id", j.id,
		"--start-time-us", strconv.FormatUint(j.startUS, 10),
		"--start-time-cpu-us", strconv.FormatUint(j.startCPUUS, 10),
		"--parent-cpu-time-us", strconv.FormatUint(parentCPU, 10),
	}
	return append(argv, j.extra...)
}

// execInNewPIDNS starts the exec file as init of a new PID namespace,
// stores its pid in /<exec_file_name>.pid and returns (the jailer then
// exits 0).
func (j *jail) execInNewPIDNS(exe string) error {
	argv := j.argv(exe)
	cmd := &exec.Cmd{Path: exe, Args: argv, Env: os.Environ(), Dir: "/", Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID,
		Credential: &syscall.Credential{Uid: uint32(j.uid), Gid: uint32(j.gid), Groups: []uint32{}},
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("Failed cloning into a new child process: %v", err)
	}
	pidFile := exe + ".pid"
	f, err := os.OpenFile(pidFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("Failed to open file %s: %v", pidFile, err)
	}
	defer f.Close()
	if _, err := fmt.Fprint(f, cmd.Process.Pid); err != nil {
		return fmt.Errorf("Failed to write to %s: %v", pidFile, err)
	}
	return nil
}

func (j *jail) setRlimits() error {
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: j.noFile, Max: j.noFile}); err != nil {
		return fmt.Errorf("Failed to set limit for resource: no-file: %v", err)
	}
	if j.fsize != nil {
		if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: *j.fsize, Max: *j.fsize}); err != nil {
			return fmt.Errorf("Failed to set limit for resource: fsize: %v", err)
		}
	}
	return nil
}

// setupCgroups creates <hierarchy>/<parent-cgroup>/<id>, writes the
// --cgroup values and moves the process in. A hierarchy that is not there
// or not writable (an unprivileged user, a container) is skipped with a
// warning: the fake must run where the real jailer could not.
func (j *jail) setupCgroups(stderr io.Writer) {
	if len(j.cgroups) == 0 {
		return
	}
	warn := func(format string, a ...any) {
		fmt.Fprintf(stderr, "jailer: warning: cgroups not applied: "+format+"\n", a...)
	}
	pid := strconv.Itoa(os.Getpid())
	if j.cgroupV == 2 {
		const root = "/sys/fs/cgroup"
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			warn("no cgroup v2 hierarchy at %s", root)
			return
		}
		dir := filepath.Join(root, j.parentCgroup, j.id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			warn("%v", err)
			return
		}
		// Enable the controllers the values need down to the parent.
		ctrls := map[string]bool{}
		for _, cg := range j.cgroups {
			ctrls[strings.SplitN(cg[0], ".", 2)[0]] = true
		}
		parent := root
		for _, part := range strings.Split(j.parentCgroup, "/") {
			for c := range ctrls {
				// Best effort: a controller that cannot be enabled fails its value below.
				_ = os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+"+c), 0)
			}
			parent = filepath.Join(parent, part)
		}
		for c := range ctrls {
			_ = os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+"+c), 0)
		}
		for _, cg := range j.cgroups {
			if err := os.WriteFile(filepath.Join(dir, cg[0]), []byte(cg[1]+"\n"), 0); err != nil {
				warn("write %s: %v", cg[0], err)
				return
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pid+"\n"), 0); err != nil {
			warn("join %s: %v", dir, err)
		}
		return
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		warn("%v", err)
		return
	}
	for _, cg := range j.cgroups {
		ctrl := strings.SplitN(cg[0], ".", 2)[0]
		mount := ""
		for _, line := range strings.Split(string(mounts), "\n") {
			f := strings.Fields(line)
			if len(f) >= 4 && f[2] == "cgroup" && hasOption(f[3], ctrl) {
				mount = f[1]
				break
			}
		}
		if mount == "" {
			warn("no cgroup v1 hierarchy with controller %s", ctrl)
			continue
		}
		dir := filepath.Join(mount, j.parentCgroup, j.id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			warn("%v", err)
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, cg[0]), []byte(cg[1]+"\n"), 0); err != nil {
			warn("write %s: %v", cg[0], err)
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "tasks"), []byte(pid+"\n"), 0); err != nil {
			warn("join %s: %v", dir, err)
		}
	}
}

func hasOption(opts, want string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// sanitizeProcess keeps no inherited descriptor beyond standard I/O (they
// are marked close-on-exec: the Go runtime owns some of them until the
// exec) and clears the environment, except the fake's test-only
// HEARTH_FAKEFC_* settings.
func sanitizeProcess() {
	if entries, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range entries {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				unix.CloseOnExec(fd)
			}
		}
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "HEARTH_FAKEFC_") {
			os.Unsetenv(k)
		}
	}
}

// linkOrCopy puts src at dst: a hard link where possible, else a copy (the
// jailer copies), replacing what is there.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	} else if errors.Is(err, os.ErrExist) {
		if same, _ := sameFile(src, dst); same {
			return nil
		}
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("Failed to copy %s to %s: %v", src, dst, err)
	}
	defer in.Close()
	fi, _ := in.Stat()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return fmt.Errorf("Failed to copy %s to %s: %v", src, dst, err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("Failed to copy %s to %s: %v", src, dst, err)
	}
	return nil
}

func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

// loopbackUp sets the IFF_UP flag of "lo" in the current network
// namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func monotonicUS() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return ts.Nano() / int64(time.Microsecond)
}

func processCPUUS() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts) // cannot fail for this clock
	return ts.Nano() / int64(time.Microsecond)
}
