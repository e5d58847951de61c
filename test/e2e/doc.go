// Package e2e runs hearth as a real daemon process that boots real QEMU
// guests with the minimal image. The tests need root; without it they skip.
package e2e
