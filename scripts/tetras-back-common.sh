# shellcheck shell=bash
# Shared by the shipped backup scripts (sourced, not run). The daemon runs
# the scripts with the backup disk mounted and these in the environment:
# TETRAS_BACK_MOUNT, TETRAS_BACK_BIN, TETRAS_BACK_HOSTNAME, TETRAS_BACK_NAME.

set -euo pipefail

TB=${TETRAS_BACK_BIN:-tetras-back}
# MOUNT and HOST are for the scripts that source this file.
# shellcheck disable=SC2034
MOUNT=${TETRAS_BACK_MOUNT:-$PWD}
# shellcheck disable=SC2034
HOST=${TETRAS_BACK_HOSTNAME:-$(hostname)}
# Extra room asked for above the estimate (plus 10% of it): database dumps
# and growth while the backup runs.
MARGIN_BYTES=${TETRAS_BACK_MARGIN_BYTES:-$((16 * 1024 * 1024))}

say() { printf '%s: %s\n' "${0##*/}" "$*"; }
die() { printf '%s: ERROR: %s\n' "${0##*/}" "$*" >&2; exit 1; }

command -v "$TB" >/dev/null 2>&1 || die "tetras-back binary not found ($TB)"

# The value of a numeric field in one line of JSON.
json_field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

# Adds to NEED the bytes a snapshot of SRC... into DEST would copy; with
# `incremental`, files unchanged since the previous backup cost nothing:
# estimate incremental|full DEST SRC...
NEED=0
estimate() {
    local link=() dest=$2 out bytes
    [ "$1" = incremental ] && link=(--link-dest auto)
    shift 2
    out=$("$TB" snapshot --dry-run --json "${link[@]}" --dest "$dest" "$@") \
        || die "cannot estimate the size of $*"
    bytes=$(printf '%s\n' "$out" | json_field needed_bytes)
    [ -n "$bytes" ] || die "cannot read the estimate: $out"
    NEED=$((NEED + bytes))
}

# Deletes the oldest backups in ROOT until NEED bytes (plus the margin) are
# free, before anything is written, so the disk never fills mid-run. If even
# deleting every older backup would not make room, it fails and deletes
# nothing.
make_room() {
    local root=$1 need=$NEED
    local want=$((need + need / 10 + MARGIN_BYTES))
    say "about $need bytes to write; making sure $want bytes are free in $root"
    local rc=0
    "$TB" prune "$root" --min-free "$want" --dry-run >/dev/null || rc=$?
    case $rc in
        0) "$TB" prune "$root" --min-free "$want" || die "prune failed" ;;
        5) die "not enough space on the disk for this backup ($want bytes), even with every older backup deleted; nothing was deleted" ;;
        *) die "prune failed (exit $rc)" ;;
    esac
}

# Runs an engine; exit 23 (some source files unreadable, reported above)
# is remembered as a partial backup and the run goes on.
PARTIAL=0
engine() {
    local rc=0
    "$TB" "$@" || rc=$?
    case $rc in
        0) ;;
        23) PARTIAL=1; say "some files could not be read (listed above); the rest is saved" ;;
        *) die "tetras-back $1 failed (exit $rc)" ;;
    esac
}

# Exit status of the script: 23 when files were skipped.
finish() {
    if [ "$PARTIAL" -eq 1 ]; then
        say "backup in $1 is complete except for the files listed above"
        exit 23
    fi
    say "backup complete: $1"
}

# Sources that exist, among those given.
existing() {
    local p
    for p in "$@"; do
        if [ -e "$p" ]; then printf '%s\n' "$p"; else say "skipping $p: does not exist" >&2; fi
    done
}
