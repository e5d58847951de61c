package api_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/hearth-project/hearth/api"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/store"
)

// syncBuffer collects the server's log lines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// reverseSealer stands in for the vault.
type reverseSealer struct{ st store.Store }

func rev(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

func (r reverseSealer) Put(ctx context.Context, c store.Credential, p []byte) (store.Credential, error) {
	c.KeyID, c.WrappedKey, c.Sealed = "k", []byte("w"), rev(p)
	return c, r.st.PutCredential(ctx, c)
}
func (reverseSealer) Open(c store.Credential) ([]byte, error) { return rev(c.Sealed), nil }

// fakeGuestLogin plays the CLI in browser VMs: the URL at once, the
// credential when the test approves.
type fakeGuestLogin struct {
	approve chan struct{}
}

func newFakeGuestLogin() *fakeGuestLogin { return &fakeGuestLogin{approve: make(chan struct{}, 8)} }

const fakeSecret = "at-PLAINTEXT-7731"

func (g *fakeGuestLogin) run(ctx context.Context, vmID string, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error) {
	progress(agentapi.LoginProgress{Phase: agentapi.LoginURL, URL: "http://auth.invalid/authorize?client_id=fake"})
	select {
	case <-g.approve:
	case <-ctx.Done():
		return agentapi.LoginResult{}, ctx.Err()
	}
	creds := fmt.Sprintf(`{"fakeOauth": {"accessToken": %q, "refreshToken": "rt-PLAINTEXT-2", "expiresAt": %d}}`,
		fakeSecret, time.Now().Add(time.Hour).UnixMilli())
	return agentapi.LoginResult{Files: []agentapi.CapturedFile{{Path: req.Credentials[0].Path, Content: []byte(creds)}}}, nil
}

// loginAnswer is a login as the API answers it.
type loginAnswer = v1.Login

func (f *fixture) waitLogin(key, id, state string) loginAnswer {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var l loginAnswer
		a := f.do("GET", "/v1/logins/"+id, key, "")
		if a.status != 200 {
			f.t.Fatalf("get login: %d %s", a.status, a.body)
		}
		a.json(f.t, &l)
		if string(l.State) == state {
			return l
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("login %s is %s (%s), want %s", id, l.State, l.FailureReason, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLoginAPI(t *testing.T) {
	f := newFixture(t)
	a := f.do("POST", "/v1/logins", f.alice, `{"provider":"fake_cli"}`)
	if a.status != http.StatusCreated {
		t.Fatalf("start: %d %s", a.status, a.body)
	}
	var l loginAnswer
	a.json(t, &l)
	if l.User != "alice" || l.State != "starting" {
		t.Fatalf("login %+v", l)
	}
	// The same request again: the active login, 200.
	a = f.do("POST", "/v1/logins", f.alice, `{"provider":"fake_cli"}`)
	var again loginAnswer
	a.json(t, &again)
	if a.status != http.StatusOK || again.ID != l.ID {
		t.Fatalf("second start: %d %s", a.status, a.body)
	}
	// Bob cannot see it.
	for _, req := range [][2]string{{"GET", "/v1/logins/" + l.ID}, {"POST", "/v1/logins/" + l.ID + "/cancel"}, {"GET", "/v1/logins/" + l.ID + "/events"}} {
		if a := f.do(req[0], req[1], f.bob, ""); a.status != http.StatusNotFound {
			t.Fatalf("bob %s %s: %d", req[0], req[1], a.status)
		}
	}
	// Once the sign-in page is open the user gets a viewer of the browser VM.
	w := f.waitLogin(f.alice, l.ID, "awaiting_user")
	if w.Viewer.URL == "" || !strings.Contains(w.Viewer.URL, "/viewer/"+w.BrowserVM+"#token=") {
		t.Fatalf("awaiting login without a viewer: %+v", w)
	}
	f.guest.approve <- struct{}{}
	done := f.waitLogin(f.alice, l.ID, "completed")
	if done.CredentialID == "" || done.Viewer.URL != "" {
		t.Fatalf("completed login %+v", done)
	}

	// Metadata only, for the owner; the schema (additionalProperties:
	// false) holds that nothing else is there.
	var creds struct {
		Credentials []struct {
			ID, Provider, User string
			Valid              bool
		}
	}
	a = f.do("GET", "/v1/credentials", f.alice, "")
	a.json(t, &creds)
	if a.status != 200 || len(creds.Credentials) != 1 || creds.Credentials[0].Provider != "fake_cli" || !creds.Credentials[0].Valid {
		t.Fatalf("credentials: %d %s", a.status, a.body)
	}
	if strings.Contains(string(a.body), "PLAINTEXT") {
		t.Fatal("credential content in an API answer")
	}
	if a := f.do("GET", "/v1/credentials", f.bob, ""); !strings.Contains(string(a.body), `"credentials": []`) {
		t.Fatalf("bob sees %s", a.body)
	}
	if a := f.do("GET", "/v1/credentials?user=alice", f.bob, ""); a.status != http.StatusNotFound {
		t.Fatalf("bob asks for alice's: %d", a.status)
	}

	// The event stream replays the login and ends after its last state.
	req, _ := http.NewRequest("GET", f.srv.URL+"/v1/logins/"+l.ID+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+f.alice)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok && strings.Contains(d, `"to_state"`) {
			i := strings.Index(d, `"to_state":"`) + len(`"to_state":"`)
			states = append(states, d[i:i+strings.Index(d[i:], `"`)])
		}
	}
	resp.Body.Close()
	if got := strings.Join(states, " "); got != "starting awaiting_user capturing completed" {
		t.Fatalf("events %q (stream must end after completed)", got)
	}

	// Cancel a finished login: 409. Unknown provider: 400 naming the valid ones.
	if a := f.do("POST", "/v1/logins/"+l.ID+"/cancel", f.alice, ""); a.status != http.StatusConflict {
		t.Fatalf("cancel completed: %d", a.status)
	}
	a = f.do("POST", "/v1/logins", f.alice, `{"provider":"nope"}`)
	if a.status != 400 || !strings.Contains(a.errMessage(), "claude_code, codex, fake_cli, gemini_cli") {
		t.Fatalf("unknown provider: %d %s", a.status, a.body)
	}
	for body, want := range map[string]string{
		`{}`:                                   `field "provider" is required`,
		`{"provider":"fake_cli","user":"bob"}`: "own user",
		`{"provider":"fake_cli","extra":1}`:    `unknown field "extra"`,
	} {
		if a := f.do("POST", "/v1/logins", f.alice, body); a.status != 400 || !strings.Contains(a.errMessage(), want) {
			t.Errorf("%s: %d %s", body, a.status, a.body)
		}
	}
	if strings.Contains(f.logs.String(), "PLAINTEXT") {
		t.Fatal("credential plaintext in the server log")
	}
}

func TestLoginCancelAPI(t *testing.T) {
	f := newFixture(t)
	var l loginAnswer
	f.do("POST", "/v1/logins", f.alice, `{"provider":"fake_cli"}`).json(t, &l)
	w := f.waitLogin(f.alice, l.ID, "awaiting_user")
	a := f.do("POST", "/v1/logins/"+l.ID+"/cancel", f.alice, "")
	var c loginAnswer
	a.json(t, &c)
	if a.status != 200 || c.State != "cancelled" {
		t.Fatalf("cancel: %d %s", a.status, a.body)
	}
	if a := f.do("GET", "/v1/vms/"+w.BrowserVM+"/wait?state=destroyed", f.alice, ""); a.status != 200 {
		t.Fatalf("browser vm not destroyed: %d %s", a.status, a.body)
	}
	var creds struct{ Credentials []any }
	f.do("GET", "/v1/credentials", f.alice, "").json(t, &creds)
	if len(creds.Credentials) != 0 {
		t.Fatalf("credentials after cancel: %v", creds.Credentials)
	}
}

// The old frontend's routes drive the same logins, with its field names,
// behind the same keys.
func TestCompatAuthRoutes(t *testing.T) {
	f := newFixture(t)
	a := f.do("POST", "/api/auth/start", f.alice, `{"userId":"alice","provider":"fake_cli"}`)
	var start struct {
		Success   bool   `json:"success"`
		SessionID string `json:"sessionId"`
	}
	a.json(t, &start)
	if a.status != 200 || !start.Success || !strings.HasPrefix(start.SessionID, "lgn_") {
		t.Fatalf("start: %d %s", a.status, a.body)
	}
	a = f.do("POST", "/api/auth/start", f.alice, `{"userId":"alice","provider":"nope"}`)
	if a.status != 400 || !strings.Contains(string(a.body), `"validProviders"`) || !strings.Contains(string(a.body), "claude_code") {
		t.Fatalf("unknown provider: %d %s", a.status, a.body)
	}
	if a := f.do("POST", "/api/auth/start", f.alice, `{"userId":"bob","provider":"fake_cli"}`); a.status != 400 {
		t.Fatalf("alice starts bob's: %d %s", a.status, a.body)
	}
	if a := f.do("GET", "/api/auth/session/"+start.SessionID, f.bob, ""); a.status != 404 {
		t.Fatalf("bob reads alice's session: %d", a.status)
	}
	f.waitLogin(f.alice, start.SessionID, "awaiting_user")
	var sess struct {
		Session struct {
			Status   string  `json:"status"`
			NoVNCURL *string `json:"novncURL"`
		} `json:"session"`
	}
	f.do("GET", "/api/auth/session/"+start.SessionID, f.alice, "").json(t, &sess)
	if sess.Session.Status != "awaiting_user_auth" || sess.Session.NoVNCURL == nil {
		t.Fatalf("session %+v", sess.Session)
	}
	// The noVNC route sends the browser to a fresh viewer page.
	req, _ := http.NewRequest("GET", f.srv.URL+"/api/auth/session/"+start.SessionID+"/novnc", nil)
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || !strings.Contains(resp.Header.Get("Location"), "/viewer/") || !strings.Contains(resp.Header.Get("Location"), "#token=") {
		t.Fatalf("novnc: %d %v", resp.StatusCode, resp.Header)
	}
	f.guest.approve <- struct{}{}
	f.waitLogin(f.alice, start.SessionID, "completed")
	var creds struct {
		Credentials []struct {
			CredentialID string `json:"credential_id"`
			IsValid      bool   `json:"is_valid"`
		} `json:"credentials"`
	}
	a = f.do("GET", "/api/auth/credentials/alice", f.alice, "")
	a.json(t, &creds)
	if a.status != 200 || len(creds.Credentials) != 1 || !creds.Credentials[0].IsValid || strings.Contains(string(a.body), "PLAINTEXT") {
		t.Fatalf("credentials: %d %s", a.status, a.body)
	}
	if a := f.do("GET", "/api/auth/credentials/alice", f.bob, ""); a.status != 404 {
		t.Fatalf("bob reads alice's credentials: %d", a.status)
	}
	// A second session, cancelled through the old route.
	f.do("POST", "/api/auth/start", f.alice, `{"provider":"fake_cli"}`).json(t, &start)
	f.waitLogin(f.alice, start.SessionID, "awaiting_user")
	a = f.do("POST", "/api/auth/session/"+start.SessionID+"/cancel", f.alice, "")
	if a.status != 200 || !strings.Contains(string(a.body), "Session cancelled") {
		t.Fatalf("cancel: %d %s", a.status, a.body)
	}
}
