package agentapi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// shortTempDir returns a temporary directory whose paths fit a Unix socket
// address (t.TempDir can be too long).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hearth")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestDialWaitsForSocket(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "agent.sock")
	listening := make(chan net.Listener, 1)
	time.AfterFunc(150*time.Millisecond, func() {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Error(err)
		}
		listening <- l
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if l := <-listening; l != nil {
		l.Close()
	}
}

func TestDialTimeout(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "missing.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, path)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Dial took %v after its deadline", d)
	}
}
