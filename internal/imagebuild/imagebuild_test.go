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

// followToDone returns the lines of a build's events, done excluded, and
// its done event, which must end them.
func followToDone(t *testing.T, s *imagebuild.Service, id string) ([]string, imagebuild.Event) {
	t.Helper()
	evs := events(t, s, id, 0, nil)
	done := evs[len(evs)-1]
	if done.Type != imagebuild.EventDone {
		t.Fatalf("build %s: events end with %+v, not done", id, done)
	}
	var lines []string
	for _, e := range evs[:len(evs)-1] {
		lines = append(lines, e.Line)
	}
	return lines, done
}

// A queued build that is cancelled leaves the queue and ends cancelled at
// once, for the requests that joined it too; it never runs, and the
// builds queued behind it still do.
func TestCancelQueuedBuild(t *testing.T) {
	fb := newFakeBuilds()
	s, _ := newService(t, fb.build)
	running, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	<-fb.started
	queued, _, err := s.Start(imagebuild.Request{Profile: "minimal", KernelPackage: "linux-image-1"})
	if err != nil || queued.State != imagebuild.Queued {
		t.Fatalf("second build %+v %v", queued, err)
	}
	if again, joined, err := s.Start(imagebuild.Request{Profile: "minimal", KernelPackage: "linux-image-1"}); err != nil || !joined || again.ID != queued.ID {
		t.Fatalf("a second request for the queued build: %+v joined=%v %v", again, joined, err)
	}
	behind, _, err := s.Start(imagebuild.Request{Profile: "minimal", KernelPackage: "linux-image-2"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Cancel(queued.ID)
	if err != nil || got.State != imagebuild.Cancelled || got.Error != "cancelled by request" || got.EndedAt.IsZero() || !got.StartedAt.IsZero() {
		t.Fatalf("cancel of a queued build: %+v %v", got, err)
	}
	lines, done := followToDone(t, s, queued.ID)
	if done.Build.State != imagebuild.Cancelled || done.Build.Error != "cancelled by request" ||
		!strings.Contains(lines[len(lines)-1], "cancelled before it started: cancelled by request") {
		t.Fatalf("cancelled build's events: %q then %+v", lines, done)
	}
	// The request that joined it asks again: a new build, not the
	// cancelled one.
	if next, joined, err := s.Start(imagebuild.Request{Profile: "minimal", KernelPackage: "linux-image-1"}); err != nil || joined || next.ID == queued.ID {
		t.Fatalf("asking again after the cancel: %+v joined=%v %v", next, joined, err)
	}
	fb.release <- nil
	waitState(t, s, running.ID, imagebuild.Succeeded)
	if job := <-fb.started; job.KernelPackage != "linux-image-2" {
		t.Fatalf("after the first build, %+v ran; want the one queued behind the cancelled one", job)
	}
	waitState(t, s, behind.ID, imagebuild.Running)
	fb.release <- nil
	waitState(t, s, behind.ID, imagebuild.Succeeded)
	<-fb.started // the build asked for again
	fb.release <- nil
	if n := fb.calls.Load(); n != 3 {
		t.Fatalf("%d builds ran, want 3 (not the cancelled one)", n)
	}
}

// A running build that is cancelled has its context cancelled, with the
// request as the cause; it ends cancelled only once the build function
// has returned (its cleanup done), for every request that joined it and
// every follower. Cancelling it again meanwhile changes nothing; once it
// has ended, a cancel is a conflict; an unknown build is not found.
func TestCancelRunningBuild(t *testing.T) {
	cleaning := make(chan struct{})
	cleaned := make(chan struct{})
	var returned atomic.Bool
	s, _ := newService(t, func(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
		fmt.Fprintf(log, "[1/2] rootfs: writing\n")
		<-ctx.Done()
		fmt.Fprintf(log, "removing the work directory\n")
		close(cleaning)
		<-cleaned
		returned.Store(true)
		return store.Image{}, fmt.Errorf("phase rootfs: %w", context.Cause(ctx))
	})
	b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, b.ID, "in phase rootfs", func(b imagebuild.Build) bool { return b.Phase == "rootfs" })
	if again, joined, err := s.Start(imagebuild.Request{Profile: "minimal"}); err != nil || !joined || again.ID != b.ID {
		t.Fatalf("a second request: %+v joined=%v %v", again, joined, err)
	}
	// Two followers, one per request, both there before the cancel.
	type result struct {
		lines []string
		done  imagebuild.Event
	}
	results := make(chan result, 2)
	for range 2 {
		f, err := s.Follow(b.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			var r result
			for {
				changed := f.Changed()
				evs, err := f.Next()
				if err != nil {
					t.Error(err)
					results <- r
					return
				}
				for _, e := range evs {
					if e.Type == imagebuild.EventDone {
						r.done = e
					} else {
						r.lines = append(r.lines, e.Line)
					}
				}
				if f.Over() {
					results <- r
					return
				}
				<-changed
			}
		}()
	}
	got, err := s.Cancel(b.ID)
	if err != nil || got.State != imagebuild.Running || got.Error != "" {
		t.Fatalf("cancel of a running build: %+v %v", got, err)
	}
	<-cleaning
	if again, err := s.Cancel(b.ID); err != nil || again.State != imagebuild.Running {
		t.Fatalf("a second cancel while the builder cleans up: %+v %v", again, err)
	}
	if now, _ := s.Get(b.ID); now.State != imagebuild.Running {
		t.Fatalf("the build ended (%+v) before its function returned", now)
	}
	close(cleaned)
	for range 2 {
		r := <-results
		if r.done.Build.State != imagebuild.Cancelled || r.done.Build.Error != "cancelled by request" {
			t.Fatalf("a follower's done: %+v", r.done)
		}
		text := strings.Join(r.lines, "\n")
		for _, want := range []string{"cancel requested; it ends once the builder has stopped", "removing the work directory",
			"hearth: build " + b.ID + " cancelled: cancelled by request"} {
			if !strings.Contains(text, want) {
				t.Fatalf("a follower's lines lack %q:\n%s", want, text)
			}
		}
	}
	if !returned.Load() {
		t.Fatal("the build ended before its function returned")
	}
	if _, err := s.Cancel(b.ID); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(errdefs.Public(err), "already ended (cancelled)") {
		t.Fatalf("cancel of an ended build: %v", err)
	}
	if _, err := s.Cancel("build-nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("cancel of an unknown build: %v", err)
	}
}

// A finished build cannot be cancelled; a build whose function returns
// success after the cancel (its image was registered already) ends
// succeeded, its log saying the cancel came too late.
func TestCancelAfterTheEnd(t *testing.T) {
	fb := newFakeBuilds()
	s, _ := newService(t, fb.build)
	b, _, err := s.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	<-fb.started
	fb.release <- nil
	waitState(t, s, b.ID, imagebuild.Succeeded)
	if _, err := s.Cancel(b.ID); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(errdefs.Public(err), "already ended (succeeded)") {
		t.Fatalf("cancel of a succeeded build: %v", err)
	}

	cancelled := make(chan struct{})
	finish := make(chan struct{})
	late, _ := newService(t, func(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
		<-ctx.Done()
		close(cancelled)
		<-finish // registering, past the point a cancel stops
		return store.Image{ID: "img-late", Name: "minimal", Status: store.ImageVerified}, nil
	})
	lb, _, err := late.Start(imagebuild.Request{Profile: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, late, lb.ID, imagebuild.Running)
	if _, err := late.Cancel(lb.ID); err != nil {
		t.Fatal(err)
	}
	<-cancelled
	close(finish)
	lines, done := followToDone(t, late, lb.ID)
	if done.Build.State != imagebuild.Succeeded || done.Build.Image != "img-late" || done.Build.Error != "" ||
		!strings.Contains(strings.Join(lines, "\n"), "cancelled too late: its image was registered already") {
		t.Fatalf("a build that registered its image despite the cancel: %q then %+v", lines, done.Build)
	}
}
