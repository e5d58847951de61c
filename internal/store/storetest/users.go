package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

func testPing(t *testing.T, s store.Store) {
	must(t, s.Ping(t.Context()), "ping")
}

func testUsers(t *testing.T, s store.Store) {
	ctx := t.Context()
	users, err := s.ListUsers(ctx)
	must(t, err, "list users of an empty store")
	if len(users) != 0 {
		t.Fatalf("empty store lists %d users", len(users))
	}

	alice, bob := newUser("u-alice", at(1)), newUser("u-bob", at(0))
	must(t, s.CreateUser(ctx, alice), "create alice")
	must(t, s.CreateUser(ctx, bob), "create bob")

	got, err := s.GetUser(ctx, alice.ID)
	must(t, err, "get alice")
	equal(t, "get alice", got, alice, normUser)

	dup := alice
	dup.Name = "impostor"
	mustFail(t, s.CreateUser(ctx, dup), store.ErrConflict, "create a duplicate user")
	got, err = s.GetUser(ctx, alice.ID)
	must(t, err, "get alice after the duplicate")
	equal(t, "alice after a rejected duplicate", got, alice, normUser)

	_, err = s.GetUser(ctx, "u-nobody")
	mustFail(t, err, store.ErrNotFound, "get a missing user")

	users, err = s.ListUsers(ctx)
	must(t, err, "list users")
	equalSet(t, "list users", users, []store.User{alice, bob}, userKey, normUser)
}

func testAPIKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	must(t, s.CreateUser(ctx, newUser("u-1", at(0))), "create user")
	admin := newKey("k-admin", store.ScopeAdmin, "", at(1))
	user := newKey("k-user", store.ScopeUser, "u-1", at(2))
	adminOfUser := newKey("k-admin-u1", store.ScopeAdmin, "u-1", at(3))
	for _, k := range []store.APIKey{admin, user, adminOfUser} {
		must(t, s.CreateAPIKey(ctx, k), "create key "+k.ID)
		got, err := s.GetAPIKey(ctx, k.ID)
		must(t, err, "get key "+k.ID)
		equal(t, "get key "+k.ID, got, k, normKey)
	}

	dup := user
	dup.Scope = store.ScopeAdmin
	mustFail(t, s.CreateAPIKey(ctx, dup), store.ErrConflict, "create a duplicate key")

	_, err := s.GetAPIKey(ctx, "k-nobody")
	mustFail(t, err, store.ErrNotFound, "get a missing key")

	must(t, s.TouchAPIKey(ctx, user.ID, at(10)), "touch")
	user.LastUsedAt = at(10)
	must(t, s.TouchAPIKey(ctx, user.ID, at(11)), "touch again")
	user.LastUsedAt = at(11)
	got, err := s.GetAPIKey(ctx, user.ID)
	must(t, err, "get touched key")
	equal(t, "touched key", got, user, normKey)
	mustFail(t, s.TouchAPIKey(ctx, "k-nobody", at(10)), store.ErrNotFound, "touch a missing key")

	revoked, err := s.RevokeAPIKey(ctx, admin.ID, at(20), store.RevokeOptions{})
	must(t, err, "revoke")
	admin.RevokedAt = at(20)
	equal(t, "revoke's answer", revoked, admin, normKey)
	got, err = s.GetAPIKey(ctx, admin.ID)
	must(t, err, "get revoked key")
	equal(t, "revoked key", got, admin, normKey)
	_, err = s.RevokeAPIKey(ctx, "k-nobody", at(20), store.RevokeOptions{})
	mustFail(t, err, store.ErrNotFound, "revoke a missing key")

	keys, err := s.ListAPIKeys(ctx, store.APIKeyFilter{})
	must(t, err, "list keys")
	equalSet(t, "list keys", keys, []store.APIKey{admin, user, adminOfUser}, apiKeyKey, normKey)
}

func testAPIKeysInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	bad := newKey("k-bad-scope", store.Scope("root"), "", at(0))
	mustFail(t, s.CreateAPIKey(ctx, bad), errdefs.ErrInvalid, "create a key with an unknown scope")

	noUser := newKey("k-no-user", store.ScopeUser, "", at(0))
	mustFail(t, s.CreateAPIKey(ctx, noUser), errdefs.ErrInvalid, "create a user-scoped key without a user")

	noHash := newKey("k-no-hash", store.ScopeAdmin, "", at(0))
	noHash.SecretHash = nil
	mustFail(t, s.CreateAPIKey(ctx, noHash), errdefs.ErrInvalid, "create a key without a secret hash")

	orphan := newKey("k-orphan", store.ScopeUser, "u-nobody", at(0))
	mustFail(t, s.CreateAPIKey(ctx, orphan), store.ErrNotFound, "create a key for a missing user")

	expired := newKey("k-expired", store.ScopeAdmin, "", at(10))
	expired.ExpiresAt = at(10)
	mustFail(t, s.CreateAPIKey(ctx, expired), errdefs.ErrInvalid, "create a key that expires when it is made")
	expired.ExpiresAt = at(9)
	mustFail(t, s.CreateAPIKey(ctx, expired), errdefs.ErrInvalid, "create a key that expires before it is made")

	keys, err := s.ListAPIKeys(ctx, store.APIKeyFilter{})
	must(t, err, "list keys")
	if len(keys) != 0 {
		t.Fatalf("rejected keys were stored: %+v", keys)
	}
}

// testZeroTimes checks that every optional time round-trips as the zero
// time.Time.
func testZeroTimes(t *testing.T, s store.Store) {
	ctx := t.Context()
	u := store.User{ID: "u-zero"}
	must(t, s.CreateUser(ctx, u), "create user")
	gotU, err := s.GetUser(ctx, u.ID)
	must(t, err, "get user")
	requireZero(t, "user CreatedAt", gotU.CreatedAt)

	k := newKey("k-zero", store.ScopeAdmin, "", time.Time{})
	must(t, s.CreateAPIKey(ctx, k), "create key")
	gotK, err := s.GetAPIKey(ctx, k.ID)
	must(t, err, "get key")
	requireZero(t, "key CreatedAt", gotK.CreatedAt)
	requireZero(t, "key LastUsedAt", gotK.LastUsedAt)
	requireZero(t, "key RevokedAt", gotK.RevokedAt)
	requireZero(t, "key ExpiresAt", gotK.ExpiresAt)

	img := newImage(hexID("00000000", "0"), "zero", time.Time{})
	must(t, s.PutImage(ctx, img), "put image")
	gotI, err := s.GetImage(ctx, img.ID)
	must(t, err, "get image")
	requireZero(t, "image CreatedAt", gotI.CreatedAt)

	vm := store.VM{ID: "vm-zero", State: store.StatePending}
	must(t, s.CreateVM(ctx, vm), "create vm")
	gotV, err := s.GetVM(ctx, vm.ID)
	must(t, err, "get vm")
	equal(t, "vm with zero times", gotV, vm, normVM)
	for name, v := range map[string]time.Time{
		"GuestBootAt": gotV.GuestBootAt, "LastHeartbeatAt": gotV.LastHeartbeatAt,
		"BootDeadline": gotV.BootDeadline, "CreatedAt": gotV.CreatedAt,
		"UpdatedAt": gotV.UpdatedAt, "ReadyAt": gotV.ReadyAt,
		"StoppedAt": gotV.StoppedAt, "DestroyedAt": gotV.DestroyedAt,
	} {
		requireZero(t, "vm "+name, v)
	}

	e, err := s.AppendEvent(ctx, store.Event{Type: "test"})
	must(t, err, "append event")
	es, err := s.ListEvents(ctx, e.ID-1, 1)
	must(t, err, "list events")
	if len(es) != 1 {
		t.Fatalf("listed %d events, want 1", len(es))
	}
	requireZero(t, "event At", es[0].At)
}

func requireZero(t *testing.T, what string, v time.Time) {
	t.Helper()
	if !v.IsZero() {
		t.Fatalf("%s = %v, want the zero time", what, v)
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.CreateUser(ctx, newUser("u-canceled", at(0))); err == nil {
		t.Fatal("create user with a canceled context succeeded")
	}
	if _, err := s.GetUser(ctx, "u-canceled"); err == nil {
		t.Fatal("get user with a canceled context succeeded")
	}
	_, err := s.GetUser(t.Context(), "u-canceled")
	mustFail(t, err, store.ErrNotFound, "get the user whose creation was canceled")
}
