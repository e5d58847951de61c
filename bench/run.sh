#!/usr/bin/env bash
# Runs the VM benchmarks (root, QEMU) and writes docs/BENCHMARKS.md.
#   sudo ./bench/run.sh            # or: sudo make bench
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
./scripts/host-deps.sh
make build >/dev/null
go build -o bin/vmbench ./bench/vmbench
RUNS=${RUNS:-10}
out=$(bin/vmbench -hearth bin/hearth -agent bin/hearth-agent -runs "$RUNS")
{
  echo "# Benchmarks"
  echo
  echo "Made by \`RUNS=$RUNS ./bench/run.sh\` as root (bench/vmbench) on $(date -u +%Y-%m-%d),"
  echo "$(nproc) vCPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(qemu-system-x86_64 --version | head -1), hearth $(git describe --always --dirty)."
  echo "hearth and the baseline run interleaved in the same process, against the same image."
  echo
  echo "$out"
} > docs/BENCHMARKS.md
cat docs/BENCHMARKS.md
