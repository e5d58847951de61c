package agentapi

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

const (
	// TokenSize is the size in bytes of tokens made by NewToken.
	TokenSize = 32
	// MinTokenSize is the smallest token ParseToken and Handshake accept.
	MinTokenSize = 16

	proofSize = sha256.Size
)

// NewToken returns a fresh random per-VM secret of TokenSize bytes.
func NewToken() ([]byte, error) {
	tok := make([]byte, TokenSize)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("agentapi: new token: %w", err)
	}
	return tok, nil
}

// FormatToken returns the text form in which a token is delivered to the
// guest (QEMU fw_cfg, a file, or the kernel command line): lower-case hex.
func FormatToken(token []byte) string { return hex.EncodeToString(token) }

// ParseToken parses the text form made by FormatToken. Surrounding white
// space and NUL bytes are ignored.
func ParseToken(s string) ([]byte, error) {
	s = strings.Trim(s, " \t\r\n\x00")
	tok, err := hex.DecodeString(s)
	if err != nil {
		return nil, errors.New("agentapi: parse token: not hex")
	}
	if len(tok) < MinTokenSize {
		return nil, fmt.Errorf("agentapi: parse token: %d bytes, at least %d required", len(tok), MinTokenSize)
	}
	return tok, nil
}

// Proof returns hex(HMAC-SHA256(key=token, msg=nonce)), the guest's answer
// to a challenge. nonce is the raw (base64-decoded) challenge nonce.
func Proof(token, nonce []byte) string {
	return hex.EncodeToString(mac(token, nonce))
}

// verifyProof reports in constant time whether proof is Proof(token, nonce).
func verifyProof(token, nonce []byte, proof string) bool {
	got, err := hex.DecodeString(proof)
	if err != nil {
		return false
	}
	return hmac.Equal(got, mac(token, nonce))
}

func mac(token, nonce []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write(nonce)
	return m.Sum(nil)
}
