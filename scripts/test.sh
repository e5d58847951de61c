#!/usr/bin/env bash
# Every test. Unit tests need nothing; the end-to-end tests (test/e2e) boot
# real QEMU guests and run when this is run as root (CI does), after
# scripts/host-deps.sh. -race covers the lifecycle, agent channel and API.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
if [ "$(id -u)" -eq 0 ]; then
  ./scripts/host-deps.sh
  export HEARTH_TEST_DEBOOTSTRAP=1   # real debootstrap builds in internal/image too
else
  echo "not root: end-to-end tests with real guests will be skipped (run: sudo make test)" >&2
fi
go test -race -count=1 -timeout 40m ./...
