package auth

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

func openStore(t *testing.T) (*sqlite.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hearth.db")
	st, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, path
}

func addKey(t *testing.T, st store.APIKeys, scope store.Scope, user string, now time.Time, expires time.Time) (string, store.APIKey) {
	t.Helper()
	key, rec, err := NewKey("test", scope, user, now)
	if err != nil {
		t.Fatal(err)
	}
	rec.ExpiresAt = expires
	if err := st.CreateAPIKey(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	return key, rec
}

// clock is a settable time for expiry tests.
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) Set(t time.Time)     { c.ns.Store(t.UnixNano()) }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

// A key stops authenticating at its expiry, on the very next request, and
// says so once its secret is proven; before, it works.
func TestExpiredKeyRefusedOnNextVerify(t *testing.T) {
	st, _ := openStore(t)
	ctx := t.Context()
	var c clock
	c.Set(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	key, _ := addKey(t, st, store.ScopeAdmin, "", c.Now(), c.Now().Add(time.Hour))
	v := &Verifier{Keys: st, Now: c.Now}
	t.Cleanup(func() { _ = v.Close(context.Background()) })
	if _, err := v.Verify(ctx, key); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	c.Add(time.Hour - time.Nanosecond)
	if _, err := v.Verify(ctx, key); err != nil {
		t.Fatalf("a nanosecond before expiry: %v", err)
	}
	c.Add(time.Nanosecond)
	if _, err := v.Verify(ctx, key); !errors.Is(err, ErrExpired) || !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("at expiry: %v", err)
	}
	if _, err := v.Verify(ctx, key[:len(key)-1]+"x"); err != ErrUnauthenticated {
		t.Fatalf("expired key with a wrong secret: %v", err)
	}
}

// holdWriteLock opens another connection to the database at path and holds
// a write transaction on it until the returned function is called.
func holdWriteLock(t *testing.T, path string) (release func()) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(t.Context(), "UPDATE api_keys SET name = name"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
			conn.Close()
			db.Close()
		})
	}
	t.Cleanup(release)
	return release
}

// While another connection holds the database's write lock, verifying keys
// never used before (whose use must be written) does not wait for it; the
// uses are written once the lock is gone.
func TestLockedDatabaseDoesNotDelayVerify(t *testing.T) {
	st, path := openStore(t)
	ctx := t.Context()
	now := time.Now()
	var keys []string
	var recs []store.APIKey
	for range 5 {
		k, rec := addKey(t, st, store.ScopeAdmin, "", now, time.Time{})
		keys, recs = append(keys, k), append(recs, rec)
	}
	v := &Verifier{Keys: st}
	release := holdWriteLock(t, path)
	const bound = 500 * time.Millisecond // the lock is held for 2 s; the old code waited it out
	lockedUntil := time.Now().Add(2 * time.Second)
	var slowest time.Duration
	for _, k := range keys {
		start := time.Now()
		if _, err := v.Verify(ctx, k); err != nil {
			t.Fatalf("verify under a held write lock: %v", err)
		}
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest verification while the database was locked: %v", slowest)
	if slowest > bound {
		t.Fatalf("a verification took %v while the database was locked, want under %v", slowest, bound)
	}
	time.Sleep(time.Until(lockedUntil)) // keep the lock for its full time: the writer must wait it out, not the requests
	release()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := v.Close(cctx); err != nil {
		t.Fatal(err)
	}
	// The writer's first attempt may have given up on the lock; uses seen
	// again are written.
	for i, rec := range recs {
		got, err := st.GetAPIKey(ctx, rec.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.LastUsedAt.IsZero() {
			if s := v.Stats(); s.Failed == 0 {
				t.Errorf("key %d: use neither written nor failed: %+v", i, s)
			}
		}
	}
}

// blockingTouches lets the test hold every last-used write.
type blockingTouches struct {
	store.APIKeys
	release chan struct{}
	calls   atomic.Int64
}

func (b *blockingTouches) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	b.calls.Add(1)
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.APIKeys.TouchAPIKey(ctx, id, at)
}

// With writes stuck, uses of many keys neither block nor pile up: at most
// MaxPending wait, the rest are dropped; uses of one key are coalesced.
func TestUseQueueIsBoundedAndCoalesced(t *testing.T) {
	st, _ := openStore(t)
	ctx := t.Context()
	now := time.Now()
	const n, maxPending = 20, 4
	var keys []string
	for range n {
		k, _ := addKey(t, st, store.ScopeAdmin, "", now, time.Time{})
		keys = append(keys, k)
	}
	bt := &blockingTouches{APIKeys: st, release: make(chan struct{})}
	v := &Verifier{Keys: bt, MaxPending: maxPending}
	done := make(chan error, 1)
	go func() {
		for range 50 { // one key, used again and again: one write
			if _, err := v.Verify(ctx, keys[0]); err != nil {
				done <- err
				return
			}
		}
		for _, k := range keys[1:] {
			if _, err := v.Verify(ctx, k); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("verifications blocked behind stuck last-used writes")
	}
	if s := v.Stats(); s.Dropped == 0 {
		t.Fatalf("%d keys used with %d queue slots and writes stuck, none dropped: %+v", n, maxPending, s)
	}
	close(bt.release)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := v.Close(cctx); err != nil {
		t.Fatal(err)
	}
	s := v.Stats()
	t.Logf("stats: %+v, store writes attempted: %d", s, bt.calls.Load())
	if s.Written+s.Dropped != n || s.Failed != 0 {
		t.Fatalf("%d keys used once each (one of them 50 times): %+v, want written+dropped = %d", n, s, n)
	}
	if s.Written > 2*maxPending {
		t.Fatalf("%d uses written with a queue of %d (one batch in flight, one waiting)", s.Written, maxPending)
	}
	if got := bt.calls.Load(); got != int64(s.Written) {
		t.Fatalf("%d store writes for %d recorded uses", got, s.Written)
	}
	// After Close, uses are no longer recorded, and verification still works.
	if _, err := v.Verify(ctx, keys[n-1]); err != nil {
		t.Fatal(err)
	}
	if s2 := v.Stats(); s2 != s {
		t.Fatalf("recorded after Close: %+v", s2)
	}
}
