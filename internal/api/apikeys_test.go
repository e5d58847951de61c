package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/hearth-project/hearth/api"

	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/store"
)

type (
	apiKeyJSON = v1.APIKey
	createdKey = v1.CreatedAPIKey
)

func (f *fixture) createKey(key, body string) createdKey {
	f.t.Helper()
	a := f.do("POST", "/v1/apikeys", key, body)
	if a.status != http.StatusCreated {
		f.t.Fatalf("create key %s: %d %s", body, a.status, a.body)
	}
	if a.header.Get("Cache-Control") != "no-store" {
		f.t.Errorf("the answer holding a new key may be cached: Cache-Control %q", a.header.Get("Cache-Control"))
	}
	var c createdKey
	a.json(f.t, &c)
	if !strings.HasPrefix(c.Key, "hearth_"+c.APIKey.ID+"_") {
		f.t.Fatalf("key %q does not belong to record %s", c.Key, c.APIKey.ID)
	}
	return c
}

func (f *fixture) listKeys(key, query string) []apiKeyJSON {
	f.t.Helper()
	a := f.do("GET", "/v1/apikeys"+query, key, "")
	if a.status != http.StatusOK {
		f.t.Fatalf("list keys%s: %d %s", query, a.status, a.body)
	}
	var out struct {
		APIKeys []apiKeyJSON `json:"api_keys"`
	}
	a.json(f.t, &out)
	return out.APIKeys
}

// secretOf is the part of a key only its holder knows.
func secretOf(key string) string { return key[strings.LastIndex(key, "_")+1:] }

func keyIDs(ks []apiKeyJSON) string {
	var ids []string
	for _, k := range ks {
		ids = append(ids, k.ID+"/"+k.User+"/"+string(k.Status))
	}
	return strings.Join(ids, " ")
}

func keyByID(ks []apiKeyJSON, id string) (apiKeyJSON, bool) {
	for _, k := range ks {
		if k.ID == id {
			return k, true
		}
	}
	return apiKeyJSON{}, false
}

// expectUnauthorized checks that key is refused with 401 and msg.
func (f *fixture) expectUnauthorized(key, msg string) {
	f.t.Helper()
	a := f.do("GET", "/v1/vms", key, "")
	if a.status != http.StatusUnauthorized || a.errCode() != "unauthorized" || a.errMessage() != msg {
		f.t.Fatalf("want 401 %q, got %d %s", msg, a.status, a.body)
	}
	if h := a.header.Get("WWW-Authenticate"); !strings.Contains(h, `error="invalid_token"`) || !strings.Contains(h, msg) {
		f.t.Errorf("WWW-Authenticate %q does not say %q", h, msg)
	}
}

// Keys are made through the API by admin keys, listed without secrets and
// revoked; a revoked key is refused from its very next request, saying why.
func TestAPIKeysCreateListRevoke(t *testing.T) {
	f := newFixture(t)
	carol := f.createKey(f.admin, `{"name":"carol's laptop","user":"carol","ttl_seconds":86400}`)
	if k := carol.APIKey; k.User != "carol" || k.Admin || k.Status != "active" || k.Name != "carol's laptop" ||
		k.ExpiresAt.IsZero() || k.ExpiresAt.Sub(k.CreatedAt) != 24*time.Hour || !k.LastUsedAt.IsZero() || !k.RevokedAt.IsZero() {
		t.Fatalf("created key: %+v", k)
	}
	if _, err := f.st.GetUser(context.Background(), "carol"); err != nil {
		t.Fatalf("the new key's user was not made: %v", err)
	}
	ops := f.createKey(f.admin, `{"name":"ops","admin":true}`)
	if k := ops.APIKey; !k.Admin || k.User != "" || !k.ExpiresAt.IsZero() {
		t.Fatalf("created admin key: %+v", k)
	}
	if a := f.do("GET", "/v1/vms", carol.Key, ""); a.status != http.StatusOK {
		t.Fatalf("the new key: %d %s", a.status, a.body)
	}

	// Listing never shows a secret: neither the keys nor their hashes.
	all := []string{f.admin, f.alice, f.bob, carol.Key, ops.Key}
	for _, lister := range []string{f.admin, f.alice, carol.Key} {
		a := f.do("GET", "/v1/apikeys", lister, "")
		for _, k := range all {
			if strings.Contains(string(a.body), secretOf(k)) {
				t.Fatalf("listing leaks a secret: %s", a.body)
			}
		}
		if strings.Contains(strings.ToLower(string(a.body)), "hash") || strings.Contains(string(a.body), "hearth_") {
			t.Fatalf("listing shows more than metadata: %s", a.body)
		}
	}
	if got := f.listKeys(f.admin, ""); len(got) != 5 {
		t.Fatalf("admin lists %d keys, want 5: %s", len(got), keyIDs(got))
	}
	if got := f.listKeys(f.admin, "?user=carol"); len(got) != 1 || got[0].ID != carol.APIKey.ID {
		t.Fatalf("admin lists carol's keys: %s", keyIDs(got))
	}

	// A user key sees only its own user's user keys, and makes none.
	if got := f.listKeys(carol.Key, ""); len(got) != 1 || got[0].ID != carol.APIKey.ID {
		t.Fatalf("carol lists: %s", keyIDs(got))
	}
	if got := f.listKeys(carol.Key, "?user=carol"); len(got) != 1 {
		t.Fatalf("carol lists her own by name: %s", keyIDs(got))
	}
	if a := f.do("GET", "/v1/apikeys?user=alice", carol.Key, ""); a.status != http.StatusNotFound {
		t.Fatalf("carol lists alice's keys: %d %s", a.status, a.body)
	}
	if a := f.do("POST", "/v1/apikeys", carol.Key, `{"user":"carol"}`); a.status != http.StatusForbidden || a.errCode() != "forbidden" {
		t.Fatalf("a user key makes a key: %d %s", a.status, a.body)
	}
	aliceKeys := f.listKeys(f.admin, "?user=alice")
	if len(aliceKeys) != 1 {
		t.Fatalf("alice's keys: %s", keyIDs(aliceKeys))
	}
	adminKeys := f.listKeys(f.admin, "")
	for _, other := range []string{aliceKeys[0].ID, ops.APIKey.ID, "nosuchkey"} {
		if a := f.do("DELETE", "/v1/apikeys/"+other, carol.Key, ""); a.status != http.StatusNotFound {
			t.Fatalf("carol revokes %s: %d %s", other, a.status, a.body)
		}
	}
	if got := f.listKeys(f.admin, ""); fmt.Sprint(keyIDs(got)) != fmt.Sprint(keyIDs(adminKeys)) {
		t.Fatalf("refused revocations changed keys:\n%s\n%s", keyIDs(adminKeys), keyIDs(got))
	}

	// The admin revokes carol's key: her very next request is refused.
	a := f.do("DELETE", "/v1/apikeys/"+carol.APIKey.ID, f.admin, "")
	if a.status != http.StatusOK {
		t.Fatalf("revoke: %d %s", a.status, a.body)
	}
	var revoked apiKeyJSON
	a.json(t, &revoked)
	if revoked.Status != "revoked" || revoked.RevokedAt.IsZero() || revoked.ID != carol.APIKey.ID {
		t.Fatalf("revoked key: %+v", revoked)
	}
	f.expectUnauthorized(carol.Key, "API key revoked")
	// Revoking again changes nothing.
	var again apiKeyJSON
	f.do("DELETE", "/v1/apikeys/"+carol.APIKey.ID, f.admin, "").json(t, &again)
	if again.RevokedAt.IsZero() || !again.RevokedAt.Equal(revoked.RevokedAt) {
		t.Fatalf("second revocation: %+v, first %+v", again, revoked)
	}
	if k, _ := keyByID(f.listKeys(f.admin, ""), carol.APIKey.ID); k.Status != "revoked" {
		t.Fatalf("listed after revocation: %+v", k)
	}
	// A wrong secret for a revoked key learns nothing.
	f.expectUnauthorized(carol.Key[:len(carol.Key)-1]+"x", "invalid API key")

	// A user key may revoke its own user's keys, itself included.
	alice2 := f.createKey(f.admin, `{"user":"alice"}`)
	if a := f.do("DELETE", "/v1/apikeys/"+alice2.APIKey.ID, f.alice, ""); a.status != http.StatusOK {
		t.Fatalf("alice revokes her second key: %d %s", a.status, a.body)
	}
	f.expectUnauthorized(alice2.Key, "API key revoked")
	if a := f.do("DELETE", "/v1/apikeys/"+aliceKeys[0].ID, f.alice, ""); a.status != http.StatusOK {
		t.Fatalf("alice revokes her own key: %d %s", a.status, a.body)
	}
	f.expectUnauthorized(f.alice, "API key revoked")
}

// An expired key is refused from its very next request, saying why.
func TestAPIKeyExpiresOnNextRequest(t *testing.T) {
	f := newFixture(t)
	k := f.createKey(f.admin, `{"user":"alice","ttl_seconds":60}`)
	at := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	k2 := f.createKey(f.admin, fmt.Sprintf(`{"user":"bob","expires_at":%q}`, at.Format(time.RFC3339)))
	if k2.APIKey.ExpiresAt.IsZero() || !k2.APIKey.ExpiresAt.Equal(at) {
		t.Fatalf("expires_at %v, asked %v", k2.APIKey.ExpiresAt, at)
	}
	if a := f.do("GET", "/v1/vms", k.Key, ""); a.status != http.StatusOK {
		t.Fatalf("before expiry: %d %s", a.status, a.body)
	}
	f.clock.Advance(59 * time.Second)
	if a := f.do("GET", "/v1/vms", k.Key, ""); a.status != http.StatusOK {
		t.Fatalf("a second before expiry: %d %s", a.status, a.body)
	}
	f.clock.Advance(time.Second)
	f.expectUnauthorized(k.Key, "API key expired")
	if got, _ := keyByID(f.listKeys(f.admin, ""), k.APIKey.ID); got.Status != "expired" {
		t.Fatalf("listed: %+v", got)
	}
	if a := f.do("GET", "/v1/vms", k2.Key, ""); a.status != http.StatusOK {
		t.Fatalf("the other key: %d %s", a.status, a.body)
	}
	f.clock.Advance(2 * time.Hour)
	f.expectUnauthorized(k2.Key, "API key expired")
}

// The last active admin key is not revoked by accident: 409 saying how,
// unless force=true.
func TestLastAdminKeyNeedsForce(t *testing.T) {
	f := newFixture(t)
	adminID := strings.Split(f.admin, "_")[1]
	a := f.do("DELETE", "/v1/apikeys/"+adminID, f.admin, "")
	if a.status != http.StatusConflict || !strings.Contains(a.errMessage(), "last active admin key") || !strings.Contains(a.errMessage(), "force=true") {
		t.Fatalf("revoking the only admin key: %d %s", a.status, a.body)
	}
	if a := f.do("GET", "/v1/vms", f.admin, ""); a.status != http.StatusOK {
		t.Fatalf("the refused revocation took effect: %d %s", a.status, a.body)
	}
	if a := f.do("DELETE", "/v1/apikeys/"+adminID+"?force=maybe", f.admin, ""); a.status != http.StatusBadRequest {
		t.Fatalf("force=maybe: %d %s", a.status, a.body)
	}
	second := f.createKey(f.admin, `{"name":"second","admin":true}`)
	if a := f.do("DELETE", "/v1/apikeys/"+adminID, second.Key, ""); a.status != http.StatusOK {
		t.Fatalf("revoking one of two admin keys: %d %s", a.status, a.body)
	}
	f.expectUnauthorized(f.admin, "API key revoked")
	if a := f.do("DELETE", "/v1/apikeys/"+second.APIKey.ID, second.Key, ""); a.status != http.StatusConflict {
		t.Fatalf("revoking the new last admin key: %d %s", a.status, a.body)
	}
	// An expiring admin key does not count once expired.
	third := f.createKey(second.Key, `{"admin":true,"ttl_seconds":60}`)
	f.clock.Advance(time.Minute)
	if a := f.do("DELETE", "/v1/apikeys/"+second.APIKey.ID, second.Key, ""); a.status != http.StatusConflict {
		t.Fatalf("revoking the last admin key next to an expired one: %d %s", a.status, a.body)
	}
	f.expectUnauthorized(third.Key, "API key expired")
	if a := f.do("DELETE", "/v1/apikeys/"+second.APIKey.ID+"?force=true", second.Key, ""); a.status != http.StatusOK {
		t.Fatalf("forced: %d %s", a.status, a.body)
	}
	f.expectUnauthorized(second.Key, "API key revoked")
}

// Bad requests are 400s that say what was wrong, and store nothing.
func TestAPIKeyBadInputIsA400(t *testing.T) {
	f := newFixture(t)
	before, err := f.st.ListAPIKeys(context.Background(), store.APIKeyFilter{})
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	far := time.Now().Add(11 * 365 * 24 * time.Hour).UTC().Format(time.RFC3339)
	for body, want := range map[string]string{
		`{}`:           "a user key needs a user",
		`{"name":"x"}`: "a user key needs a user",
		`{"user":"dave","ttl_seconds":60,"expires_at":"2099-01-01T00:00:00Z"}`: "not both",
		`{"user":"dave","expires_at":"` + past + `"}`:                          "not in the future",
		`{"user":"dave","expires_at":"` + far + `"}`:                           "10 years",
		`{"user":"dave","expires_at":"tomorrow"}`:                              "RFC 3339",
		`{"user":"dave","ttl_seconds":0}`:                                      `"ttl_seconds" must be between 1 and 315360000`,
		`{"user":"dave","ttl_seconds":-5}`:                                     `"ttl_seconds" must be between 1 and 315360000`,
		`{"user":"dave","ttl_seconds":999999999999}`:                           `"ttl_seconds" must be between 1 and 315360000`,
		`{"user":"dave","ttl_seconds":"1h"}`:                                   `"ttl_seconds" must be an integer`,
		`{"user":"dave","scope":"root"}`:                                       "unknown field",
		`{"user":"da ve"}`:                                                     "without spaces",
		`{"user":"dave","name":"a\u0007b"}`:                                    "control characters",
		`{"user":"dave","name":"` + strings.Repeat("n", 129) + `"}`:            "at most 128",
		`{"user":"` + strings.Repeat("u", 129) + `"}`:                          "at most 128",
		`[1]`: "must be a JSON object",
	} {
		a := f.do("POST", "/v1/apikeys", f.admin, body)
		if a.status != http.StatusBadRequest || !strings.Contains(a.errMessage(), want) {
			t.Errorf("%s: %d %s, want 400 saying %q", body, a.status, a.body, want)
		}
	}
	after, err := f.st.ListAPIKeys(context.Background(), store.APIKeyFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("refused requests stored %d keys", len(after)-len(before))
	}
	if _, err := f.st.GetUser(context.Background(), "dave"); err == nil {
		t.Fatal("refused requests made user dave")
	}
}

// A key revoked while it streams loses its streams too, not only its
// next request: an event stream (every user's events, for an admin key)
// and a console follow end within seconds; another key's stream goes on.
func TestRevokedKeyLosesItsOpenStreams(t *testing.T) {
	t.Cleanup(api.SetSSEKeepalive(300 * time.Millisecond))
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ops := f.createKey(f.admin, `{"name":"ops","admin":true}`)
	second := f.createKey(f.admin, `{"name":"second","user":"alice"}`)
	v := f.createVM(f.alice, `{"image":"minimal"}`)
	f.do("GET", "/v1/vms/"+v.ID+"/wait?timeout=10s", f.alice, "")

	ended := func(name string, r *http.Response) <-chan error {
		ch := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, r.Body)
			ch <- fmt.Errorf("%s: %v", name, err)
		}()
		return ch
	}
	var open []*http.Response
	defer func() {
		for _, r := range open {
			r.Body.Close()
		}
	}()
	for _, s := range []struct{ path, key string }{
		{"/v1/events", ops.Key},
		{"/v1/vms/" + v.ID + "/console?follow=1", second.Key},
		{"/v1/events", f.alice},
	} {
		r := f.stream(ctx, f.srv.URL, s.path, s.key, "")
		if r.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", s.path, r.Status)
		}
		open = append(open, r)
	}
	admin, follow := ended("the revoked admin key's event stream", open[0]), ended("the revoked user key's console follow", open[1])
	for _, id := range []string{ops.APIKey.ID, second.APIKey.ID} {
		if a := f.do("DELETE", "/v1/apikeys/"+id, f.admin, ""); a.status != http.StatusOK {
			t.Fatalf("revoke %s: %d %s", id, a.status, a.body)
		}
	}
	for _, ch := range []<-chan error{admin, follow} {
		select {
		case err := <-ch:
			t.Log(err)
		case <-time.After(45 * time.Second):
			t.Fatal("a stream of a key revoked 45s ago is still open")
		}
	}
	// Alice's own key streams on: its keepalives still arrive.
	br := bufio.NewReader(open[2].Body)
	got := make(chan string, 1)
	go func() {
		for {
			line, err := br.ReadString('\n')
			if err != nil || strings.HasPrefix(line, ": keepalive") {
				got <- line
				return
			}
		}
	}()
	select {
	case line := <-got:
		if !strings.HasPrefix(line, ": keepalive") {
			t.Fatalf("another key's stream ended too: %q", line)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("another key's stream went quiet")
	}
}
