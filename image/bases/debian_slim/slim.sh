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
    # a module that needs a dropped one could never load: drop it too (modules.dep, written by
    # the kernel's postinst, lists each module's dependencies transitively, so one pass is enough)
    while IFS=: read -r module deps; do
        [ -e "$moddir$module" ] || continue
        for dep in $deps; do
            if [ ! -e "$moddir$dep" ]; then
                rm -f "$moddir$module"
                break
            fi
        done
    done < "${moddir}modules.dep"
    chroot "$root" depmod -a "$kver"
done
chroot "$root" update-initramfs -u -k all
