package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// guestSSHDir holds the benchmark's sshd configuration and keys in the
// guest, owned by root.
const guestSSHDir = "/etc/hearth-bench-ssh"

// sshd is the guest's sshd, started for the benchmark, and what the host's
// ssh and scp need to reach it: a key, a known_hosts with the guest's
// host key, and no user or system configuration.
type sshd struct {
	cl       *client.Client
	vm, pid  string
	ip, dir  string
	identity string
}

func keygen(path string) error {
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "workbench", "-f", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ssh-keygen: %v: %s", err, out)
	}
	return nil
}

// startSSHD makes a host key and a client key, uploads the host key, the
// authorized key and a configuration as root, starts sshd in the
// foreground through the process API and waits until it accepts SSH
// connections from the host.
func startSSHD(ctx context.Context, cl *client.Client, vm, ip string) (*sshd, error) {
	dir, err := os.MkdirTemp("", "workbench-ssh-")
	if err != nil {
		return nil, err
	}
	s := &sshd{cl: cl, vm: vm, ip: ip, dir: dir, identity: filepath.Join(dir, "id_ed25519")}
	for _, k := range []string{"host_key", "id_ed25519"} {
		if err := keygen(filepath.Join(dir, k)); err != nil {
			s.close()
			return nil, err
		}
	}
	read := func(name string) []byte { b, _ := os.ReadFile(filepath.Join(dir, name)); return b }
	hostPub := read("host_key.pub")
	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), append([]byte(ip+" "), hostPub...), 0o600); err != nil {
		s.close()
		return nil, err
	}
	// Debian's defaults (PAM, privilege separation) with the benchmark's
	// keys, public keys only, and the sftp subsystem scp uses.
	conf := strings.Join([]string{
		"Port 22",
		"ListenAddress " + ip,
		"HostKey " + guestSSHDir + "/host_key",
		"AuthorizedKeysFile " + guestSSHDir + "/authorized_keys",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM yes",
		"PidFile none",
		"Subsystem sftp /usr/lib/openssh/sftp-server",
		"",
	}, "\n")
	if _, err := cl.MakeDirectory(ctx, vm, "root", api.MakeDirectory{Path: guestSSHDir, Mode: "0755", Parents: true}); err != nil {
		s.close()
		return nil, fmt.Errorf("guest %s: %w", guestSSHDir, err)
	}
	// sshd reads authorized_keys as the user logging in.
	for _, f := range []struct {
		name, mode string
		data       []byte
	}{{"host_key", "0600", read("host_key")}, {"authorized_keys", "0644", read("id_ed25519.pub")}, {"sshd_config", "0600", []byte(conf)}} {
		if _, err := cl.WriteFile(ctx, vm, "root", guestSSHDir+"/"+f.name, f.mode, bytes.NewReader(f.data), int64(len(f.data))); err != nil {
			s.close()
			return nil, fmt.Errorf("upload %s: %w", f.name, err)
		}
	}
	p, err := cl.StartProcess(ctx, vm, api.ProcessStart{User: "root", Tag: "workbench-sshd",
		Argv: []string{"/bin/sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -f " + guestSSHDir + "/sshd_config"}})
	if err != nil {
		s.close()
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	s.pid = p.ID
	// Ready once a real session runs a command.
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := s.command("true").CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			s.close()
			return nil, fmt.Errorf("ssh to the guest: %v: %s", err, out)
		}
		// sshd not yet listening: wait for its port rather than spin.
		d := net.Dialer{Timeout: time.Second}
		if c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, "22")); err == nil {
			c.Close()
		}
		select {
		case <-ctx.Done():
			s.close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return s, nil
}

// opts are ssh's and scp's options: this run's key and known host only,
// no configuration file, no agent, no connection sharing.
func (s *sshd) opts() []string {
	return []string{"-F", "/dev/null", "-i", s.identity, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile=" + filepath.Join(s.dir, "known_hosts"), "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "LogLevel=ERROR"}
}

// command is `ssh hearth@guest cmd`, as the workspace user.
func (s *sshd) command(cmd string, extra ...string) *exec.Cmd {
	args := append(s.opts(), extra...)
	args = append(args, "hearth@"+s.ip, cmd)
	return exec.Command("ssh", args...)
}

// scp copies from to to (one of them "guest:PATH").
func (s *sshd) scp(from, to string) *exec.Cmd {
	fix := func(p string) string {
		if rest, ok := strings.CutPrefix(p, "guest:"); ok {
			return "hearth@" + s.ip + ":" + rest
		}
		return p
	}
	args := append(s.opts(), "-q", fix(from), fix(to))
	return exec.Command("scp", args...)
}

// close stops sshd and removes the keys.
func (s *sshd) close() {
	if s.pid != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = s.cl.SignalProcess(ctx, s.vm, s.pid, "TERM", true)
		cancel()
	}
	os.RemoveAll(s.dir)
}
