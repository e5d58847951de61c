package imagebuild_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/imagebuild"
	"github.com/hearth-project/hearth/internal/store"
)

// fakeBuilds is a build function the test steers: each build writes
// phase lines as the image builder does, then waits for the test to
// release it (or for its context to end).
type fakeBuilds struct {
	started chan imagebuild.Job // a build began (buffered)
	release chan error          // one build ends with this error (nil: a verified image)
	calls   atomic.Int32
}

func newFakeBuilds() *fakeBuilds {
	return &fakeBuilds{started: make(chan imagebuild.Job, 16), release: make(chan error)}
}

func (f *fakeBuilds) build(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
	f.calls.Add(1)
	fmt.Fprintf(log, "[1/3] kernel: resolving %s ...", job.KernelPackage)
	fmt.Fprintf(log, " done (0.1s)\n[2/3] inputs: digest 0123: building\n")
	f.started <- job
	select {
	case err := <-f.release:
		if err != nil {
			return store.Image{}, err
		}
		fmt.Fprintf(log, "[3/3] rootfs: writing rootfs.ext4 ... done (0.2s)\n")
		return store.Image{ID: "img-" + job.Spec.Name, Name: job.Spec.Name, Status: store.ImageVerified}, nil
	case <-ctx.Done():
		fmt.Fprintf(log, "[3/3] rootfs: interrupted\n")
		return store.Image{}, ctx.Err()
	}
}

// newService runs a service with fn as its build function; it is shut
// down when the test ends.
func newService(t *testing.T, fn imagebuild.Func, adjust ...func(*imagebuild.Config)) (*imagebuild.Service, imagebuild.Config) {
	t.Helper()
	dir := t.TempDir()
	agent := filepath.Join(dir, "hearth-agent")
	if err := os.WriteFile(agent, []byte("agent v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := imagebuild.Config{LogDir: filepath.Join(dir, "builds"), Agent: func() (string, error) { return agent, nil }}
	for _, a := range adjust {
		a(&cfg)
	}
	s, err := imagebuild.New(cfg, imagebuild.Deps{Build: fn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return s, cfg
}

// waitFor waits (on the build's changes, no polling) until its record
// satisfies ok.
func waitFor(t *testing.T, s *imagebuild.Service, id string, what string, ok func(imagebuild.Build) bool) imagebuild.Build {
	t.Helper()
	f, err := s.Follow(id, 0)
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	for {
		changed := f.Changed()
		b, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(b) {
			return b
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("build %s: never %s; it is %+v", id, what, b)
		}
	}
}

func waitState(t *testing.T, s *imagebuild.Service, id string, want imagebuild.State) imagebuild.Build {
	t.Helper()
	return waitFor(t, s, id, string(want), func(b imagebuild.Build) bool { return b.State == want })
}

// events follows a build from after until done, or until stop says to.
func events(t *testing.T, s *imagebuild.Service, id string, after int64, stop func(imagebuild.Event) bool) []imagebuild.Event {
	t.Helper()
	f, err := s.Follow(id, after)
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(10 * time.Second)
	var out []imagebuild.Event
	for {
		changed := f.Changed()
		evs, err := f.Next()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			out = append(out, e)
			if stop != nil && stop(e) {
				return out
			}
		}
		if f.Over() {
			return out
		}
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("build %s: events stopped before done: %+v", id, out)
		}
	}
}

// A second request for the same spec, agent and kernel package while the
// build runs joins it; another kernel package is another build, which
// waits for the first (one at a time).
func TestSameSpecJoinsARunningBuild(t *testing.T) {
	fb := newFakeBuilds()
	s, _ := newService(t, fb.build)
	first, joined, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil || joined {
		t.Fatalf("start: %+v %v %v", first, joined, err)
	}
	<-fb.started
	again, joined, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil || !joined || again.ID != first.ID || again.State != imagebuild.Running {
		t.Fatalf("second start of the same spec: %+v joined=%v %v", again, joined, err)
	}
	// The same spec uploaded as text is the same build too.
	text, err := os.ReadFile("../../images/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	byText, joined, err := s.Start(imagebuild.Request{Spec: string(text)})
	if err != nil || !joined || byText.ID != first.ID {
		t.Fatalf("the profile's spec as text: %+v joined=%v %v", byText, joined, err)
	}
	other, joined, err := s.Start(imagebuild.Request{Profile: "minimal", KernelPackage: "linux-image-amd64"})
	if err != nil || joined || other.ID == first.ID || other.State != imagebuild.Queued {
		t.Fatalf("another kernel package: %+v joined=%v %v", other, joined, err)
	}
	fb.release <- nil
	done := waitState(t, s, first.ID, imagebuild.Succeeded)
	if done.Image != "img-minimal" || done.ImageStatus != store.ImageVerified || done.EndedAt.IsZero() {
		t.Fatalf("finished build %+v", done)
	}
	job := <-fb.started // the queued one runs once the first has ended
	if job.KernelPackage != "linux-image-amd64" {
		t.Fatalf("second build's job %+v", job)
	}
	waitState(t, s, other.ID, imagebuild.Running)
	// A finished build is not joined: asking again builds again (the
	// builder finds the image made and answers at once).
	third, joined, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil || joined || third.ID == first.ID {
		t.Fatalf("after the build ended: %+v joined=%v %v", third, joined, err)
	}
	if n := fb.calls.Load(); n != 2 {
		t.Fatalf("%d builds ran, want 2", n)
	}
}

// Invalid requests are refused before anything runs, naming the field.
func TestInvalidRequestsNameTheProblem(t *testing.T) {
	fb := newFakeBuilds()
	s, _ := newService(t, fb.build)
	for _, c := range []struct {
		name string
		req  imagebuild.Request
		want string
	}{
		{"nothing", imagebuild.Request{}, "profile or spec is required"},
		{"both", imagebuild.Request{Profile: "minimal", Spec: "name: x\n"}, "not both"},
		{"unknown profile", imagebuild.Request{Profile: "nope"}, `field "profile": unknown image spec "nope"`},
		{"a path as profile", imagebuild.Request{Profile: "/etc/passwd"}, `unknown image spec "/etc/passwd"`},
		{"bad yaml", imagebuild.Request{Spec: "name: [\n"}, `field "spec" is not a valid image spec: spec:`},
		{"bad field", imagebuild.Request{Spec: "name: x\nrole: nope\nbase: {kind: busybox}\n"}, `spec:2`},
		{"too large", imagebuild.Request{Spec: strings.Repeat("#", imagebuild.MaxSpecBytes+1)}, `field "spec" must be at most`},
		{"kernel option", imagebuild.Request{Profile: "minimal", KernelPackage: "-o=Dir::Etc=/tmp"}, `field "kernel_package"`},
		{"kernel spaces", imagebuild.Request{Profile: "minimal", KernelPackage: "linux image"}, `field "kernel_package"`},
	} {
		_, _, err := s.Start(c.req)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(errdefs.Public(err), c.want) {
			t.Errorf("%s: %v, want invalid containing %q", c.name, err, c.want)
		}
	}
	if len(s.List()) != 0 || fb.calls.Load() != 0 {
		t.Fatalf("refused requests made builds: %+v", s.List())
	}
	if _, err := s.Get("build-nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown build: %v", err)
	}
	if _, err := s.Follow("build-nope", 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("follow of an unknown build: %v", err)
	}
}

// A build's events are its log's lines (phase lines as progress), then
// done with its record; a follower resumed from an event's id gets
// exactly what follows it.
func TestEventsFollowAndResume(t *testing.T) {
	fb := newFakeBuilds()
	s, _ := newService(t, fb.build)
	b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	<-fb.started
	mid := waitFor(t, s, b.ID, "in phase inputs", func(b imagebuild.Build) bool { return b.Phase == "inputs" })
	if mid.Step != 2 || mid.Steps != 3 || mid.State != imagebuild.Running {
		t.Fatalf("record mid-build %+v", mid)
	}
	// A follower that leaves mid-build.
	first := events(t, s, b.ID, 0, func(e imagebuild.Event) bool { return e.Type == imagebuild.EventProgress && e.Phase == "inputs" })
	fb.release <- nil
	all := events(t, s, b.ID, 0, nil)
	var types []string
	for _, e := range all {
		types = append(types, string(e.Type)+":"+e.Phase)
	}
	want := "log: log: progress:kernel progress:inputs progress:rootfs log: done:"
	if strings.Join(types, " ") != want {
		t.Fatalf("events %q, want %q\n%+v", strings.Join(types, " "), want, all)
	}
	if !strings.Contains(all[0].Line, "queued") || !strings.Contains(all[1].Line, "running") ||
		all[2].Line != "[1/3] kernel: resolving  ... done (0.1s)" || !strings.Contains(all[5].Line, "succeeded: image minimal") {
		t.Fatalf("lines %+v", all)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID <= all[i-1].ID {
			t.Fatalf("event ids not increasing: %+v", all)
		}
	}
	done := all[len(all)-1]
	if done.Build.State != imagebuild.Succeeded || done.ID != done.Build.LogSize+1 {
		t.Fatalf("done %+v", done)
	}
	// Resumed from the last event the first follower saw: the rest, once.
	rest := events(t, s, b.ID, first[len(first)-1].ID, nil)
	if len(first)+len(rest) != len(all) {
		t.Fatalf("first %d + resumed %d events, want %d", len(first), len(rest), len(all))
	}
	for i, e := range rest {
		if w := all[len(first)+i]; e.ID != w.ID || e.Line != w.Line || e.Type != w.Type {
			t.Fatalf("resumed event %d: %+v, want %+v", i, e, w)
		}
	}
	// Resumed from done: done again, and nothing else.
	again := events(t, s, b.ID, done.ID, nil)
	if len(again) != 1 || again[0].Type != imagebuild.EventDone {
		t.Fatalf("resumed after done: %+v", again)
	}
}

// A build's log stays within its bound however much it writes; a
// follower from the start gets the head, a dropped event, the tail and
// done, and never a line twice.
func TestBuildLogIsBounded(t *testing.T) {
	lim := consolelog.Limits{Max: 32 << 10, Head: 8 << 10}
	line := strings.Repeat("x", 90)
	var lines atomic.Int32
	flood := func(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
		for i := range 5000 { // 500 KB: 15 times the bound
			fmt.Fprintf(log, "line %05d %s\n", i, line)
			lines.Add(1)
		}
		return store.Image{ID: "img", Status: store.ImageVerified}, nil
	}
	s, cfg := newService(t, flood, func(c *imagebuild.Config) { c.LogLimits = lim })
	b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	done := waitState(t, s, b.ID, imagebuild.Succeeded)
	if done.LogSize < 5000*100 {
		t.Fatalf("log size %d: less than was written", done.LogSize)
	}
	var disk int64
	err = filepath.Walk(filepath.Join(cfg.LogDir, b.ID), func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			disk += info.Size()
		}
		return err
	})
	if err != nil || disk > lim.Max {
		t.Fatalf("the log holds %d bytes on disk, bound %d (%v)", disk, lim.Max, err)
	}
	evs := events(t, s, b.ID, 0, nil)
	seen := map[string]bool{}
	var dropped, lineEvents int
	for _, e := range evs {
		switch e.Type {
		case imagebuild.EventDropped:
			dropped++
		case imagebuild.EventLog:
			if seen[e.Line] && strings.HasPrefix(e.Line, "line ") {
				t.Fatalf("line twice: %q", e.Line)
			}
			seen[e.Line] = true
			lineEvents++
		}
	}
	if dropped != 1 || !seen["line 00000 "+line] || !seen["line 04999 "+line] || evs[len(evs)-1].Type != imagebuild.EventDone {
		t.Fatalf("%d dropped events, first line kept %v, last line kept %v, %d events", dropped, seen["line 00000 "+line], seen["line 04999 "+line], len(evs))
	}
	if lineEvents > int(lim.Max/100)+4 {
		t.Fatalf("%d line events from a log of %d bytes", lineEvents, lim.Max)
	}
}

// A line without end comes in bounded pieces, none lost.
func TestLongLinesComeInPieces(t *testing.T) {
	long := strings.Repeat("y", 10000)
	s, _ := newService(t, func(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
		for i := 0; i < len(long); i += 1000 {
			if _, err := io.WriteString(log, long[i:i+1000]); err != nil {
				return store.Image{}, err
			}
		}
		_, err := io.WriteString(log, "\n")
		return store.Image{ID: "img", Status: store.ImageVerified}, err
	})
	b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, s, b.ID, imagebuild.Succeeded)
	var got strings.Builder
	for _, e := range events(t, s, b.ID, 0, nil) {
		if strings.HasPrefix(e.Line, "y") {
			if len(e.Line) > 4096 {
				t.Fatalf("a piece of %d bytes", len(e.Line))
			}
			got.WriteString(e.Line)
		}
	}
	if got.String() != long {
		t.Fatalf("pieces add up to %d bytes, want %d", got.Len(), len(long))
	}
}

// Shutdown cancels a running build's context and waits for it to return,
// cancels the queued ones, and refuses new ones.
func TestShutdownCancelsBuilds(t *testing.T) {
	cancelled := make(chan struct{})
	release := make(chan struct{})
	var returned atomic.Bool
	s, _ := newService(t, func(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
		<-ctx.Done()
		close(cancelled)
		<-release // still cleaning up
		returned.Store(true)
		return store.Image{}, ctx.Err()
	})
	running, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, s, running.ID, imagebuild.Running)
	queued, _, err := s.Start(imagebuild.Request{Profile: "browser"})
	if err != nil || queued.State != imagebuild.Queued {
		t.Fatalf("second build %+v %v", queued, err)
	}
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	<-cancelled
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a build was still running", err)
	default:
	}
	close(release)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if !returned.Load() {
		t.Fatal("Shutdown returned before the build did")
	}
	for _, id := range []string{running.ID, queued.ID} {
		b, err := s.Get(id)
		if err != nil || b.State != imagebuild.Cancelled || b.Error == "" {
			t.Fatalf("build %s after shutdown: %+v %v", id, b, err)
		}
	}
	if _, _, err := s.Start(imagebuild.Request{Profile: "minimal"}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("start after shutdown: %v", err)
	}
}

// A build that never ends makes Shutdown give up when its context does.
func TestShutdownIsBounded(t *testing.T) {
	stuck := make(chan struct{})
	s, _ := newService(t, func(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
		<-stuck
		return store.Image{}, errors.New("stuck")
	})
	t.Cleanup(func() { close(stuck) })
	b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, s, b.ID, imagebuild.Running)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("shutdown with a stuck build: %v", err)
	}
}

// Failures end in failed with the reason: an error, an image that failed
// verification (its id kept), a panic.
func TestFailuresSayWhy(t *testing.T) {
	var mode atomic.Int32
	s, _ := newService(t, func(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
		switch mode.Load() {
		case 0:
			return store.Image{}, errors.New("build minimal: phase rootfs: mkfs.ext4: exit status 1")
		case 1:
			return store.Image{ID: "img-bad", Status: store.ImageFailed}, nil
		default:
			panic("builder bug")
		}
	})
	for i, want := range []string{"phase rootfs: mkfs.ext4", "image img-bad was built but failed verification", "internal error in the image builder: builder bug"} {
		mode.Store(int32(i))
		b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
		if err != nil {
			t.Fatal(err)
		}
		got := waitFor(t, s, b.ID, "ended", func(b imagebuild.Build) bool { return b.State.Terminal() })
		if got.State != imagebuild.Failed || !strings.Contains(got.Error, want) {
			t.Fatalf("case %d: %+v, want failed with %q", i, got, want)
		}
		evs := events(t, s, b.ID, 0, nil)
		if last := evs[len(evs)-2]; !strings.Contains(last.Line, want) {
			t.Fatalf("case %d: the log's last line is %q", i, last.Line)
		}
	}
	if b, _ := s.Get(s.List()[1].ID); b.Image != "img-bad" || b.ImageStatus != store.ImageFailed {
		t.Fatalf("a build whose image failed verification: %+v", b)
	}
}

// At most MaxQueued builds wait; the newest Keep finished ones are
// remembered, older ones forgotten with their logs.
func TestQueueAndHistoryAreBounded(t *testing.T) {
	fb := newFakeBuilds()
	s, cfg := newService(t, fb.build, func(c *imagebuild.Config) { c.MaxQueued, c.Keep = 2, 2 })
	var ids []string
	for i := range 3 {
		b, _, err := s.Start(imagebuild.Request{Profile: "minimal", KernelPackage: fmt.Sprintf("linux-image-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.ID)
	}
	if _, _, err := s.Start(imagebuild.Request{Profile: "minimal", KernelPackage: "linux-image-9"}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("a third queued build: %v", err)
	}
	for range ids {
		<-fb.started
		fb.release <- nil
	}
	waitState(t, s, ids[2], imagebuild.Succeeded)
	if _, err := s.Get(ids[0]); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("the oldest of 3 finished builds (keep 2): %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.LogDir, ids[0])); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a forgotten build's log is still there: %v", err)
	}
	if l := s.List(); len(l) != 2 || l[0].ID != ids[1] || l[1].ID != ids[2] {
		t.Fatalf("list %+v", l)
	}
}

// Exclusive refuses while a build runs; while it runs, a build asked for
// waits, and starts once it returns.
func TestExclusiveKeepsBuildsOut(t *testing.T) {
	fb := newFakeBuilds()
	s, _ := newService(t, fb.build)
	b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	<-fb.started
	if err := s.Exclusive(context.Background(), func(context.Context) error { return nil }); !errors.Is(err, errdefs.ErrConflict) ||
		!strings.Contains(errdefs.Public(err), b.ID) {
		t.Fatalf("exclusive while %s runs: %v", b.ID, err)
	}
	fb.release <- nil
	waitState(t, s, b.ID, imagebuild.Succeeded)
	var waiting imagebuild.Build
	err = s.Exclusive(context.Background(), func(context.Context) error {
		var err error
		waiting, _, err = s.Start(imagebuild.Request{Profile: "browser"})
		if err != nil {
			return err
		}
		if got, _ := s.Get(waiting.ID); got.State != imagebuild.Queued {
			return fmt.Errorf("a build started during Exclusive: %+v", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if job := <-fb.started; job.Spec.Name != "browser" {
		t.Fatalf("job %+v", job)
	}
	waitState(t, s, waiting.ID, imagebuild.Running)
	fb.release <- nil
}

// Without the agent binary no build starts, and the request says why.
func TestNoAgentNoBuild(t *testing.T) {
	fb := newFakeBuilds()
	s, _ := newService(t, fb.build, func(c *imagebuild.Config) {
		c.Agent = func() (string, error) { return "", errors.New("no hearth-agent next to /usr/bin/hearth") }
	})
	_, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(errdefs.Public(err), "no hearth-agent") {
		t.Fatalf("start without an agent: %v", err)
	}
}

// A new service empties the log directory an earlier daemon left.
func TestNewServiceClearsOldLogs(t *testing.T) {
	fb := newFakeBuilds()
	_, cfg := newService(t, fb.build)
	old := filepath.Join(cfg.LogDir, "build-old")
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := imagebuild.New(cfg, imagebuild.Deps{Build: fb.build}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an earlier daemon's build log is still there: %v", err)
	}
}
