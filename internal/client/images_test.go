package client_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// BuildImage tells a joined build (200) from a new one (202), and
// BuildEvents reads the stream's events past keepalive comments, asking
// for what follows the given event.
func TestBuildImageAndEvents(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/images":
			calls++
			w.Header().Set("Content-Type", "application/json")
			if calls == 1 {
				w.WriteHeader(http.StatusAccepted)
			}
			_, _ = io.WriteString(w, `{"id":"build-1","state":"running","spec_name":"minimal","spec_digest":"d","created_at":"2030-01-02T15:04:05Z","log_size":0}`)
		case "/v1/images/builds/build-1/events":
			if r.URL.Query().Get("since") != "42" {
				http.Error(w, `{"error":{"code":"invalid_argument","message":"want since=42"}}`, http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, ": keepalive\n\n"+
				"id: 60\nevent: progress\ndata: {\"id\":60,\"type\":\"progress\",\"line\":\"[4/5] rootfs: x\",\"phase\":\"rootfs\",\"step\":4,\"steps\":5}\n\n"+
				": keepalive\n\n"+
				"id: 61\nevent: done\ndata: {\"id\":61,\"type\":\"done\",\"build\":{\"id\":\"build-1\",\"state\":\"succeeded\",\"spec_name\":\"minimal\",\"spec_digest\":\"d\",\"created_at\":\"2030-01-02T15:04:05Z\",\"log_size\":60}}\n\n")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c := client.New(srv.URL, "k")
	ctx := context.Background()
	for i, want := range []bool{false, true} {
		b, joined, err := c.BuildImage(ctx, api.BuildImage{Profile: "minimal"})
		if err != nil || joined != want || b.ID != "build-1" {
			t.Fatalf("request %d: %+v joined=%v %v", i, b, joined, err)
		}
	}
	evs, err := c.BuildEvents(ctx, "build-1", 42)
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	var got []api.ImageBuildEvent
	for {
		e, err := evs.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != 2 || got[0].Phase != "rootfs" || got[0].Step != 4 || got[1].Type != api.ImageBuildEventTypeDone ||
		got[1].Build.State != api.ImageBuildStateSucceeded {
		t.Fatalf("events %+v", got)
	}
	if _, err := c.BuildEvents(ctx, "build-1", 7); !client.IsCode(err, "invalid_argument") {
		t.Fatalf("an error answer: %v", err)
	}
}

// CancelBuild sends DELETE for the build and reads the build from a 202
// (running, being cancelled) as from a 200 (cancelled); a 409 is an
// error with its code.
func TestCancelBuild(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodDelete {
			http.Error(w, `{"error":{"code":"method_not_allowed","message":"want DELETE"}}`, http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/images/builds/build-run":
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"id":"build-run","state":"running","spec_name":"minimal","spec_digest":"d","created_at":"2030-01-02T15:04:05Z","log_size":9}`)
		case "/v1/images/builds/build-queued":
			_, _ = io.WriteString(w, `{"id":"build-queued","state":"cancelled","error":"cancelled by request","spec_name":"minimal","spec_digest":"d","created_at":"2030-01-02T15:04:05Z","log_size":9}`)
		default:
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"error":{"code":"conflict","message":"image build build-done already ended (succeeded)"}}`)
		}
	}))
	defer srv.Close()
	c := client.New(srv.URL, "k")
	ctx := context.Background()
	if b, err := c.CancelBuild(ctx, "build-run"); err != nil || b.ID != "build-run" || b.State != api.ImageBuildStateRunning {
		t.Fatalf("a running build: %+v %v", b, err)
	}
	if b, err := c.CancelBuild(ctx, "build-queued"); err != nil || b.State != api.ImageBuildStateCancelled || b.Error != "cancelled by request" {
		t.Fatalf("a queued build: %+v %v", b, err)
	}
	if _, err := c.CancelBuild(ctx, "build-done"); !client.IsCode(err, "conflict") {
		t.Fatalf("an ended build: %v", err)
	}
}
