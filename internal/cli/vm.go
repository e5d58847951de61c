package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/safetext"
)

const vmUsage = `usage: hearth vm create [--image minimal] [--role R] [--vcpus N] [--memory MIB] [--user U]
                      [--egress open|none] [--boot-timeout 90s] [--wait [--timeout 5m]]
       hearth vm list | get ID | wait ID [--state ready] [--timeout 5m] | rm ID [--wait]
       hearth vm console ID [--offset N] [--follow] [--raw]
       hearth vm exec ID [--timeout 5m] -- COMMAND [ARGS...]
       hearth vm run ID [--user U] [--cwd DIR] [-e KEY=VALUE]... [--stdin] [--timeout D] -- COMMAND [ARGS...]
       hearth vm ps ID | kill ID PROCESS [--signal TERM]
       hearth vm cp VM:/path LOCAL | cp LOCAL VM:/path  [--user U]
       hearth vm ls ID PATH [--user U]
       hearth vm viewer ID [--view-only] [--ttl 15m]
       hearth vm viewers ls ID | rm ID
       hearth vm shell ID [--user U] [--terminal] [-- COMMAND [ARGS...]]
                      (the VM's shell, or COMMAND, on a terminal attached to this one;
                       --terminal: the VM's lingering terminal session, as the browser's)

` + clientNote

func cmdVM(ctx context.Context, args []string, out output) error {
	if len(args) < 1 {
		return errors.New(vmUsage)
	}
	sub := args[0]
	fs := newFlags("vm "+sub, vmUsage, out)
	var c common
	c.registerClient(fs)
	var (
		imageName   = fs.String("image", "minimal", "image name or id (create)")
		role        = fs.String("role", "", "role (create; default: the image's)")
		vcpus       = fs.Int("vcpus", 0, "vCPUs (create; default: the daemon's)")
		memory      = fs.Int("memory", 0, "memory in MiB (create; default: the daemon's)")
		user        = fs.String("user", "", "owner (create; admin keys); the guest user to act as (run, cp, ls, shell; default hearth)")
		terminal    = fs.Bool("terminal", false, "attach to the VM's terminal session (shell)")
		bootTimeout = fs.Duration("boot-timeout", 0, "boot deadline (create; default: the daemon's)")
		wait        = fs.Bool("wait", false, "wait until ready (create) or destroyed (rm)")
		state       = fs.String("state", "ready", "state to wait for (wait)")
		timeout     = fs.Duration("timeout", 5*time.Minute, "how long to wait (create --wait, wait, rm --wait); exec: the command's limit, at most 10m; run: the process's limit (default none)")
		follow      = fs.Bool("follow", false, "keep streaming (console)")
		raw         = fs.Bool("raw", false, "the guest's console bytes as they are, control characters included (console)")
		offset      = fs.Int64("offset", 0, "start offset (console)")
		egress      = fs.String("egress", "", "egress policy (create): open or none")
		viewOnly    = fs.Bool("view-only", false, "the viewer sends no input (viewer)")
		ttl         = fs.Duration("ttl", 0, "viewer link lifetime (viewer; default: the server's)")
		cwd         = fs.String("cwd", "", "working directory (run; default: the user's home)")
		withStdin   = fs.Bool("stdin", false, "forward this command's stdin to the process (run)")
		signal      = fs.String("signal", "TERM", "signal to send (kill): HUP, INT, QUIT, KILL, TERM, USR1, USR2, STOP, CONT, WINCH")
		env         envFlags
	)
	fs.Var(&env, "e", "KEY=VALUE added to the process's environment (run; repeatable)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	needID := func() (string, error) { return onlyArg(pos, "usage: hearth vm "+sub+" ID") }
	switch sub {
	case "create":
		req := api.CreateVM{Image: *imageName, Role: *role, VCPUs: *vcpus, MemoryMiB: *memory,
			User: *user, BootTimeoutSeconds: int(bootTimeout.Seconds())}
		if *egress != "" {
			req.Network.Egress = &api.Egress{Mode: api.EgressMode(*egress)}
		}
		v, err := cl.CreateVM(ctx, req)
		if err != nil {
			return err
		}
		if *wait {
			v, err = waitState(ctx, cl, v.ID, api.StateReady, *timeout)
			if err != nil {
				return err
			}
		}
		return safetext.WriteJSON(out.stdout, v)
	case "list":
		vms, err := cl.ListVMs(ctx, api.ListVMsParams{})
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(out.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSER\tROLE\tSTATE\tVCPUS\tMEMORY\tAGE\tREASON")
		for _, v := range vms {
			reason, _, _ := strings.Cut(v.FailureReason, "\n")
			reason = safetext.Line(reason, 200)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\n", v.ID, v.User, v.Role, v.State, v.VCPUs, v.MemoryMiB,
				time.Since(v.CreatedAt).Round(time.Second), reason)
		}
		return tw.Flush()
	case "get":
		id, err := needID()
		if err != nil {
			return err
		}
		v, err := cl.GetVM(ctx, id)
		if err != nil {
			return err
		}
		return safetext.WriteJSON(out.stdout, v)
	case "wait":
		id, err := needID()
		if err != nil {
			return err
		}
		v, err := waitState(ctx, cl, id, api.State(*state), *timeout)
		if err != nil {
			return err
		}
		return safetext.WriteJSON(out.stdout, v)
	case "console":
		id, err := needID()
		if err != nil {
			return err
		}
		rc, err := cl.Console(ctx, id, *offset, *follow)
		if err != nil {
			return err
		}
		defer rc.Close()
		w := out.stdout
		if !*raw {
			// The guest writes its console: by default nothing of it may
			// drive the terminal.
			sw := safetext.NewWriter(out.stdout)
			defer sw.Close()
			w = sw
		}
		_, err = io.Copy(w, rc)
		if ctx.Err() != nil {
			return nil // interrupted while following
		}
		return err
	case "exec":
		if len(pos) < 2 {
			return errors.New("usage: hearth vm exec ID -- COMMAND [ARGS...]")
		}
		res, err := cl.Exec(ctx, pos[0], api.ExecRequest{Argv: pos[1:], TimeoutSeconds: int(timeout.Seconds())})
		if err != nil {
			return err
		}
		fmt.Fprint(out.stdout, res.Stdout)
		fmt.Fprint(out.stderr, res.Stderr)
		if res.ExitCode != 0 {
			return fmt.Errorf("exit status %d", res.ExitCode)
		}
		return nil
	case "run":
		if len(pos) < 2 {
			return errors.New("usage: hearth vm run ID [flags] -- COMMAND [ARGS...]")
		}
		o := runOptions{user: *user, cwd: *cwd, env: env, stdin: *withStdin}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "timeout" {
				o.timeout = *timeout
			}
		})
		return vmRun(ctx, cl, pos[0], pos[1:], o, out)
	case "ps":
		id, err := needID()
		if err != nil {
			return err
		}
		return vmPs(ctx, cl, id, out.stdout)
	case "kill":
		if len(pos) != 2 {
			return errors.New("usage: hearth vm kill ID PROCESS [--signal TERM]")
		}
		return vmKill(ctx, cl, pos[0], pos[1], *signal)
	case "cp":
		if len(pos) != 2 {
			return errors.New("usage: hearth vm cp VM:/path LOCAL | hearth vm cp LOCAL VM:/path")
		}
		return vmCp(ctx, cl, pos[0], pos[1], *user, out)
	case "ls":
		if len(pos) != 2 {
			return errors.New("usage: hearth vm ls ID PATH")
		}
		return vmLs(ctx, cl, pos[0], pos[1], *user, out.stdout)
	case "viewer":
		id, err := needID()
		if err != nil {
			return err
		}
		if *ttl < 0 || (*ttl > 0 && *ttl < time.Second) {
			return fmt.Errorf("--ttl must be at least 1s, got %s", *ttl)
		}
		l, err := cl.CreateViewer(ctx, id, api.CreateViewer{ViewOnly: *viewOnly, TTLSeconds: int(ttl.Seconds())})
		if err != nil {
			return err
		}
		// The link is a credential until it expires: it goes to stdout
		// only, for the caller to hand to one person.
		fmt.Fprintln(out.stdout, l.URL)
		fmt.Fprintf(out.stderr, "expires %s%s\n", l.ExpiresAt.Local().Format(time.RFC3339),
			map[bool]string{true: " (view only)"}[l.ViewOnly])
		return nil
	case "viewers":
		return vmViewers(ctx, cl, pos, out.stdout)
	case "shell":
		if len(pos) < 1 {
			return errors.New("usage: hearth vm shell ID [--user U] [--terminal] [-- COMMAND [ARGS...]]")
		}
		return vmShell(ctx, cl, pos[0], shellOptions{user: *user, terminal: *terminal, argv: pos[1:]}, os.Stdin, out)
	case "rm":
		id, err := needID()
		if err != nil {
			return err
		}
		v, err := cl.DeleteVM(ctx, id)
		if err != nil {
			return err
		}
		if *wait {
			if v, err = waitState(ctx, cl, id, api.StateDestroyed, *timeout); err != nil {
				return err
			}
		}
		fmt.Fprintf(out.stdout, "%s %s\n", v.ID, v.State)
		return nil
	default:
		return fmt.Errorf("unknown vm command %q\n%s", sub, vmUsage)
	}
}

// waitState waits server-side in slices of at most 10 minutes.
func waitState(ctx context.Context, cl *client.Client, id string, state api.State, timeout time.Duration) (api.VM, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left > 10*time.Minute {
			left = 10 * time.Minute
		}
		if left < time.Second {
			left = time.Second
		}
		v, err := cl.WaitVM(ctx, id, state, left)
		var ae *client.Error
		if errors.As(err, &ae) && ae.Code == "wait_timeout" && time.Now().Before(deadline) {
			continue
		}
		if errors.As(err, &ae) && ae.VM != nil {
			msg := ae.Message
			if ae.VM.ConsoleTail != nil && *ae.VM.ConsoleTail != "" {
				msg += "\n--- console tail ---\n" + safetext.Text(*ae.VM.ConsoleTail, 0)
			}
			return *ae.VM, errors.New(msg)
		}
		return v, err
	}
}
