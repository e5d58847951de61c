package agent

import (
	"bytes"
	"context"
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
	tmp := filepath.Join(dir, "."+filepath.Base(target)+".hearth-"+strconv.FormatInt(time.Now().UnixNano(), 36))

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", writeFileScript, "sh", dir, tmp, target)
	cmd.Env = []string{"PATH=" + defaultPath, "HOME=" + u.HomeDir, "LANG=C.UTF-8"}
	cmd.Dir = "/"
	cmd.Stdin = bytes.NewReader(req.Content)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if uint32(uid) != uint32(os.Geteuid()) {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if err := cmd.Run(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write_file %s as %s: %v: %s", req.Path, req.User, err, clip(strings.TrimSpace(stderr.String()), 300))
	}
	return nil
}
