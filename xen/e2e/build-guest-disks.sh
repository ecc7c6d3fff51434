#!/bin/bash
# Build the guest disks for the e2e run, from NixOS-shaped trees with `mke2fs -d`
# (until the image builder lands):
#
#   nixos.img    MBR + ext4 partition. /nix/store holds Debian's Xen-capable kernel,
#                two busybox initrds and two system toplevels. The profile has one
#                generation (system -> system-1-link); toplevel 2 is already built and
#                /etc/nixboot-e2e/rebuild-switch asks the booted guest to switch to it
#                (see guest-init), as `nixos-rebuild switch` would.
#   hostile.img  Same shape, but generation 2 (current) has "x\u0000kernel /etc/shadow" in
#                boot.json's kernelParams and generation 1 has a newline injection.
#   expect.env   The store paths, for the checks in run.sh.
#
# Usage: build-guest-disks.sh OUTDIR     (env: KVER, GUEST_KERNEL)
# Needs: busybox-static, cpio, gzip, e2fsprogs (mke2fs), fdisk (sfdisk), kmod (modinfo).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
GUEST_KERNEL=${GUEST_KERNEL:-/boot/vmlinuz-$KVER}
work=$out/guest-work
rm -rf "$work"
mkdir -p "$work" "$out"

# Fake but well-formed store path names: 32 chars of Nix's base32 alphabet.
hash() { printf '%s' "$1" | sha256sum | cut -c1-32 | tr e z; }
S=/nix/store
K=$S/$(hash kernel)-linux-$KVER
I1=$S/$(hash initrd-1)-initrd-linux-$KVER
I2=$S/$(hash initrd-2)-initrd-linux-$KVER
G1=$S/$(hash system-1)-nixos-system-e2e-24.11.1
G2=$S/$(hash system-2)-nixos-system-e2e-24.11.2

# Guest initrd N: static busybox, guest-init, the modules to mount xvda1 (ext4 over
# xen-blkfront), and a file naming the initrd so the guest can tell which one booted.
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
  (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) > "$2"
}

# toplevel TREE DIR N INITRD PARAMS_JSON PARAMS_TEXT: a NixOS system toplevel.
toplevel() {
  local t=$1 g=$2 n=$3 initrd=$4
  mkdir -p "$t$g/specialisation"
  printf '#!/bin/sh\necho "NIXBOOT-E2E-STAGE2 generation=%s toplevel=%s"\n' "$n" "$g" > "$t$g/init"
  chmod 0555 "$t$g/init"
  ln -s "$K/bzImage" "$t$g/kernel"
  ln -s "$initrd/initrd" "$t$g/initrd"
  printf '%s' "$6" > "$t$g/kernel-params"
  printf '24.11.%s' "$n" > "$t$g/nixos-version"
  printf 'x86_64-linux' > "$t$g/system"
  printf '{"org.nixos.bootspec.v1":{"init":"%s/init","initrd":"%s/initrd","kernel":"%s/bzImage","kernelParams":[%s],"label":"NixOS 24.11.%s (Linux %s)","system":"x86_64-linux","toplevel":"%s"},"org.nixos.specialisation.v1":{}}\n' \
    "$g" "$initrd" "$K" "$5" "$n" "$KVER" "$g" > "$t$g/boot.json"
}

# tree ROOT: the parts both disks share.
tree() {
  local t=$1
  mkdir -p "$t$K" "$t$I1" "$t$I2" "$t/nix/var/nix/profiles" "$t/etc/nixboot-e2e"
  cp "$GUEST_KERNEL" "$t$K/bzImage"
  cp "$work/initrd-1" "$t$I1/initrd"
  cp "$work/initrd-2" "$t$I2/initrd"
  echo e2e > "$t/etc/hostname"
}

# image TREE IMG: MBR, one Linux partition at 1 MiB holding ext4 made from TREE.
image() {
  local kib
  kib=$(du -sk "$1" | cut -f1)
  kib=$((kib + kib / 2 + 8192))
  rm -f "$2"
  truncate -s $(((kib + 1024) * 1024)) "$2"
  printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$2"
  mke2fs -q -t ext4 -b 4096 -L nixos -E offset=1048576 -d "$1" "$2" "${kib}k"
}

make_initrd 1 "$work/initrd-1"
make_initrd 2 "$work/initrd-2"

# nixos.img: generation 1 current, toplevel 2 built but not yet switched to.
t=$work/nixos
tree "$t"
toplevel "$t" "$G1" 1 "$I1" '"console=hvc0","loglevel=4","nixboot.gen=1"' 'console=hvc0 loglevel=4 nixboot.gen=1'
toplevel "$t" "$G2" 2 "$I2" '"console=hvc0","loglevel=4","nixboot.gen=2"' 'console=hvc0 loglevel=4 nixboot.gen=2'
ln -s "$G1" "$t/nix/var/nix/profiles/system-1-link"
ln -s system-1-link "$t/nix/var/nix/profiles/system"
printf '%s\n' "$G2" > "$t/etc/nixboot-e2e/rebuild-switch"
image "$t" "$out/nixos.img"

# hostile.img: injection attempts in kernelParams (XSA-198-style result-file injection).
t=$work/hostile
tree "$t"
toplevel "$t" "$G1" 1 "$I1" '"console=hvc0","x\nramdisk /etc/shadow"' "$(printf 'console=hvc0 x\nramdisk /etc/shadow')"
toplevel "$t" "$G2" 2 "$I2" '"console=hvc0","x\u0000kernel /etc/shadow"' ''
printf 'console=hvc0 x\0kernel /etc/shadow' > "$t$G2/kernel-params"
ln -s "$G1" "$t/nix/var/nix/profiles/system-1-link"
ln -s "$G2" "$t/nix/var/nix/profiles/system-2-link"
ln -s system-2-link "$t/nix/var/nix/profiles/system"
image "$t" "$out/hostile.img"

printf 'G1=%s\nG2=%s\nI1=%s\nI2=%s\nK=%s\n' "$G1" "$G2" "$I1" "$I2" "$K" > "$out/expect.env"
rm -rf "$work"
ls -l "$out/nixos.img" "$out/hostile.img"
