// Package guestuser looks up the guest's users, as the agent runs work for
// them: name, uid, gid, supplementary groups, home and shell read from the
// guest's /etc/passwd and /etc/group (the agent is a static binary with
// no NSS, so the files are what a user is), and the login environment a
// process of theirs starts with.
package guestuser

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Files are where a guest's accounts are.
type Files struct {
	Passwd string
	Group  string
}

// System is the guest's own account files.
var System = Files{Passwd: "/etc/passwd", Group: "/etc/group"}

// User is one account.
type User struct {
	Name string
	UID  uint32
	GID  uint32
	// Groups are the supplementary groups: the primary group and every
	// group that lists the user as a member, sorted, without repeats.
	Groups []uint32
	Home   string
	// Shell is the login shell; /bin/sh if the account names none.
	Shell string
}

// NoUserError is a name that no account has.
type NoUserError struct{ Name string }

func (e *NoUserError) Error() string { return fmt.Sprintf("no user %q in this guest", e.Name) }

// maxFileSize bounds the account files read: a guest's are a few KiB.
const maxFileSize = 4 << 20

// Lookup returns the account called name.
func (f Files) Lookup(name string) (*User, error) {
	if name == "" || strings.ContainsAny(name, ":\n") {
		return nil, &NoUserError{Name: name}
	}
	var u *User
	err := eachLine(f.Passwd, func(fields []string) bool {
		// name:password:uid:gid:gecos:home:shell
		if len(fields) < 7 || fields[0] != name {
			return true
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		if err1 != nil || err2 != nil {
			return true // a broken line names no one
		}
		u = &User{Name: name, UID: uint32(uid), GID: uint32(gid), Home: fields[5], Shell: fields[6]}
		return false
	})
	if err != nil {
		return nil, fmt.Errorf("look up user %q: %w", name, err)
	}
	if u == nil {
		return nil, &NoUserError{Name: name}
	}
	if u.Shell == "" {
		u.Shell = "/bin/sh"
	}
	if u.Home == "" {
		u.Home = "/"
	}
	u.Groups = []uint32{u.GID}
	err = eachLine(f.Group, func(fields []string) bool {
		// name:password:gid:member,member
		if len(fields) < 4 {
			return true
		}
		gid, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			return true
		}
		if slices.Contains(strings.Split(fields[3], ","), name) {
			u.Groups = append(u.Groups, uint32(gid))
		}
		return true
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("look up the groups of %q: %w", name, err)
	}
	slices.Sort(u.Groups)
	u.Groups = slices.Compact(u.Groups)
	return u, nil
}

// Lookup returns the guest's account called name.
func Lookup(name string) (*User, error) { return System.Lookup(name) }

// eachLine calls fn with the colon-separated fields of every line of the
// file at path (comments and blank lines skipped) until fn returns false.
func eachLine(path string, fn func(fields []string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(io.LimitReader(f, maxFileSize))
	s.Buffer(make([]byte, 0, 4096), 64<<10)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return nil
		}
	}
	return s.Err()
}

// DefaultPath is the login PATH, after the user's own bin directories.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// userBinDirs are directories in the home that lead the PATH when they
// exist: pip's and pipx's, and npm's global prefix as workspace images set
// it.
var userBinDirs = []string{".local/bin", ".npm-global/bin"}

// LoginEnv is the environment a process of u starts with: HOME, USER,
// LOGNAME, SHELL, PATH (DefaultPath after the user's bin directories that
// exist), LANG=C.UTF-8, TERM=xterm-256color on a terminal, then extra,
// whose entries override those (and later ones earlier ones). Every extra
// entry must be KEY=VALUE (CheckEnv).
func LoginEnv(u *User, extra []string, pty bool) ([]string, error) {
	if err := CheckEnv(extra); err != nil {
		return nil, err
	}
	path := DefaultPath
	for i := len(userBinDirs) - 1; i >= 0; i-- {
		d := filepath.Join(u.Home, userBinDirs[i])
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			path = d + ":" + path
		}
	}
	env := []string{
		"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name, "SHELL=" + u.Shell,
		"PATH=" + path, "LANG=C.UTF-8",
	}
	if pty {
		env = append(env, "TERM=xterm-256color")
	}
	return merge(env, extra), nil
}

// merge returns env with each of extra set in it: an entry replaces the
// one of the same key in place, or is appended.
func merge(env, extra []string) []string {
	out := slices.Clone(env)
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		i := slices.IndexFunc(out, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		if i >= 0 {
			out[i] = kv
		} else {
			out = append(out, kv)
		}
	}
	return out
}

// CheckEnv reports an entry of env that is not KEY=VALUE, KEY a letter or
// underscore followed by letters, digits and underscores, with no NUL
// byte in it.
func CheckEnv(env []string) error {
	for i, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validKey(k) || strings.ContainsRune(v, 0) {
			return fmt.Errorf("env[%d]: %q is not KEY=VALUE (KEY letters, digits and _, not starting with a digit)", i, clip(kv))
		}
	}
	return nil
}

func validKey(k string) bool {
	if k == "" || k[0] >= '0' && k[0] <= '9' {
		return false
	}
	for _, c := range []byte(k) {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// LookPath returns name if it is absolute, and otherwise the first
// executable regular file called name in the absolute directories of
// pathList (relative entries are ignored: they would depend on the
// agent's working directory).
func LookPath(name, pathList string) (string, error) {
	if filepath.IsAbs(name) {
		return name, nil
	}
	for _, dir := range filepath.SplitList(pathList) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}
