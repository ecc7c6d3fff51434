#!/bin/sh
# Benchmark: boot a realistic NixOS generation (a real ~8 MB kernel and
# ~30 MB initrd: by default the host's newest /boot/vmlinuz-* and
# /boot/initrd.img-*) with nixboot, with pygrub (same files, through a
# plain grub.cfg on the same image) and with a plain copy of the same bytes
# into a fresh directory; print median wall time, peak RSS and the ratios.
#
# Targets (issue 2): nixboot >= 3x faster than pygrub, <= 1.25x the copy,
# peak RSS <= 16 MiB whatever the kernel/initrd size; lookups do not slow
# down with /nix/store size (20k entries, htree-indexed by e2fsck -fyD)
# or disk size (8 GiB sparse). The "nixboot -n" rows time the lookup alone
# (resolve the generation, open kernel and initrd, copy nothing).
#
# Every command gets libxl's argv: --output=FILE --output-format=simple0
# --output-directory=DIR [...] DISK (pygrub also -q). Warm runs follow one
# untimed run of the same command; every run starts after
# sync; cold runs also drop the page cache (needs root). Peak RSS is
# wait4's ru_maxrss over the process tree (nixboot's parent and parse child
# are separate processes; the -vv split is printed at the end).
#
# Usage: xen/bench/bench.sh        (as root; run it under `nice -n 19` on a
#                                   shared machine)
# Environment:
#   REPS=15 COLD_REPS=5            repetitions (COLD_REPS=0: no cold runs)
#   KERNEL=/boot/vmlinuz-X INITRD=/boot/initrd.img-X
#   PYGRUB=/usr/lib/xen-4.17/bin/pygrub
#   WORK=/var/tmp/nixboot-bench    images and output dirs (same filesystem
#                                  for nixboot, pygrub and the copy)
#   SMALL_DISK=256M BIG_DISK=8G BIG_STORE=20000
#   VARIANTS="small-store small-disk big-store big-disk"   subset to run;
#                                  also big-store-noindex: the 20k store left
#                                  linear (no e2fsck -D), as mke2fs -d and
#                                  NixOS's make-disk-image.nix leave it
#   NIXBOOT=path                   skip `cargo build --release`
# Needs: cargo, python3, sfdisk, mke2fs/e2fsck, pygrub (xen-utils-4.17).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
REPS=${REPS:-15}
COLD_REPS=${COLD_REPS:-5}
KERNEL=${KERNEL:-$(ls /boot/vmlinuz-* | sort -V | tail -n 1)}
INITRD=${INITRD:-/boot/initrd.img-$(basename "$KERNEL" | sed 's/^vmlinuz-//')}
PYGRUB=${PYGRUB:-/usr/lib/xen-4.17/bin/pygrub}
WORK=${WORK:-/var/tmp/nixboot-bench}
SMALL_DISK=${SMALL_DISK:-256M}
BIG_DISK=${BIG_DISK:-8G}
BIG_STORE=${BIG_STORE:-20000}
VARIANTS=${VARIANTS:-small-store small-disk big-store big-disk}

for f in "$KERNEL" "$INITRD" "$PYGRUB"; do
  [ -r "$f" ] || { echo "bench.sh: missing $f" >&2; exit 1; }
done
if [ "$(id -u)" != 0 ] && [ "$COLD_REPS" != 0 ]; then
  echo "bench.sh: not root: no cold runs (they drop the page cache)" >&2
  COLD_REPS=0
fi

if [ -z "${NIXBOOT:-}" ]; then
  (cd "$root" && cargo build --release --locked --quiet)
  NIXBOOT=${CARGO_TARGET_DIR:-$root/target}/release/nixboot
fi

mkdir -p "$WORK"
# image NAME SIZE STORE [NOINDEX]: build $WORK/NAME.img unless it is up to date.
image() {
  img=$WORK/$1.img stamp=$WORK/$1.stamp noindex=${4:-0}
  want="$2 $3 $noindex $KERNEL $(stat -c %s:%Y "$KERNEL") $INITRD $(stat -c %s:%Y "$INITRD") $(cksum < "$here/mkimage.sh")"
  if [ ! -f "$img" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "building $img ($2 disk, $3 extra store entries)" >&2
    NOINDEX=$noindex "$here/mkimage.sh" "$img" "$2" "$3" "$KERNEL" "$INITRD" > /dev/null
    echo "$want" > "$stamp"
  fi
  echo "$1=$img"
}
set --
for v in $VARIANTS; do
  case $v in
    small-store) set -- "$@" "$(image small-disk.small-store "$SMALL_DISK" 0)" ;;
    big-store) set -- "$@" "$(image small-disk.store-$BIG_STORE "$SMALL_DISK" "$BIG_STORE")" ;;
    small-disk) ;; # the same image as small-store
    big-disk) set -- "$@" "$(image disk-$BIG_DISK.small-store "$BIG_DISK" 0)" ;;
    big-store-noindex) set -- "$@" "$(image small-disk.store-$BIG_STORE-noindex "$SMALL_DISK" "$BIG_STORE" 1)" ;;
    *) echo "bench.sh: unknown variant $v" >&2; exit 1 ;;
  esac
done

echo "kernel $KERNEL ($(stat -c %s "$KERNEL") bytes), initrd $INITRD ($(stat -c %s "$INITRD") bytes)"
echo "nixboot $NIXBOOT; pygrub $PYGRUB; $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
exec python3 "$here/run.py" --nixboot "$NIXBOOT" --pygrub "$PYGRUB" --kernel "$KERNEL" --initrd "$INITRD" \
  --work "$WORK" --reps "$REPS" --cold-reps "$COLD_REPS" "$@"
