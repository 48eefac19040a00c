#!/bin/sh
# mmdebstrap customize hook ($1: the new root): drop the kernel modules listed in
# modules-to-drop.txt (beside this script), then the modules left without their dependencies,
# and rebuild the module index and the initramfs (which had been made with every module).
set -eu
root=$1
list=$(dirname "$0")/modules-to-drop.txt
for moddir in "$root"/usr/lib/modules/*/; do
    kver=$(basename "$moddir")
    grep -v -e '^#' -e '^$' "$list" | while read -r sub; do
        rm -rf "${moddir}kernel/$sub"
    done
    # a module needing a symbol only a dropped one exported could never load: drop it too
    round=0
    while [ "$round" -lt 5 ]; do
        broken=$(chroot "$root" depmod -a -e -F "/boot/System.map-$kver" "$kver" 2>&1 |
            sed -n 's/^depmod: WARNING: \(\/.*\.ko[^ ]*\) needs unknown symbol.*/\1/p' | sort -u)
        [ -n "$broken" ] || break
        for module in $broken; do
            rm -f "$root$module"
        done
        round=$((round + 1))
    done
done
chroot "$root" update-initramfs -u -k all
