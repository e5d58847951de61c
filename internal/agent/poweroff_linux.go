package agent

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// powerOff syncs filesystems and powers the machine off. On success it
// does not return.
func powerOff() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return nil
}
