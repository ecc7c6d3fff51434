#!/bin/sh
# Build testdata/demo.img: the bundled demo disk of the README quick start.
#
# An MBR disk (8 MiB) with one Linux partition at sector 2048 holding an
# ext4 filesystem made by `mke2fs -d` from a NixOS-shaped tree: two system
# generations (2 = current, with boot.json and a "debug" specialisation;
# 1 = a pre-23.05 generation without boot.json), the profile links as
# nix-env makes them, a tiny Xen PV kernel (an ELF64 image carrying
# Linux's Xen ELF notes; it is not a real kernel) and a small initrd.
# Everything is pinned (UUID, hash seed, time), so the same e2fsprogs
# gives the same bytes. Needs: sh, python3, mke2fs (e2fsprogs), sfdisk.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../demo.img}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t=$work/tree
S=nix/store
K=$S/6l0z5kd0lpx1sw9y3h1d8cnk0mxxcx1q-linux-6.6.63
I=$S/0m9pdrw0r0wsnqb7rl7s7m0dmpc8jqy4-initrd-linux-6.6.63
G1=$S/9q3bm1h2mdsf9aisqgd0f0bsl6gy3kdk-nixos-system-demo-23.05.1234.abcdef0
G2=$S/ah9h6qsx3w3jbz6fmqgj3fgwsl7rl8dd-nixos-system-demo-24.11.5678.0123456
G2D=$S/1bq8wkqvy9xbj05ak6w7sxmjpjw1pms7-nixos-system-demo-24.11.5678.0123456
mkdir -p "$t/$K" "$t/$I" "$t/$G1" "$t/$G2/specialisation" "$t/$G2D" "$t/nix/var/nix/profiles" "$t/etc"
python3 "$here/pvkernel.py" "$t/$K/bzImage" 65536
printf 'demo initrd\n' > "$t/$I/initrd"
for g in "$G1" "$G2" "$G2D"; do
  printf '#!/bin/sh\necho stage 2\n' > "$t/$g/init"
  ln -s "/$K/bzImage" "$t/$g/kernel"
  ln -s "/$I/initrd" "$t/$g/initrd"
done
printf '23.05.1234.abcdef0' > "$t/$G1/nixos-version"
printf 'console=hvc0 loglevel=4' > "$t/$G1/kernel-params"
printf '24.11.5678.0123456' > "$t/$G2/nixos-version"
printf 'console=hvc0 loglevel=4' > "$t/$G2/kernel-params"
printf '24.11.5678.0123456' > "$t/$G2D/nixos-version"
ln -s "/$G2D" "$t/$G2/specialisation/debug"
spec() { # toplevel params
  printf '{"init":"/%s/init","initrd":"/%s/initrd","kernel":"/%s/bzImage","kernelParams":[%s],"label":"NixOS Vicuna 24.11.5678.0123456 (Linux 6.6.63)","system":"x86_64-linux","toplevel":"/%s"}' "$1" "$I" "$K" "$2" "$1"
}
printf '{"org.nixos.bootspec.v1":%s,"org.nixos.specialisation.v1":{"debug":{"org.nixos.bootspec.v1":%s,"org.nixos.specialisation.v1":{}}}}\n' \
  "$(spec "$G2" '"console=hvc0","loglevel=4"')" "$(spec "$G2D" '"console=hvc0","loglevel=7","systemd.log_level=debug"')" > "$t/$G2/boot.json"
ln -s "/$G1" "$t/nix/var/nix/profiles/system-1-link"
ln -s "/$G2" "$t/nix/var/nix/profiles/system-2-link"
ln -s system-2-link "$t/nix/var/nix/profiles/system"
echo demo > "$t/etc/hostname"
# Generation dates are the links' own mtimes.
touch -h -d 2023-06-01T12:00:00Z "$t/nix/var/nix/profiles/system-1-link"
touch -h -d 2024-12-01T12:00:00Z "$t/nix/var/nix/profiles/system-2-link" "$t/nix/var/nix/profiles/system"
rm -f "$out"
truncate -s 8M "$out"
printf 'label: dos\nlabel-id: 0x6e697862\nstart=2048, type=83, bootable\n' | sfdisk -q "$out"
E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -t ext4 -b 1024 -L NIXOS -U 6e697862-6f6f-7400-0000-64656d6f0001 \
  -E offset=1048576,hash_seed=6e697862-6f6f-7400-0000-64656d6f0002 -d "$t" "$out" 7168k
echo "wrote $out"
