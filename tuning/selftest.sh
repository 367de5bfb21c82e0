#!/usr/bin/env bash
# Exercises tally-tune check / apply --yes / revert against a fake /proc,
# /sys and /etc (tally-tune --root), so CI tests the write and undo paths
# without touching the host. Exits non-zero on the first mismatch.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tune="$here/tally-tune"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

put() { # path value
    mkdir -p "$(dirname "$root$1")"
    printf '%s\n' "$2" >"$root$1"
}

# A 4-CPU host with untuned defaults.
put /proc/cmdline "BOOT_IMAGE=/vmlinuz root=/dev/vda quiet"
put /proc/sys/net/core/rmem_max 212992
put /proc/sys/net/core/wmem_max 212992
put /proc/sys/net/core/rmem_default 212992
put /proc/sys/net/core/busy_poll 0
put /proc/sys/net/core/busy_read 0
put /proc/sys/net/core/netdev_max_backlog 1000
put /proc/sys/vm/swappiness 60
put /proc/sys/vm/nr_hugepages 0
put /proc/sys/kernel/numa_balancing 1
put /proc/meminfo "HugePages_Free:        0"
put /proc/irq/default_smp_affinity f
put /proc/irq/10/smp_affinity_list 0-3
put /proc/irq/11/smp_affinity_list 0
put /proc/irq/12/smp_affinity_list 3
put /sys/devices/system/cpu/online 0-3
put /sys/devices/system/cpu/cpuidle/current_driver intel_idle
for cpu in 0 1 2 3; do
    put "/sys/devices/system/cpu/cpu$cpu/cpufreq/scaling_governor" powersave
    put "/sys/devices/system/cpu/cpu$cpu/cpufreq/scaling_available_governors" "performance powersave"
    put "/sys/devices/system/cpu/cpu$cpu/cpuidle/state0/name" POLL
    put "/sys/devices/system/cpu/cpu$cpu/cpuidle/state0/latency" 0
    put "/sys/devices/system/cpu/cpu$cpu/cpuidle/state0/disable" 0
    put "/sys/devices/system/cpu/cpu$cpu/cpuidle/state1/name" C6
    put "/sys/devices/system/cpu/cpu$cpu/cpuidle/state1/latency" 133
    put "/sys/devices/system/cpu/cpu$cpu/cpuidle/state1/disable" 0
done
put /sys/module/haltpoll/parameters/guest_halt_poll_ns 0
put /sys/kernel/mm/transparent_hugepage/enabled "[always] madvise never"
put /sys/kernel/mm/transparent_hugepage/defrag "[always] defer defer+madvise madvise never"
put /etc/sysctl.d/90-tally.conf "# an operator's older file"
mkdir -p "$root/etc/tally"
cat >"$root/etc/tally/sequencer.toml" <<'EOF'
[stream]
group = "239.255.77.1"   # comment
interface = "127.0.0.1"
[loops.sequencer]
core = 2
idle = "busy-spin"
[loops.gateway]
core = 3
EOF

fail() {
    echo "selftest: FAIL: $*" >&2
    exit 1
}

# Current values of every setting, from check --json (THP selectors read
# back as their choice, so a fake file that held "[always] madvise never"
# compares equal to one holding "always").
currents() {
    { "$tune" check --root "$root" --json || true; } | tr '{' '\n' | sed -n 's/.*"name":"\([^"]*\)","current":"\([^"]*\)".*/\1=\2/p'
}

before=$(currents)
set +e
"$tune" check --root "$root" >"$root/check.txt"
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "check exit $rc, expected 1 (rmem_max/wmem_max too small)"
grep -q '^net.core.rmem_max .*WARN  REQUIRED' "$root/check.txt" || fail "rmem_max not a required WARN"
grep -q '^tally cores  *2-3 ' "$root/check.txt" || fail "cores 2-3 not read from /etc/tally/sequencer.toml"

dry=$("$tune" apply --root "$root")
grep -q 'net.core.rmem_max 212992 -> 8388608' <<<"$dry" || fail "dry run does not list rmem_max"
grep -q 'IRQ 10 0-3 -> 0-1' <<<"$dry" || fail "dry run does not move IRQ 10 off 2-3"
grep -q 'isolcpus=managed_irq,domain,2-3' <<<"$dry" || fail "dry run does not print isolcpus"
grep -q 'guest halt-polling 0ns -> 200000ns' <<<"$dry" || fail "dry run does not list guest halt-polling"
[ "$(currents)" = "$before" ] || fail "a dry run changed something"
[ ! -e "$root/var/lib/tally-tune/state" ] || fail "a dry run wrote the state file"

"$tune" apply --root "$root" --yes >"$root/apply.txt" || fail "apply --yes failed: $(cat "$root/apply.txt")"
[ "$(cat "$root/proc/sys/net/core/rmem_max")" = 8388608 ] || fail "rmem_max not raised"
[ "$(cat "$root/proc/sys/vm/swappiness")" = 10 ] || fail "swappiness not lowered"
[ "$(cat "$root/proc/irq/10/smp_affinity_list")" = 0-1 ] || fail "IRQ 10 not moved"
[ "$(cat "$root/proc/irq/11/smp_affinity_list")" = 0 ] || fail "IRQ 11 touched"
[ "$(cat "$root/proc/irq/default_smp_affinity")" = 3 ] || fail "default IRQ affinity not 0-1"
[ "$(cat "$root/sys/devices/system/cpu/cpu2/cpufreq/scaling_governor")" = performance ] || fail "governor"
[ "$(cat "$root/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")" = powersave ] || fail "CPU 0 governor touched"
[ "$(cat "$root/sys/devices/system/cpu/cpu3/cpuidle/state1/disable")" = 1 ] || fail "C6 on CPU 3 not disabled"
[ "$(cat "$root/sys/devices/system/cpu/cpu0/cpuidle/state1/disable")" = 0 ] || fail "C6 on CPU 0 touched"
[ "$(cat "$root/sys/module/haltpoll/parameters/guest_halt_poll_ns")" = 200000 ] || fail "guest halt-polling not set"
grep -qx 'net.core.rmem_max = 8388608' "$root/etc/sysctl.d/90-tally.conf" || fail "sysctl.d not written"
"$tune" check --root "$root" >/dev/null || fail "check still fails after apply"

# A second apply changes nothing and keeps the first previous values.
"$tune" apply --root "$root" --yes >/dev/null || fail "second apply failed"
grep -q "^/proc/sys/net/core/rmem_max	212992\$" "$root/var/lib/tally-tune/state" || fail "state lost the original rmem_max"

"$tune" revert --root "$root" --dry-run | grep -q 'would restore /proc/sys/net/core/rmem_max: 8388608 -> 212992' ||
    fail "revert --dry-run does not list rmem_max"
"$tune" revert --root "$root" >"$root/revert.txt" || fail "revert failed: $(cat "$root/revert.txt")"
after=$(currents)
[ "$after" = "$before" ] || fail "revert left differences: $(diff <(echo "$before") <(echo "$after"))"
[ "$(cat "$root/etc/sysctl.d/90-tally.conf")" = "# an operator's older file" ] || fail "sysctl.d not restored"
[ ! -e "$root/var/lib/tally-tune/state" ] || fail "state file left after revert"
"$tune" revert --root "$root" | grep -q 'nothing to revert' || fail "second revert"

echo "selftest: tally-tune check/apply/revert OK"
