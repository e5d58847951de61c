// Package hostcmd runs the build host's programs for the image builder and
// the ext4 reader (apt-get, dpkg-deb, mkfs.ext4, debugfs, ...). A failed
// command's error names it and carries the tail of its standard error.
package hostcmd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Command describes one external program invocation.
type Command struct {
	Name string
	Args []string
	Dir  string   // working directory; "" = current
	Env  []string // extra KEY=VALUE pairs appended to os.Environ()
}

// Run executes c and returns its standard output. On failure the error names
// the command and carries the tail of its standard error.
func Run(ctx context.Context, c Command) ([]byte, error) {
	stdout, _, err := c.exec(ctx)
	return stdout, err
}

// RunStderr executes c and returns its standard error, for tools such as
// debugfs that report failures there while exiting 0.
func RunStderr(ctx context.Context, c Command) ([]byte, error) {
	_, stderr, err := c.exec(ctx)
	return stderr, err
}

// exec runs the command to completion.
func (c Command) exec(ctx context.Context) (stdout, stderr []byte, err error) {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout = &outBuf
	cmd.Stderr = &errBuf
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, nil, fmt.Errorf("%s: %w", c.Name, ctxErr)
		}
		return nil, nil, fmt.Errorf("%s %s: %w%s", c.Name, strings.Join(c.Args, " "), err, StderrSuffix(errBuf.String()))
	}
	return outBuf.Bytes(), errBuf.Bytes(), nil
}

// StderrSuffix formats the tail of a command's standard error for inclusion
// in an error message.
func StderrSuffix(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	const maxLen = 2000
	if len(s) > maxLen {
		s = "..." + s[len(s)-maxLen:]
	}
	return ": " + strings.ReplaceAll(s, "\n", "; ")
}
