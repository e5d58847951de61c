package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/hearth-project/hearth/internal/workapi"
)

// ParseFlags turns an agent's command line into Options, and says whether
// only the version is asked for. name is the command's name in usage and
// errors; usage and flag errors go to output. Every build of the agent
// takes these flags (the VMMs' images and test harnesses start it with
// them).
func ParseFlags(name string, args []string, output io.Writer) (opts Options, showVersion bool, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(output)
	fs.StringVar(&opts.Port, "port", "",
		"agent virtio-serial port device (default: the port named "+PortName+")")
	fs.StringVar(&opts.Listen, "listen", "",
		"listen for the host on vsock:PORT or unix:PATH (default: the virtio-serial port if the guest has one, else vsock:1024)")
	fs.StringVar(&opts.DataListen, "data-listen", "",
		"serve the data channel on vsock:PORT or unix:PATH (default: the virtio-serial port "+workapi.PortName+
			" with a virtio-serial agent port, vsock:1025 with vsock, none with -listen unix:...)")
	fs.Func("token-source",
		"where to read the token, first that exists; repeat or separate with commas: mmds, mmds:URL, cmdline:PATH or a file "+
			"(default with virtio-serial: "+strings.Join(DefaultTokenSources, ",")+
			"; with a listener: "+strings.Join(VsockTokenSources, ",")+")",
		func(s string) error {
			for _, src := range strings.Split(s, ",") {
				if src = strings.TrimSpace(src); src == "" {
					return errors.New("empty token source")
				}
				opts.TokenSources = append(opts.TokenSources, src)
			}
			return nil
		})
	tokenFile := fs.String("token-file", "", "read the token from this file only (same as -token-source FILE)")
	fs.StringVar(&opts.MMDSURL, "mmds-url", "",
		"base URL of the mmds token source (default: http://169.254.169.254 inside a VM, none with -listen unix:...)")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return Options{}, false, err
	}
	if fs.NArg() > 0 {
		return Options{}, false, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *tokenFile != "" {
		if opts.TokenSources != nil {
			return Options{}, false, errors.New("-token-file and -token-source are exclusive")
		}
		opts.TokenSources = []string{*tokenFile}
	}
	if err := opts.Validate(); err != nil {
		return Options{}, false, err
	}
	return opts, showVersion, nil
}
