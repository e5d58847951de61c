// Package store defines hearth's persistent state: users, API keys, images,
// VMs (with the handle that lets a restarted daemon re-attach to them),
// provider logins and the credentials they capture (stored sealed: the store
// never sees a credential's plaintext) and an append-only event log (which
// only retention shortens, from its oldest end). Backends live in
// sub-packages (sqlite is the embedded default); every backend passes the
// suite in store/storetest.
package store

import (
	"context"
	"fmt"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// Sentinel errors. Backends wrap them; callers test with errors.Is. They are
// the errdefs classes, so the API maps them without knowing the store.
var (
	ErrNotFound = errdefs.ErrNotFound
	ErrConflict = errdefs.ErrConflict
	// ErrLastAdminKey (an ErrConflict) refuses to revoke the only admin key
	// that still authenticates, unless the caller allows it.
	ErrLastAdminKey = fmt.Errorf("the last active admin key: %w", errdefs.ErrConflict)
)

// Scope is what an API key may do.
type Scope string

const (
	// ScopeAdmin sees and manages everything.
	ScopeAdmin Scope = "admin"
	// ScopeUser sees and manages only its own user's resources.
	ScopeUser Scope = "user"
)

// User is a tenant: the owner of VMs and (later) credentials.
type User struct {
	ID        string
	Name      string
	CreatedAt time.Time
}

// APIKey is a bearer credential. Only a hash of its secret is stored.
type APIKey struct {
	ID         string // public, non-secret part of the key
	Name       string
	Scope      Scope
	UserID     string // required for ScopeUser; optional for ScopeAdmin
	SecretHash []byte // SHA-256 of the secret part
	CreatedAt  time.Time
	LastUsedAt time.Time // zero if never used
	RevokedAt  time.Time // zero if not revoked
	ExpiresAt  time.Time // zero if it never expires
}

// Revoked reports whether the key has been revoked.
func (k APIKey) Revoked() bool { return !k.RevokedAt.IsZero() }

// Expired reports whether the key has expired at t.
func (k APIKey) Expired(t time.Time) bool { return !k.ExpiresAt.IsZero() && !t.Before(k.ExpiresAt) }

// Active reports whether the key authenticates at t: neither revoked nor
// expired.
func (k APIKey) Active(t time.Time) bool { return !k.Revoked() && !k.Expired(t) }

// APIKeyFilter narrows ListAPIKeys. Zero values match everything.
type APIKeyFilter struct {
	UserID string
	Scope  Scope
}

// RevokeOptions changes what RevokeAPIKey refuses.
type RevokeOptions struct {
	// AllowLastAdmin revokes the key even if it is the last admin key
	// that is active.
	AllowLastAdmin bool
}

// Image is a bootable guest: kernel, initrd and root filesystem, plus the
// manifest that describes what it contains.
type Image struct {
	ID         string // content digest (hex), stable across hosts
	Name       string // e.g. "minimal"; several digests may share a name
	Role       string // role the image was built for
	KernelPath string
	InitrdPath string
	RootfsPath string
	Manifest   []byte // JSON manifest as written by the image builder
	SizeBytes  int64
	CreatedAt  time.Time
	// Verification: the result of checking the image file against its
	// manifest. VMs start only from verified images.
	Status     ImageStatus
	VerifiedAt time.Time
	// VerifyReport is the verifier's JSON report (every claim checked).
	VerifyReport []byte
}

// ImageStatus says whether an image may be booted.
type ImageStatus string

const (
	ImageUnverified ImageStatus = "unverified"
	ImageVerified   ImageStatus = "verified"
	ImageFailed     ImageStatus = "failed"
)

// State is a VM's lifecycle state.
type State string

const (
	StatePending   State = "pending"
	StateBooting   State = "booting"
	StateReady     State = "ready"
	StateStopping  State = "stopping"
	StateStopped   State = "stopped"
	StateFailed    State = "failed"
	StateDestroyed State = "destroyed"
)

// VM is one microVM and everything needed to find its resources again after
// the daemon restarts.
type VM struct {
	ID            string
	UserID        string
	ImageID       string
	Role          string
	VCPUs         int
	MemoryMiB     int
	Driver        string
	State         State
	FailureReason string
	// Handle is the driver's persisted handle (JSON): pid, sockets, disk.
	Handle []byte
	// Dir is the VM's private directory under the state dir.
	Dir string
	// Network is the VM's network identity (JSON): TAP, MAC, address,
	// egress policy. Empty for VMs without a network.
	Network []byte
	// Agent facts reported from inside the guest.
	AgentVersion    string
	GuestBootAt     time.Time
	LastHeartbeatAt time.Time
	BootDeadline    time.Time
	CreatedAt       time.Time
	UpdatedAt       time.Time
	ReadyAt         time.Time
	StoppedAt       time.Time
	DestroyedAt     time.Time
}

// Terminal reports whether no further transition can start from s by itself.
func (s State) Terminal() bool {
	return s == StateStopped || s == StateFailed || s == StateDestroyed
}

// VMFilter narrows ListVMs. Zero values match everything.
type VMFilter struct {
	UserID string
	States []State
	// IncludeDestroyed lists destroyed VMs too (they are hidden by default).
	IncludeDestroyed bool
}

// Event is one entry of the append-only event log.
type Event struct {
	ID        int64 // assigned by the store, strictly increasing
	At        time.Time
	Type      string // e.g. "vm.state", "login.state"
	VMID      string
	UserID    string
	LoginID   string // set on login events
	FromState State  // for login events, the login states as State(string)
	ToState   State
	Message   string
}

// EventFilter narrows QueryEvents and live subscriptions to the events one
// reader may see. Zero values match everything; set fields must all match.
type EventFilter struct {
	UserID  string // only this user's events
	LoginID string // only this login's events
	VMID    string // only this VM's events
}

// Matches reports whether e passes f.
func (f EventFilter) Matches(e Event) bool {
	return (f.UserID == "" || f.UserID == e.UserID) &&
		(f.LoginID == "" || f.LoginID == e.LoginID) &&
		(f.VMID == "" || f.VMID == e.VMID)
}

// EventRetention says which old events PruneEvents removes. An event goes
// when it is older than Before or more than KeepRows ids older than the
// newest id ever assigned; either limit alone is enough.
type EventRetention struct {
	Before   time.Time // zero: no age limit
	KeepRows int       // <= 0: no row limit
	// Batch bounds the events one call removes (and so how long it holds
	// the write lock); it must be positive.
	Batch int
}

// LoginState is where a provider login stands.
type LoginState string

const (
	LoginStarting     LoginState = "starting"      // the browser VM is being prepared
	LoginAwaitingUser LoginState = "awaiting_user" // the user has to finish the provider's sign-in
	LoginCapturing    LoginState = "capturing"     // the CLI's credential file is being taken
	LoginCompleted    LoginState = "completed"     // the credential is stored (Login.CredentialID)
	LoginFailed       LoginState = "failed"
	LoginCancelled    LoginState = "cancelled"
	LoginExpired      LoginState = "expired"
)

// Terminal reports whether the login is over: no state change can follow.
func (s LoginState) Terminal() bool {
	switch s {
	case LoginCompleted, LoginFailed, LoginCancelled, LoginExpired:
		return true
	}
	return false
}

// Login is one attempt to log a user's CLI (e.g. "claude_code") into its
// provider inside a browser VM. A user has at most one active (non-terminal)
// login per provider.
type Login struct {
	ID            string
	UserID        string
	Provider      string
	State         LoginState
	FailureReason string
	BrowserVMID   string // the browser VM running the login ("" until created)
	CredentialID  string // the captured credential; set when completed
	CreatedAt     time.Time
	UpdatedAt     time.Time
	ExpiresAt     time.Time
	CompletedAt   time.Time // when it reached a terminal state (zero before)
}

// LoginFilter narrows ListLogins. Zero values match everything.
type LoginFilter struct {
	UserID   string
	Provider string
	// ActiveOnly lists only logins in a non-terminal state.
	ActiveOnly bool
}

// Credential is a provider credential a login captured, stored sealed by
// internal/vault (envelope encryption): the plaintext never reaches the
// store.
type Credential struct {
	ID         string
	UserID     string
	Provider   string
	LoginID    string // the login that captured it
	KeyID      string // id of the master key that wraps the data key
	WrappedKey []byte // the per-credential data key, sealed under the master key
	Sealed     []byte // the credential plaintext sealed under the data key (nonce included)
	CreatedAt  time.Time
	UpdatedAt  time.Time
	ExpiresAt  time.Time // zero: unknown or does not expire
	Valid      bool
}

// Users stores tenants.
type Users interface {
	CreateUser(ctx context.Context, u User) error // ErrConflict if the id exists
	GetUser(ctx context.Context, id string) (User, error)
	ListUsers(ctx context.Context) ([]User, error)
}

// APIKeys stores API key records.
type APIKeys interface {
	// CreateAPIKey inserts k: ErrConflict if the id exists, ErrNotFound if
	// k.UserID names no user, errdefs.ErrInvalid for an unknown scope, a
	// user key without a user, no secret hash or an expiry not after the
	// creation time.
	CreateAPIKey(ctx context.Context, k APIKey) error
	GetAPIKey(ctx context.Context, id string) (APIKey, error)
	// ListAPIKeys returns the keys f selects, revoked and expired ones
	// included, oldest first.
	ListAPIKeys(ctx context.Context, f APIKeyFilter) ([]APIKey, error)
	TouchAPIKey(ctx context.Context, id string, at time.Time) error
	// RevokeAPIKey marks the key revoked at at and returns it as stored. A
	// revoked key stays as it is (its first RevokedAt). Unless
	// opt.AllowLastAdmin, revoking an admin key active at at while no other
	// admin key is fails with ErrLastAdminKey and writes nothing; the check
	// and the write are one transaction, so of concurrent revocations of
	// the last two admin keys one fails.
	RevokeAPIKey(ctx context.Context, id string, at time.Time, opt RevokeOptions) (APIKey, error)
}

// Images stores image records.
type Images interface {
	// PutImage inserts or replaces the image with img.ID.
	PutImage(ctx context.Context, img Image) error
	// GetImage resolves ref as an image ID, then a unique ID prefix of at
	// least 8 characters, then as a name (the newest image with that name).
	GetImage(ctx context.Context, ref string) (Image, error)
	ListImages(ctx context.Context) ([]Image, error)
	DeleteImage(ctx context.Context, id string) error
}

// VMs stores VM records.
type VMs interface {
	CreateVM(ctx context.Context, vm VM) error // ErrConflict if the id exists
	GetVM(ctx context.Context, id string) (VM, error)
	ListVMs(ctx context.Context, f VMFilter) ([]VM, error) // oldest first
	// UpdateVM reads the VM, applies fn and writes it back in one
	// transaction. If fn changes State, a "vm.state" event is appended in the
	// same transaction (Message taken from msg) and returned. If fn returns
	// an error nothing is written and that error is returned.
	UpdateVM(ctx context.Context, id string, msg string, fn func(*VM) error) (VM, *Event, error)
	// DeleteVM removes the row entirely (used only by garbage collection of
	// long-destroyed VMs; normal deletion moves a VM to StateDestroyed).
	DeleteVM(ctx context.Context, id string) error
}

// Lease is one address of the VM subnet held by one VM. An address is
// never held twice: the store enforces it.
type Lease struct {
	IP        string // canonical form, e.g. "172.30.0.5"
	VMID      string
	CreatedAt time.Time
}

// Leases stores address leases.
type Leases interface {
	// CreateLease records l. It fails with ErrConflict if the address is
	// held or the VM already holds one; nothing is written then.
	CreateLease(ctx context.Context, l Lease) error
	// GetLease returns the lease held by vmID, or ErrNotFound.
	GetLease(ctx context.Context, vmID string) (Lease, error)
	// ListLeases returns every lease, ordered by address text.
	ListLeases(ctx context.Context) ([]Lease, error)
	// DeleteLease releases vmID's lease; releasing none is not an error.
	DeleteLease(ctx context.Context, vmID string) error
}

// EventLoginCreated is the type of the event CreateLogin appends: every
// login's first.
const EventLoginCreated = "login.created"

// Logins stores provider logins.
type Logins interface {
	// CreateLogin inserts l, which must be in a non-terminal state, and
	// appends a "login.created" event in the same transaction. It fails with
	// ErrConflict if l.ID exists or the user already has an active login for
	// l.Provider (the database enforces it, so of concurrent creates exactly
	// one succeeds).
	CreateLogin(ctx context.Context, l Login) (Event, error)
	GetLogin(ctx context.Context, id string) (Login, error)
	ListLogins(ctx context.Context, f LoginFilter) ([]Login, error) // oldest first
	// UpdateLogin reads the login, applies fn and writes it back in one
	// transaction. If fn changes State, a "login.state" event is appended in
	// the same transaction (Message taken from msg) and returned. A login in
	// a terminal state cannot change state again (ErrConflict). If fn returns
	// an error nothing is written and that error is returned.
	UpdateLogin(ctx context.Context, id, msg string, fn func(*Login) error) (Login, *Event, error)
}

// Credentials stores sealed credentials, one per user and provider.
type Credentials interface {
	// PutCredential inserts c, replacing the record the user already has for
	// c.Provider, if any.
	PutCredential(ctx context.Context, c Credential) error
	GetCredential(ctx context.Context, userID, provider string) (Credential, error)
	// ListCredentials returns userID's credentials ("" for every user's),
	// ordered by user, then provider.
	ListCredentials(ctx context.Context, userID string) ([]Credential, error)
	// RewrapCredential replaces the KeyID and WrappedKey of the record with
	// id, but only if its KeyID is still oldKeyID (ErrConflict otherwise):
	// key rotation's compare-and-swap.
	RewrapCredential(ctx context.Context, id, oldKeyID, newKeyID string, wrapped []byte) error
	DeleteCredential(ctx context.Context, userID, provider string) error
}

// ViewerEpochs stores each VM's viewer epoch: viewer links carry the epoch
// they were issued in, and revoking a VM's viewers moves it on.
type ViewerEpochs interface {
	// ViewerEpoch is vmID's epoch: 0 until first bumped (and for unknown
	// VMs).
	ViewerEpoch(ctx context.Context, vmID string) (uint64, error)
	// BumpViewerEpoch adds one to vmID's epoch and returns the new value;
	// ErrNotFound if there is no such VM. Deleting the VM forgets it.
	BumpViewerEpoch(ctx context.Context, vmID string) (uint64, error)
}

// Events is the append-only event log. Nothing changes or removes an
// event but retention (PruneEvents), and retention only forgets the oldest
// events: it advances a horizon, and every event with an ID above the
// horizon is kept. A reader that listed events after X and then reads a
// horizon <= X has missed none; a horizon > X means events after X may be
// gone.
type Events interface {
	AppendEvent(ctx context.Context, e Event) (Event, error)
	// ListEvents returns events with ID > afterID, oldest first, at most
	// limit (1000 if limit <= 0).
	ListEvents(ctx context.Context, afterID int64, limit int) ([]Event, error)
	// QueryEvents is ListEvents of the events f matches. The backend
	// filters (an indexed query): it never reads a row f excludes.
	QueryEvents(ctx context.Context, f EventFilter, afterID int64, limit int) ([]Event, error)
	// EventHorizon returns the highest event ID retention has forgotten
	// (0 if none). It never decreases.
	EventHorizon(ctx context.Context) (int64, error)
	// PruneEvents forgets, oldest first and in one transaction, at most
	// r.Batch events that r says are too old, stopping at the first event
	// it keeps; it returns how many it removed. Call it until it returns
	// fewer than r.Batch.
	PruneEvents(ctx context.Context, r EventRetention) (int, error)
}

// Store is everything hearth persists.
type Store interface {
	Users
	APIKeys
	Images
	VMs
	Leases
	Logins
	Credentials
	ViewerEpochs
	Events
	Ping(ctx context.Context) error
	Close() error
}
