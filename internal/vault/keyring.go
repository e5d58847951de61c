package vault

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// EnvKey is the environment variable that may hold the master key:
	// base64 of 32 bytes. When it is set, it is the only key and no key
	// file may exist.
	EnvKey = "HEARTH_VAULT_KEY"
	// KeyFileName is the key file's name in the state directory, its
	// default place.
	KeyFileName = "vault.key"

	keySize = 32 // AES-256
	// currentMark ends the line of the current key in the key file.
	currentMark = "current"
	// maxLockPoll bounds the wait between attempts to take a held lock.
	maxLockPoll = 10 * time.Millisecond
)

// keyFileHeader starts every key file hearth writes.
const keyFileHeader = `# hearth vault master keys. Keep this file private (mode 0600) and backed up:
# without it no stored credential can be opened.
# One key per line: <key id> <base64 of 32 bytes> [current]. The key id is the
# hex of the first 8 bytes of the key's SHA-256. New credentials are sealed
# under the current key; the others stay until no credential uses them
# (rotation removes them).
`

// Keyring holds the master keys: the current one, which wraps new data
// keys, and older ones that still wrap some. It is safe for concurrent use.
//
// A keyring comes either from a key file, which the vault re-reads before
// sealing and when a record names a key it does not know (so a process sees
// another one's rotation), or from EnvKey (a single key that cannot be
// rotated in place).
type Keyring struct {
	path string // "" when the key comes from the environment

	mu      sync.RWMutex
	order   []string          // key ids in file order
	keys    map[string][]byte // id -> key
	current string
}

// keyID derives a key's id: the hex of the first 8 bytes of its SHA-256.
func keyID(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

// LoadKeyring returns the master keys. If env (a list of "NAME=value", as
// from os.Environ) sets HEARTH_VAULT_KEY, that is the only key, and a key
// file at path is an error (two sources of keys are ambiguous); otherwise
// the keys are read from the key file at path, which must exist, be a
// regular file not accessible to group or others, and hold exactly one
// current key. Errors name the file and line but never a key.
func LoadKeyring(path string, env []string) (*Keyring, error) {
	if b64, ok := lookupEnv(env, EnvKey); ok && b64 != "" {
		if path != "" {
			if _, err := os.Lstat(path); err == nil {
				return nil, fmt.Errorf("vault: both %s and the key file %s are set; use one of them", EnvKey, path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("vault: %w", err)
			}
		}
		key, err := decodeKey(b64)
		if err != nil {
			return nil, fmt.Errorf("vault: %s: %w", EnvKey, err)
		}
		id := keyID(key)
		return &Keyring{order: []string{id}, keys: map[string][]byte{id: key}, current: id}, nil
	}
	if path == "" {
		return nil, fmt.Errorf("vault: no master key: set %s or name a key file", EnvKey)
	}
	kr := &Keyring{path: path}
	if err := kr.reload(); err != nil {
		return nil, err
	}
	return kr, nil
}

// lookupEnv returns the last value of name in env.
func lookupEnv(env []string, name string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// decodeKey decodes a base64 master key (standard or URL alphabet, padded
// or not). Its errors never quote the input.
func decodeKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		key, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(key) != keySize {
			clear(key)
			return nil, fmt.Errorf("key is %d bytes, want %d", len(key), keySize)
		}
		return key, nil
	}
	return nil, errors.New("key is not base64")
}

// CurrentID returns the id of the key new credentials are sealed under (as
// of the last time the key file was read).
func (kr *Keyring) CurrentID() string {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return kr.current
}

// IDs returns the ids of every key in the keyring, in key file order.
func (kr *Keyring) IDs() []string {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return slices.Clone(kr.order)
}

// Source says where the keys come from: the key file's path, or EnvKey.
func (kr *Keyring) Source() string {
	if kr.path == "" {
		return EnvKey
	}
	return kr.path
}

// aead returns an AES-256-GCM for key id, or false if the keyring has no
// such key. The cipher holds its own copy of the key schedule, so the
// keyring may clear its key bytes afterwards.
func (kr *Keyring) aead(id string) (cipher.AEAD, bool, error) {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	key, ok := kr.keys[id]
	if !ok {
		return nil, false, nil
	}
	a, err := newAEAD(key)
	return a, true, err
}

// currentAEAD returns the current key's id and cipher.
func (kr *Keyring) currentAEAD() (string, cipher.AEAD, error) {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	a, err := newAEAD(kr.keys[kr.current])
	return kr.current, a, err
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// set replaces the keyring's keys and clears the bytes of the old ones:
// keys never shares a slice with the keyring (callers build it from
// snapshot copies or a fresh read).
func (kr *Keyring) set(order []string, keys map[string][]byte, current string) {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	for _, k := range kr.keys {
		clear(k)
	}
	kr.order, kr.keys, kr.current = order, keys, current
}

// snapshot returns a copy of the keyring's keys; the caller clears them
// (see clearKeys) or hands them to set.
func (kr *Keyring) snapshot() ([]string, map[string][]byte, string) {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	keys := make(map[string][]byte, len(kr.keys))
	for id, k := range kr.keys {
		keys[id] = slices.Clone(k)
	}
	return slices.Clone(kr.order), keys, kr.current
}

// clearKeys clears every key in keys.
func clearKeys(keys map[string][]byte) {
	for _, k := range keys {
		clear(k)
	}
}

// reload reads the key file again. It does nothing for an environment key.
func (kr *Keyring) reload() error {
	if kr.path == "" {
		return nil
	}
	order, keys, current, err := readKeyFile(kr.path)
	if err != nil {
		return err
	}
	kr.set(order, keys, current)
	return nil
}

// readKeyFile reads and checks the key file at path.
func readKeyFile(path string) (order []string, keys map[string][]byte, current string, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, "", fmt.Errorf("vault key file %s does not exist: create it or set %s: %w", path, EnvKey, err)
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("vault key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, "", fmt.Errorf("vault key file: %w", err)
	}
	if err := checkMode(path, fi); err != nil {
		return nil, nil, "", err
	}
	var buf bytes.Buffer
	_, err = buf.ReadFrom(f)
	defer clear(buf.Bytes())
	if err != nil {
		return nil, nil, "", fmt.Errorf("vault key file %s: %w", path, err)
	}
	order, keys, current, err = parseKeyFile(buf.Bytes())
	if err != nil {
		return nil, nil, "", fmt.Errorf("vault key file %s: %w", path, err)
	}
	return order, keys, current, nil
}

// checkMode refuses a key file that is not a regular file or that group or
// others may access.
func checkMode(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("vault key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("vault key file %s has mode %04o: group and others must have no access to it (chmod 600 %s)",
			path, perm, path)
	}
	return nil
}

// parseKeyFile parses the key file format: blank lines and lines starting
// with '#' are ignored; every other line is "<id> <base64 key>" optionally
// followed by "current". Exactly one key is current, ids are unique and
// each id is the one its key derives. On error, keys already decoded are
// cleared.
func parseKeyFile(data []byte) (order []string, keys map[string][]byte, current string, err error) {
	keys = map[string][]byte{}
	defer func() {
		if err != nil {
			clearKeys(keys)
			order, keys, current = nil, nil, ""
		}
	}()
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || len(fields) > 3 || (len(fields) == 3 && fields[2] != currentMark) {
			return nil, nil, "", fmt.Errorf("line %d: want \"<key id> <base64 key> [current]\"", n)
		}
		id := fields[0]
		key, err := decodeKey(fields[1])
		if err != nil {
			return nil, nil, "", fmt.Errorf("line %d (key %s): %w", n, id, err)
		}
		if want := keyID(key); id != want {
			clear(key)
			return nil, nil, "", fmt.Errorf("line %d: key id %s does not match its key (whose id is %s)", n, id, want)
		}
		if _, dup := keys[id]; dup {
			clear(key)
			return nil, nil, "", fmt.Errorf("line %d: key %s appears twice", n, id)
		}
		keys[id] = key
		order = append(order, id)
		if len(fields) == 3 {
			if current != "" {
				return nil, nil, "", fmt.Errorf("line %d: keys %s and %s are both marked current", n, current, id)
			}
			current = id
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, "", err
	}
	switch {
	case len(order) == 0:
		return nil, nil, "", errors.New("no keys")
	case current == "":
		return nil, nil, "", errors.New("no key is marked current")
	}
	return order, keys, current, nil
}

// formatKeyFile renders keys in the key file format. The caller clears the
// result.
func formatKeyFile(order []string, keys map[string][]byte, current string) []byte {
	var b bytes.Buffer
	b.WriteString(keyFileHeader)
	for _, id := range order {
		b.WriteString(id)
		b.WriteByte(' ')
		enc := make([]byte, base64.StdEncoding.EncodedLen(len(keys[id])))
		base64.StdEncoding.Encode(enc, keys[id])
		b.Write(enc)
		clear(enc)
		if id == current {
			b.WriteString(" " + currentMark)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// writeKeyFile replaces the key file at path atomically: a 0600 temporary
// file in the same directory, fsynced, renamed over path, and the directory
// fsynced. A crash leaves either the old file or the new one (and perhaps a
// stray temporary file).
func writeKeyFile(path string, order []string, keys map[string][]byte, current string) error {
	data := formatKeyFile(order, keys, current)
	defer clear(data)
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("vault key file: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// writeTemp writes data to a new 0600 file next to path, fsynced, and
// returns its name.
func writeTemp(path string, data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("vault key file: %w", err)
	}
	name := f.Name()
	err = f.Chmod(0o600) // CreateTemp's mode already, whatever the umask did
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("vault key file: write %s: %w", name, err)
	}
	return name, nil
}

// removeStaleTemps removes temporary key files a crash left next to path.
// Callers hold the exclusive lock, so no temporary file is being written.
func removeStaleTemps(path string) error {
	matches, err := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	if err != nil {
		return fmt.Errorf("vault key file: %w", err)
	}
	for _, m := range matches {
		if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("vault key file: %w", err)
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("vault key file: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vault key file: sync %s: %w", dir, err)
	}
	return nil
}

// newKey returns a fresh random master key and its id.
func newKey() (string, []byte, error) {
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return "", nil, fmt.Errorf("vault: make a master key: %w", err)
	}
	return keyID(key), key, nil
}

// EnsureKeyFile makes sure a usable key file exists at path: if there is
// none, it creates one (mode 0600) holding one fresh random key, marked
// current, and reports created. An existing file is checked (mode, format)
// but never changed. The directory must exist. Concurrent calls create at
// most one key.
func EnsureKeyFile(path string) (created bool, err error) {
	if _, err := os.Lstat(path); err == nil {
		return false, checkKeyFile(path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("vault key file: %w", err)
	}
	id, key, err := newKey()
	if err != nil {
		return false, err
	}
	data := formatKeyFile([]string{id}, map[string][]byte{id: key}, id)
	clear(key)
	tmp, err := writeTemp(path, data)
	clear(data)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	// Link, unlike rename, never replaces: if another process made the file
	// meanwhile, its key stays.
	if err := os.Link(tmp, path); errors.Is(err, fs.ErrExist) {
		return false, checkKeyFile(path)
	} else if err != nil {
		return false, fmt.Errorf("vault key file: %w", err)
	}
	if err := os.Remove(tmp); err != nil {
		return true, fmt.Errorf("vault key file: %w", err)
	}
	return true, syncDir(filepath.Dir(path))
}

// checkKeyFile reads the key file at path and forgets its keys.
func checkKeyFile(path string) error {
	_, keys, _, err := readKeyFile(path)
	clearKeys(keys)
	return err
}

// lock takes the key file's lock, shared or exclusive, waiting for it
// until ctx ends. Sealing and storing a credential hold it shared; rotation
// holds it exclusive, so no credential is ever stored under a key rotation
// is about to remove, whichever hearth process stores it. An environment
// keyring has no lock.
//
// Two flock files: path+".lock" is the shared/exclusive lock itself;
// path+".gate" is taken exclusively by anyone entering, and kept by an
// exclusive holder, so a waiting rotation stops new readers from coming in
// and is not starved by their overlapping shared locks.
func (kr *Keyring) lock(ctx context.Context, exclusive bool) (unlock func(), err error) {
	if kr.path == "" {
		return func() {}, nil
	}
	releaseGate, err := flock(ctx, kr.path+".gate", unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	release, err := flock(ctx, kr.path+".lock", how)
	if err != nil {
		releaseGate()
		return nil, err
	}
	if !exclusive {
		releaseGate()
		return release, nil
	}
	return func() {
		release()
		releaseGate()
	}, nil
}

// flock opens (creating, 0600) the file at path and locks it with how,
// polling until it gets the lock or ctx ends.
func flock(ctx context.Context, path string, how int) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vault lock: %w", err)
	}
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("vault lock %s: %w", path, err)
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			_ = f.Close()
			return nil, fmt.Errorf("vault lock %s: %w", path, ctx.Err())
		case <-timer.C:
		}
		delay = min(2*delay, maxLockPoll)
	}
}
