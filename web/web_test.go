package web

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

var pageFiles = []string{"viewer.html", "viewer.js", "viewer.css", "policy.js"}

func TestNoVNCVersionIsAnExactPin(t *testing.T) {
	v := NoVNCVersion()
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(v) {
		t.Fatalf("NoVNCVersion() = %q, want an exact x.y.z version (package.json must pin, not range)", v)
	}
	lock, err := os.ReadFile("package-lock.json") // not embedded: the tests run in web/
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(lock), `"version": "`+v+`"`) {
		t.Errorf("package-lock.json does not lock noVNC %s", v)
	}
}

func TestPinnedVersionErrors(t *testing.T) {
	for name, pkg := range map[string]string{
		"missing":   "",
		"not json":  "{",
		"no novnc":  `{"dependencies": {"left-pad": "1.3.0"}}`,
		"empty pin": `{"dependencies": {"@novnc/novnc": ""}}`,
	} {
		m := fstest.MapFS{}
		if name != "missing" {
			m["package.json"] = &fstest.MapFile{Data: []byte(pkg)}
		}
		if v, err := pinnedVersion(m); err == nil {
			t.Errorf("%s: pinnedVersion = %q, want an error", name, v)
		}
	}
}

func tree(files map[string]string) fstest.MapFS {
	m := fstest.MapFS{
		"package.json":       {Data: []byte(`{"private": true, "dependencies": {"@novnc/novnc": "1.7.0"}}`)},
		"dist/README":        {Data: []byte("built by make web\n")},
		"static/viewer.html": {Data: []byte("<!doctype html>")},
		"static/viewer.js":   {Data: []byte("import './policy.js';")},
		"static/viewer.css":  {Data: []byte("body{}")},
		"static/policy.js":   {Data: []byte("export {};")},
	}
	for name, data := range files {
		m[name] = &fstest.MapFile{Data: []byte(data)}
	}
	return m
}

func TestNoVNCBuiltMissing(t *testing.T) {
	err := noVNCBuilt(tree(nil))
	if !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("noVNCBuilt = %v, want ErrNotBuilt", err)
	}
	for _, want := range []string{"not built", "make web", "novnc/core/rfb.js"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestNoVNCBuiltStale(t *testing.T) {
	err := noVNCBuilt(tree(map[string]string{
		"dist/novnc/core/rfb.js": "export default class RFB {}",
		"dist/novnc.version":     "1.6.0\n",
	}))
	if !errors.Is(err, ErrNotBuilt) || !strings.Contains(err.Error(), "1.6.0") || !strings.Contains(err.Error(), "1.7.0") {
		t.Fatalf("noVNCBuilt = %v, want ErrNotBuilt naming both versions", err)
	}
}

func TestNoVNCBuiltOK(t *testing.T) {
	built := map[string]string{"dist/novnc/core/rfb.js": "export default class RFB {}"}
	if err := noVNCBuilt(tree(built)); err != nil {
		t.Errorf("without a version stamp: %v", err)
	}
	built["dist/novnc.version"] = "1.7.0\n"
	if err := noVNCBuilt(tree(built)); err != nil {
		t.Errorf("with a matching stamp: %v", err)
	}
}

func TestAssetsNotBuilt(t *testing.T) {
	a := newAssetFS(tree(nil))
	if err := fstest.TestFS(a, pageFiles...); err != nil {
		t.Fatal(err)
	}
	names := rootNames(t, a)
	if !slices.Equal(names, []string{"policy.js", "viewer.css", "viewer.html", "viewer.js"}) {
		t.Errorf("root = %v", names)
	}
	if _, err := fs.Stat(a, "novnc/core/rfb.js"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("novnc/core/rfb.js: err = %v, want not exist", err)
	}
}

func TestAssetsMerged(t *testing.T) {
	a := newAssetFS(tree(map[string]string{
		"dist/novnc/core/rfb.js":      "export default class RFB {}",
		"dist/novnc/core/util/x.js":   "export {};",
		"dist/novnc/LICENSE.txt":      "MPL",
		"dist/novnc.version":          "1.7.0\n",
		"dist/novnc/vendor/pako/a.js": "export {};",
	}))
	want := append(slices.Clone(pageFiles), "novnc/core/rfb.js", "novnc/core/util/x.js", "novnc/LICENSE.txt", "novnc/vendor/pako/a.js")
	if err := fstest.TestFS(a, want...); err != nil {
		t.Fatal(err)
	}
	names := rootNames(t, a)
	if !slices.Equal(names, []string{"novnc", "policy.js", "viewer.css", "viewer.html", "viewer.js"}) {
		t.Errorf("root = %v (the stamp and README must not be served)", names)
	}
	for _, hidden := range []string{"README", "novnc.version", "dist/README", "static/viewer.html", "package.json"} {
		if _, err := fs.Stat(a, hidden); err == nil {
			t.Errorf("%s is served", hidden)
		}
	}
	for _, bad := range []string{"/viewer.html", "../web.go", "novnc/../viewer.html", ""} {
		if f, err := a.Open(bad); err == nil {
			f.Close()
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
}

func rootNames(t *testing.T, fsys fs.FS) []string {
	t.Helper()
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestEmbeddedPage(t *testing.T) {
	if err := fstest.TestFS(Assets(), pageFiles...); err != nil {
		t.Fatal(err)
	}
}

// The page must run under a strict Content-Security-Policy (no inline
// script or style, no eval) and load nothing from other hosts.
func TestPageIsCSPClean(t *testing.T) {
	for _, page := range []string{"viewer", "terminal"} {
		t.Run(page, func(t *testing.T) { pageIsCSPClean(t, page) })
	}
}

func pageIsCSPClean(t *testing.T, page string) {
	html := mustRead(t, Assets(), page+".html")
	for _, re := range []string{
		`<script(?:\s[^>]*)?>\s*[^<\s]`, // inline script
		`<script(?:\s[^>]*)?\ssrc="(?:https?:)?//`,
		`<style`,
		`\sstyle=`,
		`\son[a-z]+=`,
		`(?:href|src)="(?:https?:)?//`,
		`(?:href|src)="/`, // absolute paths break under a proxy prefix
	} {
		if loc := regexp.MustCompile(`(?i)` + re).FindStringIndex(html); loc != nil {
			t.Errorf("%s.html matches %s: %q", page, re, html[loc[0]:min(loc[1]+40, len(html))])
		}
	}
	for _, name := range []string{page + ".js", "policy.js"} {
		src := mustRead(t, Assets(), name)
		for _, re := range []string{`\beval\(`, `new Function\(`, `\.innerHTML\b`, `setAttribute\(\s*['"]style`, `https?://`} {
			if regexp.MustCompile(re).MatchString(src) {
				t.Errorf("%s matches %s", name, re)
			}
		}
	}
}

// Everything the page refers to is in Assets, at the path the browser will
// ask for: the page's assets/ URLs and, once noVNC is built, every module
// reachable from viewer.js.
func TestPageReferencesResolve(t *testing.T) {
	t.Run("viewer", func(t *testing.T) {
		pageReferencesResolve(t, "viewer", NoVNCBuilt(),
			[]string{"policy.js", "novnc/core/rfb.js", "novnc/core/inflator.js", "novnc/vendor/pako/lib/zlib/inflate.js"},
			[]string{"novnc/LICENSE.txt", "novnc/LICENSE.MPL-2.0", "novnc/vendor/pako/LICENSE"})
	})
	t.Run("terminal", func(t *testing.T) {
		pageReferencesResolve(t, "terminal", XtermBuilt(),
			[]string{"policy.js", "xterm/xterm.mjs", "xterm/addon-fit.mjs"},
			[]string{"xterm/LICENSE.xterm", "xterm/LICENSE.addon-fit"})
	})
}

func pageReferencesResolve(t *testing.T, page string, built error, reached, licences []string) {
	a := Assets()
	html := mustRead(t, a, page+".html")
	refs := regexp.MustCompile(`(?:href|src)="([^"]+)"`).FindAllStringSubmatch(html, -1)
	if len(refs) == 0 {
		t.Fatalf("%s.html refers to no assets", page)
	}
	for _, m := range refs {
		if strings.HasPrefix(m[1], "data:") {
			continue // the empty favicon, so browsers do not ask the server for one
		}
		name, ok := strings.CutPrefix(m[1], "assets/")
		if !ok {
			t.Errorf("%s.html refers to %q, not to assets/…", page, m[1])
			continue
		}
		if _, err := fs.Stat(a, name); err != nil && built == nil {
			t.Errorf("%s.html: %v", page, err)
		}
	}

	if built != nil {
		t.Skipf("vendored files not built, module graph not checked: %v", built)
	}
	seen := map[string]bool{}
	queue := []string{page + ".js"}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if seen[name] {
			continue
		}
		seen[name] = true
		for _, spec := range imports(mustRead(t, a, name)) {
			if !strings.HasPrefix(spec, "./") && !strings.HasPrefix(spec, "../") {
				t.Errorf("%s imports %q: a browser without a bundler only resolves relative specifiers", name, spec)
				continue
			}
			dep := path.Join(path.Dir(name), spec)
			if _, err := fs.Stat(a, dep); err != nil {
				t.Errorf("%s imports %q: %v", name, spec, err)
				continue
			}
			queue = append(queue, dep)
		}
	}
	for _, want := range reached {
		if !seen[want] {
			t.Errorf("%s is not reached from %s.js", want, page)
		}
	}
	for _, lic := range licences {
		if _, err := fs.Stat(a, lic); err != nil {
			t.Errorf("licence not shipped: %v", err)
		}
	}
}

var (
	staticImport  = regexp.MustCompile(`(?m)^\s*(?:import|export)\b[^'"();=]*?\bfrom\s*['"]([^'"]+)['"]`)
	sideEffect    = regexp.MustCompile(`(?m)^\s*import\s*['"]([^'"]+)['"]`)
	dynamicImport = regexp.MustCompile(`\bimport\(\s*['"]([^'"]+)['"]\s*\)`)
)

// imports returns the module specifiers src imports, statically or with
// import("…") of a string literal.
func imports(src string) []string {
	var specs []string
	for _, re := range []*regexp.Regexp{staticImport, sideEffect, dynamicImport} {
		for _, m := range re.FindAllStringSubmatch(src, -1) {
			specs = append(specs, m[1])
		}
	}
	return specs
}

func TestImports(t *testing.T) {
	src := `import * as policy from './policy.js';
import RFB from "./novnc/core/rfb.js";
import {
    a,
    b } from '../x/y.js';
import './side-effect.js';
export { c } from './c.js';
export default function f() {}
export const STOP = 'stop';
const s = "import nothing from 'here'";
const m = await import('./lazy.js');`
	got := imports(src)
	want := []string{"./policy.js", "./novnc/core/rfb.js", "../x/y.js", "./c.js", "./side-effect.js", "./lazy.js"}
	if !slices.Equal(got, want) {
		t.Errorf("imports = %q, want %q", got, want)
	}
}

func mustRead(t *testing.T, fsys fs.FS, name string) string {
	t.Helper()
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestXtermBuilt(t *testing.T) {
	pkg := `{"dependencies": {"@novnc/novnc": "1.7.0", "@xterm/xterm": "6.0.0", "@xterm/addon-fit": "0.11.0"}}`
	for _, tc := range []struct {
		name  string
		files fstest.MapFS
		ok    bool
	}{
		{"missing", fstest.MapFS{}, false},
		{"no stamp", fstest.MapFS{"dist/xterm/xterm.mjs": {}}, false},
		{"stale", fstest.MapFS{"dist/xterm/xterm.mjs": {}, "dist/xterm.version": {Data: []byte("5.5.0 0.10.0\n")}}, false},
		{"built", fstest.MapFS{"dist/xterm/xterm.mjs": {}, "dist/xterm.version": {Data: []byte("6.0.0 0.11.0\n")}}, true},
	} {
		tc.files["package.json"] = &fstest.MapFile{Data: []byte(pkg)}
		err := xtermBuilt(tc.files)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrNotBuilt)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
