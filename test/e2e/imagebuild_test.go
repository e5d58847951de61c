package e2e

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// TestImageBuildOverTheAPI builds an image in the daemon through the API,
// for real: a spec of its own (minimal's, with a file naming this run,
// so the build is never a cache hit), a second request joining it, a
// follower that disconnects mid-build and resumes from its last event
// missing nothing, and an image that ends verified, registered and
// bootable. No step sleeps: every wait is on the build's events or on the
// VM's state.
func TestImageBuildOverTheAPI(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 10*time.Minute)
	base, err := os.ReadFile(filepath.Join(repoRoot(), "images", "minimal.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	spec := strings.Replace(string(base), "name: minimal\n", "name: apibuild\n", 1) + fmt.Sprintf(
		"  - path: /etc/hearth-apibuild\n    mode: \"0644\"\n    content: \"run %d at %d\\n\"\n", os.Getpid(), time.Now().UnixNano())

	start := time.Now()
	b, joined, err := d.admin.BuildImage(ctx, api.BuildImage{Spec: spec})
	if err != nil || joined {
		t.Fatalf("build: %+v joined=%v %v", b, joined, err)
	}
	// A second request for the same spec, at once (the build's first
	// phase alone takes about a second): the same build, 200.
	again, joined, err := d.admin.BuildImage(ctx, api.BuildImage{Spec: spec})
	if err != nil || !joined || again.ID != b.ID {
		t.Fatalf("second request for the same spec: %+v joined=%v %v (first %s)", again, joined, err, b.ID)
	}
	if _, _, err := d.alice.BuildImage(ctx, api.BuildImage{Spec: spec}); !client.IsCode(err, "forbidden") {
		t.Fatalf("a user key's build: %v", err)
	}

	// WAITS ON EVENTS: follow the build until its first phase line, then
	// hang up.
	evs, err := d.admin.BuildEvents(ctx, b.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	var first []api.ImageBuildEvent
	for {
		e, err := evs.Next()
		if err != nil {
			t.Fatalf("events before the first phase line: %v (got %+v)", err, first)
		}
		first = append(first, e)
		if e.Type == api.ImageBuildEventTypeProgress {
			break
		}
	}
	evs.Close()
	last := first[len(first)-1]
	atHangUp, err := d.admin.Build(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hung up after event %d (%q) %s into the build, which was %s in phase %s",
		last.ID, last.Line, time.Since(start).Round(time.Millisecond), atHangUp.State, atHangUp.Phase)

	// WAITS ON EVENTS: resume from the last event seen, to done.
	evs, err = d.admin.BuildEvents(ctx, b.ID, last.ID)
	if err != nil {
		t.Fatal(err)
	}
	rest := readAll(t, evs)
	took := time.Since(start)
	done := rest[len(rest)-1]
	if done.Type != api.ImageBuildEventTypeDone || done.Build.State != api.ImageBuildStateSucceeded ||
		done.Build.ImageStatus != api.ImageBuildImageStatusVerified || done.Build.Image == "" {
		t.Fatalf("the build ended %+v\nlast events: %+v", done.Build, rest[max(0, len(rest)-5):])
	}
	t.Logf("minimal-profile build through the API: %s from the request to done (%s running)", took.Round(time.Millisecond),
		done.Build.EndedAt.Sub(done.Build.StartedAt).Round(time.Millisecond))

	// The whole stream again, from the start: the first follower's events
	// and the resumed ones are exactly it, none lost, none twice.
	evs, err = d.admin.BuildEvents(ctx, b.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	all := readAll(t, evs)
	seen := append(slices.Clone(first), rest...)
	if len(seen) != len(all) {
		t.Fatalf("%d events before the hang-up and %d after, but the stream has %d", len(first), len(rest), len(all))
	}
	var phases []string
	for i, e := range all {
		if e.ID != seen[i].ID || e.Line != seen[i].Line || e.Type != seen[i].Type {
			t.Fatalf("event %d: %+v, resumed reading gave %+v", i, e, seen[i])
		}
		if e.Type == api.ImageBuildEventTypeProgress && !slices.Contains(phases, e.Phase) {
			phases = append(phases, e.Phase)
		}
	}
	if want := []string{"kernel", "inputs", "initramfs", "rootfs", "manifest"}; !slices.Equal(phases, want) {
		t.Fatalf("phases %v, want %v", phases, want)
	}

	// Registered and verified, as `hearth image build` leaves it.
	imgs, err := d.alice.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(imgs, func(i api.Image) bool {
		return i.ID == done.Build.Image && i.Name == "apibuild" && i.Status == api.ImageStatusVerified
	}) {
		t.Fatalf("GET /v1/images does not show the build's image %s: %+v", done.Build.Image, imgs)
	}
	det, err := d.admin.GetImage(ctx, done.Build.Image)
	if err != nil {
		t.Fatal(err)
	}
	if det.Manifest["profile"] != "apibuild" || !det.Verification.OK || len(det.Verification.Claims) == 0 || det.Rootfs == "" {
		t.Fatalf("inspect: manifest profile %v, verification ok %v, rootfs %q", det.Manifest["profile"], det.Verification.OK, det.Rootfs)
	}

	// Bootable; and kept while a VM uses it. WAITS ON the VM's state.
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: done.Build.Image})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.alice.WaitVM(ctx, v.ID, api.StateReady, 2*time.Minute); err != nil {
		t.Fatalf("a VM from the built image: %v", err)
	}
	if _, err := d.admin.DeleteImage(ctx, done.Build.Image); !client.IsCode(err, "conflict") {
		t.Fatalf("removing an image a VM uses: %v", err)
	}
	if _, err := d.alice.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.alice.WaitVM(ctx, v.ID, api.StateDestroyed, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := d.admin.DeleteImage(ctx, done.Build.Image); err != nil {
		t.Fatalf("removing the image once its VM is gone: %v", err)
	}
	dir := filepath.Dir(det.Rootfs)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the removed image's directory: %v", err)
	}
	// The builder's lock and detailed log stay next to the images (as
	// after `hearth image build`); this run's go with it.
	for _, p := range []string{"." + filepath.Base(dir) + ".lock", ".build-" + filepath.Base(dir) + ".log"} {
		_ = os.Remove(filepath.Join(imageDir, p))
	}
}

// readAll reads a build's events to the end of the stream, which must be
// done.
func readAll(t *testing.T, evs *client.BuildEventStream) []api.ImageBuildEvent {
	t.Helper()
	defer evs.Close()
	var out []api.ImageBuildEvent
	for {
		e, err := evs.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("events: %v (got %d)", err, len(out))
		}
		out = append(out, e)
	}
	if len(out) == 0 || out[len(out)-1].Type != api.ImageBuildEventTypeDone {
		t.Fatalf("the stream ended before done: %+v", out)
	}
	return out
}
