package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// TestProfilesBootToReady builds the workspace and browser images from
// their specs (cached by digest across runs), boots each under QEMU to
// ready, and checks from inside and outside the guest what the role
// promises: the AI CLIs on Node.js in the workspace, a VNC server speaking
// RFB in the browser VM.
func TestProfilesBootToReady(t *testing.T) {
	d := newDaemon(t)
	for _, p := range []string{"workspace", "browser"} {
		start := time.Now()
		out := d.hearth("image", "build", "--local", "--profile", p, "--agent", filepath.Join(binDir, "hearth-agent"))
		t.Logf("image %s in %s: %s", p, time.Since(start).Round(time.Second), lastLine(out))
	}
	ctx := ctxT(t, 15*time.Minute)
	boot := func(image string) api.VM {
		v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: image, VCPUs: 2, MemoryMiB: 1024, BootTimeoutSeconds: 300})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	ws, br := boot("workspace"), boot("browser")
	for _, v := range []*api.VM{&ws, &br} {
		got, err := d.alice.WaitVM(ctx, v.ID, "ready", 6*time.Minute)
		if err != nil {
			t.Fatalf("%s not ready: %v", v.ID, err)
		}
		*v = got
	}

	t.Run("workspace", func(t *testing.T) {
		code, o := guest(t, d.alice, ws.ID, "/usr/bin/env", "node", "--version")
		if code != 0 || !strings.HasPrefix(strings.TrimSpace(o), "v2") {
			t.Fatalf("node: %d %s", code, o)
		}
		code, o = guest(t, d.alice, ws.ID, "/bin/sh", "-c", "command -v claude && command -v codex && command -v gemini && id hearth")
		if code != 0 {
			t.Fatalf("CLIs or user missing: %s", o)
		}
	})

	t.Run("browser", func(t *testing.T) {
		w, h, name, err := rfbHandshake(d, vmIP(t, br)+":5900")
		if err != nil {
			t.Fatalf("RFB handshake with the browser VM: %v", err)
		}
		t.Logf("VNC server %q, %dx%d", name, w, h)
		if w != 1280 || h != 800 {
			t.Fatalf("framebuffer %dx%d, want 1280x800", w, h)
		}
	})
}

// rfbHandshake runs the RFB 3.8 handshake from the host side (the
// daemon's namespace) with security type None and returns ServerInit's
// framebuffer size and desktop name.
func rfbHandshake(d *daemon, addr string) (w, h uint16, name string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := nsDialer(d.netns)(ctx, "tcp", addr)
	if err != nil {
		return 0, 0, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	ver := make([]byte, 12)
	if _, err := io.ReadFull(conn, ver); err != nil {
		return 0, 0, "", fmt.Errorf("read version: %w", err)
	}
	if !strings.HasPrefix(string(ver), "RFB 003.") {
		return 0, 0, "", fmt.Errorf("not RFB: %q", ver)
	}
	if _, err := conn.Write([]byte("RFB 003.008\n")); err != nil {
		return 0, 0, "", err
	}
	if err := rfbSecurityNone(conn); err != nil {
		return 0, 0, "", err
	}
	if _, err := conn.Write([]byte{1}); err != nil { // ClientInit: shared
		return 0, 0, "", err
	}
	var init struct {
		W, H   uint16
		Pixel  [16]byte
		NameLn uint32
	}
	if err := binary.Read(conn, binary.BigEndian, &init); err != nil {
		return 0, 0, "", fmt.Errorf("read ServerInit: %w", err)
	}
	if init.NameLn > 4096 {
		return 0, 0, "", fmt.Errorf("desktop name of %d bytes", init.NameLn)
	}
	nb := make([]byte, init.NameLn)
	if _, err := io.ReadFull(conn, nb); err != nil {
		return 0, 0, "", err
	}
	return init.W, init.H, string(nb), nil
}

func rfbSecurityNone(conn net.Conn) error {
	n := make([]byte, 1)
	if _, err := io.ReadFull(conn, n); err != nil {
		return fmt.Errorf("read security types: %w", err)
	}
	if n[0] == 0 {
		return fmt.Errorf("server refused the connection")
	}
	types := make([]byte, n[0])
	if _, err := io.ReadFull(conn, types); err != nil {
		return err
	}
	if !strings.ContainsRune(string(types), 1) {
		return fmt.Errorf("security type None not offered: %v", types)
	}
	if _, err := conn.Write([]byte{1}); err != nil {
		return err
	}
	var result uint32
	if err := binary.Read(conn, binary.BigEndian, &result); err != nil {
		return fmt.Errorf("read SecurityResult: %w", err)
	}
	if result != 0 {
		return fmt.Errorf("security result %d", result)
	}
	return nil
}

// TestTamperedImageIsRefused: an image whose file no longer matches its
// manifest fails `hearth image verify`, naming the broken claim, and VMs are
// refused from it with a 4xx that says why.
func TestTamperedImageIsRefused(t *testing.T) {
	own := t.TempDir() // this test's own image dir: the shared one stays intact
	d := newDaemon(t, "HEARTH_IMAGE_DIR="+own)
	rootfs, err := filepath.Glob(filepath.Join(own, "minimal-*", "rootfs.ext4"))
	if err != nil || len(rootfs) != 1 {
		t.Fatalf("image in %s: %v %v", own, rootfs, err)
	}
	sh(t, "debugfs", "-w", "-R", "rm /usr/bin/hearth-agent", rootfs[0])
	out, err := d.hearthAs(d.admin.Key, "image", "verify", "minimal")
	if err == nil || !strings.Contains(out, "/usr/bin/hearth-agent") {
		t.Fatalf("verify of a tampered image: err=%v\n%s", err, out)
	}
	_, err = d.alice.CreateVM(ctxT(t, time.Minute), api.CreateVM{Image: "minimal"})
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "is failed") {
		t.Fatalf("create from a failed image: %v", err)
	}
}
