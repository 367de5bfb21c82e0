#!/usr/bin/env bash
# Installs tally on this host: release binaries, systemd units, example
# configurations under /etc/tally (never overwriting one that exists), the
# tuning scripts, the `tally` user and its directories. Starts nothing.
#
#   systemd/install.sh [--dry-run] [--prefix DIR] [--destdir DIR] [--no-build]
#
#   --dry-run      print every action, do none of them
#   --prefix DIR   binaries in DIR/bin, tally-tune in DIR/sbin, docs in
#                  DIR/share/doc/tally (default /usr/local); the units'
#                  ExecStart= follow it
#   --destdir DIR  stage everything under DIR (packaging, tests): no user is
#                  created, no ownership set, systemd is not reloaded
#   --no-build     use the binaries already in the cargo target directory
#
# Layout it creates:
#   PREFIX/bin/tally-{sequencer,journal,warehouse,monitor,pos,stat,tap}  (those built)
#   PREFIX/sbin/tally-tune
#   PREFIX/share/doc/tally/README.md
#   /etc/systemd/system/tally-{sequencer,warehouse,monitor}.service, tally-pos@.service
#   /etc/tally/               root:tally 0750
#     sequencer.toml          from config/tally.toml, paths moved to /var/lib/tally
#     warehouse.toml, monitor.toml, pos-STORE-DOWNTOWN.toml   the appliance config as the
#                             applications read it (config/NAME.toml if it exists)
#     *.env                   environment per service: RUST_LOG, and the
#                             applications' arguments (TALLY_WAREHOUSE_ARGS, ...)
#     inventory.csv           the warehouse's initial inventory (sample data)
#   /var/lib/tally/           tally:tally 0750 (systemd makes the per-service
#                             subdirectories: StateDirectory=)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dry_run=0
prefix=/usr/local
destdir=""
build=1

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run | -n) dry_run=1 && shift ;;
        --prefix)
            [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2 && exit 2; }
            prefix=${2%/}
            shift 2
            ;;
        --prefix=*) prefix=${1#*=} && prefix=${prefix%/} && shift ;;
        --destdir)
            [ $# -ge 2 ] || { echo "install.sh: --destdir needs a directory" >&2 && exit 2; }
            destdir=${2%/}
            shift 2
            ;;
        --no-build) build=0 && shift ;;
        -h | --help) usage && exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2 && exit 2 ;;
    esac
done
case $prefix in
    /*) ;;
    *) echo "install.sh: --prefix must be absolute" >&2 && exit 2 ;;
esac

unit_dir=/etc/systemd/system
config_dir=/etc/tally
state_dir=/var/lib/tally
target_dir=${CARGO_TARGET_DIR:-$repo/target}
binaries=(tally-sequencer tally-journal tally-warehouse tally-monitor tally-pos tally-stat tally-tap)
# Example configurations: source in config/ -> name in /etc/tally. The
# applications' --config is the appliance configuration as their host sees
# it, so they start from config/tally.toml unless config/ has their own.
configs=("tally.toml:sequencer.toml" "warehouse.toml:warehouse.toml" "monitor.toml:monitor.toml" "pos.toml:pos-STORE-DOWNTOWN.toml")
# Services whose configs get their demo paths moved: name in /etc/tally -> state subdirectory.
declare -A state_of=([sequencer.toml]=sequencer [warehouse.toml]=warehouse [monitor.toml]=monitor [pos-STORE-DOWNTOWN.toml]=pos-STORE-DOWNTOWN)

# Runs (or, with --dry-run, prints) one command.
run() {
    echo "+ $(printf '%q ' "$@")"
    [ "$dry_run" -eq 1 ] || "$@"
}

# Writes stdin to a file (or, with --dry-run, says so).
write_to() { # path mode description
    echo "+ write $1 (mode $2): $3"
    if [ "$dry_run" -eq 1 ]; then
        cat >/dev/null
    else
        cat >"$1"
        chmod "$2" "$1"
    fi
}

owned() { # owner:group path...
    [ -z "$destdir" ] || return 0
    run chown "$@"
}

if [ -z "$destdir" ] && [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (or use --dry-run / --destdir)" >&2
    exit 2
fi

echo "== build"
if [ "$build" -eq 1 ]; then
    command -v cargo >/dev/null 2>&1 || { echo "install.sh: cargo not found (or use --no-build)" >&2 && exit 1; }
    # Every binary package; a binary another engineer has not written yet
    # is simply not there and is skipped below.
    (cd "$repo" && run cargo build --release --locked --workspace --bins --exclude tally-benches)
else
    echo "(--no-build: using $target_dir/release)"
fi

echo "== user and directories"
if [ -z "$destdir" ]; then
    if getent passwd tally >/dev/null 2>&1; then
        echo "(user tally exists)"
    else
        run useradd --system --user-group --home-dir "$state_dir" --no-create-home \
            --shell /usr/sbin/nologin --comment "tally services" tally
    fi
fi
run install -d -m 0755 "$destdir$prefix/bin" "$destdir$prefix/sbin" "$destdir$prefix/share/doc/tally" "$destdir$unit_dir"
run install -d -m 0750 "$destdir$config_dir" "$destdir$state_dir"
owned root:tally "$destdir$config_dir"
owned tally:tally "$destdir$state_dir"

echo "== binaries"
for binary in "${binaries[@]}"; do
    if [ -x "$target_dir/release/$binary" ]; then
        run install -m 0755 "$target_dir/release/$binary" "$destdir$prefix/bin/$binary"
    elif [ "$dry_run" -eq 1 ] && [ "$build" -eq 1 ]; then
        echo "+ install -m 0755 $target_dir/release/$binary $destdir$prefix/bin/$binary   (if the build makes it)"
    else
        echo "(skip $binary: not built)"
    fi
done
run install -m 0755 "$repo/tuning/tally-tune" "$destdir$prefix/sbin/tally-tune"
run install -m 0644 "$repo/README.md" "$destdir$prefix/share/doc/tally/README.md"

echo "== units"
for unit in "$repo"/systemd/*.service; do
    name=${unit##*/}
    sed -e "s|/usr/local/bin/|$prefix/bin/|g" -e "s|file:/usr/local/share/doc/|file:$prefix/share/doc/|g" "$unit" |
        write_to "$destdir$unit_dir/$name" 0644 "from systemd/$name, ExecStart under $prefix/bin"
done

echo "== configuration ($config_dir; existing files are kept)"
# The demo config keeps its files under ../target/tally-demo/ (relative to
# the file); an installed one keeps them in its service's state directory,
# and its counter file on tmpfs (see tally-sequencer.service).
installed_config() { # source, service
    local counters=0
    # The appliance's counter file moves to tmpfs, unless the example
    # already names a path.
    if [ "$2" = sequencer ] && ! awk '/^[[:space:]]*\[/ { s = $0 } s ~ /^\[counters\]/ && /^[[:space:]]*path[[:space:]]*=/ { found = 1 } END { exit !found }' "$1"; then
        counters=1
    fi
    awk -v state="$state_dir/$2" -v counters="$counters" '
        { gsub(/"\.\.\/target\/tally-demo\//, "\"" state "/") }
        { print }
        counters && /^[[:space:]]*\[counters\]/ {
            print "path = \"/run/tally/sequencer/tally-sequencer.counters\"  # tmpfs (RuntimeDirectory=); set by install.sh"
        }
    ' "$1"
}
for entry in "${configs[@]}"; do
    source_file="$repo/config/${entry%%:*}"
    [ -f "$source_file" ] || source_file="$repo/config/tally.toml"
    name=${entry#*:}
    target="$destdir$config_dir/$name"
    if [ ! -f "$source_file" ]; then
        echo "(skip $name: no example config in the repository)"
    elif [ -e "$target" ]; then
        echo "(keep $target: it exists; the new example is $source_file)"
    else
        installed_config "$source_file" "${state_of[$name]}" |
            write_to "$target" 0640 "from config/${source_file##*/}, files under $state_dir/${state_of[$name]}"
        owned root:tally "$target"
    fi
done
# The environment files: RUST_LOG, and the applications' arguments after
# --config (see each binary's --help).
env_text() { # service
    printf '# Environment of tally-%s (systemd EnvironmentFile=).\nRUST_LOG=info\n' "$1"
    case $1 in
        warehouse)
            printf '# Arguments after --config, split on spaces (tally-warehouse --help).\n'
            printf '# The login: the user here, the password in %s/warehouse.password (the unit sets TALLY_PASSWORD_FILE).\nTALLY_USER=wh\n' "$config_dir"
            printf 'TALLY_WAREHOUSE_ARGS=--snapshot %s/warehouse/warehouse.snapshot --inventory %s/inventory.csv\n' \
                "$state_dir" "$config_dir"
            ;;
        monitor)
            printf '# The login it reads with: the user here, the password in %s/monitor.password (the unit sets TALLY_PASSWORD_FILE).\nTALLY_USER=read1\n' "$config_dir"
            printf '# Arguments after --config, split on spaces (tally-monitor --help).\nTALLY_MONITOR_ARGS=\n'
            ;;
        pos)
            printf '# Arguments after --config for every till, split on spaces (tally-pos --help);\n'
            printf '# /etc/tally/pos-LOCATION.env sets its own: TALLY_USER (a user of role pos) and\n'
            printf '# TALLY_POS_ARGS=--listen ADDR; the password is %s/pos-LOCATION.password;\n' "$config_dir"
            printf '# the location is the instance name: tally-pos@LOCATION).\nTALLY_POS_ARGS=\n'
            ;;
    esac
}
for env_name in sequencer warehouse monitor pos; do
    target="$destdir$config_dir/$env_name.env"
    if [ -e "$target" ]; then
        echo "(keep $target)"
    else
        env_text "$env_name" | write_to "$target" 0640 "default environment"
        owned root:tally "$target"
    fi
done
# The warehouse's initial inventory for a new session (sample data).
if [ -f "$repo/apps/data/inventory.csv" ]; then
    if [ -e "$destdir$config_dir/inventory.csv" ]; then
        echo "(keep $destdir$config_dir/inventory.csv)"
    else
        run install -m 0640 "$repo/apps/data/inventory.csv" "$destdir$config_dir/inventory.csv"
        owned root:tally "$destdir$config_dir/inventory.csv"
    fi
fi
echo "(passwords: write each application's login password, one line, to $config_dir/warehouse.password, monitor.password and pos-LOCATION.password, root:tally 0640; the user is TALLY_USER in SERVICE.env)"

echo "== systemd"
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
else
    echo "(systemd is not running here or --destdir given: no daemon-reload)"
fi
if [ -z "$destdir" ] && [ -x "$prefix/bin/tally-sequencer" ] && [ -e "$config_dir/sequencer.toml" ]; then
    run "$prefix/bin/tally-sequencer" check-config --config "$config_dir/sequencer.toml" ||
        echo "install.sh: $config_dir/sequencer.toml needs editing before the first start" >&2
fi

if [ "$dry_run" -eq 1 ]; then
    echo
    echo "Dry run: nothing was changed."
    exit 0
fi
cat <<EOF

Installed${destdir:+ under $destdir}. Nothing was started. Next:
  $prefix/sbin/tally-tune check --config $config_dir/sequencer.toml   # host tuning report
  $prefix/sbin/tally-tune apply --config $config_dir/sequencer.toml   # what it would change (--yes to do it)
  edit $config_dir/*.toml (interfaces, groups, cores, password hashes)
  systemctl edit tally-sequencer          # CPUAffinity= for this host's cores
  systemctl enable --now tally-sequencer  # then tally-warehouse, tally-monitor, tally-pos@NAME
  $prefix/bin/tally-stat                  # live counters
EOF
