package build

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/ext4/ext4test"
	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/verify"
)

// requireVerifyBuild skips the test unless Image can make the minimal
// image here: root, not -short, the Debian tools and apt lists.
func requireVerifyBuild(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping image build in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping image build: needs root (apt-get download)")
	}
	requireTools(t, "apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "debugfs", "e2fsck", "go")
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skipf("skipping image build: %s missing", DefaultBusybox)
	}
	if _, err := resolveKernelPackage(context.Background(), ""); err != nil {
		t.Skipf("skipping image build: %v", err)
	}
}

// TestBuiltMinimalImageVerifies builds the minimal image and checks every
// claim of its manifest against the image itself; then, with the agent
// removed from rootfs.ext4 (and the manifest's rootfs digest updated to
// match), that exactly the agent's claim fails.
func TestBuiltMinimalImageVerifies(t *testing.T) {
	requireVerifyBuild(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := Image(ctx, Options{
		Profile: "minimal", AgentBinary: buildStubAgent(t), AgentVersion: "test-verify-0.0.1",
		CacheDir: testCacheDir(t), OutputDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := image.ReadManifest(res.Dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r, err := verify.Image(ctx, res.Dir, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verified %d claims of %s in %s", len(r.Claims), res.Dir, time.Since(start).Round(time.Millisecond))
	for _, c := range r.Claims {
		t.Logf("  %v %s", c.OK, c)
	}
	if !r.OK {
		t.Fatalf("freshly built minimal image does not verify:\n%s", r)
	}
	claim := func(r *verify.Report, kind, subject string) verify.ClaimResult {
		t.Helper()
		i := slices.IndexFunc(r.Claims, func(c verify.ClaimResult) bool { return c.Kind == kind && c.Subject == subject })
		if i < 0 {
			t.Fatalf("no %s %s claim in report:\n%s", kind, subject, r)
		}
		return r.Claims[i]
	}
	claim(r, verify.ClaimAgent, image.GuestAgentPath)
	claim(r, verify.ClaimUnit, "/etc/inittab")

	rootfs := filepath.Join(res.Dir, image.RootfsFile)
	ext4test.DebugfsWrite(t, rootfs, "rm "+image.GuestAgentPath+"\n")
	st, err := fsutil.StatFile(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	m.Rootfs.SHA256, m.Rootfs.Size = st.SHA256, st.Size
	if r, err = verify.Image(ctx, res.Dir, m); err != nil {
		t.Fatal(err)
	}
	t.Logf("after rm %s:\n%s", image.GuestAgentPath, r)
	agent := claim(r, verify.ClaimAgent, image.GuestAgentPath)
	if r.OK || agent.OK || !strings.Contains(agent.Detail, "missing from the image") {
		t.Errorf("agent claim after removal: %s", agent)
	}
	for _, c := range r.Failed() {
		if c.Subject != image.GuestAgentPath {
			t.Errorf("unrelated claim failed: %s", c)
		}
	}
}
