# shellcheck shell=bash
# Sourced by the HTTP benchmarks (bench.sh, store.sh): starts
# `tally-demo --serve --json` and waits for its first line, one JSON object
# naming the HTTP address, the configuration and the demo credentials.
#
#   start_demo BINARY DIR [tally-demo arguments...]   # sets $server (its pid)
#   demo_field DIR NAME                               # "http", "config", ...
#
# The caller's EXIT trap kills $server.

start_demo() {
    local binary=$1 dir=$2
    shift 2
    "$binary" --serve --json --dir "$dir/serve" "$@" >"$dir/serve.out" 2>"$dir/serve.err" &
    server=$!
    for _ in $(seq 1 600); do
        [ -s "$dir/serve.out" ] && return 0
        kill -0 "$server" 2>/dev/null || { cat "$dir/serve.err" >&2; exit 1; }
        sleep 0.1
    done
    echo "bench: tally-demo --serve printed nothing in 60 s" >&2
    cat "$dir/serve.err" >&2
    exit 1
}

demo_field() {
    head -1 "$1/serve.out" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}
