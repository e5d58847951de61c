package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

func TestKeysVerifyAndFail(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, t.TempDir()+"/h.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	if err := st.CreateUser(ctx, store.User{ID: "alice", Name: "alice", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	key, rec, err := NewKey("ci", store.ScopeUser, "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(rec.SecretHash), key) || len(rec.SecretHash) != 32 {
		t.Fatal("record must hold only a hash")
	}
	if err := st.CreateAPIKey(ctx, rec); err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Keys: st, Now: time.Now}
	id, err := v.Verify(ctx, key)
	if err != nil || id.UserID != "alice" || id.Admin() || !id.CanSee("alice") || id.CanSee("bob") {
		t.Fatalf("verify: %+v %v", id, err)
	}
	if err := v.Close(ctx); err != nil { // the use is written behind the request
		t.Fatal(err)
	}
	got, err := st.GetAPIKey(ctx, rec.ID)
	if err != nil || got.LastUsedAt.IsZero() {
		t.Fatalf("use not recorded: %v %v", got.LastUsedAt, err)
	}
	bad := []string{
		"",
		"nonsense",
		key[:len(key)-1] + "x", // wrong secret
		strings.Replace(key, rec.ID, "aaaaaaaaaaaaaaaa", 1), // unknown id
		key + "x", // wrong length
	}
	for _, k := range bad {
		if _, err := v.Verify(ctx, k); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("key %q: want ErrUnauthenticated, got %v", k, err)
		}
	}
	if _, err := st.RevokeAPIKey(ctx, rec.ID, now, store.RevokeOptions{}); err != nil {
		t.Fatal(err)
	}
	// The very next use is refused, saying why; a wrong secret still learns nothing.
	if _, err := v.Verify(ctx, key); !errors.Is(err, ErrRevoked) || !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("revoked key: %v", err)
	}
	if _, err := v.Verify(ctx, key[:len(key)-1]+"x"); err != ErrUnauthenticated {
		t.Fatalf("revoked key with a wrong secret: %v", err)
	}
	if _, _, err := NewKey("x", store.ScopeUser, "", now); err == nil {
		t.Fatal("user key without user accepted")
	}
	if _, _, err := NewKey("x", "root", "", now); err == nil {
		t.Fatal("unknown scope accepted")
	}
}

func TestBearerToken(t *testing.T) {
	for h, want := range map[string]string{"Bearer abc": "abc", "bearer  abc ": "abc", "Basic abc": "", "Bearer": "", "": ""} {
		got, ok := BearerToken(h)
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v", h, got, ok)
		}
	}
}

// A key verified once is checked again by id alone: still good, or why
// not; a store that cannot answer is not taken for a gone key.
func TestCheckKeyStillAuthenticates(t *testing.T) {
	st, _ := openStore(t)
	now := time.Now()
	clock := now
	v := &Verifier{Keys: st, Now: func() time.Time { return clock }}
	_, live := addKey(t, st, store.ScopeAdmin, "", now, time.Time{})
	_, expiring := addKey(t, st, store.ScopeAdmin, "", now, now.Add(time.Hour))
	_, revoked := addKey(t, st, store.ScopeAdmin, "", now, time.Time{})
	if _, err := st.RevokeAPIKey(t.Context(), revoked.ID, now, store.RevokeOptions{}); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]error{live.ID: nil, expiring.ID: nil, revoked.ID: ErrRevoked, "aaaaaaaaaaaaaaaa": ErrUnauthenticated} {
		if err := v.Check(t.Context(), id); err != want {
			t.Errorf("check %s: %v, want %v", id, err, want)
		}
	}
	clock = now.Add(2 * time.Hour)
	if err := v.Check(t.Context(), expiring.ID); err != ErrExpired {
		t.Errorf("check after expiry: %v", err)
	}
	st.Close()
	if err := v.Check(t.Context(), live.ID); err == nil || errors.Is(err, ErrUnauthenticated) {
		t.Errorf("check with the store closed: %v, want a store error", err)
	}
}
