package vault

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

// openStore opens a real store in a temporary directory.
func openStore(t *testing.T) *sqlite.DB {
	t.Helper()
	return openStoreAt(t, filepath.Join(t.TempDir(), "hearth.db"))
}

func openStoreAt(t *testing.T, path string) *sqlite.DB {
	t.Helper()
	st, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return st
}

// newKeyFile creates a key file with one key in a new directory.
func newKeyFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), KeyFileName)
	created, err := EnsureKeyFile(path)
	if err != nil || !created {
		t.Fatalf("EnsureKeyFile = %v, %v", created, err)
	}
	return path
}

// load reads the keyring at path as a freshly started process would.
func load(t *testing.T, path string) *Keyring {
	t.Helper()
	kr, err := LoadKeyring(path, nil)
	if err != nil {
		t.Fatalf("load keyring: %v", err)
	}
	return kr
}

func cred(id, user, provider string) store.Credential {
	return store.Credential{ID: id, UserID: user, Provider: provider, LoginID: "login-" + id, Valid: true}
}

// secret is a recognizable plaintext for record id.
func secret(id string) []byte {
	return []byte(`{"access_token":"tok-` + id + `-SECRETSECRET","refresh_token":"ref-` + id + `"}`)
}

func mustPut(t *testing.T, v *Vault, c store.Credential) store.Credential {
	t.Helper()
	out, err := v.Put(t.Context(), c, secret(c.ID))
	if err != nil {
		t.Fatalf("put %s: %v", c.ID, err)
	}
	return out
}

// checkAll fails unless every stored record opens to its secret with v.
func checkAll(t *testing.T, v *Vault, st store.Credentials) []store.Credential {
	t.Helper()
	all, err := st.ListCredentials(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		_, p, err := v.Get(t.Context(), c.UserID, c.Provider)
		if err != nil {
			t.Fatalf("get %s: %v", c.ID, err)
		}
		if !bytes.Equal(p, secret(c.ID)) {
			t.Fatalf("%s opened to %q, want %q", c.ID, p, secret(c.ID))
		}
	}
	return all
}

// checkClean fails if err's text carries the secret of any of ids or any
// key of the key file at path.
func checkClean(t *testing.T, err error, path string, ids ...string) {
	t.Helper()
	msg := err.Error()
	for _, id := range ids {
		if strings.Contains(msg, string(secret(id))) || strings.Contains(msg, "SECRETSECRET") {
			t.Fatalf("error carries plaintext: %s", msg)
		}
	}
	if path == "" {
		return
	}
	data, rerr := os.ReadFile(path)
	if rerr != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && !strings.HasPrefix(line, "#") && strings.Contains(msg, f[1]) {
			t.Fatalf("error carries key material: %s", msg)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	kr := load(t, path)
	v := New(kr, st)
	ctx := t.Context()

	in := cred("cred-1", "u-1", "claude_code")
	plain := secret("cred-1")
	stored, err := v.Put(ctx, in, plain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(plain, secret("cred-1")) {
		t.Fatal("Put changed the caller's plaintext")
	}
	if stored.KeyID != kr.CurrentID() || len(stored.WrappedKey) == 0 || len(stored.Sealed) == 0 {
		t.Fatalf("stored record %+v: not sealed under the current key %s", stored, kr.CurrentID())
	}
	if stored.CreatedAt.IsZero() || stored.UpdatedAt.IsZero() || stored.LoginID != in.LoginID || !stored.Valid {
		t.Fatalf("stored record lost fields: %+v", stored)
	}
	if bytes.Contains(stored.Sealed, []byte("SECRETSECRET")) || bytes.Contains(stored.WrappedKey, []byte("SECRETSECRET")) {
		t.Fatal("sealed record contains the plaintext")
	}

	got, p, err := v.Get(ctx, "u-1", "claude_code")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, plain) {
		t.Fatalf("Get = %q, want %q", p, plain)
	}
	if got.ID != in.ID || got.KeyID != stored.KeyID {
		t.Fatalf("Get record = %+v", got)
	}
	p2, err := v.Open(got)
	if err != nil || !bytes.Equal(p2, plain) {
		t.Fatalf("Open = %q, %v", p2, err)
	}

	// The same plaintext sealed again gives different bytes: a fresh data
	// key and nonces every time.
	again, err := v.Put(ctx, cred("cred-2", "u-1", "claude_code"), plain)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again.Sealed, stored.Sealed) || bytes.Equal(again.WrappedKey, stored.WrappedKey) {
		t.Fatal("sealing twice gave the same bytes")
	}
	// Empty plaintext round-trips too.
	if _, err := v.Put(ctx, cred("cred-3", "u-2", "codex"), nil); err != nil {
		t.Fatal(err)
	}
	if _, p, err := v.Get(ctx, "u-2", "codex"); err != nil || len(p) != 0 {
		t.Fatalf("empty plaintext: %q, %v", p, err)
	}

	_, _, err = v.Get(ctx, "u-1", "gemini_cli")
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get of a missing credential: %v, want ErrNotFound", err)
	}
	for _, bad := range []store.Credential{cred("", "u", "p"), cred("c", "", "p"), cred("c", "u", "")} {
		if _, err := v.Put(ctx, bad, plain); !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("Put %+v: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestTampering(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	kr := load(t, path)
	v := New(kr, st)
	a := mustPut(t, v, cred("cred-a", "u-1", "codex"))
	b := mustPut(t, v, cred("cred-b", "u-2", "codex"))

	flip := func(bs []byte, i int) []byte {
		out := slices.Clone(bs)
		out[i] ^= 0x01
		return out
	}
	for name, mutate := range map[string]func(c *store.Credential){
		"sealed: flipped last byte":         func(c *store.Credential) { c.Sealed = flip(c.Sealed, len(c.Sealed)-1) },
		"sealed: flipped nonce":             func(c *store.Credential) { c.Sealed = flip(c.Sealed, 3) },
		"sealed: truncated":                 func(c *store.Credential) { c.Sealed = c.Sealed[:10] },
		"sealed: unknown version":           func(c *store.Credential) { c.Sealed = flip(c.Sealed, 0) },
		"sealed: another record's":          func(c *store.Credential) { c.Sealed = b.Sealed },
		"wrapped key: flipped":              func(c *store.Credential) { c.WrappedKey = flip(c.WrappedKey, 20) },
		"wrapped key: another record's":     func(c *store.Credential) { c.WrappedKey = b.WrappedKey },
		"both from another record (id)":     func(c *store.Credential) { c.ID = b.ID },
		"moved to another user":             func(c *store.Credential) { c.UserID = "u-2" },
		"moved to another provider":         func(c *store.Credential) { c.Provider = "claude_code" },
		"record's whole blob on another id": func(c *store.Credential) { c.ID = "cred-z" },
	} {
		c := a
		mutate(&c)
		_, err := v.Open(c)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Open = %v, want ErrCorrupt", name, err)
			continue
		}
		checkClean(t, err, path, "cred-a", "cred-b")
	}
	// A record moved wholesale to another user's row, in the database.
	moved := b
	moved.Sealed, moved.WrappedKey = a.Sealed, a.WrappedKey
	if err := st.PutCredential(t.Context(), moved); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Get(t.Context(), "u-2", "codex"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a record carrying another's sealed data: %v, want ErrCorrupt", err)
	}
	// The untouched record still opens.
	if _, p, err := v.Get(t.Context(), "u-1", "codex"); err != nil || !bytes.Equal(p, secret("cred-a")) {
		t.Fatalf("untouched record: %q, %v", p, err)
	}
}

// TestWrongMasterKey opens records with a keyring that lacks their key.
func TestWrongMasterKey(t *testing.T) {
	st := openStore(t)
	keyA, keyB := bytes.Repeat([]byte{0xA1}, 32), bytes.Repeat([]byte{0xB2}, 32)
	envA := []string{"HOME=/root", EnvKey + "=" + base64.StdEncoding.EncodeToString(keyA)}
	envB := []string{EnvKey + "=" + base64.StdEncoding.EncodeToString(keyB)}
	krA, err := LoadKeyring("", envA)
	if err != nil {
		t.Fatal(err)
	}
	c := mustPut(t, New(krA, st), cred("cred-1", "u-1", "codex"))
	if c.KeyID != keyID(keyA) {
		t.Fatalf("sealed under %s, want the env key's id %s", c.KeyID, keyID(keyA))
	}

	krB, err := LoadKeyring("", envB)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = New(krB, st).Get(t.Context(), "u-1", "codex")
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Get with another master key: %v, want ErrUnknownKey", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, keyID(keyA)) || !strings.Contains(msg, EnvKey) {
		t.Fatalf("error %q does not name the missing key %s and where keys came from", msg, keyID(keyA))
	}
	for _, k := range [][]byte{keyA, keyB} {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
			if strings.Contains(msg, enc.EncodeToString(k)[:20]) {
				t.Fatalf("error carries key material: %s", msg)
			}
		}
	}
	checkClean(t, err, "", "cred-1")
}

// TestUnknownKeyID: a record whose key id is not in a file keyring gives an
// error naming the id.
func TestUnknownKeyID(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	v := New(load(t, path), st)
	c := mustPut(t, v, cred("cred-1", "u-1", "codex"))
	c.KeyID = "0123456789abcdef"
	_, err := v.Open(c)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), `"0123456789abcdef"`) ||
		!strings.Contains(err.Error(), path) {
		t.Fatalf("Open with an unknown key id: %v", err)
	}
	checkClean(t, err, path, "cred-1")
}

func TestKeyFilePermissions(t *testing.T) {
	path := newKeyFile(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("new key file mode %04o, want 0600", perm)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644, 0o601, 0o610} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKeyring(path, nil)
		if err == nil {
			t.Fatalf("loaded a key file with mode %04o", mode)
		}
		if !strings.Contains(err.Error(), "group and others must have no access") || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: error %q does not say why", mode, err)
		}
		checkClean(t, err, path)
		if _, err := EnsureKeyFile(path); err == nil {
			t.Fatalf("EnsureKeyFile accepted an existing key file with mode %04o", mode)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(path, nil); err != nil {
		t.Fatalf("read-only for its owner: %v", err)
	}
	dir := t.TempDir()
	if _, err := LoadKeyring(dir, nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("a directory as key file: %v", err)
	}
}

func TestEnvKey(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	b64 := base64.StdEncoding.EncodeToString(key)
	for _, val := range []string{b64, base64.RawURLEncoding.EncodeToString(key), " " + b64 + "\n"} {
		kr, err := LoadKeyring("", []string{EnvKey + "=" + val})
		if err != nil {
			t.Fatalf("env key %q: %v", val, err)
		}
		if kr.CurrentID() != keyID(key) || !slices.Equal(kr.IDs(), []string{keyID(key)}) || kr.Source() != EnvKey {
			t.Fatalf("env keyring: current %s, ids %v, source %s", kr.CurrentID(), kr.IDs(), kr.Source())
		}
	}
	// The last setting wins, as in a shell.
	kr, err := LoadKeyring("", []string{EnvKey + "=garbage", EnvKey + "=" + b64})
	if err != nil || kr.CurrentID() != keyID(key) {
		t.Fatalf("last setting: %v", err)
	}
	for _, bad := range []string{"not base64!!", base64.StdEncoding.EncodeToString(key[:16])} {
		_, err := LoadKeyring("", []string{EnvKey + "=" + bad})
		if err == nil || strings.Contains(err.Error(), bad) {
			t.Fatalf("bad env key %q: %v (must fail without quoting it)", bad, err)
		}
	}
	// The key id is the same as the key's in a file, so moving a key from
	// the environment to a file keeps every record readable.
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFileName)
	data := formatKeyFile([]string{keyID(key)}, map[string][]byte{keyID(key): key}, keyID(key))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if fromFile := load(t, path); fromFile.CurrentID() != keyID(key) {
		t.Fatalf("file key id %s, env key id %s", fromFile.CurrentID(), keyID(key))
	}
	// Both sources at once are refused; an absent file is fine.
	if _, err := LoadKeyring(path, []string{EnvKey + "=" + b64}); err == nil || !strings.Contains(err.Error(), "use one") {
		t.Fatalf("env key and key file: %v", err)
	}
	kr, err = LoadKeyring(filepath.Join(dir, "absent"), []string{EnvKey + "=" + b64})
	if err != nil {
		t.Fatal(err)
	}
	// An env keyring works without any file and cannot be rotated.
	st := openStore(t)
	v := New(kr, st)
	mustPut(t, v, cred("cred-1", "u-1", "codex"))
	checkAll(t, v, st)
	if _, err := v.Rotate(t.Context()); err == nil || !strings.Contains(err.Error(), EnvKey) {
		t.Fatalf("Rotate with an env key: %v", err)
	}
	for _, suffix := range []string{".lock", ".gate"} {
		if _, err := os.Stat(filepath.Join(dir, "absent"+suffix)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("an env keyring made a lock file: %v", err)
		}
	}
	// An empty variable is not a key: the file is used.
	if kr, err := LoadKeyring(path, []string{EnvKey + "="}); err != nil || kr.Source() != path {
		t.Fatalf("empty %s: %v", EnvKey, err)
	}
}

func TestLoadKeyringNeedsAKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFileName)
	_, err := LoadKeyring(path, nil)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing key file: %v, want ErrNotExist", err)
	}
	if _, serr := os.Stat(path); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatal("LoadKeyring created a key file")
	}
	if _, err := LoadKeyring("", []string{"HOME=/"}); err == nil {
		t.Fatal("LoadKeyring without a file or env key succeeded")
	}
}

func TestParseKeyFile(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	id1, id2 := keyID(k1), keyID(k2)
	b1, b2 := base64.StdEncoding.EncodeToString(k1), base64.StdEncoding.EncodeToString(k2)

	good := "# comment\n\n  " + id1 + " " + b1 + "\n" + id2 + "\t" + b2 + "  current  \n# trailing\n"
	order, keys, current, err := parseKeyFile([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, []string{id1, id2}) || current != id2 || !bytes.Equal(keys[id1], k1) {
		t.Fatalf("parsed order %v, current %s", order, current)
	}
	// Formatting and parsing round-trip.
	o2, k2s, c2, err := parseKeyFile(formatKeyFile(order, keys, current))
	if err != nil || !slices.Equal(o2, order) || c2 != current || !bytes.Equal(k2s[id2], k2) {
		t.Fatalf("round trip: %v %v %v", o2, c2, err)
	}

	for name, text := range map[string]string{
		"empty":              "",
		"only comments":      "# nothing\n",
		"no current":         id1 + " " + b1 + "\n",
		"two current":        id1 + " " + b1 + " current\n" + id2 + " " + b2 + " current\n",
		"duplicate":          id1 + " " + b1 + " current\n" + id1 + " " + b1 + "\n",
		"id does not match":  id2 + " " + b1 + " current\n",
		"one field":          id1 + "\n",
		"unknown mark":       id1 + " " + b1 + " primary\n",
		"four fields":        id1 + " " + b1 + " current extra\n",
		"not base64":         id1 + " " + b1[:10] + "!!" + b1[12:] + " current\n",
		"short key":          keyID(k1[:16]) + " " + base64.StdEncoding.EncodeToString(k1[:16]) + " current\n",
		"key id not derived": "mykey " + b1 + " current\n",
	} {
		_, _, _, err := parseKeyFile([]byte(text))
		if err == nil {
			t.Errorf("%s: parsed", name)
			continue
		}
		if strings.Contains(err.Error(), b1) || strings.Contains(err.Error(), b1[:12]) || strings.Contains(err.Error(), b2) {
			t.Errorf("%s: error carries key material: %v", name, err)
		}
	}
}

func TestEnsureKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFileName)
	const n = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created int
	)
	for range n {
		wg.Go(func() {
			c, err := EnsureKeyFile(path)
			if err != nil {
				t.Errorf("EnsureKeyFile: %v", err)
				return
			}
			if c {
				mu.Lock()
				created++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if created != 1 {
		t.Fatalf("%d concurrent EnsureKeyFile calls created the file, want 1", created)
	}
	kr := load(t, path)
	if len(kr.IDs()) != 1 || kr.CurrentID() != kr.IDs()[0] {
		t.Fatalf("new key file: ids %v, current %s", kr.IDs(), kr.CurrentID())
	}
	c, err := EnsureKeyFile(path)
	if err != nil || c {
		t.Fatalf("EnsureKeyFile on an existing file: %v, %v", c, err)
	}
	if after := load(t, path); after.CurrentID() != kr.CurrentID() {
		t.Fatal("EnsureKeyFile changed an existing key file")
	}
	checkNoTemps(t, dir)
	if _, err := EnsureKeyFile(filepath.Join(dir, "missing", KeyFileName)); err == nil {
		t.Fatal("EnsureKeyFile created a directory")
	}
	// A broken existing file is reported, not replaced.
	if err := os.WriteFile(path, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureKeyFile(path); err == nil {
		t.Fatal("EnsureKeyFile accepted a broken key file")
	}
}

// checkNoTemps fails if dir holds a temporary key file.
func checkNoTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}
}

// keyFileIDs returns the ids in the key file at path and its current one.
func keyFileIDs(t *testing.T, path string) ([]string, string) {
	t.Helper()
	kr := load(t, path)
	return kr.IDs(), kr.CurrentID()
}

// fillStore puts n records spread over users and providers.
func fillStore(t *testing.T, v *Vault, n int) {
	t.Helper()
	providers := []string{"claude_code", "codex", "gemini_cli"}
	for i := range n {
		mustPut(t, v, cred(fmt.Sprintf("cred-%02d", i), fmt.Sprintf("u-%d", i/len(providers)), providers[i%len(providers)]))
	}
}

func TestRotate(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	kr := load(t, path)
	v := New(kr, st)
	fillStore(t, v, 7)
	k1 := kr.CurrentID()
	before, err := st.ListCredentials(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}

	rep, err := v.Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.NewKeyID == k1 || rep.Rewrapped != 7 || !slices.Equal(rep.Removed, []string{k1}) || len(rep.Kept) != 0 {
		t.Fatalf("rotation report %+v (old key %s)", rep, k1)
	}
	if kr.CurrentID() != rep.NewKeyID || !slices.Equal(kr.IDs(), []string{rep.NewKeyID}) {
		t.Fatalf("keyring after rotation: current %s, ids %v", kr.CurrentID(), kr.IDs())
	}
	ids, cur := keyFileIDs(t, path)
	if cur != rep.NewKeyID || !slices.Equal(ids, []string{rep.NewKeyID}) {
		t.Fatalf("key file after rotation: ids %v, current %s", ids, cur)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file after rotation: %v, %v", fi.Mode(), err)
	}
	checkNoTemps(t, filepath.Dir(path))

	after := checkAll(t, v, st)
	for i, c := range after {
		if c.KeyID != rep.NewKeyID {
			t.Fatalf("%s still under %s", c.ID, c.KeyID)
		}
		// Only the data key's wrapping changed.
		if !bytes.Equal(c.Sealed, before[i].Sealed) || bytes.Equal(c.WrappedKey, before[i].WrappedKey) ||
			!c.UpdatedAt.Equal(before[i].UpdatedAt) {
			t.Fatalf("%s: rotation changed more than the wrapped key", c.ID)
		}
	}
	// A process started now reads everything with the file alone.
	checkAll(t, New(load(t, path), st), st)

	// Again: the second key goes the way of the first.
	rep2, err := v.Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Rewrapped != 7 || !slices.Equal(rep2.Removed, []string{rep.NewKeyID}) {
		t.Fatalf("second rotation report %+v", rep2)
	}
	checkAll(t, New(load(t, path), st), st)

	// A rotation with nothing stored just replaces the key.
	empty := New(load(t, newKeyFile(t)), openStore(t))
	rep3, err := empty.Rotate(t.Context())
	if err != nil || rep3.Rewrapped != 0 || len(rep3.Removed) != 1 {
		t.Fatalf("rotation of an empty store: %+v, %v", rep3, err)
	}
}

var errCrash = errors.New("simulated crash")

// TestRotateCrashAfterKeyFileWrite: the process dies right after writing the
// new key file, before re-wrapping anything. A restarted process reads every
// record, stores new ones under the new key, and a second rotation finishes
// the job and removes both older keys.
func TestRotateCrashAfterKeyFileWrite(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	v := New(load(t, path), st)
	fillStore(t, v, 5)
	k1 := v.kr.CurrentID()

	// An earlier crash in the middle of writing left a temporary file.
	stale := filepath.Join(filepath.Dir(path), "."+KeyFileName+".tmp-123")
	if err := os.WriteFile(stale, []byte("half a key file"), 0o600); err != nil {
		t.Fatal(err)
	}
	v.afterKeyWrite = func() error { return errCrash }
	rep, err := v.Rotate(t.Context())
	if !errors.Is(err, errCrash) {
		t.Fatalf("Rotate = %v, want the simulated crash", err)
	}
	k2 := rep.NewKeyID

	// "Restart": a new process with a keyring read from the file.
	ids, cur := keyFileIDs(t, path)
	if cur != k2 || !slices.Equal(ids, []string{k1, k2}) {
		t.Fatalf("key file after the crash: ids %v current %s, want [%s %s] current %s", ids, cur, k1, k2, k2)
	}
	restarted := New(load(t, path), st)
	checkAll(t, restarted, st)
	if c := mustPut(t, restarted, cred("cred-new", "u-9", "codex")); c.KeyID != k2 {
		t.Fatalf("a record stored after the crash is under %s, want the new current %s", c.KeyID, k2)
	}

	rep, err = restarted.Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rewrapped != 6 || !slices.Equal(rep.Removed, []string{k1, k2}) {
		t.Fatalf("resumed rotation report %+v, want 6 re-wrapped and [%s %s] removed", rep, k1, k2)
	}
	ids, _ = keyFileIDs(t, path)
	if !slices.Equal(ids, []string{rep.NewKeyID}) {
		t.Fatalf("key file after the resumed rotation: %v", ids)
	}
	checkNoTemps(t, filepath.Dir(path))
	checkAll(t, New(load(t, path), st), st)
}

// failingStore fails RewrapCredential after a number of calls.
type failingStore struct {
	store.Credentials
	mu   sync.Mutex
	left int
}

func (f *failingStore) RewrapCredential(ctx context.Context, id, oldKeyID, newKeyID string, wrapped []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.left == 0 {
		return errCrash
	}
	f.left--
	return f.Credentials.RewrapCredential(ctx, id, oldKeyID, newKeyID, wrapped)
}

// TestRotateCrashMidRewrap: the process dies after re-wrapping some records.
// Every record stays readable; the next rotation finishes.
func TestRotateCrashMidRewrap(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	v := New(load(t, path), st)
	fillStore(t, v, 6)
	k1 := v.kr.CurrentID()

	crashing := New(load(t, path), &failingStore{Credentials: st, left: 2})
	if _, err := crashing.Rotate(t.Context()); !errors.Is(err, errCrash) {
		t.Fatalf("Rotate = %v, want the simulated crash", err)
	}
	ids, k2 := keyFileIDs(t, path)
	if !slices.Equal(ids, []string{k1, k2}) {
		t.Fatalf("key file after the crash: %v", ids)
	}
	all := checkAll(t, New(load(t, path), st), st)
	under := map[string]int{}
	for _, c := range all {
		under[c.KeyID]++
	}
	if under[k1] != 4 || under[k2] != 2 {
		t.Fatalf("records per key after the crash: %v", under)
	}

	rep, err := New(load(t, path), st).Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Rewrapped != 6 || !slices.Equal(rep.Removed, []string{k1, k2}) {
		t.Fatalf("resumed rotation report %+v", rep)
	}
	checkAll(t, New(load(t, path), st), st)
}

// TestRotateKeepsKeysInUse: records that cannot be re-wrapped keep their
// key in the file, and the error names them.
func TestRotateKeepsKeysInUse(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	v := New(load(t, path), st)
	fillStore(t, v, 3)
	k1 := v.kr.CurrentID()
	broken := mustPut(t, v, cred("cred-broken", "u-8", "codex"))
	broken.WrappedKey[len(broken.WrappedKey)-1] ^= 1
	if err := st.PutCredential(t.Context(), broken); err != nil {
		t.Fatal(err)
	}
	orphan := mustPut(t, v, cred("cred-orphan", "u-9", "codex"))
	orphan.KeyID = "feedfacefeedface"
	if err := st.PutCredential(t.Context(), orphan); err != nil {
		t.Fatal(err)
	}

	rep, err := v.Rotate(t.Context())
	if err == nil {
		t.Fatal("Rotate succeeded with records it cannot re-wrap")
	}
	for _, want := range []string{"cred-broken", "cred-orphan", "feedfacefeedface"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %s", err, want)
		}
	}
	checkClean(t, err, path, "cred-broken", "cred-orphan")
	if rep.Rewrapped != 3 || !slices.Equal(rep.Kept, []string{k1}) || len(rep.Removed) != 0 {
		t.Fatalf("report %+v, want 3 re-wrapped and %s kept", rep, k1)
	}
	ids, _ := keyFileIDs(t, path)
	if !slices.Equal(ids, []string{k1, rep.NewKeyID}) {
		t.Fatalf("key file %v, want the broken record's key kept", ids)
	}
	// Once the broken record is gone, the next rotation drops its key.
	if err := st.DeleteCredential(t.Context(), "u-8", "codex"); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteCredential(t.Context(), "u-9", "codex"); err != nil {
		t.Fatal(err)
	}
	rep, err = v.Rotate(t.Context())
	if err != nil || len(rep.Kept) != 0 || !slices.Contains(rep.Removed, k1) {
		t.Fatalf("rotation after cleanup: %+v, %v", rep, err)
	}
}

// slowStore delays PutCredential, widening the window between sealing a
// record and storing it, where a rotation must not remove the key it was
// sealed under.
type slowStore struct{ store.Credentials }

func (s slowStore) PutCredential(ctx context.Context, c store.Credential) error {
	time.Sleep(2 * time.Millisecond)
	return s.Credentials.PutCredential(ctx, c)
}

// TestRotateWhileOthersWrite runs rotations in one "process" while another
// (its own keyring from the same file and its own store handle) stores and
// reads credentials. No record may end up under a key the file lost.
func TestRotateWhileOthersWrite(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "hearth.db")
	stA, stB := openStoreAt(t, dbPath), openStoreAt(t, dbPath)
	path := newKeyFile(t)
	rotator := New(load(t, path), stA)
	writer := New(load(t, path), slowStore{stB})
	fillStore(t, writer, 4)

	const writers, writes = 2, 30
	var (
		wg, writersWG sync.WaitGroup
		rotations     atomic.Int32
	)
	done := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := rotator.Rotate(t.Context()); err != nil {
				t.Errorf("rotate: %v", err)
				return
			}
			rotations.Add(1)
			time.Sleep(5 * time.Millisecond) // rotations are rare; back to back they would starve writers
		}
	})
	for w := range writers {
		writersWG.Go(func() {
			for i := range writes {
				c := cred(fmt.Sprintf("cred-w%d-%02d", w, i), fmt.Sprintf("u-w%d-%d", w, i%5), "codex")
				if _, err := writer.Put(t.Context(), c, secret(c.ID)); err != nil {
					t.Errorf("put: %v", err)
					return
				}
				if _, p, err := writer.Get(t.Context(), c.UserID, c.Provider); err != nil || !bytes.Equal(p, secret(c.ID)) {
					t.Errorf("get %s right after put: %v", c.ID, err)
					return
				}
			}
		})
	}
	writersWG.Wait()
	close(done)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if rotations.Load() < 2 {
		t.Fatalf("only %d rotations ran while writing", rotations.Load())
	}
	// A fresh process reads every record with the file alone; the file
	// holds no key beyond the current one and those records use.
	fresh := New(load(t, path), stA)
	all := checkAll(t, fresh, stA)
	if len(all) != 4+writers*5 {
		t.Fatalf("%d records, want %d", len(all), 4+writers*5)
	}
	used := map[string]bool{fresh.kr.CurrentID(): true}
	for _, c := range all {
		used[c.KeyID] = true
	}
	for _, id := range fresh.kr.IDs() {
		if !used[id] {
			t.Errorf("key %s left in the file though no record uses it", id)
		}
	}
	// And the writer, whose keyring is from before the rotations, still
	// reads everything: it re-reads the key file when it meets a new key.
	checkAll(t, writer, stB)
}

// TestPutFollowsAnotherProcessRotation: a process whose keyring predates a
// rotation done elsewhere seals new records under the new current key.
func TestPutFollowsAnotherProcessRotation(t *testing.T) {
	st := openStore(t)
	path := newKeyFile(t)
	old := New(load(t, path), st)
	fillStore(t, old, 2)
	rep, err := New(load(t, path), st).Rotate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	c := mustPut(t, old, cred("cred-late", "u-7", "codex"))
	if c.KeyID != rep.NewKeyID {
		t.Fatalf("record stored under %s after a rotation to %s elsewhere", c.KeyID, rep.NewKeyID)
	}
	checkAll(t, old, st)
}

func TestLockHonoursContext(t *testing.T) {
	path := newKeyFile(t)
	kr := load(t, path)
	unlock, err := kr.lock(t.Context(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	v := New(load(t, path), openStore(t))
	if _, err := v.Put(ctx, cred("c", "u", "p"), []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put while rotation holds the lock: %v, want a deadline error", err)
	}
}
