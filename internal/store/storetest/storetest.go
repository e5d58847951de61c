// Package storetest is the conformance suite every store.Store backend must
// pass. A backend's tests call Run with a function that opens a fresh, empty
// store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { ... })
//	}
//
// The suite only uses the store.Store interface and only times with
// microsecond precision, so any backend with at least that precision (SQLite,
// PostgreSQL) can run it unchanged.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
)

// Run runs every conformance subtest. open is called once per subtest,
// possibly from several subtests at once, and must return a new, empty store
// that shares no data with the others. Run closes each store when its subtest
// ends and fails the subtest if Close fails.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Ping", testPing},
		{"Users", testUsers},
		{"APIKeys", testAPIKeys},
		{"APIKeysInvalid", testAPIKeysInvalid},
		{"APIKeyExpiry", testAPIKeyExpiry},
		{"ListAPIKeys", testListAPIKeys},
		{"RevokeAPIKey", testRevokeAPIKey},
		{"RevokeLastAdminKey", testRevokeLastAdminKey},
		{"ConcurrentRevokeLastAdminKeys", testConcurrentRevokeLastAdminKeys},
		{"Images", testImages},
		{"ImagesReplaceAndDelete", testImagesReplaceAndDelete},
		{"ImageDefaultsUnverified", testImageDefaultsUnverified},
		{"VMs", testVMs},
		{"ListVMs", testListVMs},
		{"UpdateVM", testUpdateVM},
		{"UpdateVMFnError", testUpdateVMFnError},
		{"UpdateVMImmutableID", testUpdateVMImmutableID},
		{"UpdateVMNotFound", testUpdateVMNotFound},
		{"ConcurrentUpdateVM", testConcurrentUpdateVM},
		{"Leases", testLeases},
		{"ConcurrentLeases", testConcurrentLeases},
		{"Logins", testLogins},
		{"LoginsInvalid", testLoginsInvalid},
		{"ListLogins", testListLogins},
		{"LoginAfterTerminal", testLoginAfterTerminal},
		{"UpdateLogin", testUpdateLogin},
		{"UpdateLoginTerminal", testUpdateLoginTerminal},
		{"UpdateLoginRefused", testUpdateLoginRefused},
		{"ConcurrentCreateLogin", testConcurrentCreateLogin},
		{"ConcurrentFinishLogin", testConcurrentFinishLogin},
		{"Credentials", testCredentials},
		{"CredentialsReplace", testCredentialsReplace},
		{"CredentialsInvalid", testCredentialsInvalid},
		{"RewrapCredential", testRewrapCredential},
		{"ConcurrentRewrapCredential", testConcurrentRewrapCredential},
		{"ViewerEpochs", testViewerEpochs},
		{"ConcurrentBumpViewerEpoch", testConcurrentBumpViewerEpoch},
		{"Events", testEvents},
		{"EventsDefaultLimit", testEventsDefaultLimit},
		{"QueryEvents", testQueryEvents},
		{"PruneEvents", testPruneEvents},
		{"ZeroTimes", testZeroTimes},
		{"CanceledContext", testCanceledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// base is the suite's reference time: microsecond precision, UTC.
var base = time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.UTC)

// at returns base plus n seconds.
func at(n int) time.Time { return base.Add(time.Duration(n) * time.Second) }

// clockSlack absorbs the rounding a backend may apply to times it stamps.
const clockSlack = time.Millisecond

// ---- assertions ----

func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func mustFail(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want one wrapping %v", what, err, target)
	}
}

// equal compares got and want after normalizing both with norm.
func equal[T any](t *testing.T, what string, got, want T, norm func(T) T) {
	t.Helper()
	if g, w := norm(got), norm(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, g, w)
	}
}

// equalSet compares got and want as sets keyed by key.
func equalSet[T any](t *testing.T, what string, got, want []T, key func(T) string, norm func(T) T) {
	t.Helper()
	sorted := func(in []T) []T {
		out := make([]T, 0, len(in))
		for _, v := range in {
			out = append(out, norm(v))
		}
		slices.SortFunc(out, func(a, b T) int { return strings.Compare(key(a), key(b)) })
		return out
	}
	equal(t, what, sorted(got), sorted(want), func(v []T) []T { return v })
}

// ---- normalization: what equality means across backends ----

// normTime makes equal instants compare equal with reflect.DeepEqual.
func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Round(0)
}

// normBytes treats nil and empty as the same.
func normBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func normUser(u store.User) store.User {
	u.CreatedAt = normTime(u.CreatedAt)
	return u
}

func normKey(k store.APIKey) store.APIKey {
	k.SecretHash = normBytes(k.SecretHash)
	k.CreatedAt = normTime(k.CreatedAt)
	k.LastUsedAt = normTime(k.LastUsedAt)
	k.RevokedAt = normTime(k.RevokedAt)
	k.ExpiresAt = normTime(k.ExpiresAt)
	return k
}

func normImage(i store.Image) store.Image {
	i.Manifest = normBytes(i.Manifest)
	i.CreatedAt = normTime(i.CreatedAt)
	return i
}

func normVM(v store.VM) store.VM {
	v.Handle = normBytes(v.Handle)
	for _, p := range []*time.Time{
		&v.GuestBootAt, &v.LastHeartbeatAt, &v.BootDeadline, &v.CreatedAt,
		&v.UpdatedAt, &v.ReadyAt, &v.StoppedAt, &v.DestroyedAt,
	} {
		*p = normTime(*p)
	}
	return v
}

func normLogin(l store.Login) store.Login {
	for _, p := range []*time.Time{&l.CreatedAt, &l.UpdatedAt, &l.ExpiresAt, &l.CompletedAt} {
		*p = normTime(*p)
	}
	return l
}

func normLogins(ls []store.Login) []store.Login {
	out := make([]store.Login, 0, len(ls))
	for _, l := range ls {
		out = append(out, normLogin(l))
	}
	return out
}

func normCredential(c store.Credential) store.Credential {
	c.WrappedKey, c.Sealed = normBytes(c.WrappedKey), normBytes(c.Sealed)
	for _, p := range []*time.Time{&c.CreatedAt, &c.UpdatedAt, &c.ExpiresAt} {
		*p = normTime(*p)
	}
	return c
}

func normCredentials(cs []store.Credential) []store.Credential {
	out := make([]store.Credential, 0, len(cs))
	for _, c := range cs {
		out = append(out, normCredential(c))
	}
	return out
}

func normEvent(e store.Event) store.Event {
	e.At = normTime(e.At)
	return e
}

func normEvents(es []store.Event) []store.Event {
	out := make([]store.Event, 0, len(es))
	for _, e := range es {
		out = append(out, normEvent(e))
	}
	return out
}

// ---- fixtures ----

func newUser(id string, created time.Time) store.User {
	return store.User{ID: id, Name: "name of " + id, CreatedAt: created}
}

func newKey(id string, scope store.Scope, userID string, created time.Time) store.APIKey {
	return store.APIKey{
		ID:         id,
		Name:       "key " + id,
		Scope:      scope,
		UserID:     userID,
		SecretHash: bytes.Repeat([]byte{byte(len(id))}, 32),
		CreatedAt:  created,
	}
}

func newImage(id, name string, created time.Time) store.Image {
	return store.Image{
		ID:           id,
		Name:         name,
		Role:         "base",
		KernelPath:   "/images/" + id + "/vmlinux",
		InitrdPath:   "/images/" + id + "/initrd",
		RootfsPath:   "/images/" + id + "/rootfs.ext4",
		Manifest:     []byte(`{"name":"` + name + `"}`),
		SizeBytes:    1 << 20,
		CreatedAt:    created,
		Status:       store.ImageVerified,
		VerifiedAt:   created.Add(time.Second),
		VerifyReport: []byte(`{"ok":true}`),
	}
}

// newVM returns a VM with every field set.
func newVM(id, userID string, state store.State, created time.Time) store.VM {
	return store.VM{
		ID:              id,
		UserID:          userID,
		ImageID:         "img-" + id,
		Role:            "worker",
		VCPUs:           2,
		MemoryMiB:       512,
		Driver:          "qemu",
		State:           state,
		FailureReason:   "reason of " + id,
		Handle:          []byte(`{"pid":1234,"sock":"/run/` + id + `.sock"}`),
		Dir:             "/var/lib/hearth/vms/" + id,
		AgentVersion:    "0.1.0",
		GuestBootAt:     created.Add(2 * time.Second),
		LastHeartbeatAt: created.Add(3 * time.Second),
		BootDeadline:    created.Add(time.Minute),
		CreatedAt:       created,
		UpdatedAt:       created.Add(time.Second),
		ReadyAt:         created.Add(4 * time.Second),
		StoppedAt:       created.Add(5 * time.Second),
		DestroyedAt:     created.Add(6 * time.Second),
		Network:         []byte(`{"ip":"172.30.0.9","tap":"hthabc"}`),
	}
}

// newLogin returns an active login with every field but CompletedAt set.
func newLogin(id, userID, provider string, created time.Time) store.Login {
	return store.Login{
		ID:            id,
		UserID:        userID,
		Provider:      provider,
		State:         store.LoginStarting,
		FailureReason: "",
		BrowserVMID:   "vm-browser-" + id,
		CreatedAt:     created,
		UpdatedAt:     created.Add(time.Second),
		ExpiresAt:     created.Add(15 * time.Minute),
	}
}

// newCredential returns a credential with every field set; its sealed
// fields are opaque bytes (the store never opens them).
func newCredential(id, userID, provider, keyID string, created time.Time) store.Credential {
	return store.Credential{
		ID:         id,
		UserID:     userID,
		Provider:   provider,
		LoginID:    "login-" + id,
		KeyID:      keyID,
		WrappedKey: []byte("wrapped data key of " + id + " under " + keyID),
		Sealed:     []byte("sealed credential " + id + "\x00\xff"),
		CreatedAt:  created,
		UpdatedAt:  created.Add(time.Second),
		ExpiresAt:  created.Add(24 * time.Hour),
		Valid:      true,
	}
}

func loginIDs(ls []store.Login) []string {
	ids := make([]string, 0, len(ls))
	for _, l := range ls {
		ids = append(ids, l.ID)
	}
	return ids
}

func credentialIDs(cs []store.Credential) []string {
	ids := make([]string, 0, len(cs))
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	return ids
}

func vmIDs(vms []store.VM) []string {
	ids := make([]string, 0, len(vms))
	for _, v := range vms {
		ids = append(ids, v.ID)
	}
	return ids
}

func userKey(u store.User) string     { return u.ID }
func apiKeyKey(k store.APIKey) string { return k.ID }
func imageKey(i store.Image) string   { return i.ID }

// hexID returns a 64-character image ID starting with prefix, padded with c.
func hexID(prefix string, c string) string {
	return prefix + strings.Repeat(c, 64-len(prefix))
}

// eventCount returns how many events the store holds.
func eventCount(t *testing.T, s store.Store) int {
	t.Helper()
	es, err := s.ListEvents(t.Context(), 0, 0)
	must(t, err, "list events")
	return len(es)
}

// describe is a short label for a filter in failure messages.
func describe(f store.VMFilter) string {
	return fmt.Sprintf("filter %+v", f)
}
