package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/imagebuild"
	"github.com/hearth-project/hearth/internal/store"
)

// errImagesOff and errBuildsOff answer the image routes of a server run
// without the registry or the build service.
var (
	errImagesOff = errdefs.Unavailablef("image management is not enabled on this server")
	errBuildsOff = errdefs.Unavailablef("image builds are not enabled on this server")
)

func imageToJSON(i store.Image) v1.Image {
	return v1.Image{ID: i.ID, Name: i.Name, Role: i.Role, Status: v1.ImageStatus(i.Status), SizeBytes: i.SizeBytes,
		CreatedAt: i.CreatedAt.UTC()}
}

// imageDetail is what `hearth image inspect` shows of an image; the host
// paths of its files only to admin keys.
func imageDetail(i store.Image, admin bool) v1.ImageDetail {
	out := v1.ImageDetail{ID: i.ID, Name: i.Name, Role: i.Role, Status: v1.ImageDetailStatus(i.Status), SizeBytes: i.SizeBytes,
		CreatedAt: i.CreatedAt.UTC(), VerifiedAt: utc(i.VerifiedAt), Manifest: map[string]any{}}
	if admin {
		out.Kernel, out.Initrd, out.Rootfs = i.KernelPath, i.InitrdPath, i.RootfsPath
	}
	// Both are JSON the builder and the verifier wrote; one that is not
	// an object shows as empty rather than failing the answer.
	_ = json.Unmarshal(i.Manifest, &out.Manifest)
	if len(i.VerifyReport) > 0 {
		_ = json.Unmarshal(i.VerifyReport, &out.Verification)
	}
	return out
}

func buildToJSON(b imagebuild.Build) v1.ImageBuild {
	return v1.ImageBuild{ID: b.ID, Profile: b.Profile, SpecName: b.SpecName, SpecDigest: b.SpecDigest,
		KernelPackage: b.KernelPackage, State: v1.ImageBuildState(b.State), Phase: b.Phase, Step: b.Step, Steps: b.Steps,
		Image: b.Image, ImageStatus: v1.ImageBuildImageStatus(b.ImageStatus), Error: b.Error, CreatedAt: b.CreatedAt.UTC(),
		StartedAt: utc(b.StartedAt), EndedAt: utc(b.EndedAt), LogSize: b.LogSize}
}

// ListImages lists the images in the store.
func (s *Server) ListImages(w http.ResponseWriter, r *http.Request) {
	imgs, err := s.Store.ListImages(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := v1.ImageList{Images: make([]v1.Image, 0, len(imgs))}
	for _, i := range imgs {
		out.Images = append(out.Images, imageToJSON(i))
	}
	writeJSON(w, http.StatusOK, out)
}

// GetImage answers one image with its manifest and verification report.
func (s *Server) GetImage(w http.ResponseWriter, r *http.Request, id string) {
	if s.Images == nil {
		s.fail(w, r, errImagesOff)
		return
	}
	img, err := s.Images.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, imageDetail(img, identity(r).Admin()))
}

// DeleteImage removes an image no VM uses.
func (s *Server) DeleteImage(w http.ResponseWriter, r *http.Request, id string) {
	if s.Images == nil {
		s.fail(w, r, errImagesOff)
		return
	}
	img, err := s.Images.Remove(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, imageToJSON(img))
}

// VerifyImage verifies an image again and answers it with the verdict.
func (s *Server) VerifyImage(w http.ResponseWriter, r *http.Request, id string) {
	if s.Images == nil {
		s.fail(w, r, errImagesOff)
		return
	}
	img, _, err := s.Images.Verify(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, imageDetail(img, true))
}

// CollectImages removes the image files no record names, while no build
// runs.
func (s *Server) CollectImages(w http.ResponseWriter, r *http.Request) {
	if s.Images == nil || s.Builds == nil {
		s.fail(w, r, errBuildsOff)
		return
	}
	out := v1.CollectedImages{Images: []string{}, Kernels: []string{}}
	err := s.Builds.Exclusive(r.Context(), func(ctx context.Context) error {
		c, err := s.Images.Collect(ctx)
		out.Images = append(out.Images, c.Images...)
		out.Kernels = append(out.Kernels, c.Kernels...)
		out.FreedBytes = c.FreedBytes
		return err
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// BuildImage starts an image build, or joins the one of the same spec,
// agent and kernel package that is queued or running.
func (s *Server) BuildImage(w http.ResponseWriter, r *http.Request) {
	if s.Builds == nil {
		s.fail(w, r, errBuildsOff)
		return
	}
	var req v1.BuildImage
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	// The build belongs to the service; the request only asks.
	b, joined, err := s.Builds.Start(imagebuild.Request{Profile: req.Profile, Spec: req.Spec, KernelPackage: req.KernelPackage})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/images/builds/"+b.ID)
	status := http.StatusAccepted
	if joined {
		status = http.StatusOK
	}
	writeJSON(w, status, buildToJSON(b))
}

// ListImageBuilds lists the builds the service knows.
func (s *Server) ListImageBuilds(w http.ResponseWriter, r *http.Request) {
	if s.Builds == nil {
		s.fail(w, r, errBuildsOff)
		return
	}
	bs := s.Builds.List()
	out := v1.ImageBuildList{Builds: make([]v1.ImageBuild, 0, len(bs))}
	for _, b := range bs {
		out.Builds = append(out.Builds, buildToJSON(b))
	}
	writeJSON(w, http.StatusOK, out)
}

// GetImageBuild answers one build.
func (s *Server) GetImageBuild(w http.ResponseWriter, r *http.Request, id string) {
	if s.Builds == nil {
		s.fail(w, r, errBuildsOff)
		return
	}
	b, err := s.Builds.Get(id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, buildToJSON(b))
}

// CancelImageBuild cancels a build for every request that joined it: a
// queued one has ended when this answers (200, cancelled), a running one
// ends once its builder has stopped (202, the build as it was when
// cancelled, still running).
func (s *Server) CancelImageBuild(w http.ResponseWriter, r *http.Request, id string) {
	if s.Builds == nil {
		s.fail(w, r, errBuildsOff)
		return
	}
	b, err := s.Builds.Cancel(id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := http.StatusAccepted
	if b.State.Terminal() {
		status = http.StatusOK
	}
	writeJSON(w, status, buildToJSON(b))
}

// ImageBuildEvents streams a build's log as events from its start (or
// after Last-Event-ID, an offset in the log) until done, which ends the
// stream. It takes one of the caller's stream slots.
func (s *Server) ImageBuildEvents(w http.ResponseWriter, r *http.Request, id string, _ v1.ImageBuildEventsParams) {
	if s.Builds == nil {
		s.fail(w, r, errBuildsOff)
		return
	}
	after, ok := s.resumePoint(w, r, 0)
	if !ok {
		return
	}
	f, err := s.Builds.Follow(id, after)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	release, _, ok := s.openStream(w, r)
	if !ok {
		return
	}
	defer release()
	rc := sseStart(w)
	ctx := r.Context()
	keepalive := time.NewTicker(sseKeepalive)
	defer keepalive.Stop()
	keyCheck := time.NewTicker(keyCheckEvery)
	defer keyCheck.Stop()
	for {
		changed := f.Changed()
		evs, err := f.Next()
		for _, e := range evs {
			j := v1.ImageBuildEvent{ID: e.ID, Type: v1.ImageBuildEventType(e.Type), Line: e.Line, Phase: e.Phase, Step: e.Step, Steps: e.Steps}
			if e.Type == imagebuild.EventDone {
				j.Build = buildToJSON(e.Build)
			}
			if !s.sseEvent(w, rc, e.ID, string(e.Type), j) {
				return
			}
		}
		if err != nil {
			// The answer has begun: the stream ends, and the client
			// resumes from the last event it got.
			s.Log.Error("image build log unreadable", "request_id", requestID(r), "build", id, "err", err)
			return
		}
		if f.Over() {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-keepalive.C:
			if !s.sseKeepalive(w, rc) {
				return
			}
		case <-keyCheck.C:
			if s.keyGone(ctx, r) {
				return // revoked or expired since the stream began
			}
		}
	}
}
