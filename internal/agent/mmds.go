package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	urlpkg "net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// The "mmds" token source reads the token from Firecracker's microVM
// metadata service, version 2 (a session token from a PUT, then a GET
// with it), at agentapi.MMDSTokenPath. Without an Accept header MMDS
// answers in IMDS format, where a string leaf is its bare value; a
// JSON-quoted string is accepted too.
//
// MMDS is reached through the guest's NIC: Firecracker answers the NIC's
// ARP requests for MMDSAddress and its IPv4 packets to it itself, replying
// to the sender's address. Before the host has configured the network the
// NIC has no address and no route there, so for the default address the
// agent adds what it needs and removes it once it has the answer:
//
//   - mmdsLocalAddr, only if the NIC has no IPv4 address of its own. It is
//     a /32, so no subnet route comes with it, and of link scope, so the
//     kernel uses it as a source for link-scope routes only. It lies in
//     169.254.1.0-169.254.254.255, the range RFC 3927 lets hosts use, and
//     is none of the well-known metadata addresses (.254 MMDS/IMDS, .253
//     DNS, .123 NTP). ReplaceAddr removes it too, so a copy left by an
//     agent that died in between never outlives the host's configuration.
//   - a link-scope route to MMDSAddress/32 through the NIC, unless a route
//     there exists (then it is left alone).
//
// The NIC is also brought up (and left up: the host's configuration brings
// it up anyway). Token reads never overlap the host's network
// configuration, which happens within a served connection: the token is
// read before a connection is served, once the previous one has ended.
var (
	mmdsLocalAddr = netip.MustParsePrefix("169.254.169.1/32")
	mmdsRoute     = netip.PrefixFrom(netip.MustParseAddr(agentapi.MMDSAddress), 32)
)

const (
	mmdsSource     = "mmds"
	mmdsDefaultURL = "http://" + agentapi.MMDSAddress
	// mmdsSessionTTL is the lifetime asked for a session token, in seconds;
	// the session is used at once.
	mmdsSessionTTL = 60
	// mmdsTimeout bounds one request. MMDS is answered by the VMM itself,
	// so this is long; an unanswered ARP fails a connect after about 3s.
	mmdsTimeout = 5 * time.Second
)

// isMMDSSource reports whether src is "mmds" or "mmds:URL".
func isMMDSSource(src string) bool {
	return src == mmdsSource || strings.HasPrefix(src, mmdsSource+":")
}

// mmdsMissing is why MMDS counts as a missing source: it is unreachable,
// or does not have the token (yet). It matches fs.ErrNotExist.
type mmdsMissing struct{ reason string }

func (e mmdsMissing) Error() string        { return e.reason }
func (e mmdsMissing) Is(target error) bool { return target == fs.ErrNotExist }

func missing(format string, args ...any) error {
	return mmdsMissing{fmt.Sprintf(format, args...)}
}

// readMMDS returns the token text of the mmds source src ("mmds" or
// "mmds:URL"). An error wrapping fs.ErrNotExist means not there (yet).
func readMMDS(ctx context.Context, src string, opts Options) (string, error) {
	base, explicit := strings.CutPrefix(src, mmdsSource+":")
	if !explicit {
		base = opts.MMDSURL
	}
	if base == "" {
		if !opts.inGuest {
			// Outside a guest, 169.254.169.254 may be a cloud's metadata
			// service: it is only asked when named.
			return "", missing("no MMDS URL given, and the default address is only used inside a VM")
		}
		base = mmdsDefaultURL
	}
	u, err := parseMMDSURL(base)
	if err != nil {
		return "", err
	}
	if opts.inGuest && u.Hostname() == agentapi.MMDSAddress {
		undo, err := reachMMDS(opts.netOps)
		if errors.Is(err, errNoLink) {
			return "", missing("no network interface to reach it through")
		}
		if err != nil {
			return "", err
		}
		defer func() {
			if err := undo(); err != nil {
				opts.Logger.Warn("could not remove the temporary route to MMDS", "err", err)
			}
		}()
	}
	dial := opts.mmdsDial
	if dial == nil {
		dial = defaultMMDSDial
	}
	base = strings.TrimSuffix(u.String(), "/")
	m := mmdsServer{dial: dial, host: hostPort(u), prefix: strings.TrimSuffix(u.Path, "/"), base: base}
	session, err := m.request(ctx, "PUT", agentapi.MMDSSessionPath,
		agentapi.MMDSSessionTTLHeader, strconv.Itoa(mmdsSessionTTL))
	if err != nil {
		return "", err
	}
	session = strings.TrimSpace(session)
	if session == "" {
		return "", fmt.Errorf("PUT %s: empty session token", base+agentapi.MMDSSessionPath)
	}
	body, err := m.request(ctx, "GET", agentapi.MMDSTokenPath,
		agentapi.MMDSSessionHeader, session)
	if err != nil {
		return "", err
	}
	text, err := mmdsValue(body)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", base+agentapi.MMDSTokenPath, err)
	}
	if text == "" { // a placeholder: the host has not put the token yet
		return "", missing("GET %s: empty value", base+agentapi.MMDSTokenPath)
	}
	return text, nil
}

// parseMMDSURL checks an MMDS base URL: http, a host, nothing after the
// path.
func parseMMDSURL(s string) (*urlpkg.URL, error) {
	u, err := urlpkg.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("invalid MMDS URL: %w", err)
	}
	if u.Scheme != "http" || u.Host == "" || u.User != nil ||
		u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("invalid MMDS URL %q: want http://HOST[:PORT][/PATH]", s)
	}
	return u, nil
}

// hostPort is u's host with its port (80 if none).
func hostPort(u *urlpkg.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// mmdsServer is one MMDS base URL.
type mmdsServer struct {
	dial   dialFunc
	host   string // HOST:PORT
	prefix string // path before the MMDS paths, usually ""
	base   string // for messages
}

// request sends one request with one header and returns the body of a 200
// answer. Errors never contain the header's value or the body.
func (m mmdsServer) request(ctx context.Context, method, path, header, value string) (string, error) {
	url := m.base + path
	a, err := httpDo(ctx, m.dial, m.host, method, m.prefix+path, header, value, maxSourceSize)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if unreachable(err) {
			return "", missing("%s %s: unreachable: %v", method, url, err)
		}
		return "", fmt.Errorf("%s %s: %v", method, url, err)
	}
	switch a.code {
	case 200:
	case 404:
		return "", missing("%s %s: %s", method, url, a.status)
	default:
		return "", fmt.Errorf("%s %s: unexpected status %s", method, url, a.status)
	}
	return string(a.body), nil
}

// unreachable reports whether a client error means no MMDS answered: the
// connection could not be made, timed out, or was closed without an
// answer. Anything else (a malformed answer) is an error.
func unreachable(err error) bool {
	var opErr *net.OpError
	var ne net.Error
	return errors.As(err, &opErr) || (errors.As(err, &ne) && ne.Timeout()) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// mmdsValue returns the string an MMDS leaf holds: the bare text in IMDS
// format, or a JSON string.
func mmdsValue(body string) (string, error) {
	s := strings.TrimSpace(body)
	if !strings.HasPrefix(s, `"`) {
		return s, nil
	}
	var v string
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return "", errors.New("malformed JSON string")
	}
	return strings.TrimSpace(v), nil
}

// reachMMDS makes MMDSAddress reachable through the guest's first NIC (see
// mmdsLocalAddr) and returns the function that removes exactly what it
// added. If it fails it removes what it added before returning the error.
func reachMMDS(ops netOps) (undo func() error, err error) {
	name, err := ops.FirstNIC()
	if err != nil {
		return nil, err
	}
	fail := func(step string, err error, undo func() error) (func() error, error) {
		err = fmt.Errorf("reach MMDS through %s: %s: %w", name, step, err)
		if uerr := undo(); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return nil, err
	}
	var steps []func() error // what undo does, in reverse order
	undo = func() error {
		var errs []error
		for i := len(steps) - 1; i >= 0; i-- {
			errs = append(errs, steps[i]())
		}
		return errors.Join(errs...)
	}

	if err := ops.LinkUp(name); err != nil {
		return fail("bring it up", err, undo)
	}
	addrs, err := ops.IPv4Addrs(name)
	if err != nil {
		return fail("list addresses", err, undo)
	}
	if !hasOtherAddr(addrs, mmdsLocalAddr) {
		// Either it is not there or an agent that died left it: it is ours.
		if err := ops.AddLinkAddr(name, mmdsLocalAddr); err != nil {
			return fail("add address "+mmdsLocalAddr.String(), err, undo)
		}
		steps = append(steps, func() error {
			if err := ops.DelAddr(name, mmdsLocalAddr); err != nil {
				return fmt.Errorf("remove address %s from %s: %w", mmdsLocalAddr, name, err)
			}
			return nil
		})
	}
	added, err := ops.AddLinkRoute(name, mmdsRoute)
	if err != nil {
		return fail("add route to "+mmdsRoute.String(), err, undo)
	}
	if added {
		steps = append(steps, func() error {
			if err := ops.DelLinkRoute(name, mmdsRoute); err != nil {
				return fmt.Errorf("remove route to %s from %s: %w", mmdsRoute, name, err)
			}
			return nil
		})
	}
	return undo, nil
}

// hasOtherAddr reports whether addrs holds an address other than a.
func hasOtherAddr(addrs []netip.Prefix, a netip.Prefix) bool {
	for _, p := range addrs {
		if p != a {
			return true
		}
	}
	return false
}
