#!/usr/bin/env bash
# The dm-verity layout of Kettle's confidential VM (docs/deploy-tee.md): Kettle's tree in a
# read-only squashfs root whose dm-verity root hash goes on the measured kernel command
# line, booted by a small initrd that only opens and checks that root.
#
#   deploy/tee/build-verity-root.sh OUT_DIR KERNEL_DEB [HOME_DIR]
#
# OUT_DIR/root.squashfs   Kettle's tree (the full initrd's, build-initrd.sh): attach as a disk
# OUT_DIR/root.verity     its dm-verity hash tree: attach as a second disk
# OUT_DIR/boot-initrd.img the small initrd (VARIANT=verity-boot): busybox, veritysetup, modules
# OUT_DIR/cmdline         the kernel command line to boot and measure, with the root hash
#
# Why: the root can be large and need not travel through the VMM as an initrd; the SNP
# launch measurement (or TDX RTMR2) still covers all of it, because it covers the command
# line that pins the root hash, and the kernel checks every block it reads against it.
# Needs squashfs-tools and cryptsetup-bin. Reproducible like the initrd: fixed times,
# owner root, a fixed verity salt and UUID (both derived from the image).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-verity-root.sh OUT_DIR KERNEL_DEB [HOME_DIR]}
kernel_deb=${2:?usage: build-verity-root.sh OUT_DIR KERNEL_DEB [HOME_DIR]}
mkdir -p "$out"
out=$(cd "$out" && pwd)
epoch=${SOURCE_DATE_EPOCH:-0}

"$here/build-initrd.sh" "$out/full" "$kernel_deb" "${3:-$here/home}"
rm -f "$out/root.squashfs"
mksquashfs "$out/full/root" "$out/root.squashfs" -quiet -no-progress -noappend -all-root \
  -mkfs-time "$epoch" -all-time "$epoch" -comp xz
salt=$(sha256sum "$out/root.squashfs" | cut -d' ' -f1)
uuid=$(echo "$salt" | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
veritysetup format "$out/root.squashfs" "$out/root.verity" --salt "$salt" --uuid "$uuid" > "$out/verity.txt"
roothash=$(sed -n 's/^Root hash:[[:space:]]*//p' "$out/verity.txt")

VARIANT=verity-boot "$here/build-initrd.sh" "$out/boot" "$kernel_deb"
mv "$out/boot/kettle-initrd.img" "$out/boot-initrd.img"
cat "$out/full/manifest.txt" > "$out/manifest.txt"
# /dev/vda and /dev/vdb: the squashfs and the hash tree attached as the first two virtio disks.
echo "console=ttyS0 kettle.services=all kettle.verity_data=/dev/vda kettle.verity_tree=/dev/vdb kettle.verity_hash=$roothash" \
  > "$out/cmdline"
rm -rf "$out/full" "$out/boot"
echo "root hash $roothash"
echo "kernel command line: $(cat "$out/cmdline")"
