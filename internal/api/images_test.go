package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/imagebuild"
	"github.com/hearth-project/hearth/internal/store"
)

// gatedBuilds is the fixture's image build function: a build logs a phase
// line, says it started, and waits for the test to release it; released
// without an error, it registers an image as the real one does (its
// directory under the registry's, its id the spec's digest).
type gatedBuilds struct {
	st       store.Store
	started  chan string // the spec's name, as each build starts
	release  chan error
	imageDir string
}

func newGatedBuilds(st store.Store) *gatedBuilds {
	return &gatedBuilds{st: st, started: make(chan string, 16), release: make(chan error)}
}

func (g *gatedBuilds) build(ctx context.Context, job imagebuild.Job, log io.Writer) (store.Image, error) {
	fmt.Fprintf(log, "[1/2] kernel: resolving linux-image-amd64 ... done (0.1s)\n")
	g.started <- job.Spec.Name
	select {
	case err := <-g.release:
		if err != nil {
			return store.Image{}, err
		}
	case <-ctx.Done():
		return store.Image{}, ctx.Err()
	}
	fmt.Fprintf(log, "[2/2] rootfs: writing rootfs.ext4 ... done (0.1s)\n")
	digest, err := job.Spec.Digest()
	if err != nil {
		return store.Image{}, err
	}
	dir := filepath.Join(g.imageDir, job.Spec.Name+"-"+digest[:16])
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return store.Image{}, err
	}
	img := store.Image{ID: digest, Name: job.Spec.Name, Role: job.Spec.Role, KernelPath: dir + "/vmlinux", InitrdPath: dir + "/initrd.img",
		RootfsPath: dir + "/rootfs.ext4", Manifest: []byte(`{"profile":"` + job.Spec.Name + `"}`), CreatedAt: time.Now().UTC(),
		Status: store.ImageVerified}
	return img, g.st.PutImage(ctx, img)
}

// buildSSE is one event of an image build's stream.
type buildSSE = sseOf[v1.ImageBuildEvent]

// readBuildSSE reads a build's events until stop accepts one or the
// stream ends (readEvents).
func readBuildSSE(t *testing.T, body io.Reader, stop func(buildSSE) bool) []buildSSE {
	t.Helper()
	out, _ := readEvents(t, body, stop)
	return out
}

// newImageFixture is a fixture whose builds register their images in its
// registry's directory.
func newImageFixture(t *testing.T, opts ...func(*fixtureOptions)) *fixture {
	f := newFixture(t, opts...)
	f.built.imageDir = f.images.ImageDir
	return f
}

// A build asked for over the API runs in the daemon: a second request for
// the same spec joins it, a follower that disconnects mid-build resumes
// from its last event and misses nothing, and the build ends registered
// whoever was connected.
func TestImageBuildJoinsAndOutlivesItsClients(t *testing.T) {
	f := newImageFixture(t)
	a := f.do("POST", "/v1/images", f.admin, `{"profile":"minimal"}`)
	if a.status != http.StatusAccepted {
		t.Fatalf("build: %d %s", a.status, a.body)
	}
	var b v1.ImageBuild
	a.json(t, &b)
	if a.header.Get("Location") != "/v1/images/builds/"+b.ID || b.SpecName != "minimal" || b.Profile != "minimal" || len(b.SpecDigest) != 64 {
		t.Fatalf("build %+v, location %q", b, a.header.Get("Location"))
	}
	if name := <-f.built.started; name != "minimal" {
		t.Fatalf("started %q", name)
	}
	// The same spec as text, while it runs: the same build.
	text, err := os.ReadFile("../../images/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(v1.BuildImage{Spec: string(text)})
	j := f.do("POST", "/v1/images", f.admin, string(body))
	var joined v1.ImageBuild
	j.json(t, &joined)
	if j.status != http.StatusOK || joined.ID != b.ID || joined.State != v1.ImageBuildStateRunning || joined.Phase != "kernel" {
		t.Fatalf("second request for the same spec: %d %s", j.status, j.body)
	}

	// A follower reads up to the kernel phase, then goes away.
	ctx, hangUp := context.WithCancel(context.Background())
	resp := f.stream(ctx, f.srv.URL, "/v1/images/builds/"+b.ID+"/events", f.admin, "")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	first := readBuildSSE(t, resp.Body, func(e buildSSE) bool { return e.Data.Type == v1.ImageBuildEventTypeProgress })
	hangUp()
	resp.Body.Close()
	f.srv.CloseClientConnections()
	last := first[len(first)-1]
	if last.Data.Phase != "kernel" || last.Data.Step != 1 || last.Data.Steps != 2 || !strings.Contains(first[0].Data.Line, "queued") {
		t.Fatalf("events before the hang-up: %+v", first)
	}

	f.built.release <- nil // the build goes on with no client connected

	// Resumed with Last-Event-ID: exactly what followed, then done.
	resp = f.stream(context.Background(), f.srv.URL, "/v1/images/builds/"+b.ID+"/events", f.admin, strconv.FormatInt(last.ID, 10))
	rest := readBuildSSE(t, resp.Body, nil)
	resp.Body.Close()
	if len(rest) < 2 || rest[0].ID <= last.ID {
		t.Fatalf("resumed after %d: %+v", last.ID, rest)
	}
	if rest[0].Data.Type != v1.ImageBuildEventTypeProgress || rest[0].Data.Phase != "rootfs" {
		t.Fatalf("first event after the resume point: %+v", rest[0])
	}
	done := rest[len(rest)-1].Data
	if done.Type != v1.ImageBuildEventTypeDone || done.Build.State != v1.ImageBuildStateSucceeded ||
		done.Build.ImageStatus != v1.ImageBuildImageStatusVerified || done.Build.Image != b.SpecDigest || done.ID != done.Build.LogSize+1 {
		t.Fatalf("done %+v", done)
	}
	// ?since= resumes the same way.
	resp = f.stream(context.Background(), f.srv.URL, "/v1/images/builds/"+b.ID+"/events?since="+strconv.FormatInt(last.ID, 10), f.admin, "")
	again := readBuildSSE(t, resp.Body, nil)
	resp.Body.Close()
	if len(again) != len(rest) || again[0].ID != rest[0].ID {
		t.Fatalf("since=%d: %d events, Last-Event-ID: %d", last.ID, len(again), len(rest))
	}

	// Registered: listed, inspectable, and the build's record says so.
	var imgs v1.ImageList
	f.do("GET", "/v1/images", f.alice, "").json(t, &imgs)
	found := false
	for _, im := range imgs.Images {
		found = found || im.ID == b.SpecDigest && im.Status == v1.ImageStatusVerified
	}
	if !found {
		t.Fatalf("the built image is not listed: %+v", imgs)
	}
	var got v1.ImageBuild
	if a := f.do("GET", "/v1/images/builds/"+b.ID, f.admin, ""); a.status != 200 {
		t.Fatalf("get build: %d %s", a.status, a.body)
	} else {
		a.json(t, &got)
	}
	if got.State != v1.ImageBuildStateSucceeded || got.EndedAt.IsZero() || got.Phase != "rootfs" {
		t.Fatalf("build record %+v", got)
	}
	var list v1.ImageBuildList
	f.do("GET", "/v1/images/builds", f.admin, "").json(t, &list)
	if len(list.Builds) != 1 || list.Builds[0].ID != b.ID {
		t.Fatalf("builds %+v", list)
	}
	// A new request for it now is a new build (the builder would find the
	// image made).
	if a := f.do("POST", "/v1/images", f.admin, `{"profile":"minimal"}`); a.status != http.StatusAccepted {
		t.Fatalf("build after the first ended: %d %s", a.status, a.body)
	}
	<-f.built.started
	f.built.release <- nil
}

// What only admin keys may do answers 403 to user keys; unknown builds and
// images 404; bad requests 400 naming the field.
func TestImageRoutesRefuse(t *testing.T) {
	f := newImageFixture(t)
	for _, r := range []struct{ method, path, body string }{
		{"POST", "/v1/images", `{"profile":"minimal"}`},
		{"GET", "/v1/images/builds", ""},
		{"GET", "/v1/images/builds/build-x", ""},
		{"GET", "/v1/images/builds/build-x/events", ""},
		{"DELETE", "/v1/images/builds/build-x", ""},
		{"POST", "/v1/images/gc", ""},
		{"DELETE", "/v1/images/minimal", ""},
		{"POST", "/v1/images/minimal/verify", ""},
	} {
		if a := f.do(r.method, r.path, f.alice, r.body); a.status != http.StatusForbidden || a.errCode() != "forbidden" ||
			!strings.Contains(a.errMessage(), "only admin keys") {
			t.Errorf("%s %s with a user key: %d %s", r.method, r.path, a.status, a.body)
		}
	}
	for _, r := range []struct{ method, path, want string }{
		{"GET", "/v1/images/builds/build-nope", "image build build-nope not found"},
		{"GET", "/v1/images/builds/build-nope/events", "image build build-nope not found"},
		{"DELETE", "/v1/images/builds/build-nope", "image build build-nope not found"},
		{"GET", "/v1/images/nope", "image nope not found"},
		{"DELETE", "/v1/images/nope", "image nope not found"},
		{"POST", "/v1/images/nope/verify", "image nope not found"},
	} {
		if a := f.do(r.method, r.path, f.admin, ""); a.status != http.StatusNotFound || a.errMessage() != r.want {
			t.Errorf("%s %s: %d %s, want 404 %q", r.method, r.path, a.status, a.body, r.want)
		}
	}
	long, _ := json.Marshal(v1.BuildImage{Spec: strings.Repeat("#", imagebuild.MaxSpecBytes+1)})
	for _, c := range []struct{ body, want string }{
		{`{}`, "profile or spec is required"},
		{`{"profile":"minimal","spec":"name: x"}`, "give profile or spec, not both"},
		{`{"profile":"nope"}`, `field "profile": unknown image spec "nope"`},
		{`{"profile":"../../etc/passwd"}`, `unknown image spec`},
		{`{"spec":"name: [\n"}`, `field "spec" is not a valid image spec: spec:`},
		{`{"spec":"name: x\nrole: minimal\nbase: {kind: busybox}\nsize_mib: -1\n"}`, `spec:4`},
		{string(long), `field "spec"`},
		{`{"profile":"minimal","kernel_package":"-o=Dir::Etc=/tmp"}`, `field "kernel_package"`},
		{`{"profile":"minimal","nope":1}`, `unknown field "nope"`},
		{`{"profile":7}`, `field "profile" must be a string`},
	} {
		a := f.do("POST", "/v1/images", f.admin, c.body)
		if a.status != http.StatusBadRequest || !strings.Contains(a.errMessage(), c.want) {
			t.Errorf("build %s: %d %s, want 400 with %q", c.body, a.status, a.body, c.want)
		}
	}
	if a := f.do("GET", "/v1/images/builds", f.admin, ""); a.status != 200 || !strings.Contains(string(a.body), `"builds": []`) {
		t.Fatalf("refused requests made builds: %s", a.body)
	}
	// Wrong methods are 405 with what is allowed, also where the build
	// routes and the image routes share a prefix.
	if a := f.do("PUT", "/v1/images/builds/build-x", f.admin, ""); a.status != http.StatusMethodNotAllowed || a.header.Get("Allow") != "DELETE, GET" {
		t.Errorf("PUT on a build: %d %s %q", a.status, a.body, a.header.Get("Allow"))
	}
	if a := f.do("GET", "/v1/images/minimal/verify", f.admin, ""); a.status != http.StatusMethodNotAllowed || a.header.Get("Allow") != "POST" {
		t.Errorf("GET on verify: %d %s %q", a.status, a.body, a.header.Get("Allow"))
	}
	if a := f.do("POST", "/healthz", "", ""); a.status != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz without a key: %d %s", a.status, a.body)
	}
	if a := f.do("PUT", "/v1/images/minimal", "", ""); a.status != http.StatusUnauthorized {
		t.Errorf("a wrong method on an authenticated route without a key: %d %s", a.status, a.body)
	}
	if a := f.do("GET", "/v1/images/builds/build-nope/events?since=-1", f.admin, ""); a.status != http.StatusBadRequest {
		t.Errorf("since=-1: %d %s", a.status, a.body)
	}
}

// Inspect shows the manifest to every key and the host paths to admin
// keys; verify records a verdict even when it is failed; an image in use
// is not removed (409 naming the VM); collection waits for no build.
func TestImageInspectVerifyRemoveCollect(t *testing.T) {
	f := newImageFixture(t)
	var user, admin v1.ImageDetail
	if a := f.do("GET", "/v1/images/minimal", f.alice, ""); a.status != 200 {
		t.Fatalf("inspect: %d %s", a.status, a.body)
	} else {
		a.json(t, &user)
	}
	f.do("GET", "/v1/images/minimal", f.admin, "").json(t, &admin)
	if user.Rootfs != "" || admin.Rootfs != "/r" || user.ID != admin.ID || user.Status != v1.ImageDetailStatusVerified {
		t.Fatalf("inspect as a user %+v, as an admin %+v", user, admin)
	}

	// A build's image: verified by the build, failed once its files are
	// found missing.
	a := f.do("POST", "/v1/images", f.admin, `{"profile":"workspace"}`)
	var b v1.ImageBuild
	a.json(t, &b)
	<-f.built.started
	if gc := f.do("POST", "/v1/images/gc", f.admin, ""); gc.status != http.StatusConflict || !strings.Contains(gc.errMessage(), b.ID) {
		t.Fatalf("gc while %s runs: %d %s", b.ID, gc.status, gc.body)
	}
	f.built.release <- nil
	resp := f.stream(context.Background(), f.srv.URL, "/v1/images/builds/"+b.ID+"/events", f.admin, "")
	evs := readBuildSSE(t, resp.Body, nil)
	resp.Body.Close()
	img := evs[len(evs)-1].Data.Build.Image
	var det v1.ImageDetail
	f.do("GET", "/v1/images/"+img, f.admin, "").json(t, &det)
	if det.Manifest["profile"] != "workspace" {
		t.Fatalf("manifest %+v", det.Manifest)
	}
	if err := os.Remove(det.Rootfs); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	v := f.do("POST", "/v1/images/"+img[:12]+"/verify", f.admin, "")
	var ver v1.ImageDetail
	v.json(t, &ver)
	if v.status != 200 || ver.Status != v1.ImageDetailStatusFailed || (ver.Verification.Error == "" && len(ver.Verification.Claims) == 0) || ver.VerifiedAt.IsZero() {
		t.Fatalf("verify of an image without its files: %d %s", v.status, v.body)
	}
	var after v1.ImageList
	f.do("GET", "/v1/images", f.alice, "").json(t, &after)
	for _, im := range after.Images {
		if im.ID == img && im.Status != v1.ImageStatusFailed {
			t.Fatalf("the verdict was not recorded: %+v", im)
		}
	}

	// In use: kept; free: removed with its directory.
	used := f.createVM(f.alice, `{"image":"minimal"}`)
	if d := f.do("DELETE", "/v1/images/minimal", f.admin, ""); d.status != http.StatusConflict || !strings.Contains(d.errMessage(), used.ID) {
		t.Fatalf("delete of an image in use: %d %s", d.status, d.body)
	}
	dir := filepath.Dir(det.Rootfs)
	if d := f.do("DELETE", "/v1/images/"+img, f.admin, ""); d.status != 200 {
		t.Fatalf("delete: %d %s", d.status, d.body)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the removed image's directory: %v", err)
	}
	// Collection once no build runs: what no record names goes.
	stray := filepath.Join(f.images.ImageDir, "old-0123456789abcdef")
	if err := os.MkdirAll(stray, 0o755); err != nil {
		t.Fatal(err)
	}
	var c v1.CollectedImages
	gc := f.do("POST", "/v1/images/gc", f.admin, "")
	gc.json(t, &c)
	if gc.status != 200 || len(c.Images) != 1 || c.Images[0] != stray {
		t.Fatalf("gc: %d %s", gc.status, gc.body)
	}
}

// A follower of a build that hearth's shutdown cancels gets done with the
// reason; a build's stream takes one of the key's stream slots.
func TestImageBuildEventsEndAtShutdownAndCountAsStreams(t *testing.T) {
	f := newImageFixture(t, func(o *fixtureOptions) { o.maxStreams = 1 })
	a := f.do("POST", "/v1/images", f.admin, `{"profile":"minimal"}`)
	var b v1.ImageBuild
	a.json(t, &b)
	<-f.built.started
	resp := f.stream(context.Background(), f.srv.URL, "/v1/images/builds/"+b.ID+"/events", f.admin, "")
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("events: %d", resp.StatusCode)
	}
	// Read up to the phase line, so the stream has certainly started.
	readBuildSSE(t, resp.Body, func(e buildSSE) bool { return e.Data.Type == v1.ImageBuildEventTypeProgress })
	second := f.stream(context.Background(), f.srv.URL, "/v1/events", f.admin, "")
	second.Body.Close()
	if second.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a second stream with max 1: %d", second.StatusCode)
	}
	if err := f.builds.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rest := readBuildSSE(t, resp.Body, nil)
	done := rest[len(rest)-1].Data
	if done.Type != v1.ImageBuildEventTypeDone || done.Build.State != v1.ImageBuildStateCancelled || done.Build.Error == "" {
		t.Fatalf("events after shutdown: %+v", rest)
	}
	if a := f.do("POST", "/v1/images", f.admin, `{"profile":"minimal"}`); a.status != http.StatusServiceUnavailable {
		t.Fatalf("build after shutdown: %d %s", a.status, a.body)
	}
}

// A cancelled build ends cancelled for everyone following it: a queued
// one at once (200), a running one once its builder has stopped (202,
// answered as it is); nothing of it is registered, and cancelling it
// again once it has ended is a 409.
func TestCancelImageBuild(t *testing.T) {
	f := newImageFixture(t)
	var running, queued v1.ImageBuild
	f.do("POST", "/v1/images", f.admin, `{"profile":"minimal"}`).json(t, &running)
	<-f.built.started
	f.do("POST", "/v1/images", f.admin, `{"profile":"workspace"}`).json(t, &queued)
	if queued.State != v1.ImageBuildStateQueued {
		t.Fatalf("second build %+v", queued)
	}
	var got v1.ImageBuild
	a := f.do("DELETE", "/v1/images/builds/"+queued.ID, f.admin, "")
	a.json(t, &got)
	if a.status != http.StatusOK || got.State != v1.ImageBuildStateCancelled || got.Error != "cancelled by request" {
		t.Fatalf("cancel of a queued build: %d %s", a.status, a.body)
	}

	// Two followers of the running build, as two requesters would be.
	var streams []io.ReadCloser
	for range 2 {
		resp := f.stream(context.Background(), f.srv.URL, "/v1/images/builds/"+running.ID+"/events", f.admin, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("events: %d", resp.StatusCode)
		}
		defer resp.Body.Close()
		readBuildSSE(t, resp.Body, func(e buildSSE) bool { return e.Data.Type == v1.ImageBuildEventTypeProgress })
		streams = append(streams, resp.Body)
	}
	a = f.do("DELETE", "/v1/images/builds/"+running.ID, f.admin, "")
	a.json(t, &got)
	if a.status != http.StatusAccepted || got.ID != running.ID || got.State != v1.ImageBuildStateRunning {
		t.Fatalf("cancel of a running build: %d %s", a.status, a.body)
	}
	for _, body := range streams {
		rest := readBuildSSE(t, body, nil)
		done := rest[len(rest)-1].Data
		if done.Type != v1.ImageBuildEventTypeDone || done.Build.State != v1.ImageBuildStateCancelled || done.Build.Error != "cancelled by request" {
			t.Fatalf("a follower's events after the cancel: %+v", rest)
		}
	}
	f.do("GET", "/v1/images/builds/"+running.ID, f.admin, "").json(t, &got)
	if got.State != v1.ImageBuildStateCancelled || got.Image != "" || got.EndedAt.IsZero() {
		t.Fatalf("cancelled build's record %+v", got)
	}
	var imgs v1.ImageList
	f.do("GET", "/v1/images", f.admin, "").json(t, &imgs)
	for _, im := range imgs.Images {
		if im.ID == running.SpecDigest || im.ID == queued.SpecDigest {
			t.Fatalf("a cancelled build's image was registered: %+v", im)
		}
	}
	for _, id := range []string{running.ID, queued.ID} {
		if a := f.do("DELETE", "/v1/images/builds/"+id, f.admin, ""); a.status != http.StatusConflict || a.errCode() != "conflict" ||
			!strings.Contains(a.errMessage(), "already ended (cancelled)") {
			t.Errorf("cancel of the ended build %s: %d %s", id, a.status, a.body)
		}
	}
	select {
	case name := <-f.built.started:
		t.Fatalf("the cancelled queued build ran (%s)", name)
	default:
	}
}
