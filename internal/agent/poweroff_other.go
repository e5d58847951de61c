//go:build !linux

package agent

import (
	"fmt"
	"runtime"
)

// powerOff is only implemented on Linux, the only system the agent runs on.
func powerOff() error {
	return fmt.Errorf("power off: not supported on %s", runtime.GOOS)
}

// reboot is only implemented on Linux.
func reboot() error {
	return fmt.Errorf("reboot: not supported on %s", runtime.GOOS)
}
