// Package web holds the browser viewer's files, embedded into hearth: the
// viewer page (static/) and the noVNC client that make web copies into
// dist/novnc from the version pinned in package.json.
//
// Assets serves them from one root, the layout the page expects under
// <base>/viewer/assets/: viewer.html, viewer.js, viewer.css, policy.js and
// novnc/core/rfb.js with the rest of noVNC. On a checkout where make web has
// not run, the page files are still there but novnc/ is not; NoVNCBuilt says
// so, and a server should refuse to serve the viewer rather than a page that
// cannot load.
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

// NoVNCPackage is the npm package the viewer's VNC client comes from.
const NoVNCPackage = "@novnc/novnc"

// Paths inside the embedded tree.
const (
	staticDir  = "static"
	novncDir   = "dist/novnc"
	novncStamp = "dist/novnc.version" // written by make web: the version it copied
	novncName  = "novnc"              // where noVNC appears in Assets
	rfbModule  = "core/rfb.js"        // noVNC's entry point, relative to novncDir
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

func pinnedVersion(root fs.FS) (string, error) {
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
	v := pkg.Dependencies[NoVNCPackage]
	if v == "" {
		return "", fmt.Errorf("web: package.json does not depend on %s", NoVNCPackage)
	}
	return v, nil
}

// assetFS merges static/ (at the root) and dist/novnc (as novnc/).
type assetFS struct {
	root   fs.FS // the embedded tree, for the merged root directory
	static fs.FS
	novnc  fs.FS
}

func newAssetFS(root fs.FS) *assetFS {
	static, err := fs.Sub(root, staticDir)
	if err != nil {
		panic(err) // only for an invalid constant path
	}
	novnc, err := fs.Sub(root, novncDir)
	if err != nil {
		panic(err)
	}
	return &assetFS{root: root, static: static, novnc: novnc}
}

func (a *assetFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	switch {
	case name == ".":
		return a.openRoot()
	case name == novncName:
		return a.novnc.Open(".")
	case strings.HasPrefix(name, novncName+"/"):
		return a.novnc.Open(strings.TrimPrefix(name, novncName+"/"))
	}
	return a.static.Open(name)
}

// openRoot lists static/'s entries plus novnc/ when it is built.
func (a *assetFS) openRoot() (fs.File, error) {
	entries, err := fs.ReadDir(a.static, ".")
	if err != nil {
		return nil, err
	}
	entries = slices.DeleteFunc(entries, func(e fs.DirEntry) bool { return e.Name() == novncName })
	if info, err := fs.Stat(a.root, novncDir); err == nil && info.IsDir() {
		entries = append(entries, fs.FileInfoToDirEntry(info))
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
