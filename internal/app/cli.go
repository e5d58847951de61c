package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/safetext"
)

const usage = `hearth — microVMs for AI coding CLIs

Usage:
  hearth serve [--config FILE] [--listen ADDR] [--state-dir DIR]
  hearth vm create --image NAME [--role R] [--vcpus N] [--memory MIB] [--user U] [--boot-timeout 90s] [--wait]
  hearth vm list | get ID | wait ID [--state ready] [--timeout 60s] | console ID [--follow] [--raw] | rm ID [--wait]
  hearth vm exec ID [--timeout 30s] -- COMMAND [ARGS...]
  hearth vm viewer ID [--view-only] [--ttl 15m]   (prints a link to watch the VM's screen in a browser)
  hearth vm viewers ls ID | rm ID    (the VM's open viewers; rm closes them all and revokes every link so far)
  hearth apikey create [--admin] [--user U] [--name NAME] [--expires 30d|TIME] [--save]
  hearth apikey list [--user U] [--json] | revoke ID [--force]
  hearth image build [--profile minimal] [--agent PATH] | list
  hearth login start PROVIDER [--user U] [--wait] | get ID | cancel ID | list | credentials [--user U]
  hearth vault rotate                (new master key; every stored credential re-wrapped)
  hearth host setup                  (bridge, ip_forward, nftables; the daemon also does it at start)
  hearth doctor
  hearth version

Common flags: --config FILE (or HEARTH_CONFIG), --state-dir DIR, --addr HOST:PORT and
--key KEY (or HEARTH_API_KEY; root falls back to the key saved by 'apikey create --save').
'apikey create' writes this host's database (how the first admin key is made) unless
--key or HEARTH_API_KEY is given: then it asks the daemon, as list and revoke always do.
`

// Main runs the hearth command line and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stdout)
	case "vm":
		err = cmdVM(ctx, args[1:], stdout)
	case "apikey":
		err = cmdAPIKey(ctx, args[1:], stdout)
	case "image":
		err = cmdImage(ctx, args[1:], stdout)
	case "host":
		err = cmdHost(ctx, args[1:], stdout)
	case "vault":
		err = cmdVault(ctx, args[1:], stdout)
	case "login":
		err = cmdLogin(ctx, args[1:], stdout)
	case "doctor":
		var failed bool
		failed, err = cmdDoctor(ctx, args[1:], stdout)
		if err == nil && failed {
			return 1
		}
	case "version", "--version":
		fmt.Fprintln(stdout, "hearth", Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "hearth: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 2
		}
		// Errors may carry a guest's text (a failure reason, a console
		// tail): nothing in them may drive the terminal.
		fmt.Fprintln(stderr, "hearth:", safetext.Text(err.Error(), 0))
		return 1
	}
	return 0
}

// common holds the flags every command shares.
type common struct {
	configPath string
	stateDir   string
	addr       string
	key        string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.configPath, "config", os.Getenv("HEARTH_CONFIG"), "config file (TOML)")
	fs.StringVar(&c.stateDir, "state-dir", "", "state directory (overrides config and HEARTH_STATE_DIR)")
	fs.StringVar(&c.addr, "addr", os.Getenv("HEARTH_ADDR"), "daemon address (default: the configured listen address)")
	fs.StringVar(&c.key, "key", "", "API key (default: HEARTH_API_KEY, then the saved CLI key)")
}

// config loads and validates the configuration with flag overrides.
func (c *common) config() (config.Config, error) {
	path := c.configPath
	if path == "" {
		if _, err := os.Stat("/etc/hearth/hearth.toml"); err == nil {
			path = "/etc/hearth/hearth.toml"
		}
	}
	cfg, err := config.Load(path, os.Environ())
	if err != nil {
		return cfg, err
	}
	if c.stateDir != "" {
		cfg.StateDir = c.stateDir
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

// savedKeyPath is where 'apikey create --save' puts a key for the CLI.
func savedKeyPath(cfg config.Config) string { return filepath.Join(cfg.StateDir, "cli.key") }

// client is the API client the command's flags, environment and
// configuration name. It needs nothing from the host but an address and a
// key: --addr or HEARTH_ADDR (else the configured listen address, else
// hearth's default), and --key or HEARTH_API_KEY (else the key root saved
// with 'apikey create --save'), so it works as any user, from any machine
// that reaches the daemon.
func (c *common) client() (*client.Client, error) {
	addr, key := c.addr, c.key
	if key == "" {
		key = os.Getenv("HEARTH_API_KEY")
	}
	if addr == "" || key == "" {
		// Only root can read the saved key, and another user may not be
		// able to read the configuration: its trouble matters only when
		// it is all there is to go by.
		cfg, err := c.config()
		switch {
		case err == nil:
			if addr == "" {
				addr = cfg.Listen
			}
			if key == "" {
				if b, err := os.ReadFile(savedKeyPath(cfg)); err == nil {
					key = strings.TrimSpace(string(b))
				}
			}
		case c.configPath != "":
			return nil, err // a configuration asked for by name must load
		}
	}
	if addr == "" {
		addr = config.Default().Listen
	}
	if key == "" {
		return nil, errors.New("no API key: pass --key or set HEARTH_API_KEY (root may run 'hearth apikey create --admin --save' to save one for itself)")
	}
	return client.New(addr, key), nil
}

// onlyArg returns the single positional argument, or usage as the error.
func onlyArg(pos []string, usage string) (string, error) {
	if len(pos) != 1 {
		return "", errors.New(usage)
	}
	return pos[0], nil
}

func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	// Allow flags after positional arguments ("vm rm ID --wait"); after
	// "--" everything is positional ("vm exec ID -- ls -l").
	var rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	pos, err := parseFlags(fs, args)
	return append(pos, rest...), err
}

func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func cmdServe(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var c common
	c.register(fs)
	listen := fs.String("listen", "", "API listen address (overrides config and HEARTH_LISTEN)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := c.config()
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("invalid configuration:\n%w", err)
		}
	}
	return Serve(ctx, cfg, stdout)
}

// printJSON prints v indented, with any control character left in its
// strings escaped for the terminal.
func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(safetext.EscapeJSON(b), '\n'))
	return err
}

func cmdVM(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) < 1 {
		return errors.New("usage: hearth vm create|list|get|wait|console|exec|viewer|viewers|rm")
	}
	sub := args[0]
	fs := flag.NewFlagSet("vm "+sub, flag.ContinueOnError)
	var c common
	c.register(fs)
	var (
		imageName   = fs.String("image", "minimal", "image name or id (create)")
		role        = fs.String("role", "", "role (create; default: the image's)")
		vcpus       = fs.Int("vcpus", 0, "vCPUs (create)")
		memory      = fs.Int("memory", 0, "memory in MiB (create)")
		user        = fs.String("user", "", "owner (create; admin keys)")
		bootTimeout = fs.Duration("boot-timeout", 0, "boot deadline (create)")
		wait        = fs.Bool("wait", false, "wait until ready (create) or destroyed (rm)")
		state       = fs.String("state", "ready", "state to wait for (wait)")
		timeout     = fs.Duration("timeout", 5*time.Minute, "how long to wait (exec: the command's limit, at most 10m)")
		follow      = fs.Bool("follow", false, "keep streaming (console)")
		raw         = fs.Bool("raw", false, "the guest's console bytes as they are, control characters included (console)")
		offset      = fs.Int64("offset", 0, "start offset (console)")
		egress      = fs.String("egress", "", "egress policy (create): open or none")
		viewOnly    = fs.Bool("view-only", false, "the viewer sends no input (viewer)")
		ttl         = fs.Duration("ttl", 0, "viewer link lifetime (viewer; default: the server's)")
	)
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
		return printJSON(stdout, v)
	case "list":
		vms, err := cl.ListVMs(ctx, api.ListVMsParams{})
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
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
		return printJSON(stdout, v)
	case "wait":
		id, err := needID()
		if err != nil {
			return err
		}
		v, err := waitState(ctx, cl, id, api.State(*state), *timeout)
		if err != nil {
			return err
		}
		return printJSON(stdout, v)
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
		out := stdout
		if !*raw {
			// The guest writes its console: by default nothing of it may
			// drive the terminal.
			sw := safetext.NewWriter(stdout)
			defer sw.Close()
			out = sw
		}
		_, err = io.Copy(out, rc)
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
		fmt.Fprint(stdout, res.Stdout)
		fmt.Fprint(os.Stderr, res.Stderr)
		if res.ExitCode != 0 {
			return fmt.Errorf("exit status %d", res.ExitCode)
		}
		return nil
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
		fmt.Fprintln(stdout, l.URL)
		fmt.Fprintf(os.Stderr, "expires %s%s\n", l.ExpiresAt.Local().Format(time.RFC3339),
			map[bool]string{true: " (view only)"}[l.ViewOnly])
		return nil
	case "viewers":
		return vmViewers(ctx, cl, pos, stdout)
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
		fmt.Fprintf(stdout, "%s %s\n", v.ID, v.State)
		return nil
	default:
		return fmt.Errorf("unknown vm command %q", sub)
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
