package agent

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/hearth-project/hearth/internal/agentapi"
)

const (
	cmdlineSource = "cmdline:"
	cmdlineParam  = "hearth.token="
	maxSourceSize = 64 << 10 // a kernel command line is at most a few KiB
)

// readToken returns the token from the first of sources that exists, and
// that source. When none exists the source is "". Errors never contain the
// token.
func readToken(sources []string) (token []byte, source string, err error) {
	for _, src := range sources {
		text, err := readTokenSource(src)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, src, fmt.Errorf("read token from %s: %w", src, err)
		}
		token, err := agentapi.ParseToken(text)
		if err != nil {
			return nil, src, fmt.Errorf("read token from %s: %w", src, err)
		}
		return token, src, nil
	}
	return nil, "", fmt.Errorf("read token: none of %s exists", strings.Join(sources, ", "))
}

// readTokenSource returns the token text of one source. A command line
// without the parameter counts as not existing.
func readTokenSource(src string) (string, error) {
	path, isCmdline := strings.CutPrefix(src, cmdlineSource)
	b, err := readSmallFile(path)
	if err != nil {
		return "", err
	}
	if !isCmdline {
		return string(b), nil
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, cmdlineParam); ok {
			return v, nil
		}
	}
	return "", fs.ErrNotExist
}

// readSmallFile reads a file of at most maxSourceSize bytes.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSourceSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSourceSize {
		return nil, fmt.Errorf("larger than %d bytes", maxSourceSize)
	}
	return b, nil
}
