//go:build !linux

package main

import (
	"fmt"
	"io"
)

// runJailer: the jailer's work (namespaces, chroot, mknod) is Linux's.
func runJailer(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "Jailer error: the fake jailer runs on Linux only")
	return 1
}
