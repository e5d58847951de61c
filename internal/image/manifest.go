// Package image says what a hearth guest image is: the files of an image
// directory (kernel, initramfs, ext4 root file system, manifest.json), the
// manifest that describes them and the claims it makes about the root file
// system, and the paths inside the guest that the builder, the drivers and
// the agent agree on. Its subpackages make and check images: build (from
// the specs of package spec, with the kernel files of package kernel) and
// verify (every claim, read from the ext4 file by package ext4).
package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
)

// ManifestSchemaVersion is the version of the Manifest JSON layout.
const ManifestSchemaVersion = 1

// Names of the files in an image directory.
const (
	KernelFile   = "vmlinux"
	InitrdFile   = "initrd.img"
	RootfsFile   = "rootfs.ext4"
	ManifestFile = "manifest.json"
)

// RootfsLabel is the ext4 volume label of every image's root file system.
const RootfsLabel = "rootfs"

// Manifest describes a built image (manifest.json in the image directory).
// Two builds from the same inputs produce identical manifests except for
// BuiltAt.
type Manifest struct {
	SchemaVersion int             `json:"schema_version"`
	Profile       string          `json:"profile"`
	Role          string          `json:"role"`
	RequiredPorts []int           `json:"required_ports"`
	Digest        string          `json:"digest"` // hex SHA-256 of the build inputs
	Kernel        KernelManifest  `json:"kernel"`
	Initrd        InitrdManifest  `json:"initrd"`
	Rootfs        RootfsManifest  `json:"rootfs"`
	Agent         AgentManifest   `json:"agent"`
	Busybox       BusyboxManifest `json:"busybox"`
	BuiltAt       time.Time       `json:"built_at"`
	Builder       string          `json:"builder"` // builder version

	// SpecDigest is the hex SHA-256 of the image spec's canonical form.
	SpecDigest string `json:"spec_digest"`
	// Packages lists every Debian package installed in the root filesystem
	// (from its dpkg status file), sorted by name; empty for busybox images.
	Packages []PackageClaim `json:"packages"`
	// NPM lists the global npm packages the spec asked for, with the
	// versions that were installed, sorted by name.
	NPM []PackageClaim `json:"npm"`
	// Units lists the systemd units enabled in the image and the target
	// that wants each (the hearth agent's unit among them).
	Units []UnitClaim `json:"units"`
	// Files lists files inside the root filesystem whose content the image
	// vouches for: the agent, every spec file and the role's key binaries.
	Files []FileClaim `json:"files"`
	// Users lists the non-system accounts the spec created.
	Users []UserClaim `json:"users"`
}

// PackageClaim is an installed package (Debian or npm) and its version.
type PackageClaim struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// UnitClaim is an enabled systemd unit: <WantedBy>.wants/<Name> exists.
type UnitClaim struct {
	Name     string `json:"name"`
	WantedBy string `json:"wanted_by"`
}

// FileClaim is a regular file inside the root filesystem. Path is absolute
// and names the file itself (symlinks resolved); Mode holds the permission
// bits (e.g. 0755 is 493 in JSON).
type FileClaim struct {
	Path   string      `json:"path"`
	SHA256 string      `json:"sha256"`
	Mode   fs.FileMode `json:"mode"`
	Size   int64       `json:"size"`
}

// UserClaim is an account in the root filesystem's /etc/passwd.
type UserClaim struct {
	Name string `json:"name"`
	UID  int    `json:"uid"`
	Home string `json:"home"`
}

// KernelManifest describes the kernel: the Debian package it came from and
// the uncompressed ELF vmlinux QEMU boots.
type KernelManifest struct {
	Package   string `json:"package"`
	Version   string `json:"version"`
	Release   string `json:"release"` // uname -r
	DebSHA256 string `json:"deb_sha256"`
	SHA256    string `json:"sha256"` // of vmlinux
	Size      int64  `json:"size"`
}

// InitrdManifest describes the initramfs (gzip'd newc cpio).
type InitrdManifest struct {
	SHA256  string   `json:"sha256"`
	Size    int64    `json:"size"`
	Modules []string `json:"modules"` // in load order
}

// RootfsManifest describes the raw ext4 root filesystem image.
type RootfsManifest struct {
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`      // apparent size in bytes
	DiskSize int64  `json:"disk_size"` // bytes allocated on the build host (sparse)
	FSType   string `json:"fs_type"`
	Label    string `json:"label"`
	UUID     string `json:"uuid"`
}

// AgentManifest describes the hearth agent baked into the root filesystem.
type AgentManifest struct {
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	Path    string `json:"path"` // inside the guest
}

// BusyboxManifest describes the busybox binary used in initramfs and rootfs.
type BusyboxManifest struct {
	SHA256 string `json:"sha256"`
}

// ReadManifest reads manifest.json from an image directory.
func ReadManifest(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("parse %s: %w", ManifestFile, err)
	}
	if m.SchemaVersion != ManifestSchemaVersion {
		return nil, fmt.Errorf("%s: unsupported schema_version %d (want %d)", ManifestFile, m.SchemaVersion, ManifestSchemaVersion)
	}
	return &m, nil
}

// Verify checks that the image files in dir match the manifest's sizes and
// SHA-256 sums. It reads every file in full.
func (m *Manifest) Verify(dir string) error {
	var errs []error
	for _, f := range m.FileDigests() {
		st, err := fsutil.StatFile(filepath.Join(dir, f.Name))
		switch {
		case err != nil:
			errs = append(errs, err)
		case st.Size != f.Size:
			errs = append(errs, fmt.Errorf("%s: size %d, manifest says %d", f.Name, st.Size, f.Size))
		case st.SHA256 != f.SHA256:
			errs = append(errs, fmt.Errorf("%s: sha256 %s, manifest says %s", f.Name, st.SHA256, f.SHA256))
		}
	}
	return errors.Join(errs...)
}

// FileDigest is one image file as the manifest records it.
type FileDigest struct {
	Name   string // in the image directory
	Size   int64
	SHA256 string // hex
}

// FileDigests lists the image files the manifest covers, with the size and
// SHA-256 it records for each.
func (m *Manifest) FileDigests() []FileDigest {
	return []FileDigest{
		{KernelFile, m.Kernel.Size, m.Kernel.SHA256},
		{InitrdFile, m.Initrd.Size, m.Initrd.SHA256},
		{RootfsFile, m.Rootfs.Size, m.Rootfs.SHA256},
	}
}

// Info returns the ImageInfo stored inside the image.
func (m Manifest) Info() ImageInfo {
	return ImageInfo{
		SchemaVersion: m.SchemaVersion,
		Profile:       m.Profile,
		Role:          m.Role,
		RequiredPorts: m.RequiredPorts,
		Digest:        m.Digest,
		AgentVersion:  m.Agent.Version,
		AgentSHA256:   m.Agent.SHA256,
		KernelPackage: m.Kernel.Package,
		KernelVersion: m.Kernel.Version,
		Builder:       m.Builder,
	}
}
