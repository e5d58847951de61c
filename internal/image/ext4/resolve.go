package ext4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"syscall"
)

// ext4MaxRounds bounds the debugfs runs one ResolveAll may take. Each round
// settles at least one new path component for every unfinished request, so
// real images need two or three.
const ext4MaxRounds = 256

// Request asks for one path: lstat (Follow false) or stat (Follow true).
type Request struct {
	Path   string
	Follow bool
}

// Resolved is the answer to a Request.
type Resolved struct {
	// Final is the path the request ended at, every symlink on the way
	// substituted (on error: the path where the walk stopped).
	Final string
	Inode Inode
	// Via lists the symlinks followed, in order.
	Via []string
	Err error
}

// ext4Lookup is what one debugfs stat said about one path.
type ext4Lookup struct {
	ino Inode
	err error
}

// ext4Resolver walks paths component by component over a cache of lookups,
// batching the missing ones into debugfs runs. It only ever looks up a name
// inside a directory it has itself established, so debugfs never follows a
// symlink on its behalf and every symlink is resolved here, in the image's
// name space ("/" is the image's root, ".." of the root is the root).
type ext4Resolver struct {
	im    *Image
	cache map[string]ext4Lookup
}

// ResolveAll answers every request. Invalid paths and missing files are
// answered per request (Resolved.Err); the error is for failures of the
// image or debugfs as a whole.
func (im *Image) ResolveAll(ctx context.Context, reqs []Request) ([]Resolved, error) {
	rs := &ext4Resolver{im: im, cache: map[string]ext4Lookup{}}
	out := make([]Resolved, len(reqs))
	var pending []int
	for i, r := range reqs {
		if err := CheckPath(r.Path); err != nil {
			out[i] = Resolved{Final: r.Path, Err: &fs.PathError{Op: "resolve", Path: r.Path, Err: err}}
			continue
		}
		pending = append(pending, i)
	}
	for round := 0; len(pending) > 0; round++ {
		if round == ext4MaxRounds {
			return nil, fmt.Errorf("resolve: gave up after %d rounds", round)
		}
		need := map[string]bool{}
		var still []int
		for _, i := range pending {
			res, missing := rs.walk(path.Clean(reqs[i].Path), reqs[i].Follow)
			if len(missing) == 0 {
				out[i] = res
				continue
			}
			for _, p := range missing {
				need[p] = true
			}
			still = append(still, i)
		}
		if err := rs.fetch(ctx, need); err != nil {
			return nil, err
		}
		pending = still
	}
	return out, nil
}

// walk resolves p against the cache. It returns the paths to look up when
// the cache does not reach far enough.
func (rs *ext4Resolver) walk(p string, follow bool) (Resolved, []string) {
	queue := ext4SplitPath(p)
	cur, links := "/", 0
	var via []string
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		if c == "." {
			continue
		}
		if c == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		lk, ok := rs.cache[next]
		if !ok {
			return Resolved{}, rs.prefetch(next, queue)
		}
		if lk.err != nil {
			return Resolved{Final: next, Via: via, Err: &fs.PathError{Op: "resolve", Path: next, Err: lk.err}}, nil
		}
		switch {
		case lk.ino.Type == InodeSymlink && (follow || len(queue) > 0):
			links++
			if links > ext4MaxSymlinks {
				return Resolved{Final: next, Via: via, Err: &fs.PathError{Op: "resolve", Path: p, Err: syscall.ELOOP}}, nil
			}
			if lk.ino.LinkTarget == "" {
				return Resolved{Final: next, Via: via, Err: &fs.PathError{Op: "resolve", Path: next, Err: fs.ErrNotExist}}, nil
			}
			via = append(via, next)
			if strings.HasPrefix(lk.ino.LinkTarget, "/") {
				cur = "/"
			}
			queue = append(ext4SplitPath(lk.ino.LinkTarget), queue...)
		case lk.ino.Type == InodeDir || len(queue) == 0:
			cur = next
		default:
			return Resolved{Final: next, Via: via, Err: &fs.PathError{Op: "resolve", Path: next, Err: syscall.ENOTDIR}}, nil
		}
	}
	lk, ok := rs.cache[cur]
	if !ok {
		return Resolved{}, []string{cur}
	}
	return Resolved{Final: cur, Inode: lk.ino, Via: via, Err: ext4PathErr(cur, lk.err)}, nil
}

// ext4PathErr wraps err (if any) with the path.
func ext4PathErr(p string, err error) error {
	if err == nil {
		return nil
	}
	return &fs.PathError{Op: "resolve", Path: p, Err: err}
}

// prefetch returns next and the deeper paths the rest of the walk will
// probably need (up to the first "." or ".."), so that a path whose
// directories hold no symlinks is resolved in one round. Entries fetched
// for a path that turns out to run through a symlink are never consulted.
func (rs *ext4Resolver) prefetch(next string, rest []string) []string {
	paths := []string{next}
	p := next
	for _, c := range rest {
		if c == "." || c == ".." || len(paths) == 64 {
			break
		}
		p = path.Join(p, c)
		if _, ok := rs.cache[p]; !ok {
			paths = append(paths, p)
		}
	}
	return paths
}

// ext4SplitPath splits a path (or symlink target) into its non-empty
// components.
func ext4SplitPath(p string) []string {
	var parts []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			parts = append(parts, c)
		}
	}
	return parts
}

// fetch stats the paths in one debugfs run and caches the answers; slow
// symlinks' targets are read in a second run.
func (rs *ext4Resolver) fetch(ctx context.Context, need map[string]bool) error {
	var paths []string
	for p := range need {
		if err := CheckPath(p); err != nil {
			rs.cache[p] = ext4Lookup{err: err} // e.g. a symlink target with a quote
			continue
		}
		paths = append(paths, p)
	}
	sort.Strings(paths)
	cmds := make([]string, len(paths))
	for i, p := range paths {
		cmds[i] = "stat " + ext4Quote(p)
	}
	outs, lines, err := rs.im.batch(ctx, cmds)
	if err != nil {
		return err
	}
	var slow []string
	for i, p := range paths {
		ino, needsTarget, ok, err := ext4ParseStat(outs[i])
		switch {
		case err != nil:
			return fmt.Errorf("stat %s: %w", p, err)
		case !ok:
			rs.cache[p] = ext4Lookup{err: ext4LookupError(ext4PathMessage(lines, p))}
		default:
			rs.cache[p] = ext4Lookup{ino: ino}
			if needsTarget {
				slow = append(slow, p)
			}
		}
	}
	return rs.readSlowTargets(ctx, slow)
}

// readSlowTargets fills in the targets of symlinks too long to be stored
// in the inode, by dumping their data blocks.
func (rs *ext4Resolver) readSlowTargets(ctx context.Context, paths []string) error {
	var kept []string
	var inodes []Inode
	for _, p := range paths {
		ino := rs.cache[p].ino
		if ino.Size <= 0 || ino.Size > ext4MaxPathLen {
			rs.cache[p] = ext4Lookup{err: fmt.Errorf("symlink target of %d bytes", ino.Size)}
			continue
		}
		kept, inodes = append(kept, p), append(inodes, ino)
	}
	err := rs.im.ReadInodes(ctx, inodes, func(i int, r io.Reader, err error) error {
		l := rs.cache[kept[i]]
		if err == nil {
			var b []byte
			b, err = io.ReadAll(r)
			l.ino.LinkTarget = string(b)
		}
		if err != nil {
			l = ext4Lookup{err: err}
		}
		rs.cache[kept[i]] = l
		return nil
	})
	if err != nil {
		return fmt.Errorf("read symlink targets: %w", err)
	}
	return nil
}

// IsNotExist reports whether a resolve error means a missing file (or a
// non-directory where a directory was needed).
func IsNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
