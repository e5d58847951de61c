package ext4

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/hearth-project/hearth/internal/image/internal/hostcmd"
)

// batch runs cmds, one debugfs command per element, in a single read-only
// debugfs process and returns each command's standard output (without the
// echoed command line) in order, plus debugfs's standard error lines minus
// its version banner.
//
// debugfs -f echoes every command to stdout as "debugfs: <cmd>" and copies
// comment lines through verbatim; each command is preceded by a comment
// carrying a random nonce and its index, so the output splits exactly even
// though a command's output may not end in a newline. debugfs exits 0 when
// a command (or opening the image) fails and reports that on stderr only:
// errors that make the whole run meaningless are returned here; per-path
// ones are left to the caller (see ext4PathMessage).
func (im *Image) batch(ctx context.Context, cmds []string) ([][]byte, []string, error) {
	if len(cmds) == 0 {
		return nil, nil, nil
	}
	nonce, err := ext4Nonce()
	if err != nil {
		return nil, nil, err
	}
	script, err := ext4Script(nonce, cmds)
	if err != nil {
		return nil, nil, err
	}
	stdout, stderr, err := im.runScript(ctx, script)
	if err != nil {
		return nil, nil, err
	}
	lines := DebugfsMessages(stderr)
	if fatal := ext4FatalLines(lines); fatal != "" {
		return nil, nil, errors.New(fatal)
	}
	outs, err := ext4SplitOutput(stdout, nonce, cmds)
	if err != nil {
		return nil, nil, fmt.Errorf("debugfs %s: %w", im.path, err)
	}
	return outs, lines, nil
}

// ext4Nonce returns a random marker no image content can predict.
func ext4Nonce() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("nonce: %w", err)
	}
	return "hearth-" + hex.EncodeToString(b), nil
}

// ext4Script renders the debugfs command file.
func ext4Script(nonce string, cmds []string) ([]byte, error) {
	var b bytes.Buffer
	for i, c := range cmds {
		if strings.ContainsAny(c, "\r\n") || c == "" || c[0] == '#' {
			return nil, fmt.Errorf("invalid debugfs command %q", c)
		}
		fmt.Fprintf(&b, "# %s %d\n%s\n", nonce, i, c)
	}
	fmt.Fprintf(&b, "# %s end\n", nonce)
	return b.Bytes(), nil
}

// runScript runs debugfs read-only on the image with the command file.
func (im *Image) runScript(ctx context.Context, script []byte) (stdout, stderr []byte, err error) {
	f, err := os.CreateTemp("", "hearth-debugfs-*.cmd")
	if err != nil {
		return nil, nil, err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(script)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, fmt.Errorf("write debugfs script: %w", err)
	}
	cmd := exec.CommandContext(ctx, im.debugfs, "-f", f.Name(), im.path)
	// debugfs pipes some output through a pager when stdout is a terminal.
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, nil, fmt.Errorf("debugfs: %w", ctxErr)
		}
		return nil, nil, fmt.Errorf("debugfs %s: %w%s", im.path, err, hostcmd.StderrSuffix(errOut.String()))
	}
	return out.Bytes(), errOut.Bytes(), nil
}

// ext4SplitOutput cuts debugfs's stdout at the nonce markers.
func ext4SplitOutput(out []byte, nonce string, cmds []string) ([][]byte, error) {
	outs := make([][]byte, len(cmds))
	marker := func(i int) []byte { return []byte(fmt.Sprintf("# %s %d\n", nonce, i)) }
	start := bytes.Index(out, marker(0))
	if start < 0 {
		return nil, errors.New("output lacks the first command marker")
	}
	for i, c := range cmds {
		body := out[start+len(marker(i)):]
		echo := []byte("debugfs: " + c + "\n")
		if !bytes.HasPrefix(body, echo) {
			return nil, fmt.Errorf("command %d (%s) not echoed where expected", i, c)
		}
		body = body[len(echo):]
		next := []byte(fmt.Sprintf("# %s end\n", nonce))
		if i+1 < len(cmds) {
			next = marker(i + 1)
		}
		end := bytes.Index(body, next)
		if end < 0 {
			return nil, fmt.Errorf("output ends inside command %d (%s)", i, c)
		}
		outs[i] = body[:end]
		start = len(out) - len(body) + end
	}
	return outs, nil
}

// DebugfsMessages splits debugfs's stderr into trimmed lines, dropping
// blank lines and the version banner: what debugfs said, for code that runs
// debugfs itself (debugfs exits 0 when a command fails).
func DebugfsMessages(stderr []byte) []string {
	var lines []string
	for _, l := range strings.Split(string(stderr), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "debugfs 1.") || strings.HasPrefix(l, "Using EXT2FS Library") {
			continue
		}
		lines = append(lines, l)
	}
	return lines
}

// ext4FatalRE matches stderr lines that mean a batch as a whole failed:
// the image could not be opened (then every command adds "Filesystem not
// open"), or debugfs did not understand a command. Lines about a path
// start with that (absolute) path, so image contents cannot fake these.
var (
	ext4OpenFailRE = regexp.MustCompile(`^debugfs: .* while trying to open `)
	ext4FatalRE    = regexp.MustCompile(`^(debugfs: Command not found|[a-z_]+: (Usage: |Filesystem not open))`)
)

// ext4FatalLines returns the fatal stderr lines, joined and prefixed
// "debugfs: " (only the reason when the image could not be opened), or "".
func ext4FatalLines(lines []string) string {
	var open, other []string
	for _, l := range lines {
		switch {
		case ext4OpenFailRE.MatchString(l):
			open = append(open, strings.TrimPrefix(l, "debugfs: "))
		case ext4FatalRE.MatchString(l):
			other = append(other, strings.TrimPrefix(l, "debugfs: "))
		}
	}
	if len(open) > 0 {
		other = open
	}
	if len(other) == 0 {
		return ""
	}
	return "debugfs: " + strings.Join(other, "; ")
}

// ext4PathMessage returns what debugfs said on stderr about p ("<p>: <msg>"),
// or "". debugfs reports a failed path look-up with com_err(path, ...),
// which is the only way to tie a stderr line to one command of a batch.
func ext4PathMessage(lines []string, p string) string {
	prefix := p + ": "
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return strings.TrimSpace(l[len(prefix):])
		}
	}
	return ""
}

// ext4LookupError turns debugfs's message about a failed look-up into an error
// that errors.Is recognises (fs.ErrNotExist, syscall.ENOTDIR) when it can.
func ext4LookupError(msg string) error {
	switch {
	case strings.Contains(msg, "File not found by ext2_lookup"):
		return fs.ErrNotExist
	case strings.Contains(msg, "not a directory"):
		return syscall.ENOTDIR
	case msg == "":
		return errors.New("debugfs printed no inode")
	default:
		return fmt.Errorf("debugfs: %s", msg)
	}
}

// debugfs stat output, e.g.
//
//	Inode: 26   Type: regular    Mode:  04755   Flags: 0x80000
//	User:     0   Group:     0   Project:     0   Size: 6
//	Fast link dest: "a"
var (
	ext4StatHeaderRE = regexp.MustCompile(`(?m)^Inode: (\d+)\s+Type: (.*?)\s+Mode:\s+([0-7]+)\s+Flags:`)
	ext4StatUserRE   = regexp.MustCompile(`(?m)^User:\s+(-?\d+)\s+Group:\s+(-?\d+)(?:\s+Project:\s+-?\d+)?\s+Size: (\d+)`)
)

// ext4FastLinkPrefix introduces a fast symlink's target in stat output. The
// target is printed raw (no escaping), so it is cut by the inode's size.
const ext4FastLinkPrefix = "\nFast link dest: \""

// ext4ParseStat parses one `stat` command's output. ok is false when the
// output holds no inode (the look-up failed). A symlink whose target is not
// printed (a "slow" symlink, target stored in a data block) comes back with
// an empty LinkTarget and needsTarget set.
func ext4ParseStat(out []byte) (ino Inode, needsTarget, ok bool, err error) {
	s := string(out)
	h := ext4StatHeaderRE.FindStringSubmatch(s)
	if h == nil {
		return Inode{}, false, false, nil
	}
	u := ext4StatUserRE.FindStringSubmatch(s)
	if u == nil {
		return Inode{}, false, false, errors.New("stat output lacks the user/size line")
	}
	if ino.Ino, err = strconv.ParseUint(h[1], 10, 64); err != nil {
		return Inode{}, false, false, fmt.Errorf("stat inode number: %w", err)
	}
	ino.Kind = h[2]
	ino.Type = ext4InodeType(h[2])
	bits, err := strconv.ParseUint(h[3], 8, 32)
	if err != nil {
		return Inode{}, false, false, fmt.Errorf("stat mode: %w", err)
	}
	ino.Mode = ext4Mode(uint32(bits))
	if ino.UID, err = ext4ParseID(u[1]); err == nil {
		ino.GID, err = ext4ParseID(u[2])
	}
	if err != nil {
		return Inode{}, false, false, err
	}
	if ino.Size, err = strconv.ParseInt(u[3], 10, 64); err != nil {
		return Inode{}, false, false, fmt.Errorf("stat size: %w", err)
	}
	if ino.Type != InodeSymlink {
		return ino, false, true, nil
	}
	target, found, err := ext4FastLinkTarget(s, ino.Size)
	if err != nil {
		return Inode{}, false, false, err
	}
	ino.LinkTarget = target
	return ino, !found, true, nil
}

// ext4FastLinkTarget extracts a fast symlink's target of size bytes.
func ext4FastLinkTarget(s string, size int64) (string, bool, error) {
	i := strings.Index(s, ext4FastLinkPrefix)
	if i < 0 {
		return "", false, nil
	}
	rest := s[i+len(ext4FastLinkPrefix):]
	if size < 0 || int64(len(rest)) < size+1 || rest[size] != '"' {
		return "", false, errors.New("malformed fast link target in stat output")
	}
	return rest[:size], true, nil
}

// ext4ParseID parses a uid/gid that debugfs prints with %d (so ids above 2^31
// come out negative).
func ext4ParseID(s string) (uint32, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < -(1<<31) || n >= 1<<32 {
		return 0, fmt.Errorf("stat: bad id %q", s)
	}
	return uint32(n), nil
}

// ext4InodeType maps debugfs's type names.
func ext4InodeType(kind string) InodeType {
	switch kind {
	case "regular":
		return InodeRegular
	case "directory":
		return InodeDir
	case "symlink":
		return InodeSymlink
	default:
		return InodeOther
	}
}

// ext4Mode converts the low 12 bits of a Unix mode to an fs.FileMode
// with permission, setuid, setgid and sticky bits only.
func ext4Mode(bits uint32) fs.FileMode {
	m := fs.FileMode(bits & 0o777)
	if bits&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if bits&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if bits&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// ModeBits turns a mode as Inode.Mode holds it back into the low 12 bits of
// a Unix mode (for display and compare); the inverse of ext4Mode.
func ModeBits(m fs.FileMode) uint32 {
	bits := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}

// ext4ParseLs parses `ls -p` output: one "/ino/mode/uid/gid/name/size/" record
// per entry (size empty for directories). A name cannot contain '/', so the
// records are split on '/' alone and names with newlines parse too.
func ext4ParseLs(out []byte) ([]DirEntry, error) {
	tok := strings.Split(string(out), "/")
	if len(tok) < 8 || strings.TrimSpace(tok[0]) != "" {
		return nil, errors.New("unexpected ls -p output")
	}
	var entries []DirEntry
	for i := 1; i < len(tok); i += 7 {
		if i+6 >= len(tok) || strings.TrimSpace(tok[i+6]) != "" || !strings.Contains(tok[i+6], "\n") {
			return nil, fmt.Errorf("malformed ls -p record at field %d", i)
		}
		e, err := ext4LsRecord(tok[i : i+6])
		if err != nil {
			return nil, err
		}
		if e.Name != "." && e.Name != ".." {
			entries = append(entries, e)
		}
	}
	return entries, nil
}

// ext4LsRecord parses the six fields of one ls -p record.
func ext4LsRecord(f []string) (DirEntry, error) {
	ino, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return DirEntry{}, fmt.Errorf("ls -p inode %q: %w", f[0], err)
	}
	mode, err := strconv.ParseUint(f[1], 8, 32)
	if err != nil {
		return DirEntry{}, fmt.Errorf("ls -p mode %q: %w", f[1], err)
	}
	e := DirEntry{Name: f[4], Ino: ino, Mode: ext4Mode(uint32(mode))}
	switch mode & 0o170000 {
	case 0o100000:
		e.Type = InodeRegular
	case 0o040000:
		e.Type = InodeDir
	case 0o120000:
		e.Type = InodeSymlink
	}
	if f[5] != "" {
		if e.Size, err = strconv.ParseInt(f[5], 10, 64); err != nil {
			return DirEntry{}, fmt.Errorf("ls -p size %q: %w", f[5], err)
		}
	}
	return e, nil
}

// ReadInodes dumps the inodes' contents (regular files or slow symlinks)
// to private temporary files, in chunks of at most ext4DumpChunk bytes,
// and calls fn with each file's contents in order, or with the reason it
// could not be read (a dump that is not exactly the inode's size, e.g. on a
// corrupt extent). An error from fn stops the reading.
func (im *Image) ReadInodes(ctx context.Context, inodes []Inode, fn func(i int, r io.Reader, err error) error) error {
	for start := 0; start < len(inodes); {
		end, total := start, int64(0)
		for end < len(inodes) && (end == start || total+inodes[end].Size <= ext4DumpChunk) {
			total += inodes[end].Size
			end++
		}
		if err := im.readChunk(ctx, inodes[start:end], start, fn); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// readChunk dumps one chunk of ReadInodes.
func (im *Image) readChunk(ctx context.Context, inodes []Inode, base int, fn func(int, io.Reader, error) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "hearth-ext4-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if err := CheckPath(dir); err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	cmds := make([]string, len(inodes))
	for i, ino := range inodes {
		cmds[i] = fmt.Sprintf("dump %s %s", ext4InodeArg(ino.Ino), ext4Quote(filepath.Join(dir, strconv.Itoa(i))))
	}
	_, lines, err := im.batch(ctx, cmds)
	if err != nil {
		return err
	}
	for i, ino := range inodes {
		name := filepath.Join(dir, strconv.Itoa(i))
		err := ext4ConsumeDump(name, ino, lines, func(r io.Reader, err error) error { return fn(base+i, r, err) })
		if err != nil {
			return err
		}
	}
	return nil
}

// ext4ConsumeDump checks one dumped file's size, hands it (or the reason it is
// unusable) to fn and removes it.
func ext4ConsumeDump(name string, ino Inode, lines []string, fn func(io.Reader, error) error) error {
	defer os.Remove(name)
	f, err := os.Open(name)
	if err != nil {
		return fn(nil, fmt.Errorf("dump inode %d: %w%s", ino.Ino, err, hostcmd.StderrSuffix(strings.Join(lines, "\n"))))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != ino.Size {
		return fn(nil, fmt.Errorf("dump inode %d: got %d bytes, inode size is %d%s", ino.Ino, st.Size(), ino.Size, hostcmd.StderrSuffix(strings.Join(lines, "\n"))))
	}
	return fn(f, nil)
}
