// Command fakefirecracker is a fake Firecracker v1.16.1 for hearth's tests,
// where real Firecracker cannot run (no KVM). It takes Firecracker's
// command line, serves the fake API of package fctest on --api-sock (every
// request checked against Firecracker's swagger document, pre-boot and
// post-boot rules as Firecracker's) and runs a fake guest behind it. It
// exits 0 after SendCtrlAltDel, like Firecracker once an x86 guest reboots,
// and dies of SIGTERM/SIGINT like Firecracker (after stopping its guest).
//
//	fakefirecracker [--api-sock PATH] [--id ID] [--log-path PATH] [--level LEVEL]
//	                [--show-level] [--show-log-origin] [--module M] [--metrics-path PATH]
//	                [--boot-timer] [--no-seccomp | --seccomp-filter PATH]
//	                [--start-time-us N] [--start-time-cpu-us N] [--parent-cpu-time-us N]
//	                [--http-api-max-payload-size N] [--mmds-size-limit N]
//	                [--enable-pci] [--version] [--help] [-- ...]
//
// As in Firecracker, flags are "--name value" (no "--name=value"), each at
// most once; a bad command line exits 153. --config-file, --no-api,
// --metadata, --snapshot-version and --describe-snapshot are Firecracker
// flags the fake does not model: it refuses them (exit 1).
//
// Test-only settings come from the environment:
//
//	HEARTH_FAKEFC_AGENT        guest agent binary, started at InstanceStart
//	HEARTH_FAKEFC_REQUEST_LOG  append every API request as a JSON line here
//	HEARTH_FAKEFC_FAULT        "PUT /boot-source=message;PATCH /vm=other": answer
//	                           these requests 400 with that fault_message
//	HEARTH_FAKEFC_NO_SOCKET=1  start, but never create the API socket
//	HEARTH_FAKEFC_GUEST_DIR    the fake guest's sockets (default: next to the API socket)
//	HEARTH_FAKEFC_LOG_FLOOD=D  once the guest runs, it makes Firecracker write log lines
//	                           and metrics as fast as they are taken, for the duration D
//	                           (fctest.Options.LogFlood)
//
// Invoked under the name "jailer" it is a fake of Firecracker's jailer
// instead (see jailer.go); under the name "fake-agent" it is
// fctest.FakeAgentMain, a stand-in guest agent.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/vmm/firecracker/fctest"
)

// Firecracker's exit codes (FcExitCode).
const (
	exitOK               = 0
	exitGenericError     = 1
	exitBadConfiguration = 152
	exitArgParsing       = 153
)

// Environment variables with test-only settings.
const (
	envAgent      = "HEARTH_FAKEFC_AGENT"
	envRequestLog = "HEARTH_FAKEFC_REQUEST_LOG"
	envFault      = "HEARTH_FAKEFC_FAULT"
	envNoSocket   = "HEARTH_FAKEFC_NO_SOCKET"
	envGuestDir   = "HEARTH_FAKEFC_GUEST_DIR"
	envLogFlood   = "HEARTH_FAKEFC_LOG_FLOOD"
)

func main() {
	fctest.MaybeGuestInit()
	switch filepath.Base(os.Args[0]) {
	case "jailer":
		os.Exit(runJailer(os.Args[1:], os.Stdout, os.Stderr))
	case "fake-agent":
		os.Exit(fctest.FakeAgentMain(os.Args[1:]))
	}
	// Firecracker writes its standard output (the serial console when
	// none is configured, the log before PUT /logger) without blocking.
	os.Exit(run(os.Args[1:], fctest.NonBlockingStdout(), os.Stderr))
}

// argSpec is one flag of an ArgParser-style command line.
type argSpec struct {
	name       string
	takesValue bool
	def        string
	help       string
}

// firecrackerArgs are Firecracker v1.16's flags.
var firecrackerArgs = []argSpec{
	{"api-sock", true, "/run/firecracker.socket", "Path to unix domain socket used by the API."},
	{"id", true, fctest.DefaultInstanceID, "MicroVM unique identifier."},
	{"seccomp-filter", true, "", "Path to a custom seccomp filter (accepted, not applied)."},
	{"no-seccomp", false, "", "Start without seccomp filtering (the fake has none)."},
	{"start-time-us", true, "", "Process start time (wall clock, microseconds)."},
	{"start-time-cpu-us", true, "", "Process start CPU time (microseconds)."},
	{"parent-cpu-time-us", true, "", "Parent process CPU time (microseconds)."},
	{"config-file", true, "", "MicroVM configuration in JSON (not modelled by the fake)."},
	{"metadata", true, "", "MMDS contents in JSON (not modelled by the fake)."},
	{"no-api", false, "", "Run without the API socket (not modelled by the fake)."},
	{"log-path", true, "", "Path to a fifo or a file for the log."},
	{"level", true, "", "Logger level."},
	{"module", true, "", "Logger module filter."},
	{"show-level", false, "", "Output the level in the logs."},
	{"show-log-origin", false, "", "Include the origin of log lines."},
	{"metrics-path", true, "", "Path to a fifo or a file for the metrics."},
	{"boot-timer", false, "", "Load the boot timer device (accepted, no effect)."},
	{"version", false, "", "Print the binary version number."},
	{"snapshot-version", false, "", "Print the snapshot data format version (not modelled)."},
	{"describe-snapshot", true, "", "Print a snapshot file's data format version (not modelled)."},
	{"http-api-max-payload-size", true, strconv.Itoa(fctest.DefaultMaxPayload), "API request payload max size, in bytes."},
	{"mmds-size-limit", true, "", "MMDS data store limit, in bytes."},
	{"enable-pci", false, "", "Enable PCIe support (accepted, no effect)."},
}

// parsedArgs holds a parsed command line: values of flags given, and
// whether a flag was given.
type parsedArgs struct {
	values map[string]string
	set    map[string]bool
	extra  []string
	help   bool
	vers   bool
}

func (p *parsedArgs) value(specs []argSpec, name string) string {
	if v, ok := p.values[name]; ok {
		return v
	}
	for _, s := range specs {
		if s.name == name {
			return s.def
		}
	}
	return ""
}

// parseArgs parses a command line the way Firecracker's (and the
// jailer's) argument parser does: arguments after "--" are extra; --help
// and --version win over anything else; every other argument is "--name",
// followed by a value (which must not start with "--") for flags that take
// one; unknown and repeated flags are errors. multi names flags that may
// repeat (the jailer's --cgroup), their values joined by "\n".
func parseArgs(specs []argSpec, args []string, multi map[string]bool) (*parsedArgs, error) {
	p := &parsedArgs{values: map[string]string{}, set: map[string]bool{}}
	for i, a := range args {
		if a == "--" {
			p.extra = args[i+1:]
			args = args[:i]
			break
		}
	}
	for _, a := range args {
		switch a {
		case "--help":
			p.help = true
		case "--version":
			p.vers = true
		}
	}
	if p.help || p.vers {
		return p, nil
	}
	byName := map[string]argSpec{}
	for _, s := range specs {
		byName[s.name] = s
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			return nil, fmt.Errorf("found argument '%s' which wasn't expected, or isn't valid in this context", a)
		}
		spec, known := byName[name]
		if !known {
			return nil, fmt.Errorf("found argument '%s' which wasn't expected, or isn't valid in this context", name)
		}
		if p.set[name] && !multi[name] {
			return nil, fmt.Errorf("the argument '%s' was provided more than once", name)
		}
		p.set[name] = true
		if !spec.takesValue {
			continue
		}
		if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
			return nil, fmt.Errorf("the argument '%s' requires a value, but none was supplied", name)
		}
		i++
		if old, ok := p.values[name]; ok && multi[name] {
			p.values[name] = old + "\n" + args[i]
		} else {
			p.values[name] = args[i]
		}
	}
	return p, nil
}

func formatHelp(specs []argSpec) string {
	var b strings.Builder
	for _, s := range specs {
		b.WriteString("--" + s.name)
		if s.takesValue {
			b.WriteString(" <" + s.name + ">")
		}
		b.WriteString(": " + s.help + "\n")
	}
	return b.String()
}

// validInstanceID is Firecracker's rule for --id: 1 to 64 characters,
// alphanumeric or '-'.
func validInstanceID(id string) error {
	if len(id) < 1 || len(id) > 64 {
		return fmt.Errorf("invalid len (%d); the length must be between 1 and 64", len(id))
	}
	for i, c := range id {
		if c != '-' && !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fmt.Errorf("invalid char (%c) at position %d", c, i)
		}
	}
	return nil
}

// run is the firecracker mode; it returns the exit status, or kills the
// process with the signal that ended it.
func run(args []string, stdout, stderr io.Writer) int {
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "Error: "+format+"\n", a...)
		return code
	}
	p, err := parseArgs(firecrackerArgs, args, nil)
	if err != nil {
		return fail(exitArgParsing, "Arguments parsing error: %v\n\nFor more information try --help.", err)
	}
	if p.help {
		fmt.Fprintf(stdout, "Firecracker v%s\n\n%s", fctest.SpecVersion, formatHelp(firecrackerArgs))
		return exitOK
	}
	if p.vers {
		fmt.Fprintf(stdout, "Firecracker v%s\n\n", fctest.SpecVersion)
		return exitOK
	}
	switch {
	case p.set["seccomp-filter"] && p.set["no-seccomp"]:
		return fail(exitArgParsing, "Arguments parsing error: the arguments 'seccomp-filter' and 'no-seccomp' cannot be used together")
	case p.set["no-api"] && !p.set["config-file"]:
		return fail(exitArgParsing, "Arguments parsing error: argument 'config-file' required, but not found")
	}
	for _, name := range []string{"config-file", "metadata", "no-api", "snapshot-version", "describe-snapshot"} {
		if p.set[name] {
			return fail(exitGenericError, "fakefirecracker: --%s is a Firecracker flag the fake does not model", name)
		}
	}
	id := p.value(firecrackerArgs, "id")
	if err := validInstanceID(id); err != nil {
		return fail(exitGenericError, "Invalid instance ID: %v", err)
	}
	for _, name := range []string{"start-time-us", "start-time-cpu-us", "parent-cpu-time-us", "http-api-max-payload-size", "mmds-size-limit"} {
		if v, ok := p.values[name]; ok {
			if _, err := strconv.ParseUint(v, 10, 64); err != nil {
				return fail(exitGenericError, "'%s' parameter expected to be an unsigned integer, got %q", name, v)
			}
		}
	}
	if path := p.values["seccomp-filter"]; path != "" {
		if _, err := os.Stat(path); err != nil {
			return fail(exitGenericError, "Seccomp error: %v", err)
		}
	}
	opts := fctest.Options{
		SocketPath:  p.value(firecrackerArgs, "api-sock"),
		InstanceID:  id,
		Stdout:      stdout,
		MetricsPath: p.values["metrics-path"],
		RequestLog:  os.Getenv(envRequestLog),
		AgentPath:   os.Getenv(envAgent),
		GuestDir:    os.Getenv(envGuestDir),
	}
	opts.MaxPayload, _ = strconv.Atoi(p.value(firecrackerArgs, "http-api-max-payload-size"))
	opts.MMDSSizeLimit, _ = strconv.Atoi(p.values["mmds-size-limit"])
	if p.set["log-path"] || p.set["level"] || p.set["show-level"] || p.set["show-log-origin"] || p.set["module"] {
		l := fctest.Logger{LogPath: p.values["log-path"], Level: p.values["level"], ShowLevel: p.set["show-level"], ShowLogOrigin: p.set["show-log-origin"], Module: p.values["module"]}
		if l.Level != "" && !validLevel(l.Level) {
			return fail(exitBadConfiguration, "Invalid value for logger level: %s.Possible values: [Error, Warning, Info, Debug]", l.Level)
		}
		opts.Logger = &l
	}
	if v := os.Getenv(envLogFlood); v != "" {
		if opts.LogFlood, err = time.ParseDuration(v); err != nil || opts.LogFlood < 0 {
			return fail(exitGenericError, "fakefirecracker: %s=%q is not a duration", envLogFlood, v)
		}
	}
	if opts.Faults, err = parseFaults(os.Getenv(envFault)); err != nil {
		return fail(exitGenericError, "fakefirecracker: %s: %v", envFault, err)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if os.Getenv(envNoSocket) == "1" {
		// The start line, then nothing: the API socket never appears.
		fmt.Fprintf(stdout, "[%s:main] Running Firecracker v%s\n", id, fctest.SpecVersion)
		dieBy(<-sigs)
	}
	srv, err := fctest.Start(opts)
	if err != nil {
		return fail(exitGenericError, "%v", err)
	}
	select {
	case <-srv.Done():
		code := srv.ExitCode()
		srv.Close()
		return code
	case sig := <-sigs:
		// Firecracker does not handle SIGTERM or SIGINT: it dies of
		// them. The fake stops its guest first.
		srv.Close()
		dieBy(sig)
	}
	return exitGenericError
}

func validLevel(l string) bool {
	switch strings.ToLower(l) {
	case "off", "error", "warning", "warn", "info", "debug", "trace":
		return true
	}
	return false
}

// dieBy ends the process by sig with its default action, so the parent
// sees "killed by signal" as with Firecracker.
func dieBy(sig os.Signal) {
	signal.Reset(sig)
	// To itself: it cannot fail, and the signal is on its way.
	_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	select {}
}

// parseFaults reads HEARTH_FAKEFC_FAULT: "METHOD /path=message" entries
// separated by ";".
func parseFaults(s string) (map[string]string, error) {
	faults := map[string]string{}
	for _, entry := range strings.Split(s, ";") {
		if strings.TrimSpace(entry) == "" {
			continue
		}
		key, msg, ok := strings.Cut(entry, "=")
		method, path, okKey := strings.Cut(strings.TrimSpace(key), " ")
		if !ok || !okKey || method == "" || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("entry %q is not \"METHOD /path=message\"", entry)
		}
		faults[strings.ToUpper(method)+" "+path] = msg
	}
	return faults, nil
}
