package network

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/hearth-project/hearth/internal/errdefs"
)

// Defaults for the zero fields of Config (see Config.WithDefaults).
const (
	DefaultBridge    = "hearth0"
	DefaultTAPPrefix = "hth"
)

// DefaultSubnet is the guests' subnet when Config.Subnet is unset.
var DefaultSubnet = netip.MustParsePrefix("172.30.0.0/24")

// maxTAPPrefix keeps at least 8 hash characters (40 bits) in a TAP name.
const maxTAPPrefix = ifNameMax - 8

// ifNameMax is the longest Linux interface name (IFNAMSIZ - 1).
const ifNameMax = 15

// Config is the host network's shape.
type Config struct {
	// Bridge is the bridge every TAP is attached to. Default "hearth0".
	Bridge string
	// Subnet is the guests' IPv4 subnet. The bridge takes its first host
	// address, which is the guests' gateway. Default 172.30.0.0/24.
	Subnet netip.Prefix
	// TAPPrefix starts every TAP name; the firewall recognises VM ports by
	// it. 1-7 characters of a-z and 0-9. Default "hth".
	TAPPrefix string
	// HostPorts are the (protocol, port) pairs VMs may reach on the host,
	// at the gateway's address only. Everything else from VMs to the host
	// is dropped. None by default.
	HostPorts []PortRule
	// Deny are IPv4 destinations no VM reaches, whatever its policy and
	// AllowPrivate.
	Deny []netip.Prefix
	// AllowPrivate are IPv4 destinations VMs may reach (as their policy
	// says) although they are private or on the host's own network,
	// which no VM reaches otherwise. It never lifts link-local addresses
	// or cloud metadata services.
	AllowPrivate []netip.Prefix
}

// PortRule is one host port VMs may reach.
type PortRule struct {
	Protocol string // "tcp" or "udp"
	Port     uint16
}

// FieldError is a validation error that names the offending field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap makes every FieldError an errdefs.ErrInvalid.
func (e *FieldError) Unwrap() error { return errdefs.ErrInvalid }

// fieldErrors collects FieldErrors; err joins them (nil when there are none).
type fieldErrors []error

func (f *fieldErrors) add(field, format string, args ...any) {
	*f = append(*f, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (f fieldErrors) err() error { return errors.Join(f...) }

// WithDefaults returns c with its zero fields set to the defaults.
func (c Config) WithDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if c.TAPPrefix == "" {
		c.TAPPrefix = DefaultTAPPrefix
	}
	return c
}

// Gateway is the bridge's address: the first host address of the subnet.
// It is the zero Addr when the subnet is invalid.
func (c Config) Gateway() netip.Addr {
	if !c.Subnet.IsValid() {
		return netip.Addr{}
	}
	return c.Subnet.Masked().Addr().Next()
}

// Validate checks every field and reports all problems; each error names its
// field ("network.subnet: ...").
func (c Config) Validate() error {
	var errs fieldErrors
	if err := checkIfName(c.Bridge); err != nil {
		errs.add("network.bridge", "%v", err)
	}
	if !validTAPPrefix(c.TAPPrefix) {
		errs.add("network.tap_prefix", "must be 1-%d characters of a-z and 0-9, got %q", maxTAPPrefix, c.TAPPrefix)
	} else if strings.HasPrefix(c.Bridge, c.TAPPrefix) {
		errs.add("network.tap_prefix", "%q must not be a prefix of network.bridge %q (the firewall would treat the bridge as a VM port)", c.TAPPrefix, c.Bridge)
	}
	switch s := c.Subnet; {
	case !s.IsValid():
		errs.add("network.subnet", "must be an IPv4 prefix such as %s", DefaultSubnet)
	case !s.Addr().Is4():
		errs.add("network.subnet", "must be IPv4, got %s", s)
	case s != s.Masked():
		errs.add("network.subnet", "%s has host bits set (did you mean %s?)", s, s.Masked())
	case s.Bits() < 8 || s.Bits() > 29:
		errs.add("network.subnet", "prefix length must be 8-29, got /%d", s.Bits())
	}
	for i, p := range c.HostPorts {
		field := fmt.Sprintf("network.host_ports[%d]", i)
		if p.Protocol != "tcp" && p.Protocol != "udp" {
			errs.add(field+".protocol", "must be tcp or udp, got %q", p.Protocol)
		}
		if p.Port == 0 {
			errs.add(field+".port", "must be 1-65535")
		}
	}
	c.validateDestinations(&errs)
	return errs.err()
}

// checkIfName reports whether s can name a Linux network interface.
func checkIfName(s string) error {
	if s == "" || len(s) > ifNameMax {
		return fmt.Errorf("must be 1-%d characters, got %q", ifNameMax, s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("must be letters, digits, '-', '_' or '.', got %q", s)
		}
	}
	if s == "." || s == ".." {
		return fmt.Errorf("must not be %q", s)
	}
	return nil
}

func validTAPPrefix(s string) bool {
	return s != "" && len(s) <= maxTAPPrefix && isLowerAlnum(s)
}

func isLowerAlnum(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
