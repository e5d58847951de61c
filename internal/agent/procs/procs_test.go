package procs

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/workapi"
)

// TestOutputArrivesAsWritten checks that a follower gets output while
// the process runs, not at its end.
func TestOutputArrivesAsWritten(t *testing.T) {
	h := newHarness(t, Config{})
	t.Run("gated", func(t *testing.T) {
		// b is written only after the follower has seen a and said so.
		p := h.start(workapi.ProcessSpec{Argv: []string{"sh", "-c", "echo a; read x; echo b; echo c >&2"}, Stdin: true})
		s := h.output(p.ID, "offset=0&follow=1")
		s.until("a\n")
		if got := h.get(p.ID); got.State != workapi.StateRunning || got.StdoutBytes != 2 {
			t.Fatalf("after a: %+v", got)
		}
		h.stdin(p.ID, "go\n", false)
		if e := s.end(); exitCode(e) != 0 {
			t.Errorf("exit %+v", e)
		}
		// Each stream in order; the two are read apart, in the order
		// their bytes reach the agent.
		if s.stdout.String() != "a\nb\n" || s.stderr.String() != "c\n" {
			t.Errorf("stdout %q, stderr %q", s.stdout.String(), s.stderr.String())
		}
		got := h.get(p.ID)
		if got.State != workapi.StateExited || got.StdoutBytes != 4 || got.StderrBytes != 2 || got.HistoryEnd() != 6 {
			t.Errorf("at the end: %+v", got)
		}
	})
	t.Run("sleep", func(t *testing.T) {
		p := h.start(workapi.ProcessSpec{Command: "echo a; sleep 1; echo b"})
		s := h.output(p.ID, "follow=1")
		s.until("a\n")
		if s.exit != nil || s.out.String() != "a\n" {
			t.Fatalf("a came with %q, exit %+v", s.out.String(), s.exit)
		}
		s.end()
		if s.out.String() != "a\nb\n" || exitCode(s.exit) != 0 {
			t.Errorf("output %q, exit %+v", s.out.String(), s.exit)
		}
	})
}

func TestStdinThroughCat(t *testing.T) {
	h := newHarness(t, Config{})
	p := h.start(workapi.ProcessSpec{Argv: []string{"cat"}, Stdin: true})
	s := h.output(p.ID, "offset=0&follow=1")
	h.stdin(p.ID, "hello\n", false)
	s.until("hello\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 256<<10/16) // more than a pipe holds
	h.call("POST", "/processes/"+p.ID+"/stdin", big, http.StatusNoContent, nil)
	h.stdin(p.ID, "bye", true)
	if e := s.end(); exitCode(e) != 0 {
		t.Errorf("exit %+v", e)
	}
	if want := "hello\n" + string(big) + "bye"; s.out.String() != want {
		t.Errorf("cat gave %d bytes, want %d", s.out.Len(), len(want))
	}
	if msg := h.callError("POST", "/processes/"+p.ID+"/stdin", []byte("x"), http.StatusConflict); !strings.Contains(msg, "closed") {
		t.Errorf("stdin after eof: %s", msg)
	}

	q := h.start(workapi.ProcessSpec{Argv: []string{"true"}})
	if msg := h.callError("POST", "/processes/"+q.ID+"/stdin", []byte("x"), http.StatusConflict); !strings.Contains(msg, "no stdin") {
		t.Errorf("stdin without one: %s", msg)
	}
}

func TestSignal(t *testing.T) {
	h := newHarness(t, Config{})
	p := h.start(workapi.ProcessSpec{Argv: []string{"sleep", "100"}})
	s := h.output(p.ID, "follow=1")
	h.call("POST", "/processes/"+p.ID+"/signal", workapi.SignalRequest{Signal: "TERM"}, http.StatusNoContent, nil)
	e := s.end()
	if e.Signal != "TERM" || e.Code != nil || e.Reason != "killed on request" {
		t.Errorf("exit %+v", e)
	}
	if e.EndedAt.Before(p.StartedAt) || e.DurationMS < 0 {
		t.Errorf("exit times %+v, started %v", e, p.StartedAt)
	}
	if msg := h.callError("POST", "/processes/"+p.ID+"/signal", workapi.SignalRequest{Signal: "TERM"}, http.StatusConflict); !strings.Contains(msg, "ended") {
		t.Errorf("signal after the end: %s", msg)
	}

	// The group: a shell and its child both get it.
	g := h.start(workapi.ProcessSpec{Command: "sleep 100 & echo started; wait"})
	gs := h.output(g.ID, "follow=1")
	gs.until("started")
	h.call("POST", "/processes/"+g.ID+"/signal", workapi.SignalRequest{Signal: "sigkill", Group: true}, http.StatusNoContent, nil)
	if e := gs.end(); e.Signal != "KILL" {
		t.Errorf("group kill: exit %+v", e)
	}
}

func TestTimeoutKillsTheGroup(t *testing.T) {
	h := newHarness(t, Config{OutputGrace: 10 * time.Second})
	// The background sleep holds the output open: only the group's kill
	// ends the output before the grace.
	p := h.start(workapi.ProcessSpec{Command: "sleep 100 & sleep 100", TimeoutSeconds: 1})
	start := time.Now()
	e := h.output(p.ID, "follow=1").end()
	if e.Signal != "KILL" || e.Reason != "timeout" {
		t.Errorf("exit %+v", e)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("took %v: the group's children were not killed", d)
	}
}

func TestDieWithClient(t *testing.T) {
	h := newHarness(t, Config{})
	p := h.start(workapi.ProcessSpec{Argv: []string{"sleep", "100"}, DieWithClient: true})
	s := h.output(p.ID, "follow=1")
	h.waitFor(p.ID, "followed", func(p workapi.Process) bool { return p.Followers == 1 })
	s.close()
	got := h.waitFor(p.ID, "ended", func(p workapi.Process) bool { return p.Exit != nil })
	if got.Exit.Signal != "KILL" || got.Exit.Reason != "client gone" {
		t.Errorf("exit %+v", got.Exit)
	}
}

func TestPTY(t *testing.T) {
	h := newHarness(t, Config{})
	p := h.start(workapi.ProcessSpec{
		Argv: []string{"sh", "-c", `stty size; echo "term=$TERM"; read x; stty size; tty`},
		PTY:  &workapi.WindowSize{Cols: 80, Rows: 24},
	})
	if p.PTY == nil || *p.PTY != (workapi.WindowSize{Cols: 80, Rows: 24}) {
		t.Errorf("pty %+v", p.PTY)
	}
	s := h.output(p.ID, "offset=0&follow=1")
	s.until("term=xterm-256color")
	if !strings.Contains(s.out.String(), "24 80") {
		t.Fatalf("first size: %q", s.out.String())
	}
	h.call("POST", "/processes/"+p.ID+"/resize", workapi.ResizeRequest{Cols: 132, Rows: 43}, http.StatusNoContent, nil)
	if got := h.get(p.ID); got.PTY == nil || got.PTY.Cols != 132 || got.PTY.Rows != 43 {
		t.Errorf("after resize: %+v", got.PTY)
	}
	h.stdin(p.ID, "\n", false)
	s.until("43 132")
	e := s.end()
	if exitCode(e) != 0 || !strings.Contains(s.out.String(), "/dev/pts/") {
		t.Errorf("exit %+v, output %q", e, s.out.String())
	}
	if msg := h.callError("POST", "/processes/"+p.ID+"/resize", workapi.ResizeRequest{Cols: 10, Rows: 10}, http.StatusConflict); !strings.Contains(msg, "ended") {
		t.Errorf("resize after the end: %s", msg)
	}

	// ^D ends cat's input on a terminal.
	c := h.start(workapi.ProcessSpec{Argv: []string{"cat"}, PTY: &workapi.WindowSize{Cols: 80, Rows: 24}})
	cs := h.output(c.ID, "follow=1")
	h.stdin(c.ID, "abc\n", true)
	if e := cs.end(); exitCode(e) != 0 {
		t.Errorf("cat on a terminal: exit %+v, output %q", e, cs.out.String())
	}
}

// TestReattach checks that a reader from offset 0 gets the whole history
// after the process ended, and from the middle what follows.
func TestReattach(t *testing.T) {
	h := newHarness(t, Config{})
	// Each line is written once the one before has reached the agent,
	// so the order of stdout and stderr is known.
	p := h.start(workapi.ProcessSpec{Command: "echo one; read x; echo two >&2; read x; echo three; exit 3", Stdin: true})
	first := h.output(p.ID, "follow=1")
	first.until("one\n")
	h.stdin(p.ID, "\n", false)
	first.until("two\n")
	h.stdin(p.ID, "\n", true)
	if e := first.end(); exitCode(e) != 3 {
		t.Fatalf("exit %+v", e)
	}
	s := h.output(p.ID, "offset=0")
	var kinds []byte
	for {
		f, err := s.frame()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, f.Kind)
	}
	if s.out.String() != "one\ntwo\nthree\n" || exitCode(s.exit) != 3 || len(s.dropped) != 0 {
		t.Errorf("re-attached: %q, exit %+v, dropped %v", s.out.String(), s.exit, s.dropped)
	}
	if want := []byte{workapi.FrameStdout, workapi.FrameStderr, workapi.FrameStdout, workapi.FrameExit}; !bytes.Equal(kinds, want) {
		t.Errorf("frame kinds %v, want %v", kinds, want)
	}
	mid := h.output(p.ID, "offset=4&follow=1")
	mid.end()
	if mid.out.String() != "two\nthree\n" || mid.stderr.String() != "two\n" {
		t.Errorf("from offset 4: %q", mid.out.String())
	}

	// A running process read without follow: the history so far, no exit.
	r := h.start(workapi.ProcessSpec{Command: "echo so far; read x", Stdin: true})
	f := h.output(r.ID, "follow=1")
	f.until("so far\n")
	now := h.output(r.ID, "offset=0")
	if _, err := now.frame(); err != nil {
		t.Fatal(err)
	}
	if _, err := now.frame(); err != io.EOF || now.out.String() != "so far\n" || now.exit != nil {
		t.Errorf("unfollowed read of a running process: %v, %q, %+v", err, now.out.String(), now.exit)
	}
	h.stdin(r.ID, "\n", true)
	f.end()
}

// TestHistoryWithoutFollowers checks that nobody following holds nothing
// up: the history keeps its last bytes and says where they start.
func TestHistoryWithoutFollowers(t *testing.T) {
	h := newHarness(t, Config{})
	p := h.start(workapi.ProcessSpec{Command: "seq 1 20000", HistoryBytes: MinHistoryBytes})
	got := h.waitFor(p.ID, "ended", func(p workapi.Process) bool { return p.Exit != nil })
	want := seqOutput(20000)
	if got.StdoutBytes != int64(len(want)) || got.HistoryStart <= 0 || got.DroppedBytes != 0 {
		t.Fatalf("%+v", got)
	}
	s := h.output(p.ID, "offset=0")
	s.end()
	if len(s.dropped) != 1 || s.dropped[0] != (workapi.Dropped{From: 0, To: got.HistoryStart}) {
		t.Errorf("dropped %v, want [0, %d)", s.dropped, got.HistoryStart)
	}
	if kept := want[got.HistoryStart:]; s.out.String() != kept || len(kept) > MinHistoryBytes {
		t.Errorf("kept %d bytes, want the last %d", s.out.Len(), len(kept))
	}
}

// TestStalledFollower checks that a follower that stops reading holds the
// process up for StallLimit at most, then is told what it lost, while a
// follower that reads gets every byte.
func TestStalledFollower(t *testing.T) {
	const stall = time.Second
	h := newHarness(t, Config{StallLimit: stall})
	const n = 3000000 // about 20 MiB: more than the stalled stream's buffers
	p := h.start(workapi.ProcessSpec{Command: "read x; seq 1 " + strconv.Itoa(n), Stdin: true, HistoryBytes: 64 << 10})
	reading := h.output(p.ID, "offset=0&follow=1")
	stalled := h.output(p.ID, "offset=0&follow=1")
	h.waitFor(p.ID, "followed twice", func(p workapi.Process) bool { return p.Followers == 2 })
	h.stdin(p.ID, "go\n", true)

	e := reading.end()
	if exitCode(e) != 0 || len(reading.dropped) != 0 {
		t.Fatalf("reading follower: exit %+v, dropped %v", e, reading.dropped)
	}
	want := seqOutput(n)
	if reading.out.String() != want {
		t.Fatalf("reading follower got %d bytes, want %d", reading.out.Len(), len(want))
	}

	stalled.end()
	var lost int64
	for _, d := range stalled.dropped {
		lost += d.To - d.From
	}
	if len(stalled.dropped) == 0 || int64(stalled.out.Len())+lost != int64(len(want)) {
		t.Fatalf("stalled follower: %d bytes and %v dropped, of %d", stalled.out.Len(), stalled.dropped, len(want))
	}
	if got := h.get(p.ID); got.DroppedBytes != lost || got.Followers != 0 {
		t.Errorf("process says %d bytes dropped and %d followers; the stalled follower lost %d", got.DroppedBytes, got.Followers, lost)
	}
	// What it got is the output at the offsets it was told.
	d := stalled.dropped[0]
	if got := stalled.out.String(); got[:d.From] != want[:d.From] || got[d.From:] != want[d.To:] {
		t.Error("stalled follower's bytes are not the output at their offsets")
	}
}

// TestSlowFollowerGetsEverything sends 50 MiB through a follower slower
// than the process and a history much smaller than the output: the
// process is held up, nothing is lost.
func TestSlowFollowerGetsEverything(t *testing.T) {
	h := newHarness(t, Config{StallLimit: 5 * time.Second})
	const n = 6692488 // seq 1 n writes exactly 50 MiB
	p := h.start(workapi.ProcessSpec{Argv: []string{"seq", "1", strconv.Itoa(n)}, HistoryBytes: 64 << 10})
	s := h.output(p.ID, "offset=0&follow=1")
	s.fr = workapi.NewFrameReader(&slowReader{r: s.resp.Body, chunk: 32 << 10, every: time.Millisecond})
	e := s.end()
	want := seqOutput(n)
	if len(want) != 50<<20 {
		t.Fatalf("test output is %d bytes", len(want))
	}
	if exitCode(e) != 0 || len(s.dropped) != 0 || s.out.String() != want {
		t.Fatalf("exit %+v, dropped %v, %d bytes of %d, equal %v", e, s.dropped, s.out.Len(), len(want), s.out.String() == want)
	}
	if got := h.get(p.ID); got.DroppedBytes != 0 || got.StdoutBytes != int64(len(want)) || got.HistoryStart == 0 {
		t.Errorf("%+v", got)
	}
}

// slowReader reads at most chunk bytes per interval.
type slowReader struct {
	r     io.Reader
	chunk int
	every time.Duration
	next  time.Time
}

func (s *slowReader) Read(p []byte) (int, error) {
	if d := time.Until(s.next); d > 0 {
		time.Sleep(d)
	}
	s.next = time.Now().Add(s.every)
	return s.r.Read(p[:min(len(p), s.chunk)])
}

func seqOutput(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte('\n')
	}
	return b.String()
}

func TestUsers(t *testing.T) {
	h := newHarness(t, Config{})
	for _, tc := range []struct {
		user, want string
	}{
		{"nobody", "65534 65534 /\n"},
		{"", "1000 1000 /\n"}, // the default user, in / as its home is missing
		{"root", "0 0 /root\n"},
	} {
		p := h.start(workapi.ProcessSpec{Command: `echo "$(id -u) $(id -g) $(pwd)"`, User: tc.user})
		s := h.output(p.ID, "follow=1")
		s.end()
		if s.out.String() != tc.want {
			t.Errorf("user %q: %q, want %q", tc.user, s.out.String(), tc.want)
		}
	}
	// ?user= names the user too; the process is then that user's.
	var p workapi.Process
	h.call("POST", "/processes?user=nobody", workapi.ProcessSpec{Argv: []string{"id", "-u"}}, http.StatusCreated, &p)
	if p.User != "nobody" {
		t.Errorf("user %q", p.User)
	}
	s := h.output(p.ID, "follow=1&user=nobody")
	s.end()
	if s.out.String() != "65534\n" {
		t.Errorf("id -u: %q", s.out.String())
	}
	if msg := h.callError("GET", "/processes/"+p.ID+"?user=hearth", nil, http.StatusForbidden); !strings.Contains(msg, "runs as nobody") {
		t.Errorf("another user's process: %s", msg)
	}
	var list workapi.ProcessList
	h.call("GET", "/processes?user=nobody", nil, http.StatusOK, &list)
	for _, q := range list.Processes {
		if q.User != "nobody" {
			t.Errorf("nobody's list has %+v", q)
		}
	}
	if len(list.Processes) != 2 {
		t.Errorf("nobody has %d processes, want 2", len(list.Processes))
	}
}

func TestEnvAndCwd(t *testing.T) {
	h := newHarness(t, Config{})
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // open to the user
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := h.start(workapi.ProcessSpec{
		Command: `echo "$HOME|$USER|$LOGNAME|$SHELL|$LANG|$FOO|${TERM-none}|$PWD"`,
		Env:     []string{"FOO=bar", "LANG=C"}, Cwd: dir,
	})
	s := h.output(p.ID, "follow=1")
	s.end()
	want := "/nonexistent-hearth-home|hearth|hearth|/bin/sh|C|bar|none|" + dir + "\n"
	if s.out.String() != want {
		t.Errorf("got %q, want %q", s.out.String(), want)
	}
	if p.Cwd != dir || p.User != "hearth" || len(p.Argv) != 3 || p.Argv[0] != "/bin/sh" || p.Argv[1] != "-lc" {
		t.Errorf("%+v", p)
	}
}

func TestLimits(t *testing.T) {
	h := newHarness(t, Config{MaxRunning: 2, MaxEnded: 2})
	a := h.start(workapi.ProcessSpec{Argv: []string{"sleep", "100"}})
	h.start(workapi.ProcessSpec{Argv: []string{"sleep", "100"}})
	if msg := h.callError("POST", "/processes", workapi.ProcessSpec{Argv: []string{"true"}}, http.StatusTooManyRequests); !strings.Contains(msg, "at most 2") {
		t.Errorf("third: %s", msg)
	}
	as := h.output(a.ID, "follow=1")
	h.call("POST", "/processes/"+a.ID+"/signal", workapi.SignalRequest{Signal: "KILL"}, http.StatusNoContent, nil)
	as.end()
	var ended []string
	for range 3 {
		p := h.start(workapi.ProcessSpec{Argv: []string{"true"}})
		h.output(p.ID, "follow=1").end()
		ended = append(ended, p.ID)
	}
	// Four have ended; the two that ended last are kept.
	var list workapi.ProcessList
	h.call("GET", "/processes", nil, http.StatusOK, &list)
	var ids []string
	for _, p := range list.Processes {
		if p.State == workapi.StateExited {
			ids = append(ids, p.ID)
		}
	}
	if len(list.Processes) != 3 || strings.Join(ids, ",") != strings.Join(ended[1:], ",") {
		t.Errorf("listed %+v, want the running one and %v", list.Processes, ended[1:])
	}
	h.callError("GET", "/processes/"+a.ID, nil, http.StatusNotFound)
}

func TestValidation(t *testing.T) {
	h := newHarness(t, Config{})
	closed := filepath.Join(t.TempDir(), "closed")
	if err := os.Mkdir(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		spec any
		want string
	}{
		{"both", workapi.ProcessSpec{Argv: []string{"true"}, Command: "true"}, "argv and command"},
		{"neither", workapi.ProcessSpec{}, "argv or command"},
		{"empty argv0", workapi.ProcessSpec{Argv: []string{""}}, "argv[0]"},
		{"env", workapi.ProcessSpec{Argv: []string{"true"}, Env: []string{"A=1", "NOVALUE"}}, "env[1]"},
		{"cwd relative", workapi.ProcessSpec{Argv: []string{"true"}, Cwd: "tmp"}, "cwd"},
		{"cwd missing", workapi.ProcessSpec{Argv: []string{"true"}, Cwd: "/nonexistent/dir"}, "cwd /nonexistent/dir: no such directory"},
		{"cwd file", workapi.ProcessSpec{Argv: []string{"true"}, Cwd: file}, "not a directory"},
		{"cwd closed", workapi.ProcessSpec{Argv: []string{"true"}, Cwd: closed}, "not accessible to user hearth"},
		{"history small", workapi.ProcessSpec{Argv: []string{"true"}, HistoryBytes: 100}, "history_bytes"},
		{"history large", workapi.ProcessSpec{Argv: []string{"true"}, HistoryBytes: workapi.MaxHistoryBytes + 1}, "history_bytes"},
		{"timeout", workapi.ProcessSpec{Argv: []string{"true"}, TimeoutSeconds: -1}, "timeout_seconds"},
		{"tag", workapi.ProcessSpec{Argv: []string{"true"}, Tag: strings.Repeat("x", 65)}, "tag"},
		{"tag control", workapi.ProcessSpec{Argv: []string{"true"}, Tag: "a\nb"}, "tag"},
		{"pty", workapi.ProcessSpec{Argv: []string{"true"}, PTY: &workapi.WindowSize{Cols: 0, Rows: 10}}, "pty"},
		{"user", workapi.ProcessSpec{Argv: []string{"true"}, User: "x"}, `no user "x" in this guest`},
		{"program", workapi.ProcessSpec{Argv: []string{"no-such-program"}}, `argv[0] "no-such-program": not found`},
		{"unknown field", map[string]any{"argv": []string{"true"}, "nope": 1}, "unknown field"},
		{"not json", []byte("{"), "request body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if msg := h.callError("POST", "/processes", tc.spec, http.StatusBadRequest); !strings.Contains(msg, tc.want) {
				t.Errorf("error %q, want it to say %q", msg, tc.want)
			}
		})
	}
	// root may enter any directory.
	h.start(workapi.ProcessSpec{Argv: []string{"true"}, Cwd: closed, User: "root"})
	if msg := h.callError("POST", "/processes?user=nobody", workapi.ProcessSpec{Argv: []string{"true"}, User: "root"}, http.StatusBadRequest); !strings.Contains(msg, "user") {
		t.Errorf("two users: %s", msg)
	}

	p := h.start(workapi.ProcessSpec{Argv: []string{"sleep", "100"}})
	base := "/processes/" + p.ID
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
		want         string
	}{
		{"POST", base + "/signal", workapi.SignalRequest{Signal: "SEGV"}, 400, "signal"},
		{"POST", base + "/signal", workapi.SignalRequest{}, 400, "signal"},
		{"POST", base + "/resize", workapi.ResizeRequest{Cols: 80, Rows: 24}, 409, "no terminal"},
		{"POST", base + "/resize", workapi.ResizeRequest{Cols: 80, Rows: 0}, 400, "terminal size"},
		{"GET", base + "/output?offset=-1", nil, 400, "offset"},
		{"GET", base + "/output?offset=5", nil, 400, "past the end"},
		{"GET", base + "/output?follow=yes", nil, 400, "follow"},
		{"POST", base + "/stdin?eof=2", []byte{}, 400, "eof"},
		{"GET", "/processes/p-nope", nil, 404, "no process"},
		{"POST", "/processes/p-nope/signal", workapi.SignalRequest{Signal: "TERM"}, 404, "no process"},
	} {
		if msg := h.callError(tc.method, tc.path, tc.body, tc.status); !strings.Contains(msg, tc.want) {
			t.Errorf("%s %s: %q, want it to say %q", tc.method, tc.path, msg, tc.want)
		}
	}
	h.call("POST", base+"/signal", workapi.SignalRequest{Signal: "KILL"}, http.StatusNoContent, nil)
}

// TestCloseKillsProcesses checks that closing the manager ends what runs.
func TestCloseKillsProcesses(t *testing.T) {
	h := newHarness(t, Config{})
	p := h.start(workapi.ProcessSpec{Command: "sleep 100 & sleep 100"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { h.m.Close(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
	if got := h.get(p.ID); got.Exit == nil || got.Exit.Signal != "KILL" {
		t.Errorf("after Close: %+v", got)
	}
	h.callError("POST", "/processes", workapi.ProcessSpec{Argv: []string{"true"}}, http.StatusConflict)
}
