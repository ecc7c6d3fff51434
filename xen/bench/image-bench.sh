#!/bin/sh
# Benchmark `nixboot image` against the manual recipe on the same closure.
#
#   xen/bench/image-bench.sh [SYSTEM]        (as root: the recipe needs a loop device)
#
# SYSTEM is a NixOS toplevel (store path or ./result link). Without one,
# xen/bench/bench-system.nix is built: a NixOS-shaped system whose closure
# is ~2.3 GiB in 130 store paths and ~42,600 files, made from the host's
# /usr (no nixpkgs needed). Both runs make a $SIZE (default 10G) sparse
# image in $WORK (default a new directory under /var/tmp) from the same,
# already-built closure; each is timed end to end, including the final
# flush (umount / fsync). ROUNDS=N repeats them (alternating order);
# DROP_CACHES=1 evicts the closure's files from the page cache before
# each run (cold store reads; the rest of the machine's cache stays);
# AS_USER=<name> also times nixboot as that user through the nix-daemon
# (which must be running; the user needs access to its socket).
#
# Manual recipe (what the issue compares with):
#   truncate, partition (sfdisk; fdisk's script mode), losetup, mkfs.ext4,
#   mount, nix copy --to mnt <system> --no-check-sigs,
#   nix-env -p mnt/nix/var/nix/profiles/system --set <system>, umount.
# Needs: nix-bin, e2fsprogs, fdisk, util-linux; python3 to make the bench
# kernel when no SYSTEM is given, and for DROP_CACHES.
#
# Measured 2026-11-26, 2 shared cores (other work running), root fs ext4
# mounted with `discard`, bench system, 10G, AS_USER=nixboot-img:
#   load 1.6-2.7, 3 rounds: manual recipe 15.7 / 14.9 / 13.4 s;
#     nixboot image as root 12.4 / 13.4 / 12.6 s, as the user 13.9 / 13.2 / 11.0 s
#   load 1.8-1.9, DROP_CACHES=1, 2 rounds: manual 23.0 / 21.3 s;
#     root 15.6 / 14.3 s, user 13.4 / 16.2 s
#   load 4.5-5.0, 2 rounds: manual 17.3 / 21.3 s; root 18.0 / 21.3 s,
#     user 18.1 / 20.9 s
#   the same machine before (load 1.8-2.7): manual 14.5 / 14.8 s;
#     root 20.3 / 19.0 s, user 47.3 / 59.6 s
# nixboot's stages as root (RUST_LOG=debug), 3 alternating runs each at
# load 3.3-4.5, before -> after: link 2.6-5.4 s + register 0.6-0.7 s ->
# walk 0.2-0.3 s + link with registration alongside 3.5-6.0 s; mke2fs -d
# 15.5-18.3 -> 11.9-15.2 s (9.3-10.7 s at load 1-1.5); debugfs 0.9-1.3
# -> 1.2-1.5 s; tune2fs (new) 0.6-0.8 s; e2fsck -fyD 0.3-0.4 -> 0.7-0.8 s;
# staging removal 1.6-2.3 s -> 0 (in the background); total 22.9-26.9
# -> 18.4-24.6 s. As the user, the copy into /dev/shm takes 2.5-7 s (nix
# copy took 38 s, and removing its tree 25 s). With a closure holding one
# 18,000-entry directory (Debian's man1; 66,600 files), load 4: manual
# 21.8 / 18.8 s, nixboot 38.3 / 47.0 s: mke2fs -d inserts directory
# entries linearly.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
NIXBOOT=${NIXBOOT:-}
SIZE=${SIZE:-10G}
ROUNDS=${ROUNDS:-1}
AS_USER=${AS_USER:-}
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
  rm -f "$WORK/manual.img" "$WORK/nixboot.img" "$WORK/user/nixboot.img" "$WORK/user/nixboot"
  rm -rf "$WORK/user"
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
# Evict the closure's files from the page cache (the rest of the machine's
# cache stays).
drop() {
  [ "${DROP_CACHES:-0}" = 1 ] || return 0
  sync
  nix-store -qR "$system" | python3 -c '
import os, sys
for top in sys.stdin.read().split():
    for d, _, files in os.walk(top):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                fd = os.open(p, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)'
}

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

# The same as $AS_USER, through the nix-daemon (copy staging: the kernel's
# fs.protected_hardlinks forbids a user to link root's store files).
user_tool() {
  img=$WORK/user/nixboot.img
  rm -f "$img"
  t0=$(now)
  runuser -u "$AS_USER" -- env HOME="$WORK/user" NIX_REMOTE=daemon \
    "$WORK/user/nixboot" image --system "$system" --size "$SIZE" --output "$img" 2>/dev/null
  t1=$(now)
  user_s=$(awk "BEGIN { print $t1 - $t0 }")
  rm -f "$img"
}
if [ -n "$AS_USER" ]; then
  [ -S /nix/var/nix/daemon-socket/socket ] ||
    { echo "image-bench: AS_USER needs a running nix-daemon" >&2; exit 2; }
  mkdir -p "$WORK/user"
  cp "$NIXBOOT" "$WORK/user/nixboot"
  chmod 755 "$WORK" "$WORK/user/nixboot"
  chown "$AS_USER" "$WORK/user"
fi

i=1
while [ "$i" -le "$ROUNDS" ]; do
  if [ $((i % 2)) = 1 ]; then drop; manual; drop; tool; else drop; tool; drop; manual; fi
  user=
  if [ -n "$AS_USER" ]; then drop; user_tool; user=$(printf '   as %s %6.1f s' "$AS_USER" "$user_s"); fi
  printf 'round %d: manual recipe %6.1f s   nixboot image %6.1f s%s   (image: %s MiB allocated of %s; load %s)\n' \
    "$i" "$manual_s" "$nixboot_s" "$user" "$alloc" "$SIZE" "$(cut -d' ' -f1-3 /proc/loadavg)"
  i=$((i + 1))
done
