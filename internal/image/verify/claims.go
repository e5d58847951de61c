package verify

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/hearth-project/hearth/internal/image"
	"github.com/hearth-project/hearth/internal/image/ext4"
)

// Paths inside the root filesystem that Image reads.
const (
	verifyDpkgStatusPath = "/var/lib/dpkg/status"
	verifyPasswdPath     = "/etc/passwd"
	verifyInittabPath    = "/etc/inittab"
	verifySystemdEtcDir  = "/etc/systemd/system"
	verifyMaskTarget     = "/dev/null"
)

// verifyFiles checks every file claim: the path resolves (symlinks followed
// inside the image) to a regular file with the claimed mode, size and
// SHA-256.
func verifyFiles(f *verifyFacts, m *image.Manifest) []ClaimResult {
	out := make([]ClaimResult, 0, len(m.Files))
	for _, fc := range m.Files {
		out = append(out, verifyFile(f, fc))
	}
	return out
}

// verifyFile checks one file claim.
func verifyFile(f *verifyFacts, fc image.FileClaim) ClaimResult {
	c := ClaimResult{Kind: ClaimFile, Subject: fc.Path}
	if err := ext4.CheckPath(fc.Path); err != nil {
		return verifyFinish(c, []string{"invalid path: " + err.Error()}, "")
	}
	r, content, err := f.regular(fc.Path)
	if err != nil {
		return verifyFinish(c, []string{err.Error()}, "")
	}
	var problems []string
	if got, want := ext4.ModeBits(r.Inode.Mode), verifyClaimMode(fc.Mode); got != want {
		problems = append(problems, fmt.Sprintf("mode %04o differs from manifest %04o", got, want))
	}
	if r.Inode.Size != fc.Size {
		problems = append(problems, fmt.Sprintf("size %d differs from manifest %d", r.Inode.Size, fc.Size))
	}
	if content.sha256 != fc.SHA256 {
		problems = append(problems, fmt.Sprintf("sha256 %s differs from manifest %s", verifyShortSum(content.sha256), verifyShortSum(fc.SHA256)))
	}
	ok := fmt.Sprintf("%smode %04o, %d bytes, sha256 %s", verifyArrow(fc.Path, r, ", "), ext4.ModeBits(r.Inode.Mode), r.Inode.Size, verifyShortSum(content.sha256))
	return verifyFinish(c, problems, ok)
}

// verifyClaimMode reads a claimed mode as Unix permission bits, accepting
// setuid/setgid/sticky both as fs.FileMode flags and as raw 07000 bits.
func verifyClaimMode(m fs.FileMode) uint32 {
	return ext4.ModeBits(m) | uint32(m)&0o7000
}

// verifyAgent checks the agent binary (present, executable, the manifest's
// SHA-256) and the agent version recorded in the image's image.json.
func verifyAgent(f *verifyFacts, m *image.Manifest) ClaimResult {
	p := verifyAgentPath(m)
	c := ClaimResult{Kind: ClaimAgent, Subject: p}
	problems := verifyAgentBinary(f, m, p)
	problems = append(problems, verifyImageInfo(f, m)...)
	return verifyFinish(c, problems, fmt.Sprintf("sha256 %s, version %s", verifyShortSum(m.Agent.SHA256), m.Agent.Version))
}

// verifyAgentBinary checks the agent binary itself.
func verifyAgentBinary(f *verifyFacts, m *image.Manifest, p string) []string {
	if err := ext4.CheckPath(p); err != nil {
		return []string{"invalid path: " + err.Error()}
	}
	r, content, err := f.regular(p)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	if r.Inode.Mode&0o111 == 0 {
		problems = append(problems, fmt.Sprintf("not executable (mode %04o)", ext4.ModeBits(r.Inode.Mode)))
	}
	switch {
	case m.Agent.SHA256 == "":
		problems = append(problems, "manifest records no agent sha256")
	case content.sha256 != m.Agent.SHA256:
		problems = append(problems, fmt.Sprintf("sha256 %s differs from manifest %s", verifyShortSum(content.sha256), verifyShortSum(m.Agent.SHA256)))
	}
	return problems
}

// verifyImageInfo compares the agent facts in image.json with the
// manifest.
func verifyImageInfo(f *verifyFacts, m *image.Manifest) []string {
	data, err := f.text(image.GuestImageInfoPath)
	if err != nil {
		return []string{err.Error()}
	}
	var info image.ImageInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return []string{fmt.Sprintf("%s: %v", image.GuestImageInfoPath, err)}
	}
	var problems []string
	if m.Agent.Version == "" {
		problems = append(problems, "manifest records no agent version")
	} else if info.AgentVersion != m.Agent.Version {
		problems = append(problems, fmt.Sprintf("%s says agent version %q, manifest %q", image.GuestImageInfoPath, info.AgentVersion, m.Agent.Version))
	}
	if info.AgentSHA256 != "" && info.AgentSHA256 != m.Agent.SHA256 {
		problems = append(problems, fmt.Sprintf("%s says agent sha256 %s, manifest %s", image.GuestImageInfoPath, verifyShortSum(info.AgentSHA256), verifyShortSum(m.Agent.SHA256)))
	}
	return problems
}

// verifyUnitNameRE matches systemd unit names (and targets): no slashes.
var verifyUnitNameRE = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]{1,255}$`)

// verifyValidUnitName reports whether s can name a unit inside a path.
func verifyValidUnitName(s string) bool {
	return verifyUnitNameRE.MatchString(s) && s != "." && s != ".."
}

// verifyUnitLinks are where enabling a unit for a target puts its symlink:
// <target>.wants/<unit> (WantedBy=), or <target>.requires/<unit>
// (RequiredBy=; the builder claims those with the same wanted_by field).
func verifyUnitLinks(u image.UnitClaim) (wants, requires string) {
	dir := verifySystemdEtcDir + "/" + u.WantedBy
	return dir + ".wants/" + u.Name, dir + ".requires/" + u.Name
}

// verifyPlanUnits registers the paths the unit claims need (or, when no unit
// starts the agent, the busybox inittab).
func verifyPlanUnits(f *verifyFacts, m *image.Manifest) {
	for _, u := range m.Units {
		if !verifyValidUnitName(u.Name) || !verifyValidUnitName(u.WantedBy) {
			continue
		}
		wants, requires := verifyUnitLinks(u)
		for _, link := range []string{wants, requires} {
			f.want(link, false, verifyNeedNothing)
			f.want(link, true, verifyNeedNothing)
		}
		f.want(verifySystemdEtcDir+"/"+u.Name, false, verifyNeedNothing)
		f.want(verifySystemdEtcDir+"/"+u.Name, true, verifyNeedNothing)
	}
	if !verifyAgentUnitClaimed(m) {
		f.want(verifyInittabPath, true, verifyNeedText)
	}
}

// verifyAgentUnitClaimed reports whether a unit claim starts the agent.
func verifyAgentUnitClaimed(m *image.Manifest) bool {
	return slices.ContainsFunc(m.Units, func(u image.UnitClaim) bool { return u.Name == image.GuestAgentUnit })
}

// verifyUnits checks every unit claim, and for images whose agent is not
// started by a systemd unit (busybox init), the inittab respawn line.
func verifyUnits(f *verifyFacts, m *image.Manifest) []ClaimResult {
	var out []ClaimResult
	for _, u := range m.Units {
		out = append(out, verifyUnit(f, u))
	}
	if !verifyAgentUnitClaimed(m) {
		out = append(out, verifyInittab(f, m))
	}
	return out
}

// verifyUnit checks that <wanted_by>.wants/<name> (or .requires/<name>)
// is a symlink resolving inside the image to a non-empty regular unit file,
// and that the unit is not masked in /etc/systemd/system.
func verifyUnit(f *verifyFacts, u image.UnitClaim) ClaimResult {
	c := ClaimResult{Kind: ClaimUnit, Subject: u.Name}
	if !verifyValidUnitName(u.Name) || !verifyValidUnitName(u.WantedBy) {
		return verifyFinish(c, []string{fmt.Sprintf("invalid unit name %q or target %q", u.Name, u.WantedBy)}, "")
	}
	link, requires := verifyUnitLinks(u)
	l := f.lookup(link, false)
	if r := f.lookup(requires, false); l.Err != nil && ext4.IsNotExist(l.Err) && r.Err == nil {
		link, l = requires, r
	}
	switch {
	case l.Err != nil && ext4.IsNotExist(l.Err):
		return verifyFinish(c, []string{link + " is missing"}, "")
	case l.Err != nil:
		return verifyFinish(c, []string{link + ": " + verifyWhy(link, l)}, "")
	case l.Inode.Type != ext4.InodeSymlink:
		return verifyFinish(c, []string{fmt.Sprintf("%s is a %s, not a symlink", link, l.Inode.Type)}, "")
	}
	arrow := fmt.Sprintf("%s → %s", link, l.Inode.LinkTarget)
	r := f.lookup(link, true)
	switch {
	case r.Err != nil && ext4.IsNotExist(r.Err):
		return verifyFinish(c, []string{fmt.Sprintf("%s is dangling (%s does not exist)", arrow, verifyErrorAt(r))}, "")
	case r.Err != nil:
		return verifyFinish(c, []string{arrow + ": " + verifyWhy(link, r)}, "")
	case r.Final == verifyMaskTarget:
		return verifyFinish(c, []string{fmt.Sprintf("%s: masked", arrow)}, "")
	case r.Inode.Type != ext4.InodeRegular:
		return verifyFinish(c, []string{fmt.Sprintf("%s resolves to %s, a %s, not a unit file", arrow, r.Final, r.Inode.Type)}, "")
	case r.Inode.Size == 0:
		return verifyFinish(c, []string{fmt.Sprintf("%s resolves to an empty file (masked)", arrow)}, "")
	}
	if msg := verifyUnitMasked(f, u.Name); msg != "" {
		return verifyFinish(c, []string{msg}, "")
	}
	return verifyFinish(c, nil, fmt.Sprintf("%s (%s)", arrow, r.Final))
}

// verifyUnitMasked says whether /etc/systemd/system/<name> masks the unit (a
// symlink to /dev/null or an empty file).
func verifyUnitMasked(f *verifyFacts, name string) string {
	p := verifySystemdEtcDir + "/" + name
	l := f.lookup(p, false)
	if l.Err != nil {
		return ""
	}
	if l.Inode.Type == ext4.InodeSymlink && path.Clean(l.Inode.LinkTarget) == verifyMaskTarget {
		return fmt.Sprintf("masked: %s → %s", p, verifyMaskTarget)
	}
	if r := f.lookup(p, true); r.Err == nil && r.Inode.Type == ext4.InodeRegular && r.Inode.Size == 0 {
		return fmt.Sprintf("masked: %s is empty", p)
	}
	return ""
}

// verifyInittab checks that busybox/sysvinit init respawns the agent.
func verifyInittab(f *verifyFacts, m *image.Manifest) ClaimResult {
	c := ClaimResult{Kind: ClaimUnit, Subject: verifyInittabPath}
	data, err := f.text(verifyInittabPath)
	if err != nil {
		return verifyFinish(c, []string{fmt.Sprintf("no %s unit claimed and %v", image.GuestAgentUnit, err)}, "")
	}
	if !verifyInittabRespawns(string(data), verifyAgentPath(m)) {
		return verifyFinish(c, []string{fmt.Sprintf("no respawn entry for %s (and no %s unit claimed)", verifyAgentPath(m), image.GuestAgentUnit)}, "")
	}
	return verifyFinish(c, nil, "respawns "+verifyAgentPath(m))
}

// verifyInittabRespawns reports whether an inittab has a respawn entry
// ("id:runlevels:respawn:process") running prog.
func verifyInittabRespawns(inittab, prog string) bool {
	for _, line := range strings.Split(inittab, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.SplitN(line, ":", 4)
		if len(fields) != 4 || fields[2] != "respawn" {
			continue
		}
		if args := strings.Fields(fields[3]); len(args) > 0 && args[0] == prog {
			return true
		}
	}
	return false
}

// verifyPackages checks every Debian package claim against dpkg's status
// file: installed ("install ok installed") at exactly the claimed version.
func verifyPackages(f *verifyFacts, m *image.Manifest) []ClaimResult {
	if len(m.Packages) == 0 {
		return nil
	}
	data, err := f.text(verifyDpkgStatusPath)
	var db map[string][]verifyDpkgEntry
	if err == nil {
		db = verifyParseDpkgStatus(data)
	}
	out := make([]ClaimResult, 0, len(m.Packages))
	for _, p := range m.Packages {
		c := ClaimResult{Kind: ClaimPackage, Subject: p.Name}
		if err != nil {
			out = append(out, verifyFinish(c, []string{err.Error()}, ""))
			continue
		}
		out = append(out, verifyFinish(c, verifyPackage(db, p), p.Version+" installed"))
	}
	return out
}

// verifyPackage compares one claim with the status entries of its name
// (a "name:arch" claim matches that architecture only).
func verifyPackage(db map[string][]verifyDpkgEntry, p image.PackageClaim) []string {
	name, arch, _ := strings.Cut(p.Name, ":")
	var installed []verifyDpkgEntry
	var other []string
	for _, e := range db[name] {
		if arch != "" && e.Architecture != arch {
			continue
		}
		if e.Status == verifyDpkgInstalled {
			installed = append(installed, e)
		} else {
			other = append(other, e.Status)
		}
	}
	if len(installed) == 0 {
		if len(other) > 0 {
			return []string{fmt.Sprintf("not installed (dpkg status %q)", other[0])}
		}
		return []string{"not installed (dpkg status)"}
	}
	var versions []string
	for _, e := range installed {
		if e.Version == p.Version {
			return nil
		}
		versions = append(versions, e.Version)
	}
	return []string{fmt.Sprintf("version %s installed, manifest says %s", strings.Join(versions, ", "), p.Version)}
}

// verifyNPMNameRE matches npm package names, scoped or not.
var verifyNPMNameRE = regexp.MustCompile(`^(@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9._~-]+$`)

// verifyValidNPMName reports whether name is an npm package name safe to use as
// a path below node_modules.
func verifyValidNPMName(name string) bool {
	if !verifyNPMNameRE.MatchString(name) || len(name) > 214 {
		return false
	}
	for _, part := range strings.Split(name, "/") {
		if part == "." || part == ".." || strings.HasPrefix(part, ".") {
			return false
		}
	}
	return true
}

// verifyNPMRoots are the global node_modules directories, in the order
// they are looked at (npm's /usr/local prefix, then Debian's packages).
var verifyNPMRoots = []string{"/usr/local/lib/node_modules", "/usr/lib/node_modules"}

// verifyNPMPaths lists where a global package's package.json may be.
func verifyNPMPaths(name string) []string {
	if !verifyValidNPMName(name) {
		return nil
	}
	paths := make([]string, len(verifyNPMRoots))
	for i, root := range verifyNPMRoots {
		paths[i] = root + "/" + name + "/package.json"
	}
	return paths
}

// verifyNPM checks every global npm package claim.
func verifyNPM(f *verifyFacts, m *image.Manifest) []ClaimResult {
	out := make([]ClaimResult, 0, len(m.NPM))
	for _, p := range m.NPM {
		out = append(out, verifyNPMPackage(f, p))
	}
	return out
}

// verifyNPMPackage checks the first package.json found for the claim.
func verifyNPMPackage(f *verifyFacts, p image.PackageClaim) ClaimResult {
	c := ClaimResult{Kind: ClaimNPM, Subject: p.Name}
	paths := verifyNPMPaths(p.Name)
	if paths == nil {
		return verifyFinish(c, []string{fmt.Sprintf("invalid npm package name %q", p.Name)}, "")
	}
	for _, pj := range paths {
		if r := f.lookup(pj, true); r.Err != nil && ext4.IsNotExist(r.Err) {
			continue
		}
		data, err := f.text(pj)
		if err != nil {
			return verifyFinish(c, []string{err.Error()}, "")
		}
		var meta struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		}
		if err := json.Unmarshal(data, &meta); err != nil {
			return verifyFinish(c, []string{fmt.Sprintf("%s: %v", pj, err)}, "")
		}
		var problems []string
		if meta.Name != p.Name {
			problems = append(problems, fmt.Sprintf("%s names package %q", pj, meta.Name))
		}
		if meta.Version != p.Version {
			problems = append(problems, fmt.Sprintf("version %s installed (%s), manifest says %s", meta.Version, pj, p.Version))
		}
		return verifyFinish(c, problems, fmt.Sprintf("%s installed (%s)", meta.Version, pj))
	}
	return verifyFinish(c, []string{fmt.Sprintf("not installed globally (no %s)", strings.Join(paths, " or "))}, "")
}

// verifyUsers checks every user claim against /etc/passwd.
func verifyUsers(f *verifyFacts, m *image.Manifest) []ClaimResult {
	if len(m.Users) == 0 {
		return nil
	}
	data, err := f.text(verifyPasswdPath)
	var users map[string]verifyPasswdEntry
	if err == nil {
		users = verifyParsePasswd(data)
	}
	out := make([]ClaimResult, 0, len(m.Users))
	for _, u := range m.Users {
		c := ClaimResult{Kind: ClaimUser, Subject: u.Name}
		if err != nil {
			out = append(out, verifyFinish(c, []string{err.Error()}, ""))
			continue
		}
		out = append(out, verifyFinish(c, verifyUser(users, u), fmt.Sprintf("uid %d, home %s", u.UID, u.Home)))
	}
	return out
}

// verifyUser compares one claim with the passwd entry of its name.
func verifyUser(users map[string]verifyPasswdEntry, u image.UserClaim) []string {
	e, ok := users[u.Name]
	if !ok {
		return []string{"no " + verifyPasswdPath + " entry"}
	}
	var problems []string
	if e.UID != u.UID {
		problems = append(problems, fmt.Sprintf("uid %d differs from manifest %d", e.UID, u.UID))
	}
	if e.Home != u.Home {
		problems = append(problems, fmt.Sprintf("home %s differs from manifest %s", e.Home, u.Home))
	}
	return problems
}

// verifyRoleRequirement is what a role promises the rest of hearth.
type verifyRoleRequirement struct {
	ports    []int    // must be in required_ports
	binaries []string // base names that must be among the file claims
}

// verifyRoleRequirements lists the roles with fixed promises: a browser image is
// viewed over VNC (x11vnc on 5900).
var verifyRoleRequirements = map[string]verifyRoleRequirement{
	"browser": {ports: []int{5900}, binaries: []string{"x11vnc"}},
}

// verifyPortRole checks that the manifest's role and required ports agree:
// ports are valid and distinct, and the role's ports and server binaries
// are claimed (the file claims themselves are checked separately).
func verifyPortRole(m *image.Manifest) ClaimResult {
	c := ClaimResult{Kind: ClaimPortRole, Subject: m.Role}
	if m.Role == "" {
		return verifyFinish(ClaimResult{Kind: ClaimPortRole, Subject: "(none)"}, []string{"manifest has no role"}, "")
	}
	problems := verifyPorts(m.RequiredPorts)
	req := verifyRoleRequirements[m.Role]
	for _, p := range req.ports {
		if !slices.Contains(m.RequiredPorts, p) {
			problems = append(problems, fmt.Sprintf("role %s requires port %d, required_ports is %v", m.Role, p, m.RequiredPorts))
		}
	}
	for _, b := range req.binaries {
		if !slices.ContainsFunc(m.Files, func(fc image.FileClaim) bool { return path.Base(fc.Path) == b }) {
			problems = append(problems, fmt.Sprintf("role %s requires a file claim for its %s binary", m.Role, b))
		}
	}
	return verifyFinish(c, problems, fmt.Sprintf("required ports %v", m.RequiredPorts))
}

// verifyPorts checks that ports are valid TCP ports, each listed once.
func verifyPorts(ports []int) []string {
	var problems []string
	seen := map[int]bool{}
	for _, p := range ports {
		switch {
		case p < 1 || p > 65535:
			problems = append(problems, fmt.Sprintf("required port %d is not a TCP port", p))
		case seen[p]:
			problems = append(problems, fmt.Sprintf("required port %d listed twice", p))
		}
		seen[p] = true
	}
	return problems
}
