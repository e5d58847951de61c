package build

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/hearth-project/hearth/internal/image/internal/hostcmd"
)

// aptInstall runs apt-get update and apt-get install --no-install-recommends
// for pkgs inside the chroot, with a percentage meter fed by apt's status
// file descriptor.
func aptInstall(ctx context.Context, c *chroot, pkgs []string, m *meter) error {
	tail := newTailBuffer(16 * 1024)
	m.update(0, 0, "apt-get update")
	if err := c.run(ctx, chrootCmd{args: []string{"apt-get", "update", "-q"}, tail: tail}); err != nil {
		return fmt.Errorf("apt-get update: %w%s", err, hostcmd.StderrSuffix(aptErrors(tail.String())))
	}
	if len(pkgs) == 0 {
		return nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		followAptStatus(pr, m)
	}()
	tail = newTailBuffer(16 * 1024)
	args := append([]string{
		"apt-get", "install", "-y", "-q", "--no-install-recommends",
		"-o", "APT::Status-Fd=3", "-o", "Dpkg::Use-Pty=0",
		"-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
	}, pkgs...)
	err = c.run(ctx, chrootCmd{args: args, tail: tail, extra: pw})
	pw.Close()
	<-done
	pr.Close()
	if err != nil {
		return aptFailure(err, tail.String())
	}
	return nil
}

// followAptStatus turns apt's status lines ("dlstatus:", "pmstatus:
// <pkg>:<percent>:<message>") into meter updates.
func followAptStatus(r io.Reader, m *meter) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 4)
		if len(parts) < 4 {
			continue
		}
		pct, err := strconv.ParseFloat(parts[2], 64)
		if err != nil {
			continue
		}
		switch parts[0] {
		case "dlstatus":
			m.update(int(pct*10), 2000, "downloading: "+parts[3])
		case "pmstatus":
			m.update(1000+int(pct*10), 2000, parts[3])
		}
	}
}

// aptPackageErrors map apt's messages to the package they are about.
var aptPackageErrors = []*regexp.Regexp{
	regexp.MustCompile(`E: Unable to locate package (\S+)`),
	regexp.MustCompile(`E: Package '([^']+)' has no installation candidate`),
	regexp.MustCompile(`E: Version '[^']*' for '([^']+)' was not found`),
	regexp.MustCompile(`E: Couldn't find any package by (?:glob|regex) '([^']+)'`),
	regexp.MustCompile(`(?m)^ (\S+) : (?:Depends|PreDepends|Conflicts|Breaks):`),
	regexp.MustCompile(`(?m)Errors were encountered while processing:\n\s*(\S+)`),
	regexp.MustCompile(`dpkg: error processing package (\S+) `),
}

// aptFailure builds the error for a failed apt-get install: it names the
// first package apt complained about and quotes apt's error lines.
func aptFailure(err error, output string) error {
	msg := aptErrors(output)
	if msg == "" {
		msg = lastLines(output, 6)
	}
	for _, re := range aptPackageErrors {
		if sm := re.FindStringSubmatch(output); sm != nil {
			return fmt.Errorf("package %q: %s", sm[1], oneLine(msg))
		}
	}
	return fmt.Errorf("apt-get install: %w: %s", err, oneLine(msg))
}

// aptErrors returns apt's "E: " lines (or dpkg's error lines).
func aptErrors(output string) string {
	var lines []string
	for _, line := range strings.Split(output, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "dpkg: error") {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "\n")
}

// oneLine joins lines with "; ".
func oneLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}

// policyRcD is /usr/sbin/policy-rc.d while packages are installed: no
// service is started or restarted inside the chroot.
const policyRcD = "#!/bin/sh\n# hearth image builder: do not start services in the build chroot.\nexit 101\n"
