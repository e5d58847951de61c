package verify

import (
	"bytes"
	"strconv"
	"strings"
)

// verifyDpkgInstalled is the Status of a fully installed package.
const verifyDpkgInstalled = "install ok installed"

// verifyDpkgEntry is one stanza of dpkg's status file.
type verifyDpkgEntry struct {
	Package, Architecture, Version, Status string
}

// verifyParseDpkgStatus reads /var/lib/dpkg/status (RFC 822-style stanzas
// separated by blank lines) into entries by package name; a package may
// have one entry per architecture.
func verifyParseDpkgStatus(data []byte) map[string][]verifyDpkgEntry {
	db := map[string][]verifyDpkgEntry{}
	for _, stanza := range bytes.Split(bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n")), []byte("\n\n")) {
		e := verifyParseDpkgStanza(string(stanza))
		if e.Package != "" {
			db[e.Package] = append(db[e.Package], e)
		}
	}
	return db
}

// verifyParseDpkgStanza picks the fields Image needs out of one stanza
// (continuation lines, which start with a blank, are skipped).
func verifyParseDpkgStanza(s string) verifyDpkgEntry {
	var e verifyDpkgEntry
	for _, line := range strings.Split(s, "\n") {
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(key) {
		case "package":
			e.Package = value
		case "architecture":
			e.Architecture = value
		case "version":
			e.Version = value
		case "status":
			e.Status = strings.Join(strings.Fields(value), " ")
		}
	}
	return e
}

// verifyPasswdEntry is the part of an /etc/passwd line Image checks.
type verifyPasswdEntry struct {
	UID  int
	Home string
}

// verifyParsePasswd reads /etc/passwd ("name:pw:uid:gid:gecos:home:shell"); the
// first line for a name wins, as for getpwnam. Malformed lines are skipped.
func verifyParsePasswd(data []byte) map[string]verifyPasswdEntry {
	users := map[string]verifyPasswdEntry{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(strings.TrimRight(line, "\r"), ":")
		if len(f) != 7 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err := strconv.Atoi(f[2])
		if err != nil {
			continue
		}
		if _, seen := users[f[0]]; !seen {
			users[f[0]] = verifyPasswdEntry{UID: uid, Home: f[5]}
		}
	}
	return users
}
