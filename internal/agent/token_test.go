package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

func TestReadToken(t *testing.T) {
	token := newToken(t)
	text := agentapi.FormatToken(token)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fwcfg := write("raw", text+"\x00")
	runFile := write("token", text+"\n")
	cmdline := write("cmdline", "console=ttyS0 hearth.token="+text+" quiet\n")
	noParam := write("cmdline-plain", "console=ttyS0 quiet\n")
	bad := write("bad", "not-a-token-"+text[:20])
	missing := filepath.Join(dir, "missing")

	tests := []struct {
		name       string
		sources    []string
		wantSource string
		wantErr    bool
	}{
		{"fw_cfg", []string{fwcfg, runFile}, fwcfg, false},
		{"falls through missing", []string{missing, runFile}, runFile, false},
		{"cmdline", []string{missing, "cmdline:" + cmdline}, "cmdline:" + cmdline, false},
		{"cmdline without parameter", []string{"cmdline:" + noParam}, "", true},
		{"nothing exists", []string{missing, "cmdline:" + missing}, "", true},
		{"invalid token", []string{bad, runFile}, bad, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, src, err := readToken(context.Background(), Options{TokenSources: tt.sources})
			if src != tt.wantSource || (err != nil) != tt.wantErr {
				t.Fatalf("readToken = source %q, error %v; want %q, error %v", src, err, tt.wantSource, tt.wantErr)
			}
			if err == nil && agentapi.FormatToken(got) != text {
				t.Fatalf("token %x, want %s", got, text)
			}
			if err != nil && strings.Contains(err.Error(), text[:20]) {
				t.Fatalf("error %q reveals the token", err)
			}
		})
	}
}

func TestRunWaitsForPort(t *testing.T) {
	token := newToken(t)
	opts, logs := testOptions(t, token)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(agentapi.FormatToken(token)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.TokenSources = []string{tokenFile}
	opts.Port = filepath.Join(t.TempDir(), "vport0p1")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	logs.waitFor(t, "agent port unavailable")
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run ignored ctx")
	}
	if !strings.Contains(logs.String(), "source="+tokenFile) {
		t.Fatalf("log does not name the token source:\n%s", logs.String())
	}
}

func TestRunTokenErrors(t *testing.T) {
	token := newToken(t)
	opts, logs := testOptions(t, token)
	dir := t.TempDir()
	opts.Port = filepath.Join(dir, "vport0p1") // the token is read before the port is opened

	// No source yet: Run waits.
	opts.TokenSources = []string{filepath.Join(dir, "missing")}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := Run(ctx, opts); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want DeadlineExceeded", err)
	}
	logs.waitFor(t, "no token yet")

	// A source that exists but holds garbage is an error.
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.TokenSources = []string{bad}
	if err := Run(context.Background(), opts); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("Run = %v, want an error naming %s", err, bad)
	}
}
