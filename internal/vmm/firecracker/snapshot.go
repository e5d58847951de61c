package firecracker

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
)

// CreateSnapshot implements vmm.Snapshotter: a full snapshot of a paused VM
// (device state and memory) plus a clone of its disk as it is at that
// moment, all moved into dir. The snapshot holds the VM's token in guest
// memory, like any running guest's; Restore replaces it at once.
func (d *Driver) CreateSnapshot(ctx context.Context, h vmm.Handle, dir string) (vmm.Snapshot, error) {
	root := h.Dir
	if h.Jail != "" {
		root = h.Jail
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("snapshot dir: %w", err)
	}
	c := NewClient(h.ControlSocket, d.cfg.APITimeout)
	if err := c.Put(ctx, "/snapshot/create", d.snapshotCreate()); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("create snapshot: %w", err)
	}
	snap := vmm.Snapshot{
		Driver:    d.Name(),
		StatePath: filepath.Join(dir, fileSnapshot),
		MemPath:   filepath.Join(dir, fileMemory),
		DiskPath:  filepath.Join(dir, fileSnapDisk),
		Created:   time.Now().UTC(),
	}
	for src, dst := range map[string]string{filepath.Join(root, fileSnapshot): snap.StatePath, filepath.Join(root, fileMemory): snap.MemPath} {
		if err := moveFile(src, dst); err != nil {
			return vmm.Snapshot{}, fmt.Errorf("create snapshot: %w", err)
		}
	}
	// The guest is paused: its disk is consistent with its memory.
	if err := CloneDisk(d.clone, h.DiskPath, snap.DiskPath); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("create snapshot: %w", err)
	}
	return snap, nil
}

func (d *Driver) snapshotCreate() SnapshotCreate {
	return SnapshotCreate{SnapshotType: "Full", SnapshotPath: fileSnapshot, MemFilePath: fileMemory}
}

// RestoreRequests returns the API requests that restore snap for spec, in
// order (after the logger and metrics): load with the spec's TAP and vsock
// socket, the spec's identity into MMDS, resume.
func (d *Driver) RestoreRequests(spec vmm.Spec) []Request {
	reqs := d.loggingRequests()
	return append(reqs,
		Request{"PUT", "/snapshot/load", SnapshotLoad{
			SnapshotPath:     fileSnapshot,
			MemBackend:       &MemBackend{BackendType: "File", BackendPath: fileMemory},
			NetworkOverrides: []NetworkOverride{{IfaceID: ifaceID, HostDevName: spec.NICs[0].TAP}},
			VsockOverride:    &VsockOverride{UDSPath: fileVsock},
		}},
		Request{"PUT", "/mmds", mmdsDocument(spec)},
		Request{"PATCH", "/vm", VMState{State: "Resumed"}},
	)
}

// Restore implements vmm.Snapshotter. spec must have been prepared; its
// disk is replaced by a clone of the snapshot's. The restored guest's vsock
// connections are reset by Firecracker on load, so its agent must be
// reached again, and it then reads the new token from MMDS. Memory size and
// vCPUs are the snapshot's.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, h *vmm.Handle, snap vmm.Snapshot) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	if snap.Driver != d.Name() {
		return fmt.Errorf("restore: snapshot was made by %q, not firecracker", snap.Driver)
	}
	root := d.root(spec)
	if err := CloneDisk(d.clone, snap.DiskPath, h.DiskPath); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	for src, name := range map[string]string{snap.StatePath: fileSnapshot, snap.MemPath: fileMemory} {
		if err := linkOrCopy(src, filepath.Join(root, name)); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	if d.Jailed() {
		for _, p := range []string{h.DiskPath, filepath.Join(root, fileSnapshot), filepath.Join(root, fileMemory)} {
			if err := d.cfg.Jailer.own(p); err != nil {
				return err
			}
		}
	}
	// The console cannot be configured on a restored VM (PUT /serial is
	// pre-boot only): its serial output is the process's stdout, which
	// launch points at the console's FIFO.
	if err := d.launch(ctx, spec, h, root, true); err != nil {
		return err
	}
	c := NewClient(h.ControlSocket, d.cfg.APITimeout)
	for _, r := range d.RestoreRequests(spec) {
		if err := d.send(ctx, c, r); err != nil {
			d.kill(*h)
			return fmt.Errorf("restore: %w%s", err, d.outputTail(*h))
		}
	}
	return nil
}

// moveFile renames src to dst, copying across filesystems.
func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	if err := sparseCopy(src, dst); err != nil {
		return err
	}
	return os.Remove(src)
}

// linkOrCopy makes dst a hard link of src, or a sparse copy across
// filesystems.
func linkOrCopy(src, dst string) error {
	_ = os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return sparseCopy(src, dst)
}

// copyFile copies a small file.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
