package procs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/hearth-project/hearth/internal/agent/guestuser"
	"github.com/hearth-project/hearth/internal/workapi"
	"github.com/hearth-project/hearth/test/testrun"
)

// harness is a manager served over a real data channel: a Unix socket
// pair, the preamble, then HTTP/2 with prior knowledge, as between the
// host and the agent.
type harness struct {
	t      *testing.T
	m      *Manager
	client *http.Client
}

// testUsers are the accounts the tests run processes as.
var testUsers = guestuser.Files{Passwd: "testdata/passwd", Group: "testdata/group"}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("runs processes as other users: needs root")
	}
	if cfg.Users == (guestuser.Files{}) {
		cfg.Users = testUsers
	}
	// Processes carry the test's mark, so that none outlives the run.
	cfg.Env = append(cfg.Env, testrun.OwnerEnv+"="+os.Getenv(testrun.OwnerEnv))
	m := NewManager(cfg)
	mux := http.NewServeMux()
	Register(mux, m)

	hostEnd, guestEnd := socketPair(t)
	token := []byte("0123456789abcdef0123456789abcdef")
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := workapi.GuestPreamble(guestEnd, token)
		if err != nil {
			t.Errorf("guest preamble: %v", err)
			guestEnd.Close()
			return
		}
		(&http2.Server{MaxConcurrentStreams: 256}).ServeConn(c, &http2.ServeConnOpts{Handler: mux})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc, err := workapi.HostPreamble(ctx, hostEnd, token)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		<-served
		m.Close()
	})
	return &harness{t: t, m: m, client: &http.Client{Transport: cc}}
}

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("pair-%d", i))
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// do sends a request with a JSON body (or raw bytes) and returns the
// response, whose body the caller closes.
func (h *harness) do(ctx context.Context, method, path string, body any) *http.Response {
	h.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	case io.Reader:
		r = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, r)
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// call sends a request, checks its status and decodes the JSON answer
// into out (if not nil).
func (h *harness) call(method, path string, body any, status int, out any) {
	h.t.Helper()
	resp := h.do(context.Background(), method, path, body)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		h.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			h.t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

// callError sends a request that must fail with status and returns the
// error message.
func (h *harness) callError(method, path string, body any, status int) string {
	h.t.Helper()
	var e workapi.ErrorBody
	h.call(method, path, body, status, &e)
	if e.Error == "" {
		h.t.Fatalf("%s %s: no error message", method, path)
	}
	return e.Error
}

func (h *harness) start(spec workapi.ProcessSpec) workapi.Process {
	h.t.Helper()
	var p workapi.Process
	h.call("POST", "/processes", spec, http.StatusCreated, &p)
	if p.ID == "" || p.PID <= 0 || p.StartedAt.IsZero() {
		h.t.Fatalf("started %+v", p)
	}
	return p
}

func (h *harness) get(id string) workapi.Process {
	h.t.Helper()
	var p workapi.Process
	h.call("GET", "/processes/"+id, nil, http.StatusOK, &p)
	return p
}

func (h *harness) stdin(id, data string, eof bool) {
	h.t.Helper()
	path := "/processes/" + id + "/stdin"
	if eof {
		path += "?eof=1"
	}
	h.call("POST", path, []byte(data), http.StatusNoContent, nil)
}

// stream is one /output request being read.
type stream struct {
	t    *testing.T
	resp *http.Response
	fr   *workapi.FrameReader
	// next is the offset the next output frame must have.
	next int64
	// out is all the output; stdout and stderr each kind's.
	out, stdout, stderr bytes.Buffer
	// dropped are the Dropped frames received; exit the Exit frame.
	dropped []workapi.Dropped
	exit    *workapi.Exit
	cancel  context.CancelFunc
}

func (h *harness) output(id, query string) *stream {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	resp := h.do(ctx, "GET", "/processes/"+id+"/output?"+query, nil)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		h.t.Fatalf("output: %d %s", resp.StatusCode, b)
	}
	s := &stream{t: h.t, resp: resp, fr: workapi.NewFrameReader(resp.Body), next: -1, cancel: cancel}
	h.t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// frame reads and checks one frame: output continues where the last
// output or drop left off; a drop starts there too. It returns io.EOF at
// the end of the stream.
func (s *stream) frame() (workapi.Frame, error) {
	s.t.Helper()
	f, err := s.fr.Next()
	if err != nil {
		return f, err
	}
	switch f.Kind {
	case workapi.FrameStdout, workapi.FrameStderr:
		if s.next >= 0 && f.Offset != s.next {
			s.t.Fatalf("output frame at offset %d, want %d", f.Offset, s.next)
		}
		s.next = f.Offset + int64(len(f.Data))
		s.out.Write(f.Data)
		if f.Kind == workapi.FrameStdout {
			s.stdout.Write(f.Data)
		} else {
			s.stderr.Write(f.Data)
		}
	case workapi.FrameDropped:
		if s.next >= 0 && f.Dropped.From != s.next {
			s.t.Fatalf("dropped %+v, want it to start at %d", *f.Dropped, s.next)
		}
		s.next = f.Dropped.To
		s.dropped = append(s.dropped, *f.Dropped)
	case workapi.FrameExit:
		if s.exit != nil {
			s.t.Fatal("two exit frames")
		}
		s.exit = f.Exit
	}
	return f, nil
}

// until reads frames until the output contains want.
func (s *stream) until(want string) {
	s.t.Helper()
	for !strings.Contains(s.out.String(), want) {
		if _, err := s.frame(); err != nil {
			s.t.Fatalf("waiting for %q, have %q: %v", want, s.out.String(), err)
		}
	}
}

// end reads to the end of the stream, which must be an exit frame, and
// returns the exit.
func (s *stream) end() *workapi.Exit {
	s.t.Helper()
	for {
		_, err := s.frame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.t.Fatalf("reading output: %v", err)
		}
	}
	if s.exit == nil {
		s.t.Fatalf("output ended without an exit (have %q)", s.out.String())
	}
	return s.exit
}

// waitFor polls the process until cond holds (the state the API reports
// is what is waited on; there is no event to wait for instead).
func (h *harness) waitFor(id string, what string, cond func(workapi.Process) bool) workapi.Process {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p := h.get(id)
		if cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("process never %s: %+v", what, p)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func exitCode(e *workapi.Exit) int {
	if e == nil || e.Code == nil {
		return -1
	}
	return *e.Code
}
