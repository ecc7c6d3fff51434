#!/bin/bash
# Regenerates testdata/menus/bls-debian12/ with the real kernel-install of
# systemd 252 (Debian 12), as root: two kernels installed into a $BOOT that
# is its own mount point (a tmpfs in a private mount namespace, as a
# separate /boot partition would be), machine id and command line pinned.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mid=4a1c2d3e4f5061728394a5b6c7d8e9f0
head -c 4096 /dev/zero > "$work/vmlinuz"; head -c 512 /dev/zero > "$work/initrd.img"
mkdir -p "$work/conf" "$work/boot"
echo 'root=UUID=0f2c7e11-4b0a-4c2e-8f3b-6a1d9e5c2b02 ro console=hvc0' > "$work/conf/cmdline"
echo 'layout=bls' > "$work/conf/install.conf"
echo $mid > "$work/machine-id"
unshare -m bash -s "$work" $mid <<'INNER'
set -euo pipefail
work=$1 mid=$2
mount --make-rprivate /
mount -t tmpfs tmpfs "$work/boot"
mount --bind "$work/machine-id" /etc/machine-id
mkdir -p "$work/boot/$mid" "$work/boot/loader/entries"
for v in 6.1.0-27-amd64 6.1.0-28-amd64; do
  BOOT_ROOT="$work/boot" KERNEL_INSTALL_CONF_ROOT="$work/conf" kernel-install add "$v" "$work/vmlinuz" "$work/initrd.img"
done
rm -rf "$work/out"; mkdir -p "$work/out"; cp "$work/boot/loader/entries/"*.conf "$work/out/"
INNER
rm -rf "$here/bls-debian12"; mkdir -p "$here/bls-debian12"
cp "$work/out/"*.conf "$here/bls-debian12/"
