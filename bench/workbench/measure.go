package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/creack/pty"
	"golang.org/x/term"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/bench/internal/procstat"
	"github.com/hearth-project/hearth/internal/client"
)

type bench struct {
	c      config
	cl     *client.Client
	vm, ip string
	ssh    *sshd
	load0  string
	drops  int64 // output bytes the hearth streams reported dropped
	// pids whose CPU time the streams account
	daemon, qemu int
}

// results are every sample of the run, by table and method.
type results struct {
	start, keys      map[string][]time.Duration
	stream           map[string][]rate
	streamCPU        map[string][]cpuUse
	upload, download map[string][]rate
	drops            int64
	accel            string
	vcpus, mem       int
	load0, load1     string
}

// rate is one transfer: bytes in d.
type rate struct {
	bytes int64
	d     time.Duration
}

func (r rate) mibps() float64 { return float64(r.bytes) / (1 << 20) / r.d.Seconds() }

// Methods, as the tables name them.
const (
	mProcess = "hearth: POST processes → output stream (SSE)"
	mExecAPI = "hearth: POST exec (answer read)"
	mExecCLI = "hearth: `hearth vm exec` (CLI process)"
	mSSH     = "OpenSSH: `ssh guest cmd` (client process)"
	mAttach  = "hearth: attach WebSocket"
	mRawTCP  = "raw TCP from the guest (`nc -l`)"
	mSSHTTY  = "OpenSSH: `ssh -tt guest cat` (host PTY)"
	mFiles   = "hearth: files API (PUT / GET files/content)"
	mSCP     = "OpenSSH: `scp` (SFTP)"
)

func (b *bench) run(ctx context.Context) (*results, error) {
	r := &results{start: map[string][]time.Duration{}, keys: map[string][]time.Duration{}, stream: map[string][]rate{}, streamCPU: map[string][]cpuUse{},
		upload: map[string][]rate{}, download: map[string][]rate{}}
	starts := []struct {
		name string
		f    func(context.Context) (time.Duration, error)
	}{{mProcess, b.startProcess}, {mExecAPI, b.startExecAPI}, {mExecCLI, b.startExecCLI}, {mSSH, b.startSSH}}
	// One of each first, unmeasured: caches, connections, page cache.
	for i := -1; i < b.c.runs; i++ {
		for _, m := range starts {
			d, err := m.f(ctx)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m.name, err)
			}
			if i >= 0 {
				r.start[m.name] = append(r.start[m.name], d)
			}
		}
	}
	logf("command start: %d runs each", b.c.runs)

	streams := []struct {
		name string
		f    func(context.Context) (rate, error)
	}{{mProcess, b.streamProcess}, {mAttach, b.streamAttach}, {mSSH, b.streamSSH}, {mRawTCP, b.streamTCP}}
	for i := 0; i < b.c.streams; i++ {
		for _, m := range streams {
			c0 := b.cpu()
			x, err := m.f(ctx)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m.name, err)
			}
			u := b.cpu().since(c0)
			r.stream[m.name] = append(r.stream[m.name], x)
			r.streamCPU[m.name] = append(r.streamCPU[m.name], u)
			logf("stream %d %s: %.1f MiB/s; cores busy: daemon %.2f, qemu %.2f, client %.2f", i+1, m.name, x.mibps(),
				u.cores(u.daemon), u.cores(u.qemu), u.cores(u.client))
		}
	}

	for _, m := range []struct {
		name string
		f    func(context.Context, int) ([]time.Duration, error)
	}{{mAttach, b.keysAttach}, {mSSHTTY, b.keysSSH}} {
		ds, err := m.f(ctx, b.c.keys)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.name, err)
		}
		r.keys[m.name] = ds
	}
	logf("keystrokes: %d each", b.c.keys)

	if err := b.files(ctx, r); err != nil {
		return nil, err
	}
	r.drops = b.drops
	return r, nil
}

// cpuUse is the CPU time the parts of a transfer used, and its wall time.
type cpuUse struct {
	wall, daemon, qemu, client time.Duration
	at                         time.Time
}

// cpu reads the CPU time used so far by the daemon, QEMU (all its
// threads: the guest's vCPUs, its I/O) and the client: the bench itself
// and the child processes it has waited for (ssh).
func (b *bench) cpu() cpuUse {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	children := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpuUse{at: time.Now(), daemon: procstat.CPUTime(b.daemon), qemu: procstat.CPUTime(b.qemu),
		client: procstat.CPUTime(os.Getpid()) + children}
}

func (u cpuUse) since(u0 cpuUse) cpuUse {
	return cpuUse{wall: u.at.Sub(u0.at), daemon: u.daemon - u0.daemon, qemu: u.qemu - u0.qemu, client: u.client - u0.client}
}

// cores is d as cores kept busy over the transfer.
func (u cpuUse) cores(d time.Duration) float64 { return d.Seconds() / u.wall.Seconds() }

var echoX = []string{"echo", "x"}

// startProcess: POST processes, then the output stream up to its first
// stdout byte.
func (b *bench) startProcess(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	p, err := b.cl.StartProcess(ctx, b.vm, api.ProcessStart{Argv: echoX})
	if err != nil {
		return 0, err
	}
	s, err := b.cl.ProcessOutput(ctx, b.vm, p.ID, 0)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	for {
		e, err := s.Next()
		if err != nil {
			return 0, fmt.Errorf("output of %s: %w", p.ID, err)
		}
		switch {
		case e.Type == client.OutputStdout && len(e.Output.Data) > 0:
			d := time.Since(t0)
			if string(e.Output.Data) != "x\n" {
				return 0, fmt.Errorf("echo x wrote %q", e.Output.Data)
			}
			return d, nil
		case e.Type == client.OutputExit:
			return 0, fmt.Errorf("process %s exited before writing: %+v", p.ID, e.Exit)
		}
	}
}

// startExecAPI: POST exec, whose answer comes once the command has ended.
func (b *bench) startExecAPI(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	res, err := b.cl.Exec(ctx, b.vm, api.ExecRequest{Argv: echoX, TimeoutSeconds: 30})
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if res.ExitCode != 0 || res.Stdout != "x\n" {
		return 0, fmt.Errorf("exec: %d %q %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	return d, nil
}

// firstByte runs cmd and returns the time from its start to the first
// byte of its stdout, checking that all of it is want.
func firstByte(cmd *exec.Cmd, want string) (time.Duration, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	buf := make([]byte, 64)
	n, err := out.Read(buf)
	d := time.Since(t0)
	rest, _ := io.ReadAll(out)
	werr := cmd.Wait()
	if err != nil || werr != nil {
		return 0, fmt.Errorf("%s: %v %v: %s", cmd, err, werr, stderr.Bytes())
	}
	if got := string(buf[:n]) + string(rest); got != want {
		return 0, fmt.Errorf("%s wrote %q", cmd, got)
	}
	return d, nil
}

func (b *bench) startExecCLI(context.Context) (time.Duration, error) {
	cmd := exec.Command(b.c.hearth, append([]string{"vm", "exec", b.vm, "--"}, echoX...)...)
	cmd.Env = append(os.Environ(), "HEARTH_ADDR="+daemonAddr, "HEARTH_API_KEY="+b.c.key)
	return firstByte(cmd, "x\n")
}

func (b *bench) startSSH(context.Context) (time.Duration, error) {
	return firstByte(b.ssh.command("echo x"), "x\n")
}

// zeroes is the streamed command: the same bytes for every method.
func (b *bench) zeroes() string {
	return "head -c " + strconv.FormatInt(b.c.streamBytes, 10) + " /dev/zero"
}

// counter times a stream from its first byte to its end.
type counter struct {
	n     int64
	first time.Time
}

func (c *counter) Write(p []byte) (int, error) {
	if c.first.IsZero() && len(p) > 0 {
		c.first = time.Now()
	}
	c.n += int64(len(p))
	return len(p), nil
}

func (c *counter) rate(want int64) (rate, error) {
	d := time.Since(c.first)
	if c.n != want {
		return rate{}, fmt.Errorf("got %d bytes, want %d", c.n, want)
	}
	return rate{c.n, d}, nil
}

func (b *bench) streamProcess(ctx context.Context) (rate, error) {
	p, err := b.cl.StartProcess(ctx, b.vm, api.ProcessStart{Argv: []string{"/bin/sh", "-c", b.zeroes()}})
	if err != nil {
		return rate{}, err
	}
	s, err := b.cl.ProcessOutput(ctx, b.vm, p.ID, 0)
	if err != nil {
		return rate{}, err
	}
	defer s.Close()
	var c counter
	for {
		e, err := s.Next()
		if err != nil {
			return rate{}, fmt.Errorf("output of %s: %w", p.ID, err)
		}
		switch e.Type {
		case client.OutputStdout:
			_, _ = c.Write(e.Output.Data)
		case client.OutputDropped:
			b.drops += e.Dropped.To - e.Dropped.From
		case client.OutputExit:
			return c.rate(b.c.streamBytes)
		}
	}
}

// streamAttach reads the same command's output off the attach WebSocket
// (binary messages: no base64).
func (b *bench) streamAttach(ctx context.Context) (rate, error) {
	p, err := b.cl.StartProcess(ctx, b.vm, api.ProcessStart{Argv: []string{"/bin/sh", "-c", b.zeroes()}})
	if err != nil {
		return rate{}, err
	}
	var zero int64
	ws, err := b.cl.Attach(ctx, b.vm, p.ID, &zero)
	if err != nil {
		return rate{}, err
	}
	defer func() { _ = ws.CloseNow() }()
	ws.SetReadLimit(1 << 22)
	var c counter
	for {
		typ, data, err := ws.Read(ctx)
		if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
			return c.rate(b.c.streamBytes)
		}
		if err != nil {
			return rate{}, err
		}
		if typ == websocket.MessageBinary {
			_, _ = c.Write(data)
		} else if bytes.Contains(data, []byte(`"dropped"`)) {
			return rate{}, fmt.Errorf("attach dropped output: %s", data)
		}
	}
}

func (b *bench) streamSSH(context.Context) (rate, error) {
	cmd := b.ssh.command(b.zeroes())
	var c counter
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &c, &stderr
	if err := cmd.Run(); err != nil {
		return rate{}, fmt.Errorf("%v: %s", err, stderr.Bytes())
	}
	return c.rate(b.c.streamBytes)
}

// streamTCP: the guest pipes the same bytes into `nc -l`, the bench reads
// them over a plain TCP connection across the bridge.
func (b *bench) streamTCP(ctx context.Context) (rate, error) {
	const port = "5001"
	p, err := b.cl.StartProcess(ctx, b.vm, api.ProcessStart{TimeoutSeconds: 300,
		Argv: []string{"/bin/sh", "-c", b.zeroes() + " | nc -N -l " + port}})
	if err != nil {
		return rate{}, err
	}
	var conn net.Conn
	deadline := time.Now().Add(30 * time.Second)
	for {
		d := net.Dialer{Timeout: time.Second}
		if conn, err = d.DialContext(ctx, "tcp", net.JoinHostPort(b.ip, port)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = b.cl.SignalProcess(ctx, b.vm, p.ID, "KILL", true)
			return rate{}, fmt.Errorf("nc in the guest: %w", err)
		}
		time.Sleep(20 * time.Millisecond) // nc not listening yet
	}
	defer conn.Close()
	var c counter
	if _, err := io.Copy(&c, conn); err != nil {
		return rate{}, err
	}
	return c.rate(b.c.streamBytes)
}

// keysAttach: a PTY `cat` in the guest through the attach WebSocket; each
// keystroke is one byte sent, timed until its echo (the guest PTY's)
// comes back.
func (b *bench) keysAttach(ctx context.Context, n int) ([]time.Duration, error) {
	pid, err := b.cl.PTYProcess(ctx, b.vm, "", []string{"cat"}, 80, 24)
	if err != nil {
		return nil, err
	}
	ws, err := b.cl.Attach(ctx, b.vm, pid, nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		_ = b.cl.SignalProcess(ctx, b.vm, pid, "KILL", true)
		_ = ws.CloseNow()
	}()
	key := func(c byte) (time.Duration, error) {
		t0 := time.Now()
		if err := ws.Write(ctx, websocket.MessageBinary, []byte{c}); err != nil {
			return 0, err
		}
		for {
			typ, data, err := ws.Read(ctx)
			if err != nil {
				return 0, err
			}
			if typ == websocket.MessageBinary && bytes.IndexByte(data, c) >= 0 {
				return time.Since(t0), nil
			}
		}
	}
	return keystrokes(n, key)
}

// keystrokes sends n keys through key after a few unmeasured ones, each
// a different letter than the one before so no late echo is taken for
// the next.
func keystrokes(n int, key func(byte) (time.Duration, error)) ([]time.Duration, error) {
	var ds []time.Duration
	for i := -5; i < n; i++ {
		d, err := key(byte('a' + (i+26)%26))
		if err != nil {
			return nil, err
		}
		if i >= 0 {
			ds = append(ds, d)
		}
	}
	return ds, nil
}

// keysSSH: `ssh -tt guest cat` on a host PTY, put in raw mode first so
// the only echo is the guest's.
func (b *bench) keysSSH(ctx context.Context, n int) ([]time.Duration, error) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, err
	}
	defer ptmx.Close()
	if _, err := term.MakeRaw(int(tty.Fd())); err != nil {
		tty.Close()
		return nil, err
	}
	cmd := b.ssh.command("cat", "-tt")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		tty.Close()
		return nil, err
	}
	tty.Close()
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	got := make(chan byte, 4096)
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := ptmx.Read(buf)
			for _, c := range buf[:k] {
				got <- c
			}
			if err != nil {
				close(got)
				return
			}
		}
	}()
	key := func(c byte) (time.Duration, error) {
		t0 := time.Now()
		if _, err := ptmx.Write([]byte{c}); err != nil {
			return 0, err
		}
		for {
			select {
			case g, ok := <-got:
				if !ok {
					return 0, errors.New("ssh ended")
				}
				if g == c {
					return time.Since(t0), nil
				}
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(30 * time.Second):
				return 0, fmt.Errorf("no echo of %q in 30 s", c)
			}
		}
	}
	return keystrokes(n, key)
}

// files uploads and downloads a random file with both methods in turn,
// checking every copy's SHA-256.
func (b *bench) files(ctx context.Context, r *results) error {
	dir, err := os.MkdirTemp("", "workbench-files-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, b.c.fileBytes); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	want := fmt.Sprintf("%x", h.Sum(nil))
	const guestPath = "/home/hearth/workbench.bin"
	check := func(what, path string) error {
		got, err := sha256File(path)
		if err == nil && got != want {
			err = fmt.Errorf("%s: sha256 %s, want %s", what, got, want)
		}
		return err
	}
	guestCheck := func(what string) error {
		res, err := b.cl.Exec(ctx, b.vm, api.ExecRequest{Argv: []string{"sha256sum", guestPath}, TimeoutSeconds: 120})
		if err != nil {
			return err
		}
		if len(res.Stdout) < 64 || res.Stdout[:64] != want {
			return fmt.Errorf("%s: guest sha256 %q, want %s", what, res.Stdout, want)
		}
		return nil
	}
	rm := func() error {
		_, err := b.cl.Exec(ctx, b.vm, api.ExecRequest{Argv: []string{"rm", "-f", guestPath}, TimeoutSeconds: 30})
		return err
	}
	down := filepath.Join(dir, "down")
	for i := 0; i < b.c.files; i++ {
		// hearth
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		t0 := time.Now()
		_, err = b.cl.WriteFile(ctx, b.vm, "", guestPath, "", in, b.c.fileBytes)
		d := time.Since(t0)
		in.Close()
		if err != nil {
			return fmt.Errorf("upload: %w", err)
		}
		if err := guestCheck("files upload"); err != nil {
			return err
		}
		r.upload[mFiles] = append(r.upload[mFiles], rate{b.c.fileBytes, d})
		t0 = time.Now()
		fr, err := b.cl.ReadFile(ctx, b.vm, "", guestPath, 0)
		if err != nil {
			return fmt.Errorf("download: %w", err)
		}
		out, err := os.Create(down)
		if err != nil {
			fr.Close()
			return err
		}
		_, err = io.Copy(out, fr)
		fr.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		d = time.Since(t0)
		if err != nil {
			return fmt.Errorf("download: %w", err)
		}
		if err := check("files download", down); err != nil {
			return err
		}
		r.download[mFiles] = append(r.download[mFiles], rate{b.c.fileBytes, d})
		if err := rm(); err != nil {
			return err
		}

		// scp
		for _, step := range []struct {
			from, to string
			into     map[string][]rate
			check    func() error
		}{
			{src, "guest:" + guestPath, r.upload, func() error { return guestCheck("scp upload") }},
			{"guest:" + guestPath, down, r.download, func() error { return check("scp download", down) }},
		} {
			cmd := b.ssh.scp(step.from, step.to)
			t0 := time.Now()
			out, err := cmd.CombinedOutput()
			d := time.Since(t0)
			if err != nil {
				return fmt.Errorf("%s: %v: %s", cmd, err, out)
			}
			if err := step.check(); err != nil {
				return err
			}
			step.into[mSCP] = append(step.into[mSCP], rate{b.c.fileBytes, d})
		}
		if err := rm(); err != nil {
			return err
		}
		logf("files %d: up %.1f / %.1f MiB/s, down %.1f / %.1f MiB/s (hearth / scp)", i+1,
			r.upload[mFiles][i].mibps(), r.upload[mSCP][i].mibps(), r.download[mFiles][i].mibps(), r.download[mSCP][i].mibps())
	}
	return nil
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}
