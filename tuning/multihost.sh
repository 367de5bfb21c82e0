#!/usr/bin/env bash
# multihost.sh: a small LAN of network namespaces on one machine, to run
# tally as it runs on several hosts (README "Operations", "A LAN on one
# machine"). Needs root and iproute2 (`ip netns`, veth, bridge).
#
#   multihost.sh up                 build the LAN (clearing leftovers first)
#   multihost.sh down               remove it: every namespace, link and
#                                   process in it (idempotent)
#   multihost.sh list               one line per host: HOST NETNS ADDRESS DEV
#   multihost.sh cut HOST           pull HOST's cable (its switch port down)
#   multihost.sh heal HOST          plug it back in
#   multihost.sh exec HOST CMD...   run CMD on HOST (in its namespace)
#
# The LAN: a namespace PREFIX-lan holding the switch, a Linux bridge `br0`
# with multicast snooping off (it floods the stream to every port, like an
# unmanaged switch: no IGMP querier needed), and one namespace per host,
# PREFIX-seq, PREFIX-wh, PREFIX-mon, PREFIX-pos1, PREFIX-pos2, each joined
# to the bridge by a veth pair: `eth0` in the host, `p-HOST` on the bridge.
# Each host has `lo` up, SUBNET.N/24 on eth0 (seq .1, wh .2, mon .3, pos1
# .4, pos2 .5), the multicast route `224.0.0.0/4 dev eth0`, and reverse-path
# filtering off. Nothing is created outside these namespaces: the machine's
# own interfaces, routes and sysctls are never touched, and no address of
# the LAN is reachable from the machine itself (use `exec`).
#
# `cut` sets the host's bridge port down, as a pulled cable would: the
# host's eth0 loses carrier but keeps its address, routes and multicast
# memberships, and everything it sends or should receive is dropped until
# `heal`.
#
# Environment:
#   TALLY_LAN_PREFIX  namespace name prefix (default "tally"); give every
#                     concurrent LAN its own (tests use one per process)
#   TALLY_LAN_SUBNET  the first three octets of the /24 (default "10.77.0");
#                     use a private range that nothing else on the machine
#                     uses (the LAN never leaves its namespaces anyway)
#
# Exit status: 0 on success, 1 on a failure (with a message), 2 on a usage
# error.

set -euo pipefail

readonly PREFIX="${TALLY_LAN_PREFIX:-tally}"
readonly SUBNET="${TALLY_LAN_SUBNET:-10.77.0}"
readonly LAN_NS="$PREFIX-lan"
readonly BRIDGE=br0
readonly HOST_DEV=eth0
# Host name and the last octet of its address, in order.
readonly HOSTS=(seq wh mon pos1 pos2)
readonly OCTETS=(1 2 3 4 5)

die() {
    echo "multihost.sh: $*" >&2
    exit 1
}

# The header above, on stdout for help (exit 0), on stderr for a usage
# error (exit 2).
usage() {
    local code=${1:-2}
    if [ "$code" -eq 0 ]; then
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
    else
        sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    fi
    exit "$code"
}

check_name() {
    case "$1" in
    *[!A-Za-z0-9_.-]* | '') die "bad ${2}: ${1@Q} (letters, digits, _ . - only)" ;;
    esac
}

check_subnet() {
    local octet
    local -a octets
    IFS=. read -r -a octets <<<"$SUBNET"
    [ "${#octets[@]}" -eq 3 ] || die "TALLY_LAN_SUBNET must be three octets (e.g. 10.77.0), not ${SUBNET@Q}"
    for octet in "${octets[@]}"; do
        case "$octet" in
        '' | *[!0-9]*) die "TALLY_LAN_SUBNET: ${octet@Q} is not a number" ;;
        esac
        [ "$octet" -le 255 ] || die "TALLY_LAN_SUBNET: $octet is not an octet"
    done
}

need_tools() {
    command -v ip >/dev/null 2>&1 || die "ip (iproute2) not found"
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
    ip netns list >/dev/null 2>&1 || die "ip netns does not work here"
}

# The index of HOST in HOSTS, or die.
host_index() {
    local i
    for i in "${!HOSTS[@]}"; do
        if [ "${HOSTS[$i]}" = "$1" ]; then
            echo "$i"
            return
        fi
    done
    die "no host ${1@Q} (hosts: ${HOSTS[*]})"
}

ns_exists() {
    ip netns list | awk '{print $1}' | grep -qxF -- "$1"
}

# Runs a sysctl inside namespace $1 (net.* sysctls are per namespace).
ns_sysctl() {
    ip netns exec "$1" sysctl -qw "$2" >/dev/null
}

cmd_down() {
    local ns pids pid
    local -a namespaces=("$LAN_NS")
    for ns in "${HOSTS[@]}"; do
        namespaces+=("$PREFIX-$ns")
    done
    # Processes still inside a namespace keep it alive after `ip netns
    # del`: stop them first (TERM, then KILL after 5 s).
    for ns in "${namespaces[@]}"; do
        ns_exists "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] || continue
        for pid in $pids; do
            kill -TERM "$pid" 2>/dev/null || true
        done
        for _ in $(seq 50); do
            [ -n "$(ip netns pids "$ns" 2>/dev/null || true)" ] || break
            sleep 0.1
        done
        for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
            kill -KILL "$pid" 2>/dev/null || true
        done
    done
    for ns in "${namespaces[@]}"; do
        if ns_exists "$ns"; then
            ip netns del "$ns" || die "could not delete namespace $ns"
        fi
    done
}

cmd_up() {
    local i host ns addr
    cmd_down
    # A step that fails ends the script (set -e): leave nothing behind.
    trap cmd_down EXIT
    ip netns add "$LAN_NS"
    ip -n "$LAN_NS" link set lo up
    ip -n "$LAN_NS" link add "$BRIDGE" type bridge mcast_snooping 0 stp_state 0
    ip -n "$LAN_NS" link set "$BRIDGE" up
    for i in "${!HOSTS[@]}"; do
        host=${HOSTS[$i]}
        ns="$PREFIX-$host"
        addr="$SUBNET.${OCTETS[$i]}"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Both ends are created directly in their namespaces: nothing ever
        # appears in the machine's own.
        ip -n "$ns" link add "$HOST_DEV" type veth peer name "p-$host" netns "$LAN_NS"
        ip -n "$LAN_NS" link set "p-$host" master "$BRIDGE"
        ip -n "$LAN_NS" link set "p-$host" up
        ns_sysctl "$ns" net.ipv4.conf.all.rp_filter=0
        ns_sysctl "$ns" net.ipv4.conf.default.rp_filter=0
        ns_sysctl "$ns" "net.ipv4.conf.$HOST_DEV.rp_filter=0"
        ip -n "$ns" addr add "$addr/24" dev "$HOST_DEV"
        ip -n "$ns" link set "$HOST_DEV" up
        ip -n "$ns" route add 224.0.0.0/4 dev "$HOST_DEV"
    done
    trap - EXIT
    cmd_list
}

cmd_list() {
    local i
    for i in "${!HOSTS[@]}"; do
        printf '%s %s %s %s\n' "${HOSTS[$i]}" "$PREFIX-${HOSTS[$i]}" "$SUBNET.${OCTETS[$i]}" "$HOST_DEV"
    done
}

# Sets HOST's bridge port up or down.
set_port() {
    local host=$1 state=$2
    host_index "$host" >/dev/null
    ns_exists "$LAN_NS" || die "no LAN (run: $0 up)"
    ip -n "$LAN_NS" link set "p-$host" "$state"
}

main() {
    [ "$#" -ge 1 ] || usage
    check_name "$PREFIX" TALLY_LAN_PREFIX
    check_subnet
    local command=$1
    shift
    case "$command" in
    up)
        [ "$#" -eq 0 ] || usage
        need_tools
        cmd_up
        ;;
    down)
        [ "$#" -eq 0 ] || usage
        need_tools
        cmd_down
        ;;
    list)
        [ "$#" -eq 0 ] || usage
        cmd_list
        ;;
    cut | heal)
        [ "$#" -eq 1 ] || usage
        need_tools
        if [ "$command" = cut ]; then set_port "$1" down; else set_port "$1" up; fi
        ;;
    exec)
        [ "$#" -ge 2 ] || usage
        need_tools
        local host=$1
        shift
        host_index "$host" >/dev/null
        exec ip netns exec "$PREFIX-$host" "$@"
        ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
    esac
}

main "$@"
