package spec

import (
	"fmt"
	"path"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/yamlcheck"
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

// specChecker checks a spec: the shared YAML checks (yamlcheck) and the
// spec's own rules.
type specChecker struct {
	*yamlcheck.Checker
}

func newSpecChecker(file string) specChecker {
	return specChecker{yamlcheck.New(specFilePath(file), "image specs", map[reflect.Type]yamlcheck.Scalar{
		reflectFileModeType: {Want: "an octal mode such as 0644", Parse: func(s string) error { _, err := parseFileMode(s); return err }},
	})}
}

// validate checks the decoded spec's values.
func (c specChecker) validate(s *Spec) {
	c.validateHead(s)
	switch s.Base.Kind {
	case BaseBusybox:
		c.validateBusybox(s)
	case BaseDebootstrap:
		c.validateDebootstrap(s)
	case "":
		c.Errorf("base.kind", "missing (want %s or %s)", BaseBusybox, BaseDebootstrap)
	default:
		c.Errorf("base.kind", "unknown base kind %q (want %s or %s)", s.Base.Kind, BaseBusybox, BaseDebootstrap)
	}
	c.validateFiles(s)
	c.validateKeyFiles(s)
	c.validateUsers(s)
	c.validateUnits(s)
}

// validateHead checks name, role, hostname, ports and size.
func (c specChecker) validateHead(s *Spec) {
	switch {
	case s.Name == "":
		c.Errorf("name", "missing")
	case !specNameRE.MatchString(s.Name):
		c.Errorf("name", "bad image name %q (want [a-z][a-z0-9-]*, at most 31 characters)", s.Name)
	}
	if !hostnameRE.MatchString(s.Hostname) {
		c.Errorf("hostname", "bad hostname %q", s.Hostname)
	}
	want, ok := rolePorts[s.Role]
	switch {
	case s.Role == "":
		c.Errorf("role", "missing (want one of %s)", strings.Join(roleNames(), ", "))
	case !ok:
		c.Errorf("role", "unknown role %q (want one of %s)", s.Role, strings.Join(roleNames(), ", "))
	default:
		c.validatePorts(s, want)
	}
	if s.SizeMiB < 16 || s.SizeMiB > 65536 {
		c.Errorf("size_mib", "root filesystem size %d MiB out of range (16..65536)", s.SizeMiB)
	}
}

// validatePorts checks that the ports are valid and exactly the role's.
func (c specChecker) validatePorts(s *Spec, want []int) {
	for i, p := range s.Ports {
		if p < 1 || p > 65535 {
			c.Errorf(fmt.Sprintf("ports[%d]", i), "port %d out of range", p)
		}
	}
	got := slices.Clone(s.Ports)
	slices.Sort(got)
	if !slices.Equal(slices.Compact(got), want) || len(got) != len(s.Ports) {
		c.Errorf("ports", "role %s requires ports %v exactly, got %v", s.Role, want, s.Ports)
	}
}

// validateBusybox rejects what a busybox base cannot do.
func (c specChecker) validateBusybox(s *Spec) {
	b := s.Base
	if b.Suite != "" || b.Variant != "" || b.Mirror != "" || b.Include != nil {
		c.Errorf("base", "suite, variant, mirror and include apply to debootstrap bases only")
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"packages", len(s.Packages) > 0}, {"npm", len(s.NPM) > 0}, {"node", s.Node != nil},
		{"units", len(s.Units.Enable)+len(s.Units.Mask) > 0},
		{"limits", s.Limits != nil}, {"key_files", len(s.KeyFiles) > 0},
	} {
		if f.set {
			c.Errorf(f.name, "not supported with base.kind busybox")
		}
	}
	// No useradd: a user is an account the spec's own /etc/passwd
	// declares, whose home the builder makes.
	for i, u := range s.Users {
		field := fmt.Sprintf("users[%d]", i)
		if len(u.Groups) > 0 {
			c.Errorf(field+".groups", "not supported with base.kind busybox (list the user in /etc/group)")
		}
		a, ok := s.Account(u.Name)
		if !ok || a.UID != u.UID || a.Home != u.Home || a.Shell != u.Shell {
			c.Errorf(field, "with base.kind busybox, /etc/passwd in files must have the line %s:x:%d:GID::%s:%s", u.Name, u.UID, u.Home, u.Shell)
		}
	}
}

// validateDebootstrap checks the Debian and npm parts.
func (c specChecker) validateDebootstrap(s *Spec) {
	if !suiteRE.MatchString(s.Base.Suite) {
		c.Errorf("base.suite", "bad suite %q", s.Base.Suite)
	}
	if s.Base.Variant != "minbase" && s.Base.Variant != "buildd" && s.Base.Variant != "-" {
		c.Errorf("base.variant", "unsupported variant %q (want minbase, buildd or -)", s.Base.Variant)
	}
	if s.Base.Mirror != "" && !mirrorRE.MatchString(s.Base.Mirror) {
		c.Errorf("base.mirror", "bad mirror URL %q (want http://, https:// or file://)", s.Base.Mirror)
	}
	c.validatePackages("base.include", s.Base.Include)
	c.validatePackages("packages", s.Packages)
	c.validateNPM(s)
	if s.Limits != nil {
		if s.Limits.NoFile < 1024 || s.Limits.NoFile > 1<<20 {
			c.Errorf("limits.nofile", "%d out of range (1024..1048576)", s.Limits.NoFile)
		}
		if s.Limits.NProc < 0 {
			c.Errorf("limits.nproc", "negative")
		}
	}
}

// validatePackages checks Debian package names (Debian policy 5.6.1).
func (c specChecker) validatePackages(field string, pkgs []string) {
	seen := map[string]bool{}
	for i, p := range pkgs {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case !debianPackageRE.MatchString(p):
			c.Errorf(f, "bad Debian package name %q (want [a-z0-9][a-z0-9+.-]+)", p)
		case seen[p]:
			c.Errorf(f, "package %q listed twice", p)
		}
		seen[p] = true
	}
}

// validateNPM checks the node runtime and npm package specs.
func (c specChecker) validateNPM(s *Spec) {
	if s.Node != nil {
		if !exactVerRE.MatchString(s.Node.Version) {
			c.Errorf("node.version", "want an exact Node.js version such as 22.23.5, got %q", s.Node.Version)
		}
		if !exactVerRE.MatchString(s.Node.NPM) {
			c.Errorf("node.npm", "want an exact npm version such as 10.9.9, got %q", s.Node.NPM)
		}
	}
	if len(s.NPM) > 0 && s.Node == nil && !slices.Contains(s.Packages, "npm") {
		c.Errorf("npm", "npm packages need an npm: set node (runtime from the npm registry) or list Debian's npm in packages")
	}
	seen := map[string]bool{}
	for i, p := range s.NPM {
		f := fmt.Sprintf("npm[%d]", i)
		name, version := NPMPackageName(p)
		switch {
		case len(name) > 214 || !npmNameRE.MatchString(name):
			c.Errorf(f, "bad npm package name %q", name)
		case strings.Contains(p, "@") && strings.HasSuffix(p, "@"), version != "" && !npmVersionRE.MatchString(version):
			c.Errorf(f, "bad npm version in %q", p)
		case seen[name]:
			c.Errorf(f, "npm package %q listed twice", name)
		}
		seen[name] = true
	}
}

// validateFiles checks file paths, modes and owners.
func (c specChecker) validateFiles(s *Spec) {
	seen := map[string]bool{}
	for i, f := range s.Files {
		field := fmt.Sprintf("files[%d]", i)
		if msg := badGuestPath(f.Path); msg != "" {
			c.Errorf(field+".path", "%s", msg)
		} else if seen[f.Path] {
			c.Errorf(field+".path", "%s given twice", f.Path)
		} else if f.Path == image.GuestAgentPath || f.Path == image.GuestImageInfoPath {
			c.Errorf(field+".path", "%s is written by the builder", f.Path)
		}
		seen[f.Path] = true
		if !c.Has(field + ".mode") {
			c.Errorf(field+".mode", "missing (want octal permission bits such as 0644)")
		}
		if f.Owner != "" && s.Base.Kind != BaseDebootstrap {
			c.Errorf(field+".owner", "not supported with base.kind %s", s.Base.Kind)
		} else if f.Owner != "" && !userNameRE.MatchString(f.Owner) {
			c.Errorf(field+".owner", "bad user name %q", f.Owner)
		}
	}
}

// validateKeyFiles checks the key file paths.
func (c specChecker) validateKeyFiles(s *Spec) {
	for i, p := range s.KeyFiles {
		if msg := badGuestPath(p); msg != "" {
			c.Errorf(fmt.Sprintf("key_files[%d]", i), "%s", msg)
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
	case !PlainPath(p):
		return fmt.Sprintf("path %q has unsupported characters", p)
	case strings.HasPrefix(p, "/proc/") || strings.HasPrefix(p, "/sys/") || strings.HasPrefix(p, "/dev/"):
		return fmt.Sprintf("path %q is on a pseudo file system", p)
	}
	return ""
}

// validateUsers checks accounts.
func (c specChecker) validateUsers(s *Spec) {
	seenName, seenUID := map[string]bool{}, map[int]bool{}
	for i, u := range s.Users {
		field := fmt.Sprintf("users[%d]", i)
		switch {
		case !userNameRE.MatchString(u.Name):
			c.Errorf(field+".name", "bad user name %q", u.Name)
		case seenName[u.Name]:
			c.Errorf(field+".name", "user %q listed twice", u.Name)
		}
		switch {
		case u.UID < 1000 || u.UID > 59999:
			c.Errorf(field+".uid", "uid %d out of the range for normal users (1000..59999)", u.UID)
		case seenUID[u.UID]:
			c.Errorf(field+".uid", "uid %d used twice", u.UID)
		}
		seenName[u.Name], seenUID[u.UID] = true, true
		if msg := badGuestPath(u.Home); msg != "" {
			c.Errorf(field+".home", "%s", msg)
		}
		if msg := badGuestPath(u.Shell); msg != "" {
			c.Errorf(field+".shell", "%s", msg)
		}
		for j, g := range u.Groups {
			if !userNameRE.MatchString(g) {
				c.Errorf(fmt.Sprintf("%s.groups[%d]", field, j), "bad group name %q", g)
			}
		}
	}
}

// validateUnits checks systemd unit names.
func (c specChecker) validateUnits(s *Spec) {
	for _, l := range []struct {
		field string
		units []string
	}{{"units.enable", s.Units.Enable}, {"units.mask", s.Units.Mask}} {
		for i, u := range l.units {
			f := fmt.Sprintf("%s[%d]", l.field, i)
			switch {
			case !unitNameRE.MatchString(u):
				c.Errorf(f, "bad systemd unit name %q", u)
			case u == image.GuestAgentUnit:
				c.Errorf(f, "%s is set up by the builder", u)
			case l.field == "units.mask" && slices.Contains(s.Units.Enable, u):
				c.Errorf(f, "unit %s is both enabled and masked", u)
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
