package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agent/procs"
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/workapi"
)

// fakeDevice behaves like the guest side of a virtio-serial port across
// opens: while no host is connected, reads return EOF at once; a host
// that goes away is an EOF; a new host may also take over the port while
// the guest still serves the old one, which it then learns only from the
// new host's bytes. Closing a handle ends its reads, not the host's
// connection, and bytes it did not read stay for the next handle.
type fakeDevice struct {
	in    chan []byte // bytes from the current host; nil means it went away
	opens atomic.Int32

	mu       sync.Mutex
	gen      int      // of the current host
	link     net.Conn // the guest end of the current host's connection
	leftover []byte
}

func newFakeDevice() *fakeDevice { return &fakeDevice{in: make(chan []byte, 64)} }

// connect makes a new host the port's; the previous one, if any, is
// heard no more.
func (d *fakeDevice) connect(t *testing.T) net.Conn {
	host, guest := net.Pipe()
	t.Cleanup(func() { host.Close(); guest.Close() })
	d.mu.Lock()
	d.gen++
	gen := d.gen
	d.link = guest
	d.mu.Unlock()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := guest.Read(buf)
			d.mu.Lock()
			current := d.gen == gen
			d.mu.Unlock()
			if !current {
				return
			}
			if n > 0 {
				d.in <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				d.in <- nil // EOF for the reader
				d.mu.Lock()
				if d.gen == gen {
					d.link = nil
				}
				d.mu.Unlock()
				return
			}
		}
	}()
	return host
}

func (d *fakeDevice) open() (net.Conn, error) {
	d.opens.Add(1)
	return &fakeHandle{d: d, closed: make(chan struct{})}, nil
}

// fakeHandle is one open of a fakeDevice.
type fakeHandle struct {
	d      *fakeDevice
	closed chan struct{}
	once   sync.Once
}

func (h *fakeHandle) Read(b []byte) (int, error) {
	d := h.d
	for {
		select {
		case <-h.closed:
			return 0, net.ErrClosed
		default:
		}
		d.mu.Lock()
		if len(d.leftover) > 0 {
			n := copy(b, d.leftover)
			d.leftover = d.leftover[n:]
			d.mu.Unlock()
			return n, nil
		}
		connected := d.link != nil
		d.mu.Unlock()
		var chunk []byte
		select {
		case chunk = <-d.in:
		case <-h.closed:
			return 0, net.ErrClosed
		default:
			if !connected {
				return 0, io.EOF
			}
			select {
			case chunk = <-d.in:
			case <-h.closed:
				return 0, net.ErrClosed
			}
		}
		if chunk == nil {
			return 0, io.EOF
		}
		d.mu.Lock()
		d.leftover = chunk
		d.mu.Unlock()
	}
}

func (h *fakeHandle) Write(b []byte) (int, error) {
	select {
	case <-h.closed:
		return 0, net.ErrClosed
	default:
	}
	h.d.mu.Lock()
	link := h.d.link
	h.d.mu.Unlock()
	if link == nil {
		return 0, io.ErrClosedPipe
	}
	return link.Write(b)
}

func (h *fakeHandle) Close() error {
	h.once.Do(func() { close(h.closed) })
	return nil
}

func (h *fakeHandle) LocalAddr() net.Addr              { return portAddr("fake") }
func (h *fakeHandle) RemoteAddr() net.Addr             { return portAddr("host") }
func (h *fakeHandle) SetDeadline(time.Time) error      { return nil }
func (h *fakeHandle) SetReadDeadline(time.Time) error  { return nil }
func (h *fakeHandle) SetWriteDeadline(time.Time) error { return nil }

// TestDataChannelPort serves the data channel on a (fake) virtio-serial
// port: it waits for a host, serves it, serves a host that takes over
// without the first one going away, then one that comes after an EOF; a
// process started by the first runs on for the others.
func TestDataChannelPort(t *testing.T) {
	token := newToken(t)
	opts, dataLogs := testOptions(t, token)
	defer func() {
		if t.Failed() {
			t.Log(dataLogs)
		}
	}()
	opts = workOptions(t, opts)
	opts.RetryInterval = 5 * time.Millisecond
	opts = opts.withDefaults()
	opts.TokenSources = []string{writeTokenFile(t, token)}
	m := procs.NewManager(opts.procs)
	t.Cleanup(m.Close)
	d := newFakeDevice()
	s := newDataServer(opts, workMux(m))
	s.open = d.open
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.run(ctx, channel{}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("run = %v", err)
		}
	})

	first := dialWork(t, d.connect(t), token)
	var p workapi.Process
	first.call("POST", "/processes", workapi.ProcessSpec{Argv: []string{"cat"}, Stdin: true}, http.StatusCreated, &p)
	first.call("POST", "/processes/"+p.ID+"/stdin", []byte("one\n"), http.StatusNoContent, nil)
	if n := d.opens.Load(); n != 1 {
		t.Errorf("port opened %d times before the first host was served, want once", n)
	}

	// A host that takes over: its challenge breaks the old HTTP/2
	// connection, and the port is opened again for it.
	second := dialWork(t, d.connect(t), token)
	second.call("POST", "/processes/"+p.ID+"/stdin", []byte("two\n"), http.StatusNoContent, nil)
	if n := d.opens.Load(); n != 2 {
		t.Errorf("port opened %d times for two hosts", n)
	}
	second.cc.Close() // the host goes: an EOF for the guest

	third := dialWork(t, d.connect(t), token)
	third.call("POST", "/processes/"+p.ID+"/stdin?eof=1", []byte("three\n"), http.StatusNoContent, nil)
	if out, e := third.output(p.ID); out != "one\ntwo\nthree\n" || e.Code == nil || *e.Code != 0 {
		t.Errorf("output %q, exit %+v", out, e)
	}
}

// writeTokenFile writes token to a file and returns its path.
func writeTokenFile(t *testing.T, token []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(agentapi.FormatToken(token)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
