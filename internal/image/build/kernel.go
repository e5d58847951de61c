package build

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/internal/hostcmd"
	"github.com/hearth-project/hearth/internal/image/kernel"
)

// defaultKernelMeta is the Debian metapackage whose dependency names the
// current kernel image package.
const defaultKernelMeta = "linux-image-amd64"

// versionedKernelRE matches a concrete kernel image package such as
// linux-image-6.1.0-57-amd64 (as opposed to a metapackage).
var versionedKernelRE = regexp.MustCompile(`^linux-image-[0-9]`)

// kernelPackage identifies one exact kernel .deb.
type kernelPackage struct {
	Name    string // e.g. linux-image-6.1.0-57-amd64
	Version string // Debian version, e.g. 6.1.192-3
}

// String renders the package as apt's "name=version".
func (k kernelPackage) String() string { return k.Name + "=" + k.Version }

// cacheKey is the package's directory name in the kernel cache.
func (k kernelPackage) cacheKey() string {
	return strings.NewReplacer("/", "_", ":", "%3a").Replace(k.Name + "_" + k.Version)
}

// kernelArtifact is a kernel package unpacked in the cache: the .deb, the
// ELF vmlinux extracted from its bzImage, and its module tree (with a
// modules.dep). Its JSON form is the cache entry's kernel.json.
type kernelArtifact struct {
	Package       string `json:"package"`
	Version       string `json:"version"`
	Deb           string `json:"deb"` // file name of the .deb inside the entry
	DebSHA256     string `json:"deb_sha256"`
	Release       string `json:"release"` // kernel release (uname -r)
	VmlinuxSHA256 string `json:"vmlinux_sha256"`
	VmlinuxSize   int64  `json:"vmlinux_size"`

	dir string // the cache entry directory
}

// Names inside a kernel cache entry.
const (
	kernelInfoFile   = "kernel.json"
	kernelVmlinux    = "vmlinux"
	kernelVmlinuz    = "vmlinuz"
	kernelModulesDir = "modules"
)

func (k *kernelArtifact) vmlinuxPath() string { return filepath.Join(k.dir, kernelVmlinux) }

// modulesDir is the lib/modules/<release> directory of the kernel.
func (k *kernelArtifact) modulesDir() string {
	return filepath.Join(k.dir, kernelModulesDir, k.Release)
}

// resolveKernelPackage turns Options.KernelPackage into an exact
// package and version using the local apt lists (no network):
//
//	""                                     -> what linux-image-amd64 depends on
//	"linux-image-amd64"                    -> same (any metapackage is followed)
//	"linux-image-6.1.0-57-amd64"           -> that package's candidate version
//	"linux-image-6.1.0-57-amd64=6.1.192-3" -> exactly that
//
// A metapackage's "Depends: linux-image-X (= V)" gives both name and version
// in one apt-cache call (each call costs about half a second).
func resolveKernelPackage(ctx context.Context, spec string) (kernelPackage, error) {
	if spec == "" {
		spec = defaultKernelMeta
	}
	name, version, _ := strings.Cut(spec, "=")
	if !versionedKernelRE.MatchString(name) {
		meta, err := aptShow(ctx, spec)
		if err != nil {
			return kernelPackage{}, err
		}
		dep, depVersion := kernelDependency(meta["Depends"])
		if dep == "" {
			return kernelPackage{}, fmt.Errorf("resolve %s: no linux-image-<version> package in Depends %q", spec, meta["Depends"])
		}
		if depVersion != "" {
			return kernelPackage{Name: dep, Version: depVersion}, nil
		}
		name, version = dep, ""
	}
	query := name
	if version != "" {
		query = name + "=" + version
	}
	fields, err := aptShow(ctx, query)
	if err != nil {
		return kernelPackage{}, err
	}
	if fields["Version"] == "" {
		return kernelPackage{}, fmt.Errorf("apt-cache show %s: no Version field", query)
	}
	return kernelPackage{Name: name, Version: fields["Version"]}, nil
}

// kernelDependency picks the first versioned kernel image package from a
// Debian Depends field and, if the relation is "=", its exact version:
//
//	"linux-image-6.1.0-57-amd64 (= 6.1.192-3)" -> ("linux-image-6.1.0-57-amd64", "6.1.192-3")
func kernelDependency(depends string) (name, version string) {
	for _, rel := range strings.FieldsFunc(depends, func(r rune) bool { return r == ',' || r == '|' }) {
		pkg, constraint, _ := strings.Cut(strings.TrimSpace(rel), "(")
		pkg = strings.TrimSpace(pkg)
		pkg, _, _ = strings.Cut(pkg, ":") // drop an architecture qualifier
		if !versionedKernelRE.MatchString(pkg) {
			continue
		}
		constraint = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(constraint), ")"))
		if v, ok := strings.CutPrefix(constraint, "="); ok {
			return pkg, strings.TrimSpace(v)
		}
		return pkg, ""
	}
	return "", ""
}

// aptShow returns the fields of the first stanza of
// `apt-cache show --no-all-versions query`.
func aptShow(ctx context.Context, query string) (map[string]string, error) {
	out, err := hostcmd.Run(ctx, hostcmd.Command{Name: "apt-cache", Args: []string{"show", "--no-all-versions", query}})
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w (has `apt-get update` been run?)", query, err)
	}
	return parseControlStanza(out), nil
}

// parseControlStanza parses the simple "Key: value" lines of the first
// Debian control stanza (continuation lines are ignored).
func parseControlStanza(out []byte) map[string]string {
	fields := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

// kernelCache stores unpacked kernel packages under <CacheDir>/kernels.
type kernelCache struct {
	root string
}

// lookup returns the cache entry for pkg if it is complete.
func (c kernelCache) lookup(pkg kernelPackage) (*kernelArtifact, bool) {
	dir := filepath.Join(c.root, pkg.cacheKey())
	data, err := os.ReadFile(filepath.Join(dir, kernelInfoFile))
	if err != nil {
		return nil, false
	}
	var k kernelArtifact
	if err := json.Unmarshal(data, &k); err != nil || k.Package != pkg.Name || k.Version != pkg.Version {
		return nil, false
	}
	k.dir = dir
	for _, p := range []string{k.vmlinuxPath(), filepath.Join(k.modulesDir(), "modules.dep"), filepath.Join(dir, k.Deb)} {
		if _, err := os.Stat(p); err != nil {
			return nil, false
		}
	}
	return &k, true
}

// ensure returns the cache entry for pkg, downloading and unpacking the
// package if needed. Concurrent callers serialise on a lock file; the entry
// is assembled in a temporary directory and renamed into place.
func (c kernelCache) ensure(ctx context.Context, pkg kernelPackage, p *progress) (*kernelArtifact, error) {
	if k, ok := c.lookup(pkg); ok {
		p.note("%s %s (cached)", pkg.Name, pkg.Version)
		return k, nil
	}
	lock, err := fsutil.LockFile(ctx, filepath.Join(c.root, pkg.cacheKey()+".lock"))
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	if k, ok := c.lookup(pkg); ok { // built while we waited
		p.note("%s %s (cached)", pkg.Name, pkg.Version)
		return k, nil
	}
	final := filepath.Join(c.root, pkg.cacheKey())
	// Under the lock, anything already there for this key is debris of an
	// interrupted run: an incomplete entry or temporary directories.
	if err := fsutil.RemoveStale(final, filepath.Join(c.root, "."+pkg.cacheKey()+".tmp-*")); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(c.root, "."+pkg.cacheKey()+".tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, err
	}
	k, err := fetchKernel(ctx, pkg, tmp, p)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("publish kernel cache entry: %w", err)
	}
	k.dir = final
	return k, nil
}

// fetchKernel downloads pkg into dir and unpacks it into a complete cache
// entry (kernel.json written last).
func fetchKernel(ctx context.Context, pkg kernelPackage, dir string, p *progress) (*kernelArtifact, error) {
	k := &kernelArtifact{Package: pkg.Name, Version: pkg.Version, dir: dir}
	var deb string
	err := p.task("downloading "+pkg.Name+" "+pkg.Version, func() error {
		var err error
		deb, err = aptDownload(ctx, pkg, dir)
		if err != nil {
			return err
		}
		k.Deb = filepath.Base(deb)
		k.DebSHA256, err = fsutil.SHA256File(deb)
		return err
	})
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "root")
	err = p.task("unpacking "+k.Deb, func() error {
		if _, err := hostcmd.Run(ctx, hostcmd.Command{Name: "dpkg-deb", Args: []string{"-x", deb, root}}); err != nil {
			return err
		}
		return adoptKernelTree(k, root)
	})
	if err != nil {
		return nil, err
	}
	if err := p.task("extracting vmlinux from vmlinuz-"+k.Release, func() error { return writeVmlinux(k) }); err != nil {
		return nil, err
	}
	if err := ensureModulesDep(k.modulesDir(), p); err != nil {
		return nil, err
	}
	info, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileSync(filepath.Join(dir, kernelInfoFile), append(info, '\n'), 0o644); err != nil {
		return nil, err
	}
	return k, nil
}

// aptDownload runs `apt-get download name=version` in dir and returns the
// path of the downloaded .deb.
func aptDownload(ctx context.Context, pkg kernelPackage, dir string) (string, error) {
	dl := filepath.Join(dir, "download")
	if err := os.Mkdir(dl, 0o755); err != nil {
		return "", err
	}
	if _, err := hostcmd.Run(ctx, hostcmd.Command{Name: "apt-get", Args: []string{"download", "-q", pkg.String()}, Dir: dl}); err != nil {
		return "", err
	}
	debs, err := filepath.Glob(filepath.Join(dl, "*.deb"))
	if err != nil {
		return "", err
	}
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s: expected one .deb, found %d", pkg, len(debs))
	}
	final := filepath.Join(dir, filepath.Base(debs[0]))
	if err := os.Rename(debs[0], final); err != nil {
		return "", err
	}
	return final, os.Remove(dl)
}

// adoptKernelTree moves the pieces of an unpacked kernel package at root
// into the cache entry layout (vmlinuz, modules/<release>) and deletes the
// rest. It sets k.Release.
func adoptKernelTree(k *kernelArtifact, root string) error {
	vmlinuz, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return err
	}
	if len(vmlinuz) != 1 {
		return fmt.Errorf("package %s: expected one boot/vmlinuz-*, found %d", k.Package, len(vmlinuz))
	}
	k.Release = strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	mods, err := findModulesTree(root, k.Release)
	if err != nil {
		return err
	}
	if err := os.Rename(vmlinuz[0], filepath.Join(k.dir, kernelVmlinuz)); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(k.dir, kernelModulesDir), 0o755); err != nil {
		return err
	}
	if err := os.Rename(mods, k.modulesDir()); err != nil {
		return err
	}
	return os.RemoveAll(root)
}

// findModulesTree locates lib/modules/<release> (or usr/lib/... on a
// merged-/usr package) in an unpacked kernel package.
func findModulesTree(root, release string) (string, error) {
	for _, base := range []string{"lib", "usr/lib"} {
		dir := filepath.Join(root, base, "modules", release)
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no lib/modules/%s in package", release)
}

// writeVmlinux extracts the ELF vmlinux from the entry's vmlinuz.
func writeVmlinux(k *kernelArtifact) error {
	bz, err := os.ReadFile(filepath.Join(k.dir, kernelVmlinuz))
	if err != nil {
		return err
	}
	elf, err := kernel.ExtractVmlinux(bz)
	if err != nil {
		return fmt.Errorf("vmlinuz-%s: %w", k.Release, err)
	}
	if err := fsutil.WriteFileSync(k.vmlinuxPath(), elf, 0o644); err != nil {
		return err
	}
	k.VmlinuxSHA256, k.VmlinuxSize = fsutil.SHA256Hex(string(elf)), int64(len(elf))
	return nil
}

// ensureModulesDep writes modules.dep into a module tree that lacks one.
func ensureModulesDep(dir string, p *progress) error {
	depFile := filepath.Join(dir, "modules.dep")
	if _, err := os.Stat(depFile); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return p.task("generating modules.dep from module metadata", func() error {
		dep, err := kernel.GenerateModulesDep(dir)
		if err != nil {
			return err
		}
		return fsutil.WriteFileSync(depFile, dep, 0o644)
	})
}
