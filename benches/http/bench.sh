#!/usr/bin/env bash
# Load benchmark of the HTTP API with wrk (installed from the distribution
# when missing): reads (GET /v1/skus/{sku}) and writes (POST /v1/orders,
# each answered after the warehouse's decision) at 1, 16 and 64 keep-alive
# connections, 3 runs each; prints the medians as a Markdown table.
#
# It runs `tally-demo --serve` (release build, default configuration: the
# appliance, the warehouse with the sample inventory, the HTTP service) on
# loopback ports PORT_BASE..PORT_BASE+4.
#
#   benches/http/bench.sh            # 10 s per run
#   SECONDS_PER_RUN=5 benches/http/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
PORT_BASE=${PORT_BASE:-32100}
CONNECTIONS=${CONNECTIONS:-"1 16 64"}
RUNS=${RUNS:-3}

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release -q -p tally-demo --bin tally-demo

work=$(mktemp -d)
cleanup() {
    if [ -n "${server:-}" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=benches/http/serve-demo.sh
. benches/http/serve-demo.sh
start_demo target/release/tally-demo "$work" --port-base "$PORT_BASE"
http=$(demo_field "$work" http)
reader=$(printf 'read1:readpass' | base64)
writer=$(printf 'pos1:pos1pass' | base64)
sku=TSHIRT-WHT-L
# Enough stock that every order of the write runs is filled.
curl -sf -u ops1:ops1pass -H 'Idempotency-Key: bench-restock' \
    -d "{\"sku\":\"$sku\",\"location\":\"DC-NORTH\",\"qty\":2000000000,\"reason\":\"restock\"}" \
    "$http/v1/adjustments" >/dev/null
# Both passwords verified once (argon2), then remembered.
curl -sf -H "Authorization: Basic $reader" "$http/v1/skus/$sku" >/dev/null
curl -s -o /dev/null -H "Authorization: Basic $writer" "$http/v1/skus"  # 403, verified
cat >"$work/order.lua" <<EOF
local counter = 0
local prefix = ""
function setup(thread)
    thread:set("prefix", tostring(math.random(1, 2000000000)))
end
function init(args)
    prefix = tostring(prefix) .. "-" .. tostring(math.random(1, 2000000000))
end
function request()
    counter = counter + 1
    return wrk.format("POST", "/v1/orders", {
        ["Authorization"] = "Basic $writer",
        ["Content-Type"] = "application/json",
        ["Idempotency-Key"] = prefix .. "-" .. counter,
    }, '{"sku":"$sku","qty":1,"location":"DC-NORTH"}')
end
EOF

# One wrk run: prints "requests_per_sec p50_us p99_us non2xx".
run_wrk() {
    local connections=$1; shift
    local threads=$(( connections < 2 ? 1 : 2 ))
    wrk -t"$threads" -c"$connections" -d"${SECONDS_PER_RUN}s" --latency "$@" 2>&1 | python3 -c '
import re, sys
text = sys.stdin.read()
def us(v, unit):
    return float(v) * {"us": 1, "ms": 1000, "s": 1000000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p = {k: us(v, u) for k, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", text)}
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
p50, p99 = p["50"], p["99"]
print("%.0f %.0f %.0f %s" % (rps, p50, p99, bad.group(1) if bad else 0))
'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

measure() {
    local name=$1 connections=$2; shift 2
    local results=()
    for _ in $(seq 1 "$RUNS"); do results+=("$(run_wrk "$connections" "$@")"); done
    local rps p50 p99 bad
    rps=$(printf '%s\n' "${results[@]}" | cut -d' ' -f1 | median)
    p50=$(printf '%s\n' "${results[@]}" | cut -d' ' -f2 | median)
    p99=$(printf '%s\n' "${results[@]}" | cut -d' ' -f3 | median)
    bad=$(printf '%s\n' "${results[@]}" | cut -d' ' -f4 | median)
    echo "| $name | $connections | $rps | $p50 | $p99 | $bad |"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $(uname -r)"
echo
echo "| what | connections | requests/s | p50 µs | p99 µs | non-2xx |"
echo "|---|---|---|---|---|---|"
for c in $CONNECTIONS; do
    measure "GET /v1/skus/$sku" "$c" -H "Authorization: Basic $reader" "$http/v1/skus/$sku"
done
for c in $CONNECTIONS; do
    measure "POST /v1/orders" "$c" -s "$work/order.lua" "$http"
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
