package build

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/image/internal/fsutil"
	"github.com/hearth-project/hearth/internal/image/internal/hostcmd"
	"github.com/hearth-project/hearth/internal/image/spec"
)

// aptSources is where a debootstrap image's packages come from.
type aptSources struct {
	Suite    string `json:"suite"`
	Mirror   string `json:"mirror"`
	Security string `json:"security,omitempty"` // "" = no security archive
}

// list renders the chroot's /etc/apt/sources.list.
func (a aptSources) list() string {
	var b strings.Builder
	fmt.Fprintf(&b, "deb %s %s main\n", a.Mirror, a.Suite)
	fmt.Fprintf(&b, "deb %s %s-updates main\n", a.Mirror, a.Suite)
	if a.Security != "" {
		fmt.Fprintf(&b, "deb %s %s-security main\n", a.Security, a.Suite)
	}
	return b.String()
}

// resolveSources picks the mirror: the spec's, else the build host's first
// Debian mirror (and its security archive, if the host has one for the
// suite).
func resolveSources(b spec.Base) (aptSources, error) {
	src := aptSources{Suite: b.Suite, Mirror: strings.TrimSuffix(b.Mirror, "/")}
	if src.Mirror != "" {
		return src, nil
	}
	entries, err := hostAptEntries("/etc/apt")
	if err != nil {
		return src, err
	}
	for _, e := range entries {
		switch {
		case strings.HasSuffix(e.suite, "-security"):
			if e.suite == b.Suite+"-security" && src.Security == "" {
				src.Security = e.uri
			}
		case src.Mirror == "":
			src.Mirror = e.uri
		}
	}
	if src.Mirror == "" {
		return src, fmt.Errorf("no Debian mirror in /etc/apt/sources.list or sources.list.d: set base.mirror in the spec")
	}
	return src, nil
}

// aptEntry is one "deb URI suite" source of the host.
type aptEntry struct{ uri, suite string }

// hostAptEntries reads the host's deb sources in apt's order: the
// one-line sources.list, then sources.list.d/*.list and *.sources (deb822)
// by file name.
func hostAptEntries(etc string) ([]aptEntry, error) {
	files := []string{filepath.Join(etc, "sources.list")}
	more, err := filepath.Glob(filepath.Join(etc, "sources.list.d", "*"))
	if err != nil {
		return nil, err
	}
	slices.Sort(more)
	files = append(files, more...)
	var out []aptEntry
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		switch {
		case strings.HasSuffix(f, ".sources"):
			out = append(out, parseDeb822Sources(string(data))...)
		case strings.HasSuffix(f, ".list") || f == files[0]:
			out = append(out, parseOneLineSources(string(data))...)
		}
	}
	return out, nil
}

// parseOneLineSources parses "deb [opts] URI suite comp..." lines.
func parseOneLineSources(s string) []aptEntry {
	var out []aptEntry
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 2 {
			out = append(out, aptEntry{uri: strings.TrimSuffix(f[0], "/"), suite: f[1]})
		}
	}
	return out
}

// parseDeb822Sources parses deb822 stanzas (Types, URIs, Suites, Enabled).
func parseDeb822Sources(s string) []aptEntry {
	var out []aptEntry
	for _, stanza := range strings.Split(s, "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if !slices.Contains(strings.Fields(fields["types"]), "deb") || strings.EqualFold(fields["enabled"], "no") {
			continue
		}
		for _, uri := range strings.Fields(fields["uris"]) {
			for _, suite := range strings.Fields(fields["suites"]) {
				out = append(out, aptEntry{uri: strings.TrimSuffix(uri, "/"), suite: suite})
			}
		}
	}
	return out
}

// baseTreeKey identifies a cached bare debootstrap tree.
type baseTreeKey struct {
	Builder string     `json:"builder"`
	Sources aptSources `json:"sources"`
	Variant string     `json:"variant"`
	Include []string   `json:"include"` // sorted
}

// name is the cache entry's directory name.
func (k baseTreeKey) name() (string, error) {
	data, err := json.Marshal(k)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s-%s-%s", k.Sources.Suite, strings.Trim(k.Variant, "-"), fsutil.SHA256Hex(string(data))[:16]), nil
}

// baseTreeInfoFile marks a complete cache entry.
const baseTreeInfoFile = "base.json"

// ensureBaseTree returns the path of the cached bare tree for key, running
// debootstrap if needed. The entry is assembled in a temporary directory
// and renamed into place under a lock.
func ensureBaseTree(ctx context.Context, cacheDir string, key baseTreeKey, p *progress, log io.Writer) (string, error) {
	name, err := key.name()
	if err != nil {
		return "", err
	}
	root := filepath.Join(cacheDir, "debootstrap")
	final := filepath.Join(root, name)
	if _, err := os.Stat(filepath.Join(final, baseTreeInfoFile)); err == nil {
		p.note("debootstrap tree %s (cached)", name)
		return filepath.Join(final, "tree"), nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	lock, err := fsutil.LockFile(ctx, filepath.Join(root, name+".lock"))
	if err != nil {
		return "", err
	}
	defer lock.Unlock()
	if _, err := os.Stat(filepath.Join(final, baseTreeInfoFile)); err == nil {
		p.note("debootstrap tree %s (cached, built concurrently)", name)
		return filepath.Join(final, "tree"), nil
	}
	if err := removeStaleTrees(final, filepath.Join(root, "."+name+".tmp-*")); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(root, "."+name+".tmp-")
	if err != nil {
		return "", err
	}
	defer func() {
		// Gone already once renamed; what is left, the next build removes
		// (removeStaleTrees).
		if err := removeTree(tmp); err != nil {
			p.note("remove %s: %v", tmp, err)
		}
	}()
	if err := runDebootstrap(ctx, filepath.Join(tmp, "tree"), key, p, log); err != nil {
		return "", err
	}
	info, err := json.MarshalIndent(key, "", "  ")
	if err != nil {
		return "", err
	}
	if err := fsutil.WriteFileSync(filepath.Join(tmp, baseTreeInfoFile), append(info, '\n'), 0o644); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("publish debootstrap tree: %w", err)
	}
	return filepath.Join(final, "tree"), nil
}

// removeStaleTrees removes path and the glob's matches with removeTree.
func removeStaleTrees(path, pattern string) error {
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return err
	}
	for _, m := range append(matches, path) {
		if err := removeTree(m); err != nil {
			return fmt.Errorf("remove stale %s: %w", m, err)
		}
	}
	return nil
}

// runDebootstrap runs debootstrap into dir, showing its progress, and
// removes the downloaded packages and lists from the result.
func runDebootstrap(ctx context.Context, dir string, key baseTreeKey, p *progress, log io.Writer) error {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return fmt.Errorf("debootstrap not installed on the build host (apt-get install debootstrap): %w", err)
	}
	args := []string{"--variant=" + key.Variant, "--include=" + strings.Join(key.Include, ","), key.Sources.Suite, dir, key.Sources.Mirror}
	if key.Variant == "-" {
		args = args[1:]
	}
	desc := fmt.Sprintf("debootstrap --variant=%s %s (+%s) from %s", key.Variant, key.Sources.Suite, strings.Join(key.Include, ","), key.Sources.Mirror)
	return p.long(desc, func(m *meter) error {
		tail := newTailBuffer(4000)
		cmd := exec.CommandContext(ctx, "debootstrap", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
		cmd.WaitDelay = 10 * time.Second
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		fmt.Fprintf(log, "+ debootstrap %s\n", strings.Join(args, " "))
		if err := cmd.Start(); err != nil {
			return err
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			followDebootstrap(pr, io.MultiWriter(log, tail), m)
		}()
		err := cmd.Wait()
		pw.Close()
		<-done
		if ctxErr := ctx.Err(); ctxErr != nil {
			killChrootProcesses(dir)
			return fmt.Errorf("debootstrap: %w", ctxErr)
		}
		if err != nil {
			return fmt.Errorf("debootstrap: %w%s", err, hostcmd.StderrSuffix(lastLines(tail.String(), 8)))
		}
		return trimBaseTree(dir)
	})
}

// followDebootstrap copies debootstrap's output to w and turns its
// "I: Retrieving/Unpacking/Configuring <pkg>" lines into progress.
func followDebootstrap(r io.Reader, w io.Writer, m *meter) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	var retrieved, unpacked, configured int
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(w, line)
		switch {
		case strings.HasPrefix(line, "I: Retrieving ") && !strings.HasPrefix(line, "I: Retrieving Packages") && !strings.HasPrefix(line, "I: Retrieving InRelease") && !strings.HasPrefix(line, "I: Retrieving Release"):
			retrieved++
			m.update(0, 0, fmt.Sprintf("retrieved %d packages", retrieved))
		case strings.HasPrefix(line, "I: Unpacking ") || strings.HasPrefix(line, "I: Extracting "):
			unpacked++
			m.update(unpacked, 2*retrieved, "unpacking "+strings.Fields(line)[2])
		case strings.HasPrefix(line, "I: Configuring "):
			configured++
			m.update(min(retrieved+configured, 2*retrieved), 2*retrieved, "configuring "+strings.TrimSuffix(strings.Fields(line)[2], "..."))
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// trimBaseTree removes what debootstrap leaves behind that no image needs:
// the downloaded .debs and the package lists.
func trimBaseTree(dir string) error {
	for _, pattern := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages", "var/lib/apt/lists/*Release*"} {
		matches, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return err
		}
		for _, m := range matches {
			if err := os.Remove(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyTree copies the cached base tree to dst (reflinks where the file
// system supports them), keeping owners, modes, links and xattrs.
func copyTree(ctx context.Context, src, dst string) error {
	_, err := hostcmd.Run(ctx, hostcmd.Command{Name: "cp", Args: []string{"-a", "--reflink=auto", src, dst}})
	return err
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
