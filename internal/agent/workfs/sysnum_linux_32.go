//go:build linux && (386 || arm)

package workfs

import "golang.org/x/sys/unix"

// The per-thread credential calls, with 32-bit ids (the plain ones take
// 16-bit ids on these architectures).
const (
	sysSetgroups = unix.SYS_SETGROUPS32
	sysGetgroups = unix.SYS_GETGROUPS32
	sysSetfsuid  = unix.SYS_SETFSUID32
	sysSetfsgid  = unix.SYS_SETFSGID32
)
