// Package viewer lets a browser reach a VM's VNC server: short-lived signed
// viewer tokens and a WebSocket↔RFB (VNC over TCP) bridge.
//
// Tokens are secrets: nothing in this package logs them, and callers must not
// either.
package viewer

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// MinKeySize is the smallest signing key NewSigner accepts.
const MinKeySize = 32

// maxTokenLen bounds the input Verify is willing to decode.
const maxTokenLen = 4096

// Sentinel errors returned by Verify and Connect.
var (
	ErrMalformed = errors.New("viewer token malformed")
	ErrForged    = errors.New("viewer token signature invalid")
	ErrExpired   = errors.New("viewer token expired")
	ErrWrongVM   = errors.New("viewer token is for another vm")
	ErrReplayed  = errors.New("viewer token already used")
	ErrWrongKind = errors.New("viewer token is of the wrong kind")
)

// Kind says what a token may be used for.
type Kind string

// Token kinds. A page token opens the viewer page and, until it expires,
// buys socket tokens for it (so the page can reconnect); a socket token
// opens one WebSocket, once.
const (
	KindPage   Kind = "page"
	KindSocket Kind = "socket"
)

// Claims is what a viewer token grants: a viewer for one VM (and optionally
// one session) until Expires, possibly view-only. Nonce makes every token
// unique so that it can be refused once used.
type Claims struct {
	Kind     Kind
	VMID     string
	Session  string
	ViewOnly bool
	// Expires is when the token can no longer be used: the link's end for
	// a page token, seconds after issue for a socket token.
	Expires time.Time
	Nonce   string
	// Link names the viewer link (the grant) a token belongs to: the
	// socket tokens bought with a page token carry its link, so viewers
	// can be counted per link.
	Link string
	// Epoch is the VM's viewer epoch when the link was issued; revoking
	// the VM's viewers moves the epoch on and refuses every older token.
	Epoch uint64
	// LinkExpires is when the link ends (a viewer lives no longer); zero
	// means Expires.
	LinkExpires time.Time
	// Instance names the hearth process that issued a socket token: only
	// that process remembers which socket tokens were used, so no other
	// accepts them.
	Instance string
}

// LinkEnd is when the claims' link ends: LinkExpires, else Expires.
func (c Claims) LinkEnd() time.Time {
	if c.LinkExpires.IsZero() {
		return c.Expires
	}
	return c.LinkExpires
}

// wireClaims is the JSON form of Claims inside a token.
type wireClaims struct {
	Kind        Kind   `json:"k"`
	VMID        string `json:"vm"`
	Session     string `json:"sid,omitempty"`
	ViewOnly    bool   `json:"vo,omitempty"`
	Expires     int64  `json:"exp"`
	Nonce       string `json:"n"`
	Link        string `json:"l,omitempty"`
	Epoch       uint64 `json:"ep,omitempty"`
	LinkExpires int64  `json:"lx,omitempty"`
	Instance    string `json:"i,omitempty"`
}

var b64 = base64.RawURLEncoding

// Signer signs and verifies viewer tokens with HMAC-SHA256.
type Signer struct {
	key []byte
}

// NewSigner returns a Signer using a copy of key, which must be at least
// MinKeySize bytes.
func NewSigner(key []byte) (*Signer, error) {
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("viewer signing key is %d bytes, need at least %d", len(key), MinKeySize)
	}
	return &Signer{key: append([]byte(nil), key...)}, nil
}

// Sign returns the compact token for c: base64url(JSON claims) "."
// base64url(HMAC-SHA256). A missing Nonce is filled with a random one and a
// missing Kind is KindSocket.
func (s *Signer) Sign(c Claims) (string, error) {
	if c.Kind == "" {
		c.Kind = KindSocket
	}
	if c.Kind != KindPage && c.Kind != KindSocket {
		return "", fmt.Errorf("sign viewer token: unknown kind %q", c.Kind)
	}
	if c.VMID == "" {
		return "", errors.New("sign viewer token: empty vm id")
	}
	if c.Expires.IsZero() {
		return "", errors.New("sign viewer token: no expiry")
	}
	if c.Nonce == "" {
		n, err := newNonce()
		if err != nil {
			return "", fmt.Errorf("sign viewer token: %w", err)
		}
		c.Nonce = n
	}
	w := wireClaims{
		Kind: c.Kind, VMID: c.VMID, Session: c.Session, ViewOnly: c.ViewOnly,
		Expires: c.Expires.Unix(), Nonce: c.Nonce, Link: c.Link, Epoch: c.Epoch, Instance: c.Instance,
	}
	if !c.LinkExpires.IsZero() {
		w.LinkExpires = c.LinkExpires.Unix()
	}
	payload, err := json.Marshal(w)
	if err != nil {
		return "", fmt.Errorf("sign viewer token: %w", err)
	}
	body := b64.EncodeToString(payload)
	return body + "." + b64.EncodeToString(s.mac(body)), nil
}

// Verify checks token's signature, that it is for vmID and that it has not
// expired at now. Errors wrap ErrMalformed, ErrForged, ErrWrongVM or
// ErrExpired; they never contain the token. With ErrExpired the claims are
// returned too (they are authentic), so a caller can tell an expired
// socket token of a live link from an expired link.
func (s *Signer) Verify(token, vmID string, now time.Time) (Claims, error) {
	body, sig, err := split(token)
	if err != nil {
		return Claims{}, err
	}
	if !hmac.Equal(sig, s.mac(body)) {
		return Claims{}, ErrForged
	}
	c, err := decodeClaims(body)
	if err != nil {
		return Claims{}, err
	}
	if c.VMID != vmID {
		return Claims{}, ErrWrongVM
	}
	if !now.Before(c.Expires) {
		return c, ErrExpired
	}
	return c, nil
}

// mac is the HMAC-SHA256 of the encoded claims.
func (s *Signer) mac(body string) []byte {
	h := hmac.New(sha256.New, s.key)
	h.Write([]byte(body))
	return h.Sum(nil)
}

// split separates a token into its encoded claims and decoded signature.
func split(token string) (string, []byte, error) {
	if len(token) > maxTokenLen {
		return "", nil, fmt.Errorf("%w: too long", ErrMalformed)
	}
	body, enc, ok := strings.Cut(token, ".")
	if !ok || body == "" || strings.Contains(enc, ".") {
		return "", nil, fmt.Errorf("%w: not two parts", ErrMalformed)
	}
	sig, err := b64.DecodeString(enc)
	if err != nil || len(sig) != sha256.Size {
		return "", nil, fmt.Errorf("%w: bad signature encoding", ErrMalformed)
	}
	return body, sig, nil
}

// decodeClaims decodes authenticated claims.
func decodeClaims(body string) (Claims, error) {
	raw, err := b64.DecodeString(body)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: bad claims encoding", ErrMalformed)
	}
	var w wireClaims
	if err := json.Unmarshal(raw, &w); err != nil {
		return Claims{}, fmt.Errorf("%w: bad claims", ErrMalformed)
	}
	if w.VMID == "" || w.Nonce == "" || w.Expires == 0 || (w.Kind != KindPage && w.Kind != KindSocket) {
		return Claims{}, fmt.Errorf("%w: missing claims", ErrMalformed)
	}
	c := Claims{
		Kind: w.Kind, VMID: w.VMID, Session: w.Session, ViewOnly: w.ViewOnly,
		Expires: time.Unix(w.Expires, 0), Nonce: w.Nonce, Link: w.Link, Epoch: w.Epoch, Instance: w.Instance,
	}
	if w.LinkExpires != 0 {
		c.LinkExpires = time.Unix(w.LinkExpires, 0)
	}
	return c, nil
}

// newNonce returns 128 random bits, base64url-encoded.
func newNonce() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("read random nonce: %w", err)
	}
	return b64.EncodeToString(b[:]), nil
}
