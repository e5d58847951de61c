package cli

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fakeWorkDaemon answers the work API's routes for vm1 as the daemon
// would, recording what it was asked.
type fakeWorkDaemon struct {
	t  *testing.T
	mu sync.Mutex
	// started are the bodies of process starts; stdin what stdin got;
	// signals the signal bodies; outputs the offsets output was asked
	// from.
	started []map[string]any
	stdin   []string
	signals []string
	outputs []string
	// files are the guest's files: path → content, modes their modes.
	files map[string]string
	modes map[string]string
	// stdinDone is closed once stdin reached p2, which like cat ends
	// only then.
	stdinDone chan struct{}
}

func sseOutput(w io.Writer, id int64, typ, data string) {
	fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, typ, data)
}

func chunk(off int64, s string) string {
	return fmt.Sprintf(`{"offset":%d,"data":%q}`, off, base64.StdEncoding.EncodeToString([]byte(s)))
}

func (d *fakeWorkDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/vms/vm1/processes/p2/output" {
		<-d.stdinDone
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	q := r.URL.Query()
	jsonAnswer := func(status int, body string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
	switch key := r.Method + " " + r.URL.Path; key {
	case "POST /v1/vms/vm1/processes":
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			d.t.Error(err)
		}
		d.started = append(d.started, body)
		id := fmt.Sprintf("p%d", len(d.started))
		jsonAnswer(201, `{"id":"`+id+`","pid":42,"argv":["x"],"user":"hearth","cwd":"/home/hearth","state":"running","started_at":"2030-01-02T15:04:05Z","stdout_bytes":0,"stderr_bytes":0,"history_start":0,"dropped_bytes":0,"followers":0}`)
	case "GET /v1/vms/vm1/processes/p1/output":
		d.outputs = append(d.outputs, q.Get("offset"))
		w.Header().Set("Content-Type", "text/event-stream")
		if q.Get("offset") == "0" {
			// The stream breaks off after the first event.
			sseOutput(w, 4, "stdout", chunk(0, "out\n"))
			return
		}
		io.WriteString(w, ": keepalive\n\n")
		sseOutput(w, 8, "stderr", chunk(4, "err\n"))
		sseOutput(w, 8, "exit", `{"code":3,"ended_at":"2030-01-02T15:04:06Z","duration_ms":1000}`)
	case "GET /v1/vms/vm1/processes/p2/output":
		w.Header().Set("Content-Type", "text/event-stream")
		sseOutput(w, 0, "exit", `{"signal":"TERM","ended_at":"2030-01-02T15:04:06Z","duration_ms":1000}`)
	case "POST /v1/vms/vm1/processes/p2/stdin":
		b, _ := io.ReadAll(r.Body)
		d.stdin = append(d.stdin, string(b)+" eof="+q.Get("eof"))
		w.WriteHeader(204)
		close(d.stdinDone)
	case "GET /v1/vms/vm1/processes":
		jsonAnswer(200, `{"processes":[{"id":"p1","pid":42,"argv":["sleep","60"],"user":"hearth","cwd":"/","state":"exited","exit":{"signal":"KILL","reason":"client gone","ended_at":"2030-01-02T15:04:06Z","duration_ms":5},"started_at":"2030-01-02T15:04:05Z","stdout_bytes":0,"stderr_bytes":0,"history_start":0,"dropped_bytes":0,"followers":0}]}`)
	case "POST /v1/vms/vm1/processes/p1/signal":
		b, _ := io.ReadAll(r.Body)
		d.signals = append(d.signals, string(b))
		w.WriteHeader(204)
	case "GET /v1/vms/vm1/files/content":
		content, ok := d.files[q.Get("path")]
		if !ok {
			jsonAnswer(404, `{"error":{"code":"not_found","message":"file `+q.Get("path")+` in vm vm1: no such file"}}`)
			return
		}
		w.Header().Set("X-Hearth-Mode", d.modes[q.Get("path")])
		w.Header().Set("X-Hearth-Size", fmt.Sprint(len(content)))
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		io.WriteString(w, content)
	case "PUT /v1/vms/vm1/files/content":
		if r.ContentLength < 0 {
			d.t.Error("an upload of a file without its length")
		}
		b, _ := io.ReadAll(r.Body)
		d.files[q.Get("path")], d.modes[q.Get("path")] = string(b), q.Get("mode")
		jsonAnswer(200, `{"path":"`+q.Get("path")+`","name":"x","type":"file","size":1,"mode":"0644","uid":1000,"gid":1000,"mod_time":"2030-01-02T15:04:05Z"}`)
	case "GET /v1/vms/vm1/files/stat":
		jsonAnswer(200, `{"path":"/home/hearth","name":"hearth","type":"dir","size":4096,"mode":"0755","uid":1000,"gid":1000,"owner":"hearth","mod_time":"2030-01-02T15:04:05Z"}`)
	case "GET /v1/vms/vm1/files":
		jsonAnswer(200, `{"path":"/home/hearth","entries":[{"path":"/home/hearth/a","name":"a","type":"dir","size":4096,"mode":"0755","uid":1000,"gid":1000,"owner":"hearth","mod_time":"2030-01-02T15:04:05Z"},{"path":"/home/hearth/l","name":"l","type":"symlink","size":1,"mode":"0777","uid":1000,"gid":1000,"owner":"hearth","mod_time":"2030-01-02T15:04:05Z","target":"a\u001b[31m"}]}`)
	default:
		d.t.Errorf("unexpected %s", key)
		http.NotFound(w, r)
	}
}

func newFakeWorkDaemon(t *testing.T) *fakeWorkDaemon {
	d := &fakeWorkDaemon{t: t, files: map[string]string{}, modes: map[string]string{}, stdinDone: make(chan struct{})}
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	t.Setenv("HEARTH_ADDR", strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("HEARTH_API_KEY", "hearth_k_secret")
	return d
}

// vm run streams the output to stdout and stderr, reconnects where a
// broken stream left off, and exits with the process's status (128+N for
// signal N); --stdin forwards stdin.
func TestVMRun(t *testing.T) {
	d := newFakeWorkDaemon(t)
	var out, errOut bytes.Buffer
	code := Main([]string{"vm", "run", "vm1", "--user", "root", "--cwd", "/srv", "-e", "A=1", "-e", "B=2", "--", "sh", "-c", "x"}, &out, &errOut)
	if code != 3 || out.String() != "out\n" || errOut.String() != "err\n" {
		t.Fatalf("run: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	if strings.Join(d.outputs, ",") != "0,4" {
		t.Fatalf("output asked from %v; want 0, then 4 where the broken stream left off", d.outputs)
	}
	b, _ := json.Marshal(d.started[0])
	if want := `{"argv":["sh","-c","x"],"cwd":"/srv","die_with_client":true,"env":["A=1","B=2"],"tag":"cli","user":"root"}`; string(b) != want {
		t.Fatalf("started %s\nwant    %s", b, want)
	}

	stdin = strings.NewReader("input")
	t.Cleanup(func() { stdin = os.Stdin })
	out.Reset()
	errOut.Reset()
	if code := Main([]string{"vm", "run", "vm1", "--stdin", "--timeout", "90s", "--", "cat"}, &out, &errOut); code != 128+15 {
		t.Fatalf("run killed by TERM: exit %d, stderr %q", code, errOut.String())
	}
	if d.started[1]["stdin"] != true || d.started[1]["timeout_seconds"] != float64(90) {
		t.Fatalf("started %v", d.started[1])
	}
	if len(d.stdin) != 1 || d.stdin[0] != "input eof=true" {
		t.Fatalf("stdin got %q", d.stdin)
	}
}

// vm ps lists processes, guest text made harmless; vm kill signals the
// process's group.
func TestVMPsAndKill(t *testing.T) {
	d := newFakeWorkDaemon(t)
	var out, errOut bytes.Buffer
	if code := Main([]string{"vm", "ps", "vm1"}, &out, &errOut); code != 0 {
		t.Fatalf("ps: exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "SIGKILL (client gone)") || !strings.Contains(out.String(), "sleep 60") {
		t.Fatalf("ps:\n%s", out.String())
	}
	if code := Main([]string{"vm", "kill", "vm1", "p1", "--signal", "sigkill"}, &out, &errOut); code != 0 {
		t.Fatalf("kill: exit %d: %s", code, errOut.String())
	}
	if len(d.signals) != 1 || d.signals[0] != `{"group":true,"signal":"KILL"}` {
		t.Fatalf("signals %q", d.signals)
	}
}

// vm cp copies both ways, keeping the mode; vm ls lists with guest text
// made harmless.
func TestVMCpAndLs(t *testing.T) {
	d := newFakeWorkDaemon(t)
	dir := t.TempDir()
	local := filepath.Join(dir, "script.sh")
	if err := os.WriteFile(local, []byte("#!/bin/sh\necho hi\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"vm", "cp", local, "vm1:/home/hearth/"}, &out, &errOut); code != 0 {
		t.Fatalf("cp up: exit %d: %s", code, errOut.String())
	}
	if d.files["/home/hearth/script.sh"] != "#!/bin/sh\necho hi\n" || d.modes["/home/hearth/script.sh"] != "0750" {
		t.Fatalf("uploaded %q mode %q", d.files, d.modes)
	}
	if code := Main([]string{"vm", "cp", "vm1:/home/hearth/script.sh", filepath.Join(dir, "back")}, &out, &errOut); code != 0 {
		t.Fatalf("cp down: exit %d: %s", code, errOut.String())
	}
	fi, err := os.Stat(filepath.Join(dir, "back"))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("downloaded: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "back")); string(b) != "#!/bin/sh\necho hi\n" {
		t.Fatalf("downloaded %q", b)
	}
	errOut.Reset()
	if code := Main([]string{"vm", "cp", "vm1:/nowhere", dir}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "no such file") {
		t.Fatalf("cp of a missing file: exit %d: %s", code, errOut.String())
	}
	if code := Main([]string{"vm", "cp", local, dir}, &out, &errOut); code != 1 {
		t.Fatalf("cp between two local paths: exit %d", code)
	}
	out.Reset()
	if code := Main([]string{"vm", "ls", "vm1", "/home/hearth"}, &out, &errOut); code != 0 {
		t.Fatalf("ls: exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "a/") || !strings.Contains(out.String(), "l -> a") || strings.Contains(out.String(), "\x1b") {
		t.Fatalf("ls:\n%q", out.String())
	}
}
