#!/usr/bin/env bash
# Every test. Unit tests need nothing; the end-to-end tests (test/e2e) boot
# real QEMU guests and run when this is run as root (CI does), after
# scripts/host-deps.sh. -race covers the lifecycle, agent channel and API.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
if [ "$(id -u)" -eq 0 ]; then
  ./scripts/host-deps.sh --test
  export HEARTH_TEST_DEBOOTSTRAP=1   # real debootstrap builds in internal/image/build too
else
  echo "not root: end-to-end tests with real guests will be skipped (run: sudo make test)" >&2
fi
export HEARTH_ARTIFACTS_DIR=${HEARTH_ARTIFACTS_DIR:-$PWD/out/artifacts}
rm -rf "$HEARTH_ARTIFACTS_DIR"
# What an earlier, interrupted run left (guests, daemons, namespaces…) goes
# first; every process of this run carries HEARTH_TEST_RUN, so that at the
# end anything of this run still there is found, removed and fails it.
go run ./test/leftovers
run_id="$$-$(date +%s)"
rc=0
HEARTH_TEST_RUN=$run_id go test -race -count=1 -timeout 40m ./... || rc=$?
go run ./test/leftovers -check -run "$run_id" || rc=1
# What the end-to-end tests saved (e.g. the viewer's canvas screenshot).
if [ -d "$HEARTH_ARTIFACTS_DIR" ]; then
  echo "test artifacts in $HEARTH_ARTIFACTS_DIR:"
  find "$HEARTH_ARTIFACTS_DIR" -type f -printf '  %p (%s bytes)\n'
fi
exit $rc
