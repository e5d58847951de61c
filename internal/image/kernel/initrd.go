package kernel

import "slices"

// baseInitrdModules are the modules every image's initramfs loads: the
// virtio-mmio transport (microvm's devices are described by ACPI), the
// root disk and ext4, the console/serial channel used by the agent, the
// network device and the fw_cfg sysfs interface that carries the per-VM
// token. Their dependencies are added from modules.dep. Every image shares
// the same kernel and initramfs; only the root filesystem differs.
var baseInitrdModules = []string{
	"virtio", "virtio_ring", "virtio_mmio",
	"virtio_blk", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4",
	"virtio_console",
	"failover", "net_failover", "virtio_net",
	"qemu_fw_cfg",
}

// InitrdModules returns a copy of the list of modules every image's
// initramfs loads (dependencies not included).
func InitrdModules() []string { return slices.Clone(baseInitrdModules) }
