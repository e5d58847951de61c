// Package vault keeps provider credentials encrypted at rest with envelope
// encryption. Each credential gets a fresh random 256-bit data key; the
// plaintext is sealed under it with AES-256-GCM, bound to the record (its
// id, user and provider) as additional authenticated data, so sealed data
// moved to another record does not open. The data key is wrapped with
// AES-256-GCM under a master key from the Keyring; the record names that
// key by id. The store only ever sees sealed records.
//
// Master keys come from a key file (several keys, one current, so rotation
// can re-wrap every record before an old key goes) or from the
// HEARTH_VAULT_KEY environment variable. Rotate adds a new current key,
// re-wraps every data key under it and removes the keys no record uses any
// more; it can be re-run after a crash at any point.
//
// Nothing here logs, and no error carries plaintext or key material.
package vault

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// Errors Open and Get wrap, beside the store's.
var (
	// ErrUnknownKey: the record's master key is not in the keyring (a wrong
	// key file or HEARTH_VAULT_KEY, or a key removed too early).
	ErrUnknownKey = errors.New("master key not in the keyring")
	// ErrCorrupt: the record does not authenticate: it was altered, its
	// sealed data belongs to another record, or it is not in a format this
	// hearth writes.
	ErrCorrupt = errors.New("sealed credential does not authenticate")
)

// formatV1 is the first byte of every wrapped key and sealed blob: the
// layout is version || 96-bit nonce || AES-256-GCM ciphertext and tag.
const formatV1 byte = 1

// Vault seals credentials into a store and opens them again.
type Vault struct {
	kr  *Keyring
	st  store.Credentials
	now func() time.Time
	// afterKeyWrite, if set, runs in Rotate right after the new key file is
	// in place (tests use it to simulate a crash there).
	afterKeyWrite func() error
}

// New returns a vault that keeps credentials in st under the keys of kr.
// Every hearth process that stores credentials must use a Vault (Put), so
// that key rotation can see and exclude it.
func New(kr *Keyring, st store.Credentials) *Vault {
	return &Vault{kr: kr, st: st, now: func() time.Time { return time.Now().UTC() }}
}

// Put seals plaintext under a fresh data key wrapped by the current master
// key and stores it as c's record, replacing the user's record for
// c.Provider (store.Credentials.PutCredential). c.ID, c.UserID and
// c.Provider must be set (errdefs.ErrInvalid otherwise); KeyID, WrappedKey
// and Sealed are filled in, UpdatedAt is set to now and CreatedAt too if it
// is zero. It returns the stored record. plaintext is not kept; the caller
// still owns (and should clear) it.
func (v *Vault) Put(ctx context.Context, c store.Credential, plaintext []byte) (store.Credential, error) {
	if c.ID == "" || c.UserID == "" || c.Provider == "" {
		return store.Credential{}, fmt.Errorf("vault: put credential: %w", errdefs.Invalidf("a credential needs an id, a user and a provider"))
	}
	unlock, err := v.kr.lock(ctx, false)
	if err != nil {
		return store.Credential{}, err
	}
	defer unlock()
	// Under the shared lock the key file cannot change: the key current now
	// stays in the file at least until this record is stored.
	if err := v.kr.reload(); err != nil {
		return store.Credential{}, err
	}
	if err := v.seal(&c, plaintext); err != nil {
		return store.Credential{}, err
	}
	now := v.now()
	if c.CreatedAt.IsZero() {
		c.CreatedAt = now
	}
	c.UpdatedAt = now
	if err := v.st.PutCredential(ctx, c); err != nil {
		return store.Credential{}, fmt.Errorf("vault: %w", err)
	}
	return c, nil
}

// Get returns the user's credential for provider and its plaintext, which
// the caller owns and should clear when done.
func (v *Vault) Get(ctx context.Context, userID, provider string) (store.Credential, []byte, error) {
	unlock, err := v.kr.lock(ctx, false)
	if err != nil {
		return store.Credential{}, nil, err
	}
	defer unlock()
	c, err := v.st.GetCredential(ctx, userID, provider)
	if err != nil {
		return store.Credential{}, nil, fmt.Errorf("vault: %w", err)
	}
	p, err := v.Open(c)
	if err != nil {
		return store.Credential{}, nil, err
	}
	return c, p, nil
}

// Open returns the plaintext of a record read from the store; the caller
// owns it and should clear it when done. A record read before a rotation
// finished may name a key that is gone by now (ErrUnknownKey): read it
// again. Errors wrap ErrUnknownKey or ErrCorrupt and name the record and
// key id, never key material or plaintext.
func (v *Vault) Open(c store.Credential) ([]byte, error) {
	dataKey, err := v.unwrap(c)
	if err != nil {
		return nil, err
	}
	defer clear(dataKey)
	a, err := newAEAD(dataKey)
	if err != nil {
		return nil, fmt.Errorf("vault: %s: %w", describe(c), err)
	}
	p, err := openBlob(a, c.Sealed, recordAAD(c))
	if err != nil {
		return nil, fmt.Errorf("vault: %s: sealed data: %w", describe(c), err)
	}
	return p, nil
}

// seal fills c's KeyID, WrappedKey and Sealed: plaintext under a fresh data
// key, the data key under the current master key.
func (v *Vault) seal(c *store.Credential, plaintext []byte) error {
	dataKey := make([]byte, keySize)
	defer clear(dataKey)
	if _, err := rand.Read(dataKey); err != nil {
		return fmt.Errorf("vault: make a data key: %w", err)
	}
	a, err := newAEAD(dataKey)
	if err != nil {
		return fmt.Errorf("vault: %w", err)
	}
	sealed, err := sealBlob(a, plaintext, recordAAD(*c))
	if err != nil {
		return fmt.Errorf("vault: seal %s: %w", describe(*c), err)
	}
	id, master, err := v.kr.currentAEAD()
	if err != nil {
		return fmt.Errorf("vault: master key %s: %w", id, err)
	}
	wrapped, err := sealBlob(master, dataKey, wrapAAD(id, *c))
	if err != nil {
		return fmt.Errorf("vault: wrap the data key of %s: %w", describe(*c), err)
	}
	c.KeyID, c.WrappedKey, c.Sealed = id, wrapped, sealed
	return nil
}

// unwrap returns c's data key; the caller clears it. A key id the keyring
// does not know makes it re-read the key file once (another process may
// have rotated).
func (v *Vault) unwrap(c store.Credential) ([]byte, error) {
	master, ok, err := v.kr.aead(c.KeyID)
	if err == nil && !ok {
		if rerr := v.kr.reload(); rerr != nil {
			return nil, fmt.Errorf("vault: %s: %w", describe(c), rerr)
		}
		master, ok, err = v.kr.aead(c.KeyID)
	}
	if err != nil {
		return nil, fmt.Errorf("vault: %s: master key %s: %w", describe(c), c.KeyID, err)
	}
	if !ok {
		return nil, fmt.Errorf("vault: %s is wrapped under master key %q, which is not in the keyring from %s (it has %v): %w",
			describe(c), c.KeyID, v.kr.Source(), v.kr.IDs(), ErrUnknownKey)
	}
	dataKey, err := openBlob(master, c.WrappedKey, wrapAAD(c.KeyID, c))
	if err != nil {
		return nil, fmt.Errorf("vault: %s: data key does not unwrap under master key %s: %w", describe(c), c.KeyID, err)
	}
	if len(dataKey) != keySize {
		clear(dataKey)
		return nil, fmt.Errorf("vault: %s: data key: %w", describe(c), ErrCorrupt)
	}
	return dataKey, nil
}

// describe names a record in errors.
func describe(c store.Credential) string {
	return fmt.Sprintf("credential %s (user %s, %s)", c.ID, c.UserID, c.Provider)
}

// recordAAD binds sealed data to its record.
func recordAAD(c store.Credential) []byte {
	return aad("hearth vault v1 credential", c.ID, c.UserID, c.Provider)
}

// wrapAAD binds a wrapped data key to its record and master key.
func wrapAAD(keyID string, c store.Credential) []byte {
	return aad("hearth vault v1 data key", keyID, c.ID, c.UserID, c.Provider)
}

// aad encodes a purpose and fields unambiguously: each length-prefixed.
func aad(purpose string, fields ...string) []byte {
	var b bytes.Buffer
	for _, f := range append([]string{purpose}, fields...) {
		_ = binary.Write(&b, binary.BigEndian, uint32(len(f)))
		b.WriteString(f)
	}
	return b.Bytes()
}

// sealBlob returns version || nonce || AEAD(plaintext) with a random nonce.
func sealBlob(a cipher.AEAD, plaintext, ad []byte) ([]byte, error) {
	ns := a.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plaintext)+a.Overhead())
	out[0] = formatV1
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return a.Seal(out, out[1:1+ns], plaintext, ad), nil
}

// openBlob reverses sealBlob. Its errors wrap ErrCorrupt.
func openBlob(a cipher.AEAD, blob, ad []byte) ([]byte, error) {
	ns := a.NonceSize()
	switch {
	case len(blob) < 1+ns+a.Overhead():
		return nil, fmt.Errorf("%d bytes is too short: %w", len(blob), ErrCorrupt)
	case blob[0] != formatV1:
		return nil, fmt.Errorf("unknown format %d: %w", blob[0], ErrCorrupt)
	}
	p, err := a.Open(nil, blob[1:1+ns], blob[1+ns:], ad)
	if err != nil {
		return nil, fmt.Errorf("altered, moved from another record, or wrapped by another key: %w", ErrCorrupt)
	}
	return p, nil
}
