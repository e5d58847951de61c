package agent

import (
	"context"
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

// readToken returns the token from the first of opts.TokenSources that
// exists, and that source. When none exists the source is "". Errors never
// contain the token.
func readToken(ctx context.Context, opts Options) (token []byte, source string, err error) {
	var why []string // why MMDS sources count as missing
	for _, src := range opts.TokenSources {
		text, err := readTokenSource(ctx, src, opts)
		if errors.Is(err, fs.ErrNotExist) {
			if isMMDSSource(src) {
				why = append(why, src+": "+err.Error())
			}
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
	err = fmt.Errorf("read token: none of %s exists", strings.Join(opts.TokenSources, ", "))
	if len(why) > 0 {
		err = fmt.Errorf("%w (%s)", err, strings.Join(why, "; "))
	}
	return nil, "", err
}

// readTokenSource returns the token text of one source: "mmds[:URL]" (see
// mmds.go), "cmdline:PATH" or a file. A command line without the parameter
// counts as not existing.
func readTokenSource(ctx context.Context, src string, opts Options) (string, error) {
	if isMMDSSource(src) {
		return readMMDS(ctx, src, opts)
	}
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

// checkTokenSources reports a token source that can never work: an mmds
// source with an invalid URL.
func checkTokenSources(sources []string) error {
	for _, src := range sources {
		if u, ok := strings.CutPrefix(src, mmdsSource+":"); ok {
			if _, err := parseMMDSURL(u); err != nil {
				return fmt.Errorf("token source %s: %w", src, err)
			}
		}
	}
	return nil
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
