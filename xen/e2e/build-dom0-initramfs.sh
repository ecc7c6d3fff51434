#!/bin/bash
# Build the e2e dom0 initramfs from this Debian 12 host's own packages: static busybox,
# bash + the few tools Xen's block hotplug script needs, the Xen 4.17 toolstack and its
# libraries, python3 (for pygrub, scenario f), Nix's nix-store and nix-env (for
# rebuild-switch, scenario b), 12 kernel modules, /etc/xen, nixboot as /usr/bin/nixboot, the
# guest disks and system 2's closure under /e2e/, the domain configs, the scenario list and
# rebuild-switch under /etc/xen/e2e/, and dom0-init as /init.
#
# Usage: build-dom0-initramfs.sh OUTDIR NIXBOOT
#        (needs OUTDIR/{nixos.img,hostile.img,system-2.closure,switch.env}: build-guest-disks.sh)
# Output: OUTDIR/dom0.cpio.gz
# Needs: xen-utils-4.17, xenstore-utils, busybox-static, linux-image-amd64, cpio, file,
#        python3, e2fsprogs, util-linux, kmod, nix-bin.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=$1
nixboot=$2
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
XENLIB=/usr/lib/xen-4.17
R=$out/dom0root
rm -rf "$R"
mkdir -p "$R"
cd "$R"
mkdir -p etc/xen/e2e proc sys dev run tmp root var/lib/xen var/log/xen usr/bin usr/sbin \
  usr/lib64 usr/lib/x86_64-linux-gnu e2e nix
# Debian 12 is merged-/usr: mirror it so the paths ldd prints resolve
ln -s usr/bin bin
ln -s usr/sbin sbin
ln -s usr/lib lib
ln -s usr/lib64 lib64
ln -s ../run var/run
ln -s ../run/lock var/lock
chmod 1777 tmp # nixboot --runas mounts its empty root over /tmp

# copy FILE...: keep the path; follow symlinks; pull in the shared libraries of ELF files
copy() {
  local f lib
  for f in "$@"; do
    [ -e "$f" ] || { echo "build-dom0-initramfs: missing $f" >&2; exit 1; }
    mkdir -p "$R$(dirname "$f")"
    rm -f "$R$f" # it may be a busybox applet link: never copy through it
    cp -a "$f" "$R$f"
    if [ -L "$f" ]; then copy "$(readlink -f "$f")"; fi
    if file -L "$f" | grep -q 'ELF.*dynamic'; then
      for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true); do
        [ -e "$R$lib" ] || copy "$lib"
      done
    fi
  done
}

cp /bin/busybox usr/bin/busybox
for a in $(usr/bin/busybox --list); do [ -e "usr/bin/$a" ] || ln -s busybox "usr/bin/$a"; done
# Xen's hotplug scripts are bash and want coreutils stat, util-linux losetup/flock
copy /bin/bash /usr/bin/stat /usr/bin/flock /sbin/losetup /usr/bin/readlink /usr/bin/mktemp
# glibc dlopen()s libgcc_s for pthread_cancel; xl aborts at exit without it
copy /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
for f in "$XENLIB"/bin/*; do copy "$f"; done
cp -a "$XENLIB/lib" "$R$XENLIB/"
find "$XENLIB/lib" -name '*.so*' | while read -r so; do copy "$so"; done
copy /usr/bin/xenstore*
for t in xl xenstored xenconsoled xen-init-dom0; do ln -sf "$XENLIB/bin/$t" "usr/sbin/$t"; done
cp -a /etc/xen/. etc/xen/
# python3 for pygrub, without the parts it never imports
copy /usr/bin/python3.11
ln -sf python3.11 usr/bin/python3
mkdir -p usr/lib/python3.11
(cd /usr/lib/python3.11 && tar --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
  --exclude=ensurepip --exclude=turtledemo --exclude=lib2to3 --exclude=pydoc_data \
  --exclude=config-3.11-x86_64-linux-gnu --exclude=site-packages --exclude=dist-packages \
  --exclude=__pycache__ -cf - .) | tar -C usr/lib/python3.11 -xf -
for so in /usr/lib/python3.11/lib-dynload/*.so; do copy "$so"; done
# Nix, for rebuild-switch: it works on the guest's store with the real nix-store and nix-env
# (both links to /usr/bin/nix, whose libraries are in /usr/lib/nix through its RUNPATH)
copy /usr/bin/nix-store /usr/bin/nix-env
# Nix dlopen()s libnss_dns (a stub in glibc 2.36) and warns without it; dom0 builds nothing, so
# it needs no nixbld group (Nix warns about a missing one) and no binary cache
copy /lib/x86_64-linux-gnu/libnss_dns.so.2
mkdir -p etc/nix
printf '%s\n' 'build-users-group =' 'substituters =' > etc/nix/nix.conf
# dom0 kernel modules: the first 7 insmod'ed by dom0-init at boot, the ext4 stack by
# rebuild-switch when it mounts the guest's filesystem
for m in xen-privcmd xenfs xen-evtchn xen-gntdev xen-gntalloc xen-blkback loop \
  crc16 mbcache jbd2 crc32c_generic ext4; do
  p=$(modinfo -k "$KVER" -n "$m")
  mkdir -p "$R$(dirname "$p")"
  cp "$p" "$R$p"
done
# users: xen-qemuuser-range-base makes libxl's restricted mode pass --runas=65536+domid (65536: outside every subuid range, see xen/nix/dom0.nix)
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
  'xen-qemuuser-range-base:x:65536:65536:Xen restricted bootloaders:/nonexistent:/bin/false' > etc/passwd
printf '%s\n' 'root:x:0:' 'xen-qemuuser-range-base:x:65536:' > etc/group
# a canary: the hostile disk tries to make libxl take /etc/shadow as its kernel (and unlink it)
printf '%s\n' 'root:*:19000:0:99999:7:::' 'nixboot-e2e-canary:*:19000:0:99999:7:::' > etc/shadow
chmod 0640 etc/shadow
echo dom0 > etc/hostname
echo "$XENLIB/lib/x86_64-linux-gnu" > etc/ld.so.conf
/sbin/ldconfig -r "$R"

install -m 0755 "$nixboot" usr/bin/nixboot
copy_deps() { local lib; for lib in $(ldd "$1" | grep -o '/[^ ]*' || true); do [ -e "$R$lib" ] || copy "$lib"; done; }
copy_deps "$nixboot"
install -m 0755 "$here/dom0-init" init
install -m 0644 "$here"/domains/*.cfg "$here/scenarios" etc/xen/e2e/
install -m 0755 "$here/rebuild-switch" etc/xen/e2e/
mv "$out"/*.img "$out/system-2.closure" e2e/
cp "$out/switch.env" e2e/
echo "dom0 root: $(du -sh "$R" | cut -f1)"
find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -1 > "$out/dom0.cpio.gz"
rm -rf "$R"
ls -l "$out/dom0.cpio.gz"
