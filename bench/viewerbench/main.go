// Command viewerbench measures the browser viewer's WebSocket↔VNC bridge:
// hearth's viewer.Bridge (run as hearth runs it, in a process of its own)
// against websockify, with direct TCP to the VNC server as the floor, all in
// the same run and interleaved. A VNC-like server on loopback streams
// framebuffer-like data or echoes small messages; a Go client drives every
// side. It reports throughput, round-trip latency, the bridge's CPU per GB
// and per connection, and its memory per idle viewer, as a markdown
// section for docs/BENCHMARKS.md (./bench/run.sh viewer).
//
// CPU and memory are those of the bridge's whole process tree, read from
// /proc: websockify forks a process per connection.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == serveHearthCmd {
		if err := serveHearth(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "viewerbench "+serveHearthCmd+":", err)
			os.Exit(1)
		}
		return
	}
	var c config
	flag.Int64Var(&c.streamBytes, "bytes", 512<<20, "bytes per throughput run")
	flag.IntVar(&c.runs, "runs", 5, "throughput runs per side (the median is reported)")
	flag.IntVar(&c.trips, "trips", 5000, "measured 64-byte round trips per side")
	flag.IntVar(&c.warmup, "warmup", 500, "unmeasured round trips per side first")
	flag.IntVar(&c.opens, "conns", 200, "sequential connections per side for the cost of opening one")
	flag.IntVar(&c.idle, "idle", 250, "concurrent idle viewers per side for memory")
	flag.StringVar(&c.websockify, "websockify", "websockify", "websockify command")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of hearth's bridge process to this file")
	flag.IntVar(&c.hearthBuffer, "hearth-buffer", 0, "viewer.Options.BufferSize for hearth's bridge, to investigate (0: hearth's default, as in production)")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "viewerbench:", err)
		os.Exit(1)
	}
}

type config struct {
	streamBytes            int64
	runs, trips, warmup    int
	opens, idle            int
	websockify, cpuProfile string
	hearthBuffer           int
}

// rounds is how many slices the latency and connection measurements are cut
// into, taking turns between the sides.
const rounds = 5

// side is one way for the client to reach the VNC server.
type side struct {
	name string
	pid  int                                       // root of the bridge's process tree; 0 for none
	dial func(ctx context.Context) (stream, error) // a connection, before the RFB version
	base int                                       // processes in the tree with no viewer
}

// stream is a client connection as a byte stream.
type stream interface {
	io.Reader
	Write(p []byte) error
	Close() error // orderly: a WebSocket close handshake
	Abort()       // immediate
}

type tcpStream struct{ net.Conn }

func (s tcpStream) Write(p []byte) error { _, err := s.Conn.Write(p); return err }
func (s tcpStream) Abort()               { _ = s.Conn.Close() }

// wsStream reads a WebSocket's binary messages as one byte stream and sends
// each Write as one binary message, as noVNC does.
type wsStream struct {
	ws *websocket.Conn
	r  io.Reader
}

func (s *wsStream) Read(p []byte) (int, error) {
	for {
		if s.r == nil {
			typ, r, err := s.ws.Reader(context.Background())
			if err != nil {
				return 0, err
			}
			if typ != websocket.MessageBinary {
				return 0, fmt.Errorf("got a %v message", typ)
			}
			s.r = r
		}
		n, err := s.r.Read(p)
		if errors.Is(err, io.EOF) {
			s.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (s *wsStream) Write(p []byte) error {
	return s.ws.Write(context.Background(), websocket.MessageBinary, p)
}
func (s *wsStream) Close() error { return s.ws.Close(websocket.StatusNormalClosure, "") }
func (s *wsStream) Abort()       { _ = s.ws.CloseNow() }

func dialTCP(addr string) func(context.Context) (stream, error) {
	return func(ctx context.Context) (stream, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return tcpStream{c}, nil
	}
}

func dialWS(url string) func(context.Context) (stream, error) {
	return func(ctx context.Context) (stream, error) {
		ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"binary"}})
		if err != nil {
			return nil, err
		}
		ws.SetReadLimit(-1) // websockify sends up to 64 KiB per message
		return &wsStream{ws: ws}, nil
	}
}

// open connects through s and reads the RFB version; it returns the time
// that took.
func open(s *side) (stream, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t := time.Now()
	c, err := s.dial(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: dial: %w", s.name, err)
	}
	v := make([]byte, len(rfbVersion))
	if _, err := io.ReadFull(c, v); err != nil || string(v) != rfbVersion {
		c.Abort()
		return nil, 0, fmt.Errorf("%s: RFB version %q: %v", s.name, v, err)
	}
	return c, time.Since(t), nil
}

// settle waits until the bridge's tree is back to its processes without
// viewers (websockify reaps a connection's process when it exits) and the
// last close has been handled.
func (s *side) settle() error {
	if s.pid == 0 {
		return nil
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(tree(s.pid)) > s.base {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d processes still running after the viewers left", s.name, len(tree(s.pid)))
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return nil
}

func (s *side) cpu() (time.Duration, error) {
	if s.pid == 0 {
		return 0, nil
	}
	return treeCPU(s.pid)
}

// result is what one side measured.
type result struct {
	mbps         []float64     // per throughput run, MB/s
	streamCPU    time.Duration // bridge CPU over all throughput runs
	streamed     int64
	rtt          []time.Duration
	openCPU      time.Duration // bridge CPU over all opens
	openLat      []time.Duration
	basePss, pss int64 // KiB, without viewers and with c.idle idle ones
}

func run(c config) error {
	if err := raiseNofile(uint64(4*c.idle + 256)); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "viewerbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	vncLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer vncLn.Close()
	go serveVNC(vncLn)
	vncAddr := vncLn.Addr().String()

	hearth, stopHearth, err := startHearth(vncAddr, c.cpuProfile, c.hearthBuffer)
	if err != nil {
		return err
	}
	defer stopHearth()
	wsfy, stopWsfy, err := startWebsockify(c.websockify, vncAddr, filepath.Join(dir, "websockify.log"))
	if err != nil {
		return err
	}
	defer stopWsfy()
	sides := []*side{{name: "direct TCP", dial: dialTCP(vncAddr)}, hearth, wsfy}
	res := make([]result, len(sides))
	for _, s := range sides {
		if s.pid != 0 {
			s.base = len(tree(s.pid))
		}
		for range 3 { // warm up: code paths, the client's pools
			st, _, err := open(s)
			if err != nil {
				return err
			}
			_ = st.Close()
		}
		if err := s.settle(); err != nil {
			return err
		}
	}

	logf("memory: %d idle viewers per bridge", c.idle)
	for i, s := range sides {
		if s.pid == 0 {
			continue
		}
		if res[i].basePss, res[i].pss, err = idleMemory(s, c.idle); err != nil {
			return err
		}
	}
	logf("opening: %d connections per side", c.opens)
	for r := range rounds {
		for _, i := range turns(len(sides), r) {
			s := sides[i]
			cpu, lat, err := openCost(s, share(c.opens, r))
			if err != nil {
				return err
			}
			res[i].openCPU += cpu
			res[i].openLat = append(res[i].openLat, lat...)
		}
	}
	logf("latency: %d round trips of %d bytes per side", c.trips, echoSize)
	for r := range rounds {
		for _, i := range turns(len(sides), r) {
			s := sides[i]
			rtt, err := roundTrips(s, share(c.warmup, r), share(c.trips, r))
			if err != nil {
				return err
			}
			res[i].rtt = append(res[i].rtt, rtt...)
		}
	}
	logf("throughput: %d runs of %d MiB per side", c.runs, c.streamBytes>>20)
	for r := range c.runs {
		for _, i := range turns(len(sides), r) {
			s := sides[i]
			mbps, cpu, err := throughput(s, c.streamBytes)
			if err != nil {
				return err
			}
			res[i].mbps = append(res[i].mbps, mbps)
			res[i].streamCPU += cpu
			res[i].streamed += c.streamBytes
		}
	}
	report(c, sides, res, versions(c.websockify))
	return nil
}

// turns is the order the n sides take in round r: each round starts with
// the next side, so none always runs first.
func turns(n, r int) []int {
	o := make([]int, n)
	for i := range o {
		o[i] = (r + i) % n
	}
	return o
}

// share is round r's part of n split into rounds.
func share(n, r int) int {
	return n/rounds + btoi(r < n%rounds)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "viewerbench: "+format+"\n", args...)
}

// raiseNofile makes room for want descriptors; children inherit the limit.
func raiseNofile(want uint64) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	l.Cur = max(l.Cur, l.Max, want)
	l.Max = max(l.Max, l.Cur)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", l.Cur, err)
	}
	return nil
}

// startHearth re-executes this binary as hearth's bridge process.
func startHearth(vncAddr, cpuProfile string, bufSize int) (*side, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	args := []string{serveHearthCmd, "-vnc", vncAddr, "-buffer", fmt.Sprint(bufSize)}
	if cpuProfile != "" {
		args = append(args, "-cpuprofile", cpuProfile)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		stop()
		return nil, nil, fmt.Errorf("hearth bridge did not start: %q, %v", line, err)
	}
	return &side{name: "hearth", pid: cmd.Process.Pid, dial: dialWS("ws://" + addr + "/")}, stop, nil
}

// startWebsockify starts websockify in its default mode (a process forked
// per connection, no heartbeat) and waits until it answers.
func startWebsockify(bin, vncAddr, logFile string) (*side, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	log, err := os.Create(logFile)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, addr, vncAddr)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, nil, fmt.Errorf("start websockify: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		log.Close()
	}
	s := &side{name: "websockify", pid: cmd.Process.Pid, dial: dialWS("ws://" + addr + "/")}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logFile)
			stop()
			return nil, nil, fmt.Errorf("websockify never listened on %s: %v\n%s", addr, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s, stop, nil
}

// throughput streams n bytes of framebuffer-like data through s and returns
// MB/s and the bridge CPU it took.
func throughput(s *side, n int64) (float64, time.Duration, error) {
	c, _, err := open(s)
	if err != nil {
		return 0, 0, err
	}
	cpu0, err := s.cpu()
	if err != nil {
		c.Abort()
		return 0, 0, err
	}
	t := time.Now()
	if err := c.Write(command('S', uint64(n))); err != nil {
		c.Abort()
		return 0, 0, err
	}
	got, err := io.CopyBuffer(io.Discard, io.LimitReader(c, n), make([]byte, 256<<10))
	d := time.Since(t)
	if err == nil && got != n {
		err = fmt.Errorf("stream ended after %d of %d bytes", got, n)
	}
	if err != nil {
		c.Abort()
		return 0, 0, fmt.Errorf("%s: %w", s.name, err)
	}
	_ = c.Close()
	if err := s.settle(); err != nil {
		return 0, 0, err
	}
	cpu1, err := s.cpu()
	return float64(n) / 1e6 / d.Seconds(), cpu1 - cpu0, err
}

// roundTrips echoes 64-byte messages through s, one at a time, and returns
// the round-trip times after warmup.
func roundTrips(s *side, warmup, n int) ([]time.Duration, error) {
	c, _, err := open(s)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close(); _ = s.settle() }()
	if err := c.Write(command('E', 0)); err != nil {
		return nil, err
	}
	msg, back := make([]byte, echoSize), make([]byte, echoSize)
	for i := range msg {
		msg[i] = byte(i)
	}
	rtt := make([]time.Duration, 0, n)
	for i := range warmup + n {
		t := time.Now()
		if err := c.Write(msg); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		if i >= warmup {
			rtt = append(rtt, time.Since(t))
		}
	}
	return rtt, nil
}

// openCost opens and closes n connections through s one after the other,
// each reading the RFB version, and returns the bridge CPU they took and the
// time each took to see the RFB version.
func openCost(s *side, n int) (time.Duration, []time.Duration, error) {
	cpu0, err := s.cpu()
	if err != nil {
		return 0, nil, err
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		c, d, err := open(s)
		if err != nil {
			return 0, nil, err
		}
		lat = append(lat, d)
		_ = c.Close()
	}
	if err := s.settle(); err != nil {
		return 0, nil, err
	}
	cpu1, err := s.cpu()
	return cpu1 - cpu0, lat, err
}

// idleMemory returns the Pss of s's process tree without viewers and with
// n idle ones (connected, RFB version read, each answering pings as a
// browser does), in KiB.
func idleMemory(s *side, n int) (base, with int64, err error) {
	if base, err = treePss(s.pid); err != nil {
		return 0, 0, err
	}
	conns := make([]stream, 0, n)
	defer func() {
		for _, c := range conns {
			c.Abort()
		}
		if serr := s.settle(); err == nil {
			err = serr
		}
	}()
	for range n {
		c, _, err := open(s)
		if err != nil {
			return 0, 0, err
		}
		conns = append(conns, c)
		go func() { _, _ = io.Copy(io.Discard, c) }()
	}
	with, err = settledPss(s.pid)
	return base, with, err
}

// settledPss waits until the tree's Pss stops moving (two samples half a
// second apart within 0.5 %, at least two seconds in, at most 30 s) and
// returns it.
func settledPss(pid int) (int64, error) {
	start := time.Now()
	prev, err := treePss(pid)
	if err != nil {
		return 0, err
	}
	for {
		time.Sleep(500 * time.Millisecond)
		cur, err := treePss(pid)
		if err != nil {
			return 0, err
		}
		d := cur - prev
		if time.Since(start) >= 2*time.Second && (d < 0 && -d*200 <= cur || d >= 0 && d*200 <= cur) ||
			time.Since(start) > 30*time.Second {
			return cur, nil
		}
		prev = cur
	}
}

// versions describes what was measured.
func versions(websockify string) string {
	ws := "websockify"
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "websockify").Output(); err == nil && len(out) > 0 {
		ws += " " + strings.SplitN(string(out), "+", 2)[0] // upstream version, without the packaging suffix
	}
	if out, err := exec.Command("python3", "--version").Output(); err == nil {
		ws += " (" + strings.TrimSpace(string(out)) + ")"
	}
	lib := "github.com/coder/websocket"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == lib {
				lib += " " + d.Version
			}
		}
	}
	return fmt.Sprintf("hearth's viewer.Bridge (%s, %s) against %s", lib, runtime.Version(), ws)
}
