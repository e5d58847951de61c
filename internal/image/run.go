package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// command describes one external program invocation.
type command struct {
	name string
	args []string
	dir  string   // working directory; "" = current
	env  []string // extra KEY=VALUE pairs appended to os.Environ()
}

// run executes c and returns its standard output. On failure the error names
// the command and carries the tail of its standard error.
func run(ctx context.Context, c command) ([]byte, error) {
	stdout, _, err := c.exec(ctx)
	return stdout, err
}

// runStderr executes c and returns its standard error, for tools such as
// debugfs that report failures there while exiting 0.
func runStderr(ctx context.Context, c command) ([]byte, error) {
	_, stderr, err := c.exec(ctx)
	return stderr, err
}

// exec runs the command to completion.
func (c command) exec(ctx context.Context) (stdout, stderr []byte, err error) {
	cmd := exec.CommandContext(ctx, c.name, c.args...)
	cmd.Dir = c.dir
	if len(c.env) > 0 {
		cmd.Env = append(os.Environ(), c.env...)
	}
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout = &outBuf
	cmd.Stderr = &errBuf
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, nil, fmt.Errorf("%s: %w", c.name, ctxErr)
		}
		return nil, nil, fmt.Errorf("%s %s: %w%s", c.name, strings.Join(c.args, " "), err, stderrSuffix(errBuf.String()))
	}
	return outBuf.Bytes(), errBuf.Bytes(), nil
}

// stderrSuffix formats the tail of a command's standard error for inclusion
// in an error message.
func stderrSuffix(s string) string {
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
