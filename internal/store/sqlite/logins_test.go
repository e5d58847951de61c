package sqlite

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hearth-project/hearth/internal/store"
)

const rawLogin = `INSERT INTO logins (id, user_id, provider, state, failure_reason, browser_vm_id, credential_id)
	VALUES (?, ?, ?, ?, '', '', '')`

// TestActiveLoginUniqueInSchema checks that the database itself, without
// CreateLogin's lookup, refuses a second active login for a user and
// provider, and that the error maps to store.ErrConflict.
func TestActiveLoginUniqueInSchema(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	ctx := t.Context()
	exec := func(id, user, provider, state string) error {
		_, err := db.sql.ExecContext(ctx, rawLogin, id, user, provider, state)
		return err
	}
	for _, row := range [][4]string{
		{"l-1", "u-1", "codex", "failed"},
		{"l-2", "u-1", "codex", "expired"}, // terminal logins do not count
		{"l-3", "u-1", "codex", "awaiting_user"},
		{"l-4", "u-2", "codex", "starting"},
		{"l-5", "u-1", "claude_code", "capturing"},
	} {
		if err := exec(row[0], row[1], row[2], row[3]); err != nil {
			t.Fatalf("insert %v: %v", row, err)
		}
	}
	for _, state := range []string{"starting", "awaiting_user", "capturing"} {
		err := exec("l-x-"+state, "u-1", "codex", state)
		if err == nil {
			t.Fatalf("schema accepted a second active (%s) codex login for u-1", state)
		}
		if !errors.Is(uniqueConflict(err), store.ErrConflict) {
			t.Fatalf("unique violation %v does not map to ErrConflict", err)
		}
	}
	// Re-activating a finished login would make two active ones.
	if _, err := db.sql.ExecContext(ctx, `UPDATE logins SET state = 'starting' WHERE id = 'l-1'`); err == nil {
		t.Fatal("schema let a finished login become active next to an active one")
	}
	if err := exec("l-bad", "u-9", "codex", "exploded"); err == nil {
		t.Fatal("schema accepted an unknown login state")
	}
}

// TestCreateLoginAcrossHandles races creates through two handles on one
// file, as two processes would: the in-process write lock does not cover
// them, the database does.
func TestCreateLoginAcrossHandles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	handles := []*DB{openClosed(t, path), openClosed(t, path)}
	ctx := t.Context()
	const n = 16
	var (
		wg   sync.WaitGroup
		wins atomic.Int32
	)
	for i := range n {
		wg.Go(func() {
			l := store.Login{ID: fmt.Sprintf("l-%02d", i), UserID: "u-1", Provider: "codex", State: store.LoginStarting}
			_, err := handles[i%2].CreateLogin(ctx, l)
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("create %s: %v", l.ID, err)
			}
		})
	}
	wg.Wait()
	if got := wins.Load(); got != 1 {
		t.Fatalf("%d creates succeeded across two handles, want 1", got)
	}
}

func TestCredentialSchemaConstraints(t *testing.T) {
	db := openClosed(t, filepath.Join(t.TempDir(), "hearth.db"))
	ctx := t.Context()
	const ins = `INSERT INTO credentials (id, user_id, provider, login_id, key_id, wrapped_key, sealed, valid)
		VALUES (?, ?, ?, '', ?, ?, ?, ?)`
	if _, err := db.sql.ExecContext(ctx, ins, "c-1", "u-1", "codex", "k", []byte{1}, []byte{1}, 1); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]any{
		"a second record for a pair": {"c-2", "u-1", "codex", "k", []byte{1}, []byte{1}, 1},
		"no key id":                  {"c-3", "u-1", "gemini_cli", "", []byte{1}, []byte{1}, 1},
		"an empty wrapped key":       {"c-4", "u-1", "gemini_cli", "k", []byte{}, []byte{1}, 1},
		"empty sealed data":          {"c-5", "u-1", "gemini_cli", "k", []byte{1}, []byte{}, 1},
		"a valid flag of 2":          {"c-6", "u-1", "gemini_cli", "k", []byte{1}, []byte{1}, 2},
	} {
		if _, err := db.sql.ExecContext(ctx, ins, args...); err == nil {
			t.Errorf("schema accepted %s", name)
		}
	}
}

// TestMigrateEventsLoginID upgrades a database written before logins
// existed: its events keep their fields and get an empty login id.
func TestMigrateEventsLoginID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.db")
	ctx := t.Context()
	raw := rawAtVersion(t, path, 3)
	if _, err := raw.ExecContext(ctx, `INSERT INTO events (at, type, vm_id, user_id, from_state, to_state, message)
		VALUES (NULL, 'vm.state', 'vm-1', 'u-1', 'pending', 'booting', 'old')`); err != nil {
		t.Fatal(err)
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}

	db := openClosed(t, path)
	events, err := db.ListEvents(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 {
		t.Fatalf("%d events after migrating, want 1", len(events))
	}
	want := store.Event{ID: events[0].ID, Type: "vm.state", VMID: "vm-1", UserID: "u-1",
		FromState: store.StatePending, ToState: store.StateBooting, Message: "old"}
	if events[0] != want {
		t.Fatalf("events after migrating = %+v, want [%+v]", events, want)
	}
}
