// Package web holds the browser pages' files, embedded into hearth: the
// viewer and terminal pages (static/), the noVNC client and xterm.js that
// make web copies into dist/novnc and dist/xterm from the versions pinned
// in package.json.
//
// Assets serves them from one root, the layout the pages expect under
// <base>/viewer/assets/ and <base>/terminal/assets/: viewer.html,
// viewer.js, viewer.css, terminal.html, terminal.js, terminal.css,
// policy.js (shared), novnc/core/rfb.js with the rest of noVNC, and
// xterm/xterm.mjs, xterm/addon-fit.mjs and xterm/xterm.css. On a checkout
// where make web has not run, the page files are still there but novnc/
// and xterm/ are not; NoVNCBuilt and XtermBuilt say so, and a server
// should refuse to serve a page that cannot load.
package web

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"
)

//go:embed static package.json all:dist
var embedded embed.FS

// NoVNCPackage is the npm package the viewer's VNC client comes from;
// XtermPackage and XtermFitPackage the terminal's emulator and its
// fit-to-window addon.
const (
	NoVNCPackage    = "@novnc/novnc"
	XtermPackage    = "@xterm/xterm"
	XtermFitPackage = "@xterm/addon-fit"
)

// Paths inside the embedded tree.
const (
	staticDir  = "static"
	novncDir   = "dist/novnc"
	novncStamp = "dist/novnc.version" // written by make web: the version it copied
	novncName  = "novnc"              // where noVNC appears in Assets
	rfbModule  = "core/rfb.js"        // noVNC's entry point, relative to novncDir
	xtermDir   = "dist/xterm"
	xtermStamp = "dist/xterm.version" // written by make web: "XTERM FIT", the versions it copied
	xtermName  = "xterm"
	xtermEntry = "xterm.mjs"
)

// ErrNotBuilt is wrapped by NoVNCBuilt when noVNC's files are missing or are
// not those of the pinned version.
var ErrNotBuilt = errors.New("viewer assets are not built: run make web and rebuild hearth")

var assets = newAssetFS(embedded)

// Assets returns the viewer's files with the static/ and dist/ prefixes
// stripped: viewer.html, viewer.js, viewer.css, policy.js at the root and
// noVNC under novnc/ (absent until make web has run).
func Assets() fs.FS { return assets }

// NoVNCBuilt returns nil if noVNC's files are embedded (novnc/core/rfb.js is
// present) and were copied from the version package.json pins; otherwise an
// error wrapping ErrNotBuilt that says what is wrong.
func NoVNCBuilt() error { return noVNCBuilt(embedded) }

// NoVNCVersion returns the noVNC version pinned in the embedded
// package.json, e.g. "1.7.0" ("" only if package.json were broken, which
// the package's tests rule out).
func NoVNCVersion() string { return pinned }

var pinned, _ = pinnedVersion(embedded)

// XtermBuilt returns nil if xterm.js and its fit addon are embedded and
// were copied from the versions package.json pins; otherwise an error
// wrapping ErrNotBuilt that says what is wrong.
func XtermBuilt() error { return xtermBuilt(embedded) }

func xtermBuilt(root fs.FS) error {
	if _, err := fs.Stat(root, xtermDir+"/"+xtermEntry); err != nil {
		return fmt.Errorf("%w (%s/%s is missing)", ErrNotBuilt, xtermName, xtermEntry)
	}
	term, err := pinnedVersionOf(root, XtermPackage)
	if err != nil {
		return err
	}
	fit, err := pinnedVersionOf(root, XtermFitPackage)
	if err != nil {
		return err
	}
	b, err := fs.ReadFile(root, xtermStamp)
	if err != nil {
		return fmt.Errorf("%w (%s is missing)", ErrNotBuilt, xtermStamp)
	}
	if got, want := strings.TrimSpace(string(b)), term+" "+fit; got != want {
		return fmt.Errorf("%w (xterm.js and its fit addon %s are built, package.json pins %s)", ErrNotBuilt, got, want)
	}
	return nil
}

func noVNCBuilt(root fs.FS) error {
	if _, err := fs.Stat(root, novncDir+"/"+rfbModule); err != nil {
		return fmt.Errorf("%w (%s/%s is missing)", ErrNotBuilt, novncName, rfbModule)
	}
	want, err := pinnedVersion(root)
	if err != nil {
		return err
	}
	// The stamp is absent only if someone copied the files by hand; a
	// present one must match, or the files are a stale build.
	b, err := fs.ReadFile(root, novncStamp)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if got := strings.TrimSpace(string(b)); got != want {
		return fmt.Errorf("%w (noVNC %s is built, package.json pins %s)", ErrNotBuilt, got, want)
	}
	return nil
}

func pinnedVersion(root fs.FS) (string, error) { return pinnedVersionOf(root, NoVNCPackage) }

func pinnedVersionOf(root fs.FS, name string) (string, error) {
	b, err := fs.ReadFile(root, "package.json")
	if err != nil {
		return "", fmt.Errorf("web: package.json: %w", err)
	}
	var pkg struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		return "", fmt.Errorf("web: package.json: %w", err)
	}
	v := pkg.Dependencies[name]
	if v == "" {
		return "", fmt.Errorf("web: package.json does not depend on %s", name)
	}
	return v, nil
}

// assetFS merges static/ (at the root) with the vendored directories:
// dist/novnc as novnc/, dist/xterm as xterm/.
type assetFS struct {
	root   fs.FS // the embedded tree, for the merged root directory
	static fs.FS
	vendor map[string]string // name at the root → directory in root
}

func newAssetFS(root fs.FS) *assetFS {
	static, err := fs.Sub(root, staticDir)
	if err != nil {
		panic(err) // only for an invalid constant path
	}
	return &assetFS{root: root, static: static, vendor: map[string]string{novncName: novncDir, xtermName: xtermDir}}
}

func (a *assetFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		return a.openRoot()
	}
	first, rest, _ := strings.Cut(name, "/")
	if dir, ok := a.vendor[first]; ok {
		if rest == "" {
			return a.root.Open(dir)
		}
		return a.root.Open(dir + "/" + rest)
	}
	return a.static.Open(name)
}

// openRoot lists static/'s entries plus the vendored directories built.
func (a *assetFS) openRoot() (fs.File, error) {
	entries, err := fs.ReadDir(a.static, ".")
	if err != nil {
		return nil, err
	}
	entries = slices.DeleteFunc(entries, func(e fs.DirEntry) bool { _, ok := a.vendor[e.Name()]; return ok })
	for _, dir := range a.vendor {
		if info, err := fs.Stat(a.root, dir); err == nil && info.IsDir() {
			entries = append(entries, fs.FileInfoToDirEntry(info))
		}
	}
	slices.SortFunc(entries, func(x, y fs.DirEntry) int { return strings.Compare(x.Name(), y.Name()) })
	return &rootDir{entries: entries}, nil
}

// rootDir is the merged root directory.
type rootDir struct {
	entries []fs.DirEntry
	off     int
}

func (d *rootDir) Stat() (fs.FileInfo, error) { return rootInfo{}, nil }
func (d *rootDir) Close() error               { return nil }

func (d *rootDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: ".", Err: errors.New("is a directory")}
}

func (d *rootDir) ReadDir(n int) ([]fs.DirEntry, error) {
	rest := d.entries[d.off:]
	if n <= 0 {
		d.off = len(d.entries)
		return slices.Clone(rest), nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	rest = rest[:min(n, len(rest))]
	d.off += len(rest)
	return slices.Clone(rest), nil
}

type rootInfo struct{}

func (rootInfo) Name() string       { return "." }
func (rootInfo) Size() int64        { return 0 }
func (rootInfo) Mode() fs.FileMode  { return fs.ModeDir | 0o555 }
func (rootInfo) ModTime() time.Time { return time.Time{} }
func (rootInfo) IsDir() bool        { return true }
func (rootInfo) Sys() any           { return nil }
