package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// resolveInTree resolves the guest path p inside the root tree: symlinks
// are followed as the guest would follow them (absolute targets start
// again at the tree's root, never the host's). With followLast false the
// last component is not followed. Components that do not exist are kept
// as they are. It returns a clean guest path.
func resolveInTree(tree, p string, followLast bool) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("path %q is not absolute", p)
	}
	resolved := "/"
	rest := strings.Split(strings.Trim(path.Clean(p), "/"), "/")
	for hops := 0; len(rest) > 0; {
		name := rest[0]
		rest = rest[1:]
		if name == "" || name == "." {
			continue
		}
		if name == ".." {
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, name)
		if len(rest) == 0 && !followLast {
			return next, nil
		}
		st, err := os.Lstat(filepath.Join(tree, filepath.FromSlash(next)))
		if errors.Is(err, fs.ErrNotExist) {
			return path.Join(append([]string{next}, rest...)...), nil
		}
		if err != nil {
			return "", err
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("path %s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(tree, filepath.FromSlash(next)))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			resolved = "/"
		}
		rest = append(strings.Split(strings.Trim(target, "/"), "/"), rest...)
	}
	return resolved, nil
}

// treePath maps a guest path to the host path inside the tree, resolving
// symlinks in its directories (not in its last component) within the tree.
func treePath(tree, p string) (string, error) {
	g, err := resolveInTree(tree, p, false)
	if err != nil {
		return "", err
	}
	return filepath.Join(tree, filepath.FromSlash(g)), nil
}
