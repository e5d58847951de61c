package image

import (
	"errors"
	"fmt"
	"path"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v4"
)

var (
	reflectSpecType     = reflect.TypeOf(Spec{})
	reflectFileModeType = reflect.TypeOf(FileMode(0))
)

// Name rules.
var (
	// debianPackageRE is Debian policy 5.6.1 (at least two characters).
	debianPackageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	// npmNameRE is npm's rule for new package names: lower case, URL-safe,
	// optionally scoped, at most 214 characters.
	npmNameRE = regexp.MustCompile(`^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$`)
	// npmVersionRE accepts an exact version, a dist-tag or a simple range.
	npmVersionRE = regexp.MustCompile(`^[A-Za-z0-9.^~<>=*+_-]+$`)
	exactVerRE   = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)
	specNameRE   = regexp.MustCompile(`^[a-z][a-z0-9-]{0,30}$`)
	userNameRE   = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	hostnameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// unitNameRE matches systemd unit names (templates and instances too).
	unitNameRE = regexp.MustCompile(`^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(service|socket|timer|target|path|mount|automount|slice|scope|swap|device)$`)
	suiteRE    = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
	mirrorRE   = regexp.MustCompile(`^(https?|file)://[^\s"']+$`)
)

// specChecker collects errors about a spec with their YAML lines.
type specChecker struct {
	file  string
	lines map[string]int // field path -> line
	errs  []error
}

// errorf records an error about a field.
func (c *specChecker) errorf(field string, format string, args ...any) {
	line := c.line(field)
	loc := specFilePath(c.file)
	if line > 0 {
		loc += ":" + strconv.Itoa(line)
	}
	c.errs = append(c.errs, fmt.Errorf("%s: %s: %s", loc, field, fmt.Sprintf(format, args...)))
}

// line finds the line of field or of its nearest recorded parent.
func (c *specChecker) line(field string) int {
	for f := field; f != ""; {
		if l, ok := c.lines[f]; ok {
			return l
		}
		i := strings.LastIndexAny(f, ".[")
		if i < 0 {
			break
		}
		f = f[:i]
	}
	return 0
}

// err returns the collected errors (nil if none).
func (c *specChecker) err() error { return errors.Join(c.errs...) }

// walk checks the YAML tree against the Go type: unknown keys, mapping
// vs. list vs. scalar, and octal modes. It records each field's line.
func (c *specChecker) walk(n *yaml.Node, t reflect.Type, field string) {
	if n.Kind == yaml.AliasNode {
		c.errorf(orRoot(field), "YAML aliases are not supported in image specs")
		return
	}
	if field != "" {
		c.lines[field] = n.Line
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Tag == "!!null" {
		return
	}
	switch {
	case t == reflectFileModeType:
		if n.Kind != yaml.ScalarNode {
			c.errorf(field, "want an octal mode such as 0644")
		} else if _, err := parseFileMode(n.Value); err != nil {
			c.errorf(field, "%v", err)
		}
	case t.Kind() == reflect.Struct:
		c.walkStruct(n, t, field)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			c.errorf(field, "want a list")
			return
		}
		for i, item := range n.Content {
			c.walk(item, t.Elem(), fmt.Sprintf("%s[%d]", field, i))
		}
	default:
		if n.Kind != yaml.ScalarNode {
			c.errorf(field, "want a single value, not a %s", kindName(n.Kind))
		}
	}
}

// walkStruct checks a mapping's keys against the struct's yaml tags.
func (c *specChecker) walkStruct(n *yaml.Node, t reflect.Type, field string) {
	if n.Kind != yaml.MappingNode {
		c.errorf(orRoot(field), "want a mapping (key: value), not a %s", kindName(n.Kind))
		return
	}
	known := map[string]reflect.Type{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			known[name] = t.Field(i).Type
			names = append(names, name)
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		sub := k.Value
		if field != "" {
			sub = field + "." + k.Value
		}
		ft, ok := known[k.Value]
		switch {
		case !ok:
			c.lines[sub] = k.Line
			c.errorf(sub, "unknown field (known: %s)", strings.Join(names, ", "))
		case seen[k.Value]:
			c.lines[sub] = k.Line
			c.errorf(sub, "given twice")
		default:
			seen[k.Value] = true
			c.walk(v, ft, sub)
		}
	}
}

func orRoot(field string) string {
	if field == "" {
		return "(top level)"
	}
	return field
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar"
	}
	return "node"
}

// validate checks the decoded spec's values.
func (c *specChecker) validate(s *Spec) {
	c.validateHead(s)
	switch s.Base.Kind {
	case BaseBusybox:
		c.validateBusybox(s)
	case BaseDebootstrap:
		c.validateDebootstrap(s)
	case "":
		c.errorf("base.kind", "missing (want %s or %s)", BaseBusybox, BaseDebootstrap)
	default:
		c.errorf("base.kind", "unknown base kind %q (want %s or %s)", s.Base.Kind, BaseBusybox, BaseDebootstrap)
	}
	c.validateFiles(s)
	c.validateKeyFiles(s)
	c.validateUsers(s)
	c.validateUnits(s)
}

// validateHead checks name, role, hostname, ports and size.
func (c *specChecker) validateHead(s *Spec) {
	switch {
	case s.Name == "":
		c.errorf("name", "missing")
	case !specNameRE.MatchString(s.Name):
		c.errorf("name", "bad image name %q (want [a-z][a-z0-9-]*, at most 31 characters)", s.Name)
	}
	if !hostnameRE.MatchString(s.Hostname) {
		c.errorf("hostname", "bad hostname %q", s.Hostname)
	}
	want, ok := rolePorts[s.Role]
	switch {
	case s.Role == "":
		c.errorf("role", "missing (want one of %s)", strings.Join(roleNames(), ", "))
	case !ok:
		c.errorf("role", "unknown role %q (want one of %s)", s.Role, strings.Join(roleNames(), ", "))
	default:
		c.validatePorts(s, want)
	}
	if s.SizeMiB < 16 || s.SizeMiB > 65536 {
		c.errorf("size_mib", "root filesystem size %d MiB out of range (16..65536)", s.SizeMiB)
	}
}

// validatePorts checks that the ports are valid and exactly the role's.
func (c *specChecker) validatePorts(s *Spec, want []int) {
	for i, p := range s.Ports {
		if p < 1 || p > 65535 {
			c.errorf(fmt.Sprintf("ports[%d]", i), "port %d out of range", p)
		}
	}
	got := slices.Clone(s.Ports)
	slices.Sort(got)
	if !slices.Equal(slices.Compact(got), want) || len(got) != len(s.Ports) {
		c.errorf("ports", "role %s requires ports %v exactly, got %v", s.Role, want, s.Ports)
	}
}

// validateBusybox rejects what a busybox base cannot do.
func (c *specChecker) validateBusybox(s *Spec) {
	b := s.Base
	if b.Suite != "" || b.Variant != "" || b.Mirror != "" || b.Include != nil {
		c.errorf("base", "suite, variant, mirror and include apply to debootstrap bases only")
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"packages", len(s.Packages) > 0}, {"npm", len(s.NPM) > 0}, {"node", s.Node != nil},
		{"users", len(s.Users) > 0}, {"units", len(s.Units.Enable)+len(s.Units.Mask) > 0},
		{"limits", s.Limits != nil}, {"key_files", len(s.KeyFiles) > 0},
	} {
		if f.set {
			c.errorf(f.name, "not supported with base.kind busybox")
		}
	}
}

// validateDebootstrap checks the Debian and npm parts.
func (c *specChecker) validateDebootstrap(s *Spec) {
	if !suiteRE.MatchString(s.Base.Suite) {
		c.errorf("base.suite", "bad suite %q", s.Base.Suite)
	}
	if s.Base.Variant != "minbase" && s.Base.Variant != "buildd" && s.Base.Variant != "-" {
		c.errorf("base.variant", "unsupported variant %q (want minbase, buildd or -)", s.Base.Variant)
	}
	if s.Base.Mirror != "" && !mirrorRE.MatchString(s.Base.Mirror) {
		c.errorf("base.mirror", "bad mirror URL %q (want http://, https:// or file://)", s.Base.Mirror)
	}
	c.validatePackages("base.include", s.Base.Include)
	c.validatePackages("packages", s.Packages)
	c.validateNPM(s)
	if s.Limits != nil {
		if s.Limits.NoFile < 1024 || s.Limits.NoFile > 1<<20 {
			c.errorf("limits.nofile", "%d out of range (1024..1048576)", s.Limits.NoFile)
		}
		if s.Limits.NProc < 0 {
			c.errorf("limits.nproc", "negative")
		}
	}
}

// validatePackages checks Debian package names (Debian policy 5.6.1).
func (c *specChecker) validatePackages(field string, pkgs []string) {
	seen := map[string]bool{}
	for i, p := range pkgs {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case !debianPackageRE.MatchString(p):
			c.errorf(f, "bad Debian package name %q (want [a-z0-9][a-z0-9+.-]+)", p)
		case seen[p]:
			c.errorf(f, "package %q listed twice", p)
		}
		seen[p] = true
	}
}

// validateNPM checks the node runtime and npm package specs.
func (c *specChecker) validateNPM(s *Spec) {
	if s.Node != nil {
		if !exactVerRE.MatchString(s.Node.Version) {
			c.errorf("node.version", "want an exact Node.js version such as 22.23.5, got %q", s.Node.Version)
		}
		if !exactVerRE.MatchString(s.Node.NPM) {
			c.errorf("node.npm", "want an exact npm version such as 10.9.9, got %q", s.Node.NPM)
		}
	}
	if len(s.NPM) > 0 && s.Node == nil && !slices.Contains(s.Packages, "npm") {
		c.errorf("npm", "npm packages need an npm: set node (runtime from the npm registry) or list Debian's npm in packages")
	}
	seen := map[string]bool{}
	for i, p := range s.NPM {
		f := fmt.Sprintf("npm[%d]", i)
		name, version := npmPackageName(p)
		switch {
		case len(name) > 214 || !npmNameRE.MatchString(name):
			c.errorf(f, "bad npm package name %q", name)
		case strings.Contains(p, "@") && strings.HasSuffix(p, "@"), version != "" && !npmVersionRE.MatchString(version):
			c.errorf(f, "bad npm version in %q", p)
		case seen[name]:
			c.errorf(f, "npm package %q listed twice", name)
		}
		seen[name] = true
	}
}

// validateFiles checks file paths, modes and owners.
func (c *specChecker) validateFiles(s *Spec) {
	seen := map[string]bool{}
	for i, f := range s.Files {
		field := fmt.Sprintf("files[%d]", i)
		if msg := badGuestPath(f.Path); msg != "" {
			c.errorf(field+".path", "%s", msg)
		} else if seen[f.Path] {
			c.errorf(field+".path", "%s given twice", f.Path)
		} else if f.Path == GuestAgentPath || f.Path == GuestImageInfoPath {
			c.errorf(field+".path", "%s is written by the builder", f.Path)
		}
		seen[f.Path] = true
		if _, ok := c.lines[field+".mode"]; !ok {
			c.errorf(field+".mode", "missing (want octal permission bits such as 0644)")
		}
		if f.Owner != "" && s.Base.Kind != BaseDebootstrap {
			c.errorf(field+".owner", "not supported with base.kind %s", s.Base.Kind)
		} else if f.Owner != "" && !userNameRE.MatchString(f.Owner) {
			c.errorf(field+".owner", "bad user name %q", f.Owner)
		}
	}
}

// validateKeyFiles checks the key file paths.
func (c *specChecker) validateKeyFiles(s *Spec) {
	for i, p := range s.KeyFiles {
		if msg := badGuestPath(p); msg != "" {
			c.errorf(fmt.Sprintf("key_files[%d]", i), "%s", msg)
		}
	}
}

// badGuestPath explains what is wrong with an absolute guest path ("" if
// nothing).
func badGuestPath(p string) string {
	switch {
	case p == "":
		return "missing"
	case !strings.HasPrefix(p, "/"):
		return fmt.Sprintf("path %q is not absolute", p)
	case path.Clean(p) != p || p == "/":
		return fmt.Sprintf("path %q is not clean (no //, /./, /../ or trailing slash)", p)
	case !debugfsSafePath.MatchString(p):
		return fmt.Sprintf("path %q has unsupported characters", p)
	case strings.HasPrefix(p, "/proc/") || strings.HasPrefix(p, "/sys/") || strings.HasPrefix(p, "/dev/"):
		return fmt.Sprintf("path %q is on a pseudo file system", p)
	}
	return ""
}

// validateUsers checks accounts.
func (c *specChecker) validateUsers(s *Spec) {
	seenName, seenUID := map[string]bool{}, map[int]bool{}
	for i, u := range s.Users {
		field := fmt.Sprintf("users[%d]", i)
		switch {
		case !userNameRE.MatchString(u.Name):
			c.errorf(field+".name", "bad user name %q", u.Name)
		case seenName[u.Name]:
			c.errorf(field+".name", "user %q listed twice", u.Name)
		}
		switch {
		case u.UID < 1000 || u.UID > 59999:
			c.errorf(field+".uid", "uid %d out of the range for normal users (1000..59999)", u.UID)
		case seenUID[u.UID]:
			c.errorf(field+".uid", "uid %d used twice", u.UID)
		}
		seenName[u.Name], seenUID[u.UID] = true, true
		if msg := badGuestPath(u.Home); msg != "" {
			c.errorf(field+".home", "%s", msg)
		}
		if msg := badGuestPath(u.Shell); msg != "" {
			c.errorf(field+".shell", "%s", msg)
		}
		for j, g := range u.Groups {
			if !userNameRE.MatchString(g) {
				c.errorf(fmt.Sprintf("%s.groups[%d]", field, j), "bad group name %q", g)
			}
		}
	}
}

// validateUnits checks systemd unit names.
func (c *specChecker) validateUnits(s *Spec) {
	for _, l := range []struct {
		field string
		units []string
	}{{"units.enable", s.Units.Enable}, {"units.mask", s.Units.Mask}} {
		for i, u := range l.units {
			f := fmt.Sprintf("%s[%d]", l.field, i)
			switch {
			case !unitNameRE.MatchString(u):
				c.errorf(f, "bad systemd unit name %q", u)
			case u == agentUnitName:
				c.errorf(f, "%s is set up by the builder", u)
			case l.field == "units.mask" && slices.Contains(s.Units.Enable, u):
				c.errorf(f, "unit %s is both enabled and masked", u)
			}
		}
	}
}

// roleNames lists the known roles, sorted.
func roleNames() []string {
	names := make([]string, 0, len(rolePorts))
	for r := range rolePorts {
		names = append(names, r)
	}
	sort.Strings(names)
	return names
}
