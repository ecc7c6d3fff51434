#!/bin/sh
# Benchmark `nixboot image` against the manual recipe on the same closure.
#
#   xen/bench/image-bench.sh [SYSTEM]        (as root: the recipe needs a loop device)
#
# SYSTEM is a NixOS toplevel (store path or ./result link). Without one,
# xen/bench/bench-system.nix is built: a NixOS-shaped system whose closure
# is ~2.3 GiB in 131 store paths and ~65,000 files, made from the host's
# /usr (no nixpkgs needed). Both runs make a $SIZE (default 10G) sparse
# image in $WORK (default a new directory under /var/tmp) from the same,
# already-built closure; each is timed end to end, including the final
# flush (umount / fsync). Set DROP_CACHES=1 to drop the page cache before
# each run (cold store reads); ROUNDS=N repeats both (alternating order).
#
# Manual recipe (what the issue compares with):
#   truncate, partition (sfdisk; fdisk's script mode), losetup, mkfs.ext4,
#   mount, nix copy --to mnt <system> --no-check-sigs,
#   nix-env -p mnt/nix/var/nix/profiles/system --set <system>, umount.
# Needs: nix-bin, e2fsprogs, fdisk, util-linux; python3 only to make the
# bench kernel when no SYSTEM is given.
#
# Measured 2026-11-26 (2 shared cores, load average 6-8 from other work,
# root fs ext4 mounted with `discard`), bench system, 10G, 3 rounds:
#   manual recipe 25.6 / 28.2 / 28.1 s;  nixboot image 51.3 / 44.0 / 47.0 s
# nixboot's stages as root (hard-link staging), one run: link 4.0 s,
# register 0.9 s, mke2fs -d 33.4 s, debugfs 2.4 s, e2fsck -fyD 0.8 s,
# staging removal 3.6 s. As an unprivileged user (nix copy staging):
# copy 38.1 s, mke2fs 33.7 s, removal 25.2 s, 100.7 s in all.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
NIXBOOT=${NIXBOOT:-}
SIZE=${SIZE:-10G}
ROUNDS=${ROUNDS:-1}
[ "$(id -u)" = 0 ] || { echo "image-bench: run as root (the manual recipe uses losetup and mount)" >&2; exit 2; }
if [ -z "$NIXBOOT" ]; then
  echo "image-bench: building nixboot (release)" >&2
  (cd "$repo" && cargo build --release --quiet)
  NIXBOOT="${CARGO_TARGET_DIR:-$repo/target}/release/nixboot"
fi
WORK=${WORK:-$(mktemp -d /var/tmp/image-bench.XXXXXX)}
mkdir -p "$WORK"
loop=
cleanup() {
  if mountpoint -q "$WORK/mnt" 2>/dev/null; then umount "$WORK/mnt" || true; fi
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
  rm -f "$WORK/manual.img" "$WORK/nixboot.img"
  rmdir "$WORK/mnt" 2>/dev/null || true
  rmdir "$WORK" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

if [ $# -ge 1 ]; then
  system=$(readlink -f "$1")
else
  python3 "$repo/testdata/demo/pvkernel.py" "$WORK/bzImage" 65536
  echo "image-bench: building the bench system (first time: ~2 min)" >&2
  system=$(nix-build "$here/bench-system.nix" --arg kernelFile "$WORK/bzImage" --no-out-link)
  rm -f "$WORK/bzImage"
fi
[ -e "$system/init" ] || { echo "image-bench: $system is not a NixOS system" >&2; exit 2; }
paths=$(nix-store -qR "$system" | wc -l)
size=$(nix --extra-experimental-features nix-command path-info -S "$system" | awk '{print $2}')
files=$(nix-store -qR "$system" | xargs -I{} find {} | wc -l)
echo "closure: $system"
echo "         $paths store paths, $files files, $((size / 1048576)) MiB (NAR)"

now() { date +%s.%N; }
drop() { if [ "${DROP_CACHES:-0}" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi; }

manual() {
  img=$WORK/manual.img; mnt=$WORK/mnt
  rm -f "$img"; mkdir -p "$mnt"
  t0=$(now)
  truncate -s "$SIZE" "$img"
  printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$img"
  loop=$(losetup --find --show --offset 1048576 "$img")
  mkfs.ext4 -q -L NIXOS "$loop"
  mount "$loop" "$mnt"
  nix --extra-experimental-features nix-command copy --to "$mnt" "$system" --no-check-sigs 2>/dev/null
  nix-env -p "$mnt/nix/var/nix/profiles/system" --set "$system"
  umount "$mnt"
  losetup -d "$loop"; loop=
  t1=$(now)
  manual_s=$(awk "BEGIN { print $t1 - $t0 }")
  rm -f "$img"
}

tool() {
  img=$WORK/nixboot.img
  rm -f "$img"
  t0=$(now)
  "$NIXBOOT" image --system "$system" --size "$SIZE" --output "$img" 2>/dev/null
  t1=$(now)
  nixboot_s=$(awk "BEGIN { print $t1 - $t0 }")
  alloc=$(du -m "$img" | cut -f1)
  rm -f "$img"
}

i=1
while [ "$i" -le "$ROUNDS" ]; do
  if [ $((i % 2)) = 1 ]; then drop; manual; drop; tool; else drop; tool; drop; manual; fi
  printf 'round %d: manual recipe %6.1f s   nixboot image %6.1f s   (image: %s MiB allocated of %s)\n' \
    "$i" "$manual_s" "$nixboot_s" "$alloc" "$SIZE"
  i=$((i + 1))
done
