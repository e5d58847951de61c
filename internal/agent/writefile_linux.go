package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/safetext"
)

// writeFileScript makes the directory, writes the file beside its target,
// flushes it and renames it into place. It runs as the target user, so a
// path through that user's own symlinks can only reach what the user could
// write anyway.
const writeFileScript = `umask 077 && mkdir -p -- "$1" && cat > "$2" && sync -- "$2" && mv -f -- "$2" "$3"`

// writeFile writes req.Content to req.Path as req.User (see
// agentapi.WriteFileRequest). The content never appears in an error.
func writeFile(ctx context.Context, req agentapi.WriteFileRequest) error {
	u, err := user.Lookup(req.User)
	if err != nil {
		return fmt.Errorf("write_file: user %s: %w", req.User, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || u.HomeDir == "" {
		return fmt.Errorf("write_file: user %s has no usable uid, gid or home", req.User)
	}
	target := expandHome(req.Path, u.HomeDir)
	dir := filepath.Dir(target)
	creds := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if uint32(uid) == uint32(os.Geteuid()) {
		creds = nil
	}
	content := req.Content
	if req.Merge == "json" {
		// Read as the user too: root must not pour a file the user could
		// not read into one the user owns.
		current, err := runAs(ctx, creds, u.HomeDir, nil, `cat -- "$1" 2>/dev/null || true`, target)
		if err != nil {
			return fmt.Errorf("write_file %s: read the current file: %v", req.Path, err)
		}
		if content, err = mergeJSON(current, req.Content); err != nil {
			return fmt.Errorf("write_file %s: %v", req.Path, err)
		}
	}
	tmp := filepath.Join(dir, "."+filepath.Base(target)+".hearth-"+strconv.FormatInt(time.Now().UnixNano(), 36))

	if _, err := runAs(ctx, creds, u.HomeDir, content, writeFileScript, dir, tmp, target); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write_file %s as %s: %v", req.Path, req.User, err)
	}
	return nil
}

// runAs runs a shell script with args as the user creds (nil: as the
// agent) and returns its standard output.
func runAs(ctx context.Context, creds *syscall.Credential, home string, stdin []byte, script string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", script, "sh"}, args...)...)
	cmd.Env = []string{"PATH=" + defaultPath, "HOME=" + home, "LANG=C.UTF-8"}
	cmd.Dir = "/"
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if creds != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: creds}
	}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%v: %s", err, safetext.Clip(strings.TrimSpace(stderr.String()), 300))
	}
	return stdout.Bytes(), nil
}

// mergeJSON merges the JSON object patch into the JSON object current
// (empty: {}): objects merge key by key, anything else is replaced.
func mergeJSON(current, patch []byte) ([]byte, error) {
	base := map[string]any{}
	if len(bytes.TrimSpace(current)) > 0 {
		if err := json.Unmarshal(current, &base); err != nil {
			return nil, errors.New("the current file is not a JSON object")
		}
	}
	var p map[string]any
	if err := json.Unmarshal(patch, &p); err != nil {
		return nil, errors.New("the content is not a JSON object")
	}
	return json.MarshalIndent(mergeObjects(base, p), "", "  ")
}

func mergeObjects(base, patch map[string]any) map[string]any {
	for k, v := range patch {
		pv, pok := v.(map[string]any)
		bv, bok := base[k].(map[string]any)
		if pok && bok {
			base[k] = mergeObjects(bv, pv)
		} else {
			base[k] = v
		}
	}
	return base
}
