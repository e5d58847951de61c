package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/safetext"
)

// The vm commands of a VM's work API: processes (run, ps, kill) and files
// (cp, ls) in its guest.

// exitCode is the exit status a command passes on as hearth's own (vm
// run ends with its process's).
type exitCode int

func (e exitCode) Error() string { return "exit status " + strconv.Itoa(int(e)) }

// stdin is what vm run --stdin forwards (a variable for the tests).
var stdin io.Reader = os.Stdin

// envFlags collects repeated -e KEY=VALUE flags.
type envFlags []string

func (e *envFlags) String() string { return strings.Join(*e, " ") }

func (e *envFlags) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	*e = append(*e, v)
	return nil
}

// runOptions are vm run's flags.
type runOptions struct {
	user, cwd string
	env       []string
	stdin     bool
	timeout   time.Duration // 0: none
}

// outputRetries bounds how often vm run reconnects to an output stream
// that broke off before the process's exit.
const outputRetries = 5

// vmRun runs argv in VM id, streams its stdout and stderr to ours as they
// come, and ends with its exit status (128+N for a process killed by
// signal N). The process dies with the command: interrupting it closes
// the output stream, and the process was started with die_with_client.
func vmRun(ctx context.Context, cl *client.Client, id string, argv []string, o runOptions, out output) error {
	req := api.ProcessStart{Argv: argv, Env: o.env, Cwd: o.cwd, User: o.user, Stdin: o.stdin, DieWithClient: true,
		TimeoutSeconds: int((o.timeout + time.Second - 1) / time.Second), Tag: "cli"}
	p, err := cl.StartProcess(ctx, id, req)
	if err != nil {
		return err
	}
	if o.stdin {
		go func() {
			if err := cl.Stdin(ctx, id, p.ID, stdin, true); err != nil && ctx.Err() == nil {
				fmt.Fprintln(out.stderr, "hearth: stdin:", safetext.Text(err.Error(), 0))
			}
		}()
	}
	var offset int64
	for tries := 0; ; tries++ {
		exit, err := followOutput(ctx, cl, id, p.ID, &offset, out)
		switch {
		case exit != nil:
			return exitStatus(*exit)
		case ctx.Err() != nil:
			return exitCode(130) // interrupted: the process dies with its stream
		case tries >= outputRetries:
			return fmt.Errorf("the output of process %s broke off at byte %d: %w", p.ID, offset, err)
		}
	}
}

// followOutput copies a process's output from *offset until its exit,
// which it returns, or until the stream breaks off (nil, with *offset
// where to resume).
func followOutput(ctx context.Context, cl *client.Client, id, pid string, offset *int64, out output) (*api.ProcessExit, error) {
	s, err := cl.ProcessOutput(ctx, id, pid, *offset)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	for {
		e, err := s.Next()
		if err != nil {
			return nil, err
		}
		switch e.Type {
		case client.OutputStdout:
			_, err = out.stdout.Write(e.Output.Data)
		case client.OutputStderr:
			_, err = out.stderr.Write(e.Output.Data)
		case client.OutputDropped:
			fmt.Fprintf(out.stderr, "hearth: %d bytes of output lost (the process outran this reader)\n", e.Dropped.To-e.Dropped.From)
		case client.OutputExit:
			return &e.Exit, nil
		}
		if err != nil {
			return nil, err
		}
		*offset = e.ID
	}
}

// signalNumbers are Linux's numbers of the signals a guest's process may
// end by, for the shell's 128+N exit status.
var signalNumbers = map[string]int{"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7, "FPE": 8,
	"KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "XCPU": 24, "XFSZ": 25}

// exitStatus is how a process's end reads as a command's exit status:
// nil for 0.
func exitStatus(e api.ProcessExit) error {
	switch {
	case e.Code != nil && *e.Code == 0:
		return nil
	case e.Code != nil:
		return exitCode(*e.Code)
	}
	if n, ok := signalNumbers[strings.TrimPrefix(e.Signal, "SIG")]; ok {
		return exitCode(128 + n)
	}
	return exitCode(255)
}

// vmPs lists a VM's processes.
func vmPs(ctx context.Context, cl *client.Client, id string, w io.Writer) error {
	ps, err := cl.Processes(ctx, id)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPID\tUSER\tSTATE\tEXIT\tSTARTED\tCOMMAND")
	for _, p := range ps {
		exit := ""
		switch {
		case p.Exit.Code != nil:
			exit = strconv.Itoa(*p.Exit.Code)
		case p.Exit.Signal != "":
			exit = "SIG" + p.Exit.Signal
		}
		if p.Exit.Reason != "" {
			exit += " (" + p.Exit.Reason + ")"
		}
		// The guest says what its processes are: nothing of it may
		// drive the terminal.
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s ago\t%s\n", safetext.Line(p.ID, 64), p.Pid, safetext.Line(p.User, 64), p.State,
			safetext.Line(exit, 80), time.Since(p.StartedAt).Round(time.Second), safetext.Line(strings.Join(p.Argv, " "), 200))
	}
	return tw.Flush()
}

// vmKill sends a signal to a process's group.
func vmKill(ctx context.Context, cl *client.Client, id, pid, signal string) error {
	return cl.SignalProcess(ctx, id, pid, strings.TrimPrefix(strings.ToUpper(signal), "SIG"), true)
}

// remotePath reads "VM:/path"; ok is false for a local path.
func remotePath(arg string) (vm, p string, ok bool) {
	vm, p, ok = strings.Cut(arg, ":")
	if !ok || vm == "" || strings.ContainsAny(vm, `/\`) {
		return "", "", false
	}
	return vm, p, true
}

// vmCp copies a file out of a VM (VM:/path local) or into one (local
// VM:/path), streamed, keeping its permission bits.
func vmCp(ctx context.Context, cl *client.Client, src, dst, user string, out output) error {
	svm, spath, sRemote := remotePath(src)
	dvm, dpath, dRemote := remotePath(dst)
	switch {
	case sRemote == dRemote:
		return errors.New("usage: hearth vm cp VM:/path LOCAL | hearth vm cp LOCAL VM:/path (one side in the VM)")
	case sRemote:
		return download(ctx, cl, svm, spath, dst, user, out.stdout)
	default:
		return upload(ctx, cl, src, dvm, dpath, user)
	}
}

func download(ctx context.Context, cl *client.Client, vm, from, to, user string, stdout io.Writer) error {
	f, err := cl.ReadFile(ctx, vm, user, from, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if to == "-" {
		_, err := io.Copy(stdout, f)
		return err
	}
	if fi, err := os.Stat(to); err == nil && fi.IsDir() {
		to = filepath.Join(to, path.Base(from))
	}
	mode := os.FileMode(0o644)
	if m, err := strconv.ParseUint(f.Mode, 8, 32); err == nil {
		mode = os.FileMode(m).Perm()
	}
	// Written beside its place and renamed into it once whole: a copy
	// cut short leaves what was there.
	tmp, err := os.CreateTemp(filepath.Dir(to), "."+filepath.Base(to)+".hearth-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, f)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil && f.Size >= 0 && n != f.Size {
		err = fmt.Errorf("got %d of its %d bytes", n, f.Size)
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), mode)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), to)
	}
	if err != nil {
		return fmt.Errorf("copy %s:%s to %s: %w", vm, from, to, err)
	}
	return nil
}

func upload(ctx context.Context, cl *client.Client, from, vm, to, user string) error {
	f, err := os.Open(from)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (vm cp copies files)", from)
	}
	if to == "" || strings.HasSuffix(to, "/") {
		to += filepath.Base(from)
	}
	_, err = cl.WriteFile(ctx, vm, user, to, fmt.Sprintf("%04o", fi.Mode().Perm()), f, fi.Size())
	return err
}

// vmLs lists a directory of a VM (or describes a file).
func vmLs(ctx context.Context, cl *client.Client, id, p, user string, w io.Writer) error {
	fi, err := cl.Stat(ctx, id, user, p)
	if err != nil {
		return err
	}
	entries := []api.FileInfo{fi}
	truncated := false
	if fi.Type == api.FileInfoTypeDir {
		l, err := cl.ListFiles(ctx, id, user, p)
		if err != nil {
			return err
		}
		entries, truncated = l.Entries, l.Truncated
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODE\tOWNER\tSIZE\tMODIFIED\tNAME")
	for _, e := range entries {
		name := e.Name
		switch e.Type {
		case api.FileInfoTypeDir:
			name += "/"
		case api.FileInfoTypeSymlink:
			name += " -> " + e.Target
		}
		owner := e.Owner
		if owner == "" {
			owner = strconv.Itoa(e.UID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", safetext.Line(e.Mode, 8), safetext.Line(owner, 32), e.Size,
			e.ModTime.Local().Format("2006-01-02 15:04"), safetext.Line(name, 4096))
	}
	if truncated {
		fmt.Fprintln(tw, "…\t\t\t\t(more entries than a listing holds)")
	}
	return tw.Flush()
}
