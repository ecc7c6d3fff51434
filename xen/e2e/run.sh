#!/bin/bash
# nixboot end-to-end test under real Xen: Debian's Xen 4.17 and a Debian dom0 boot in
# qemu-system-x86_64 (TCG, no KVM needed), and dom0 runs `xl create` with
# bootloader="/usr/bin/nixboot" on a NixOS guest disk made by `nixboot image` from a system
# built with nix-build (Debian's kernel, a busybox initrd), and on a hand-made hostile disk.
# Before scenario b, dom0 adds generation 2 to the NixOS disk with nix-store --import and
# nix-env --set (rebuild-switch). One QEMU boot runs every scenario of xen/e2e/scenarios in
# sequence; this script then checks each from the guests' own console output and prints
# PASS/FAIL per scenario plus the phase timings.
#
# Usage: xen/e2e/run.sh            (as root; Debian 12 with the packages in xen/README.md)
# Env:   NIXBOOT=path       use this nixboot binary instead of `cargo build --release`
#        XENQEMU=dir        work directory (kept); default: a temporary one, removed
#        E2E_TIMEOUT=s      global time limit (default 1200); QEMU is killed when it is up
#        E2E_ONLY=a,b       run only these scenarios (c and d need b's switch before them)
#        E2E_VERBOSE=1      stream the whole serial console, not just the key lines
#        E2E_LOG=file       copy the timestamped serial log there
#        E2E_KEEP=1         keep the temporary work directory
#        E2E_CPU=model      QEMU's -cpu (default qemu64); PVH needs SVM: qemu64,+svm,+npt
# Exit status: 0 if scenarios a-e all pass (f is informational), 1 otherwise.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
timeout_s=${E2E_TIMEOUT:-1200}
t_start=$(date +%s.%N)
deadline=$(($(date +%s) + timeout_s))
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
export KVER

say() { printf 'e2e: %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }
left() { echo $((deadline - $(date +%s))); }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [ -n "${XENQEMU:-}" ]; then
  W=$XENQEMU
  keep=1
  mkdir -p "$W"
else
  W=$(mktemp -d -t nixboot-xen-e2e.XXXXXX)
  keep=${E2E_KEEP:-0}
fi
W=$(cd "$W" && pwd)
qemu_pid= log_pid=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # timeout(1) forwards the signal to QEMU
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
  [ -n "$log_pid" ] && kill "$log_pid" 2>/dev/null && wait "$log_pid" 2>/dev/null
  if [ "$keep" = 1 ]; then say "work directory kept: $W"; else rm -rf "$W"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phases=()
phase_start=
begin() { phase_start=$(date +%s.%N); say "== $1"; }
end() { phases+=("$(printf '%-34s %7ss' "$1" "$(elapsed "$phase_start")")"); }

for t in qemu-system-x86_64 mke2fs sfdisk cpio gzip file python3 modinfo nix-build nix-store nix-env; do
  command -v "$t" >/dev/null || die "$t not found (see xen/README.md for the packages)"
done
[ -x /usr/lib/xen-4.17/bin/xl ] || die "xen-utils-4.17 is not installed"
XEN_GZ=$(ls /boot/xen-4.17*-amd64.gz 2>/dev/null | sort -V | tail -1)
[ -n "$XEN_GZ" ] || die "no /boot/xen-4.17*-amd64.gz (xen-hypervisor-4.17-amd64)"
DOM0_KERNEL=/boot/vmlinuz-$KVER
[ -r "$DOM0_KERNEL" ] || die "cannot read $DOM0_KERNEL (linux-image-amd64)"
out=$W/out
rm -rf "$out"
mkdir -p "$out"

# 1. nixboot, built for baseline x86-64 (QEMU's qemu64 CPU has no SSE4/AVX)
begin "nixboot"
if [ -n "${NIXBOOT:-}" ]; then
  nixboot=$(readlink -f "$NIXBOOT")
  say "using NIXBOOT=$nixboot"
else
  (cd "$repo" && timeout --foreground -k 10 "$(left)" cargo build --release --locked --quiet)
  target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  nixboot=$target/release/nixboot
fi
[ -x "$nixboot" ] || die "no nixboot binary at $nixboot"
end "build nixboot"

# 2. guest disks, checked on the host first so a broken disk is not mistaken for a Xen problem
begin "guest disks"
"$here/build-guest-disks.sh" "$out" "$nixboot" >/dev/null
. "$out/expect.env"
"$nixboot" --not-really "$out/nixos.img" 2>/dev/null | grep -qxF "args    init=$G1/init console=hvc0 loglevel=4 nixboot.gen=1" ||
  die "host preflight: nixboot does not pick generation 1 on nixos.img"
if "$nixboot" --not-really "$out/hostile.img" >/dev/null 2>&1; then
  die "host preflight: nixboot accepted hostile.img"
fi
# rebuild-switch, on a copy, in a private mount namespace (it mounts the guest's /nix on /nix);
# skipped where this host has no loop device or mount namespace (dom0 always has both)
if /sbin/losetup -f >/dev/null 2>&1 && unshare -m true 2>/dev/null; then
  cp --sparse=always "$out/nixos.img" "$W/preflight.img"
  unshare -m --propagation private sh "$here/rebuild-switch" "$W/preflight.img" "$out" \
    > "$W/preflight.log" 2>&1 || die "host preflight: rebuild-switch failed: $(tail -n 5 "$W/preflight.log")"
  "$nixboot" --not-really "$W/preflight.img" 2>/dev/null |
    grep -qxF "args    init=$G2/init console=hvc0 loglevel=4 nixboot.gen=2" ||
    die "host preflight: after rebuild-switch, nixboot does not pick generation 2"
  rm -f "$W/preflight.img" "$W/preflight.log"
else
  say "host preflight of rebuild-switch skipped: no loop device or mount namespace here"
fi
end "build guest disks + host preflight"

# 3. dom0 initramfs (this host's Debian packages + nixboot + disks + configs)
begin "dom0 initramfs"
"$here/build-dom0-initramfs.sh" "$out" "$nixboot" >/dev/null
end "build dom0 initramfs"

# 4. one QEMU boot: Xen, dom0, every scenario, exit through isa-debug-exit
begin "QEMU: Xen + dom0 + scenarios"
[ "$(left)" -gt 30 ] || die "no time left for QEMU (E2E_TIMEOUT=$timeout_s)"
zcat "$XEN_GZ" > "$out/xen" # QEMU's multiboot loader wants the ELF, not xen.gz
# dom0 kernel: the bzImage's xz payload, unpacked here, saves Xen ~4 s of xz under TCG
dom0_kernel=$out/vmlinux
python3 - "$DOM0_KERNEL" "$dom0_kernel" <<'EOF' || dom0_kernel=$DOM0_KERNEL
import lzma, sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ\x00")
if start < 0:
    sys.exit("no xz payload in %s, booting it as is" % sys.argv[1])
open(sys.argv[2], "wb").write(lzma.LZMADecompressor().decompress(data[start:]))
EOF
# dom0_mem: the initramfs (~72 MB packed, with Nix and its libraries for rebuild-switch) must
# unpack (~145 MB) beside itself and the kernel's early reservations; 512M is too little. The
# guest disks ride in it too (sparse on the host, ~300 MB unpacked: btrfs, LVM, split /nix)
xen_cmdline="dom0_mem=1280M,max:1280M dom0_max_vcpus=2 bootscrub=0 console=com1 com1=115200,8n1"
xen_cmdline="$xen_cmdline loglvl=all guest_loglvl=all noreboot"
# QEMU -initrd separates modules with ',': the dom0 command line must not contain one
only=${E2E_ONLY:+e2e.only=$(echo "$E2E_ONLY" | tr ',' ':')}
dom0_cmdline="console=hvc0 earlyprintk=xen $only"
log=$W/serial.log
rm -f "$W/serial.fifo"
mkfifo "$W/serial.fifo"
python3 "$here/serial-log.py" "$log" ${E2E_VERBOSE:+all} < "$W/serial.fifo" &
log_pid=$!
timeout --foreground -k 10 "$(left)" qemu-system-x86_64 -accel tcg -cpu "${E2E_CPU:-qemu64}" -smp 2 -m 2048M \
  -display none -monitor none -serial stdio -no-reboot \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  -kernel "$out/xen" -append "$xen_cmdline" \
  -initrd "$dom0_kernel $dom0_cmdline,$out/dom0.cpio.gz" \
  < /dev/null > "$W/serial.fifo" 2> "$W/qemu.stderr" &
qemu_pid=$!
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_secs=$(elapsed "$phase_start")
qemu_pid=
wait "$log_pid" || true
log_pid=
rm -f "$W/serial.fifo"
end "QEMU run (all scenarios)"
case $qemu_rc in
  3) say "QEMU exited as dom0 asked (isa-debug-exit)" ;;
  124) say "QEMU was killed: global timeout E2E_TIMEOUT=$timeout_s s reached" ;;
  *) say "QEMU exit status $qemu_rc: $(head -c 2000 "$W/qemu.stderr")" ;;
esac
[ -z "${E2E_LOG:-}" ] || cp "$log" "$E2E_LOG"

# 5. checks, from the serial log (host timestamps stripped)
sed 's/^\[ *[0-9.]*\] //' "$log" > "$W/serial.txt"
S=$W/serial.txt
fails=()
has() { grep -qF -- "$1" "$S"; }
has_line() { grep -qxF -- "$1" "$S"; }
has_re() { grep -qE -- "$1" "$S"; }
need() { # scn description test args...
  local scn=$1 what=$2
  shift 2
  "$@" || fails+=("$scn: $what")
}
not() { ! "$@"; }
ran() { has_re "^@@ \[dom0 [0-9.]+s\] SCENARIO-END $1\$"; }
dom0_clean() {
  need "$1" "dom0 unchanged (only Domain-0, no leftovers, /etc/shadow intact)" \
    has_re "^@@ \[dom0 [0-9.]+s\] DOM0-STATE $1 domains=1 bootloader-leftovers=0 new-loops=0 shadow=intact\$"
}
booted() { # scn gen extra
  local g=G$2
  g=${!g}
  need "$1" "xl create succeeded" has_re "^@@ \[dom0 [0-9.]+s\] XL-CREATE-EXIT $1 rc=0 "
  need "$1" "libxl ran nixboot" has_re "^\[xl $1\] .*executing bootloader: /usr/bin/nixboot\$"
  need "$1" "the guest booted generation $2 with its own initrd" \
    has_line "[guest $1] NIXBOOT-E2E-BOOTED gen=$2 initrd=initrd-$2 init=$g/init"
  need "$1" "the guest's command line is init= + kernelParams + extra=" \
    has_line "[guest $1] NIXBOOT-E2E-CMDLINE init=$g/init console=hvc0 loglevel=4 nixboot.gen=$2 nixboot.e2e.extra=$3"
  need "$1" "stage 2 (the init= file on the guest disk) is generation $2's" \
    has_line "[guest $1] NIXBOOT-E2E-STAGE2 generation=$2 toplevel=$g"
  dom0_clean "$1"
}
plain_booted() { # scn gen toplevel extra: a hand-made NixOS disk (initrd 1, no stage 2 mount)
  need "$1" "xl create succeeded" has_re "^@@ \[dom0 [0-9.]+s\] XL-CREATE-EXIT $1 rc=0 "
  need "$1" "libxl ran nixboot" has_re "^\[xl $1\] .*executing bootloader: /usr/bin/nixboot\$"
  need "$1" "the guest booted generation $2" has_line "[guest $1] NIXBOOT-E2E-BOOTED gen=$2 initrd=initrd-1 init=$3/init"
  need "$1" "the guest's command line is init= + kernelParams + extra=" \
    has_line "[guest $1] NIXBOOT-E2E-CMDLINE init=$3/init console=hvc0 loglevel=4 nixboot.gen=$2 nixboot.e2e.extra=$4"
  dom0_clean "$1"
}
refused() { # scn escaped-value
  need "$1" "xl create failed" has_re "^@@ \[dom0 [0-9.]+s\] XL-CREATE-EXIT $1 rc=[1-9][0-9]* "
  need "$1" "libxl reported the bootloader failure" has_re "^\[xl $1\] .*bootloader failed - consult logfile"
  need "$1" "nixboot's error is in the bootloader log" \
    has_line "[blog $1] nixboot: error: guest disk: kernel parameter contains a control character: $2"
  need "$1" "no guest ran" not has "[guest $1] NIXBOOT-E2E-BOOTED"
  dom0_clean "$1"
}

declare -A result
SCENARIOS="a b c e1 e2 n k l p d"
hvm=no
has_re "^@@ \[dom0 [0-9.]+s\] XEN-VIRT-CAPS .*\bhvm\b" && hvm=yes
for scn in $SCENARIOS; do
  if [ -n "${E2E_ONLY:-}" ] && [[ ",$E2E_ONLY," != *",$scn,"* ]]; then
    result[$scn]=SKIPPED
    continue
  fi
  n=${#fails[@]}
  if ! ran "$scn"; then
    fails+=("$scn: did not run to the end (see the serial log)")
  else
    case $scn in
      a)
        booted a 1 from-xl-extra
        need a "the guest unmounted its disk cleanly" has_line "[guest a] NIXBOOT-E2E-UNMOUNTED"
        ;;
      b)
        need b "rebuild-switch succeeded in dom0" \
          has_re "^@@ \[dom0 [0-9.]+s\] BEFORE-EXIT b rebuild-switch rc=0\$"
        need b "nix-store --import brought system 2 into the guest's store" \
          has_line "[rebuild-switch b] $G2"
        need b "nix-env --set switched the profile to system-2-link -> system 2" \
          has_line "[rebuild-switch b] NIXBOOT-E2E-SWITCHED generation=2 toplevel=$G2 system=system-2-link"
        booted b 2 from-xl-extra
        need b "same cfg as scenario a" has_re "^@@ \[dom0 [0-9.]+s\] SCENARIO-START b nixos.cfg\$"
        ;;
      c)
        booted c 1 rollback
        need c "libxl passed --entry=1" has_re "^\[xl c\] .* bootloader arg: --entry=1\$"
        ;;
      n)
        booted n 1 split
        need n "nixboot found the system on partition 2, the guest's /nix" \
          has_re "^\[blog n\] nixboot: booting .* from MBR partition 2 \(type 0x83, offset [0-9]+\), the guest's /nix: "
        need n "the guest mounted partition 2 at /nix" has_line "[guest n] NIXBOOT-E2E-NIX-PARTITION xvda2"
        ;;
      k)
        plain_booted k 7 "$GB" btrfs
        need k "nixboot read the btrfs subvolume @nix as the guest's /nix" \
          has_re "^\[blog k\] nixboot: booting .* from GPT partition 1 \(offset 1048576\), btrfs subvolume @nix .*the guest's /nix: "
        ;;
      l)
        plain_booted l 8 "$GL" lvm
        need l "nixboot found the system in the logical volume" \
          has_re "^\[blog l\] nixboot: booting .* from LVM logical volume nbe2e/root "
        ;;
      p)
        if [ "$hvm" = no ]; then
          result[p]="INFO"
          pvh_why="Xen reports no hvm in virt_caps under QEMU -cpu ${E2E_CPU:-qemu64}: no PVH domain can start"
          continue
        fi
        booted p 2 pvh
        need p "the guest runs as a PVH domain" has_re "^\[guest p\] NIXBOOT-E2E-HYPERVISOR xen PVH "
        ;;
      e1) refused e1 '"x\0kernel /etc/shadow"' ;;
      e2) refused e2 '"x\nramdisk /etc/shadow"' ;;
      d)
        booted d 2 restricted
        domid=$(sed -n 's/^@@ \[dom0 [0-9.]*s\] XL-CREATE-EXIT d rc=[0-9]* domid=\([0-9]*\)$/\1/p' "$S")
        need d "libxl passed --runas=<65536 + domid> --quiet" \
          has_re "^\[xl d\] .* bootloader arg: --runas=$((65536 + ${domid:-0}))\$"
        need d "libxl passed --quiet" has_re "^\[xl d\] .* bootloader arg: --quiet\$"
        ;;
    esac
  fi
  [ "${#fails[@]}" = "$n" ] && result[$scn]=PASS || result[$scn]=FAIL
done
if [ -n "${E2E_ONLY:-}" ] && [[ ",$E2E_ONLY," != *",f,"* ]]; then
  pygrub=SKIPPED
elif ! ran f; then
  pygrub="did not run"
else
  pygrub=$(sed -n 's/^@@ \[dom0 [0-9.]*s\] XL-CREATE-EXIT f \(rc=[0-9]*\).*/xl create \1/p' "$S")
  if has "[guest f] NIXBOOT-E2E-BOOTED"; then pygrub="booted the guest ($pygrub)"; else
    pygrub="did not boot the guest ($pygrub): $(sed -n 's/^\[blog f\] //p' "$S" | grep -v '^ *$' | tail -1)"
  fi
fi

# 6. report: scenarios, then timings (host seconds since QEMU start, from serial.log)
at() { sed -n "s/^\[ *\([0-9.]*\)\] @@ \[dom0 [0-9.]*s\] $1.*/\1/p" "$log" | head -1; }
tag_at() { sed -nE "s/^\[ *([0-9.]+)\] \[$1\] .*($2).*/\1/p" "$log" | head -1; }
span() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }' || echo "?"; }
echo
say "results:"
for scn in $SCENARIOS; do
  printf '  %-3s %-7s %s\n' "$scn" "${result[$scn]}" "$(sed -n "s/^$scn  *[^ ]*  *[^ ]*  *//p" "$here/scenarios")"
done
printf '  %-3s %-7s %s\n' f INFO "pygrub on the NixOS disk: $pygrub"
[ -z "${pvh_why:-}" ] || say "p: $pvh_why"
for f in "${fails[@]}"; do say "FAILED check: $f"; done
echo
say "timings (host wall clock, $(nproc) CPUs, load average now $(cut -d' ' -f1-3 /proc/loadavg)):"
for p in "${phases[@]}"; do echo "  $p"; done
printf '  %-34s %7ss\n' "QEMU start -> dom0 /init" "$(span 0 "$(at DOM0-INIT-START)")"
printf '  %-34s %7ss\n' "dom0 /init -> toolstack ready" "$(span "$(at DOM0-INIT-START)" "$(at DOM0-TOOLSTACK-READY)")"
printf '  %-34s %7ss\n' "dom0 done -> QEMU exit" "$(span "$(at DOM0-DONE)" "$qemu_secs")"
# per scenario: all of it; its before step (rebuild-switch); xl create; the bootloader inside
# it (exec -> exit); guest boot (xl create done -> the guest's first report line); guest
# poweroff -> domain torn down
printf '  %-12s %7s %7s %10s %10s %10s %9s\n' scenario total before "xl create" bootloader "guest boot" teardown
for scn in $SCENARIOS f; do
  s=$(at "SCENARIO-START $scn ")
  [ -n "$s" ] || continue
  b=$(at "BEFORE-EXIT $scn ")
  x0=$(at "XL-CREATE-START $scn")
  x=$(at "XL-CREATE-EXIT $scn ")
  g=$(at "GUEST-GONE $scn")
  bl0=$(tag_at "xl $scn" 'executing bootloader')
  bl1=$(tag_at "xl $scn" 'bootloader (completed|failed)')
  up=$(tag_at "guest $scn" 'NIXBOOT-E2E-BOOTED')
  off=$(tag_at "guest $scn" 'NIXBOOT-E2E-POWEROFF')
  printf '  %-12s %7s %7s %10s %10s %10s %9s\n' "$scn" "$(span "$s" "$(at "SCENARIO-END $scn")")" \
    "$([ -n "$b" ] && span "$s" "$b" || echo -)" "$(span "$x0" "$x")" "$(span "$bl0" "$bl1")" \
    "$(span "$x" "$up")" "$(span "$off" "$g")"
done
printf '  %-34s %7ss\n' "whole run" "$(elapsed "$t_start")"

if [ "${#fails[@]}" -gt 0 ] || [ "$qemu_rc" != 3 ]; then
  echo
  say "last 60 lines of the serial log:"
  tail -n 60 "$log"
  say "FAIL"
  exit 1
fi
say "PASS"
