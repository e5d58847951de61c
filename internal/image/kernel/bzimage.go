// Package kernel reads what a Debian kernel package ships, for images
// that boot it: the ELF vmlinux inside its bzImage (an XZ stream behind the
// x86 BCJ filter, decoded here, since QEMU boots the ELF directly) and its
// modules' dependency order (modules.dep, generated from the modules'
// .modinfo when the package carries none), with the modules every hearth
// guest loads from its initramfs.
package kernel

import (
	"bytes"
	"errors"
	"fmt"
)

var (
	xzMagic  = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}
	elfMagic = []byte{0x7F, 'E', 'L', 'F'}
)

// errNoXZPayload is returned when a bzImage holds no XZ stream that
// decompresses to an ELF file.
var errNoXZPayload = errors.New("no xz payload decompressing to an elf image found")

// ExtractVmlinux finds the XZ-compressed payload inside an x86 bzImage (a
// Debian vmlinuz) and returns it decompressed: the ELF vmlinux, which QEMU
// boots directly through its PVH entry point.
//
// The payload is located by scanning for the XZ stream magic; a candidate is
// accepted only if it decodes (headers, data and check) and the result
// starts with the ELF magic, so stray magic bytes are skipped.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	var rejected []error
	for off := 0; ; {
		i := bytes.Index(bzImage[off:], xzMagic)
		if i < 0 {
			break
		}
		start := off + i
		off = start + 1
		out, err := decodeXZ(bzImage[start:])
		if err == nil && !bytes.HasPrefix(out, elfMagic) {
			err = fmt.Errorf("decompressed data starts with %x, not \\x7fELF", out[:min(len(out), 4)])
		}
		if err == nil {
			return out, nil
		}
		rejected = append(rejected, fmt.Errorf("candidate at offset %d: %w", start, err))
	}
	if len(rejected) == 0 {
		return nil, errNoXZPayload
	}
	return nil, fmt.Errorf("%w: %w", errNoXZPayload, errors.Join(rejected...))
}
