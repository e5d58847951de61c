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

// reboot syncs filesystems and restarts the machine; Firecracker (whose
// guests the agent reaches over vsock) exits when its guest reboots. On
// success it does not return.
func reboot() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}
