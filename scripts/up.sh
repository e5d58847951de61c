#!/usr/bin/env bash
# Quick start on a fresh Debian host, as root: install host packages, build
# hearth and the minimal guest image, start the daemon and boot one VM to
# ready (proven by the agent inside the guest).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo make up)" >&2; exit 1; }

STATE=${HEARTH_STATE_DIR:-/var/lib/hearth}
export HEARTH_STATE_DIR=$STATE
ADDR=${HEARTH_LISTEN:-127.0.0.1:7070}
export HEARTH_LISTEN=$ADDR

./scripts/host-deps.sh
make build
bin/hearth image build --local --profile minimal --agent bin/hearth-agent
mkdir -p "$STATE" && chmod 0700 "$STATE"
[ -s "$STATE/cli.key" ] || bin/hearth apikey create --admin --user default --name quickstart --save >/dev/null

if curl -fsS "http://$ADDR/healthz" >/dev/null 2>&1; then
  echo "hearth already answers on $ADDR"
else
  nohup bin/hearth serve >>"$STATE/hearth.log" 2>&1 &
  echo $! >"$STATE/hearth.pid"
  for _ in $(seq 1 100); do
    bin/hearth vm list >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "hearth started (pid $(cat "$STATE/hearth.pid"), log $STATE/hearth.log)"
fi

echo "booting a minimal VM (the agent inside the guest must report ready)..."
out=$(bin/hearth vm create --image minimal --wait)
id=$(printf '%s\n' "$out" | sed -n 's/.*"id": "\(vm-[a-z0-9]*\)".*/\1/p' | head -1)
addr=$(printf '%s\n' "$out" | sed -n 's/.*"address": "\([0-9.]*\)\/.*/\1/p' | head -1)
echo "$out"
cat <<MSG

VM $id is ready${addr:+ at $addr (bridge hearth0; the host can open TCP connections to it)}. Reach it:
  bin/hearth vm exec $id -- /bin/busybox ip addr   # a command inside the guest, through its agent
  bin/hearth vm get $id              # state, agent version, guest boot time, last heartbeat
  bin/hearth vm console $id          # the guest's serial console (add --follow to stream it)
  curl -H "Authorization: Bearer \$(cat $STATE/cli.key)" http://$ADDR/v1/vms/$id
  bin/hearth vm rm $id --wait        # destroy it (process, overlay, sockets, directory)
  bin/hearth doctor                  # host checks
Stop the daemon with: kill \$(cat $STATE/hearth.pid)   (VMs keep running and are adopted on the next start)
MSG
