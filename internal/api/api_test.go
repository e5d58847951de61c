package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/hearth-project/hearth/api"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	apispec "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/httplimit"
	"github.com/hearth-project/hearth/internal/imagebuild"
	"github.com/hearth-project/hearth/internal/imagereg"
	"github.com/hearth-project/hearth/internal/login"
	"github.com/hearth-project/hearth/internal/provider"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/terminal"
	"github.com/hearth-project/hearth/internal/viewer"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vm/vmfake"
	"github.com/hearth-project/hearth/internal/workapi"
)

type fixture struct {
	t      *testing.T
	dir    string             // holds the database, hearth.db
	conns  *httplimit.Limiter // with limits only
	srv    *httptest.Server
	api    *api.Server
	st     store.Store
	agents *vmfake.Agents
	// work is the guests' work API (nil with fixtureOptions.noData).
	work   *workAgents
	net    *vmfake.Network
	admin  string
	alice  string
	bob    string
	router routers.Router
	spec   *openapi3.T
	mgr    *vm.Manager
	driver *vmfake.Driver
	vmsDir string
	vnc    *fakeVNC
	guest  *fakeGuestLogin
	logs   *syncBuffer
	clock  *testClock // the Verifier's: key expiry is checked against it
	dbPath string
	images *imagereg.Registry
	builds *imagebuild.Service
	// built steers the default image build function (fixtureOptions.build).
	built *gatedBuilds
}

// testClock is the real time plus an offset a test may advance.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// fixtureOptions change the server a fixture runs.
type fixtureOptions struct {
	maxStreams int
	loginBurst int
	loginEvery time.Duration
	// limits, if set, serve the API on the daemon's HTTP server stack
	// with them (else on a plain test server).
	limits *httplimit.Config
	// vm adjusts the manager's configuration.
	vm func(*vm.Config)
	// vmStore, if set, wraps the store the manager is given.
	vmStore func(store.Store) store.Store
	// build, if set, is the image build service's build function (else
	// the fixture's gatedBuilds).
	build imagebuild.Func
	// noData gives VMs no data channel (no work API), as a VM started
	// by an older hearth has none.
	noData bool
}

// withVM adjusts the fixture manager's configuration.
func withVM(f func(*vm.Config)) func(*fixtureOptions) {
	return func(o *fixtureOptions) { o.vm = f }
}

// newFixtureWith serves the API on the daemon's HTTP server stack with
// limits.
func newFixtureWith(t *testing.T, limits *httplimit.Config) *fixture {
	t.Helper()
	return newFixture(t, func(o *fixtureOptions) { o.limits = limits })
}

func newFixture(t *testing.T, opts ...func(*fixtureOptions)) *fixture {
	t.Helper()
	var o fixtureOptions
	for _, f := range opts {
		f(&o)
	}
	dir := t.TempDir()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, dir+"/hearth.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	for _, u := range []string{"alice", "bob"} {
		if err := st.CreateUser(ctx, store.User{ID: u, Name: u, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutImage(ctx, store.Image{ID: "0123456789abcdef0123", Name: "minimal", Role: "minimal",
		KernelPath: "/k", InitrdPath: "/i", RootfsPath: "/r", CreatedAt: now, Status: store.ImageVerified}); err != nil {
		t.Fatal(err)
	}
	key := func(scope store.Scope, user string) string {
		k, rec, err := auth.NewKey("test", scope, user, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.CreateAPIKey(ctx, rec); err != nil {
			t.Fatal(err)
		}
		return k
	}
	for _, im := range []store.Image{{ID: "b0b0b0b0b0b0b0b0b0b0", Name: "browser", Role: "browser"}, {ID: "c0c0c0c0c0c0c0c0c0c0", Name: "workspace", Role: "workspace"}} {
		im.KernelPath, im.InitrdPath, im.RootfsPath, im.CreatedAt, im.Status = "/k", "/i", "/r", now, store.ImageVerified
		if err := st.PutImage(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	agents := &vmfake.Agents{}
	netw := vmfake.NewNetwork()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// Guests' VNC servers are one loopback fake; the manager still decides
	// whether a VM may be viewed.
	vnc := newFakeVNC(t)
	var mgr *vm.Manager
	var logins *login.Service
	signer, err := viewer.NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	viewers := viewer.NewService(viewer.Config{PingInterval: time.Second}, signer, st, func(ctx context.Context, id string) (string, error) {
		if _, err := mgr.GuestAddr(ctx, id, 5900); err != nil {
			return "", err
		}
		return vnc.addr(), nil
	}, log)
	t.Cleanup(func() { _ = viewers.Shutdown(context.Background()) })
	tsigner, err := viewer.NewSigner(terminal.LinkKey([]byte("0123456789abcdef0123456789abcdef")))
	if err != nil {
		t.Fatal(err)
	}
	terminals := terminal.NewService(terminal.Config{}, viewer.NewService(viewer.Config{PingInterval: time.Second}, tsigner, st, nil, log),
		func(ctx context.Context, id string) (*workapi.Client, error) { return mgr.Work(ctx, id) }, log)
	t.Cleanup(func() { _ = terminals.Shutdown(context.Background()) })
	cfg := vm.Config{
		VMsDir: dir + "/vms", Roles: map[string][]int{"minimal": {}, "browser": {5900}, "workspace": {}},
		DefaultVCPUs: 1, MaxVCPUs: 4, DefaultMemoryMiB: 128, MinMemoryMiB: 64, MaxMemoryMiB: 2048,
		BootTimeout: 5 * time.Second, MaxBootTimeout: time.Minute, StopTimeout: time.Second,
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 2 * time.Second,
	}
	if o.vm != nil {
		o.vm(&cfg)
	}
	driver := vmfake.NewDriver()
	var mgrStore store.Store = st
	if o.vmStore != nil {
		mgrStore = o.vmStore(st)
	}
	var dialer vm.AgentDialer = agents
	var work *workAgents
	if !o.noData {
		work = newWorkAgents(t, agents)
		dialer = work
	}
	mgr = vm.New(cfg, vm.Deps{Store: mgrStore, Driver: driver, Agents: dialer, Network: netw, Log: log,
		OnTransition: func(v store.VM) {
			viewers.OnTransition(v, time.Hour)
			terminals.OnTransition(v, time.Hour)
			if logins != nil {
				logins.OnVMReady(v)
			}
		}})
	guest := newFakeGuestLogin()
	agents.SetLogin(guest.run)
	reg, err := provider.LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	logins = login.New(login.Config{BrowserImage: "browser", VCPUs: 1, MemoryMiB: 256, BootTimeout: 5 * time.Second, TTL: time.Minute,
		GuestUser: "hearth", WorkspaceUser: "hearth", WorkspaceRole: "workspace", Browser: []string{"/usr/local/bin/hearth-browser"},
		CreateBurst: o.loginBurst, CreateEvery: o.loginEvery},
		login.Deps{Store: st, VMs: mgr, Vault: reverseSealer{st}, Providers: reg, Viewers: viewers, Events: mgr.Bus(), Log: log})
	t.Cleanup(func() { _ = logins.Shutdown(context.Background()) })
	if err := mgr.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mgr.Shutdown(context.Background()) })
	images := &imagereg.Registry{Store: st, ImageDir: dir + "/images", CacheDir: dir + "/cache"}
	if err := os.MkdirAll(images.ImageDir, 0o755); err != nil {
		t.Fatal(err)
	}
	built := newGatedBuilds(st)
	buildFn := o.build
	if buildFn == nil {
		buildFn = built.build
	}
	agent := dir + "/hearth-agent"
	if err := os.WriteFile(agent, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	builds, err := imagebuild.New(imagebuild.Config{LogDir: dir + "/builds", Agent: func() (string, error) { return agent, nil }},
		imagebuild.Deps{Build: buildFn, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = builds.Shutdown(context.Background()) })
	clock := &testClock{}
	a := &api.Server{Images: images, Builds: builds, VMs: mgr, Store: st, Verifier: &auth.Verifier{Keys: st, Now: clock.Now}, Log: log, Version: "test",
		Ready: func() bool { return true }, Viewers: viewers, Logins: logins, Providers: reg, ViewerOptions: api.ViewerOptions{
			DefaultTTL: 15 * time.Minute, MaxTTL: time.Hour, VNCPort: 5900, Assets: testAssets}, MaxStreams: o.maxStreams,
		Terminals: terminals, TerminalOptions: api.TerminalOptions{TTL: time.Hour, Assets: testAssets}}
	t.Cleanup(func() { _ = a.Verifier.Close(context.Background()) }) // before the store closes
	var srv *httptest.Server
	var conns *httplimit.Limiter
	if limits := o.limits; limits == nil {
		srv = httptest.NewServer(a.Handler())
	} else {
		a.WriteTimeout, a.ReadTimeout = limits.WriteTimeout, limits.ReadTimeout
		hs, lim := limits.Server(a.Handler(), log)
		srv = httptest.NewUnstartedServer(nil)
		srv.Config, srv.Listener = hs, lim.Listener(srv.Listener)
		srv.Start()
		conns = lim
	}
	t.Cleanup(srv.Close)

	loader := openapi3.NewLoader()
	spec, err := loader.LoadFromData(apispec.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := spec.Validate(ctx); err != nil {
		t.Fatalf("openapi.yaml is not valid OpenAPI: %v", err)
	}
	spec.Servers = openapi3.Servers{{URL: srv.URL}}
	router, err := gorillamux.NewRouter(spec)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, dir: dir, srv: srv, conns: conns, api: a, st: st, agents: agents, work: work, net: netw,
		admin: key(store.ScopeAdmin, ""), alice: key(store.ScopeUser, "alice"), bob: key(store.ScopeUser, "bob"),
		router: router, spec: spec, mgr: mgr, driver: driver, vmsDir: cfg.VMsDir, vnc: vnc, guest: guest, logs: logs,
		clock: clock, dbPath: dir + "/hearth.db", images: images, builds: builds, built: built}
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("decode %s: %v", a.body, err)
	}
}

func (a answer) errCode() string {
	var e struct {
		Error struct{ Code, Message string }
	}
	_ = json.Unmarshal(a.body, &e)
	return e.Error.Code
}

func (a answer) errMessage() string {
	var e struct {
		Error struct{ Code, Message string }
	}
	_ = json.Unmarshal(a.body, &e)
	return e.Error.Message
}

// do sends a request to f's API with key and a JSON body (each optional)
// and checks the exchange against openapi.yaml.
func (f *fixture) do(method, path, key string, body string) answer {
	f.t.Helper()
	hdr := http.Header{}
	if body != "" {
		hdr.Set("Content-Type", "application/json")
	}
	if key != "" {
		hdr.Set("Authorization", "Bearer "+key)
	}
	return f.request(method, f.srv.URL, path, hdr, body)
}

// request sends a request with hdr and body (optional) to base, the URL
// of f's API or of a variant of it, and checks the exchange against
// openapi.yaml.
func (f *fixture) request(method, base, path string, hdr http.Header, body string) answer {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	ans := answer{status: resp.StatusCode, header: resp.Header, body: b}
	// The spec's server is f.srv; a variant's routes and schemas are the same.
	check := req.Clone(context.Background())
	check.URL.Scheme, check.URL.Host = "http", strings.TrimPrefix(f.srv.URL, "http://")
	f.checkSpec(check, body, ans)
	return ans
}

// variant serves a copy of f's API that change adjusts, and returns its
// base URL.
func (f *fixture) variant(change func(*api.Server)) string {
	f.t.Helper()
	a := *f.api
	change(&a)
	srv := httptest.NewServer(a.Handler())
	f.t.Cleanup(srv.Close)
	return srv.URL
}

// checkSpec validates an exchange against the OpenAPI description: the
// route and status must be documented, and the body must match the schema.
func (f *fixture) checkSpec(req *http.Request, body string, ans answer) {
	f.t.Helper()
	find := req
	if rest, ok := strings.CutPrefix(req.URL.Path, "/viewer/assets/"); ok && strings.Contains(rest, "/") {
		// OpenAPI path parameters cannot hold slashes; {path...} can.
		find = req.Clone(context.Background())
		find.URL.Path = "/viewer/assets/" + strings.ReplaceAll(rest, "/", "_")
	}
	route, params, err := f.router.FindRoute(find)
	if err != nil {
		if ans.status == http.StatusNotFound || ans.status == http.StatusMethodNotAllowed || ans.status == http.StatusUnauthorized {
			return // undocumented routes answer 401/404/405 generically
		}
		f.t.Fatalf("%s %s answered %d but is not in openapi.yaml: %v", req.Method, req.URL.Path, ans.status, err)
	}
	if body != "" {
		req.Body = io.NopCloser(strings.NewReader(body))
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: ans.status, Header: ans.header,
		Body: io.NopCloser(bytes.NewReader(ans.body)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		f.t.Fatalf("%s %s -> %d does not match openapi.yaml: %v\nbody: %s", req.Method, req.URL, ans.status, err, ans.body)
	}
}

func (f *fixture) createVM(key, body string) vmJSON {
	f.t.Helper()
	a := f.do("POST", "/v1/vms", key, body)
	if a.status != http.StatusAccepted {
		f.t.Fatalf("create: %d %s", a.status, a.body)
	}
	var v vmJSON
	a.json(f.t, &v)
	return v
}

// vmJSON is a VM as the API answers it.
type vmJSON = v1.VM

func TestRoutesMatchSpec(t *testing.T) {
	f := newFixture(t)
	documented := map[string]bool{}
	for path, item := range f.spec.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	served := map[string]bool{}
	for _, r := range f.api.Routes() {
		r.Path = strings.ReplaceAll(r.Path, "...}", "}") // {path...} is {path} in OpenAPI
		served[r.Method+" "+r.Path] = true
		if !documented[r.Method+" "+r.Path] {
			t.Errorf("route %s %s is served but not in api/openapi.yaml", r.Method, r.Path)
		}
	}
	for k := range documented {
		if !served[k] {
			t.Errorf("openapi.yaml documents %s, which the server does not serve", k)
		}
	}
	// And the served document is the embedded one.
	a := f.do("GET", "/v1/openapi.yaml", f.admin, "")
	if a.status != 200 || !bytes.Equal(a.body, apispec.OpenAPI) {
		t.Fatalf("GET /v1/openapi.yaml: %d", a.status)
	}
}

func TestAuthRequiredEverywhereButPublicRoutes(t *testing.T) {
	f := newFixture(t)
	if a := f.do("GET", "/healthz", "", ""); a.status != 200 {
		t.Fatalf("/healthz without a key: %d", a.status)
	}
	wrong := "hearth_aaaaaaaaaaaaaaaa_" + strings.Repeat("b", 52)
	for _, r := range f.api.Routes() {
		if r.Public {
			continue // checked with their own tokens in viewer_test.go
		}
		path := strings.ReplaceAll(r.Path, "{id}", "vm-x")
		for name, key := range map[string]string{"missing": "", "wrong": wrong, "garbage": "not-a-key"} {
			a := f.do(r.Method, path, key, "")
			if a.status != http.StatusUnauthorized || a.errCode() != "unauthorized" {
				t.Errorf("%s %s with %s key: %d %s", r.Method, path, name, a.status, a.body)
			}
		}
	}
	// Unknown routes do not reveal themselves to unauthenticated callers.
	if a := f.do("GET", "/v1/nope", "", ""); a.status != http.StatusUnauthorized {
		t.Errorf("unknown route without key: %d", a.status)
	}
	if a := f.do("GET", "/v1/nope", f.admin, ""); a.status != http.StatusNotFound || a.errCode() != "not_found" {
		t.Errorf("unknown route with key: %d %s", a.status, a.body)
	}
	if a := f.do("PUT", "/v1/vms", f.admin, ""); a.status != http.StatusMethodNotAllowed || a.errCode() != "method_not_allowed" {
		t.Errorf("wrong method: %d %s", a.status, a.body)
	}
}

func TestUserKeysSeeOnlyTheirOwnVMs(t *testing.T) {
	f := newFixture(t)
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	if v.User != "alice" {
		t.Fatalf("owner %q", v.User)
	}
	for _, p := range []struct{ method, path string }{
		{"GET", "/v1/vms/" + v.ID}, {"DELETE", "/v1/vms/" + v.ID},
		{"GET", "/v1/vms/" + v.ID + "/wait?timeout=1s"}, {"GET", "/v1/vms/" + v.ID + "/console"},
	} {
		a := f.do(p.method, p.path, f.bob, "")
		if a.status != http.StatusNotFound || a.errCode() != "not_found" {
			t.Errorf("bob %s %s: %d %s", p.method, p.path, a.status, a.body)
		}
	}
	var list struct{ VMs []vmJSON }
	f.do("GET", "/v1/vms", f.bob, "").json(t, &list)
	if len(list.VMs) != 0 {
		t.Fatalf("bob sees %d vms", len(list.VMs))
	}
	f.do("GET", "/v1/vms", f.alice, "").json(t, &list)
	if len(list.VMs) != 1 {
		t.Fatalf("alice sees %d vms", len(list.VMs))
	}
	f.do("GET", "/v1/vms", f.admin, "").json(t, &list)
	if len(list.VMs) != 1 {
		t.Fatalf("admin sees %d vms", len(list.VMs))
	}
	// A user key cannot create for someone else.
	if a := f.do("POST", "/v1/vms", f.bob, `{"image":"minimal","user":"alice"}`); a.status != 400 {
		t.Fatalf("bob creating for alice: %d %s", a.status, a.body)
	}
	// Alice still deletes her own.
	if a := f.do("DELETE", "/v1/vms/"+v.ID, f.alice, ""); a.status != http.StatusAccepted {
		t.Fatalf("alice delete: %d %s", a.status, a.body)
	}
}

func TestBadInputIsA400AndCreatesNothing(t *testing.T) {
	f := newFixture(t)
	cases := []struct{ name, body, want string }{
		{"malformed", `{"image":`, "malformed JSON"},
		{"not json", `image=minimal`, "malformed JSON"},
		{"empty", ``, "request body is empty"},
		{"unknown field", `{"image":"minimal","cpus":2}`, `unknown field "cpus"`},
		{"wrong type", `{"image":"minimal","vcpus":"two"}`, `field "vcpus" must be an integer`},
		{"array", `[]`, "must be a JSON object"},
		{"two objects", `{"image":"minimal"}{"image":"minimal"}`, "single JSON object"},
		{"vcpus out of range", `{"image":"minimal","vcpus":64,"user":"alice"}`, "vcpus must be between 1 and 4"},
		{"memory out of range", `{"image":"minimal","memory_mib":8,"user":"alice"}`, "memory_mib must be between 64 and 2048"},
		{"unknown image", `{"image":"ubuntu","user":"alice"}`, `unknown image "ubuntu"`},
		{"unknown role", `{"image":"minimal","role":"db","user":"alice"}`, `unknown role "db"`},
		{"unknown user", `{"image":"minimal","user":"carol"}`, `unknown user "carol"`},
		{"admin without user", `{"image":"minimal"}`, "user is required"},
		{"negative timeout", `{"image":"minimal","user":"alice","boot_timeout_seconds":-1}`, `field "boot_timeout_seconds" must be between 0 and 86400`},
		{"bad egress mode", `{"image":"minimal","user":"alice","network":{"egress":{"mode":"wide"}}}`, `field "network.egress.mode" must be one of open, none, allowlist`},
		{"unknown nested field", `{"image":"minimal","user":"alice","network":{"egres":{}}}`, `unknown field "network.egres"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", f.srv.URL+"/v1/vms", strings.NewReader(c.body))
			req.Header.Set("Authorization", "Bearer "+f.admin)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			a := answer{status: resp.StatusCode, body: b}
			if a.status != 400 || a.errCode() != "invalid_argument" || !strings.Contains(a.errMessage(), c.want) {
				t.Fatalf("%d %s; want 400 saying %q", a.status, b, c.want)
			}
		})
	}
	vms, err := f.st.ListVMs(context.Background(), store.VMFilter{IncludeDestroyed: true})
	if err != nil || len(vms) != 0 {
		t.Fatalf("bad input left %d vms", len(vms))
	}
	// Wrong content type.
	req, _ := http.NewRequest("POST", f.srv.URL+"/v1/vms", strings.NewReader(`{"image":"minimal"}`))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("text/plain body: %d", resp.StatusCode)
	}
	// Bad query parameters.
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	for _, q := range []string{"/wait?state=running", "/wait?timeout=forever", "/wait?timeout=20m", "/console?offset=-1", "/console?follow=maybe"} {
		if a := f.do("GET", "/v1/vms/"+v.ID+q, f.alice, ""); a.status != 400 {
			t.Errorf("%s: %d %s", q, a.status, a.body)
		}
	}
	if a := f.do("GET", "/v1/events?since=x", f.alice, ""); a.status != 400 {
		t.Errorf("events since=x: %d", a.status)
	}
}

func TestWaitReadyAndDelete(t *testing.T) {
	f := newFixture(t)
	v := f.createVM(f.alice, `{"image":"minimal","vcpus":2,"memory_mib":256}`)
	a := f.do("GET", "/v1/vms/"+v.ID+"/wait?state=ready&timeout=10s", f.alice, "")
	if a.status != 200 {
		t.Fatalf("wait: %d %s", a.status, a.body)
	}
	var got vmJSON
	a.json(t, &got)
	if got.State != "ready" || got.Agent.Version != "fake-1" {
		t.Fatalf("ready vm: %s", a.body)
	}
	if a := f.do("DELETE", "/v1/vms/"+v.ID, f.alice, ""); a.status != 202 {
		t.Fatalf("delete: %d", a.status)
	}
	if a := f.do("GET", "/v1/vms/"+v.ID+"/wait?state=destroyed&timeout=10s", f.alice, ""); a.status != 200 {
		t.Fatalf("wait destroyed: %d %s", a.status, a.body)
	}
	if a := f.do("DELETE", "/v1/vms/"+v.ID, f.alice, ""); a.status != 202 {
		t.Fatalf("delete again (idempotent): %d", a.status)
	}
	if a := f.do("GET", "/v1/vms/"+v.ID+"/wait?state=ready&timeout=1s", f.alice, ""); a.status != 409 {
		t.Fatalf("waiting for ready on a destroyed vm: %d", a.status)
	}
	if a := f.do("GET", "/v1/vms/vm-doesnotexist", f.alice, ""); a.status != 404 {
		t.Fatalf("unknown vm: %d", a.status)
	}
}

func TestFailedVMCarriesReasonAndConsoleTail(t *testing.T) {
	f := newFixture(t)
	f.agents.SetBehaviour(vmfake.GuestPortsStuck)
	v := f.createVM(f.alice, `{"image":"minimal","role":"browser","boot_timeout_seconds":1}`)
	a := f.do("GET", "/v1/vms/"+v.ID+"/wait?state=ready&timeout=10s", f.alice, "")
	if a.status != http.StatusConflict {
		t.Fatalf("wait on failing vm: %d %s", a.status, a.body)
	}
	var e struct {
		Error struct{ Code, Message string }
		VM    vmJSON
	}
	a.json(t, &e)
	if e.VM.State != "failed" || !strings.Contains(e.Error.Message, "5900") || e.VM.ConsoleTail == nil ||
		!strings.Contains(*e.VM.ConsoleTail, "fake init") {
		t.Fatalf("failure answer lacks reason or console tail: %s", a.body)
	}
	// Timeout answer: 408 with the VM as it is.
	f.agents.SetBehaviour(vmfake.GuestSilent)
	w := f.createVM(f.alice, `{"image":"minimal"}`)
	if a := f.do("GET", "/v1/vms/"+w.ID+"/wait?timeout=1s", f.alice, ""); a.status != http.StatusRequestTimeout || a.errCode() != "wait_timeout" {
		t.Fatalf("wait timeout: %d %s", a.status, a.body)
	}
}

func TestConsoleOffsets(t *testing.T) {
	f := newFixture(t)
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")
	a := f.awaitConsole(v.ID, 30)
	if a.status != 200 || string(a.body) != "fake kernel booting\nfake init\n" {
		t.Fatalf("console: %d %q", a.status, a.body)
	}
	if a.header.Get("X-Console-Size") != "30" {
		t.Fatalf("size header %q", a.header.Get("X-Console-Size"))
	}
	a = f.do("GET", "/v1/vms/"+v.ID+"/console?offset=20", f.alice, "")
	if string(a.body) != "fake init\n" {
		t.Fatalf("console from 20: %q", a.body)
	}
	// follow streams until the VM is destroyed.
	resp := f.stream(t.Context(), f.srv.URL, "/v1/vms/"+v.ID+"/console?follow=1&offset=20", f.alice, "")
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "fake init\n" {
		t.Fatalf("follow: %q %v", line, err)
	}
	f.do("DELETE", "/v1/vms/"+v.ID, f.alice, "")
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("console follow did not end after the vm was destroyed")
	}
}

func TestEventsStreamReplaysAndFollows(t *testing.T) {
	f := newFixture(t)
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")
	other := f.createVM(f.bob, `{"image":"minimal"}`)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp := f.stream(ctx, f.srv.URL, "/v1/events?since=0", f.alice, "")
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	f.do("DELETE", "/v1/vms/"+v.ID, f.alice, "")
	sc := bufio.NewScanner(resp.Body)
	var states []string
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var e struct {
			VM      string `json:"vm"`
			ToState string `json:"to_state"`
		}
		if err := json.Unmarshal([]byte(data), &e); err != nil {
			t.Fatal(err)
		}
		if e.VM == other.ID {
			t.Fatal("alice received an event about bob's vm")
		}
		states = append(states, e.ToState)
		if e.ToState == "destroyed" {
			break
		}
	}
	got := strings.Join(states, " ")
	if got != "pending booting ready stopping stopped destroyed" {
		t.Fatalf("events %q", got)
	}
}

func TestHostAndImagesAndReadyz(t *testing.T) {
	f := newFixture(t)
	if a := f.do("GET", "/readyz", f.alice, ""); a.status != 200 {
		t.Fatalf("readyz %d", a.status)
	}
	if a := f.do("GET", "/v1/host", f.alice, ""); a.status != 200 {
		t.Fatalf("host %d", a.status)
	}
	var imgs struct{ Images []struct{ Name string } }
	f.do("GET", "/v1/images", f.alice, "").json(t, &imgs)
	if len(imgs.Images) != 3 || imgs.Images[0].Name != "minimal" || imgs.Images[1].Name != "browser" || imgs.Images[2].Name != "workspace" {
		t.Fatalf("images %+v", imgs)
	}
}

func TestExec(t *testing.T) {
	f := newFixture(t)
	f.agents.SetBehaviour(vmfake.GuestSilent)
	booting := f.createVM(f.alice, `{"image":"minimal"}`)
	if a := f.do("POST", "/v1/vms/"+booting.ID+"/exec", f.alice, `{"argv":["echo","hi"]}`); a.status != http.StatusConflict {
		t.Fatalf("exec on a booting vm: %d %s", a.status, a.body)
	}
	f.agents.SetBehaviour(vmfake.GuestReady)
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")
	a := f.do("POST", "/v1/vms/"+v.ID+"/exec", f.alice, `{"argv":["echo","hello","guest"]}`)
	var res struct {
		ExitCode int `json:"exit_code"`
		Stdout   string
	}
	a.json(t, &res)
	if a.status != 200 || res.ExitCode != 0 || res.Stdout != "hello guest\n" {
		t.Fatalf("exec: %d %s", a.status, a.body)
	}
	for _, body := range []string{`{"argv":[]}`, `{"argv":["echo"],"timeout_seconds":9999}`, `{"cmd":"ls"}`} {
		if a := f.do("POST", "/v1/vms/"+v.ID+"/exec", f.alice, body); a.status != 400 {
			t.Errorf("%s: %d %s", body, a.status, a.body)
		}
	}
	if a := f.do("POST", "/v1/vms/"+v.ID+"/exec", f.bob, `{"argv":["echo"]}`); a.status != 404 {
		t.Errorf("bob exec in alice's vm: %d", a.status)
	}
}

func TestEgressValidation(t *testing.T) {
	f := newFixture(t)
	if a := f.do("POST", "/v1/vms", f.alice, `{"image":"minimal","network":{"egress":{"mode":"sometimes"}}}`); a.status != 400 ||
		!strings.Contains(a.errMessage(), "network.egress") {
		t.Fatalf("bad egress: %d %s", a.status, a.body)
	}
	v := f.createVM(f.alice, `{"image":"minimal","network":{"egress":{"mode":"none"}}}`)
	a := f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")
	var got struct {
		Network struct {
			Address string
			Egress  struct{ Mode string }
		}
	}
	a.json(t, &got)
	if got.Network.Address == "" || got.Network.Egress.Mode != "none" {
		t.Fatalf("network in answer: %s", a.body)
	}
}

func TestFullAddressPoolIs503AndLeavesNothing(t *testing.T) {
	f := newFixture(t)
	f.net.SetCapacity(2)
	a := f.createVM(f.alice, `{"image":"minimal"}`)
	f.createVM(f.alice, `{"image":"minimal"}`)
	ans := f.do("POST", "/v1/vms", f.alice, `{"image":"minimal"}`)
	if ans.status != http.StatusServiceUnavailable || ans.errCode() != "unavailable" || !strings.Contains(ans.errMessage(), "no free address") {
		t.Fatalf("full pool: %d %s", ans.status, ans.body)
	}
	vms, _ := f.st.ListVMs(context.Background(), store.VMFilter{IncludeDestroyed: true})
	if len(vms) != 2 {
		t.Fatalf("a refused create left a vm behind: %d vms", len(vms))
	}
	// The address is in the answer from the start.
	var got struct{ Network struct{ Address string } }
	f.do("GET", "/v1/vms/"+a.ID, f.alice, "").json(t, &got)
	if got.Network.Address == "" {
		t.Fatal("no address on a created vm")
	}
	// Freeing one makes room again.
	f.do("DELETE", "/v1/vms/"+a.ID, f.alice, "")
	f.do("GET", "/v1/vms/"+a.ID+"/wait?state=destroyed&timeout=10s", f.alice, "")
	f.createVM(f.alice, `{"image":"minimal"}`)
}

// A server run without logins or viewers answers their routes 503, saying
// which is off, instead of failing inside them.
func TestDisabledSubsystemsAre503(t *testing.T) {
	f := newFixture(t)
	v := f.createVM(f.alice, `{"image":"browser"}`)
	off := f.variant(func(a *api.Server) { a.Logins, a.Viewers = nil, nil })
	hdr := http.Header{"Authorization": {"Bearer " + f.alice}, "Content-Type": {"application/json"}}
	for _, c := range []struct{ method, path, body, want string }{
		{"POST", "/v1/logins", `{"provider":"fake_cli"}`, "logins are not enabled"},
		{"GET", "/v1/logins", "", "logins are not enabled"},
		{"GET", "/v1/logins/login-x", "", "logins are not enabled"},
		{"GET", "/v1/credentials", "", "logins are not enabled"},
		{"POST", "/api/auth/start", `{"provider":"fake_cli"}`, "logins are not enabled"},
		{"GET", "/api/auth/credentials/alice", "", "logins are not enabled"},
		{"POST", "/v1/vms/" + v.ID + "/viewer", "", "viewers are not enabled"},
		{"DELETE", "/v1/vms/" + v.ID + "/viewers", "", "viewers are not enabled"},
		{"POST", "/v1/vms/" + v.ID + "/viewer/ticket", "", "viewers are not enabled"},
		{"GET", "/v1/vms/" + v.ID + "/viewer/socket", "", "viewers are not enabled"},
	} {
		a := f.request(c.method, off, c.path, hdr, c.body)
		if a.status != http.StatusServiceUnavailable || a.errCode() != "unavailable" || !strings.Contains(a.errMessage(), c.want) {
			t.Errorf("%s %s: %d %s; want 503 saying %q", c.method, c.path, a.status, a.body, c.want)
		}
	}
}

// TestAdminOnlyOperationsRefuseUserKeysFirst: every operation the document
// marks x-hearth-admin answers a user key 403, before its parameters or
// body are looked at (a malformed body is no 400 for it).
func TestAdminOnlyOperationsRefuseUserKeysFirst(t *testing.T) {
	f := newFixture(t)
	n := 0
	for path, item := range f.spec.Paths.Map() {
		for method, op := range item.Operations() {
			what, ok := op.Extensions["x-hearth-admin"].(string)
			if !ok {
				continue
			}
			n++
			target := strings.NewReplacer("{id}", "nosuch").Replace(path) + "?since=bogus"
			a := f.request(method, f.srv.URL, target, http.Header{"Authorization": {"Bearer " + f.alice},
				"Content-Type": {"application/json"}}, `{"malformed`)
			if a.status != http.StatusForbidden || a.errCode() != "forbidden" || a.errMessage() != "only admin keys "+what {
				t.Errorf("%s %s with a user key: %d %s", method, path, a.status, a.body)
			}
		}
	}
	if n < 8 {
		t.Fatalf("only %d operations are marked admin-only", n)
	}
}
