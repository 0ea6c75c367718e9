#!/bin/sh
# The demo's backup script: copies a source tree into a dated folder on the
# disk, the layout the shipped scripts use.
set -eu
[ "$1" = "--source" ] || { echo "usage: $0 --source DIR DEVICE" >&2; exit 2; }
src=$2
dest="$TETRAS_BACK_MOUNT/$(date +%Y-%m-%d_%H-%M-%S)_Sauvegarde_$TETRAS_BACK_HOSTNAME"
echo "copying $src to $dest"
mkdir -p "$dest"
cp -a "$src" "$dest/Donnees"
echo "$(find "$dest" -type f | wc -l) files copied"
