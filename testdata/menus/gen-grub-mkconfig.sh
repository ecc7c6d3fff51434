#!/bin/bash
# Regenerates the grub-mkconfig outputs of testdata/menus/ with Debian 12's
# real grub-mkconfig (grub-common/grub2-common 2.06-13+deb12u2), as root:
#   apt-get install grub-common grub2-common; testdata/menus/gen-grub-mkconfig.sh
# The disk is laid out as Debian's installer lays it out with a separate
# /boot: MBR, partition 1 ext4 /boot, partition 2 ext4 /. Kernels and
# initrds are stand-ins (grub-mkconfig only looks at their names). The
# generation runs in a private mount namespace, chrooted into partition 2
# with the host's /usr and /etc bound in read-only, so nothing of the host
# changes. UUIDs are pinned.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
boot_uuid=5b8e2a5c-6d1f-4c1e-9a55-0d3c2f1e7a01
root_uuid=0f2c7e11-4b0a-4c2e-8f3b-6a1d9e5c2b02

gen() { # gen OUTPUT EXTRA-DEFAULT-GRUB-LINES
  local out=$1 extra=$2 img=$work/disk.img dev
  rm -f "$img"; truncate -s 64M "$img"
  printf 'label: dos\nstart=2048, size=40960, type=83, bootable\nstart=43008, type=83\n' | sfdisk -q "$img"
  dev=$(losetup -f --show -P "$img")
  partx -a "$dev" 2>/dev/null || true
  for p in 1 2; do
    [ -b "${dev}p$p" ] || { mm=$(cat "/sys/block/${dev#/dev/}/${dev#/dev/}p$p/dev"); mknod "${dev}p$p" b "${mm%:*}" "${mm#*:}"; }
  done
  mkfs.ext4 -q -U $boot_uuid -L boot "${dev}p1"
  mkfs.ext4 -q -U $root_uuid "${dev}p2"
  printf '%b' "$extra" > "$work/extra"
  unshare -m bash -s "$dev" "$work" "$boot_uuid" "$root_uuid" <<'INNER'
set -euo pipefail
dev=$1 work=$2 boot_uuid=$3 root_uuid=$4 r=$2/root
mount --make-rprivate /
mkdir -p "$r"; mount "${dev}p2" "$r"
mkdir -p "$r"/{boot,usr,etc,dev,proc,sys,tmp,var/lib,run}
mount "${dev}p1" "$r/boot"
for d in usr etc; do mount --bind "/$d" "$r/$d"; mount -o remount,bind,ro "$r/$d"; done
for l in bin sbin lib lib64; do [ -L "/$l" ] && ln -s "$(readlink "/$l")" "$r/$l"; done
mount -t proc proc "$r/proc"; mount --rbind /sys "$r/sys"
mount -t tmpfs tmpfs "$r/dev"
for n in null zero urandom random; do touch "$r/dev/$n"; mount --bind "/dev/$n" "$r/dev/$n"; done
for p in "" p1 p2; do touch "$r$dev$p"; mount --bind "$dev$p" "$r$dev$p"; done
mkdir -p "$r/dev/disk/by-uuid"
ln -s "../..${dev#/dev}p1" "$r/dev/disk/by-uuid/$boot_uuid"
ln -s "../..${dev#/dev}p2" "$r/dev/disk/by-uuid/$root_uuid"
# /etc/default/grub as Debian ships it, without this host's grub.d (Xen dom0) overrides.
mkdir -p "$work/default"; cp /usr/share/grub/default/grub "$work/default/grub"
echo 'GRUB_DISTRIBUTOR=Debian' >> "$work/default/grub"; cat "$work/extra" >> "$work/default/grub"
mount --bind "$work/default" "$r/etc/default"
mkdir -p "$r/boot/grub"
for v in 6.1.0-28-amd64 6.1.0-27-amd64; do
  head -c 4096 /dev/zero > "$r/boot/vmlinuz-$v"; head -c 1024 /dev/zero > "$r/boot/initrd.img-$v"
  echo 'CONFIG_X=y' > "$r/boot/config-$v"; : > "$r/boot/System.map-$v"
done
touch -d 2024-01-02 "$r/boot/vmlinuz-6.1.0-27-amd64"
chroot "$r" env GRUB_DISABLE_OS_PROBER=true grub-mkconfig -o /tmp/grub.cfg
cp "$r/tmp/grub.cfg" "$work/out.cfg"
INNER
  partx -d "$dev" 2>/dev/null || true; losetup -d "$dev"
  cp "$work/out.cfg" "$here/$out"
}

gen debian12-grub.cfg ''
gen debian12-saved-grub.cfg 'GRUB_DEFAULT=saved\nGRUB_SAVEDEFAULT=true\n'
# The grubenv grub-set-default/grub-reboot would leave next to the "saved" config.
rm -f "$here/debian12-saved-grubenv"
grub-editenv "$here/debian12-saved-grubenv" create
grub-editenv "$here/debian12-saved-grubenv" set 'saved_entry=gnulinux-advanced-0f2c7e11-4b0a-4c2e-8f3b-6a1d9e5c2b02>gnulinux-6.1.0-27-amd64-advanced-0f2c7e11-4b0a-4c2e-8f3b-6a1d9e5c2b02'
