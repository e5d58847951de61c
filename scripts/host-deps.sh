#!/usr/bin/env bash
# Installs the Debian packages hearth needs on a host (idempotent).
#   scripts/host-deps.sh          what hearth itself needs
#   scripts/host-deps.sh --test   and what its tests need
#   qemu-system-x86, qemu-utils  the QEMU driver (-M microvm) and qcow2 overlays
#   busybox-static               the guest initramfs and minimal root
#   e2fsprogs                    mkfs.ext4 -d builds root filesystems without loop mounts
#   xz-utils, cpio, ca-certificates, curl  image builds and the quick start
#   iproute2, nftables           network namespaces for tests; nft to inspect hearth's rules
#   debootstrap, npm             the workspace and browser images (npm fetches Node.js and the AI CLIs)
#   xvfb, x11vnc                 a real VNC server on loopback for the viewer bridge's tests
# With --test:
#   chromium                     the viewer page end to end (headless, driven over CDP)
#   btrfs-progs                  a loop-mounted btrfs to test the Firecracker driver's reflink disks
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils busybox-static e2fsprogs xz-utils cpio ca-certificates curl iproute2 nftables debootstrap xvfb x11vnc)
[ "${1:-}" = "--test" ] && pkgs+=(chromium btrfs-progs)
# npm: any npm will do (only its registry access is used); install Debian's
# only when none is on PATH, so a host's own Node.js is left alone.
command -v npm >/dev/null || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v go >/dev/null; then
  if [ -x /usr/local/go/bin/go ]; then
    echo "note: add /usr/local/go/bin to PATH" >&2
  else
    echo "hearth needs Go (1.26 or newer) to build; install it and re-run" >&2
    exit 1
  fi
fi
