package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/hearth-project/hearth/internal/image"
)

// baseTreeFormat versions the cached debootstrap trees (independently of
// BuilderVersion, so builder changes do not force a new debootstrap).
const baseTreeFormat = "hearth-debootstrap/1"

// phaseBase copies the cached bare debootstrap tree (made on first use)
// into the work directory.
func (b *builder) phaseBase(ctx context.Context) error {
	include := slices.Clone(b.spec.Base.Include)
	sort.Strings(include)
	key := baseTreeKey{Builder: baseTreeFormat, Sources: *b.sources, Variant: b.spec.Base.Variant, Include: include}
	cached, err := ensureBaseTree(ctx, b.opts.CacheDir, key, b.progress, b.log)
	if err != nil {
		return err
	}
	b.tree = filepath.Join(b.workDir, "tree")
	return b.progress.task("copying the base tree (cp -a --reflink=auto)", func() error {
		return copyTree(ctx, cached, b.tree)
	})
}

// phasePackages installs the spec's Debian packages, the Node.js runtime
// and the npm packages inside the tree, with /proc, /sys and /dev mounted
// only for this phase.
func (b *builder) phasePackages(ctx context.Context) (err error) {
	if err := b.prepareChroot(); err != nil {
		return err
	}
	c := &chroot{dir: b.tree, log: b.log}
	if err := c.mount(); err != nil {
		return err
	}
	defer func() {
		if uerr := c.unmount(); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount: %w", uerr))
		}
	}()
	desc := fmt.Sprintf("apt-get install %d packages", len(b.spec.Packages))
	if err := b.progress.long(desc, func(m *meter) error { return aptInstall(ctx, c, b.spec.Packages, m) }); err != nil {
		return err
	}
	return b.installNPM(ctx, c)
}

// prepareChroot writes what the chroot needs before packages go in: apt
// sources, a policy-rc.d that keeps services from starting, DNS, hosts and
// hostname.
func (b *builder) prepareChroot() error {
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("build host resolv.conf (the chroot needs DNS): %w", err)
	}
	files := []struct {
		path string
		data string
		mode os.FileMode
	}{
		{"/etc/apt/sources.list", b.sources.list(), 0o644},
		{"/usr/sbin/policy-rc.d", policyRcD, 0o755},
		{"/etc/resolv.conf", string(resolv), 0o644},
		{"/etc/hosts", hostsFile(b.spec.Hostname), 0o644},
		{"/etc/hostname", b.spec.Hostname + "\n", 0o644},
	}
	for _, f := range files {
		if err := writeTreeFile(b.tree, f.path, []byte(f.data), f.mode, 0, 0); err != nil {
			return err
		}
	}
	return nil
}

// installNPM installs the Node.js runtime (spec node) and the spec's npm
// packages.
func (b *builder) installNPM(ctx context.Context, c *chroot) error {
	if b.spec.Node == nil && len(b.spec.NPM) == 0 {
		return nil
	}
	env := npmEnv(b.npmRegistry)
	caEnv, err := stageHostCA(b.tree)
	if err != nil {
		return err
	}
	env = append(env, caEnv...)
	if n := b.spec.Node; n != nil {
		desc := fmt.Sprintf("node %s + npm %s from the npm registry", n.Version, n.NPM)
		err := b.progress.task(desc, func() error {
			nodeTgz, npmTgz, err := fetchNodeRuntime(ctx, b.opts.CacheDir, n)
			if err != nil {
				return err
			}
			return installNodeRuntime(ctx, c, nodeTgz, npmTgz, env)
		})
		if err != nil {
			return err
		}
	}
	desc := fmt.Sprintf("npm install --global %d packages", len(b.spec.NPM))
	return b.progress.task(desc, func() error { return npmInstall(ctx, c, b.spec.NPM, env) })
}

// phaseConfigure turns the tree into a hearth guest: users, files, the
// agent and its unit, enabled and masked units, per-machine files, and
// the manifest claims; then it trims caches and logs.
func (b *builder) phaseConfigure(ctx context.Context) error {
	c := &chroot{dir: b.tree, log: b.log}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"users", func() error { return addUsers(ctx, c, b.spec.Users) }},
		{"system files", b.writeSystemFiles},
		{"spec files", func() error { return writeSpecFiles(b.tree, b.spec.Files) }},
		{"agent", b.installAgent},
		{"units", b.configureUnits},
		{"claims", b.collectClaims},
		{"trim", func() error { return trimTree(b.tree) }},
	}
	for _, s := range steps {
		if err := b.progress.task(s.name, s.fn); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	cl := b.claims
	b.progress.note("claims: %d packages, %d npm packages, %d units, %d files, %d users", len(cl.packages), len(cl.npm), len(cl.units), len(cl.files), len(cl.users))
	return nil
}

// writeSystemFiles writes the per-image system files: hostname, hosts,
// an empty machine-id (systemd makes one at boot), an empty resolv.conf
// (the agent writes it), the ConditionNeedsUpdate stamps, limits and the
// image info; and pins /etc/shadow's dates.
func (b *builder) writeSystemFiles() error {
	info, err := b.imageInfo()
	if err != nil {
		return err
	}
	files := map[string]string{
		"/etc/hostname":          b.spec.Hostname + "\n",
		"/etc/hosts":             hostsFile(b.spec.Hostname),
		"/etc/machine-id":        "",
		"/etc/resolv.conf":       "",
		"/etc/.updated":          updatedStamp,
		"/var/.updated":          updatedStamp,
		image.GuestImageInfoPath: string(info),
	}
	for p, content := range limitsFiles(b.spec.Limits) {
		files[p] = content
	}
	for _, p := range sortedKeys(files) {
		if err := writeTreeFile(b.tree, p, []byte(files[p]), 0o644, 0, 0); err != nil {
			return err
		}
	}
	return normaliseShadow(b.tree)
}

// installAgent places the agent binary and its unit, enabled for
// multi-user.target.
func (b *builder) installAgent() error {
	if err := writeTreeFile(b.tree, image.GuestAgentPath, b.agent, 0o755, 0, 0); err != nil {
		return err
	}
	return writeTreeFile(b.tree, "/etc/systemd/system/"+image.GuestAgentUnit, []byte(agentUnit), 0o644, 0, 0)
}

// configureUnits enables the agent and the spec's units and masks the
// default and the spec's masked units.
func (b *builder) configureUnits() error {
	sd := systemdConfig{tree: b.tree}
	for _, u := range append([]string{image.GuestAgentUnit}, b.spec.Units.Enable...) {
		if err := sd.enable(u); err != nil {
			return err
		}
	}
	for _, u := range append(slices.Clone(defaultMasks), b.spec.Units.Mask...) {
		if slices.Contains(b.spec.Units.Enable, u) {
			continue // the spec's enable wins over a default mask
		}
		if err := sd.mask(u); err != nil {
			return fmt.Errorf("mask %s: %w", u, err)
		}
	}
	return nil
}

// collectClaims records packages, npm packages, units, files and users.
func (b *builder) collectClaims() error {
	var err error
	cl := claims{}
	if cl.packages, err = dpkgPackages(b.tree); err != nil {
		return err
	}
	var bins []string
	if cl.npm, bins, err = npmClaims(b.tree, b.spec); err != nil {
		return err
	}
	if cl.units, err = (systemdConfig{tree: b.tree}).unitClaims(); err != nil {
		return err
	}
	paths := []string{image.GuestAgentPath}
	for _, f := range b.spec.Files {
		paths = append(paths, f.Path)
	}
	paths = append(paths, b.spec.KeyFiles...)
	paths = append(paths, bins...)
	if cl.files, err = fileClaims(b.tree, paths); err != nil {
		return err
	}
	if cl.users, err = userClaims(b.tree, b.spec.Users); err != nil {
		return err
	}
	b.claims = cl
	return nil
}

// phaseTreeRootfs makes rootfs.ext4 from the tree, then deletes the tree.
func (b *builder) phaseTreeRootfs(ctx context.Context) error {
	dst := filepath.Join(b.workDir, image.RootfsFile)
	f := treeFS{
		SizeMiB:  b.spec.SizeMiB,
		UUID:     uuidFromDigest(b.digest, "rootfs-uuid"),
		HashSeed: uuidFromDigest(b.digest, "rootfs-hash-seed"),
		Epoch:    reproducibleEpoch,
	}
	desc := fmt.Sprintf("writing %s (%d MiB ext4, mkfs.ext4 -d)", image.RootfsFile, b.spec.SizeMiB)
	err := b.progress.long(desc, func(m *meter) error {
		skipped, err := writeTreeRootfs(ctx, dst, b.tree, b.workDir, f, m)
		if err != nil {
			return err
		}
		if skipped > 0 {
			b.progress.note("%d paths with names debugfs cannot quote keep their build-time timestamps", skipped)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := removeTree(b.tree); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(b.workDir, "debugfs-times.cmd"))
	return b.statRootfs(dst, f.UUID)
}

// sortFileClaims sorts claims by path.
func sortFileClaims(c []image.FileClaim) {
	sort.Slice(c, func(i, j int) bool { return c[i].Path < c[j].Path })
}

// sortedKeys returns a map's keys, sorted.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
