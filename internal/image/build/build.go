// Package build builds hearth guest images from specs (package spec): an
// uncompressed ELF kernel that QEMU boots directly (PVH), a small busybox
// initramfs that loads the virtio modules and switches to the root disk,
// and a raw ext4 root filesystem with the hearth agent, all described by a
// manifest (package image). Debootstrap images are assembled in a chroot
// (debootstrap, apt, npm, users, files, systemd units) before the tree
// becomes the ext4 file.
//
// A build goes profile -> build phases -> output directory + manifest. The
// output is content-addressed: <OutputDir>/<profile>-<digest[:16]>, where
// the digest covers every build input (profile definition, kernel package,
// busybox and agent binaries, builder version). Identical inputs produce
// identical files; only the manifest's built_at differs.
package build

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/kernel"
	"github.com/hearth-project/hearth/internal/image/spec"
)

// DefaultBusybox is the static busybox used when Options.BusyboxBinary
// is empty (Debian's busybox-static package).
const DefaultBusybox = "/bin/busybox"

// DefaultCacheDir returns the build cache directory: $HEARTH_CACHE_DIR if
// set, /var/cache/hearth for root, else hearth under the user cache dir.
func DefaultCacheDir() string {
	if d := os.Getenv("HEARTH_CACHE_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/cache/hearth"
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "hearth")
	}
	return filepath.Join(os.TempDir(), "hearth-cache")
}

// reproducibleEpoch is the timestamp given to every file in the initramfs
// and root filesystem (2024-01-01T00:00:00Z).
const reproducibleEpoch = 1704067200

// Options configures Image.
type Options struct {
	// Profile names the image spec: an embedded spec's name ("minimal",
	// "workspace", "browser"; see spec.Names) or the path of a YAML spec
	// file (anything with a slash or a .yaml/.yml suffix).
	Profile string
	// Spec, if set, is built instead of looking up Profile.
	Spec *spec.Spec
	// AgentBinary is the path of a static hearth-agent binary.
	AgentBinary string
	// AgentVersion is recorded in the manifest and in the image.
	AgentVersion string
	// CacheDir holds downloads, unpacked kernels and debootstrap trees;
	// "" = DefaultCacheDir().
	CacheDir string
	// OutputDir is the images root; each image gets a subdirectory.
	OutputDir string
	// KernelPackage selects the kernel: "" follows linux-image-amd64's
	// current dependency; a metapackage is followed likewise; a versioned
	// package ("linux-image-6.1.0-57-amd64") or "name=version" is used as is.
	KernelPackage string
	// BusyboxBinary is a static busybox; "" = DefaultBusybox.
	BusyboxBinary string
	// Log receives phase progress lines; nil discards them.
	Log io.Writer
}

// Result describes a built (or already present) image.
type Result struct {
	Dir          string
	KernelPath   string
	InitrdPath   string
	RootfsPath   string
	ManifestPath string
	// Digest is the hex SHA-256 of all build inputs (the image's ID).
	Digest   string
	Manifest image.Manifest
	// Cached is true when the image directory already existed and nothing
	// was rebuilt.
	Cached bool
	// LogPath is the full build log (debootstrap, apt, npm output); empty
	// for a cached image.
	LogPath string
}

// Image builds the image for o.Profile (or o.Spec), or returns the
// existing one if an image with the same inputs is already complete in
// o.OutputDir. The image is assembled in a temporary directory next to its
// final place and renamed into place, so an interrupted or failed build
// leaves nothing half-made there.
func Image(ctx context.Context, o Options) (*Result, error) {
	b, err := newBuilder(o)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", o.Profile, err)
	}
	defer b.cleanup()
	for i, s := range b.phases() {
		b.progress.start(i+1, s.name)
		b.logf("=== phase %s", s.name)
		if err := s.run(ctx); err != nil {
			err = fmt.Errorf("build %s: phase %s: %w", b.spec.Name, s.name, err)
			b.logf("FAILED: %v", err)
			if b.logPath != "" {
				b.progress.note("failed; full build log: %s", b.logPath)
			}
			return nil, err
		}
		if b.result != nil {
			break
		}
	}
	if b.result == nil {
		return nil, fmt.Errorf("build %s: no result", b.spec.Name)
	}
	return b.result, nil
}

// phase is one named step of a build.
type phase struct {
	name string
	run  func(context.Context) error
}

// builder carries the state of one build across its phases.
type builder struct {
	opts     Options
	spec     *spec.Spec
	progress *progress

	specDigest  string
	kernel      *kernelArtifact
	busybox     []byte
	busyboxSum  string
	agent       []byte
	agentSum    string
	sources     *aptSources // debootstrap images
	npmRegistry string      // debootstrap images with npm packages
	digest      string
	finalDir    string
	workDir     string
	tree        string // debootstrap: the root tree being assembled
	initrd      image.InitrdManifest
	rootfs      image.RootfsManifest
	claims      claims
	result      *Result
	lock        *fsutil.FileLock
	log         *os.File
	logPath     string
	startedWork time.Time
}

// claims are the manifest's statements about the root filesystem.
type claims struct {
	packages []image.PackageClaim
	npm      []image.PackageClaim
	units    []image.UnitClaim
	files    []image.FileClaim
	users    []image.UserClaim
}

// newBuilder validates the options and fills in defaults.
func newBuilder(o Options) (*builder, error) {
	s := o.Spec
	if s == nil {
		var err error
		if s, err = spec.Resolve(o.Profile); err != nil {
			return nil, err
		}
	}
	s = s.Clone()
	if o.Profile == "" {
		o.Profile = s.Name
	}
	switch {
	case o.AgentBinary == "":
		return nil, errors.New("no agent binary given")
	case o.AgentVersion == "":
		return nil, errors.New("no agent version given")
	case o.OutputDir == "":
		return nil, errors.New("no output directory given")
	}
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir()
	}
	if o.BusyboxBinary == "" {
		o.BusyboxBinary = DefaultBusybox
	}
	var err error
	if o.OutputDir, err = filepath.Abs(o.OutputDir); err != nil {
		return nil, err
	}
	if o.CacheDir, err = filepath.Abs(o.CacheDir); err != nil {
		return nil, err
	}
	b := &builder{opts: o, spec: s}
	if b.specDigest, err = s.Digest(); err != nil {
		return nil, err
	}
	b.progress = newProgress(o.Log, len(b.phases()))
	return b, nil
}

// phases lists the build steps in order. The inputs phase ends the build
// early (b.result set) when the image already exists.
func (b *builder) phases() []phase {
	if b.spec.Base.Kind == spec.BaseDebootstrap {
		return []phase{
			{"kernel", b.phaseKernel},
			{"inputs", b.phaseInputs},
			{"initramfs", b.phaseInitramfs},
			{"base", b.phaseBase},
			{"packages", b.phasePackages},
			{"configure", b.phaseConfigure},
			{"rootfs", b.phaseTreeRootfs},
			{"manifest", b.phaseManifest},
		}
	}
	return []phase{
		{"kernel", b.phaseKernel},
		{"inputs", b.phaseInputs},
		{"initramfs", b.phaseInitramfs},
		{"rootfs", b.phaseRootfs},
		{"manifest", b.phaseManifest},
	}
}

// cleanup removes the temporary work directory (never through a mount
// point) if the build did not publish it, closes the log and releases the
// build lock.
func (b *builder) cleanup() {
	if b.workDir != "" {
		if err := removeTree(b.workDir); err != nil {
			b.progress.note("cleanup: %v", err)
		}
	}
	if b.log != nil {
		_ = b.log.Close()
	}
	if b.lock != nil {
		b.lock.Unlock()
	}
}

// logf writes a line to the build log (if open).
func (b *builder) logf(format string, args ...any) {
	if b.log != nil {
		fmt.Fprintf(b.log, "%s %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
	}
}

// phaseKernel resolves the kernel package and makes sure it is unpacked in
// the cache (download, vmlinux extraction, modules.dep).
func (b *builder) phaseKernel(ctx context.Context) error {
	var pkg kernelPackage
	err := b.progress.task("resolving "+orDefault(b.opts.KernelPackage, defaultKernelMeta), func() error {
		var err error
		pkg, err = resolveKernelPackage(ctx, b.opts.KernelPackage)
		return err
	})
	if err != nil {
		return err
	}
	cache := kernelCache{root: filepath.Join(b.opts.CacheDir, "kernels")}
	if err := os.MkdirAll(cache.root, 0o755); err != nil {
		return err
	}
	b.kernel, err = cache.ensure(ctx, pkg, b.progress)
	return err
}

// phaseInputs hashes the busybox and agent binaries, resolves the package
// sources, computes the digest and returns the existing image if it is
// complete.
func (b *builder) phaseInputs(ctx context.Context) error {
	var err error
	if b.busybox, b.busyboxSum, err = readStaticBinary(b.opts.BusyboxBinary, "busybox"); err != nil {
		return err
	}
	if b.agent, b.agentSum, err = readStaticBinary(b.opts.AgentBinary, "agent"); err != nil {
		return err
	}
	if b.spec.Base.Kind == spec.BaseDebootstrap {
		src, err := resolveSources(b.spec.Base)
		if err != nil {
			return err
		}
		b.sources = &src
		if len(b.spec.NPM) > 0 || b.spec.Node != nil {
			b.npmRegistry = hostNPMRegistry(ctx)
		}
	}
	in := buildInputs{
		Builder:            BuilderVersion,
		Spec:               b.spec,
		SpecDigest:         b.specDigest,
		InitrdModules:      kernel.InitrdModules(),
		InitTemplateSHA256: fsutil.SHA256Hex(initTemplate),
		KernelPackage:      b.kernel.Package,
		KernelVersion:      b.kernel.Version,
		KernelDebSHA256:    b.kernel.DebSHA256,
		BusyboxSHA256:      b.busyboxSum,
		AgentSHA256:        b.agentSum,
		AgentVersion:       b.opts.AgentVersion,
		Sources:            b.sources,
		NPMRegistry:        b.npmRegistry,
	}
	if b.digest, err = in.digest(); err != nil {
		return err
	}
	b.finalDir = filepath.Join(b.opts.OutputDir, b.spec.Name+"-"+b.digest[:16])
	if m, ok := complete(b.finalDir, b.digest); ok { // fast path, no lock
		b.progress.note("digest %s: image present in %s (cached)", b.digest[:16], b.finalDir)
		b.result = newResult(b.finalDir, m, true)
		return nil
	}
	return b.prepareWorkDir(ctx)
}

// prepareWorkDir takes the image's build lock (so concurrent builds of the
// same image run one after the other), returns early if a build finished
// meanwhile, clears debris of interrupted builds, opens the build log and
// creates the temporary work directory next to the final one.
func (b *builder) prepareWorkDir(ctx context.Context) error {
	name := filepath.Base(b.finalDir)
	lock, err := fsutil.LockFile(ctx, filepath.Join(b.opts.OutputDir, "."+name+".lock"))
	if err != nil {
		return err
	}
	b.lock = lock
	if m, ok := complete(b.finalDir, b.digest); ok {
		b.progress.note("digest %s: image present in %s (built concurrently)", b.digest[:16], b.finalDir)
		b.result = newResult(b.finalDir, m, true)
		return nil
	}
	if err := removeStaleTrees(b.finalDir, filepath.Join(b.opts.OutputDir, "."+name+".tmp-*")); err != nil {
		return err
	}
	b.logPath = filepath.Join(b.opts.OutputDir, ".build-"+name+".log")
	if b.log, err = os.OpenFile(b.logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
		return fmt.Errorf("build log: %w", err)
	}
	b.logf("hearth image build %s (spec digest %s, image digest %s, builder %s)", b.spec.Name, b.specDigest, b.digest, BuilderVersion)
	b.progress.note("digest %s: building %s", b.digest[:16], b.finalDir)
	b.progress.note("build log: %s", b.logPath)
	if b.workDir, err = os.MkdirTemp(b.opts.OutputDir, "."+name+".tmp-"); err != nil {
		return err
	}
	b.startedWork = time.Now()
	return os.Chmod(b.workDir, 0o755) // MkdirTemp makes it 0700; images are world-readable
}

// phaseInitramfs writes initrd.img: busybox, /init and the modules.
func (b *builder) phaseInitramfs(ctx context.Context) error {
	db, err := kernel.LoadModuleDB(b.kernel.modulesDir())
	if err != nil {
		return err
	}
	mods, builtin, err := db.Resolve(kernel.InitrdModules())
	if err != nil {
		return err
	}
	if len(builtin) > 0 {
		b.progress.note("built into the kernel, not loaded: %v", builtin)
	}
	spec := initramfsSpec{
		Busybox: b.busybox,
		Release: b.kernel.Release,
		Modules: mods,
		ModDir:  b.kernel.modulesDir(),
		MTime:   reproducibleEpoch,
	}
	return b.progress.task(fmt.Sprintf("writing %s (busybox + %d modules)", image.InitrdFile, len(mods)), func() error {
		sum, size, err := writeInitramfs(filepath.Join(b.workDir, image.InitrdFile), spec)
		if err != nil {
			return err
		}
		b.initrd = image.InitrdManifest{SHA256: sum, Size: size, Modules: kernel.ModuleNames(mods)}
		return nil
	})
}

// imageInfo is the JSON stored in the image at image.GuestImageInfoPath.
func (b *builder) imageInfo() ([]byte, error) {
	info, err := json.MarshalIndent(b.manifestSkeleton().Info(), "", "  ")
	if err != nil {
		return nil, err
	}
	return append(info, '\n'), nil
}

// phaseRootfs writes rootfs.ext4 of a busybox image.
func (b *builder) phaseRootfs(ctx context.Context) error {
	applets, err := busyboxApplets(ctx, b.opts.BusyboxBinary)
	if err != nil {
		return err
	}
	info, err := b.imageInfo()
	if err != nil {
		return err
	}
	spec := rootfsSpec{
		Spec:      b.spec,
		Busybox:   b.busybox,
		Applets:   applets,
		Agent:     b.agent,
		ImageInfo: info,
		UUID:      uuidFromDigest(b.digest, "rootfs-uuid"),
		HashSeed:  uuidFromDigest(b.digest, "rootfs-hash-seed"),
		Epoch:     reproducibleEpoch,
	}
	b.claims = busyboxClaims(b.spec, b.agent)
	dst := filepath.Join(b.workDir, image.RootfsFile)
	desc := fmt.Sprintf("writing %s (%d MiB ext4, %d applets + agent)", image.RootfsFile, b.spec.SizeMiB, len(applets))
	return b.progress.task(desc, func() error {
		scratch, err := os.MkdirTemp(b.workDir, "rootfs-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(scratch)
		if err := writeRootfs(ctx, dst, scratch, spec); err != nil {
			return err
		}
		return b.statRootfs(dst, spec.UUID)
	})
}

// statRootfs records the finished rootfs.ext4 in b.rootfs.
func (b *builder) statRootfs(dst, uuid string) error {
	st, err := fsutil.StatFile(dst)
	if err != nil {
		return err
	}
	b.rootfs = image.RootfsManifest{
		SHA256: st.SHA256, Size: st.Size, DiskSize: st.DiskSize,
		FSType: "ext4", Label: image.RootfsLabel, UUID: uuid,
	}
	return nil
}

// busyboxClaims are the claims of a busybox image: the agent, the spec
// files (its "unit" is the inittab respawn line, claimed as /etc/inittab)
// and the spec's users.
func busyboxClaims(s *spec.Spec, agent []byte) claims {
	files := []image.FileClaim{{Path: image.GuestAgentPath, SHA256: fsutil.SHA256Hex(string(agent)), Mode: 0o755, Size: int64(len(agent))}}
	for _, f := range s.Files {
		data := f.Data()
		files = append(files, image.FileClaim{Path: f.Path, SHA256: fsutil.SHA256Hex(string(data)), Mode: f.Mode.Perm() & 0o777, Size: int64(len(data))})
	}
	sortFileClaims(files)
	users := []image.UserClaim{}
	for _, u := range s.Users {
		users = append(users, image.UserClaim{Name: u.Name, UID: u.UID, Home: u.Home})
	}
	sort.Slice(users, func(i, j int) bool { return users[i].Name < users[j].Name })
	return claims{packages: []image.PackageClaim{}, npm: []image.PackageClaim{}, units: []image.UnitClaim{}, files: files, users: users}
}

// phaseManifest places the kernel, writes manifest.json and publishes the
// work directory under its final name.
func (b *builder) phaseManifest(ctx context.Context) error {
	if err := fsutil.LinkOrCopy(b.kernel.vmlinuxPath(), filepath.Join(b.workDir, image.KernelFile)); err != nil {
		return fmt.Errorf("place kernel: %w", err)
	}
	m := b.manifestSkeleton()
	m.Initrd = b.initrd
	m.Rootfs = b.rootfs
	m.Packages, m.NPM, m.Units, m.Files, m.Users = b.claims.packages, b.claims.npm, b.claims.units, b.claims.files, b.claims.users
	m.BuiltAt = time.Now().UTC().Truncate(time.Second)
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileSync(filepath.Join(b.workDir, image.ManifestFile), append(data, '\n'), 0o644); err != nil {
		return err
	}
	if err := b.publish(); err != nil {
		return err
	}
	b.progress.note("image %s ready in %s", filepath.Base(b.finalDir), formatDuration(time.Since(b.startedWork)))
	b.logf("image %s published", b.finalDir)
	b.result = newResult(b.finalDir, &m, false)
	b.result.LogPath = b.logPath
	return nil
}

// publish renames the work directory to its final name. The build lock is
// held and stale directories were cleared, so the name is free.
func (b *builder) publish() error {
	if err := fsutil.SyncDir(b.workDir); err != nil {
		return err
	}
	if err := os.Rename(b.workDir, b.finalDir); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	b.workDir = ""
	return fsutil.SyncDir(b.opts.OutputDir)
}

// manifestSkeleton is the manifest minus initrd, rootfs, claims and build
// time.
func (b *builder) manifestSkeleton() image.Manifest {
	return image.Manifest{
		SchemaVersion: image.ManifestSchemaVersion,
		Profile:       b.spec.Name,
		Role:          b.spec.Role,
		RequiredPorts: b.spec.Ports,
		Digest:        b.digest,
		SpecDigest:    b.specDigest,
		Kernel: image.KernelManifest{
			Package:   b.kernel.Package,
			Version:   b.kernel.Version,
			Release:   b.kernel.Release,
			DebSHA256: b.kernel.DebSHA256,
			SHA256:    b.kernel.VmlinuxSHA256,
			Size:      b.kernel.VmlinuxSize,
		},
		Agent:   image.AgentManifest{Version: b.opts.AgentVersion, SHA256: b.agentSum, Path: image.GuestAgentPath},
		Busybox: image.BusyboxManifest{SHA256: b.busyboxSum},
		Builder: BuilderVersion,
	}
}

// complete reports whether dir holds a finished image for digest: a
// readable manifest with that digest and every file present at its
// recorded size. (Contents are not hashed; see image.Manifest.Verify.)
func complete(dir, digest string) (*image.Manifest, bool) {
	m, err := image.ReadManifest(dir)
	if err != nil || m.Digest != digest {
		return nil, false
	}
	for _, f := range m.FileDigests() {
		st, err := os.Stat(filepath.Join(dir, f.Name))
		if err != nil || !st.Mode().IsRegular() || st.Size() != f.Size {
			return nil, false
		}
	}
	return m, true
}

// newResult describes the image in dir.
func newResult(dir string, m *image.Manifest, cached bool) *Result {
	return &Result{
		Dir:          dir,
		KernelPath:   filepath.Join(dir, image.KernelFile),
		InitrdPath:   filepath.Join(dir, image.InitrdFile),
		RootfsPath:   filepath.Join(dir, image.RootfsFile),
		ManifestPath: filepath.Join(dir, image.ManifestFile),
		Digest:       m.Digest,
		Manifest:     *m,
		Cached:       cached,
	}
}

// readStaticBinary reads an executable that must run without a dynamic
// loader (the images have no libc) and returns it with its hex SHA-256.
func readStaticBinary(path, what string) ([]byte, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("%s binary: %w", what, err)
	}
	if err := checkStaticELF(data); err != nil {
		return nil, "", fmt.Errorf("%s binary %s: %w", what, path, err)
	}
	return data, fsutil.SHA256Hex(string(data)), nil
}

// checkStaticELF verifies that data is an x86-64 ELF executable without a
// program interpreter (i.e. statically linked).
func checkStaticELF(data []byte) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an elf executable: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("elf machine %v, want %v", f.Machine, elf.EM_X86_64)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (has an ELF interpreter); a static binary is required")
		}
	}
	return nil
}

// orDefault returns s, or def when s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
