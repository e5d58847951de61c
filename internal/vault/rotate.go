package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/hearth-project/hearth/internal/store"
)

// rewrapAttempts bounds how often one record's compare-and-swap is retried
// when the record changed under it.
const rewrapAttempts = 3

// RotateReport says what a rotation did.
type RotateReport struct {
	NewKeyID  string   // the new current master key
	Rewrapped int      // records whose data key is now wrapped under it
	Removed   []string // old master keys no record used, removed from the key file
	Kept      []string // old master keys still in the key file: some record could not be re-wrapped
}

// Rotate makes a new master key current and moves every record to it:
//
//  1. it writes the key file (atomically) with a fresh random key added as
//     current and every old key kept;
//  2. it re-wraps each record's data key under the new key, with the
//     store's compare-and-swap (the sealed data is not touched);
//  3. it removes from the key file the old keys no record uses any more.
//
// It holds the key file's exclusive lock throughout, so no credential is
// stored meanwhile (Put waits) by this or any other hearth process.
//
// A crash or error at any point leaves every record readable: the file is
// only ever replaced whole, and a key leaves it only once no record names
// it. Running Rotate again finishes the job (with one more new key); keys
// added by an interrupted run are removed like any other unused key.
//
// Records that cannot be re-wrapped (their key is missing or they do not
// authenticate) are left as they are; their keys stay (RotateReport.Kept)
// and the error names them. A keyring from HEARTH_VAULT_KEY cannot be
// rotated.
func (v *Vault) Rotate(ctx context.Context) (RotateReport, error) {
	var rep RotateReport
	if v.kr.path == "" {
		return rep, fmt.Errorf("vault: the master key comes from %s: rotation needs a key file", EnvKey)
	}
	unlock, err := v.kr.lock(ctx, true)
	if err != nil {
		return rep, err
	}
	defer unlock()
	if err := removeStaleTemps(v.kr.path); err != nil {
		return rep, err
	}
	if err := v.kr.reload(); err != nil {
		return rep, err
	}

	if rep.NewKeyID, err = v.addCurrentKey(); err != nil {
		return rep, err
	}
	if v.afterKeyWrite != nil {
		if err := v.afterKeyWrite(); err != nil {
			return rep, err
		}
	}

	var failed []error
	rep.Rewrapped, failed, err = v.rewrapAll(ctx, rep.NewKeyID)
	if err != nil {
		return rep, err
	}
	rep.Removed, rep.Kept, err = v.removeUnusedKeys(ctx)
	if err != nil {
		return rep, err
	}
	if len(failed) > 0 {
		return rep, fmt.Errorf("vault: rotated to %s, but %d credential(s) could not be re-wrapped: %w",
			rep.NewKeyID, len(failed), errors.Join(failed...))
	}
	return rep, nil
}

// addCurrentKey writes the key file with a new key, current, after the old
// ones, then makes the keyring match it.
func (v *Vault) addCurrentKey() (string, error) {
	order, keys, _ := v.kr.snapshot()
	id, key, err := newKey()
	if err != nil {
		clearKeys(keys)
		return "", err
	}
	if _, taken := keys[id]; taken { // 2^-64: a broken random source
		clearKeys(keys)
		clear(key)
		return "", fmt.Errorf("vault: new master key %s collides with an existing one", id)
	}
	keys[id] = key
	order = append(order, id)
	if err := writeKeyFile(v.kr.path, order, keys, id); err != nil {
		clearKeys(keys)
		return "", err
	}
	if err := v.kr.reload(); err != nil {
		clearKeys(keys)
		return "", err
	}
	clearKeys(keys)
	return id, nil
}

// rewrapAll re-wraps every record not yet under newID. It returns how many
// it re-wrapped and, per record that cannot be, an error; err is for
// failures that stop the pass (the store, ctx).
func (v *Vault) rewrapAll(ctx context.Context, newID string) (n int, failed []error, err error) {
	all, err := v.st.ListCredentials(ctx, "")
	if err != nil {
		return 0, nil, fmt.Errorf("vault: rotate: %w", err)
	}
	for _, c := range all {
		if c.KeyID == newID {
			continue
		}
		done, err := v.rewrap(ctx, c, newID)
		switch {
		case errors.Is(err, ErrUnknownKey), errors.Is(err, ErrCorrupt):
			failed = append(failed, err)
		case err != nil:
			return n, failed, err
		case done:
			n++
		}
	}
	return n, failed, nil
}

// rewrap moves one record's data key to newID. It reports false, with no
// error, if the record went away or was replaced meanwhile.
func (v *Vault) rewrap(ctx context.Context, c store.Credential, newID string) (bool, error) {
	for range rewrapAttempts {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		wrapped, err := v.rewrapped(c, newID)
		if err != nil {
			return false, err
		}
		err = v.st.RewrapCredential(ctx, c.ID, c.KeyID, newID, wrapped)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
			return false, fmt.Errorf("vault: rotate: %w", err)
		}
		// The record changed under us: look at it again.
		cur, err := v.st.GetCredential(ctx, c.UserID, c.Provider)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return false, nil // deleted
		case err != nil:
			return false, fmt.Errorf("vault: rotate: %w", err)
		case cur.ID != c.ID || cur.KeyID == newID:
			return false, nil // replaced, or already moved
		}
		c = cur
	}
	return false, fmt.Errorf("vault: rotate: %s kept changing; giving up on it", describe(c))
}

// rewrapped returns c's data key wrapped under master key newID.
func (v *Vault) rewrapped(c store.Credential, newID string) ([]byte, error) {
	dataKey, err := v.unwrap(c)
	if err != nil {
		return nil, err
	}
	defer clear(dataKey)
	master, ok, err := v.kr.aead(newID)
	if err != nil || !ok {
		return nil, fmt.Errorf("vault: rotate: new master key %s unusable (present: %v): %w", newID, ok, err)
	}
	wrapped, err := sealBlob(master, dataKey, wrapAAD(newID, c))
	if err != nil {
		return nil, fmt.Errorf("vault: rotate: wrap %s: %w", describe(c), err)
	}
	return wrapped, nil
}

// removeUnusedKeys drops from the key file every non-current key no record
// names, and reports the removed and the kept ones.
func (v *Vault) removeUnusedKeys(ctx context.Context) (removed, kept []string, err error) {
	all, err := v.st.ListCredentials(ctx, "")
	if err != nil {
		return nil, nil, fmt.Errorf("vault: rotate: %w", err)
	}
	used := map[string]bool{}
	for _, c := range all {
		used[c.KeyID] = true
	}
	order, keys, current := v.kr.snapshot()
	defer func() { clearKeys(keys) }()
	var left []string
	for _, id := range order {
		switch {
		case id == current:
			left = append(left, id)
		case used[id]:
			left = append(left, id)
			kept = append(kept, id)
		default:
			removed = append(removed, id)
		}
	}
	if len(removed) == 0 {
		return nil, kept, nil
	}
	for _, id := range removed {
		clear(keys[id])
		delete(keys, id)
	}
	if err := writeKeyFile(v.kr.path, left, keys, current); err != nil {
		return nil, nil, err
	}
	if err := v.kr.reload(); err != nil {
		return nil, nil, err
	}
	if !slices.Equal(v.kr.IDs(), left) {
		return nil, nil, errors.New("vault: rotate: the key file does not read back as written")
	}
	return removed, kept, nil
}
