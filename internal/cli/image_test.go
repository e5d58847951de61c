package cli

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// image cancel asks the daemon to cancel the build and says whether it
// has ended or is stopping; the daemon's refusal is the command's error.
func TestImageCancel(t *testing.T) {
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = append(asked, r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/images/builds/build-run":
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"id":"build-run","state":"running","spec_name":"workspace","spec_digest":"d","created_at":"2030-01-02T15:04:05Z","log_size":9}`)
		case "/v1/images/builds/build-queued":
			_, _ = io.WriteString(w, `{"id":"build-queued","state":"cancelled","error":"cancelled by request","spec_name":"minimal","spec_digest":"d","created_at":"2030-01-02T15:04:05Z","log_size":9}`)
		default:
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"error":{"code":"conflict","message":"image build build-done already ended (succeeded)"}}`)
		}
	}))
	t.Cleanup(srv.Close)
	t.Setenv("HEARTH_ADDR", strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("HEARTH_API_KEY", "hearth_k_secret")
	for _, c := range []struct {
		id, want string
		code     int
	}{
		{"build-run", "cancelling build build-run of workspace: it ends once the builder has stopped", 0},
		{"build-queued", "cancelled build build-queued of minimal\n", 0},
		{"build-done", "image build build-done already ended (succeeded)", 1},
	} {
		var out, errOut bytes.Buffer
		code := Main([]string{"image", "cancel", c.id}, &out, &errOut)
		if code != c.code || !strings.Contains(out.String()+errOut.String(), c.want) {
			t.Errorf("image cancel %s: exit %d, stdout %q, stderr %q; want exit %d and %q", c.id, code, out.String(), errOut.String(), c.code, c.want)
		}
	}
	if want := "DELETE /v1/images/builds/build-run,DELETE /v1/images/builds/build-queued,DELETE /v1/images/builds/build-done"; strings.Join(asked, ",") != want {
		t.Fatalf("the daemon was asked %q", asked)
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"image", "cancel"}, &out, &errOut); code == 0 || !strings.Contains(errOut.String(), "usage: hearth image cancel BUILD_ID") {
		t.Fatalf("image cancel without an id: exit %d: %s", code, errOut.String())
	}
}
