#!/bin/bash
# Build the guest disks for the e2e run. The NixOS disk comes from `nixboot image`, the way an
# admin makes one; only the hostile disk is made by hand, because no Nix tool writes one.
#
#   nixos.img         `nixboot image` (MBR, ext4 partition) of system 1 of guest.nix, built
#                     with nix-build: Debian's Xen-capable kernel as linux-<ver>/bzImage, a
#                     busybox initrd whose /init is guest-init. Its store, store DB and
#                     profile (system -> system-1-link) are what nixboot image made.
#   system-2.closure  `nix-store --export` of what system 2 adds to system 1's closure (its
#                     toplevel and its initrd): what rebuild-switch imports into the disk
#                     before scenario b, as `nixos-rebuild switch` brings a new system in.
#   switch.env        for rebuild-switch: the partition's byte offset and system 2's path.
#   nixos-split.img   system 1 again, /nix on its own partition (2), root on partition 1
#   hostile.img       hand-made with `mke2fs -d` (MBR + ext4), the same shape with fake store
#                     paths: generation 2 (current) has "x\u0000kernel /etc/shadow" in
#                     boot.json's kernelParams, generation 1 a newline injection.
#   expect.env        system 1's and 2's store paths, for the checks in run.sh.
#
# Usage: build-guest-disks.sh OUTDIR NIXBOOT     (env: KVER, GUEST_KERNEL)
# Needs: nix-bin (nix-build, nix-store; run as root, or as a user of a nix-daemon),
#        busybox-static, cpio, gzip, e2fsprogs, fdisk (sfdisk), kmod (modinfo), and what
#        `nixboot image` runs (nix, nix-env, sqlite3, debugfs, e2fsck, dumpe2fs).
# The store paths it builds (the kernel, initrds and systems, their .drv files) are needed
# only until the disk and the closure file are written: it deletes them again on exit
# (`nix-store --delete`, best effort: a path something else keeps alive stays).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
nixboot=$2
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
GUEST_KERNEL=${GUEST_KERNEL:-/boot/vmlinuz-$KVER}
work=$out/guest-work
rm -rf "$work"
mkdir -p "$work" "$out"

store_paths=()
cleanup() {
  local rc=$?
  rm -rf "$work" # the out-links: the GC roots of what nix-build made
  if [ "${#store_paths[@]}" -gt 0 ]; then
    nix-store --delete "${store_paths[@]}" >/dev/null 2>&1 ||
      echo "build-guest-disks: note: some of this run's store paths are still alive, kept" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Guest initrd N: static busybox, guest-init, the modules to mount xvda1 (ext4 over
# xen-blkfront), and a file naming the initrd so the guest can tell which one booted.
# Fixed times and a device-independent cpio: the same inputs give the same store path.
make_initrd() { # N dest
  local r=$work/initrd-root-$1 m p
  mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys" "$r/etc" "$r/lib/modules"
  cp /bin/busybox "$r/bin/busybox"
  for p in $("$r/bin/busybox" --list); do [ -e "$r/bin/$p" ] || ln -s busybox "$r/bin/$p"; done
  install -m 0755 "$here/guest-init" "$r/init"
  printf 'initrd-%s\n' "$1" > "$r/etc/nixboot-e2e-initrd"
  for m in crc16 mbcache jbd2 crc32c_generic ext4 xen-blkfront; do
    p=$(modinfo -k "$KVER" -n "$m")
    case $p in
      *.ko) cp "$p" "$r/lib/modules/$m.ko" ;;
      *) echo "build-guest-disks: module $m is $p, expected an uncompressed .ko" >&2; exit 1 ;;
    esac
  done
  find "$r" -exec touch -h -d @1 {} +
  (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible | gzip -n -6) > "$2"
}

make_initrd 1 "$work/initrd-1"
make_initrd 2 "$work/initrd-2"

# nixos.img: the two systems, built by Nix; the image of system 1 by nixboot image.
nix-build "$here/guest.nix" -A system1 -A system2 --out-link "$work/result" --option substituters '' \
  --argstr kver "$KVER" --argstr kernel "$GUEST_KERNEL" \
  --argstr initrd1 "$work/initrd-1" --argstr initrd2 "$work/initrd-2" >/dev/null
G1=$(readlink "$work/result")
G2=$(readlink "$work/result-2")
mapfile -t drvs < <(nix-store -q --deriver "$G1" "$G2")
mapfile -t store_paths < <(nix-store -qR "$G1" "$G2" "${drvs[@]}" | LC_ALL=C sort -u)
I1=$(dirname "$(readlink "$G1/initrd")")
I2=$(dirname "$(readlink "$G2/initrd")")
K=$(dirname "$(readlink "$G1/kernel")")
"$nixboot" image --system "$G1" --size 32M --output "$out/nixos.img" --force
offset=$(sfdisk -d "$out/nixos.img" | sed -n 's/.*start= *\([0-9]*\),.*/\1/p' | head -1)
offset=$((offset * 512))
[ "$offset" -gt 0 ] || { echo "build-guest-disks: no partition in nixos.img" >&2; exit 1; }

# nixos-split.img: the same system 1 with /nix on its own partition (impermanence, tmpfs
# roots): partition 1 a small root filesystem whose /nix is an empty mount point, partition 2
# the guest's /nix (its root holds store/ and var/nix/), made from nixos.img's /nix.
psize=$(sfdisk -d "$out/nixos.img" | sed -n 's/.*size= *\([0-9]*\),.*/\1/p' | head -1)
dd if="$out/nixos.img" of="$work/nixos-fs.img" bs=512 skip=$((offset / 512)) count="$psize" status=none
mkdir -p "$work/split-nix" "$work/split-root/nix" "$work/split-root/etc"
debugfs -R "rdump /nix $work/split-nix" "$work/nixos-fs.img" 2>/dev/null
printf '/dev/xvda2 /nix ext4 defaults 0 2\n' > "$work/split-root/etc/fstab"
rm -f "$work/nixos-fs.img" "$out/nixos-split.img"
nix_kib=$(du -sk "$work/split-nix/nix" | cut -f1)
nix_kib=$((nix_kib + nix_kib / 2 + 8192))
truncate -s $(((8192 + 1024 + nix_kib + 1024) * 1024)) "$out/nixos-split.img"
printf 'label: dos\nstart=2048, size=16384, type=83, bootable\nstart=18432, type=83\n' |
  sfdisk -q "$out/nixos-split.img"
mke2fs -q -t ext4 -b 4096 -L root -E offset=1048576 -d "$work/split-root" "$out/nixos-split.img" 8192k
mke2fs -q -t ext4 -b 4096 -L nix -E offset=$((18432 * 512)) -d "$work/split-nix/nix" "$out/nixos-split.img" "${nix_kib}k"
rm -rf "$work/split-nix" "$work/split-root"

# system 2: the store paths system 1's closure lacks, in nix-store --export's format (the one
# nix-copy-closure used), ready for nix-store --import into the disk's store.
mapfile -t new_paths < <(LC_ALL=C comm -13 <(nix-store -qR "$G1" | LC_ALL=C sort) \
  <(nix-store -qR "$G2" | LC_ALL=C sort))
[[ " ${new_paths[*]} " == *" $G2 "* ]] || { echo "build-guest-disks: system 2 is in system 1's closure" >&2; exit 1; }
nix-store --export "${new_paths[@]}" > "$out/system-2.closure"
printf 'E2E_OFFSET=%s\nE2E_SYSTEM=%s\n' "$offset" "$G2" > "$out/switch.env"
printf 'G1=%s\nG2=%s\nI1=%s\nI2=%s\nK=%s\n' "$G1" "$G2" "$I1" "$I2" "$K" > "$out/expect.env"

# hostile.img: injection attempts in kernelParams (XSA-198-style result-file injection), on a
# hand-made NixOS-shaped tree with fake but well-formed store paths (32 chars of Nix's base32).
hash() { printf '%s' "$1" | sha256sum | cut -c1-32 | tr e z; }
S=/nix/store
HK=$S/$(hash kernel)-linux-$KVER
HI1=$S/$(hash initrd-1)-initrd-linux-$KVER
HI2=$S/$(hash initrd-2)-initrd-linux-$KVER
HG1=$S/$(hash system-1)-nixos-system-e2e-24.11.1
HG2=$S/$(hash system-2)-nixos-system-e2e-24.11.2

# toplevel TREE DIR N INITRD PARAMS_JSON PARAMS_TEXT: a NixOS system toplevel.
toplevel() {
  local t=$1 g=$2 n=$3 initrd=$4
  mkdir -p "$t$g/specialisation"
  printf '#!/bin/sh\necho "NIXBOOT-E2E-STAGE2 generation=%s toplevel=%s"\n' "$n" "$g" > "$t$g/init"
  chmod 0555 "$t$g/init"
  ln -s "$HK/bzImage" "$t$g/kernel"
  ln -s "$initrd/initrd" "$t$g/initrd"
  printf '%s' "$6" > "$t$g/kernel-params"
  printf '24.11.%s' "$n" > "$t$g/nixos-version"
  printf 'x86_64-linux' > "$t$g/system"
  printf '{"org.nixos.bootspec.v1":{"init":"%s/init","initrd":"%s/initrd","kernel":"%s/bzImage","kernelParams":[%s],"label":"NixOS 24.11.%s (Linux %s)","system":"x86_64-linux","toplevel":"%s"},"org.nixos.specialisation.v1":{}}\n' \
    "$g" "$initrd" "$HK" "$5" "$n" "$KVER" "$g" > "$t$g/boot.json"
}

t=$work/hostile
mkdir -p "$t$HK" "$t$HI1" "$t$HI2" "$t/nix/var/nix/profiles"
cp "$GUEST_KERNEL" "$t$HK/bzImage"
cp "$work/initrd-1" "$t$HI1/initrd"
cp "$work/initrd-2" "$t$HI2/initrd"
toplevel "$t" "$HG1" 1 "$HI1" '"console=hvc0","x\nramdisk /etc/shadow"' "$(printf 'console=hvc0 x\nramdisk /etc/shadow')"
toplevel "$t" "$HG2" 2 "$HI2" '"console=hvc0","x\u0000kernel /etc/shadow"' ''
printf 'console=hvc0 x\0kernel /etc/shadow' > "$t$HG2/kernel-params"
ln -s "$HG1" "$t/nix/var/nix/profiles/system-1-link"
ln -s "$HG2" "$t/nix/var/nix/profiles/system-2-link"
ln -s system-2-link "$t/nix/var/nix/profiles/system"
# MBR, one Linux partition at 1 MiB holding ext4 made from the tree
kib=$(du -sk "$t" | cut -f1)
kib=$((kib + kib / 2 + 8192))
rm -f "$out/hostile.img"
truncate -s $(((kib + 1024) * 1024)) "$out/hostile.img"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$out/hostile.img"
mke2fs -q -t ext4 -b 4096 -L nixos -E offset=1048576 -d "$t" "$out/hostile.img" "${kib}k"

# A plain NixOS-shaped tree in DIR, one generation N of a hand-made system (Debian's kernel,
# initrd 1, parameters console=hvc0 loglevel=4 nixboot.gen=N); prints its toplevel.
plain_tree() { # dir n tag
  local t=$1 n=$2 g
  g=$S/$(hash "$3-system-$n")-nixos-system-$3-24.11.$n
  mkdir -p "$t$HK" "$t$HI1" "$t/nix/var/nix/profiles"
  cp "$GUEST_KERNEL" "$t$HK/bzImage"
  cp "$work/initrd-1" "$t$HI1/initrd"
  toplevel "$t" "$g" "$n" "$HI1" "\"console=hvc0\",\"loglevel=4\",\"nixboot.gen=$n\"" "console=hvc0 loglevel=4 nixboot.gen=$n"
  ln -s "$g" "$t/nix/var/nix/profiles/system-$n-link"
  ln -s "system-$n-link" "$t/nix/var/nix/profiles/system"
  echo "$g"
}

# btrfs.img: GPT, one btrfs partition laid out as the NixOS manual's install guides do:
# subvolumes @ (the root; its nix/ an empty mount point) and @nix (the guest's /nix), the
# store written with compress-force=zstd. Generation 7. Needs root, loop devices and btrfs.
GB=$(plain_tree "$work/btrfs-tree" 7 btrfs)
rm -f "$out/btrfs.img"
truncate -s 128M "$out/btrfs.img"
printf 'label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69DE477C4D\n' | sfdisk -q "$out/btrfs.img"
# (a loop device over the partition itself: partition device nodes need udev)
loop=$(losetup -f --show -o 1048576 "$out/btrfs.img")
mnt=$work/btrfs-mnt
mkdir -p "$mnt"
{
  mkfs.btrfs -q -f -L nixos "$loop" >/dev/null &&
    mount "$loop" "$mnt" &&
    btrfs -q subvolume create "$mnt/@" && btrfs -q subvolume create "$mnt/@nix" &&
    mkdir -p "$mnt/@/nix" "$mnt/@/etc" && umount "$mnt" &&
    mount -o subvol=@nix,compress-force=zstd "$loop" "$mnt" &&
    cp -a "$work/btrfs-tree/nix/." "$mnt/" && umount "$mnt"
} || { umount "$mnt" 2>/dev/null; losetup -d "$loop"; echo "build-guest-disks: cannot build btrfs.img" >&2; exit 1; }
losetup -d "$loop"
rm -rf "$work/btrfs-tree"

# lvm.img: MBR, partition 1 an LVM2 physical volume (type 8e) of volume group nbe2e, whose
# linear logical volume root holds the NixOS ext4 (generation 8). LVM runs on a loop device
# with a private configuration; the volume is created inactive and the filesystem written to
# its extents where LVM reports them, so no device-mapper or udev is involved.
GL=$(plain_tree "$work/lvm-tree" 8 lvm)
rm -f "$out/lvm.img"
truncate -s 64M "$out/lvm.img"
printf 'label: dos\nstart=2048, type=8e\n' | sfdisk -q "$out/lvm.img"
export LVM_SYSTEM_DIR=$work/lvm-conf LVM_SUPPRESS_FD_WARNINGS=1
mkdir -p "$LVM_SYSTEM_DIR"
# (global/activation = 0: LVM never touches device-mapper, which a CI sandbox may lack)
printf 'devices {\n filter = [ "a|^/dev/loop|", "r|.*|" ]\n obtain_device_list_from_udev = 0\n use_devicesfile = 0\n}\nglobal {\n activation = 0\n}\nbackup {\n backup = 0\n archive = 0\n}\n' > "$LVM_SYSTEM_DIR/lvm.conf"
loop=$(losetup -f --show -o 1048576 "$out/lvm.img")
pe_start= first_pe=
if pvcreate -q "$loop" >/dev/null && vgcreate -q -s 1m nbe2e "$loop" >/dev/null &&
  lvcreate -q -an -Zn -L 40m -n root nbe2e >/dev/null; then
  pe_start=$(pvs --noheadings --units b --nosuffix -o pe_start "$loop" | tr -d ' ')
  first_pe=$(lvs --noheadings -o seg_pe_ranges nbe2e/root | sed 's/.*:\([0-9]*\)-.*/\1/' | tr -d ' ')
fi
losetup -d "$loop"
unset LVM_SYSTEM_DIR LVM_SUPPRESS_FD_WARNINGS
case $pe_start$first_pe in
  '' | *[!0-9]*) echo "build-guest-disks: cannot build lvm.img (pe_start=$pe_start first_pe=$first_pe)" >&2; exit 1 ;;
esac
mke2fs -q -t ext4 -b 4096 -L nixos -E offset=$((1048576 + pe_start + first_pe * 1048576)) \
  -d "$work/lvm-tree" "$out/lvm.img" 40m
rm -rf "$work/lvm-tree"
printf 'GB=%s\nGL=%s\n' "$GB" "$GL" >> "$out/expect.env"
ls -l "$out"/*.img "$out/system-2.closure"
