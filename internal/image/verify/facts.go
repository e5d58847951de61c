package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/ext4"
)

// verifyMaxText bounds the text files Image reads into memory (the dpkg
// status file of a large image is a few MiB).
const verifyMaxText = 64 << 20

// verifyNeed says what Image needs of a regular file's contents.
type verifyNeed uint8

const (
	verifyNeedNothing verifyNeed = 0
	verifyNeedHash    verifyNeed = 1 << iota // its SHA-256
	verifyNeedText                           // its bytes (and SHA-256)
)

// verifyContent is what was read of one inode.
type verifyContent struct {
	sha256 string
	data   []byte // only when verifyNeedText
	err    error
}

// verifyFacts collects, in as few debugfs runs as possible, everything the
// claims need from the root filesystem: each wanted path's resolution
// (lstat or stat) and the contents of the regular files behind them.
type verifyFacts struct {
	reqs    []ext4.Request
	needs   []verifyNeed
	index   map[ext4.Request]int
	res     []ext4.Resolved
	content map[uint64]*verifyContent
	// tooLarge marks inodes wanted as text but over verifyMaxText.
	tooLarge map[uint64]bool
}

func newVerifyFacts() *verifyFacts {
	return &verifyFacts{index: map[ext4.Request]int{}, content: map[uint64]*verifyContent{}, tooLarge: map[uint64]bool{}}
}

// want registers a path to look up (follow: resolve symlinks) and what is
// needed of its contents if it is a regular file.
func (f *verifyFacts) want(p string, follow bool, need verifyNeed) {
	k := ext4.Request{Path: p, Follow: follow}
	if i, ok := f.index[k]; ok {
		f.needs[i] |= need
		return
	}
	f.index[k] = len(f.reqs)
	f.reqs = append(f.reqs, k)
	f.needs = append(f.needs, need)
}

// gather resolves every wanted path, then reads the contents needed.
func (f *verifyFacts) gather(ctx context.Context, img *ext4.Image) error {
	res, err := img.ResolveAll(ctx, f.reqs)
	if err != nil {
		return err
	}
	f.res = res
	inodes, needs := f.contentPlan()
	return img.ReadInodes(ctx, inodes, func(i int, r io.Reader, err error) error {
		c := &verifyContent{err: err}
		if err == nil {
			c.sha256, c.data, c.err = verifyHash(ctx, r, needs[i]&verifyNeedText != 0)
		}
		f.content[inodes[i].Ino] = c
		return ctx.Err()
	})
}

// contentPlan lists each regular inode to read once, with what is needed
// of it; text files over verifyMaxText are marked too large instead.
func (f *verifyFacts) contentPlan() ([]ext4.Inode, []verifyNeed) {
	byIno := map[uint64]int{}
	var inodes []ext4.Inode
	var needs []verifyNeed
	for i, r := range f.res {
		need := f.needs[i]
		if r.Err != nil || r.Inode.Type != ext4.InodeRegular || need == verifyNeedNothing {
			continue
		}
		if need&verifyNeedText != 0 && r.Inode.Size > verifyMaxText {
			f.tooLarge[r.Inode.Ino] = true
			if need &^= verifyNeedText; need == verifyNeedNothing {
				continue
			}
		}
		if j, ok := byIno[r.Inode.Ino]; ok {
			needs[j] |= need
			continue
		}
		byIno[r.Inode.Ino] = len(inodes)
		inodes = append(inodes, r.Inode)
		needs = append(needs, need)
	}
	return inodes, needs
}

// verifyHash hashes r, keeping the bytes when keep is set.
func verifyHash(ctx context.Context, r io.Reader, keep bool) (string, []byte, error) {
	h := sha256.New()
	var buf bytes.Buffer
	w := io.Writer(h)
	if keep {
		w = io.MultiWriter(h, &buf)
	}
	if _, err := io.Copy(w, verifyCtxReader{ctx, r}); err != nil {
		return "", nil, err
	}
	return hex.EncodeToString(h.Sum(nil)), buf.Bytes(), nil
}

// verifyCtxReader fails reads once ctx is done, so hashing large files stops
// promptly on cancellation.
type verifyCtxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c verifyCtxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// lookup returns the resolution of a wanted path.
func (f *verifyFacts) lookup(p string, follow bool) ext4.Resolved {
	i, ok := f.index[ext4.Request{Path: p, Follow: follow}]
	if !ok || i >= len(f.res) {
		return ext4.Resolved{Final: p, Err: &fs.PathError{Op: "verify", Path: p, Err: errors.New("not looked up (verifier bug)")}}
	}
	return f.res[i]
}

// regular resolves a wanted path and returns the content read for it; the
// error says, as a fragment for a report line about p, why there is none.
func (f *verifyFacts) regular(p string) (ext4.Resolved, *verifyContent, error) {
	r := f.lookup(p, true)
	if r.Err != nil {
		return r, nil, errors.New(verifyWhy(p, r))
	}
	if r.Inode.Type != ext4.InodeRegular {
		return r, nil, fmt.Errorf("%sa %s, not a regular file", verifyArrow(p, r, ": "), r.Inode.Type)
	}
	c, ok := f.content[r.Inode.Ino]
	if !ok {
		return r, nil, errors.New("contents not read (verifier bug)")
	}
	if c.err != nil {
		return r, nil, fmt.Errorf("unreadable: %w", c.err)
	}
	return r, c, nil
}

// text returns the contents of a wanted text file; the error names p.
func (f *verifyFacts) text(p string) ([]byte, error) {
	if r := f.lookup(p, true); r.Err == nil && f.tooLarge[r.Inode.Ino] {
		return nil, fmt.Errorf("%s: %d bytes is more than verify reads (%d)", p, r.Inode.Size, verifyMaxText)
	}
	_, c, err := f.regular(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return c.data, nil
}

// verifyArrow is "→ <final><sep>" when symlinks led p elsewhere, else "".
func verifyArrow(p string, r ext4.Resolved, sep string) string {
	if len(r.Via) == 0 || r.Final == p {
		return ""
	}
	return "→ " + r.Final + sep
}

// verifyWhy explains, as a fragment for a report line about p, why p did
// not resolve.
func verifyWhy(p string, r ext4.Resolved) string {
	at := verifyErrorAt(r)
	switch {
	case errors.Is(r.Err, syscall.ELOOP):
		return "too many levels of symbolic links"
	case errors.Is(r.Err, syscall.ENOTDIR):
		return fmt.Sprintf("missing from the image (%s is not a directory)", at)
	case ext4.IsNotExist(r.Err) && len(r.Via) > 0:
		return fmt.Sprintf("dangling symlink (%s does not exist)", at)
	case ext4.IsNotExist(r.Err) && at != path.Clean(p):
		return fmt.Sprintf("missing from the image (%s does not exist)", at)
	case ext4.IsNotExist(r.Err):
		return "missing from the image"
	}
	var pe *fs.PathError
	if errors.As(r.Err, &pe) {
		return "unreadable: " + pe.Err.Error()
	}
	return "unreadable: " + r.Err.Error()
}

// verifyErrorAt is the path at which a resolution failed.
func verifyErrorAt(r ext4.Resolved) string {
	var pe *fs.PathError
	if errors.As(r.Err, &pe) {
		return pe.Path
	}
	return r.Final
}

// verifyDigests checks the image files' sizes and SHA-256 against the
// manifest (the same facts (*image.Manifest).Verify checks, one claim per file).
func verifyDigests(ctx context.Context, dir string, m *image.Manifest) []ClaimResult {
	var out []ClaimResult
	for _, f := range m.FileDigests() {
		out = append(out, verifyDigest(ctx, filepath.Join(dir, f.Name), f))
	}
	return out
}

// verifyDigest checks one image file.
func verifyDigest(ctx context.Context, p string, f image.FileDigest) ClaimResult {
	c := ClaimResult{Kind: ClaimDigest, Subject: f.Name}
	sum, size, err := verifyHashHostFile(ctx, p)
	var problems []string
	switch {
	case errors.Is(err, fs.ErrNotExist):
		problems = append(problems, "missing")
	case err != nil:
		problems = append(problems, err.Error())
	default:
		if f.SHA256 == "" {
			problems = append(problems, "manifest records no sha256")
		}
		if size != f.Size {
			problems = append(problems, fmt.Sprintf("size %d differs from manifest %d", size, f.Size))
		}
		if f.SHA256 != "" && sum != f.SHA256 {
			problems = append(problems, fmt.Sprintf("sha256 %s differs from manifest %s", verifyShortSum(sum), verifyShortSum(f.SHA256)))
		}
	}
	return verifyFinish(c, problems, fmt.Sprintf("sha256 %s, %d bytes", verifyShortSum(sum), size))
}

// verifyHashHostFile hashes a file of the image directory, honouring ctx.
func verifyHashHostFile(ctx context.Context, p string) (string, int64, error) {
	fh, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, verifyCtxReader{ctx, fh})
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", filepath.Base(p), err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// verifyShortSum abbreviates a hex digest for messages.
func verifyShortSum(s string) string {
	if len(s) <= 12 {
		return s
	}
	return s[:12] + "…"
}

// verifyFinish fills in a claim from its problems (none: OK with okDetail).
func verifyFinish(c ClaimResult, problems []string, okDetail string) ClaimResult {
	if len(problems) == 0 {
		c.OK, c.Detail = true, okDetail
		return c
	}
	c.OK, c.Detail = false, strings.Join(problems, "; ")
	return c
}
