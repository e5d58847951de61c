package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/safetext"
)

// Login runs a provider CLI's login (see agentapi.LoginRequest): on a PTY,
// as the requested user, answering its prompts, opening its authorization
// URL in the guest's browser, until its credential files are complete.
// The platform part (PTY, user switch, file watching) is in
// login_linux.go.

// ansi matches terminal escape sequences: CSI (colours, cursor moves) and
// OSC (titles, hyperlinks), so that patterns see the text a user would.
var ansi = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]`)

// plainText returns terminal output without escape sequences and carriage
// returns.
func plainText(b []byte) string {
	s := ansi.ReplaceAllString(string(b), "")
	return strings.ReplaceAll(s, "\r", "")
}

// credentialComplete reports whether content is a complete credential of
// format c.Format with every required field present and not empty. The
// reason, when it is not, names fields only, never values.
func credentialComplete(c agentapi.CredentialFile, content []byte) (bool, string) {
	if len(bytes.TrimSpace(content)) == 0 {
		return false, "empty"
	}
	var doc any
	if err := json.Unmarshal(content, &doc); err != nil {
		return false, "not complete JSON"
	}
	for _, field := range c.Required {
		v, ok := agentapi.JSONField(doc, field)
		if !ok || agentapi.JSONEmpty(v) {
			return false, "no " + field
		}
	}
	return true, ""
}

// expandHome resolves "~/" against home and cleans the path.
func expandHome(p, home string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		return filepath.Join(home, rest)
	}
	return filepath.Clean(p)
}

// readCapped reads at most max bytes of path; a larger file is an error.
func readCapped(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, max+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return buf[:n], nil
}

// lastLine is the last non-empty line of terminal output, clipped: enough
// to say why a CLI gave up.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return safetext.Clip(l, 200)
		}
	}
	return ""
}
