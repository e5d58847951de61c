// Command workbench compares hearth's work API with OpenSSH in the same
// guest: command start to first output byte, output stream throughput
// (with a raw TCP stream from the guest as the ceiling), keystroke echo
// round trips on a PTY, and 100 MiB uploads and downloads.
//
// It builds its guest image itself (bench/workbench/workspace-ssh.yaml,
// with `hearth image build --local`, cached by digest under -images), then
// runs again inside a network namespace it makes (-netns): there the
// daemon starts one VM on its bridge, and the bench, on the host side of
// that bridge, reaches the guest both through hearth's API and over TCP.
// sshd runs in the guest only for the benchmark: started as root through
// the process API, with a host key and an authorized key the bench makes
// in a temporary directory. Nothing leaves the namespace.
//
// Every table compares both in the same run, the methods interleaved run
// by run. It needs root and QEMU; ./bench/run.sh work builds everything
// and prints the Markdown section for docs/BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

type config struct {
	hearth, agent, profile, images string
	netns, state, key              string
	runs, keys, streams, files     int
	streamBytes, fileBytes         int64
}

func main() {
	var c config
	flag.StringVar(&c.hearth, "hearth", "bin/hearth", "hearth binary")
	flag.StringVar(&c.agent, "agent", "bin/hearth-agent", "hearth-agent binary (static), for the image")
	flag.StringVar(&c.profile, "profile", "bench/workbench/workspace-ssh.yaml", "the guest image's profile")
	flag.StringVar(&c.images, "images", "/var/cache/hearth/bench-images", "image output directory (a cache: a built image is reused)")
	flag.StringVar(&c.netns, "netns", "hearth-bench-work", "network namespace made for the daemon and the bench")
	flag.IntVar(&c.runs, "runs", 100, "command starts measured per method")
	flag.IntVar(&c.keys, "keys", 300, "keystrokes measured per method")
	flag.IntVar(&c.streams, "streams", 3, "output streams measured per method")
	flag.Int64Var(&c.streamBytes, "stream-bytes", 200<<20, "bytes of each output stream")
	flag.IntVar(&c.files, "files", 3, "uploads and downloads measured per method")
	flag.Int64Var(&c.fileBytes, "file-bytes", 100<<20, "size of the file uploaded and downloaded")
	// Set by the bench itself when it runs again inside the namespace.
	flag.StringVar(&c.state, "state", "", "")
	flag.StringVar(&c.key, "key", "", "")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if c.state == "" {
		err = outside(ctx, c)
	} else {
		err = inside(ctx, c)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "workbench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "workbench: "+format+"\n", args...)
}

// hearthEnv is the environment of every hearth command of the run.
func hearthEnv(c config) []string {
	return append(os.Environ(), "HEARTH_STATE_DIR="+c.state, "HEARTH_LISTEN="+daemonAddr, "HEARTH_IMAGE_DIR="+c.images,
		"HEARTH_LOG_LEVEL=info", "HEARTH_SHUTDOWN_STOP_VMS=true")
}

const daemonAddr = "127.0.0.1:7070"

func hearthCmd(c config, args ...string) (string, error) {
	cmd := exec.Command(c.hearth, args...)
	cmd.Env = hearthEnv(c)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("hearth %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// outside builds the image on the host's network (apt), makes the state
// directory, an admin key and the namespace, and runs the bench again in
// that namespace.
func outside(ctx context.Context, c config) error {
	for _, p := range []*string{&c.hearth, &c.agent, &c.profile} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	// Short path: VM sockets live under the state dir.
	state, err := os.MkdirTemp("", "hwork-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state) // hearth's files only: it never mounts
	c.state = state
	t := time.Now()
	out, err := hearthCmd(c, "image", "build", "--local", "--profile", c.profile, "--agent", c.agent)
	if err != nil {
		return err
	}
	lines := strings.Split(out, "\n")
	logf("image in %s: %s", time.Since(t).Round(100*time.Millisecond), lines[len(lines)-1])
	if c.key, err = hearthCmd(c, "apikey", "create", "--admin", "--name", "workbench"); err != nil {
		return err
	}
	// The VM's owner: a user exists once a key names it.
	if _, err := hearthCmd(c, "apikey", "create", "--user", "bench", "--name", "workbench"); err != nil {
		return err
	}
	_ = exec.Command("ip", "netns", "del", c.netns).Run()
	if out, err := exec.Command("ip", "netns", "add", c.netns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", c.netns, err, out)
	}
	defer func() { _ = exec.Command("ip", "netns", "del", c.netns).Run() }()
	if out, err := exec.Command("ip", "-n", c.netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v: %s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"netns", "exec", c.netns, self, "-state", state, "-key", c.key}
	flag.Visit(func(f *flag.Flag) { args = append(args, "-"+f.Name+"="+f.Value.String()) })
	args = append(args, "-hearth="+c.hearth, "-agent="+c.agent, "-profile="+c.profile)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 3 * time.Minute
	return cmd.Run()
}

// inside runs in the namespace: the daemon, one VM, sshd in it, and the
// measurements.
func inside(ctx context.Context, c config) error {
	logPath := filepath.Join(c.state, "hearth.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	daemon := exec.Command(c.hearth, "serve")
	daemon.Env = hearthEnv(c)
	daemon.Stdout, daemon.Stderr = logFile, logFile
	if err := daemon.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = daemon.Wait(); close(done) }()
	defer func() {
		_ = daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			logf("the daemon did not stop on SIGTERM; killing it")
			_ = daemon.Process.Kill()
			<-done
		}
	}()
	cl := client.New(daemonAddr, c.key)
	cl.HTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	deadline := time.Now().Add(30 * time.Second)
	for cl.Readyz(ctx) != nil {
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon did not become ready; log:\n%s", tailFile(logPath, 3000))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return fmt.Errorf("the daemon exited; log:\n%s", tailFile(logPath, 3000))
		case <-time.After(50 * time.Millisecond):
		}
	}
	host, err := cl.Host(ctx)
	if err != nil {
		return err
	}
	v, err := cl.CreateVM(ctx, api.CreateVM{Image: "workspace-ssh-bench", VCPUs: 2, MemoryMiB: 1024, User: "bench"})
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := cl.DeleteVM(dctx, v.ID); err == nil {
			_, _ = cl.WaitVM(dctx, v.ID, "destroyed", time.Minute)
		}
	}()
	if v, err = cl.WaitVM(ctx, v.ID, "ready", 5*time.Minute); err != nil {
		return fmt.Errorf("vm %s: %w; log:\n%s", v.ID, err, tailFile(logPath, 3000))
	}
	ip, _, _ := strings.Cut(v.Network.Address, "/")
	if ip == "" {
		return fmt.Errorf("vm %s has no address: %+v", v.ID, v.Network)
	}
	logf("vm %s ready at %s (%d vCPUs, %d MiB)", v.ID, ip, v.VCPUs, v.MemoryMiB)

	b := &bench{c: c, cl: cl, vm: v.ID, ip: ip, load0: loadAvg(), daemon: daemon.Process.Pid, qemu: qemuPID(c.state)}
	if b.qemu == 0 {
		return fmt.Errorf("no QEMU process of %s found", c.state)
	}
	if b.ssh, err = startSSHD(ctx, cl, v.ID, ip); err != nil {
		return err
	}
	defer b.ssh.close()
	r, err := b.run(ctx)
	if err != nil {
		return err
	}
	r.accel, r.vcpus, r.mem, r.load0, r.load1 = string(host.Capabilities.Accel), v.VCPUs, v.MemoryMiB, b.load0, loadAvg()
	r.print(c)
	return nil
}

// qemuPID is the QEMU process whose command line mentions dir.
func qemuPID(dir string) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), dir) {
			return pid
		}
	}
	return 0
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// loadAvg is the host's 1-minute load average: the bench shares the
// machine with whatever else runs on it.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
