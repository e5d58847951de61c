package agentapi

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
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

// The login request's setup timeout, DevTools endpoint and credential
// paths are checked, each refused with an error naming it.
func TestLoginRequestValidateSetupAndPageCheck(t *testing.T) {
	base := LoginRequest{
		User: "hearth", Argv: []string{"fakeprovider", "login"}, URLPattern: `https://\S+`,
		Browser:     []string{"/usr/local/bin/hearth-browser"},
		Credentials: []CredentialFile{{Path: "~/.fake/credentials.json", Format: "json"}},
		Timeout:     time.Minute, SetupTimeout: time.Minute, PageCheck: "127.0.0.1:9222",
	}
	if err := base.Validate(); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	for _, tc := range []struct {
		name    string
		change  func(*LoginRequest)
		wantErr string
	}{
		{"no setup timeout", func(r *LoginRequest) { r.SetupTimeout = 0 }, ""},
		{"no page check", func(r *LoginRequest) { r.PageCheck = "" }, ""},
		{"ipv6 loopback", func(r *LoginRequest) { r.PageCheck = "[::1]:9222" }, ""},
		{"negative setup timeout", func(r *LoginRequest) { r.SetupTimeout = -time.Second }, "setup timeout"},
		{"setup timeout too long", func(r *LoginRequest) { r.SetupTimeout = MaxLoginTimeout + time.Second }, "setup timeout"},
		{"page check not loopback", func(r *LoginRequest) { r.PageCheck = "10.0.0.1:9222" }, "page check"},
		{"page check a name", func(r *LoginRequest) { r.PageCheck = "localhost:9222" }, "page check"},
		{"page check without port", func(r *LoginRequest) { r.PageCheck = "127.0.0.1:" }, "page check"},
		{"page check without colon", func(r *LoginRequest) { r.PageCheck = "127.0.0.1" }, "page check"},
		{"page check port not a number", func(r *LoginRequest) { r.PageCheck = "127.0.0.1:abc" }, "page check"},
		{"page check port out of range", func(r *LoginRequest) { r.PageCheck = "127.0.0.1:70000" }, "page check"},
		{"page check port zero", func(r *LoginRequest) { r.PageCheck = "127.0.0.1:0" }, "page check"},
		{"credential path too long", func(r *LoginRequest) {
			r.Credentials[0].Path = "/" + strings.Repeat("p", MaxCredentialPath)
		}, "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := base
			r.Credentials = slices.Clone(base.Credentials)
			tc.change(&r)
			err := r.Validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
