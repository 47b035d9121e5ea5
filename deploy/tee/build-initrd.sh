#!/usr/bin/env bash
# Build Kettle's initrd for a direct-boot SEV-SNP or TDX confidential VM, from Debian
# and PyPI packages only (docs/deploy-tee.md).
#
#   deploy/tee/build-initrd.sh OUT_DIR KERNEL_DEB [HOME_DIR]
#   VARIANT=verity-boot deploy/tee/build-initrd.sh OUT_DIR KERNEL_DEB
#
# OUT_DIR/kettle-initrd.img   the initrd (newc cpio, gzip): busybox, Debian's Python 3.11
#                             runtime, Kettle and its locked dependencies under
#                             /opt/kettle/site, the kernel's virtio/TEE/dm-verity modules,
#                             /init (deploy/tee/init) and the measured part of Kettle's home
#                             at /etc/kettle/home: HOME_DIR (default deploy/tee/home) with
#                             kettle.toml, build/build.toml (the auditors' keys) and
#                             trust/as_root_ca.pem. Enclave info is not in the image: it names
#                             this image's measurement, so the init takes it at boot from a
#                             disk (kettle.trust=) and Kettle checks the auditors' signatures.
# OUT_DIR/manifest.txt        every Debian package and Python distribution in it, with versions
# OUT_DIR/root/               the tree the initrd was packed from (build-verity-root.sh reuses it)
#
# VARIANT=verity-boot builds the small initrd of the dm-verity layout instead
# (build-verity-root.sh): busybox, veritysetup and the kernel modules, no Python and no
# Kettle; its init opens the root named on the measured command line and switches to it.
#
# KERNEL_DEB is the linux-image .deb whose vmlinuz the VM boots (its modules must match).
# The archive is reproducible: sorted entries, owner root, every mtime SOURCE_DATE_EPOCH
# (default: 0), gzip without a name or time, so an auditor who rebuilds it from the same
# package versions (manifest.txt) gets the same bytes and the same measurement.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:?usage: build-initrd.sh OUT_DIR KERNEL_DEB [HOME_DIR]}
kernel_deb=$(realpath "${2:?usage: build-initrd.sh OUT_DIR KERNEL_DEB [HOME_DIR]}")
home=${3:-$here/home}
[ -f "$home/kettle.toml" ] || { echo "$home/kettle.toml is missing" >&2; exit 2; }
python=${PYTHON:-python3}
epoch=${SOURCE_DATE_EPOCH:-0}
variant=${VARIANT:-full}
case $variant in full|verity-boot) ;; *) echo "VARIANT must be full or verity-boot" >&2; exit 2 ;; esac

# Debian packages of the runtime: Python 3.11 and the C++ runtime manylinux wheels expect.
# Package tooling (dpkg, perl, tar...) is pulled in by the dependency walk but is not needed.
roots="busybox-static python3.11-minimal libpython3.11-stdlib libstdc++6 ca-certificates"
[ "$variant" = full ] || roots="busybox-static cryptsetup-bin"
skip=" dpkg install-info perl perl-base perl-modules-5.36 libperl5.36 libgdbm-compat4 mailcap mime-support tar debconf openssl "
# Kernel modules the init loads (with their dependencies): virtio devices, the TEE guest
# drivers and configfs-tsm where the kernel has them, dm-verity and squashfs for a verity root.
modules="virtio_pci virtio_net virtio_blk virtio_console sev-guest tdx-guest tsm configfs dm-verity squashfs"

rm -rf "$out/root" "$out/debs" "$out/wheels"
mkdir -p "$out/root" "$out/debs" "$out/wheels"
out=$(cd "$out" && pwd)
root=$out/root

pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
         --no-enhances $roots | grep -v '^ ' | grep -v '^<' | sort -u)
wanted=()
for p in $pkgs; do [[ $skip == *" $p "* ]] || wanted+=("$p"); done
(cd "$out/debs" && apt-get download -q "${wanted[@]}" >/dev/null 2>&1 || apt-get download -q "${wanted[@]}")
: > "$out/manifest.txt"
for deb in "$out"/debs/*.deb; do
  dpkg-deb -x "$deb" "$root"
  dpkg-deb -f "$deb" Package Version | paste -sd' ' | sed 's/^Package: \(.*\) Version: /debian \1 /' >> "$out/manifest.txt"
done
# Documentation, man pages and locales are not code the services run.
rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,bug}

# Kettle and its dependencies, as wheels for this Python and platform, no bytecode.
if [ "$variant" = full ]; then
"$python" -m pip wheel -q --no-deps -w "$out/wheels" "$repo"
"$python" -m pip install -q --no-compile --no-warn-script-location --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --target "$root/opt/kettle/site" "$out"/wheels/kettle-*.whl
rm -rf "$root/opt/kettle/site/bin"
for d in "$root"/opt/kettle/site/*.dist-info; do
  name=$(sed -n 's/^Name: //p' "$d/METADATA"); version=$(sed -n 's/^Version: //p' "$d/METADATA")
  echo "pypi $name $version" >> "$out/manifest.txt"
done
# pip's RECORD and INSTALLER files name the build host's paths and tools: not part of the image.
find "$root/opt/kettle/site" -name RECORD -path '*.dist-info/*' -delete
find "$root/opt/kettle/site" -name direct_url.json -delete
fi

# The kernel's modules (uncompressed, with a matching modules.dep).
mkdir -p "$out/kernel"
dpkg-deb -x "$kernel_deb" "$out/kernel"
moddir=$(ls -d "$out"/kernel/lib/modules/* | head -1)
kver=${moddir##*/}
depmod -b "$out/kernel" "$kver"  # a .deb ships no modules.dep: the package's postinst makes it
echo "debian $(dpkg-deb -f "$kernel_deb" Package) $(dpkg-deb -f "$kernel_deb" Version)" >> "$out/manifest.txt"
declare -A seen=()
add_module() {  # $1: path relative to the modules dir, as in modules.dep
  local rel=$1 dep
  [[ -n ${seen[$rel]:-} ]] && return
  seen[$rel]=1
  mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
  case $rel in
    *.xz) xz -dc "$moddir/$rel" > "$root/lib/modules/$kver/${rel%.xz}" ;;
    *.zst) zstd -qdc "$moddir/$rel" > "$root/lib/modules/$kver/${rel%.zst}" ;;
    *) cp "$moddir/$rel" "$root/lib/modules/$kver/$rel" ;;
  esac
  for dep in $(grep -E "^$rel:" "$moddir/modules.dep" | cut -d: -f2); do add_module "$dep"; done
}
mkdir -p "$root/etc/kettle"
: > "$root/etc/kettle/modules"
for m in $modules; do
  rel=$(grep -E "(^|/)${m//-/[-_]}\.ko(\.xz|\.zst)?:" "$moddir/modules.dep" | head -1 | cut -d: -f1 || true)
  [ -n "$rel" ] || continue  # built in, or absent from this kernel (e.g. tdx-guest before 6.2)
  add_module "$rel"
  echo "$m" >> "$root/etc/kettle/modules"
done
mkdir -p "$root/lib/modules/$kver"
for rel in "${!seen[@]}"; do
  grep -E "^$rel:" "$moddir/modules.dep" | sed -E 's/\.ko\.(xz|zst)/.ko/g'
done > "$root/lib/modules/$kver/modules.dep"
LC_ALL=C sort -o "$root/lib/modules/$kver/modules.dep" "$root/lib/modules/$kver/modules.dep"

# The init, its DHCP hook and the baked-in configuration.
install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/udhcpc.sh" "$root/etc/kettle/udhcpc.sh"
if [ "$variant" = full ]; then
  mkdir -p "$root/etc/kettle/home"
  cp -r "$home/." "$root/etc/kettle/home/"
  chmod -R u=rwX,go=rX "$root/etc/kettle/home"
else
  touch "$root/etc/kettle/verity-boot"  # tells the init it must switch to the verity root
fi
mkdir -p "$root"/{bin,proc,sys,dev,run,tmp,mnt,var/lib/kettle}
# busybox's applets as links made here, not at boot: the verity root is read-only.
for applet in $("$root/bin/busybox" --list); do
  [ -e "$root/bin/$applet" ] || [ -e "$root/usr/bin/$applet" ] || [ -e "$root/sbin/$applet" ] \
    || [ -e "$root/usr/sbin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
ln -sf /run/resolv.conf "$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
cp "$out/manifest.txt" "$root/etc/kettle/image-manifest.txt"

find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) \
  | gzip -n -6 > "$out/kettle-initrd.img"
rm -rf "$out/debs" "$out/wheels" "$out/kernel"
echo "$out/kettle-initrd.img ($(du -h "$out/kettle-initrd.img" | cut -f1)), sha256 $(sha256sum "$out/kettle-initrd.img" | cut -d' ' -f1)"
