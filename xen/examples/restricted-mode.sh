#!/bin/sh
# dom0 setup for libxl's restricted boot loader mode (XSA-443) with nixboot,
# on Debian 12 (Xen 4.17) or any Xen 4.17.3 and later. Run once as root.
#
# In restricted mode libxl runs the boot loader as
#   nixboot --runas=<uid> --quiet --output=... <disk>
# with uid = uid(xen-qemuuser-range-base) + domid, and kills it after
# LIBXL_BOOTLOADER_TIMEOUT seconds (default 120). nixboot stays root only to
# open the disk and libxl's output files; the child that parses the guest
# disk runs as <uid> in new mount, IPC, network and UTS namespaces, chrooted
# into an empty read-only tmpfs, under a seccomp allowlist. There is no
# menu. libxl refuses a uid that belongs to another user, so keep the range
# 65536 ... 65536 + <highest domid> (at most 98287) free.
#
# Why 65536: the range must not overlap any user's subordinate uid range
# either, or that user's rootless containers could act as a domain's boot
# loader. useradd (Debian, SUB_UID_MIN 100000) and NixOS
# (update-users-groups.pl) hand every new user 65536 subuids at
# 100000 + k * 65536, so any base from 100000 up (e.g. the 131072 that
# Xen's documentation suggests) is, or will be, some user's. Below 100000
# the range fits above the normal users (1000-59999), systemd's dynamic
# users (61184-65519) and nobody (65534).
set -eu

# 1. The base of the uid range (the uid is what matters; the name is fixed).
if ! getent passwd xen-qemuuser-range-base >/dev/null; then
  adduser --system --no-create-home --uid 65536 --group xen-qemuuser-range-base
fi

# 2. Turn restricted mode on.
#    Xen 4.17.3+ (Debian 12): only through xl's environment. For guests
#    that xendomains starts at boot:
grep -q '^LIBXL_BOOTLOADER_RESTRICT=' /etc/default/xendomains 2>/dev/null ||
  echo 'LIBXL_BOOTLOADER_RESTRICT=1' >> /etc/default/xendomains
#    and by hand:
#      LIBXL_BOOTLOADER_RESTRICT=1 xl create /etc/xen/nixos-guest.cfg
#    Xen 4.18 and later also accept, instead of the environment,
#      bootloader_restrict = 1          in a domain's .cfg, or
#      bootloader_restrict = 1          in /etc/xen/xl.conf for every domain.
#    Optionally (any version): LIBXL_BOOTLOADER_TIMEOUT=60 for a shorter kill.

# 3. Check: the log of the next boot shows nixboot's summary line, e.g.
#      nixboot: booting NixOS - Configuration 42 (...) from MBR partition 1 ...
#    in /var/log/xen/bootloader.<domid>.log; a failure is one
#    "nixboot: error: ..." line there.
echo "restricted mode is set up; the next xl create uses it"
