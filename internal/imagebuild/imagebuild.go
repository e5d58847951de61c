// Package imagebuild runs the daemon's image builds as jobs. A build is
// asked for by an embedded profile's name or by a spec's YAML text, parsed
// and validated before anything runs; it runs under the service's context,
// never a request's, so it outlives the client that asked and ends when
// the daemon shuts down. At most Config.Concurrency builds run at once
// and the rest wait in order; a request for the same spec, agent and
// kernel package as a build that is queued or running joins that build.
// Cancel ends a build for everyone who asked for it.
//
// Each build writes its progress into a bounded log of its own under the
// state dir (internal/consolelog), which any number of followers read as
// events (progress, log, done) whose ids are offsets in that log, so a
// follower resumes where it left off. The records of finished builds are
// kept in memory, the newest Config.Keep of them with their logs; a daemon
// that restarts starts with none (the images they made are in the store).
package imagebuild

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/image/spec"
	"github.com/hearth-project/hearth/internal/store"
)

// State is where a build is.
type State string

// A build is queued, then running, then one of the terminal states.
const (
	Queued    State = "queued"
	Running   State = "running"
	Succeeded State = "succeeded" // built (or found built), verified and registered
	Failed    State = "failed"    // the build failed, or its image failed verification
	Cancelled State = "cancelled" // cancelled by request, or the daemon shut down first
)

// Terminal reports whether a build in state s has ended.
func (s State) Terminal() bool { return s == Succeeded || s == Failed || s == Cancelled }

// MaxSpecBytes bounds a spec's YAML text in a Request.
const MaxSpecBytes = 256 << 10

// kernelPackageRE is what Request.KernelPackage may be: a Debian package
// name, optionally with "=version" (it is passed to apt-cache, so never
// anything that reads as an option).
var kernelPackageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]*(=[A-Za-z0-9.+:~-]+)?$`)

// maxKernelPackage bounds Request.KernelPackage.
const maxKernelPackage = 128

// Request asks for a build.
type Request struct {
	// Profile names an embedded spec (images/*.yaml); never a path.
	Profile string
	// Spec is a spec's YAML text, instead of Profile.
	Spec string
	// KernelPackage selects the kernel ("" = linux-image-amd64's current
	// one); see build.Options.KernelPackage.
	KernelPackage string
}

// Job is what a build function is given to build.
type Job struct {
	Spec          *spec.Spec
	KernelPackage string
	// Agent is the path of the hearth-agent binary the image carries.
	Agent string
}

// Func builds, verifies and registers job's image, writing its progress
// to log, and returns the registered image (whose status says whether it
// passed verification). The daemon's is imagereg.Registry.Build; tests
// plug their own.
type Func func(ctx context.Context, job Job, log io.Writer) (store.Image, error)

// Build is a build's record.
type Build struct {
	ID string
	// Profile is the embedded spec asked for; "" for an uploaded one.
	Profile       string
	SpecName      string
	SpecDigest    string
	KernelPackage string
	State         State
	// Phase, Step and Steps are the builder's current phase ("rootfs",
	// 4 of 5) as its progress lines say; empty before the first.
	Phase       string
	Step, Steps int
	// Image is the registered image's id, once there is one, and
	// ImageStatus its verification status.
	Image       string
	ImageStatus store.ImageStatus
	// Error says why a build failed or was cancelled.
	Error                         string
	CreatedAt, StartedAt, EndedAt time.Time
	// LogSize is the logical size of the build's log: the id of the last
	// event but done.
	LogSize int64
}

// Config configures a Service.
type Config struct {
	// LogDir holds each build's log, LogDir/<id>; the service owns it
	// and empties it when it starts.
	LogDir string
	// LogLimits bound each build's log; zero: DefaultLogLimits.
	LogLimits consolelog.Limits
	// Concurrency is how many builds run at once; 0: 1.
	Concurrency int
	// MaxQueued is how many builds may wait to run; more are refused
	// (unavailable). 0: 8.
	MaxQueued int
	// Keep is how many finished builds are remembered, with their logs;
	// 0: 32.
	Keep int
	// Agent returns the path of the hearth-agent binary builds put into
	// images. An error makes Start refuse (unavailable) with it.
	Agent func() (string, error)
}

// DefaultLogLimits bound a build's log: builds write a few hundred
// progress lines, so a build's whole log normally fits in the head.
var DefaultLogLimits = consolelog.Limits{Max: 1 << 20, Head: 256 << 10}

// Deps are the service's collaborators.
type Deps struct {
	Build Func
	Log   *slog.Logger
}

// Service runs image builds.
type Service struct {
	cfg   Config
	run   Func
	log   *slog.Logger
	ctx   context.Context // every build's; cancelled by Shutdown
	stop  context.CancelFunc
	wg    sync.WaitGroup
	agent agentDigests

	mu        sync.Mutex
	builds    map[string]*build
	order     []*build // by creation
	queue     []*build
	running   int
	exclusive bool // Exclusive is running fn: nothing starts
	closed    bool
}

// New returns a service whose builds log under cfg.LogDir, which it
// empties: the logs there are of builds an earlier daemon ran, whose
// records went with it.
func New(cfg Config, deps Deps) (*Service, error) {
	if cfg.LogLimits == (consolelog.Limits{}) {
		cfg.LogLimits = DefaultLogLimits
	}
	if err := cfg.LogLimits.Validate(); err != nil {
		return nil, fmt.Errorf("image build log limits: %w", err)
	}
	cfg.Concurrency = max(cfg.Concurrency, 1)
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 8
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 32
	}
	switch {
	case cfg.LogDir == "":
		return nil, errors.New("image builds: no log directory")
	case cfg.Agent == nil || deps.Build == nil:
		return nil, errors.New("image builds: no agent or build function")
	}
	if err := os.RemoveAll(cfg.LogDir); err != nil {
		return nil, fmt.Errorf("image builds: %w", err)
	}
	if err := os.MkdirAll(cfg.LogDir, 0o700); err != nil {
		return nil, fmt.Errorf("image builds: %w", err)
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Service{cfg: cfg, run: deps.Build, log: log, ctx: ctx, stop: stop, builds: map[string]*build{}}, nil
}

// build is one build: its record, its log and whom to tell of changes.
type build struct {
	id  string
	key string // spec digest, agent digest and kernel package: what joins it
	job Job
	dir string // its log

	// ctx is the build's own context, under the service's, and cancel
	// cancels it with a cause: errByRequest once Cancel asked.
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu      sync.Mutex
	rec     Build
	w       *consolelog.Writer // nil once the build has ended
	head    []byte             // the start of the log line being written
	parsed  bool               // head has been read for a phase
	changed chan struct{}      // closed and replaced at every change
}

// snapshot returns the build's record.
func (b *build) snapshot() Build {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rec
}

// notify tells the build's followers it changed (b.mu held).
func (b *build) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// update changes the record and tells the followers.
func (b *build) update(fn func(*Build)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn(&b.rec)
	b.notify()
}

// Write appends progress to the build's log, following its phase lines
// ("[4/5] rootfs: ..."). Writes after the build ended are dropped.
func (b *build) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.w == nil {
		return len(p), nil
	}
	n, err := b.w.Write(p)
	b.follow(p[:n])
	b.rec.LogSize = b.w.Size()
	b.notify()
	return n, err
}

// progressRE matches the head of a builder's progress line (package
// image/build: "[i/n] phase: ").
var progressRE = regexp.MustCompile(`^\[(\d+)/(\d+)\] ([^\s:]+): `)

// maxHead is how much of a line is kept to find its phase.
const maxHead = 128

// follow reads the phase from the head of each line in p (b.mu held).
func (b *build) follow(p []byte) {
	for len(p) > 0 {
		seg, rest, nl := strings.Cut(string(p), "\n")
		if !b.parsed && len(b.head) < maxHead {
			b.head = append(b.head, seg[:min(len(seg), maxHead-len(b.head))]...)
			if phase, step, steps, ok := parseProgress(string(b.head)); ok {
				b.rec.Phase, b.rec.Step, b.rec.Steps = phase, step, steps
				b.parsed = true
			}
		}
		if !nl {
			return
		}
		b.head, b.parsed = b.head[:0], false
		p = []byte(rest)
	}
}

// parseProgress reads a progress line's head.
func parseProgress(line string) (phase string, step, steps int, ok bool) {
	m := progressRE.FindStringSubmatch(line)
	if m == nil {
		return "", 0, 0, false
	}
	if _, err := fmt.Sscan(m[1], &step); err != nil {
		return "", 0, 0, false
	}
	if _, err := fmt.Sscan(m[2], &steps); err != nil {
		return "", 0, 0, false
	}
	return m[3], step, steps, true
}

// notef writes one line of the service's own to the build's log.
func (b *build) notef(format string, args ...any) {
	_, _ = fmt.Fprintf(b, format+"\n", args...) // a full disk: the log is short of a line
}

// end closes the build's log and records how it ended.
func (b *build) end(state State, img store.Image, errText string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.w != nil {
		_ = b.w.Close() // its bytes are written; a close error loses nothing
		b.rec.LogSize = b.w.Size()
		b.w = nil
	}
	b.rec.State, b.rec.Error, b.rec.EndedAt = state, errText, time.Now().UTC()
	if img.ID != "" {
		b.rec.Image, b.rec.ImageStatus = img.ID, img.Status
	}
	b.notify()
}

// Start asks for a build of req. A build of the same spec, agent and
// kernel package that is queued or running is joined: its record is
// returned with joined true. Otherwise a new build is queued and starts
// as soon as fewer than Config.Concurrency run. An invalid request is
// refused (errdefs.ErrInvalid, naming the field) before anything runs.
func (s *Service) Start(req Request) (rec Build, joined bool, err error) {
	sp, err := parseRequest(req)
	if err != nil {
		return Build{}, false, err
	}
	digest, err := sp.Digest()
	if err != nil {
		return Build{}, false, err
	}
	agent, err := s.cfg.Agent()
	if err != nil {
		return Build{}, false, errdefs.Unavailablef("image builds need the hearth-agent binary: %v", err)
	}
	agentSum, err := s.agent.digest(agent)
	if err != nil {
		return Build{}, false, errdefs.Unavailablef("image builds need the hearth-agent binary: %v", err)
	}
	key := digest + " " + agentSum + " " + req.KernelPackage

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Build{}, false, errdefs.Unavailablef("hearth is shutting down; it starts no image builds")
	}
	for _, b := range s.order {
		if b.key == key {
			if r := b.snapshot(); !r.State.Terminal() {
				return r, true, nil
			}
		}
	}
	if len(s.queue) >= s.cfg.MaxQueued {
		return Build{}, false, errdefs.Unavailablef("%d image builds are waiting to run, the most allowed; ask again once one has started", len(s.queue))
	}
	id := newID()
	ctx, cancel := context.WithCancelCause(s.ctx)
	b := &build{id: id, key: key, job: Job{Spec: sp, KernelPackage: req.KernelPackage, Agent: agent},
		dir: filepath.Join(s.cfg.LogDir, id), ctx: ctx, cancel: cancel, changed: make(chan struct{}),
		rec: Build{ID: id, Profile: req.Profile, SpecName: sp.Name, SpecDigest: digest, KernelPackage: req.KernelPackage,
			State: Queued, CreatedAt: time.Now().UTC()}}
	if b.w, err = consolelog.Open(b.dir, s.cfg.LogLimits); err != nil {
		cancel(nil)
		return Build{}, false, fmt.Errorf("image build log: %w", err)
	}
	s.builds[id] = b
	s.order = append(s.order, b)
	s.queue = append(s.queue, b)
	what := "spec " + sp.Name
	if req.Profile != "" {
		what = "profile " + req.Profile
	}
	b.notef("hearth: build %s of %s (spec digest %s) queued", id, what, digest[:16])
	s.log.Info("image build queued", "build", id, "spec", sp.Name, "spec_digest", digest, "kernel_package", req.KernelPackage)
	s.dispatch()
	return b.snapshot(), false, nil
}

// parseRequest checks a request and returns the spec it asks for.
func parseRequest(req Request) (*spec.Spec, error) {
	if req.KernelPackage != "" && (len(req.KernelPackage) > maxKernelPackage || !kernelPackageRE.MatchString(req.KernelPackage)) {
		return nil, errdefs.Invalidf("field \"kernel_package\" must be a Debian package name, optionally with =version (at most %d bytes), got %q",
			maxKernelPackage, clip(req.KernelPackage))
	}
	switch {
	case req.Profile != "" && req.Spec != "":
		return nil, errdefs.Invalidf("give profile or spec, not both")
	case req.Profile != "":
		sp, err := spec.Embedded(req.Profile)
		if err != nil {
			return nil, errdefs.Invalidf("field \"profile\": %v", err)
		}
		return sp, nil
	case req.Spec != "":
		if len(req.Spec) > MaxSpecBytes {
			return nil, errdefs.Invalidf("field \"spec\" must be at most %d bytes, got %d", MaxSpecBytes, len(req.Spec))
		}
		sp, err := spec.Parse([]byte(req.Spec), "spec")
		if err != nil {
			return nil, errdefs.Invalidf("field \"spec\" is not a valid image spec: %v", err)
		}
		return sp, nil
	}
	return nil, errdefs.Invalidf("profile or spec is required")
}

// clip bounds client text quoted back in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// dispatch starts queued builds while there is room (s.mu held).
func (s *Service) dispatch() {
	for s.running < s.cfg.Concurrency && !s.exclusive && !s.closed && len(s.queue) > 0 {
		b := s.queue[0]
		s.queue = s.queue[1:]
		s.running++
		b.update(func(r *Build) { r.State, r.StartedAt = Running, time.Now().UTC() })
		b.notef("hearth: build %s running", b.id)
		s.wg.Add(1)
		go s.runBuild(b)
	}
}

// runBuild runs one build under the service's context and records how it
// ended.
func (s *Service) runBuild(b *build) {
	defer s.wg.Done()
	id := b.id
	start := time.Now()
	img, err := s.runFunc(b)
	// Its work is done: a Cancel from now on finds the context ended and
	// asks nothing, so byRequest is whether one came while it ran.
	b.cancel(nil)
	byRequest := errors.Is(context.Cause(b.ctx), errByRequest)
	state, msg := Succeeded, ""
	switch {
	case err != nil && byRequest:
		state, msg = Cancelled, errByRequest.Error()
	case err != nil && s.ctx.Err() != nil:
		state, msg = Cancelled, "hearth shut down during the build"
	case err != nil:
		state, msg = Failed, err.Error()
	case img.Status != store.ImageVerified:
		state, msg = Failed, fmt.Sprintf("image %s was built but failed verification (status %s)", img.ID, img.Status)
	}
	if msg != "" {
		b.notef("hearth: build %s %s: %s", id, state, msg)
	} else {
		if byRequest {
			b.notef("hearth: build %s was cancelled too late: its image was registered already", id)
		}
		b.notef("hearth: build %s succeeded: image %s (%s) %s", id, img.Name, img.ID, img.Status)
	}
	level := slog.LevelInfo
	if state != Succeeded {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "image build ended", "build", id, "state", state, "image", img.ID,
		"duration_ms", time.Since(start).Milliseconds(), "err", msg)
	// Ended, counted and the oldest records forgotten in one step: whoever
	// sees the build ended sees the service after it too.
	s.mu.Lock()
	defer s.mu.Unlock()
	b.end(state, img, msg)
	s.running--
	s.forget()
	s.dispatch()
}

// runFunc runs the build function; a panic in it fails the build, not
// the daemon.
func (s *Service) runFunc(b *build) (img store.Image, err error) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("image build panicked", "build", b.id, "panic", v)
			err = fmt.Errorf("internal error in the image builder: %v", v)
		}
	}()
	return s.run(b.ctx, b.job, b)
}

// forget drops the oldest finished builds beyond Config.Keep, with their
// logs (s.mu held).
func (s *Service) forget() {
	finished := 0
	for _, b := range s.order {
		if b.snapshot().State.Terminal() {
			finished++
		}
	}
	kept := s.order[:0]
	for _, b := range s.order {
		if finished > s.cfg.Keep && b.snapshot().State.Terminal() {
			finished--
			delete(s.builds, b.id)
			if err := os.RemoveAll(b.dir); err != nil {
				s.log.Warn("image build log", "dir", b.dir, "err", err)
			}
			continue
		}
		kept = append(kept, b)
	}
	clear(s.order[len(kept):])
	s.order = kept
}

// Get returns a build's record.
func (s *Service) Get(id string) (Build, error) {
	b, err := s.lookup(id)
	if err != nil {
		return Build{}, err
	}
	return b.snapshot(), nil
}

func (s *Service) lookup(id string) (*build, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.builds[id]
	if !ok {
		return nil, errdefs.NotFoundf("image build %s not found", id)
	}
	return b, nil
}

// List returns the records of the builds the service knows, oldest first.
func (s *Service) List() []Build {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Build, 0, len(s.order))
	for _, b := range s.order {
		out = append(out, b.snapshot())
	}
	return out
}

// errByRequest is why a build cancelled by Cancel ended, as its record
// says.
var errByRequest = errors.New("cancelled by request")

// Cancel cancels build id for everyone who asked for it (a build joined
// by several requests is one build). A queued build leaves the queue and
// ends cancelled at once; its record is returned. A running build has its
// context cancelled and ends cancelled once the build function returns,
// having removed its work; its record as it was when asked, still
// running, is returned (asked again, the same). One whose function
// returns success regardless (it had registered its image already) ends
// as it ended. A build that has ended is a conflict.
func (s *Service) Cancel(id string) (Build, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.builds[id]
	if !ok {
		return Build{}, errdefs.NotFoundf("image build %s not found", id)
	}
	switch rec := b.snapshot(); rec.State {
	case Queued:
		i := slices.Index(s.queue, b)
		if i < 0 {
			return b.snapshot(), nil // Shutdown took it from the queue and is ending it
		}
		s.queue = slices.Delete(s.queue, i, i+1)
		b.cancel(errByRequest)
		b.notef("hearth: build %s cancelled before it started: %s", id, errByRequest)
		b.end(Cancelled, store.Image{}, errByRequest.Error())
		s.log.Info("image build cancelled", "build", id, "state", Queued)
		s.forget()
		return b.snapshot(), nil
	case Running:
		if context.Cause(b.ctx) != nil {
			return rec, nil // asked already, or its function has returned
		}
		b.notef("hearth: build %s: cancel requested; it ends once the builder has stopped", id)
		// The record before the cancel: the builder may stop at once.
		rec = b.snapshot()
		b.cancel(errByRequest)
		s.log.Info("image build cancelled", "build", id, "state", Running)
		return rec, nil
	default:
		return Build{}, errdefs.Conflictf("image build %s already ended (%s)", id, rec.State)
	}
}

// Exclusive runs fn while no build runs, none starting until it returns
// (builds asked for meanwhile wait in the queue). If a build runs, it
// refuses with a conflict naming the builds: collecting image files
// while a build makes some would take them from under it.
func (s *Service) Exclusive(ctx context.Context, fn func(context.Context) error) error {
	s.mu.Lock()
	var busy []string
	for _, b := range s.order {
		if b.snapshot().State == Running {
			busy = append(busy, b.id)
		}
	}
	switch {
	case len(busy) > 0:
		s.mu.Unlock()
		return errdefs.Conflictf("image builds are running (%s); try again when they have ended", strings.Join(busy, ", "))
	case s.exclusive:
		s.mu.Unlock()
		return errdefs.Conflictf("images are being collected already")
	}
	s.exclusive = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.exclusive = false
		s.dispatch()
	}()
	return fn(ctx)
}

// Shutdown refuses new builds, cancels the queued ones and the running
// ones' contexts, and waits (at most until ctx ends) for the running ones
// to return.
func (s *Service) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	queued := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, b := range queued {
		msg := "hearth shut down before the build started"
		b.notef("hearth: build %s cancelled: %s", b.id, msg)
		b.end(Cancelled, store.Image{}, msg)
	}
	s.stop()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("image builds did not end: %w", ctx.Err())
	}
}

// newID returns a build id ("build-" + 16 base32 characters).
func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return "build-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// agentDigests remembers the agent binary's digest while its file stays
// the same (size and modification time), so Start does not read it each
// time.
type agentDigests struct {
	mu    sync.Mutex
	path  string
	size  int64
	mtime time.Time
	sum   string
}

func (a *agentDigests) digest(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.path == path && a.size == fi.Size() && a.mtime.Equal(fi.ModTime()) {
		return a.sum, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	a.path, a.size, a.mtime, a.sum = path, fi.Size(), fi.ModTime(), hex.EncodeToString(h.Sum(nil))
	return a.sum, nil
}
