#!/usr/bin/env bash
# Keep-alive stock reads from a store node (`tally-pos --location … --listen`)
# with wrk (installed from the distribution when missing), at 1 and 16
# connections, then the idle node's CPU over 10 s.
#
# It runs `tally-demo --serve` (release build, default configuration: the
# appliance, the warehouse with the sample inventory) on loopback ports
# PORT_BASE..PORT_BASE+4, then the release `tally-pos` as pos2 for
# STORE-DOWNTOWN on PORT_BASE+40, and waits until the node is linked.
#
#   benches/http/store.sh                  # this checkout, 5 s per run
#   benches/http/store.sh /other/checkout  # another checkout's release binaries (A/B)
#   SECONDS_PER_RUN=10 benches/http/store.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

project=${1:-.}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
PORT_BASE=${PORT_BASE:-32150}
GROUP=${GROUP:-239.255.77.9}
listen=127.0.0.1:$((PORT_BASE + 40))

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
if [ "$project" = . ]; then
    cargo build --release -q -p tally-demo -p tally-pos --bins
fi

work=$(mktemp -d)
server=
node=
cleanup() {
    for pid in $node $server; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=benches/http/serve-demo.sh
. benches/http/serve-demo.sh
start_demo "$project"/target/release/tally-demo "$work" --port-base "$PORT_BASE" --group "$GROUP"
config=$(demo_field "$work" config)
printf 'pos2pass\n' >"$work/pos2.password"
RUST_LOG=warn "$project"/target/release/tally-pos --config "$config" --user pos2 \
    --password-file "$work/pos2.password" --location STORE-DOWNTOWN --listen "$listen" \
    --counters "$work/pos.counters" >"$work/node.out" 2>"$work/node.err" &
node=$!
linked=
for _ in $(seq 1 600); do
    if curl -sf -o /dev/null "http://$listen/health"; then linked=1; break; fi
    kill -0 "$node" 2>/dev/null || { cat "$work/node.err" >&2; exit 1; }
    sleep 0.1
done
[ -n "$linked" ] || { echo "bench: the store node never linked" >&2; cat "$work/node.err" >&2; exit 1; }

for connections in 1 16; do
    threads=$((connections < 2 ? 1 : 2))
    echo "connections $connections:"
    wrk -t"$threads" -c"$connections" -d"${SECONDS_PER_RUN}s" --latency \
        "http://$listen/v1/skus/TSHIRT-WHT-L" | grep -E "Requests/sec|50%|99%"
done
ticks() { awk '{print $14 + $15}' "/proc/$node/stat"; }
before=$(ticks)
sleep 10
echo "idle node: $(($(ticks) - before)) clock ticks in 10 s ($(getconf CLK_TCK) ticks = 1 core-second)"
