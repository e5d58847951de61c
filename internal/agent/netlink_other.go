//go:build !linux

package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
)

// errNoNetlink is returned by every netOps method off Linux.
var errNoNetlink = fmt.Errorf("network configuration: %w on %s", errors.ErrUnsupported, runtime.GOOS)

// unsupportedNetOps is netOps on systems the agent does not run on.
type unsupportedNetOps struct{}

func defaultNetOps() netOps { return unsupportedNetOps{} }

func (unsupportedNetOps) LinkByMAC(net.HardwareAddr) (string, error)      { return "", errNoNetlink }
func (unsupportedNetOps) LinkUp(string) error                             { return errNoNetlink }
func (unsupportedNetOps) ReplaceAddr(string, netip.Prefix) error          { return errNoNetlink }
func (unsupportedNetOps) SetMTU(string, int) error                        { return errNoNetlink }
func (unsupportedNetOps) ReplaceDefaultRoute(string, netip.Addr) error    { return errNoNetlink }
func (unsupportedNetOps) FirstNIC() (string, error)                       { return "", errNoNetlink }
func (unsupportedNetOps) IPv4Addrs(string) ([]netip.Prefix, error)        { return nil, errNoNetlink }
func (unsupportedNetOps) AddLinkAddr(string, netip.Prefix) error          { return errNoNetlink }
func (unsupportedNetOps) DelAddr(string, netip.Prefix) error              { return errNoNetlink }
func (unsupportedNetOps) AddLinkRoute(string, netip.Prefix) (bool, error) { return false, errNoNetlink }
func (unsupportedNetOps) DelLinkRoute(string, netip.Prefix) error         { return errNoNetlink }
