package agentapi

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
)

// Every login result the host accepts must be one the guest can send: a
// result line longer than MaxLineSize never arrives (the guest answers
// "result too large" instead), so a login within the limits would fail
// after the user signed in. Results of many files at the per-file limit,
// of few, and of paths as long as providers use, are either refused by
// Validate or fit one line.
func TestLoginResultsThatValidateFitOneLine(t *testing.T) {
	path := "~/." + strings.Repeat("p", 990) + "/c.json"
	for _, c := range []struct{ files, size int }{
		{MaxCredentialFiles, MaxCredentialSize},
		{4, MaxCredentialSize},
		{3, MaxCredentialSize},
		{2, MaxCredentialSize},
		{1, MaxCredentialSize},
		{MaxCredentialFiles, MaxCredentialSize / 4},
		{MaxCredentialFiles, MaxCredentialSize / 5},
	} {
		t.Run(fmt.Sprintf("%dx%d", c.files, c.size), func(t *testing.T) {
			var req LoginRequest
			var res LoginResult
			for i := range c.files {
				p := fmt.Sprintf("%s%d", path, i)
				req.Credentials = append(req.Credentials, CredentialFile{Path: p, Format: "json"})
				// Worst case for base64 and JSON: no byte compresses.
				res.Files = append(res.Files, CapturedFile{Path: p, Content: bytes.Repeat([]byte{0xff}, c.size)})
			}
			if err := res.Validate(req); err != nil {
				t.Logf("refused: %v", err)
				return
			}
			env, err := NewResult(1<<62, res, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := NewEncoder(io.Discard).Encode(env); err != nil {
				t.Fatalf("a result Validate accepts cannot be sent: %v", err)
			}
		})
	}
}
