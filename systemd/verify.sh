#!/usr/bin/env bash
# Runs `systemd-analyze verify` on every unit in this folder. verify insists
# that ExecStart= names an executable file, and the binaries are not
# installed where CI runs (some are not even built yet), so it checks copies
# whose ExecStart points at stand-in executables of the same names in a
# scratch folder. Any output from verify (it reports unknown keys and bad
# values as warnings with exit status 0) is a failure.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify: systemd-analyze not found (apt-get install systemd)" >&2
    exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/bin" "$scratch/units"

units=()
for unit in "$here"/*.service; do
    name=${unit##*/}
    # Every /usr/local/bin/NAME in ExecStart gets a stand-in.
    while read -r binary; do
        stub="$scratch/bin/${binary##*/}"
        printf '#!/bin/sh\nexit 0\n' >"$stub"
        chmod +x "$stub"
    done < <(sed -n 's|^ExecStart=\(/usr/local/bin/[^ ]*\).*|\1|p' "$unit")
    sed "s|^ExecStart=/usr/local/bin/|ExecStart=$scratch/bin/|" "$unit" >"$scratch/units/$name"
    case $name in
        *@.service)
            # A template is verified through an instance of it.
            instance="${name%@.service}@example.service"
            ln -s "$name" "$scratch/units/$instance"
            units+=("$scratch/units/$instance")
            ;;
        *) units+=("$scratch/units/$name") ;;
    esac
done

status=0
for unit in "${units[@]}"; do
    if output=$(cd "$scratch/units" && systemd-analyze verify --man=no "$unit" 2>&1) && [ -z "$output" ]; then
        echo "verify: ${unit##*/} OK"
    else
        echo "verify: ${unit##*/} FAILED:" >&2
        printf '%s\n' "$output" | sed "s|$scratch/units/||g; s|$scratch/bin/|/usr/local/bin/|g" >&2
        status=1
    fi
done
exit "$status"
