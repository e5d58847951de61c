package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// fakeMMDS is Firecracker's MMDS version 2 as a guest sees it: a PUT of
// /latest/api/token with a TTL header (1 to 21600 s) issues a session
// token, without which a GET is refused (401); a GET answers a string leaf
// as its bare value (IMDS format) unless the client accepts JSON, an
// object as its keys, anything else with 501, and a missing path with 404.
type fakeMMDS struct {
	srv *httptest.Server

	mu         sync.Mutex
	data       any             // the data store, as decoded JSON
	sessions   map[string]bool // issued session tokens
	quoteJSON  bool            // answer GETs in JSON even without Accept
	failStatus int             // if set, answer GETs with this status
	accepts    []string        // the Accept header of each GET
	onGet      func()          // called on each GET
}

func newFakeMMDS(t *testing.T) *fakeMMDS {
	t.Helper()
	return newFakeMMDSOn(t, nil)
}

// newFakeMMDSOn serves the fake on l (nil: a loopback port).
func newFakeMMDSOn(t *testing.T, l net.Listener) *fakeMMDS {
	t.Helper()
	m := &fakeMMDS{data: map[string]any{}, sessions: map[string]bool{}}
	m.srv = httptest.NewUnstartedServer(m)
	if l != nil {
		m.srv.Listener.Close()
		m.srv.Listener = l
	}
	m.srv.Start()
	t.Cleanup(m.srv.Close)
	return m
}

// url is the base URL of the service.
func (m *fakeMMDS) url() string { return m.srv.URL }

// put replaces the data store with doc (any JSON-encodable value).
func (m *fakeMMDS) put(t *testing.T, doc any) {
	t.Helper()
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var data any
	if err := json.Unmarshal(b, &data); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.data = data
	m.mu.Unlock()
}

// putToken replaces the data store with a hearth document holding token.
func (m *fakeMMDS) putToken(t *testing.T, token []byte) {
	t.Helper()
	m.put(t, agentapi.MMDSDocument{Hearth: agentapi.MMDSHearth{VMID: "vm-1", Token: agentapi.FormatToken(token)}})
}

func (m *fakeMMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch r.Method {
	case http.MethodPut:
		if r.Header.Get("X-Forwarded-For") != "" {
			http.Error(w, "X-Forwarded-For not allowed", http.StatusBadRequest)
			return
		}
		if r.URL.Path != agentapi.MMDSSessionPath {
			http.Error(w, "Resource not found: "+r.URL.Path, http.StatusNotFound)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get(agentapi.MMDSSessionTTLHeader))
		if err != nil || ttl < 1 || ttl > 21600 {
			http.Error(w, "Invalid time to live value provided for token", http.StatusBadRequest)
			return
		}
		b := make([]byte, 32)
		rand.Read(b)
		session := hex.EncodeToString(b)
		m.sessions[session] = true
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, session)
	case http.MethodGet:
		if !m.sessions[r.Header.Get(agentapi.MMDSSessionHeader)] {
			http.Error(w, "No MMDS token provided or token invalid", http.StatusUnauthorized)
			return
		}
		m.accepts = append(m.accepts, r.Header.Get("Accept"))
		if m.onGet != nil {
			m.onGet()
		}
		if m.failStatus != 0 {
			http.Error(w, "failing as told", m.failStatus)
			return
		}
		m.get(w, r)
	default:
		w.Header().Set("Allow", "GET, PUT")
		http.Error(w, "Not allowed HTTP method.", http.StatusMethodNotAllowed)
	}
}

func (m *fakeMMDS) get(w http.ResponseWriter, r *http.Request) {
	v := m.data
	for _, seg := range strings.Split(strings.Trim(r.URL.Path, "/"), "/") {
		if seg == "" {
			continue
		}
		obj, ok := v.(map[string]any)
		if v, ok = obj[seg]; !ok {
			http.Error(w, "Resource not found: "+r.URL.Path, http.StatusNotFound)
			return
		}
	}
	if m.quoteJSON || r.Header.Get("Accept") == "application/json" {
		json.NewEncoder(w).Encode(v)
		return
	}
	switch v := v.(type) {
	case string:
		fmt.Fprint(w, v)
	case map[string]any:
		fmt.Fprint(w, strings.Join(slices.Sorted(func(yield func(string) bool) {
			for k := range v {
				if !yield(k) {
					return
				}
			}
		}), "\n"))
	default:
		http.Error(w, "Cannot retrieve value. The value has an unsupported type.", http.StatusNotImplemented)
	}
}

// TestFakeMMDS checks that the fake enforces the session protocol.
func TestFakeMMDS(t *testing.T) {
	m := newFakeMMDS(t)
	token := newToken(t)
	m.putToken(t, token)
	do := func(method, path string, header ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, m.url()+path, nil)
		for i := 0; i < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	if code, _ := do("GET", agentapi.MMDSTokenPath); code != http.StatusUnauthorized {
		t.Fatalf("GET without session: %d, want 401", code)
	}
	for _, ttl := range []string{"", "0", "21601", "x"} {
		if code, _ := do("PUT", agentapi.MMDSSessionPath, agentapi.MMDSSessionTTLHeader, ttl); code != http.StatusBadRequest {
			t.Fatalf("PUT with TTL %q: %d, want 400", ttl, code)
		}
	}
	code, session := do("PUT", agentapi.MMDSSessionPath, agentapi.MMDSSessionTTLHeader, "60")
	if code != http.StatusOK || session == "" {
		t.Fatalf("PUT: %d %q", code, session)
	}
	if code, _ := do("GET", agentapi.MMDSTokenPath, agentapi.MMDSSessionHeader, "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("GET with a wrong session: %d, want 401", code)
	}
	if code, body := do("GET", agentapi.MMDSTokenPath, agentapi.MMDSSessionHeader, session); code != http.StatusOK || body != agentapi.FormatToken(token) {
		t.Fatalf("GET token: %d %q", code, body)
	}
	if code, body := do("GET", agentapi.MMDSTokenPath, agentapi.MMDSSessionHeader, session, "Accept", "application/json"); code != http.StatusOK || body != `"`+agentapi.FormatToken(token)+`"`+"\n" {
		t.Fatalf("GET token as JSON: %d %q", code, body)
	}
	if code, _ := do("GET", "/hearth/missing", agentapi.MMDSSessionHeader, session); code != http.StatusNotFound {
		t.Fatalf("GET missing: %d, want 404", code)
	}
}

// mmdsOptions returns options reading the token from m only.
func mmdsOptions(t *testing.T, token []byte, m *fakeMMDS) (Options, *logBuffer) {
	t.Helper()
	opts, logs := testOptions(t, token)
	opts = opts.withDefaults()
	opts.TokenSources = []string{"mmds:" + m.url()}
	return opts, logs
}

func TestMMDSTokenSource(t *testing.T) {
	token := newToken(t)
	text := agentapi.FormatToken(token)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	tests := []struct {
		name    string
		setup   func(m *fakeMMDS)
		url     string // instead of the fake's
		want    string // the wanted source, "" for none
		wantErr string // part of the error
	}{
		{"present", func(m *fakeMMDS) { m.putToken(t, token) }, "", "mmds", ""},
		{"JSON-quoted", func(m *fakeMMDS) { m.putToken(t, token); m.quoteJSON = true }, "", "mmds", ""},
		{"padded", func(m *fakeMMDS) { m.put(t, map[string]any{"hearth": map[string]any{"token": " " + text + "\n"}}) }, "", "mmds", ""},
		{"absent", func(m *fakeMMDS) {}, "", "", "404 Not Found"},
		{"not filled in", func(m *fakeMMDS) { m.put(t, map[string]any{"hearth": map[string]any{"token": ""}}) }, "", "", "empty value"},
		{"unreachable", func(m *fakeMMDS) {}, closedURL, "", "unreachable"},
		{"not a token", func(m *fakeMMDS) {
			m.put(t, map[string]any{"hearth": map[string]any{"token": "zz" + text[2:]}})
		}, "", "mmds", "not hex"},
		{"bad JSON string", func(m *fakeMMDS) {
			m.put(t, map[string]any{"hearth": map[string]any{"token": `"` + text}})
		}, "", "mmds", "malformed JSON string"},
		{"an object", func(m *fakeMMDS) {
			m.put(t, map[string]any{"hearth": map[string]any{"token": map[string]any{"a": text, "b": "x"}}})
		}, "", "mmds", "not hex"},
		{"a number", func(m *fakeMMDS) { m.put(t, map[string]any{"hearth": map[string]any{"token": 42}}) }, "", "mmds", "unexpected status 501 Not Implemented"},
		{"server error", func(m *fakeMMDS) { m.putToken(t, token); m.failStatus = 500 }, "", "mmds", "unexpected status 500"},
		{"sessions refused", func(m *fakeMMDS) { m.putToken(t, token); m.failStatus = 401 }, "", "mmds", "unexpected status 401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newFakeMMDS(t)
			tt.setup(m)
			url := m.url()
			if tt.url != "" {
				url = tt.url
			}
			opts, logs := mmdsOptions(t, token, m)
			src := "mmds:" + url
			opts.TokenSources = []string{src}
			got, gotSrc, err := readToken(context.Background(), opts)
			wantSrc := ""
			if tt.want != "" {
				wantSrc = src
			}
			if gotSrc != wantSrc {
				t.Fatalf("readToken = source %q, error %v; want source %q", gotSrc, err, wantSrc)
			}
			if tt.wantErr == "" {
				if err != nil || agentapi.FormatToken(got) != text {
					t.Fatalf("readToken = %x, %v", got, err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("readToken error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), text[2:]) {
					t.Fatalf("error %q reveals the token", err)
				}
				if wantSrc != "" && !strings.Contains(err.Error(), src) {
					t.Fatalf("error %q does not name the source", err)
				}
			}
			if strings.Contains(logs.String(), text[2:]) {
				t.Fatalf("log reveals the token:\n%s", logs)
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			for _, a := range m.accepts {
				if a != "" {
					t.Fatalf("GET sent Accept: %q", a)
				}
			}
		})
	}
}

// TestMMDSMissingFallsThrough checks that an MMDS without the token counts
// as a missing source: the next one is used, or Run waits.
func TestMMDSMissingFallsThrough(t *testing.T) {
	token := newToken(t)
	m := newFakeMMDS(t)
	opts, _ := mmdsOptions(t, token, m)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(agentapi.FormatToken(token)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.TokenSources = []string{"mmds:" + m.url(), file}
	if _, src, err := readToken(context.Background(), opts); err != nil || src != file {
		t.Fatalf("readToken = %q, %v; want %s", src, err, file)
	}

	// Nothing there: Run waits, then reads the token once MMDS has it.
	opts, logs := mmdsOptions(t, token, m)
	opts.Port = filepath.Join(t.TempDir(), "vport0p1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	logs.waitFor(t, "no token yet")
	m.putToken(t, token)
	logs.waitFor(t, "token loaded")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
}

// TestMMDSURLOption checks where a bare "mmds" source looks.
func TestMMDSURLOption(t *testing.T) {
	token := newToken(t)
	m := newFakeMMDS(t)
	m.putToken(t, token)
	opts, _ := mmdsOptions(t, token, m)
	opts.TokenSources = []string{"mmds"}
	opts.MMDSURL = m.url() + "/"
	if got, src, err := readToken(context.Background(), opts); err != nil || src != "mmds" || !slices.Equal(got, token) {
		t.Fatalf("readToken = %x, %q, %v", got, src, err)
	}

	// Without a URL, outside a VM: not there, and the network is untouched.
	fn := newFakeNet()
	opts.MMDSURL, opts.netOps = "", fn
	_, _, err := readToken(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "only used inside a VM") {
		t.Fatalf("readToken error %v", err)
	}
	if calls := fn.takeCalls(); len(calls) != 0 {
		t.Fatalf("network calls %q", calls)
	}
}

// redirectClient sends what is meant for MMDSAddress:80 to addr (a
// loopback test server) and refuses everything else.
func redirectDial(addr string) dialFunc {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return func(ctx context.Context, network, a string) (net.Conn, error) {
		if a != net.JoinHostPort(agentapi.MMDSAddress, "80") {
			return nil, fmt.Errorf("test client: refusing to dial %s", a)
		}
		return d.DialContext(ctx, network, addr)
	}
}

// TestMMDSDefaultAddress reads the token from 169.254.169.254 as a guest
// does: the NIC has no address, so the agent adds a link-local one and a
// route while it asks, and removes them after; the host's network
// configuration then finds the NIC as it was.
func TestMMDSDefaultAddress(t *testing.T) {
	token := newToken(t)
	m := newFakeMMDS(t)
	m.putToken(t, token)
	fn := newFakeNet()
	fn.links["eth0"].addrs = []netip.Prefix{netip.MustParsePrefix("2001:db8::9/64")} // no IPv4
	before := fn.state()
	var during string
	m.onGet = func() { during = fn.state() }

	opts, _ := testOptions(t, token)
	opts = opts.withDefaults()
	opts.netOps = fn
	opts.inGuest = true
	opts.mmdsDial = redirectDial(m.srv.Listener.Addr().String())
	opts.TokenSources = []string{"mmds"}
	got, _, err := readToken(context.Background(), opts)
	if err != nil || !slices.Equal(got, token) {
		t.Fatalf("readToken = %x, %v", got, err)
	}
	wantDuring := "eth0 up=true mtu=1500 addrs=[2001:db8::9/64 169.254.169.1/32] routes=[169.254.169.254/32]"
	if !strings.Contains(during, wantDuring) {
		t.Fatalf("while asking MMDS:\n%s\nwant it to contain\n%s", during, wantDuring)
	}
	want := []string{"up eth0", "addr+ eth0 169.254.169.1/32", "route+ eth0 169.254.169.254/32",
		"route- eth0 169.254.169.254/32", "addr- eth0 169.254.169.1/32"}
	if calls := fn.takeCalls(); !slices.Equal(calls, want) {
		t.Fatalf("calls %q, want %q", calls, want)
	}
	if after := fn.state(); after != strings.Replace(before, "eth0 up=false", "eth0 up=true", 1) {
		t.Fatalf("after:\n%s\nbefore:\n%s", after, before)
	}

	// The host's configuration starts from the clean NIC.
	w := networker{ops: fn, linkTimeout: time.Second, resolvConf: filepath.Join(t.TempDir(), "resolv.conf")}
	if _, err := w.apply(context.Background(), *testNetwork()); err != nil {
		t.Fatal(err)
	}
	if s := fn.state(); strings.Contains(s, "169.254.") {
		t.Fatalf("link-local leftovers after the host's configuration: %s", s)
	}
}

func TestReachMMDS(t *testing.T) {
	tmp := mmdsLocalAddr.String()
	tests := []struct {
		name      string
		setup     func(f *fakeNet)
		wantCalls []string // by reachMMDS, then by undo
		wantUndo  []string
		wantErr   string
	}{
		{"no address", func(f *fakeNet) { f.links["eth0"].addrs = nil },
			[]string{"up eth0", "addr+ eth0 " + tmp, "route+ eth0 169.254.169.254/32"},
			[]string{"route- eth0 169.254.169.254/32", "addr- eth0 " + tmp}, ""},
		{"has an address", func(f *fakeNet) {},
			[]string{"up eth0", "route+ eth0 169.254.169.254/32"},
			[]string{"route- eth0 169.254.169.254/32"}, ""},
		{"route exists", func(f *fakeNet) { f.links["eth0"].routes = []netip.Prefix{mmdsRoute} },
			[]string{"up eth0", "route+ eth0 169.254.169.254/32"}, nil, ""},
		{"left by a dead agent", func(f *fakeNet) { f.links["eth0"].addrs = []netip.Prefix{mmdsLocalAddr} },
			[]string{"up eth0", "addr+ eth0 " + tmp, "route+ eth0 169.254.169.254/32"},
			[]string{"route- eth0 169.254.169.254/32", "addr- eth0 " + tmp}, ""},
		{"route fails", func(f *fakeNet) { f.links["eth0"].addrs = nil; f.failOn = "route+" },
			[]string{"up eth0", "addr+ eth0 " + tmp, "route+ eth0 169.254.169.254/32", "addr- eth0 " + tmp}, nil,
			"reach MMDS through eth0: add route to 169.254.169.254/32: fake route+ failure"},
		{"link fails", func(f *fakeNet) { f.failOn = "up" },
			[]string{"up eth0"}, nil, "reach MMDS through eth0: bring it up: fake up failure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fn := newFakeNet()
			tt.setup(fn)
			undo, err := reachMMDS(fn)
			if calls := fn.takeCalls(); !slices.Equal(calls, tt.wantCalls) {
				t.Fatalf("calls %q, want %q", calls, tt.wantCalls)
			}
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("reachMMDS = %v, want %q", err, tt.wantErr)
				}
				if s := fn.state(); strings.Contains(s, tmp) {
					t.Fatalf("left %s behind: %s", tmp, s)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := undo(); err != nil {
				t.Fatal(err)
			}
			if calls := fn.takeCalls(); !slices.Equal(calls, tt.wantUndo) {
				t.Fatalf("undo calls %q, want %q", calls, tt.wantUndo)
			}
		})
	}

	t.Run("no NIC", func(t *testing.T) {
		fn := newFakeNet()
		fn.appear = time.Now().Add(time.Hour)
		if _, err := reachMMDS(fn); !errors.Is(err, errNoLink) {
			t.Fatalf("reachMMDS = %v, want errNoLink", err)
		}
		// The source then counts as missing.
		opts := Options{netOps: fn, inGuest: true, mmdsDial: loopbackDial(), TokenSources: []string{"mmds"}}
		if _, err := readMMDS(context.Background(), "mmds", opts); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("readMMDS = %v, want ErrNotExist", err)
		}
	})
}

func TestCheckTokenSources(t *testing.T) {
	for _, src := range []string{"mmds:ftp://x", "mmds:", "mmds:http://", "mmds:http://h/?q=1"} {
		if err := checkTokenSources([]string{"/run/hearth/token", src}); err == nil {
			t.Errorf("%q accepted", src)
		}
	}
	if err := checkTokenSources([]string{"mmds", "mmds:http://127.0.0.1:8080/", "/x", "cmdline:/proc/cmdline"}); err != nil {
		t.Fatal(err)
	}
	if err := (Options{MMDSURL: "169.254.169.254"}).Validate(); err == nil {
		t.Fatal("a URL without scheme accepted")
	}
}
