//go:build !linux

package agent

import (
	"errors"
	"fmt"
	"net"
	"runtime"
)

// vsockPortAny asks bind for a free port.
const vsockPortAny = 0xFFFFFFFF

var errNoVsock = fmt.Errorf("vsock: %w on %s", errors.ErrUnsupported, runtime.GOOS)

func listenVsock(uint32) (net.Listener, error) { return nil, errNoVsock }

func localVsockCID(string) (uint32, error) { return 0, errNoVsock }
