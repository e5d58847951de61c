package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

func testCredentials(t *testing.T, s store.Store) {
	ctx := t.Context()
	cs, err := s.ListCredentials(ctx, "")
	must(t, err, "list credentials of an empty store")
	if len(cs) != 0 {
		t.Fatalf("empty store lists %d credentials", len(cs))
	}

	// Put out of order: listing sorts by user, then provider.
	put := []store.Credential{
		newCredential("cred-3", "u-2", "claude_code", "k1", at(0)),
		newCredential("cred-2", "u-1", "gemini_cli", "k1", at(1)),
		newCredential("cred-1", "u-1", "claude_code", "k2", at(2)),
		newCredential("cred-4", "u-1", "codex", "k1", at(3)),
	}
	put[3].Valid = false
	for _, c := range put {
		must(t, s.PutCredential(ctx, c), "put "+c.ID)
	}
	got, err := s.GetCredential(ctx, "u-1", "claude_code")
	must(t, err, "get credential")
	equal(t, "get credential", got, put[2], normCredential)
	got, err = s.GetCredential(ctx, "u-1", "codex")
	must(t, err, "get an invalid credential")
	equal(t, "get an invalid credential", got, put[3], normCredential)

	all, err := s.ListCredentials(ctx, "")
	must(t, err, "list every credential")
	equal(t, "every credential", all, []store.Credential{put[2], put[3], put[1], put[0]}, normCredentials)
	mine, err := s.ListCredentials(ctx, "u-1")
	must(t, err, "list u-1's credentials")
	if ids := credentialIDs(mine); !slices.Equal(ids, []string{"cred-1", "cred-4", "cred-2"}) {
		t.Fatalf("u-1's credentials = %q, want [cred-1 cred-4 cred-2]", ids)
	}
	none, err := s.ListCredentials(ctx, "u-nobody")
	must(t, err, "list credentials of a user without any")
	if len(none) != 0 {
		t.Fatalf("a user without credentials lists %q", credentialIDs(none))
	}

	for _, pair := range [][2]string{{"u-1", "nothing"}, {"u-nobody", "claude_code"}, {"u-2", "codex"}} {
		_, err = s.GetCredential(ctx, pair[0], pair[1])
		mustFail(t, err, store.ErrNotFound, fmt.Sprintf("get a missing credential %v", pair))
	}

	must(t, s.DeleteCredential(ctx, "u-1", "gemini_cli"), "delete credential")
	_, err = s.GetCredential(ctx, "u-1", "gemini_cli")
	mustFail(t, err, store.ErrNotFound, "get a deleted credential")
	mustFail(t, s.DeleteCredential(ctx, "u-1", "gemini_cli"), store.ErrNotFound, "delete a credential twice")
	mustFail(t, s.DeleteCredential(ctx, "u-nobody", "codex"), store.ErrNotFound, "delete a missing credential")
	all, err = s.ListCredentials(ctx, "")
	must(t, err, "list after delete")
	if ids := credentialIDs(all); !slices.Equal(ids, []string{"cred-1", "cred-4", "cred-3"}) {
		t.Fatalf("credentials after delete = %q", ids)
	}
}

// testCredentialsReplace checks that a user holds one record per provider:
// a put replaces it, whatever its id.
func testCredentialsReplace(t *testing.T, s store.Store) {
	ctx := t.Context()
	first := newCredential("cred-1", "u-1", "codex", "k1", at(0))
	other := newCredential("cred-9", "u-2", "codex", "k1", at(0))
	must(t, s.PutCredential(ctx, first), "put first")
	must(t, s.PutCredential(ctx, other), "put another user's")

	// Same id: every field replaced.
	again := newCredential("cred-1", "u-1", "codex", "k2", at(5))
	again.Sealed = []byte("resealed")
	again.Valid = false
	must(t, s.PutCredential(ctx, again), "put the same id again")
	got, err := s.GetCredential(ctx, "u-1", "codex")
	must(t, err, "get the replaced credential")
	equal(t, "replaced credential", got, again, normCredential)

	// A new id for the same user and provider replaces the old record.
	next := newCredential("cred-2", "u-1", "codex", "k2", at(6))
	must(t, s.PutCredential(ctx, next), "put a new record for the same pair")
	got, err = s.GetCredential(ctx, "u-1", "codex")
	must(t, err, "get the newer credential")
	equal(t, "newer credential", got, next, normCredential)
	all, err := s.ListCredentials(ctx, "")
	must(t, err, "list credentials")
	if ids := credentialIDs(all); !slices.Equal(ids, []string{"cred-2", "cred-9"}) {
		t.Fatalf("credentials = %q, want [cred-2 cred-9]: one per user and provider", ids)
	}

	// An id already used by another pair's record is not taken over: its
	// sealed data is bound to that pair.
	steal := newCredential("cred-9", "u-1", "claude_code", "k2", at(7))
	mustFail(t, s.PutCredential(ctx, steal), store.ErrConflict, "put with another pair's id")
	moved := newCredential("cred-2", "u-1", "gemini_cli", "k2", at(7))
	mustFail(t, s.PutCredential(ctx, moved), store.ErrConflict, "put a record under another provider")
	got, err = s.GetCredential(ctx, "u-2", "codex")
	must(t, err, "get the other user's credential")
	equal(t, "other user's credential after refused puts", got, other, normCredential)
	got, err = s.GetCredential(ctx, "u-1", "codex")
	must(t, err, "get u-1's credential after refused puts")
	equal(t, "u-1's credential after refused puts", got, next, normCredential)
	for _, p := range []string{"claude_code", "gemini_cli"} {
		_, err = s.GetCredential(ctx, "u-1", p)
		mustFail(t, err, store.ErrNotFound, "get the refused "+p+" credential")
	}
}

func testCredentialsInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	for name, mutate := range map[string]func(*store.Credential){
		"no id":          func(c *store.Credential) { c.ID = "" },
		"no user":        func(c *store.Credential) { c.UserID = "" },
		"no provider":    func(c *store.Credential) { c.Provider = "" },
		"no key id":      func(c *store.Credential) { c.KeyID = "" },
		"no wrapped key": func(c *store.Credential) { c.WrappedKey = nil },
		"no sealed data": func(c *store.Credential) { c.Sealed = []byte{} },
	} {
		c := newCredential("cred-1", "u-1", "codex", "k1", at(0))
		mutate(&c)
		mustFail(t, s.PutCredential(ctx, c), errdefs.ErrInvalid, "put a credential with "+name)
	}
	all, err := s.ListCredentials(ctx, "")
	must(t, err, "list credentials")
	if len(all) != 0 {
		t.Fatalf("invalid puts stored %q", credentialIDs(all))
	}
}

func testRewrapCredential(t *testing.T, s store.Store) {
	ctx := t.Context()
	c := newCredential("cred-1", "u-1", "codex", "k1", at(0))
	must(t, s.PutCredential(ctx, c), "put credential")

	must(t, s.RewrapCredential(ctx, c.ID, "k1", "k2", []byte("wrapped under k2")), "rewrap k1 -> k2")
	want := c
	want.KeyID, want.WrappedKey = "k2", []byte("wrapped under k2")
	got, err := s.GetCredential(ctx, "u-1", "codex")
	must(t, err, "get the rewrapped credential")
	// Only the key id and wrapped key change; UpdatedAt too stays.
	equal(t, "rewrapped credential", got, want, normCredential)

	// A stale compare value changes nothing.
	err = s.RewrapCredential(ctx, c.ID, "k1", "k3", []byte("wrapped under k3"))
	mustFail(t, err, store.ErrConflict, "rewrap from a key the record no longer uses")
	got, err = s.GetCredential(ctx, "u-1", "codex")
	must(t, err, "get after a refused rewrap")
	equal(t, "credential after a refused rewrap", got, want, normCredential)

	mustFail(t, s.RewrapCredential(ctx, "cred-nobody", "k1", "k2", []byte("x")), store.ErrNotFound,
		"rewrap a missing credential")
	mustFail(t, s.RewrapCredential(ctx, c.ID, "k2", "k3", nil), errdefs.ErrInvalid, "rewrap to an empty wrapped key")
	mustFail(t, s.RewrapCredential(ctx, c.ID, "k2", "", []byte("x")), errdefs.ErrInvalid, "rewrap to an empty key id")

	// A record replaced by a put is not rewrapped from its predecessor's key.
	must(t, s.PutCredential(ctx, newCredential("cred-2", "u-1", "codex", "k2", at(1))), "replace the record")
	mustFail(t, s.RewrapCredential(ctx, c.ID, "k2", "k3", []byte("x")), store.ErrNotFound,
		"rewrap a record replaced by a put")
}

// testConcurrentRewrapCredential has many goroutines rewrap one record from
// the same key at once: exactly one compare-and-swap may succeed.
func testConcurrentRewrapCredential(t *testing.T, s store.Store) {
	const n = 32
	ctx := t.Context()
	c := newCredential("cred-1", "u-1", "codex", "k-old", at(0))
	must(t, s.PutCredential(ctx, c), "put credential")
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []string
	)
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("k-%02d", i)
			err := s.RewrapCredential(ctx, c.ID, "k-old", key, []byte("wrapped under "+key))
			switch {
			case err == nil:
				mu.Lock()
				wins = append(wins, key)
				mu.Unlock()
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("concurrent rewrap: %v", err)
			}
		})
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d concurrent rewraps succeeded (%q), want 1", len(wins), wins)
	}
	got, err := s.GetCredential(ctx, "u-1", "codex")
	must(t, err, "get credential")
	if got.KeyID != wins[0] || string(got.WrappedKey) != "wrapped under "+wins[0] {
		t.Fatalf("record has key %s and wrapped key %q, the winner wrote %s", got.KeyID, got.WrappedKey, wins[0])
	}
}
