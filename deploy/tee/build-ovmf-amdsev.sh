#!/usr/bin/env bash
# Build the SEV-SNP guest firmware that measures a direct-boot kernel, initrd and command
# line: edk2's AmdSevX64 platform (OvmfPkg/AmdSev/AmdSevX64.dsc), from Debian's edk2
# source package (docs/deploy-tee.md).
#
#   deploy/tee/build-ovmf-amdsev.sh OUT_DIR     ->  OUT_DIR/OVMF.fd, OUT_DIR/SOURCE
#
# Why a build: Debian's ovmf package ships only the generic OvmfPkgX64 images, whose SEV
# metadata has no SNP kernel-hashes page, so their launch measurement covers the
# firmware alone. AmdSevX64 carries that page: QEMU writes the SHA-256 of kernel, initrd
# and command line into it before launch and the firmware refuses to boot files that do
# not match, so the SNP measurement covers all three. It needs edk2 2023.02 or later:
# the source comes from Debian trixie (EDK2_SUITE), fetched with apt-get under a private
# apt configuration (signed indexes, hash-checked files; the system's sources are untouched).
#
# One change to the source: AmdSevX64 embeds a GRUB image as its fallback boot path, built
# by grub.sh from the host's grub-mkimage with the Fedora-only modules `linuxefi` and
# `sevsecret`, which Debian's GRUB lacks; they are dropped. Kettle boots only the
# measured kernel directly, never this GRUB.
#
# Needs: build-essential nasm acpica-tools uuid-dev python3 grub-common grub-efi-amd64-bin
# dosfstools mtools xz-utils (.ci/run installs them). Takes about 4 minutes on 2 cores.
set -euo pipefail
out=${1:?usage: build-ovmf-amdsev.sh OUT_DIR}
suite=${EDK2_SUITE:-trixie}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$out/work
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"

cat > "$work/apt/sources.list" <<SRC
deb-src http://deb.debian.org/debian $suite main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o Debug::NoLocking=1)
apt-get "${apt_opts[@]}" update -q >/dev/null
version=${EDK2_VERSION:-$(apt-cache "${apt_opts[@]}" showsrc edk2 | sed -n 's/^Version: //p' | sort -V | tail -1)}
# Original tarball and Debian's changes, each checked against the signed Sources index.
(cd "$work/src" && apt-get "${apt_opts[@]}" source -q --download-only --tar-only "edk2=$version" >/dev/null \
                && apt-get "${apt_opts[@]}" source -q --download-only --diff-only "edk2=$version" >/dev/null)
cd "$work/src"
tar xf edk2_*.orig.tar.xz
tree=$(find . -maxdepth 1 -type d -name 'edk2-*' | head -1)
cd "$tree"
tar xf ../edk2_*.debian.tar.xz
while read -r patch; do
  case $patch in ''|'#'*) continue ;; esac
  patch -p1 -s < "debian/patches/$patch"
done < debian/patches/series
sed -i -e '/^ *sevsecret$/d' -e '/^ *linuxefi$/d' OvmfPkg/AmdSev/Grub/grub.sh

make -C BaseTools -j"$(nproc)" >"$work/basetools.log" 2>&1 || { tail -30 "$work/basetools.log"; exit 1; }
export PYTHON3_ENABLE=TRUE WORKSPACE=$PWD
set +u
# shellcheck disable=SC1091
set --  # edksetup.sh parses the positional parameters of whoever sources it
. ./edksetup.sh >/dev/null
set -u
build -a X64 -t GCC5 -b RELEASE -n "$(nproc)" -p OvmfPkg/AmdSev/AmdSevX64.dsc >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }
cp Build/AmdSev/RELEASE_GCC5/FV/OVMF.fd "$out/OVMF.fd"
echo "debian source edk2 $version ($suite), OvmfPkg/AmdSev/AmdSevX64.dsc RELEASE GCC5" > "$out/SOURCE"
cd "$out"
rm -rf "$work"
echo "$out/OVMF.fd sha256 $(sha256sum OVMF.fd | cut -d' ' -f1) from edk2 $version"
