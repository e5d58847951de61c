package agentapi

import (
	"bytes"
	"strings"
	"testing"
)

func TestNewToken(t *testing.T) {
	a, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != TokenSize || bytes.Equal(a, b) {
		t.Fatalf("tokens %x and %x: want two distinct %d-byte tokens", a, b, TokenSize)
	}
}

func TestProof(t *testing.T) {
	// RFC 4231, test case 2.
	got := Proof([]byte("Jefe"), []byte("what do ya want for nothing?"))
	const want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
	if got != want {
		t.Fatalf("Proof = %s, want %s", got, want)
	}
	token, nonce := []byte("0123456789abcdef"), []byte("nonce")
	tests := []struct {
		proof string
		ok    bool
	}{
		{Proof(token, nonce), true},
		{strings.ToUpper(Proof(token, nonce)), true}, // hex is case-insensitive
		{Proof([]byte("fedcba9876543210"), nonce), false},
		{Proof(token, []byte("other")), false},
		{Proof(token, nonce)[:62], false},
		{"zz" + Proof(token, nonce)[2:], false},
		{"", false},
	}
	for _, tt := range tests {
		if got := verifyProof(token, nonce, tt.proof); got != tt.ok {
			t.Errorf("verifyProof(%q) = %v, want %v", tt.proof, got, tt.ok)
		}
	}
}

func TestParseToken(t *testing.T) {
	tok := bytes.Repeat([]byte{0xAB}, TokenSize)
	text := FormatToken(tok)
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"plain", text, true},
		{"trailing newline", text + "\n", true},
		{"fw_cfg NUL", text + "\x00", true},
		{"spaces", "  " + text + " \t", true},
		{"empty", "", false},
		{"too short", FormatToken(tok[:MinTokenSize-1]), false},
		{"not hex", strings.Repeat("g", 64), false},
		{"odd length", text[:63], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseToken(tt.in)
			if tt.ok != (err == nil) {
				t.Fatalf("ParseToken: %v, want ok=%v", err, tt.ok)
			}
			if tt.ok && !bytes.Equal(got, tok) {
				t.Fatalf("ParseToken = %x, want %x", got, tok)
			}
			if err != nil && tt.in != "" && strings.Contains(err.Error(), strings.TrimSpace(tt.in)) {
				t.Fatalf("error %q reveals the token text", err)
			}
		})
	}
}
