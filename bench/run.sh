#!/usr/bin/env bash
# Runs every benchmark (root, QEMU) and writes docs/BENCHMARKS.md. Each one
# compares hearth with the named alternative in the same run.
#   ./bench/run.sh                 # all; as root (or: make bench)
#   RUNS=20 ./bench/run.sh vm      # one: vm, net, disk, viewer, images, login, guest or work
#   LOGIN_RUNS=5 ./bench/run.sh login   # logins measured (default 5)
#   WORK_RUNS=100 ./bench/run.sh work   # command starts per method (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
./scripts/host-deps.sh
for tool in iptables bc; do
  command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $tool >/dev/null
done
# diskbench loop-mounts a btrfs for the Firecracker driver's reflinks.
command -v mkfs.btrfs >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends btrfs-progs >/dev/null
make build >/dev/null
for b in vmbench netbench diskbench viewerbench loginbench workbench; do go build -o bin/$b ./bench/$b; done
RUNS=${RUNS:-10}
LOGIN_RUNS=${LOGIN_RUNS:-5}
WORK_RUNS=${WORK_RUNS:-100}
which=${1:-all}
out=$(mktemp -d)
trap 'rm -rf "$out"; for ns in hearth-bench hearth-bench-vm hearth-bench-login hearth-bench-out hearth-bench-guest hearth-bench-work; do ip netns del $ns 2>/dev/null || true; done' EXIT

if [ "$which" = all ] || [ "$which" = vm ]; then
  # The daemon runs in its own namespace, without guest networking, so both
  # sides start the identical QEMU command (network cost: the net table).
  ip netns add hearth-bench-vm && ip -n hearth-bench-vm link set lo up
  HEARTH_NETWORK_ENABLED=false ip netns exec hearth-bench-vm \
    bin/vmbench -hearth bin/hearth -agent bin/hearth-agent -runs "$RUNS" >"$out/vm.md"
  ip netns del hearth-bench-vm
fi
if [ "$which" = all ] || [ "$which" = net ]; then
  # Inside a namespace made for it: nothing touches the host's network.
  fresh() { ip netns del hearth-bench 2>/dev/null || true; ip netns add hearth-bench && ip -n hearth-bench link set lo up; }
  fresh && ip netns exec hearth-bench bin/netbench -runs 200 -resident 20 >"$out/net.md"
  fresh && ip netns exec hearth-bench bin/netbench -runs 50 -resident 300 | sed -n '3,6p' | tail -2 >"$out/net300.md"
  ip netns del hearth-bench
fi
if [ "$which" = all ] || [ "$which" = disk ]; then
  bin/diskbench -runs 5 >"$out/disk.md"
fi
if [ "$which" = all ] || [ "$which" = viewer ]; then
  # The browser viewer's bridge against websockify (Debian's, 0.10), on loopback.
  if ! command -v websockify >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends websockify >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends websockify >/dev/null; }
  fi
  bin/viewerbench >"$out/viewer.md"
fi
if [ "$which" = all ] || [ "$which" = images ]; then
  ./bench/images.sh >"$out/images.md"
fi
if [ "$which" = all ] || [ "$which" = login ]; then
  # A provider login against fakes, set up as the e2e login test does: the
  # browser image with the fake CLI (built into bench-images, cached), the
  # daemon in namespace hearth-bench-login, the fake authorization server
  # in hearth-bench-out; loginbench makes both namespaces and deletes them.
  CGO_ENABLED=0 go build -o bin/fakeprovider ./test/fakeprovider
  bin/loginbench -hearth bin/hearth -agent bin/hearth-agent -fakecli bin/fakeprovider \
    -images /var/cache/hearth/bench-images -runs "$LOGIN_RUNS" >"$out/login.md"
fi

if [ "$which" = all ] || [ "$which" = guest ]; then
  # A hostile guest (test/hostileagent under the fake Firecracker) floods
  # heartbeats; the daemons run in a namespace made for them.
  CGO_ENABLED=0 go build -o bin/hostileagent ./test/hostileagent
  CGO_ENABLED=0 go build -o bin/firecracker ./test/fakefirecracker
  go build -o bin/guestbench ./bench/guestbench
  ip netns add hearth-bench-guest && ip -n hearth-bench-guest link set lo up
  ip netns exec hearth-bench-guest bin/guestbench -hearth bin/hearth -agent bin/hearth-agent \
    -hostile bin/hostileagent -firecracker bin/firecracker >"$out/guest.md"
  ip netns del hearth-bench-guest
fi

if [ "$which" = all ] || [ "$which" = work ]; then
  # The work API against OpenSSH in one guest: workbench builds its image
  # (bench/workbench/workspace-ssh.yaml, cached in bench-images), then runs
  # the daemon, the VM and itself in namespace hearth-bench-work.
  bin/workbench -hearth bin/hearth -agent bin/hearth-agent -images /var/cache/hearth/bench-images \
    -runs "$WORK_RUNS" >"$out/work.md"
fi

section() { [ -s "$1" ] && { cat "$1"; echo; } || true; }
{
  echo "# Benchmarks"
  echo
  echo "Made by \`RUNS=$RUNS ./bench/run.sh\` as root on $(date -u +%Y-%m-%d): $(nproc) vCPUs,"
  echo "$(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(qemu-system-x86_64 --version | head -1), hearth $(git describe --always --dirty)."
  echo "Each table compares hearth with the alternative it replaces, measured in the same run."
  echo
  section "$out/vm.md"
  if [ -s "$out/net.md" ]; then
    cat "$out/net.md"; echo
    echo "With 300 VMs resident (same table layout):"; echo
    echo "| | hearth p50 | hearth p99 | old way p50 | old way p99 | old / hearth (p50) |"
    echo "|---|---|---|---|---|---|"
    cat "$out/net300.md"; echo
  fi
  section "$out/disk.md"
  section "$out/viewer.md"
  section "$out/images.md"
  section "$out/login.md"
  section "$out/guest.md"
  section "$out/work.md"
} > "$out/BENCHMARKS.md"
if [ "$which" = all ]; then
  cp "$out/BENCHMARKS.md" docs/BENCHMARKS.md   # only a full run rewrites the record
fi
cat "$out/BENCHMARKS.md"
