package api_test

import (
	"context"
	"database/sql"
	"net/http"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/store"
)

// While another connection holds the database's write lock for seconds,
// authenticated GETs with keys never used before (whose use is recorded)
// answer at once: recording the use never waits for the lock.
func TestLockedDatabaseDoesNotDelayRequests(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var keys []string
	for range 5 {
		k, rec, err := auth.NewKey("fresh", store.ScopeAdmin, "", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := f.st.CreateAPIKey(ctx, rec); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	db, err := sql.Open("sqlite", f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "UPDATE api_keys SET name = name"); err != nil {
		t.Fatal(err)
	}
	const hold = 3 * time.Second
	const bound = 500 * time.Millisecond // typically a few ms; the old code waited for the lock
	lockedUntil := time.Now().Add(hold)
	var took []time.Duration
	for _, k := range keys {
		start := time.Now()
		a := f.do("GET", "/v1/vms", k, "")
		took = append(took, time.Since(start))
		if a.status != http.StatusOK {
			t.Fatalf("GET /v1/vms under a held write lock: %d %s", a.status, a.body)
		}
	}
	t.Logf("GET /v1/vms with 5 fresh keys while the database was locked: %v", took)
	if time.Now().After(lockedUntil) {
		t.Fatalf("the requests outlasted the %v lock: %v", hold, took)
	}
	for _, d := range took {
		if d > bound {
			t.Fatalf("a request took %v while the database was locked, want under %v (all: %v)", d, bound, took)
		}
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
}
