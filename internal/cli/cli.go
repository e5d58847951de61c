// Package cli is hearth's command line. Its commands are of two kinds:
// client commands (vm, login, apikey list and revoke, apikey create with a
// key), which talk to a running daemon through its API with
// internal/client and nothing else, so any user on any machine that
// reaches the daemon may run them; and host commands (serve, doctor,
// host setup, vault rotate, apikey create without a key, image), which
// call internal/app to work on this host's state directly, as root, with
// the daemon stopped if need be.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/hearth-project/hearth/internal/app"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/safetext"
)

const usage = `hearth — microVMs for AI coding CLIs

Usage: hearth COMMAND [ARGS] [FLAGS]      (hearth COMMAND [SUBCOMMAND] -h lists its flags)

The daemon (runs on this host, as root):
  hearth serve [--config FILE] [--listen ADDR] [--state-dir DIR]

Client commands talk to a running daemon through its API, and only through
it: any user may run them, on any machine that reaches the daemon, with
nothing but its address and an API key.
  hearth vm create [--image minimal] [--role R] [--vcpus N] [--memory MIB] [--user U]
                   [--egress open|none] [--boot-timeout 90s] [--wait [--timeout 5m]]
  hearth vm list | get ID | wait ID [--state ready] [--timeout 5m] | rm ID [--wait]
  hearth vm console ID [--offset N] [--follow] [--raw]
  hearth vm exec ID [--timeout 5m] -- COMMAND [ARGS...]
  hearth vm run ID [--user U] [--cwd DIR] [-e KEY=VALUE]... [--stdin] [--timeout D] -- COMMAND [ARGS...]
                                     (output streamed as it comes; exits with the command's status)
  hearth vm shell ID [--user U] [--terminal] [-- COMMAND [ARGS...]]
                                     (a terminal in the VM attached to this one; exits with its status)
  hearth vm ps ID | kill ID PROCESS [--signal TERM]
  hearth vm cp VM:/path LOCAL | cp LOCAL VM:/path [--user U]   (streamed, mode kept)
  hearth vm ls ID PATH [--user U]
  hearth vm viewer ID [--view-only] [--ttl 15m]   (a link to watch the VM's screen in a browser)
  hearth vm viewers ls ID | rm ID   (the VM's open viewers; rm closes them all and revokes every link so far)
  hearth login start PROVIDER [--user U] [--wait] | get ID | cancel ID | list | credentials [--user U]
  hearth prompt VM_ID --provider P [--cwd DIR] [-o NAME=VALUE]... [--json] "PROMPT"
                                     (runs it through the provider's AI CLI in the VM, signed in; streamed)
  hearth apikey list [--user U] [--json] | revoke ID [--force]
  hearth apikey create --key KEY [--admin] [--user U] [--name NAME] [--expires 30d|TIME]   (KEY: an admin's)
  hearth image build [--profile minimal | SPEC.yaml] [--kernel-package PKG] [--detach]
                                     (a daemon job: progress streamed; interrupting leaves it running,
                                      the same build asked again joins it)
  hearth image builds | cancel BUILD_ID | list | inspect IMAGE | verify IMAGE | rm IMAGE | gc

  The daemon: --addr HOST:PORT or HEARTH_ADDR (default: the configured listen
  address, else 127.0.0.1:7070). The key: --key KEY or HEARTH_API_KEY (root
  on the daemon's host falls back to the key 'apikey create --save' saved).
  The configuration is read only to fill in what these leave out.

Host commands run on this host, as root, and work with the daemon stopped:
they read and write its state directory, database and network directly.
  hearth apikey create [--admin] [--user U] [--name NAME] [--expires 30d|TIME] [--save]
                                     (no key given: into the database; how the first admin key is made)
  hearth image build --local [--profile minimal | SPEC.yaml] [--agent PATH] [--kernel-package PKG]
                                     (builds without the daemon, e.g. before it first starts)
  hearth vault rotate                (a new master key; every stored credential re-wrapped)
  hearth host setup                  (bridge, ip_forward, nftables; the daemon also does it at start)
  hearth doctor                      (is this host ready for hearth, and if not, what to fix)

  Which host: --config FILE or HEARTH_CONFIG (default /etc/hearth/hearth.toml
  if it exists), --state-dir DIR; HEARTH_* variables override the file.

  hearth version
`

// Main runs the hearth command line and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	out := output{stdout: stdout, stderr: stderr}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], out)
	case "vm":
		err = cmdVM(ctx, args[1:], out)
	case "apikey":
		err = cmdAPIKey(ctx, args[1:], out)
	case "image":
		err = cmdImage(ctx, args[1:], out)
	case "host":
		err = cmdHost(ctx, args[1:], out)
	case "vault":
		err = cmdVault(ctx, args[1:], out)
	case "login":
		err = cmdLogin(ctx, args[1:], out)
	case "prompt":
		err = cmdPrompt(ctx, args[1:], out)
	case "doctor":
		var failed bool
		failed, err = cmdDoctor(ctx, args[1:], out)
		if err == nil && failed {
			return 1
		}
	case "version", "--version":
		fmt.Fprintln(stdout, "hearth", app.Version)
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
		var code exitCode
		if errors.As(err, &code) {
			return int(code) // the guest command's own, already told
		}
		// Errors may carry a guest's text (a failure reason, a console
		// tail): nothing in them may drive the terminal.
		fmt.Fprintln(stderr, "hearth:", safetext.Text(err.Error(), 0))
		return 1
	}
	return 0
}

// output is where a command writes: its result to stdout, everything
// else (notes, flag help, a command's own stderr) to stderr.
type output struct{ stdout, stderr io.Writer }

// Where a command runs, as its -h says after the usage lines.
const (
	clientNote = "Talks to the daemon through its API only: any user, any machine that reaches it;\n" +
		"needs --addr (or HEARTH_ADDR) and --key (or HEARTH_API_KEY)."
	hostNote = "Runs on this host, as root; works with the daemon stopped."
)

// newFlags is a command's flag set. Its -h prints usage (the command's
// usage lines and where it runs), then the flags.
func newFlags(name, usage string, out output) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out.stderr)
	fs.Usage = func() {
		fmt.Fprintf(out.stderr, "%s\n\nFlags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// common holds the flags that say which daemon, which key and which host
// configuration a command uses.
type common struct {
	configPath string
	stateDir   string
	addr       string
	key        string
}

// registerHost adds the flags of a command that works on this host's
// state: which configuration and state directory.
func (c *common) registerHost(fs *flag.FlagSet) {
	fs.StringVar(&c.configPath, "config", os.Getenv("HEARTH_CONFIG"), "config file (TOML; default /etc/hearth/hearth.toml if it exists)")
	fs.StringVar(&c.stateDir, "state-dir", "", "state directory (overrides config and HEARTH_STATE_DIR)")
}

// registerClient adds the flags of a command that talks to the daemon:
// its address and the key, and the host configuration that fills in what
// they leave out.
func (c *common) registerClient(fs *flag.FlagSet) {
	c.registerDaemon(fs)
	fs.StringVar(&c.configPath, "config", os.Getenv("HEARTH_CONFIG"), "config file, read only for what --addr and --key leave out")
	fs.StringVar(&c.stateDir, "state-dir", "", "state directory, read only for root's saved key")
}

// registerDaemon adds --addr and --key.
func (c *common) registerDaemon(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", os.Getenv("HEARTH_ADDR"), "daemon address HOST:PORT (default: HEARTH_ADDR, else the configured listen address)")
	fs.StringVar(&c.key, "key", "", "API key (default: HEARTH_API_KEY, else the key root saved on the daemon's host)")
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
