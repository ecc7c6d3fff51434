#!/bin/sh
# Regenerate the fuzz seeds in testdata/fuzz/seeds/<target>/.
#
# Disk seeds are tiny ext2/ext4 images made by `mke2fs -d` from a
# NixOS-shaped tree (a system profile with two generations: 2 has a
# boot.json with a specialisation, 1 is a legacy generation with only
# kernel/initrd/kernel-params; a slow symlink; a /nix/store big enough for
# e2fsck -D to index it), bare or inside an MBR or GPT made by sfdisk.
# Everything is pinned (UUIDs, hash seed, fake time, file mtimes), so the
# same e2fsprogs/util-linux give the same bytes. The images are mostly
# zeros and compress to a few KiB each in git.
#
# Needs: sh, mke2fs/e2fsck (e2fsprogs 1.47.0), sfdisk (util-linux 2.38.1),
# printf, dd, truncate, touch.
#
# Usage: testdata/fuzz/make-seeds.sh [OUTDIR]   (default: next to this script)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/seeds}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export E2FSPROGS_FAKE_TIME=1700000000 E2FSCK_TIME=1700000000
UUID=6e697862-6f6f-7400-0000-66757a7a0001
SEED=6e697862-6f6f-7400-0000-66757a7a0002

S=nix/store
K=$S/6l0z5kd0lpx1sw9y3h1d8cnk0mxxcx1q-linux-6.6.63
I=$S/0m9pdrw0r0wsnqb7rl7s7m0dmpc8jqy4-initrd-linux-6.6.63
G1=$S/9q3bm1h2mdsf9aisqgd0f0bsl6gy3kdk-nixos-system-fz-23.05
G2=$S/ah9h6qsx3w3jbz6fmqgj3fgwsl7rl8dd-nixos-system-fz-24.11
G2D=$S/1bq8wkqvy9xbj05ak6w7sxmjpjw1pms7-nixos-system-fz-24.11

# tree DIR NSTORE: the NixOS-shaped tree, with NSTORE filler store entries.
tree() {
  t=$1
  mkdir -p "$t/$K" "$t/$I" "$t/$G1" "$t/$G2/specialisation" "$t/$G2D" "$t/nix/var/nix/profiles"
  # The smallest kernel nixboot's PV check accepts: an ELF64 header, a
  # PT_NOTE program header and Xen's GUEST_OS and ENTRY notes (176 bytes).
  python3 -c '
import struct, sys
note = lambda t, d: struct.pack("<III", 4, len(d), t) + b"Xen\0" + d
notes = note(6, b"linux\0\0\0") + note(1, struct.pack("<Q", 0xffffffff81000000))
eh = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0xffffffff81000000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
ph = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(notes), len(notes), 4)
sys.stdout.buffer.write(eh + ph + notes)' > "$t/$K/bzImage"
  printf 'tiny initrd\n' > "$t/$I/initrd"
  for g in "$G1" "$G2" "$G2D"; do
    printf '#!/bin/sh\n' > "$t/$g/init"
    ln -s "/$K/bzImage" "$t/$g/kernel"
    ln -s "/$I/initrd" "$t/$g/initrd"
  done
  printf '23.05' > "$t/$G1/nixos-version"
  printf 'console=hvc0 loglevel=4' > "$t/$G1/kernel-params"
  printf '24.11' > "$t/$G2/nixos-version"
  ln -s "/$G2D" "$t/$G2/specialisation/debug"
  spec() { # toplevel params
    printf '{"init":"/%s/init","initrd":"/%s/initrd","kernel":"/%s/bzImage","kernelParams":[%s],"label":"NixOS 24.11 (Linux 6.6.63)","system":"x86_64-linux","toplevel":"/%s"}' \
      "$1" "$I" "$K" "$2" "$1"
  }
  printf '{"org.nixos.bootspec.v1":%s,"org.nixos.specialisation.v1":{"debug":{"org.nixos.bootspec.v1":%s,"org.nixos.specialisation.v1":{}}}}\n' \
    "$(spec "$G2" '"console=hvc0","loglevel=4"')" "$(spec "$G2D" '"console=hvc0","loglevel=7"')" > "$t/$G2/boot.json"
  ln -s "/$G1" "$t/nix/var/nix/profiles/system-1-link"
  ln -s "/$G2" "$t/nix/var/nix/profiles/system-2-link"
  ln -s system-2-link "$t/nix/var/nix/profiles/system"
  i=0
  while [ "$i" -lt "$2" ]; do
    : > "$t/$S/$(printf '%032d' "$i")-filler"
    i=$((i + 1))
  done
}

# fs IMAGE SIZE TREE MKE2FS-ARGS...: a filesystem at the start of IMAGE.
fs() {
  img=$1 size=$2 t=$3
  shift 3
  # Pin atime/mtime right before mke2fs reads the tree (reading it
  # updates atimes).
  find "$t" -exec touch -h -d 2024-12-01T12:00:00Z {} +
  touch -h -d 2023-06-01T12:00:00Z "$t/nix/var/nix/profiles/system-1-link"
  mke2fs -q -F -b 1024 -U "$UUID" -E "hash_seed=$SEED" "$@" -d "$t" "$img" "$size"
  # mke2fs -d copies each file's ctime, which touch cannot pin: pin it here.
  (cd "$t" && find . -mindepth 1 | sed 's|^\.\(.*\)|sif "\1" ctime @1700000000|') > "$work/ctime.cmd"
  debugfs -w -f "$work/ctime.cmd" "$img" > /dev/null 2>&1
  e2fsck -fyD "$img" > /dev/null 2>&1 || [ $? -le 1 ]
}

mkdir -p "$out/disk" "$out/ext4" "$out/partitions" "$out/bootspec" "$out/cmdline" "$out/render"
tree "$work/t" 0
tree "$work/big" 40

# disk: a bare ext4 (metadata_csum, extents, 64bit).
fs "$out/disk/bare-ext4.img" 128K "$work/t" -t ext4 -O ^has_journal,^resize_inode -N 48
# ext4 (both readers compared): the bare filesystems of the three disk seeds.
cp "$out/disk/bare-ext4.img" "$out/ext4/ext4-csum.img"
# disk: ext2 inside an MBR partition at LBA 8, with an indexed /nix/store.
d=$out/disk/mbr-ext2.img
fs "$work/p.img" 128K "$work/big" -t ext2 -O ^resize_inode -N 96 -I 128
cp "$work/p.img" "$out/ext4/ext2-indexed.img"
rm -f "$d" && truncate -s 132K "$d"
printf 'label: dos\nlabel-id: 0x66757a7a\nstart=8, size=256, type=83, bootable\n' | sfdisk -q "$d"
dd if="$work/p.img" of="$d" bs=512 seek=8 conv=notrunc status=none
# disk: ext4 without metadata_csum inside GPT partition 2 (partition 1 is
# not a filesystem), with the backup GPT at the end.
d=$out/disk/gpt-ext4.img
fs "$work/p.img" 128K "$work/t" -t ext4 -O ^has_journal,^resize_inode,^metadata_csum,uninit_bg -N 48
cp "$work/p.img" "$out/ext4/ext4-nocsum.img"
rm -f "$d" && truncate -s 168K "$d"
printf 'label: gpt\nlabel-id: 6E697862-6F6F-7400-0000-66757A7A0003\nfirst-lba: 34\nstart=34, size=6, type=L, uuid=6E697862-6F6F-7400-0000-66757A7A0004\nstart=40, size=256, type=L, uuid=6E697862-6F6F-7400-0000-66757A7A0005\n' |
  sfdisk -q "$d"
dd if="$work/p.img" of="$d" bs=512 seek=40 conv=notrunc status=none

# partitions: tables only (no filesystems), 40 KiB disks.
d=$out/partitions/mbr-extended.img
rm -f "$d" && truncate -s 40K "$d"
printf 'label: dos\nlabel-id: 0x66757a7b\nstart=4, size=8, type=83\nstart=16, size=60, type=5\nstart=20, size=8, type=83\nstart=32, size=8, type=82\nstart=44, size=8, type=83\n' |
  sfdisk -q "$d"
d=$out/partitions/gpt.img
rm -f "$d" && truncate -s 40K "$d"
printf 'label: gpt\nlabel-id: 6E697862-6F6F-7400-0000-66757A7A0006\nfirst-lba: 34\nstart=34, size=8, type=L, uuid=6E697862-6F6F-7400-0000-66757A7A0007\nstart=42, size=4, type=L, uuid=6E697862-6F6F-7400-0000-66757A7A0008\n' |
  sfdisk -q "$d"

# bootspec: the generation's boot.json, and a minimal document.
cp "$work/t/$G2/boot.json" "$out/bootspec/generation.json"
printf '{"org.nixos.bootspec.v1":{"init":"/i","kernel":"/k","kernelParams":[],"label":"l","system":"s","toplevel":"/t"}}' \
  > "$out/bootspec/minimal.json"

# cmdline: FLAGS byte, then init, params and --args separated by 0xFF
# (see nixboot::fuzzing::cmdline).
printf '\003/nix/store/x-nixos-system/init\377console=hvc0\377loglevel=4\377root=/dev/xvda1 quiet' > "$out/cmdline/full"
printf '\001/i\377a\033[2J' > "$out/cmdline/escape"

# render: FLAGS byte, then kernel, ramdisk and args separated by 0xFF
# (see nixboot::fuzzing::render).
printf '\001/var/lib/xen/bootloader.7.d/boot_kernel.abcdefgh\377/var/lib/xen/bootloader.7.d/boot_ramdisk.ijklmnop\377init=/nix/store/x/init console=hvc0' \
  > "$out/render/full"
printf "\000/k\377\377a='b' \\\\" > "$out/render/quotes"
echo "seeds written to $out"
