#!/bin/bash
# backup_hosts.sh — the site's other machines ([[hosts]] in tetras-back.toml)
# pulled over SSH with rsync onto the backup disk.
#
# Usage (the daemon appends the device): backup_hosts.sh [--verify] [HOST...] [DEVICE]
#
# Writes YYYY-MM-DD_HH-MM-SS_Hosts/ at the disk's root, with one folder per
# host holding its paths as they are there (web1/etc/nginx/...), files
# unchanged since that host's previous pull hard-linked to it. Without HOST
# names, every configured host is pulled. Before writing, it estimates what
# the pulls will write and deletes the oldest backups until that much is
# free. A host that fails (unreachable, host key changed, ...) is named in
# the log and the report; the others are still pulled.
#
# Set-up, once per host: tetras-back hosts key; tetras-back hosts trust NAME;
# tetras-back hosts check NAME (see README.md, "Other hosts").
#
# Environment (for tests and special set-ups):
#   HOSTS_ROOT  where the dated folders go (default: the disk's mount point)
# Exit status: 0 done, 23 done but some files were unreadable, 1 a host
# (or the whole run) failed.

# shellcheck source-path=SCRIPTDIR source=tetras-back-common.sh
. "$(dirname "$(readlink -f "$0")")/tetras-back-common.sh"

VERIFY=0
SELECT=()
for arg in "$@"; do
    case $arg in
        --verify) VERIFY=1 ;;
        --*) die "unknown option $arg" ;;
        /*) say "device $arg" ;;
        *) SELECT+=("$arg") ;;
    esac
done
[ "${#SELECT[@]}" -gt 0 ] || SELECT=(--all)

ROOT=${HOSTS_ROOT:-$MOUNT}
NAME="$(date +%Y-%m-%d_%H-%M-%S)_Hosts"
DIR="$ROOT/$NAME"
[ ! -e "$DIR" ] || die "$DIR already exists"

out=$("$TB" pull "${SELECT[@]}" --dry-run --json --link-dest auto --dest "$DIR") \
    || die "cannot estimate what the hosts will write"
NEED=$(printf '%s\n' "$out" | json_field needed_bytes)
[ -n "$NEED" ] || die "cannot read the estimate: $out"
# rsync counts a sparse file whole (its holes too), so the estimate can be
# more than the pulls will write: when even deleting every older backup
# cannot free that much, nothing is deleted and the pulls go on; a host that
# does not fit fails alone, and the older backups stay.
want=$((NEED + NEED / 10 + MARGIN_BYTES))
rc=0
"$TB" prune "$ROOT" --min-free "$want" --dry-run >/dev/null || rc=$?
case $rc in
    0) make_room "$ROOT" ;;
    5) say "the estimate ($NEED bytes, sparse files counted whole) is more than this disk can free; nothing deleted, pulling anyway" ;;
    *) die "prune failed (exit $rc)" ;;
esac

mkdir -- "$DIR"
say "writing $DIR"

rc=0
"$TB" pull "${SELECT[@]}" --dest "$DIR" --link-dest auto || rc=$?
case $rc in
    0) ;;
    23) PARTIAL=1; say "some files could not be read on the hosts (listed above); the rest is saved" ;;
    6) say "some hosts failed (listed above); the others are complete" ;;
    *) die "tetras-back pull failed (exit $rc)" ;;
esac

if [ "$VERIFY" -eq 1 ]; then
    for host in "$DIR"/*/; do
        [ -d "$host" ] || continue
        "$TB" verify "$host" || die "verification of $host failed"
    done
fi

[ "$rc" -ne 6 ] || die "some hosts failed; see above"
finish "$DIR"
