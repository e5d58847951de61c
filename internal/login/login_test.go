package login_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/login"
	"github.com/hearth-project/hearth/internal/provider"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vm/vmfake"
)

// testSealer stands in for the vault: it reverses the bytes, which is
// enough to show that what is stored is not the plaintext.
type testSealer struct{ st store.Store }

func reverse(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

func (t testSealer) Put(ctx context.Context, c store.Credential, plain []byte) (store.Credential, error) {
	c.KeyID, c.WrappedKey, c.Sealed = "test", []byte("wrapped"), reverse(plain)
	return c, t.st.PutCredential(ctx, c)
}

func (testSealer) Open(c store.Credential) ([]byte, error) { return reverse(c.Sealed), nil }

// closedViewers records CloseLogin calls.
type closedViewers struct {
	mu  sync.Mutex
	got []string
}

func (c *closedViewers) CloseLogin(vmID, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, vmID+" "+reason)
}

func (c *closedViewers) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

// guestLogin plays the CLI in the fake browser VM: it reports the URL,
// then waits for approve (or the end of the login) and answers with
// creds.
type guestLogin struct {
	approve chan struct{}
	creds   []byte
	err     error
	reqs    chan agentapi.LoginRequest
}

func (g *guestLogin) run(ctx context.Context, vmID string, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error) {
	g.reqs <- req
	progress(agentapi.LoginProgress{Phase: agentapi.LoginStarted})
	progress(agentapi.LoginProgress{Phase: agentapi.LoginOpening, URL: "http://auth.invalid/authorize?client_id=fake"})
	progress(agentapi.LoginProgress{Phase: agentapi.LoginURL, URL: "http://auth.invalid/authorize?client_id=fake"})
	select {
	case <-g.approve:
	case <-ctx.Done():
		return agentapi.LoginResult{}, ctx.Err()
	}
	if g.err != nil {
		return agentapi.LoginResult{}, g.err
	}
	progress(agentapi.LoginProgress{Phase: agentapi.LoginCredentials})
	return agentapi.LoginResult{Files: []agentapi.CapturedFile{{Path: req.Credentials[0].Path, Content: g.creds}}}, nil
}

type fixture struct {
	t       *testing.T
	st      store.Store
	mgr     *vm.Manager
	agents  *vmfake.Agents
	svc     *login.Service
	viewers *closedViewers
	guest   *guestLogin
}

func goodCreds(exp time.Time) []byte {
	return fmt.Appendf(nil, `{"fakeOauth": {"accessToken": "at-SECRET-1", "refreshToken": "rt-SECRET-2", "expiresAt": %d}}`, exp.UnixMilli())
}

func newFixture(t *testing.T, ttl time.Duration, opts ...func(*login.Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, dir+"/hearth.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	if err := st.CreateUser(ctx, store.User{ID: "alice", Name: "alice", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, im := range []store.Image{
		{ID: "b0b0b0b0b0b0b0b0", Name: "browser", Role: "browser"},
		{ID: "c0c0c0c0c0c0c0c0", Name: "workspace", Role: "workspace"},
	} {
		im.KernelPath, im.InitrdPath, im.RootfsPath, im.CreatedAt, im.Status = "/k", "/i", "/r", now, store.ImageVerified
		if err := st.PutImage(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	agents := &vmfake.Agents{}
	log := slog.New(slog.DiscardHandler)
	f := &fixture{t: t, st: st, agents: agents, viewers: &closedViewers{},
		guest: &guestLogin{approve: make(chan struct{}), creds: goodCreds(now.Add(time.Hour)), reqs: make(chan agentapi.LoginRequest, 4)}}
	var svc *login.Service
	f.mgr = vm.New(vm.Config{
		VMsDir: dir + "/vms", Roles: map[string][]int{"browser": {5900}, "workspace": {}},
		DefaultVCPUs: 1, MaxVCPUs: 4, DefaultMemoryMiB: 128, MinMemoryMiB: 64, MaxMemoryMiB: 2048,
		BootTimeout: 5 * time.Second, MaxBootTimeout: time.Minute, StopTimeout: time.Second,
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 2 * time.Second,
	}, vm.Deps{Store: st, Driver: vmfake.NewDriver(), Agents: agents, Network: vmfake.NewNetwork(), Log: log,
		OnTransition: func(v store.VM) {
			if svc != nil {
				svc.OnVMReady(v)
			}
		}})
	agents.SetLogin(f.guest.run)
	reg, err := provider.LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	cfg := login.Config{
		BrowserImage: "browser", VCPUs: 1, MemoryMiB: 256, BootTimeout: 5 * time.Second, TTL: ttl,
		GuestUser: "hearth", WorkspaceUser: "hearth", WorkspaceRole: "workspace", Browser: []string{"/usr/local/bin/hearth-browser"},
		SetupTimeout: 30 * time.Second, PageCheck: "127.0.0.1:9222",
	}
	for _, o := range opts {
		o(&cfg)
	}
	svc = login.New(cfg, login.Deps{Store: st, VMs: f.mgr, Vault: testSealer{st}, Providers: reg, Viewers: f.viewers, Events: f.mgr.Bus(), Log: log})
	f.svc = svc
	if err := f.mgr.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = svc.Shutdown(context.Background())
		_ = f.mgr.Shutdown(context.Background())
	})
	return f
}

// waitState polls the stored login until it is in want.
func (f *fixture) waitState(id string, want store.LoginState) store.Login {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := f.svc.Get(context.Background(), id)
		if err != nil {
			f.t.Fatal(err)
		}
		if l.State == want {
			return l
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("login %s is %s (%s), want %s", id, l.State, l.FailureReason, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *fixture) waitDestroyed(vmID string) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if v, err := f.mgr.Wait(ctx, vmID, store.StateDestroyed); err != nil {
		f.t.Fatalf("browser vm %s not destroyed: %v (%s)", vmID, err, v.State)
	}
}

func (f *fixture) workspace() store.VM {
	f.t.Helper()
	v, err := f.mgr.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "workspace"})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if v, err = f.mgr.Wait(ctx, v.ID, store.StateReady); err != nil {
		f.t.Fatal(err)
	}
	return v
}

// The whole login: states in order, the credential sealed and stored,
// installed into the running workspace, the browser VM gone, its viewers
// closed with the outcome.
func TestLoginCompletes(t *testing.T) {
	f := newFixture(t, time.Minute)
	ws := f.workspace()
	l, existing, err := f.svc.Start(context.Background(), "alice", "fake_cli")
	if err != nil || existing || l.State != store.LoginStarting {
		t.Fatalf("start: %+v %v %v", l, existing, err)
	}
	// One active login per user and provider: asking again returns it.
	again, existing, err := f.svc.Start(context.Background(), "alice", "fake_cli")
	if err != nil || !existing || again.ID != l.ID {
		t.Fatalf("second start: %+v %v %v", again, existing, err)
	}
	req := <-f.guest.reqs
	if req.User != "hearth" || req.Argv[0] != "fakeprovider" || len(req.Steps) != 1 || req.Credentials[0].Path != "~/.fake/credentials.json" {
		t.Fatalf("login request %+v", req)
	}
	// The user's time (the provider's 2m, capped at the login's TTL) is apart
	// from the setup's.
	if req.SetupTimeout != 30*time.Second || req.PageCheck != "127.0.0.1:9222" || req.Timeout != time.Minute {
		t.Fatalf("login request timeouts: setup %s, user %s, page check %q", req.SetupTimeout, req.Timeout, req.PageCheck)
	}
	awaiting := f.waitState(l.ID, store.LoginAwaitingUser)
	if awaiting.BrowserVMID == "" {
		t.Fatal("no browser vm recorded")
	}
	close(f.guest.approve)
	done := f.waitState(l.ID, store.LoginCompleted)
	if done.CredentialID == "" || done.CompletedAt.IsZero() {
		t.Fatalf("completed login %+v", done)
	}
	f.waitDestroyed(done.BrowserVMID)

	c, err := f.st.GetCredential(context.Background(), "alice", "fake_cli")
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != done.CredentialID || c.LoginID != l.ID || !c.Valid || c.ExpiresAt.IsZero() {
		t.Fatalf("credential %+v", c)
	}
	if bytes.Contains(c.Sealed, []byte("SECRET")) {
		t.Fatal("the stored credential holds the plaintext")
	}
	meta, err := f.svc.Credentials(context.Background(), "alice")
	if err != nil || len(meta) != 1 || meta[0].Sealed != nil || meta[0].WrappedKey != nil {
		t.Fatalf("metadata %+v %v", meta, err)
	}

	written := f.agents.Written()
	if len(written) != 1 || written[0].VMID != ws.ID || written[0].User != "hearth" ||
		written[0].Path != "~/.fake/credentials.json" || !bytes.Contains(written[0].Content, []byte("rt-SECRET-2")) {
		t.Fatalf("installed %+v", written)
	}
	if got := f.viewers.list(); len(got) != 1 || got[0] != done.BrowserVMID+" login completed" {
		t.Fatalf("viewers closed: %v", got)
	}

	// Events tell the story, in order.
	evs, err := f.st.ListEvents(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, e := range evs {
		if e.LoginID == l.ID && e.ToState != "" {
			states = append(states, string(e.ToState))
		}
	}
	if got := strings.Join(states, " "); got != "starting awaiting_user capturing completed" {
		t.Fatalf("login events %q", got)
	}

	// A workspace that starts later gets the stored credential too.
	ws2 := f.workspace()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var found bool
		for _, w := range f.agents.Written() {
			found = found || (w.VMID == ws2.ID && bytes.Contains(w.Content, []byte("at-SECRET-1")))
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new workspace %s did not get the credential: %+v", ws2.ID, f.agents.Written())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Cancelling mid-way destroys the browser VM and stores nothing.
func TestLoginCancel(t *testing.T) {
	f := newFixture(t, time.Minute)
	l, _, err := f.svc.Start(context.Background(), "alice", "fake_cli")
	if err != nil {
		t.Fatal(err)
	}
	<-f.guest.reqs
	awaiting := f.waitState(l.ID, store.LoginAwaitingUser)
	got, err := f.svc.Cancel(context.Background(), l.ID)
	if err != nil || got.State != store.LoginCancelled {
		t.Fatalf("cancel: %+v %v", got, err)
	}
	f.waitDestroyed(awaiting.BrowserVMID)
	if _, err := f.st.GetCredential(context.Background(), "alice", "fake_cli"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("credential after cancel: %v", err)
	}
	if _, err := f.svc.Cancel(context.Background(), l.ID); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second cancel: %v", err)
	}
	// A new login may start now.
	if l2, existing, err := f.svc.Start(context.Background(), "alice", "fake_cli"); err != nil || existing || l2.ID == l.ID {
		t.Fatalf("new login after cancel: %+v %v %v", l2, existing, err)
	}
}

// A login nobody finishes expires; its browser VM goes.
func TestLoginExpires(t *testing.T) {
	f := newFixture(t, 1500*time.Millisecond)
	l, _, err := f.svc.Start(context.Background(), "alice", "fake_cli")
	if err != nil {
		t.Fatal(err)
	}
	<-f.guest.reqs
	done := f.waitState(l.ID, store.LoginExpired)
	if !strings.Contains(done.FailureReason, "not completed within") {
		t.Fatalf("reason %q", done.FailureReason)
	}
	f.waitDestroyed(done.BrowserVMID)
}

// Failures say why without showing the credential.
func TestLoginFailures(t *testing.T) {
	t.Run("credential misses a field", func(t *testing.T) {
		f := newFixture(t, time.Minute)
		f.guest.creds = []byte(`{"fakeOauth": {"accessToken": "at-SECRET-1", "expiresAt": 1}}`)
		close(f.guest.approve)
		l, _, err := f.svc.Start(context.Background(), "alice", "fake_cli")
		if err != nil {
			t.Fatal(err)
		}
		done := f.waitState(l.ID, store.LoginFailed)
		if !strings.Contains(done.FailureReason, "fakeOauth.refreshToken") || strings.Contains(done.FailureReason, "SECRET") {
			t.Fatalf("reason %q", done.FailureReason)
		}
		f.waitDestroyed(done.BrowserVMID)
	})
	t.Run("the CLI gives up", func(t *testing.T) {
		f := newFixture(t, time.Minute)
		f.guest.err = &agentapi.RemoteError{Request: "login", Message: "login: the CLI exited (exit status 1) before its credentials were complete"}
		close(f.guest.approve)
		l, _, err := f.svc.Start(context.Background(), "alice", "fake_cli")
		if err != nil {
			t.Fatal(err)
		}
		done := f.waitState(l.ID, store.LoginFailed)
		if !strings.Contains(done.FailureReason, "the CLI exited (exit status 1)") {
			t.Fatalf("reason %q", done.FailureReason)
		}
	})
	t.Run("unknown provider", func(t *testing.T) {
		f := newFixture(t, time.Minute)
		_, _, err := f.svc.Start(context.Background(), "alice", "nope")
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "claude_code, codex, fake_cli, gemini_cli") {
			t.Fatalf("err = %v", err)
		}
	})
}

// Logins left active by a previous daemon fail at start, and their
// browser VMs are destroyed.
func TestRecover(t *testing.T) {
	f := newFixture(t, time.Minute)
	v, err := f.mgr.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "browser"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if _, err := f.st.CreateLogin(context.Background(), store.Login{ID: "lgn_old", UserID: "alice", Provider: "fake_cli",
		State: store.LoginAwaitingUser, BrowserVMID: v.ID, CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	l := f.waitState("lgn_old", store.LoginFailed)
	if !strings.Contains(l.FailureReason, "restarted") {
		t.Fatalf("reason %q", l.FailureReason)
	}
	f.waitDestroyed(v.ID)
}

// Starting logins is rate-limited per user: a burst, then one per
// interval. Answering with the active login, or refusing a bad request,
// costs nothing; another user has their own allowance.
func TestLoginStartRateLimit(t *testing.T) {
	f := newFixture(t, time.Minute, func(c *login.Config) { c.CreateBurst, c.CreateEvery = 2, time.Hour })
	ctx := context.Background()
	if err := f.st.CreateUser(ctx, store.User{ID: "bob", Name: "bob", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		l, existing, err := f.svc.Start(ctx, "alice", "fake_cli")
		if err != nil || existing {
			t.Fatalf("login %d: %+v %v %v", i, l, existing, err)
		}
		if again, existing, err := f.svc.Start(ctx, "alice", "fake_cli"); err != nil || !existing || again.ID != l.ID {
			t.Fatalf("the active login again: %+v %v %v", again, existing, err)
		}
		if _, _, err := f.svc.Start(ctx, "alice", "no_such_cli"); !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("unknown provider: %v", err)
		}
		if _, err := f.svc.Cancel(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := f.svc.Start(ctx, "alice", "fake_cli")
	if !errors.Is(err, errdefs.ErrRateLimited) {
		t.Fatalf("third login within the hour: %v, want rate limited", err)
	}
	if wait, ok := errdefs.RetryAfter(err); !ok || wait < 59*time.Minute || wait > time.Hour {
		t.Fatalf("retry after %s (%v), want about an hour", wait, ok)
	}
	if msg := errdefs.Public(err); !strings.Contains(msg, "too many logins") || !strings.Contains(msg, "one every 1h0m0s") {
		t.Fatalf("message %q", msg)
	}
	if ls, err := f.st.ListLogins(ctx, store.LoginFilter{UserID: "alice"}); err != nil || len(ls) != 2 {
		t.Fatalf("alice has %d logins (%v), want the 2 allowed", len(ls), err)
	}
	if _, existing, err := f.svc.Start(ctx, "bob", "fake_cli"); err != nil || existing {
		t.Fatalf("bob's login: %v %v", existing, err)
	}
}
