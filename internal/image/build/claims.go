package build

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/spec"
)

// dpkgPackages lists the packages installed in the tree per its dpkg
// status file ("install ok installed"), sorted by name. Multi-arch
// packages keep their plain name.
func dpkgPackages(tree string) ([]image.PackageClaim, error) {
	data, err := os.ReadFile(filepath.Join(tree, "var/lib/dpkg/status"))
	if err != nil {
		return nil, fmt.Errorf("read dpkg status: %w", err)
	}
	return parseDpkgStatus(data), nil
}

// parseDpkgStatus extracts installed packages from a dpkg status file.
func parseDpkgStatus(data []byte) []image.PackageClaim {
	claims := []image.PackageClaim{}
	for _, stanza := range bytes.Split(data, []byte("\n\n")) {
		f := parseControlStanza(stanza)
		if f["Package"] == "" || f["Status"] != "install ok installed" {
			continue
		}
		claims = append(claims, image.PackageClaim{Name: f["Package"], Version: f["Version"]})
	}
	sort.Slice(claims, func(i, j int) bool { return claims[i].Name < claims[j].Name })
	return claims
}

// fileClaim hashes the regular file at guest path p in the tree. Symlinks
// are resolved inside the tree; the claim names the file itself.
func fileClaim(tree, p string) (image.FileClaim, error) {
	g, err := resolveInTree(tree, p, true)
	if err != nil {
		return image.FileClaim{}, fmt.Errorf("claim %s: %w", p, err)
	}
	host := filepath.Join(tree, filepath.FromSlash(g))
	var st unix.Stat_t
	if err := unix.Lstat(host, &st); err != nil {
		return image.FileClaim{}, fmt.Errorf("claim %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return image.FileClaim{}, fmt.Errorf("claim %s: %s is not a regular file", p, g)
	}
	sum, err := fsutil.SHA256File(host)
	if err != nil {
		return image.FileClaim{}, fmt.Errorf("claim %s: %w", p, err)
	}
	return image.FileClaim{Path: g, SHA256: sum, Mode: fs.FileMode(st.Mode & 0o7777), Size: st.Size}, nil
}

// fileClaims claims every path (deduplicated by resolved path, sorted).
func fileClaims(tree string, paths []string) ([]image.FileClaim, error) {
	seen := map[string]bool{}
	claims := []image.FileClaim{}
	for _, p := range paths {
		c, err := fileClaim(tree, p)
		if err != nil {
			return nil, err
		}
		if !seen[c.Path] {
			seen[c.Path] = true
			claims = append(claims, c)
		}
	}
	sort.Slice(claims, func(i, j int) bool { return claims[i].Path < claims[j].Path })
	return claims, nil
}

// userClaims checks the spec's users against the tree's /etc/passwd and
// returns their claims, sorted by name.
func userClaims(tree string, users []spec.User) ([]image.UserClaim, error) {
	accounts, err := treeAccounts(tree)
	if err != nil {
		return nil, err
	}
	claims := []image.UserClaim{}
	for _, u := range users {
		a, ok := accounts[u.Name]
		if !ok || a.uid != u.UID || a.home != u.Home {
			return nil, fmt.Errorf("user %s: /etc/passwd has %+v, spec wants uid %d home %s", u.Name, a, u.UID, u.Home)
		}
		claims = append(claims, image.UserClaim{Name: u.Name, UID: u.UID, Home: u.Home})
	}
	sort.Slice(claims, func(i, j int) bool { return claims[i].Name < claims[j].Name })
	return claims, nil
}

// treeUsage sums the allocated bytes and counts the inodes below dir
// (hard links counted once).
func treeUsage(dir string) (bytes int64, inodes int, err error) {
	seen := map[[2]uint64]bool{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		key := [2]uint64{st.Dev, st.Ino}
		if seen[key] {
			return nil
		}
		seen[key] = true
		inodes++
		bytes += st.Blocks * 512
		return nil
	})
	return bytes, inodes, err
}
