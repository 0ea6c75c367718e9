#!/bin/bash
# backup_demo-tibox.sh — snapshots of /etc and /home onto the backup disk.
#
# Usage (the daemon appends the device): backup_demo-tibox.sh [DEVICE]
#
# Writes YYYY-MM-DD_HH-MM-SS_<host>/ at the disk's root holding etc/ and
# home/, files unchanged since the previous backup hard-linked to it. Before
# writing, it deletes the oldest backups until the space needed is free.
#
# Environment (for tests and the demo):
#   TIBOX_SOURCES  space-separated trees to snapshot (default "/etc /home")
#   TIBOX_ROOT     where the dated folders go (default: the disk's mount point)
# Exit status: 0 done, 23 done but some files were unreadable, 1 failed.

# shellcheck source-path=SCRIPTDIR source=tetras-back-common.sh
. "$(dirname "$(readlink -f "$0")")/tetras-back-common.sh"

for arg in "$@"; do
    case $arg in
        --*) die "unknown option $arg" ;;
        *) say "device $arg" ;;
    esac
done

ROOT=${TIBOX_ROOT:-$MOUNT}
read -r -a SOURCES <<<"${TIBOX_SOURCES:-/etc /home}"
mapfile -t SOURCES < <(existing "${SOURCES[@]}")
[ "${#SOURCES[@]}" -gt 0 ] || die "none of the sources exists"

DIR="$ROOT/$(date +%Y-%m-%d_%H-%M-%S)_${HOST}"
[ ! -e "$DIR" ] || die "$DIR already exists"

estimate incremental "$DIR" "${SOURCES[@]}"
make_room "$ROOT"
engine snapshot --dest "$DIR" --link-dest auto "${SOURCES[@]}"
finish "$DIR"
