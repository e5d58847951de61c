package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

func testAPIKeyExpiry(t *testing.T, s store.Store) {
	ctx := t.Context()
	must(t, s.CreateUser(ctx, newUser("u-1", at(0))), "create user")
	k := newKey("k-ttl", store.ScopeUser, "u-1", at(1))
	k.ExpiresAt = at(3600)
	must(t, s.CreateAPIKey(ctx, k), "create an expiring key")
	got, err := s.GetAPIKey(ctx, k.ID)
	must(t, err, "get the expiring key")
	equal(t, "expiring key", got, k, normKey)
	for _, c := range []struct {
		at     time.Time
		active bool
	}{{at(2), true}, {at(3599), true}, {at(3600), false}, {at(7200), false}} {
		if got.Active(c.at) != c.active || got.Expired(c.at) == c.active {
			t.Errorf("key expiring at %v: Active(%v) = %v, want %v", got.ExpiresAt, c.at, got.Active(c.at), c.active)
		}
	}
	keys, err := s.ListAPIKeys(ctx, store.APIKeyFilter{})
	must(t, err, "list keys")
	equalSet(t, "list keys", keys, []store.APIKey{k}, apiKeyKey, normKey)
}

func testListAPIKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	must(t, s.CreateUser(ctx, newUser("u-1", at(0))), "create user u-1")
	must(t, s.CreateUser(ctx, newUser("u-2", at(0))), "create user u-2")
	admin := newKey("k-admin", store.ScopeAdmin, "", at(1))
	adminOfU1 := newKey("k-admin-u1", store.ScopeAdmin, "u-1", at(2))
	u1 := newKey("k-u1", store.ScopeUser, "u-1", at(3))
	u2 := newKey("k-u2", store.ScopeUser, "u-2", at(4))
	u1old := newKey("k-u1-old", store.ScopeUser, "u-1", at(0))
	for _, k := range []store.APIKey{admin, adminOfU1, u1, u2, u1old} {
		must(t, s.CreateAPIKey(ctx, k), "create key "+k.ID)
	}
	_, err := s.RevokeAPIKey(ctx, u1old.ID, at(5), store.RevokeOptions{})
	must(t, err, "revoke")
	u1old.RevokedAt = at(5)
	for _, c := range []struct {
		f    store.APIKeyFilter
		want []store.APIKey
	}{
		{store.APIKeyFilter{}, []store.APIKey{u1old, admin, adminOfU1, u1, u2}},
		{store.APIKeyFilter{UserID: "u-1"}, []store.APIKey{u1old, adminOfU1, u1}},
		{store.APIKeyFilter{UserID: "u-1", Scope: store.ScopeUser}, []store.APIKey{u1old, u1}},
		{store.APIKeyFilter{Scope: store.ScopeAdmin}, []store.APIKey{admin, adminOfU1}},
		{store.APIKeyFilter{UserID: "u-nobody"}, nil},
	} {
		got, err := s.ListAPIKeys(ctx, c.f)
		must(t, err, fmt.Sprintf("list %+v", c.f))
		// Oldest first.
		equal(t, fmt.Sprintf("list %+v", c.f), keyIDs(got), keyIDs(c.want), func(v []string) []string { return v })
		equalSet(t, fmt.Sprintf("list %+v", c.f), got, c.want, apiKeyKey, normKey)
	}
}

func testRevokeAPIKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	must(t, s.CreateUser(ctx, newUser("u-1", at(0))), "create user")
	k := newKey("k-u1", store.ScopeUser, "u-1", at(1))
	must(t, s.CreateAPIKey(ctx, k), "create key")
	got, err := s.RevokeAPIKey(ctx, k.ID, at(10), store.RevokeOptions{})
	must(t, err, "revoke")
	k.RevokedAt = at(10)
	equal(t, "revoked key", got, k, normKey)
	if got.Active(at(11)) || !got.Revoked() {
		t.Fatalf("revoked key is active: %+v", got)
	}
	// Revoking again changes nothing: the key keeps its first revocation.
	got, err = s.RevokeAPIKey(ctx, k.ID, at(20), store.RevokeOptions{})
	must(t, err, "revoke again")
	equal(t, "key revoked twice", got, k, normKey)
	got, err = s.GetAPIKey(ctx, k.ID)
	must(t, err, "get key")
	equal(t, "stored key revoked twice", got, k, normKey)
}

func testRevokeLastAdminKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	a1 := newKey("k-admin-1", store.ScopeAdmin, "", at(1))
	a2 := newKey("k-admin-2", store.ScopeAdmin, "", at(2))
	old := newKey("k-admin-expired", store.ScopeAdmin, "", at(0))
	old.ExpiresAt = at(5)
	for _, k := range []store.APIKey{a1, a2, old} {
		must(t, s.CreateAPIKey(ctx, k), "create key "+k.ID)
	}
	_, err := s.RevokeAPIKey(ctx, a1.ID, at(10), store.RevokeOptions{})
	must(t, err, "revoke one of two active admin keys")
	a1.RevokedAt = at(10)

	// a2 is the last active one: the expired and the revoked keys do not count.
	_, err = s.RevokeAPIKey(ctx, a2.ID, at(11), store.RevokeOptions{})
	mustFail(t, err, store.ErrLastAdminKey, "revoke the last active admin key")
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("ErrLastAdminKey is not a conflict: %v", err)
	}
	got, err := s.GetAPIKey(ctx, a2.ID)
	must(t, err, "get the refused key")
	equal(t, "the last admin key after a refused revocation", got, a2, normKey)

	// An expired admin key may be revoked: it authenticates nobody.
	_, err = s.RevokeAPIKey(ctx, old.ID, at(11), store.RevokeOptions{})
	must(t, err, "revoke an expired admin key while one other is active")
	old.RevokedAt = at(11)

	got, err = s.RevokeAPIKey(ctx, a2.ID, at(12), store.RevokeOptions{AllowLastAdmin: true})
	must(t, err, "revoke the last active admin key, allowed")
	a2.RevokedAt = at(12)
	equal(t, "the last admin key, revoked", got, a2, normKey)
	keys, err := s.ListAPIKeys(ctx, store.APIKeyFilter{})
	must(t, err, "list keys")
	equalSet(t, "keys", keys, []store.APIKey{a1, a2, old}, apiKeyKey, normKey)

	// A new admin key made once none is left is the last one again.
	a3 := newKey("k-admin-3", store.ScopeAdmin, "", at(20))
	must(t, s.CreateAPIKey(ctx, a3), "create a new admin key")
	_, err = s.RevokeAPIKey(ctx, a3.ID, at(21), store.RevokeOptions{})
	mustFail(t, err, store.ErrLastAdminKey, "revoke the new last admin key")
}

// Of two concurrent revocations of the last two admin keys, exactly one
// succeeds: an admin key is always left unless a caller allows otherwise.
func testConcurrentRevokeLastAdminKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	const n = 8
	for i := range n {
		must(t, s.CreateAPIKey(ctx, newKey(fmt.Sprintf("k-admin-%d", i), store.ScopeAdmin, "", at(i))), "create admin key")
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		revoked int
	)
	for i := range n {
		wg.Go(func() {
			_, err := s.RevokeAPIKey(ctx, fmt.Sprintf("k-admin-%d", i), at(100), store.RevokeOptions{})
			switch {
			case err == nil:
				mu.Lock()
				revoked++
				mu.Unlock()
			case !errors.Is(err, store.ErrLastAdminKey):
				t.Errorf("concurrent revoke: %v", err)
			}
		})
	}
	wg.Wait()
	if revoked != n-1 {
		t.Fatalf("%d of %d admin keys revoked concurrently, want %d", revoked, n, n-1)
	}
	keys, err := s.ListAPIKeys(ctx, store.APIKeyFilter{Scope: store.ScopeAdmin})
	must(t, err, "list admin keys")
	active := 0
	for _, k := range keys {
		if k.Active(at(101)) {
			active++
		}
	}
	if active != 1 {
		t.Fatalf("%d active admin keys left, want 1", active)
	}
}

func keyIDs(ks []store.APIKey) []string {
	ids := make([]string, 0, len(ks))
	for _, k := range ks {
		ids = append(ids, k.ID)
	}
	return ids
}
