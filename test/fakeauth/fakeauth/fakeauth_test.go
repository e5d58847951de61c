package fakeauth

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// client does not follow redirects, so tests see the 302s.
var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

const (
	verifier    = "dummy-verifier-0123456789-0123456789-0123456789"
	redirectURI = "http://127.0.0.1:45678/callback"
)

func authorizeURL(base, state string) string {
	q := url.Values{
		"client_id": {"fake"}, "redirect_uri": {redirectURI}, "state": {state},
		"code_challenge": {pkceChallenge(verifier)}, "code_challenge_method": {"S256"}, "response_type": {"code"},
	}
	return base + "/authorize?" + q.Encode()
}

func get(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	resp, err := client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func post(t *testing.T, u string, form url.Values) (*http.Response, string) {
	t.Helper()
	resp, err := client.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func exchange(t *testing.T, base, code, verifier string) (*http.Response, map[string]any) {
	t.Helper()
	resp, body := post(t, base+"/token", url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirectURI},
		"client_id": {"fake"}, "code_verifier": {verifier},
	})
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("token answer %q: %v", body, err)
	}
	return resp, m
}

func codeOf(t *testing.T, redirect string) string {
	t.Helper()
	u, err := url.Parse(redirect)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(redirect, redirectURI+"?") {
		t.Fatalf("redirect %q does not go to %s", redirect, redirectURI)
	}
	return u.Query().Get("code")
}

func TestBrowserFlow(t *testing.T) {
	s := New(Options{TokenLifetime: 10 * time.Minute})
	ts := httptest.NewServer(s)
	defer ts.Close()

	resp, page := get(t, authorizeURL(ts.URL, "state-1"))
	if resp.StatusCode != 200 || !strings.Contains(page, `id="approve"`) || !strings.Contains(page, `value="state-1"`) {
		t.Fatalf("authorize page %d:\n%s", resp.StatusCode, page)
	}
	if p := s.Pending(); len(p) != 1 || p[0] != "state-1" {
		t.Fatalf("pending %v", p)
	}
	// The page's form, as the browser posts it.
	resp, _ = post(t, ts.URL+"/authorize/decide", url.Values{"state": {"state-1"}, "decision": {"approve"}})
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("decide: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	code := codeOf(t, loc)
	if u, _ := url.Parse(loc); u.Query().Get("state") != "state-1" || code == "" {
		t.Fatalf("redirect %q", loc)
	}
	resp, tok := exchange(t, ts.URL, code, verifier)
	if resp.StatusCode != 200 || tok["access_token"] == "" || tok["refresh_token"] == "" || tok["token_type"] != "Bearer" || tok["expires_in"] != float64(600) {
		t.Fatalf("token %s %v", resp.Status, tok)
	}
	// Single use.
	resp, e := exchange(t, ts.URL, code, verifier)
	if resp.StatusCode != 400 || e["error"] != "invalid_grant" || e["error_description"] != "code already used" {
		t.Fatalf("second exchange %s %v", resp.Status, e)
	}

	var kinds []string
	for _, ev := range s.Events() {
		kinds = append(kinds, ev.Kind)
	}
	if got := strings.Join(kinds, ","); got != "authorize,approve,token,rejected" {
		t.Errorf("events %s", got)
	}
	// The log over HTTP, and no secret in it.
	_, logBody := get(t, ts.URL+"/debug/log")
	if strings.Contains(logBody, code) || strings.Contains(logBody, tok["access_token"].(string)) {
		t.Errorf("the log holds a code or a token: %s", logBody)
	}
	var evs []Event
	if err := json.Unmarshal([]byte(logBody), &evs); err != nil || len(evs) != 4 || evs[0].RedirectURI != redirectURI {
		t.Errorf("debug log %s (%v)", logBody, err)
	}
}

func TestApproveAPI(t *testing.T) {
	s := New(Options{})
	ts := httptest.NewServer(s)
	defer ts.Close()
	get(t, authorizeURL(ts.URL, "state-2"))

	resp, body := post(t, ts.URL+"/approve?state=state-2", nil)
	var m map[string]string
	if err := json.Unmarshal([]byte(body), &m); err != nil || resp.StatusCode != 200 {
		t.Fatalf("approve: %s %s", resp.Status, body)
	}
	code := codeOf(t, m["redirect_url"])
	if resp, _ := exchange(t, ts.URL, code, verifier); resp.StatusCode != 200 {
		t.Fatalf("exchange: %s", resp.Status)
	}
	// Approving twice, or an unknown state, is refused.
	if resp, _ := post(t, ts.URL+"/approve?state=state-2", nil); resp.StatusCode != 404 {
		t.Errorf("second approve: %s", resp.Status)
	}
	if _, err := s.Approve("nope"); err == nil {
		t.Error("Approve of an unknown state succeeded")
	}
}

func TestTokenChecks(t *testing.T) {
	s := New(Options{})
	ts := httptest.NewServer(s)
	defer ts.Close()
	issue := func(state string) string {
		get(t, authorizeURL(ts.URL, state))
		u, err := s.Approve(state)
		if err != nil {
			t.Fatal(err)
		}
		return codeOf(t, u)
	}
	// A wrong PKCE verifier fails, and burns the code.
	code := issue("s1")
	if resp, e := exchange(t, ts.URL, code, "wrong-verifier"); resp.StatusCode != 400 || e["error"] != "invalid_grant" {
		t.Errorf("wrong verifier: %s %v", resp.Status, e)
	}
	if resp, _ := exchange(t, ts.URL, code, verifier); resp.StatusCode != 400 {
		t.Errorf("code usable after a failed exchange: %s", resp.Status)
	}
	// A wrong redirect_uri fails.
	code = issue("s2")
	resp, body := post(t, ts.URL+"/token", url.Values{"grant_type": {"authorization_code"}, "code": {code},
		"redirect_uri": {"http://127.0.0.1:1/other"}, "client_id": {"fake"}, "code_verifier": {verifier}})
	if resp.StatusCode != 400 || !strings.Contains(body, "redirect_uri") {
		t.Errorf("wrong redirect_uri: %s %s", resp.Status, body)
	}
	// Unknown codes and grant types fail.
	if resp, e := exchange(t, ts.URL, "fake-code-unknown", verifier); resp.StatusCode != 400 || e["error_description"] != "unknown code" {
		t.Errorf("unknown code: %s %v", resp.Status, e)
	}
	if resp, _ := post(t, ts.URL+"/token", url.Values{"grant_type": {"password"}}); resp.StatusCode != 400 {
		t.Errorf("password grant: %s", resp.Status)
	}
}

func TestAuthorizeRejects(t *testing.T) {
	ts := httptest.NewServer(New(Options{}))
	defer ts.Close()
	for name, mod := range map[string]func(url.Values){
		"other client":       func(q url.Values) { q.Set("client_id", "other") },
		"no state":           func(q url.Values) { q.Del("state") },
		"non-loopback":       func(q url.Values) { q.Set("redirect_uri", "http://192.0.2.1:80/callback") },
		"https redirect":     func(q url.Values) { q.Set("redirect_uri", "https://127.0.0.1/callback") },
		"plain PKCE":         func(q url.Values) { q.Set("code_challenge_method", "plain") },
		"token response":     func(q url.Values) { q.Set("response_type", "token") },
		"no redirect at all": func(q url.Values) { q.Del("redirect_uri") },
	} {
		u, _ := url.Parse(authorizeURL(ts.URL, "s"))
		q := u.Query()
		mod(q)
		u.RawQuery = q.Encode()
		if resp, _ := get(t, u.String()); resp.StatusCode != 400 {
			t.Errorf("%s: %s", name, resp.Status)
		}
	}
	for _, ok := range []string{"http://localhost:1/cb", "http://[::1]:1/cb", "http://127.0.0.1:1/cb"} {
		if err := loopbackRedirect(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

func TestDeny(t *testing.T) {
	s := New(Options{})
	ts := httptest.NewServer(s)
	defer ts.Close()
	get(t, authorizeURL(ts.URL, "s"))
	resp, _ := post(t, ts.URL+"/authorize/decide", url.Values{"state": {"s"}, "decision": {"deny"}})
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.Contains(loc, "error=access_denied") || !strings.Contains(loc, "state=s") {
		t.Fatalf("deny: %s %s", resp.Status, loc)
	}
	if len(s.Pending()) != 0 {
		t.Error("a denied authorization is still pending")
	}
}
