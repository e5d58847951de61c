package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/httplimit"
)

// rawSSE is one server-sent event as sent: its id (-1: none), name and
// data.
type rawSSE struct {
	ID    int64
	Event string
	Data  json.RawMessage
}

// readRawSSE reads events until the stream ends or stop accepts one.
func readRawSSE(t *testing.T, body io.Reader, stop func(rawSSE) bool) []rawSSE {
	t.Helper()
	var out []rawSSE
	cur := rawSSE{ID: -1}
	sc := bufio.NewScanner(body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id, err := strconv.ParseInt(strings.TrimPrefix(line, "id: "), 10, 64)
			if err != nil {
				t.Fatalf("id line %q", line)
			}
			cur.ID = id
		case strings.HasPrefix(line, "event: "):
			cur.Event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			cur.Data = json.RawMessage(strings.TrimPrefix(line, "data: "))
		case line == "" && cur.Event != "":
			out = append(out, cur)
			if stop != nil && stop(cur) {
				return out
			}
			cur = rawSSE{ID: -1}
		}
	}
	return out
}

// output is a process's output as its stream told it.
type output struct {
	events  []rawSSE
	stdout  string
	stderr  string
	dropped []v1.ProcessOutputDropped
	exit    *v1.ProcessExit
}

// readOutput reads a process's output stream to its end, checking that
// every event's id is the offset just past it.
func readOutput(t *testing.T, body io.Reader) output {
	t.Helper()
	var o output
	o.events = readRawSSE(t, body, nil)
	last := int64(-1)
	for _, e := range o.events {
		switch e.Event {
		case "stdout", "stderr":
			var d v1.ProcessOutput
			if err := json.Unmarshal(e.Data, &d); err != nil {
				t.Fatal(err)
			}
			if e.ID != d.Offset+int64(len(d.Data)) {
				t.Fatalf("event %s: id %d, but its %d bytes start at %d", e.Event, e.ID, len(d.Data), d.Offset)
			}
			if e.Event == "stdout" {
				o.stdout += string(d.Data)
			} else {
				o.stderr += string(d.Data)
			}
		case "dropped":
			var d v1.ProcessOutputDropped
			if err := json.Unmarshal(e.Data, &d); err != nil {
				t.Fatal(err)
			}
			if e.ID != d.To {
				t.Fatalf("dropped %+v with id %d", d, e.ID)
			}
			o.dropped = append(o.dropped, d)
		case "exit":
			o.exit = new(v1.ProcessExit)
			if err := json.Unmarshal(e.Data, o.exit); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("unknown output event %+v", e)
		}
		if e.ID < last {
			t.Fatalf("event ids go back: %d after %d", e.ID, last)
		}
		last = e.ID
	}
	if o.exit == nil {
		t.Fatalf("the output stream ended without an exit event: %+v", o.events)
	}
	return o
}

// startProcess starts a process in vm id as alice.
func (f *fixture) startProcess(id, body string) v1.Process {
	f.t.Helper()
	a := f.do("POST", "/v1/vms/"+id+"/processes", f.alice, body)
	if a.status != http.StatusCreated {
		f.t.Fatalf("start process %s: %d %s", body, a.status, a.body)
	}
	var p v1.Process
	a.json(f.t, &p)
	return p
}

// output follows a process's output to its end from lastID ("": none)
// and query (e.g. "?offset=3").
func (f *fixture) output(id, pid, query, lastID string) output {
	f.t.Helper()
	resp := f.stream(f.t.Context(), f.srv.URL, "/v1/vms/"+id+"/processes/"+pid+"/output"+query, f.alice, lastID)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		f.t.Fatalf("output: %d %s", resp.StatusCode, b)
	}
	return readOutput(f.t, resp.Body)
}

// A process's output streams as it comes, each event's id the offset
// past it; a stream resumes from Last-Event-ID (or ?offset=, which wins)
// with nothing missed or repeated; a reader behind the history is told
// what it lost.
func TestProcessOutputStreamsAndResumes(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	p := f.startProcess(id, `{"command":"echo one; echo two >&2; echo three; exit 3","tag":"t1"}`)
	if p.State != v1.ProcessStateRunning && p.State != v1.ProcessStateExited || p.User != "hearth" || p.Tag != "t1" || p.Cwd != "/home/hearth" {
		t.Fatalf("started %+v", p)
	}
	all := f.output(id, p.ID, "", "")
	if all.stdout != "one\nthree\n" || all.stderr != "two\n" || all.exit.Code == nil || *all.exit.Code != 3 {
		t.Fatalf("output %+v exit %+v", all, all.exit)
	}
	// From the id of the first event: the rest, exactly (stdout and
	// stderr in the order they arrived).
	first := all.events[0].ID
	rest := f.output(id, p.ID, "", strconv.FormatInt(first, 10))
	if len(rest.events) != len(all.events)-1 {
		t.Fatalf("resumed after %d: %+v, all: %+v", first, rest.events, all.events)
	}
	for i, e := range rest.events {
		if w := all.events[i+1]; e.ID != w.ID || e.Event != w.Event || string(e.Data) != string(w.Data) && e.Event != "exit" {
			t.Fatalf("resumed event %d: %+v, want %+v", i, e, w)
		}
	}
	// ?offset= wins over Last-Event-ID; the end is just the exit.
	end := all.events[len(all.events)-1].ID
	tail := f.output(id, p.ID, "?offset="+strconv.FormatInt(end, 10), "0")
	if len(tail.events) != 1 || tail.exit == nil || tail.events[0].ID != end {
		t.Fatalf("from the end: %+v", tail.events)
	}

	// A history of 16 bytes keeps the last 16 of 100: a stream from 0
	// first says which it cannot send.
	q := f.startProcess(id, `{"argv":["sh","-c","printf '%0100d' 0"],"history_bytes":16}`)
	waitExited(t, f, id, q.ID)
	lost := f.output(id, q.ID, "", "")
	if len(lost.dropped) != 1 || lost.dropped[0] != (v1.ProcessOutputDropped{From: 0, To: 84}) || lost.stdout != strings.Repeat("0", 16) {
		t.Fatalf("behind the history: %+v", lost)
	}

	// The process as listed and as got.
	var l v1.ProcessList
	if a := f.do("GET", "/v1/vms/"+id+"/processes", f.alice, ""); a.status != 200 {
		t.Fatalf("list: %d %s", a.status, a.body)
	} else {
		a.json(t, &l)
	}
	if len(l.Processes) != 2 || l.Processes[0].ID != p.ID {
		t.Fatalf("list %+v", l)
	}
	got := waitExited(t, f, id, p.ID)
	if got.StdoutBytes != 10 || got.StderrBytes != 4 || got.Exit.Code == nil || *got.Exit.Code != 3 {
		t.Fatalf("got %+v", got)
	}
}

// waitExited polls a process until it has exited.
func waitExited(t *testing.T, f *fixture, id, pid string) v1.Process {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a := f.do("GET", "/v1/vms/"+id+"/processes/"+pid, f.alice, "")
		if a.status != 200 {
			t.Fatalf("get process: %d %s", a.status, a.body)
		}
		var p v1.Process
		a.json(t, &p)
		if p.State == v1.ProcessStateExited {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s still running: %+v", pid, p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stdin streams in, signals and sizes reach the process, and die_with_client
// means the last output stream closing ends it.
func TestProcessStdinSignalResizeAndDieWithClient(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	cat := f.startProcess(id, `{"argv":["cat"],"stdin":true}`)
	req, _ := http.NewRequest("POST", f.srv.URL+"/v1/vms/"+id+"/processes/"+cat.ID+"/stdin?eof=true", strings.NewReader("to cat\n"))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("stdin: %d", resp.StatusCode)
	}
	if o := f.output(id, cat.ID, "", ""); o.stdout != "to cat\n" || *o.exit.Code != 0 {
		t.Fatalf("cat: %+v", o)
	}

	sleeper := f.startProcess(id, `{"argv":["sleep","60"]}`)
	if a := f.do("POST", "/v1/vms/"+id+"/processes/"+sleeper.ID+"/signal", f.alice, `{"signal":"TERM","group":true}`); a.status != http.StatusNoContent {
		t.Fatalf("signal: %d %s", a.status, a.body)
	}
	if o := f.output(id, sleeper.ID, "", ""); o.exit.Signal != "TERM" || o.exit.Code != nil {
		t.Fatalf("signalled: %+v", o.exit)
	}
	// It has ended: another signal is the agent's 409.
	if a := f.do("POST", "/v1/vms/"+id+"/processes/"+sleeper.ID+"/signal", f.alice, `{"signal":"KILL"}`); a.status != http.StatusConflict {
		t.Fatalf("signal an ended process: %d %s", a.status, a.body)
	}

	term := f.startProcess(id, `{"argv":["sh","-c","read x; stty size"],"pty":{"cols":80,"rows":24}}`)
	if term.Pty != (v1.WindowSize{Cols: 80, Rows: 24}) {
		t.Fatalf("pty process %+v", term)
	}
	if a := f.do("POST", "/v1/vms/"+id+"/processes/"+term.ID+"/resize", f.alice, `{"cols":100,"rows":40}`); a.status != http.StatusNoContent {
		t.Fatalf("resize: %d %s", a.status, a.body)
	}
	a := f.request("POST", f.srv.URL, "/v1/vms/"+id+"/processes/"+term.ID+"/stdin", http.Header{"Authorization": {"Bearer " + f.alice}}, "go\n")
	if a.status != http.StatusNoContent {
		t.Fatalf("pty stdin: %d %s", a.status, a.body)
	}
	if o := f.output(id, term.ID, "", ""); !strings.Contains(o.stdout, "40 100") {
		t.Fatalf("pty output %q", o.stdout)
	}

	// die_with_client: the process lives until its one follower leaves.
	dwc := f.startProcess(id, `{"argv":["sleep","60"],"die_with_client":true}`)
	ctx, cancel := context.WithCancel(t.Context())
	resp = f.stream(ctx, f.srv.URL, "/v1/vms/"+id+"/processes/"+dwc.ID+"/output", f.alice, "")
	if resp.StatusCode != 200 {
		t.Fatalf("follow: %d", resp.StatusCode)
	}
	cancel()
	resp.Body.Close()
	if p := waitExited(t, f, id, dwc.ID); p.Exit.Reason != "client gone" || p.Exit.Signal != "KILL" {
		t.Fatalf("died with its client: %+v", p.Exit)
	}
}

// Every new body and parameter the document describes is checked before
// the guest is asked, each refusal a 400 naming the field.
func TestWorkBadInputIsA400NamingTheField(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	p := f.startProcess(id, `{"argv":["true"]}`)
	vmp, pp := "/v1/vms/"+id, "/v1/vms/"+id+"/processes/"+p.ID
	for _, c := range []struct {
		method, path, body, want string
	}{
		{"POST", vmp + "/processes", `{}`, "give argv or command"},
		{"POST", vmp + "/processes", `{"argv":["true"],"command":"true"}`, "give argv or command"},
		{"POST", vmp + "/processes", `{"argv":[]}`, `field "argv"`},
		{"POST", vmp + "/processes", `{"argv":["true"],"bogus":1}`, `unknown field "bogus"`},
		{"POST", vmp + "/processes", `{"argv":["true"],"user":"Bad User"}`, `field "user"`},
		{"POST", vmp + "/processes", `{"argv":["true"],"pty":{"cols":0,"rows":24}}`, `field "pty.cols" must be between 1 and 1000`},
		{"POST", vmp + "/processes", `{"argv":["true"],"history_bytes":16777217}`, `field "history_bytes" must be between 0 and 16777216`},
		{"POST", vmp + "/processes", `{"argv":["true"],"timeout_seconds":-1}`, `field "timeout_seconds"`},
		{"POST", vmp + "/processes", `{"argv":["true"],"tag":"` + strings.Repeat("x", 65) + `"}`, `field "tag"`},
		{"POST", vmp + "/processes", `{"argv":["true"],"stdin":"yes"}`, `field "stdin" must be a boolean`},
		{"POST", pp + "/signal", `{}`, `field "signal" is required`},
		{"POST", pp + "/signal", `{"signal":"BOOM"}`, `field "signal" must be one of`},
		{"POST", pp + "/resize", `{"cols":80,"rows":1001}`, `field "rows" must be between 1 and 1000`},
		{"POST", pp + "/resize", `{"cols":80}`, `field "rows" is required`},
		{"GET", pp + "/output?offset=-1", ``, `query parameter "offset" must be at least 0`},
		{"POST", pp + "/stdin?eof=maybe", ``, `query parameter "eof"`},
		{"GET", vmp + "/files/content", ``, `query parameter "path": value is required`},
		{"GET", vmp + "/files/content?path=/x&user=Root", ``, `query parameter "user"`},
		{"PUT", vmp + "/files/content?path=/x&mode=999", `x`, `query parameter "mode"`},
		{"GET", vmp + "/files/stat?path=", ``, `query parameter "path"`},
		{"GET", vmp + "/files", ``, `query parameter "path": value is required`},
		{"DELETE", vmp + "/files?path=/x&recursive=2", ``, `query parameter "recursive"`},
		{"POST", vmp + "/files/mkdir", `{"parents":true}`, `field "path" is required`},
		{"POST", vmp + "/files/mkdir", `{"path":"/d","mode":"rwx"}`, `field "mode"`},
		{"POST", vmp + "/files/rename", `{"from":"/a"}`, `field "to" is required`},
		{"GET", vmp + "/files/watch?path=/tmp&recursive=yes", ``, `query parameter "recursive"`},
		{"POST", vmp + "/exec", `{"argv":["true"],"user":"no such"}`, `field "user"`},
	} {
		t.Run(c.method+" "+strings.TrimPrefix(c.path, vmp)+" "+c.body, func(t *testing.T) {
			hdr := http.Header{"Authorization": {"Bearer " + f.alice}}
			if strings.HasPrefix(c.body, "{") {
				hdr.Set("Content-Type", "application/json")
			}
			a := f.request(c.method, f.srv.URL, c.path, hdr, c.body)
			if a.status != http.StatusBadRequest || !strings.Contains(a.errMessage(), c.want) {
				t.Fatalf("%d %s; want 400 saying %q", a.status, a.body, c.want)
			}
		})
	}
	// Last-Event-ID is no query parameter, but is checked as strictly.
	resp := f.stream(t.Context(), f.srv.URL, pp+"/output", f.alice, "x")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "Last-Event-ID") {
		t.Fatalf("bad Last-Event-ID: %d %s", resp.StatusCode, b)
	}
}

// Another user's VM is a 404 on every route of the work API, as it is
// everywhere, before anything reaches its guest.
func TestWorkRoutesHideOtherUsersVMs(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	p := f.startProcess(id, `{"argv":["sleep","60"]}`)
	vmp, pp := "/v1/vms/"+id, "/v1/vms/"+id+"/processes/"+p.ID
	for _, c := range []struct{ method, path, body string }{
		{"POST", vmp + "/processes", `{"argv":["true"]}`},
		{"GET", vmp + "/processes", ``},
		{"GET", pp, ``},
		{"GET", pp + "/output", ``},
		{"POST", pp + "/stdin", `x`},
		{"POST", pp + "/signal", `{"signal":"KILL"}`},
		{"POST", pp + "/resize", `{"cols":1,"rows":1}`},
		{"GET", vmp + "/files/content?path=/etc/hostname", ``},
		{"PUT", vmp + "/files/content?path=/tmp/x", `x`},
		{"GET", vmp + "/files/stat?path=/tmp", ``},
		{"GET", vmp + "/files?path=/tmp", ``},
		{"DELETE", vmp + "/files?path=/tmp", ``},
		{"POST", vmp + "/files/mkdir", `{"path":"/tmp/d"}`},
		{"POST", vmp + "/files/rename", `{"from":"/tmp","to":"/tmp2"}`},
		{"GET", vmp + "/files/watch?path=/tmp", ``},
		{"POST", vmp + "/exec", `{"argv":["true"]}`},
	} {
		hdr := http.Header{"Authorization": {"Bearer " + f.bob}}
		if strings.HasPrefix(c.body, "{") {
			hdr.Set("Content-Type", "application/json")
		}
		if a := f.request(c.method, f.srv.URL, c.path, hdr, c.body); a.status != http.StatusNotFound || a.errCode() != "not_found" {
			t.Errorf("bob %s %s: %d %s", c.method, c.path, a.status, a.body)
		}
	}
	// Nothing of bob's reached the guest: alice's process still runs.
	if got := f.do("GET", pp, f.alice, ""); got.status != 200 || !strings.Contains(string(got.body), `"running"`) {
		t.Fatalf("alice's process after bob: %d %s", got.status, got.body)
	}
}

// The guest agent's answers map to the API's: its 400, 403, 404, 409 and
// 429 are the client's in the guest's words; a VM without a data channel
// is a 409 that says to restart it; an agent that cannot be reached is a
// 503 with Retry-After.
func TestWorkErrorsMapToTheAPIs(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	vmp := "/v1/vms/" + id
	check := func(a answer, status int, code, says string) {
		t.Helper()
		if a.status != status || a.errCode() != code || !strings.Contains(a.errMessage(), says) {
			t.Fatalf("%d %s; want %d %s saying %q", a.status, a.body, status, code, says)
		}
	}
	check(f.do("POST", vmp+"/processes", f.alice, `{"argv":["true"],"user":"nobody"}`), 400, "invalid_argument", `no user "nobody"`)
	check(f.do("GET", vmp+"/processes/p999", f.alice, ""), 404, "not_found", "process p999")
	check(f.do("GET", vmp+"/files/stat?path=/nowhere", f.alice, ""), 404, "not_found", "file /nowhere")
	check(f.request("PUT", f.srv.URL, vmp+"/files/content?path=/etc/passwd", http.Header{"Authorization": {"Bearer " + f.alice}}, "x"),
		403, "forbidden", "permission denied")
	p := f.startProcess(id, `{"argv":["true"]}`)
	check(f.do("POST", vmp+"/processes/"+p.ID+"/resize", f.alice, `{"cols":80,"rows":24}`), 409, "conflict", "no terminal")
	var started []string
	for range fakeMaxRunning {
		started = append(started, f.startProcess(id, `{"argv":["sleep","60"]}`).ID)
	}
	a := f.do("POST", vmp+"/processes", f.alice, `{"argv":["true"]}`)
	check(a, 429, "rate_limited", "processes are running")
	if a.header.Get("Retry-After") == "" {
		t.Fatal("429 without Retry-After")
	}
	for _, pid := range started {
		f.do("POST", vmp+"/processes/"+pid+"/signal", f.alice, `{"signal":"KILL"}`)
	}

	f.work.cut()
	a = f.do("GET", vmp+"/processes", f.alice, "")
	check(a, 503, "unavailable", "cannot be reached")
	if a.header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
}

// A VM without a data channel (started by an older hearth) answers the
// work API's routes with a 409 that says to restart it, and still runs
// exec over its control channel, as root only.
func TestVMWithoutDataChannel(t *testing.T) {
	f := newFixture(t, func(o *fixtureOptions) { o.noData = true })
	id := f.readyVM("minimal")
	a := f.do("GET", "/v1/vms/"+id+"/processes", f.alice, "")
	if a.status != http.StatusConflict || !strings.Contains(a.errMessage(), "restart it") {
		t.Fatalf("processes without a data channel: %d %s", a.status, a.body)
	}
	a = f.do("POST", "/v1/vms/"+id+"/exec", f.alice, `{"argv":["echo","old","path"]}`)
	var res v1.ExecResult
	if a.status != 200 {
		t.Fatalf("exec without a data channel: %d %s", a.status, a.body)
	}
	a.json(t, &res)
	if res.Stdout != "old path\n" {
		t.Fatalf("exec without a data channel: %+v", res)
	}
	if a := f.do("POST", "/v1/vms/"+id+"/exec", f.alice, `{"argv":["true"],"user":"hearth"}`); a.status != http.StatusConflict {
		t.Fatalf("exec as hearth without a data channel: %d %s", a.status, a.body)
	}
}

// Exec runs as a process: as hearth unless it asks for root, with its
// stdin, its exit code, its timeout; and its command is killed when the
// client goes away.
func TestExecRunsAsAProcess(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	exec := func(body string) v1.ExecResult {
		t.Helper()
		a := f.do("POST", "/v1/vms/"+id+"/exec", f.alice, body)
		if a.status != 200 {
			t.Fatalf("exec %s: %d %s", body, a.status, a.body)
		}
		var res v1.ExecResult
		a.json(t, &res)
		return res
	}
	if r := exec(`{"argv":["sh","-c","echo $USER; cat; echo err >&2; exit 7"],"stdin":"in\n"}`); r.Stdout != "hearth\nin\n" || r.Stderr != "err\n" || r.ExitCode != 7 {
		t.Fatalf("exec as the default user: %+v", r)
	}
	if r := exec(`{"argv":["sh","-c","echo $USER"],"user":"root"}`); r.Stdout != "root\n" {
		t.Fatalf("exec as root: %+v", r)
	}
	if r := exec(`{"argv":["sleep","5"],"timeout_seconds":1}`); !r.TimedOut || r.ExitCode != -1 {
		t.Fatalf("exec past its timeout: %+v", r)
	}
	big := exec(`{"argv":["sh","-c","head -c 300000 /dev/zero"]}`)
	if len(big.Stdout) != 256<<10 || !big.StdoutTruncated {
		t.Fatalf("exec's output capped: %d bytes, truncated %v", len(big.Stdout), big.StdoutTruncated)
	}

	// The client leaves while the command runs: it is killed.
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "POST", f.srv.URL+"/v1/vms/"+id+"/exec", strings.NewReader(`{"argv":["sleep","60"],"timeout_seconds":600}`))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	sleeper := awaitProcess(t, f, id, "sleep")
	cancel()
	<-done
	if p := waitExited(t, f, id, sleeper.ID); p.Exit.Signal != "KILL" {
		t.Fatalf("exec's command after its client left: %+v", p.Exit)
	}
}

// awaitProcess waits until vm id runs a process whose argv[0] is name.
func awaitProcess(t *testing.T, f *fixture, id, name string) v1.Process {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var l v1.ProcessList
		f.do("GET", "/v1/vms/"+id+"/processes", f.alice, "").json(t, &l)
		for _, p := range l.Processes {
			if p.Argv[0] == name && p.State == v1.ProcessStateRunning {
				return p
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s process in vm %s", name, id)
	return v1.Process{}
}

// Files go both ways streamed, of any size (no JSON body limit), with
// their mode; a download resumes with Range; directories list, make,
// move and go; a watch sees changes.
func TestFilesUpDownAndAround(t *testing.T) {
	f := newFixture(t)
	id := f.readyVM("minimal")
	vmp := "/v1/vms/" + id
	auth := http.Header{"Authorization": {"Bearer " + f.alice}}

	watch := f.stream(t.Context(), f.srv.URL, vmp+"/files/watch?path=/home/hearth&recursive=true", f.alice, "")
	defer watch.Body.Close()
	if watch.StatusCode != 200 {
		t.Fatalf("watch: %d", watch.StatusCode)
	}

	content := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB, over the JSON body limit
	a := f.request("PUT", f.srv.URL, vmp+"/files/content?path=/home/hearth/big&mode=0600", auth, string(content))
	if a.status != 200 {
		t.Fatalf("upload: %d %s", a.status, a.body)
	}
	var fi v1.FileInfo
	a.json(t, &fi)
	if fi.Size != int64(len(content)) || fi.Mode != "0600" || fi.Type != v1.FileInfoTypeFile {
		t.Fatalf("uploaded %+v", fi)
	}
	evs := readRawSSE(t, watch.Body, func(rawSSE) bool { return true })
	if len(evs) != 1 || evs[0].Event != "create" || evs[0].ID != -1 || !strings.Contains(string(evs[0].Data), `"/home/hearth/big"`) {
		t.Fatalf("watch saw %+v", evs)
	}

	a = f.request("GET", f.srv.URL, vmp+"/files/content?path=/home/hearth/big", auth, "")
	if a.status != 200 || !bytes.Equal(a.body, content) || a.header.Get("Content-Length") != strconv.Itoa(len(content)) ||
		a.header.Get("X-Hearth-Mode") != "0600" || a.header.Get("X-Hearth-Uid") != "1000" {
		t.Fatalf("download: %d, %d bytes, headers %v", a.status, len(a.body), a.header)
	}
	rh := auth.Clone()
	rh.Set("Range", "bytes=1000-")
	a = f.request("GET", f.srv.URL, vmp+"/files/content?path=/home/hearth/big", rh, "")
	if a.status != http.StatusPartialContent || !bytes.Equal(a.body, content[1000:]) ||
		a.header.Get("Content-Range") != "bytes 1000-"+strconv.Itoa(len(content)-1)+"/"+strconv.Itoa(len(content)) {
		t.Fatalf("resumed download: %d, %d bytes, headers %v", a.status, len(a.body), a.header)
	}
	rh.Set("Range", "bytes="+strconv.Itoa(len(content))+"-")
	if a = f.request("GET", f.srv.URL, vmp+"/files/content?path=/home/hearth/big", rh, ""); a.status != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("download past the end: %d %s", a.status, a.body)
	}

	if a = f.do("POST", vmp+"/files/mkdir", f.alice, `{"path":"/home/hearth/a/b","parents":true}`); a.status != http.StatusCreated {
		t.Fatalf("mkdir: %d %s", a.status, a.body)
	}
	if a = f.do("POST", vmp+"/files/mkdir", f.alice, `{"path":"/home/hearth/a/b"}`); a.status != http.StatusConflict {
		t.Fatalf("mkdir again: %d %s", a.status, a.body)
	}
	if a = f.do("POST", vmp+"/files/rename", f.alice, `{"from":"/home/hearth/big","to":"/home/hearth/a/big"}`); a.status != http.StatusNoContent {
		t.Fatalf("rename: %d %s", a.status, a.body)
	}
	var l v1.FileList
	if a = f.do("GET", vmp+"/files?path="+url.QueryEscape("/home/hearth/a"), f.alice, ""); a.status != 200 {
		t.Fatalf("list: %d %s", a.status, a.body)
	}
	a.json(t, &l)
	if len(l.Entries) != 2 || l.Entries[0].Name != "b" || l.Entries[0].Type != v1.FileInfoTypeDir || l.Entries[1].Name != "big" {
		t.Fatalf("listed %+v", l)
	}
	if a = f.do("DELETE", vmp+"/files?path=/home/hearth/a", f.alice, ""); a.status != http.StatusConflict {
		t.Fatalf("remove a full directory: %d %s", a.status, a.body)
	}
	if a = f.do("DELETE", vmp+"/files?path=/home/hearth/a&recursive=true", f.alice, ""); a.status != http.StatusNoContent {
		t.Fatalf("remove recursively: %d %s", a.status, a.body)
	}
	if a = f.do("GET", vmp+"/files/stat?path=/home/hearth/a", f.alice, ""); a.status != http.StatusNotFound {
		t.Fatalf("stat what was removed: %d %s", a.status, a.body)
	}
	if a = f.do("GET", vmp+"/files/stat?path=/etc&user=root", f.alice, ""); a.status != 200 {
		t.Fatalf("stat as root: %d %s", a.status, a.body)
	}
}

// An upload's time bound is its progress, not its total: a body that
// keeps coming may take longer than the read timeout, one that stops is
// cut (408) and replaces nothing.
func TestUploadIsBoundedByProgress(t *testing.T) {
	const timeout = 400 * time.Millisecond
	f := newFixtureWith(t, &httplimit.Config{ReadHeaderTimeout: timeout, ReadTimeout: timeout, WriteTimeout: 5 * time.Second})
	id := f.readyVM("minimal")
	put := func(parts int, pause time.Duration) answer {
		t.Helper()
		pr, pw := io.Pipe()
		go func() {
			for i := range parts {
				if i > 0 {
					time.Sleep(pause) // the pace is what is under test
				}
				if _, err := pw.Write([]byte("part\n")); err != nil {
					return
				}
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("PUT", f.srv.URL+"/v1/vms/"+id+"/files/content?path=/home/hearth/slow", pr)
		req.Header.Set("Authorization", "Bearer "+f.alice)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		pr.CloseWithError(io.ErrClosedPipe)
		return answer{status: resp.StatusCode, body: b}
	}
	// Eight parts a quarter of the timeout apart: twice the timeout in all.
	if a := put(8, timeout/4); a.status != 200 {
		t.Fatalf("a slow upload that keeps coming: %d %s", a.status, a.body)
	}
	if a := put(2, 3*timeout); a.status != http.StatusRequestTimeout {
		t.Fatalf("an upload that stops: %d %s", a.status, a.body)
	}
	a := f.do("GET", "/v1/vms/"+id+"/files/content?path=/home/hearth/slow", f.alice, "")
	if a.status != 200 || string(a.body) != strings.Repeat("part\n", 8) {
		t.Fatalf("after the cut upload: %d %q", a.status, a.body)
	}
}

// Output streams and watches count against the user's streams.
func TestWorkStreamsCountAgainstTheUsersStreams(t *testing.T) {
	f := newFixture(t, func(o *fixtureOptions) { o.maxStreams = 1 })
	id := f.readyVM("minimal")
	p := f.startProcess(id, `{"argv":["sleep","60"]}`)
	first := f.stream(t.Context(), f.srv.URL, "/v1/vms/"+id+"/processes/"+p.ID+"/output", f.alice, "")
	defer first.Body.Close()
	if first.StatusCode != 200 {
		t.Fatalf("first stream: %d", first.StatusCode)
	}
	second := f.stream(t.Context(), f.srv.URL, "/v1/vms/"+id+"/files/watch?path=/tmp", f.alice, "")
	second.Body.Close()
	if second.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second stream: %d", second.StatusCode)
	}
}
