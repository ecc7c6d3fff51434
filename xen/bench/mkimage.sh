#!/bin/sh
# Build one benchmark disk: an MBR disk with one Linux partition at 1 MiB
# holding an ext4 filesystem (4 KiB blocks, as on any NixOS root over
# 512 MiB and in `nixboot image`; mke2fs would pick 1 KiB for the small
# 256 MiB disk, which would make block size a second variable between the
# small and the big disk; journal, metadata_csum) made by `mke2fs -d` from
# a NixOS-shaped tree, then
# `e2fsck -fyD` to index the directories, as the image builder does.
#
# The tree has one generation whose kernel and initrd are KERNEL and
# INITRD copied into /nix/store paths, a boot.json, the legacy toplevel
# links, the system profile, STORE extra /nix/store entries (empty files
# with store-path names), and a /boot/grub/grub.cfg with one plain
# menuentry that pygrub can parse (NixOS's own grub.cfg uses
# `($drive1)/nix/store/...` paths, which make pygrub skip the partition).
#
# NOINDEX=1 skips e2fsck -D: directories stay linear, as mke2fs -d leaves
# them (how NixOS's make-disk-image.nix images come out).
#
# Usage: mkimage.sh OUT DISK_SIZE STORE KERNEL INITRD
#   DISK_SIZE: truncate(1) size, e.g. 256M or 8G (the file stays sparse)
#   STORE:     number of extra /nix/store entries (e.g. 20000)
# Prints the guest paths of the kernel and initrd on stdout.
set -eu
out=$1 size=$2 store=$3 kernel=$4 initrd=$5
work=$(mktemp -d "${TMPDIR:-/var/tmp}/nixboot-bench-tree.XXXXXX")
trap 'rm -rf "$work"' EXIT
t=$work/tree
kver=$(basename "$kernel" | sed 's/^vmlinuz-//')
S=nix/store
K=$S/6l0z5kd0lpx1sw9y3h1d8cnk0mxxcx1q-linux-$kver
I=$S/0m9pdrw0r0wsnqb7rl7s7m0dmpc8jqy4-initrd-linux-$kver
G=$S/ah9h6qsx3w3jbz6fmqgj3fgwsl7rl8dd-nixos-system-bench-24.11
mkdir -p "$t/$K" "$t/$I" "$t/$G" "$t/nix/var/nix/profiles" "$t/boot/grub" "$t/etc"
cp "$kernel" "$t/$K/bzImage"
cp "$initrd" "$t/$I/initrd"
printf '#!/bin/sh\n' > "$t/$G/init"
ln -s "/$K/bzImage" "$t/$G/kernel"
ln -s "/$I/initrd" "$t/$G/initrd"
printf '24.11' > "$t/$G/nixos-version"
printf 'console=hvc0 loglevel=4' > "$t/$G/kernel-params"
printf '{"org.nixos.bootspec.v1":{"init":"/%s/init","initrd":"/%s/initrd","kernel":"/%s/bzImage","kernelParams":["console=hvc0","loglevel=4"],"label":"NixOS 24.11 (Linux %s)","system":"x86_64-linux","toplevel":"/%s"},"org.nixos.specialisation.v1":{}}\n' \
  "$G" "$I" "$K" "$kver" "$G" > "$t/$G/boot.json"
ln -s "/$G" "$t/nix/var/nix/profiles/system-1-link"
ln -s system-1-link "$t/nix/var/nix/profiles/system"
cat > "$t/boot/grub/grub.cfg" <<EOF
set default=0
set timeout=5
menuentry "NixOS - Default" {
  linux /$K/bzImage init=/$G/init console=hvc0 loglevel=4
  initrd /$I/initrd
}
EOF
echo bench > "$t/etc/hostname"
if [ "$store" -gt 0 ]; then
  # Store-path-like names: 32 nix-base32 characters, a dash, a name.
  python3 - "$t/$S" "$store" <<'EOF'
import hashlib, os, sys
d, n = sys.argv[1], int(sys.argv[2])
alpha = "0123456789abcdfghijklmnpqrsvwxyz"
for i in range(n):
    h = hashlib.sha256(str(i).encode()).digest()
    name = "".join(alpha[b % 32] for b in h[:32]) + "-pkg-%d-1.0" % i
    open(os.path.join(d, name), "w").close()
EOF
fi
rm -f "$out"
truncate -s "$size" "$out"
printf 'label: dos\nlabel-id: 0x62656e63\nstart=2048, type=83, bootable\n' | sfdisk -q "$out"
bytes=$(stat -c %s "$out")
fs_kib=$(( (bytes - 1048576) / 1024 ))
inodes=$((store + 4096))
mke2fs -q -F -t ext4 -b 4096 -N "$inodes" -E offset=1048576,lazy_itable_init=1 -d "$t" "$out" "${fs_kib}k"
if [ "${NOINDEX:-0}" = 0 ]; then
  e2fsck -fyD "$out?offset=1048576" > /dev/null 2>&1 || [ $? -le 1 ]
fi
printf '/%s/bzImage\n/%s/initrd\n' "$K" "$I"
