#!/bin/bash
# Regenerates testdata/menus/nixos-extlinux.conf by running nixpkgs's real
# extlinux-conf-builder.sh (nixos/modules/system/boot/loader/
# generic-extlinux-compatible/, NixOS/nixpkgs at commit 000b272e, given
# as the first argument; not committed here) with its @…@
# placeholders filled as the NixOS module fills them (copyKernels=1) and
# Debian's bash, coreutils and sed. It runs as root in a private mount
# namespace with a tmpfs over /nix holding a NixOS-shaped profile (system
# -> system-2-link, system-1-link; stand-in kernels), so the host's /nix
# is neither read nor changed. Times are pinned.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -e 's|@bash@|/usr|' -e 's|@path@|/usr|' -e 's|@copyKernels@|1|' -e 's|@storePath@|/nix/store|' \
  "${1:?usage: $0 path/to/extlinux-conf-builder.sh}" > "$work/builder.sh"
chmod +x "$work/builder.sh"
mkdir -p /nix
unshare -m bash -s "$work" <<'INNER'
set -euo pipefail
work=$1
mount --make-rprivate /
mount -t tmpfs tmpfs /nix
mk() { # mk GEN HASH KVER VERSION
  local s=/nix/store/$2-nixos-system-guest-$4 k=/nix/store/${2:0:8}kkkkkkkkkkkkkkkkkkkkkkkk-linux-$3 i=/nix/store/${2:0:8}iiiiiiiiiiiiiiiiiiiiiiii-initrd-linux-$3
  mkdir -p $s $k $i
  head -c 4096 /dev/zero > $k/bzImage; head -c 512 /dev/zero > $i/initrd
  ln -s $k/bzImage $s/kernel; ln -s $i/initrd $s/initrd
  printf '#!/bin/sh\n' > $s/init
  printf 'console=hvc0 loglevel=4' > $s/kernel-params
  printf '%s' "$4" > $s/nixos-version
  touch -h -d '2024-11-0'$1' 12:00 UTC' $s
  ln -s $s /nix/var/nix/profiles/system-$1-link
}
mkdir -p /nix/var/nix/profiles /nix/store
mk 1 0a67imq3pqd5kjync8vsp53m8p36p1cg 6.6.58 24.11.20241101.aaaaaaa
mk 2 5x2vc8pm0kh3jjq1r1j5mdn8p1qf4r9z 6.6.60 24.11.20241102.bbbbbbb
ln -s system-2-link /nix/var/nix/profiles/system
mkdir -p "$work/boot"
TZ=UTC "$work/builder.sh" -t 5 -c /nix/var/nix/profiles/system -d "$work/boot" -g 2 -r
cp "$work/boot/extlinux/extlinux.conf" "$work/out.conf"
INNER
cp "$work/out.conf" "$here/nixos-extlinux.conf"
