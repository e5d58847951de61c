// Package login runs provider logins: it boots a browser VM for the user,
// has the guest agent run the provider CLI's login there while the user
// finishes the sign-in through a viewer, checks and seals the credential
// the CLI wrote, stores it, installs it into the user's workspace VMs and
// destroys the browser VM. Every state change is stored with an event;
// nothing waits on a fixed sleep.
package login

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/provider"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/tokenbucket"
	"github.com/hearth-project/hearth/internal/vm"
)

// Config says how logins run.
type Config struct {
	// BrowserImage boots the browser VM (role browser); it must contain
	// the providers' CLIs.
	BrowserImage string
	VCPUs        int
	MemoryMiB    int
	BootTimeout  time.Duration
	// TTL bounds a whole login, from the request to the stored
	// credential; past it the login is expired.
	TTL time.Duration
	// GuestUser runs the CLI in the browser VM; WorkspaceUser owns the
	// installed credentials in workspace VMs.
	GuestUser     string
	WorkspaceUser string
	// WorkspaceRole is the role of the VMs credentials are installed into.
	WorkspaceRole string
	// Browser opens a URL in the browser VM's screen.
	Browser []string
	// SetupTimeout bounds bringing the sign-in page up in the browser VM
	// (from the CLI's start to the page on screen); the provider's own
	// timeout, the user's time, runs only from then on.
	SetupTimeout time.Duration
	// PageCheck is the guest browser's DevTools endpoint (HOST:PORT on the
	// guest's loopback) through which the agent sees the page on screen;
	// "" counts the page as shown once the browser command has run.
	PageCheck string
	// CreateBurst logins a user may start at once, and one more every
	// CreateEvery after that (a token bucket per user); more are refused
	// with a rate-limit error. Either zero: no limit.
	CreateBurst int
	CreateEvery time.Duration
}

// VMs is what logins need of the lifecycle manager (*vm.Manager).
type VMs interface {
	Create(ctx context.Context, req vm.CreateRequest) (store.VM, error)
	Get(ctx context.Context, id string) (store.VM, error)
	List(ctx context.Context, f store.VMFilter) ([]store.VM, error)
	Wait(ctx context.Context, id string, target store.State) (store.VM, error)
	Delete(ctx context.Context, id string) (store.VM, error)
	Login(ctx context.Context, id string, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error)
	WriteFile(ctx context.Context, id string, req agentapi.WriteFileRequest) error
}

// Vault seals and stores credentials, and opens them (internal/vault).
type Vault interface {
	// Put seals plaintext into c and stores it, replacing the user's
	// record for c.Provider; it returns the stored record.
	Put(ctx context.Context, c store.Credential, plaintext []byte) (store.Credential, error)
	Open(c store.Credential) ([]byte, error)
}

// ViewerCloser closes a VM's viewers with a reason (internal/viewer).
type ViewerCloser interface {
	CloseLogin(vmID string, reason string)
}

// Publisher fans stored events out to live subscribers (vm.Bus).
type Publisher interface {
	Publish(e store.Event)
}

// Deps are the service's collaborators.
type Deps struct {
	Store     store.Store
	VMs       VMs
	Vault     Vault
	Providers *provider.Registry
	Viewers   ViewerCloser // may be nil
	Events    Publisher    // may be nil
	Log       *slog.Logger
	Now       func() time.Time // time.Now if nil
}

// Service runs logins. Each active login has one goroutine, under the
// service's context (never a request's).
type Service struct {
	cfg Config
	d   Deps

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	runs map[string]*runHandle // active logins' runs, by login id

	starts *tokenbucket.Keyed // logins started per user
}

// runHandle cancels a run and tells when it has ended.
type runHandle struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// New returns a service; call Recover before Start is used.
func New(cfg Config, d Deps) *Service {
	if d.Now == nil {
		d.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Service{cfg: cfg, d: d, ctx: ctx, cancel: cancel, runs: map[string]*runHandle{},
		starts: startLimiter(cfg.CreateBurst, cfg.CreateEvery)}
}

// startLimiter is a token bucket per user: burst logins at once, then one
// every `every`; either zero allows everything. Users idle long enough to
// be full again are forgotten.
func startLimiter(burst int, every time.Duration) *tokenbucket.Keyed {
	if burst <= 0 || every <= 0 {
		return nil
	}
	return tokenbucket.NewKeyed(1/every.Seconds(), float64(burst), 0, every)
}

// Causes of a run's end other than its own outcome.
var (
	errCancelled = errors.New("cancelled by the user")
	errExpired   = errors.New("the login expired")
	errShutdown  = errors.New("hearth is shutting down")
)

func newID() string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return "lgn_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// Start begins a login of userID's CLI for providerName. If the user
// already has an active login for it, that one is returned with
// existing=true. An unknown provider is an invalid-argument error listing
// the valid ones.
func (s *Service) Start(ctx context.Context, userID, providerName string) (l store.Login, existing bool, err error) {
	if s.ctx.Err() != nil {
		return store.Login{}, false, errdefs.Unavailablef("hearth is shutting down")
	}
	if _, err := s.d.Providers.Get(providerName); err != nil {
		return store.Login{}, false, errdefs.Invalidf("unknown provider %q (valid: %s)", providerName, strings.Join(s.d.Providers.Names(), ", "))
	}
	if _, err := s.d.Store.GetUser(ctx, userID); errors.Is(err, store.ErrNotFound) {
		return store.Login{}, false, errdefs.Invalidf("unknown user %q", userID)
	} else if err != nil {
		return store.Login{}, false, err
	}
	if active, err := s.active(ctx, userID, providerName); err != nil || active != nil {
		if active != nil {
			return *active, true, nil
		}
		return store.Login{}, false, err
	}
	now := s.d.Now().UTC()
	// Only a login that is really started costs a token: answering with
	// the active one above does not.
	if ok, wait := s.starts.Take(userID, now); !ok {
		return store.Login{}, false, errdefs.RateLimitedf(wait,
			"user %s started too many logins lately (at most %d at once, then one every %s); try again in %s",
			userID, s.cfg.CreateBurst, s.cfg.CreateEvery, wait.Round(time.Second))
	}
	l = store.Login{ID: newID(), UserID: userID, Provider: providerName, State: store.LoginStarting,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(s.cfg.TTL)}
	ev, err := s.d.Store.CreateLogin(ctx, l)
	if err != nil {
		s.starts.Give(userID)
	}
	if errors.Is(err, store.ErrConflict) {
		// Another request won the race: answer with its login.
		if active, aerr := s.active(ctx, userID, providerName); aerr == nil && active != nil {
			return *active, true, nil
		}
	}
	if err != nil {
		return store.Login{}, false, fmt.Errorf("record login: %w", err)
	}
	s.publish(&ev)
	s.spawn(l)
	return l, false, nil
}

func (s *Service) active(ctx context.Context, userID, providerName string) (*store.Login, error) {
	ls, err := s.d.Store.ListLogins(ctx, store.LoginFilter{UserID: userID, Provider: providerName, ActiveOnly: true})
	if err != nil || len(ls) == 0 {
		return nil, err
	}
	return &ls[0], nil
}

// ProviderNames lists the providers a login may name.
func (s *Service) ProviderNames() []string { return s.d.Providers.Names() }

// Providers is the service's provider registry (prompts run its CLIs).
func (s *Service) Providers() *provider.Registry { return s.d.Providers }

// Get returns one login.
func (s *Service) Get(ctx context.Context, id string) (store.Login, error) {
	l, err := s.d.Store.GetLogin(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Login{}, errdefs.NotFoundf("login %s not found", id)
	}
	return l, err
}

// List returns logins matching f.
func (s *Service) List(ctx context.Context, f store.LoginFilter) ([]store.Login, error) {
	return s.d.Store.ListLogins(ctx, f)
}

// Cancel stops an active login; its browser VM is destroyed. Cancelling
// a finished login is a conflict.
func (s *Service) Cancel(ctx context.Context, id string) (store.Login, error) {
	l, err := s.Get(ctx, id)
	if err != nil {
		return store.Login{}, err
	}
	if l.State.Terminal() {
		return l, errdefs.Conflictf("login %s is already %s", id, l.State)
	}
	s.mu.Lock()
	run := s.runs[id]
	s.mu.Unlock()
	if run == nil {
		// No run (e.g. it is being recovered): end it here.
		s.finish(l, store.LoginCancelled, errCancelled.Error())
		return s.Get(ctx, id)
	}
	run.cancel(errCancelled)
	// The run records the end; answer with the record once it has.
	select {
	case <-run.done:
	case <-ctx.Done():
		return store.Login{}, ctx.Err()
	}
	return s.Get(ctx, id)
}

// Credentials returns the metadata of userID's credentials ("" for all):
// the sealed parts are stripped.
func (s *Service) Credentials(ctx context.Context, userID string) ([]store.Credential, error) {
	cs, err := s.d.Store.ListCredentials(ctx, userID)
	if err != nil {
		return nil, err
	}
	for i := range cs {
		cs[i].WrappedKey, cs[i].Sealed = nil, nil
	}
	return cs, nil
}

// Recover ends logins left active by a previous daemon: their runs are
// gone, so they fail, and their browser VMs are destroyed.
func (s *Service) Recover(ctx context.Context) error {
	ls, err := s.d.Store.ListLogins(ctx, store.LoginFilter{ActiveOnly: true})
	if err != nil {
		return fmt.Errorf("list active logins: %w", err)
	}
	for _, l := range ls {
		s.finish(l, store.LoginFailed, "hearth restarted during the login; start it again")
	}
	return nil
}

// Shutdown stops every run (their logins fail with the reason) and waits.
func (s *Service) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	for _, run := range s.runs {
		run.cancel(errShutdown)
	}
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("logins still running at shutdown: %w", ctx.Err())
	}
}

func (s *Service) spawn(l store.Login) {
	ctx, cancel := context.WithCancelCause(s.ctx)
	ctx, cancelDeadline := context.WithDeadlineCause(ctx, l.ExpiresAt, errExpired)
	run := &runHandle{cancel: cancel, done: make(chan struct{})}
	s.mu.Lock()
	s.runs[l.ID] = run
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(run.done)
		defer cancelDeadline()
		defer func() {
			s.mu.Lock()
			delete(s.runs, l.ID)
			s.mu.Unlock()
			cancel(nil)
		}()
		s.run(ctx, l)
	}()
}

// run drives one login to its end.
func (s *Service) run(ctx context.Context, l store.Login) {
	log := s.d.Log.With("login", l.ID, "user", l.UserID, "provider", l.Provider)
	p, err := s.d.Providers.Get(l.Provider)
	if err != nil {
		s.finish(l, store.LoginFailed, err.Error())
		return
	}
	state, reason := s.attempt(ctx, &l, p, log)
	if err := context.Cause(ctx); err != nil && state == store.LoginFailed {
		switch {
		case errors.Is(err, errCancelled):
			state, reason = store.LoginCancelled, errCancelled.Error()
		case errors.Is(err, errExpired):
			state, reason = store.LoginExpired, fmt.Sprintf("not completed within %s", s.cfg.TTL)
		case errors.Is(err, errShutdown):
			reason = errShutdown.Error()
		}
	}
	s.finish(l, state, reason)
	log.Info("login ended", "state", state, "reason", reason)
}

// attempt runs the steps; it returns the terminal state and the reason.
func (s *Service) attempt(ctx context.Context, l *store.Login, p provider.Provider, log *slog.Logger) (store.LoginState, string) {
	v, err := s.d.VMs.Create(ctx, vm.CreateRequest{UserID: l.UserID, Image: s.cfg.BrowserImage, Role: "browser",
		VCPUs: s.cfg.VCPUs, MemoryMiB: s.cfg.MemoryMiB, BootTimeout: s.cfg.BootTimeout})
	if err != nil {
		return store.LoginFailed, "create the browser vm: " + errdefs.Public(err)
	}
	if nl, err := s.update(l.ID, "browser vm "+v.ID+" booting", func(x *store.Login) { x.BrowserVMID = v.ID }); err == nil {
		*l = nl
	}
	if v, err = s.d.VMs.Wait(ctx, v.ID, store.StateReady); err != nil {
		if v.FailureReason != "" {
			return store.LoginFailed, "the browser vm failed: " + v.FailureReason
		}
		return store.LoginFailed, "the browser vm did not become ready: " + errdefs.Public(err)
	}
	log.Info("browser vm ready", "vm", v.ID)

	req := loginRequest(p, s.cfg)
	progress := make(chan agentapi.LoginProgress, 16)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		for pr := range progress {
			s.onProgress(l, pr)
		}
	}()
	res, err := s.d.VMs.Login(ctx, v.ID, req, func(pr agentapi.LoginProgress) {
		select {
		case progress <- pr:
		default: // never block the agent session; the next one carries on
		}
	})
	close(progress)
	<-progressDone
	if err != nil {
		return store.LoginFailed, "the login in the browser vm failed: " + publicLoginError(err)
	}
	if _, err := s.update(l.ID, "credentials written by the CLI", func(x *store.Login) { x.State = store.LoginCapturing }); err != nil {
		log.Warn("record capturing", "err", err)
	}
	cred, files, reason := s.capture(ctx, *l, p, res)
	if reason != "" {
		return store.LoginFailed, reason
	}
	// Installed before the login says completed, so that a completed
	// login's user finds the credential in every running workspace.
	s.installAll(ctx, l.UserID, p, files, log)
	if nl, err := s.update(l.ID, "credential stored and installed", func(x *store.Login) {
		x.State, x.CredentialID = store.LoginCompleted, cred.ID
	}); err != nil {
		return store.LoginFailed, "record completion: " + err.Error()
	} else {
		*l = nl
	}
	return store.LoginCompleted, ""
}

// onProgress records what the guest reported.
func (s *Service) onProgress(l *store.Login, p agentapi.LoginProgress) {
	switch p.Phase {
	case agentapi.LoginOpening:
		if nl, err := s.update(l.ID, "the guest browser is loading the provider's sign-in page", func(x *store.Login) {}); err == nil {
			*l = nl
		}
	case agentapi.LoginURL:
		if nl, err := s.update(l.ID, "the provider's sign-in page is open in the browser vm", func(x *store.Login) {
			x.State = store.LoginAwaitingUser
		}); err == nil {
			*l = nl
		}
	case agentapi.LoginCredentials:
		if nl, err := s.update(l.ID, "the CLI wrote its credentials", func(x *store.Login) {
			x.State = store.LoginCapturing
		}); err == nil {
			*l = nl
		}
	}
}

// bundle is the sealed plaintext of a credential: every file the login
// captured.
type bundle struct {
	Files []bundleFile `json:"files"`
}

type bundleFile struct {
	Path    string `json:"path"`
	Content []byte `json:"content"`
}

// capture checks the files against the provider, seals them and stores
// the credential. reason says why it failed, naming files and fields only.
func (s *Service) capture(ctx context.Context, l store.Login, p provider.Provider, res agentapi.LoginResult) (store.Credential, []bundleFile, string) {
	now := s.d.Now().UTC()
	cred := store.Credential{ID: "crd_" + strings.TrimPrefix(newID(), "lgn_"), UserID: l.UserID, Provider: l.Provider,
		LoginID: l.ID, CreatedAt: now, UpdatedAt: now, Valid: true}
	var b bundle
	for _, f := range res.Files {
		info, err := p.Check(f.Path, f.Content, now)
		if err != nil {
			return store.Credential{}, nil, fmt.Sprintf("the credential file %s is not usable: %v", f.Path, err)
		}
		if info.Expired {
			return store.Credential{}, nil, fmt.Sprintf("the credential file %s is already expired", f.Path)
		}
		if !info.ExpiresAt.IsZero() && (cred.ExpiresAt.IsZero() || info.ExpiresAt.Before(cred.ExpiresAt)) {
			cred.ExpiresAt = info.ExpiresAt.UTC()
		}
		b.Files = append(b.Files, bundleFile{Path: f.Path, Content: f.Content})
	}
	plain, err := json.Marshal(b)
	if err != nil {
		return store.Credential{}, nil, "encode the credential: " + err.Error()
	}
	defer clear(plain)
	cred, err = s.d.Vault.Put(ctx, cred, plain)
	if err != nil {
		return store.Credential{}, nil, "seal and store the credential: " + err.Error()
	}
	return cred, b.Files, ""
}

// installAll writes the files into every ready workspace VM of the user.
// A failure is recorded on the login's event log and does not undo it:
// the credential is stored and is installed again when a workspace starts.
func (s *Service) installAll(ctx context.Context, userID string, p provider.Provider, files []bundleFile, log *slog.Logger) {
	vms, err := s.d.VMs.List(ctx, store.VMFilter{UserID: userID, States: []store.State{store.StateReady}})
	if err != nil {
		log.Warn("list workspaces", "err", err)
		return
	}
	for _, v := range vms {
		if v.Role != s.cfg.WorkspaceRole {
			continue
		}
		if err := s.install(ctx, v.ID, p, files); err != nil {
			log.Warn("install credential", "vm", v.ID, "err", err)
			continue
		}
		log.Info("credential installed", "vm", v.ID)
	}
}

// install writes the credential files and the provider's own install
// files (settings that let the CLI use the credential without prompting).
func (s *Service) install(ctx context.Context, vmID string, p provider.Provider, files []bundleFile) error {
	for _, f := range files {
		if err := s.d.VMs.WriteFile(ctx, vmID, agentapi.WriteFileRequest{User: s.cfg.WorkspaceUser, Path: f.Path, Content: f.Content}); err != nil {
			return err
		}
	}
	for _, f := range p.Install {
		req := agentapi.WriteFileRequest{User: s.cfg.WorkspaceUser, Path: f.Path, Content: []byte(f.Content), Merge: f.Merge}
		if err := s.d.VMs.WriteFile(ctx, vmID, req); err != nil {
			return err
		}
	}
	return nil
}

// OnVMReady installs the user's stored credentials into a workspace VM
// that just became ready. It returns at once; the work runs under the
// service.
func (s *Service) OnVMReady(v store.VM) {
	if v.State != store.StateReady || v.Role != s.cfg.WorkspaceRole || s.ctx.Err() != nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		log := s.d.Log.With("vm", v.ID, "user", v.UserID)
		ctx, cancel := context.WithTimeout(s.ctx, 2*time.Minute)
		defer cancel()
		creds, err := s.d.Store.ListCredentials(ctx, v.UserID)
		if err != nil {
			log.Warn("list credentials to install", "err", err)
			return
		}
		for _, c := range creds {
			plain, err := s.d.Vault.Open(c)
			if err != nil {
				// A rotation may have re-wrapped it since it was listed.
				if fresh, gerr := s.d.Store.GetCredential(ctx, c.UserID, c.Provider); gerr == nil {
					plain, err = s.d.Vault.Open(fresh)
				}
			}
			if err != nil {
				log.Warn("open credential", "provider", c.Provider, "err", err)
				continue
			}
			var b bundle
			err = json.Unmarshal(plain, &b)
			clear(plain)
			if err != nil {
				log.Warn("decode credential", "provider", c.Provider, "err", "malformed bundle")
				continue
			}
			p, err := s.d.Providers.Get(c.Provider)
			if err != nil {
				log.Warn("install credential", "provider", c.Provider, "err", err)
				continue
			}
			if err := s.install(ctx, v.ID, p, b.Files); err != nil {
				log.Warn("install credential", "provider", c.Provider, "err", err)
				continue
			}
			log.Info("credential installed", "provider", c.Provider)
		}
	}()
}

// finish records the terminal state (if the login is not in one yet),
// closes the browser VM's viewers and destroys it.
func (s *Service) finish(l store.Login, state store.LoginState, reason string) {
	msg := "login " + string(state)
	if reason != "" {
		msg += ": " + reason
	}
	nl, err := s.update(l.ID, msg, func(x *store.Login) {
		x.State = state
		if state != store.LoginCompleted {
			x.FailureReason = reason
		}
		x.CompletedAt = s.d.Now().UTC()
	})
	if err == nil {
		l = nl
	} else if cur, gerr := s.d.Store.GetLogin(context.Background(), l.ID); gerr == nil {
		l = cur
	}
	if l.BrowserVMID == "" {
		return
	}
	if s.d.Viewers != nil {
		s.d.Viewers.CloseLogin(l.BrowserVMID, "login "+string(l.State))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.d.VMs.Delete(ctx, l.BrowserVMID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		s.d.Log.Warn("destroy browser vm", "login", l.ID, "vm", l.BrowserVMID, "err", err)
	}
}

// update changes a login and publishes the event of a state change. A
// login already in a terminal state is not changed.
func (s *Service) update(id, msg string, fn func(*store.Login)) (store.Login, error) {
	l, ev, err := s.d.Store.UpdateLogin(context.Background(), id, msg, func(x *store.Login) error {
		before := x.State
		if before.Terminal() {
			return errdefs.Conflictf("login %s is already %s", id, before)
		}
		fn(x)
		x.UpdatedAt = s.d.Now().UTC()
		return nil
	})
	if err != nil {
		return l, err
	}
	s.publish(ev)
	return l, nil
}

func (s *Service) publish(ev *store.Event) {
	if ev != nil && s.d.Events != nil {
		s.d.Events.Publish(*ev)
	}
}

// loginRequest is the agent request for provider p, its timeout bounded
// by the login's own.
func loginRequest(p provider.Provider, cfg Config) agentapi.LoginRequest {
	req := p.LoginRequest(cfg.GuestUser, cfg.Browser)
	if req.Timeout <= 0 || req.Timeout > cfg.TTL {
		req.Timeout = cfg.TTL
	}
	req.SetupTimeout = min(cfg.SetupTimeout, cfg.TTL)
	req.PageCheck = cfg.PageCheck
	return req
}

// publicLoginError is what the guest said, or the class of a host error.
func publicLoginError(err error) string {
	var re *agentapi.RemoteError
	if errors.As(err, &re) {
		return strings.TrimPrefix(re.Message, "login: ")
	}
	if msg := errdefs.Public(err); msg != "" {
		return msg
	}
	return err.Error()
}
