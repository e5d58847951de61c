package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

func keyID(key string) string { return strings.Split(key, "_")[1] }

// TestAPIKeyCLIRoundTrip: against a running daemon the CLI makes a key
// with an expiry, lists keys without any secret, and revokes the key, which
// is refused from its next request on saying why; the last admin key needs
// --force, and root's host-side 'apikey create' recovers. The database
// files are private. No VM is booted.
func TestAPIKeyCLIRoundTrip(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 2*time.Minute)
	admin := d.admin.Key

	out, err := d.hearthAs(admin, "apikey", "create", "--user", "carol", "--name", "carol-ci", "--expires", "30d")
	if err != nil {
		t.Fatalf("apikey create: %v\n%s", err, out)
	}
	carol := strings.Fields(out)[0]
	if !strings.HasPrefix(carol, "hearth_") || !strings.Contains(out, "expires ") {
		t.Fatalf("apikey create printed %q", out)
	}
	carolC := d.client(carol)
	if _, err := carolC.ListVMs(ctx, api.ListVMsParams{}); err != nil {
		t.Fatalf("the new key: %v", err)
	}

	secrets := []string{admin, d.alice.Key, d.bob.Key, carol}
	noSecrets := func(what, out string) {
		t.Helper()
		for _, k := range secrets {
			if strings.Contains(out, k[strings.LastIndex(k, "_")+1:]) {
				t.Fatalf("%s shows a key's secret:\n%s", what, out)
			}
		}
	}
	out, err = d.hearthAs(admin, "apikey", "list")
	if err != nil {
		t.Fatalf("apikey list: %v\n%s", err, out)
	}
	noSecrets("apikey list", out)
	if !strings.Contains(out, keyID(carol)) || !strings.Contains(out, "carol-ci") || !strings.Contains(out, "active") {
		t.Fatalf("apikey list does not show carol's key:\n%s", out)
	}
	out, err = d.hearthAs(admin, "apikey", "list", "--json")
	if err != nil {
		t.Fatalf("apikey list --json: %v\n%s", err, out)
	}
	noSecrets("apikey list --json", out)
	var keys []api.APIKey
	if err := json.Unmarshal([]byte(out), &keys); err != nil {
		t.Fatalf("apikey list --json: %v\n%s", err, out)
	}
	if len(keys) != 4 {
		t.Fatalf("listed %d keys, want 4 (admin, alice, bob, carol):\n%s", len(keys), out)
	}
	for _, k := range keys {
		if k.ID != keyID(carol) {
			continue
		}
		if k.User != "carol" || k.Admin || k.Status != "active" || k.ExpiresAt.IsZero() ||
			k.ExpiresAt.Sub(k.CreatedAt).Round(time.Hour) != 30*24*time.Hour || !k.LastUsedAt.IsZero() && k.LastUsedAt.Before(k.CreatedAt) {
			t.Fatalf("carol's key: %+v", k)
		}
	}
	// A user key lists its own user's keys only.
	if out, err := d.hearthAs(carol, "apikey", "list"); err != nil || strings.Contains(out, keyID(admin)) || !strings.Contains(out, keyID(carol)) {
		t.Fatalf("carol's apikey list: %v\n%s", err, out)
	}

	out, err = d.hearthAs(admin, "apikey", "revoke", keyID(carol))
	if err != nil || !strings.Contains(out, keyID(carol)+" revoked") {
		t.Fatalf("apikey revoke: %v\n%s", err, out)
	}
	_, err = carolC.ListVMs(ctx, api.ListVMsParams{})
	if ae := (*client.Error)(nil); !errors.As(err, &ae) || ae.Status != 401 || ae.Message != "API key revoked" {
		t.Fatalf("the revoked key's next request: %v", err)
	}
	if out, err := d.hearthAs(carol, "vm", "list"); err == nil || !strings.Contains(out, "API key revoked") {
		t.Fatalf("the CLI with a revoked key: %v\n%s", err, out)
	}

	// The only admin key is kept unless forced.
	out, err = d.hearthAs(admin, "apikey", "revoke", keyID(admin))
	if err == nil || !strings.Contains(out, "last active admin key") {
		t.Fatalf("revoking the last admin key: %v\n%s", err, out)
	}
	if _, err := d.admin.ListVMs(ctx, api.ListVMsParams{}); err != nil {
		t.Fatalf("the admin key after a refused revocation: %v", err)
	}
	if out, err := d.hearthAs(admin, "apikey", "revoke", keyID(admin), "--force"); err != nil {
		t.Fatalf("forced revocation: %v\n%s", err, out)
	}
	_, err = d.admin.ListVMs(ctx, api.ListVMsParams{})
	if ae := (*client.Error)(nil); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("the revoked admin key: %v", err)
	}
	// Root on the host makes a new admin key in the database; the running
	// daemon takes it at once.
	d.admin = d.client(strings.TrimSpace(d.hearth("apikey", "create", "--admin", "--name", "recovered")))
	if _, err := d.admin.ListVMs(ctx, api.ListVMsParams{}); err != nil {
		t.Fatalf("the recovered admin key: %v", err)
	}

	db := filepath.Join(d.stateDir, "hearth.db")
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", filepath.Base(f), perm)
		}
	}
}
