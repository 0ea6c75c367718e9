#!/bin/bash
# backup_nocloud.sh — the server's data and configuration onto the backup disk.
#
# Usage (the daemon appends the device): backup_nocloud.sh [--data] [--config]
#        [--mysql] [--postgres] [--verify] [DEVICE]
#
# Writes YYYY-MM-DD_HH-MM-SS_Sauvegarde_<host>/ at the disk's root, with
#   Donnees/          --data: a snapshot of /home, files unchanged since the
#                     previous backup hard-linked to it (each one complete)
#   serveur.tar.gz    --config: /etc /srv /var/www /root (those that exist),
#                     plus databases/ with a MySQL dump (--mysql) and a
#                     PostgreSQL dump (--postgres) when those tools exist
# Before writing, it estimates the space needed and deletes the oldest
# backups until that much is free; otherwise every backup is kept.
#
# Environment (for tests and special set-ups):
#   NOCLOUD_DATA    data tree to snapshot (default /home)
#   NOCLOUD_CONFIG  space-separated paths to archive (default "/etc /srv /var/www /root")
#   NOCLOUD_ROOT    where the dated folders go (default: the disk's mount point)
# Exit status: 0 done, 23 done but some files were unreadable, 1 failed.

# shellcheck source-path=SCRIPTDIR source=tetras-back-common.sh
. "$(dirname "$(readlink -f "$0")")/tetras-back-common.sh"

DATA=0 CONFIG=0 MYSQL=0 POSTGRES=0 VERIFY=0
for arg in "$@"; do
    case $arg in
        --data) DATA=1 ;;
        --config) CONFIG=1 ;;
        --mysql) MYSQL=1 ;;
        --postgres) POSTGRES=1 ;;
        --verify) VERIFY=1 ;;
        --*) die "unknown option $arg" ;;
        *) say "device $arg" ;;
    esac
done
[ "$DATA$CONFIG" != 00 ] || die "nothing to do: give --data and/or --config"

ROOT=${NOCLOUD_ROOT:-$MOUNT}
DATA_SRC=${NOCLOUD_DATA:-/home}
CONFIG_SRC=()
if [ "$CONFIG" -eq 1 ]; then
    read -r -a CONFIG_SRC <<<"${NOCLOUD_CONFIG:-/etc /srv /var/www /root}"
    mapfile -t CONFIG_SRC < <(existing "${CONFIG_SRC[@]}")
fi

NAME="$(date +%Y-%m-%d_%H-%M-%S)_Sauvegarde_${HOST}"
DIR="$ROOT/$NAME"
[ ! -e "$DIR" ] || die "$DIR already exists"

if [ "$DATA" -eq 1 ]; then
    [ -d "$DATA_SRC" ] || die "data folder $DATA_SRC does not exist"
    estimate incremental "$DIR/Donnees" "$DATA_SRC/"
fi
if [ "$CONFIG" -eq 1 ] && [ "${#CONFIG_SRC[@]}" -gt 0 ]; then
    # The archive is at most the size of what it holds.
    estimate full "$DIR/serveur" "${CONFIG_SRC[@]}"
fi
make_room "$ROOT"

mkdir -- "$DIR"
say "writing $DIR"

if [ "$DATA" -eq 1 ]; then
    engine snapshot --dest "$DIR/Donnees" --link-dest auto "$DATA_SRC/"
    if [ "$VERIFY" -eq 1 ]; then
        "$TB" verify "$DIR/Donnees" || die "verification of $DIR/Donnees failed"
    fi
fi

if [ "$CONFIG" -eq 1 ]; then
    DUMPS=$(mktemp -d /var/tmp/tetras-back-dumps.XXXXXX)
    trap 'rm -rf -- "$DUMPS"' EXIT
    mkdir "$DUMPS/databases"
    if [ "$MYSQL" -eq 1 ]; then
        if command -v mysqldump >/dev/null 2>&1; then
            say "dumping MySQL"
            mysqldump --all-databases --single-transaction --routines --events >"$DUMPS/databases/mysql.sql" \
                || die "mysqldump failed"
        else
            say "--mysql: mysqldump is not installed; no MySQL dump"
        fi
    fi
    if [ "$POSTGRES" -eq 1 ]; then
        if command -v pg_dumpall >/dev/null 2>&1; then
            say "dumping PostgreSQL"
            (cd / && runuser -u postgres -- pg_dumpall) >"$DUMPS/databases/postgresql.sql" \
                || die "pg_dumpall failed"
        else
            say "--postgres: pg_dumpall is not installed; no PostgreSQL dump"
        fi
    fi
    members=("${CONFIG_SRC[@]}")
    if [ -n "$(ls -A "$DUMPS/databases")" ]; then members+=(databases); fi
    if [ "${#members[@]}" -gt 0 ]; then
        # From the dumps' folder, so that they are stored as databases/...
        cd "$DUMPS" || die "cannot enter $DUMPS"
        engine archive --output "$DIR/serveur.tar.gz" "${members[@]}"
        cd "$ROOT" || die "cannot enter $ROOT"
    else
        say "no configuration path exists; no serveur.tar.gz"
    fi
fi

finish "$DIR"
