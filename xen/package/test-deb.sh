#!/usr/bin/env bash
# Build the Debian package, install it with dpkg -i, and boot the demo disk
# (testdata/demo.img) with the installed /usr/bin/nixboot exactly as libxl
# runs a boot loader: a pty for stdin/stdout/stderr, TERM=vt100, a result
# file and an output directory pre-created with mode 0600, libxl's argv
# (also in restricted mode, --runas --quiet). Checks the simple0 items, that
# the kernel and initrd copies hold the guest's bytes (read independently
# with debugfs), the log lines, the man pages and the completions.
#
#   xen/package/test-deb.sh [PATH.deb]      (as root; CI runs it)
#
# Without root, dpkg, debugfs or script(1) it prints "skipped: <why>" and
# exits 0, unless CI=true or NIXBOOT_REQUIRE_TOOLS=1, where that fails.
# Removes the package again if it was not installed before.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
check() { # DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
skip() {
  if [ "${CI:-}" = true ] || [ -n "${NIXBOOT_REQUIRE_TOOLS:-}" ]; then
    echo "required test prerequisite missing: $*" >&2
    exit 1
  fi
  echo "skipped: $*"
  exit 0
}

[ "$(id -u)" = 0 ] || skip "test-deb.sh needs root (dpkg -i)"
for tool in dpkg dpkg-deb debugfs script cmp; do
  command -v "$tool" >/dev/null || skip "no $tool"
done

deb=${1:-}
if [ -z "$deb" ]; then
  deb=$(bash xen/package/build-deb.sh | tail -n 1)
fi
[ -f "$deb" ] || { echo "no package at '$deb'" >&2; exit 1; }

was_installed=$(dpkg-query -W -f='${Status}' nixboot 2>/dev/null | grep -c 'install ok installed' || true)
tmp=$(mktemp -d)
cleanup() {
  exec 3>&- || true
  rm -rf "$tmp"
  if [ "$was_installed" = 0 ]; then dpkg -r nixboot >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

echo "== dpkg -i $deb"
dpkg -i "$deb"
check "dpkg says nixboot is installed" sh -c "dpkg-query -W -f='\${Status}' nixboot | grep -q 'install ok installed'"
check "package metadata: Depends libc6, Suggests xen-utils" \
  sh -c "dpkg-deb -f '$deb' Depends | grep -q libc6 && dpkg-deb -f '$deb' Suggests | grep -q xen-utils"
check "/usr/bin/nixboot is executable" test -x /usr/bin/nixboot
check "nixboot --version" sh -c '/usr/bin/nixboot --version | grep -q "^nixboot "'
for f in /usr/share/man/man1/nixboot.1.gz /usr/share/man/man1/nixboot-list.1.gz \
  /usr/share/bash-completion/completions/nixboot /usr/share/zsh/vendor-completions/_nixboot \
  /usr/share/fish/vendor_completions.d/nixboot.fish /usr/share/doc/nixboot/README.md \
  /usr/share/doc/nixboot/copyright /usr/share/doc/nixboot/examples/nixos-guest.cfg \
  /usr/share/doc/nixboot/examples/restricted-mode.sh /usr/share/doc/nixboot/nix/guest.nix \
  /usr/share/doc/nixboot/nix/install-hook.sh; do
  check "installed $f" test -s "$f"
done
check "dpkg -L lists the man page" sh -c 'dpkg -L nixboot | grep -qx /usr/share/man/man1/nixboot.1.gz'
for section in 'LIBXL INVOCATION' 'EXIT STATUS' 'LIMITS' 'RESTRICTED MODE' 'FILES' 'EXAMPLES'; do
  check "nixboot(1) has $section" sh -c "zcat /usr/share/man/man1/nixboot.1.gz | grep -q '^\.SH \"*$section\"*\$'"
done
if command -v man >/dev/null; then
  check "man -l renders nixboot(1)" sh -c \
    'MANWIDTH=80 man -l /usr/share/man/man1/nixboot.1.gz 2>/dev/null | grep -q "bootloader.<domid>.log"'
fi
check "bash completion loads and completes options" bash -c \
  'source /usr/share/bash-completion/completions/nixboot && complete -p nixboot >/dev/null &&
   COMP_WORDS=(nixboot --output-f) COMP_CWORD=1 COMP_LINE="nixboot --output-f" COMP_POINT=18 &&
   _nixboot nixboot --output-f nixboot && [[ " ${COMPREPLY[*]} " == *" --output-format"* ]]'

# The guest's files, read independently of nixboot (the demo disk's
# partition starts at 1 MiB; store paths as testdata/demo/build.sh makes them).
img=$root/testdata/demo.img
fs="$img?offset=1048576"
kernel=/nix/store/6l0z5kd0lpx1sw9y3h1d8cnk0mxxcx1q-linux-6.6.63/bzImage
initrd=/nix/store/0m9pdrw0r0wsnqb7rl7s7m0dmpc8jqy4-initrd-linux-6.6.63/initrd
g2=/nix/store/ah9h6qsx3w3jbz6fmqgj3fgwsl7rl8dd-nixos-system-demo-24.11.5678.0123456
debugfs -R "dump $kernel $tmp/want-kernel" "$fs" 2>/dev/null
debugfs -R "dump $initrd $tmp/want-initrd" "$fs" 2>/dev/null
check "debugfs read the demo's kernel and initrd" test -s "$tmp/want-kernel" -a -s "$tmp/want-initrd"

# The console nobody is attached to (xl create without -c): a pty whose
# input never ends and never carries a key. script(1) feeds the pty from
# its stdin, so that is a FIFO held open for reading and writing.
mkfifo "$tmp/console"
exec 3<>"$tmp/console"

# boot DOMID [extra argv...]: run /usr/bin/nixboot as libxl does for domain
# DOMID, under a pty, and keep what it prints as libxl's log would.
boot() {
  local domid=$1; shift
  local out=$tmp/bootloader.$domid.out dir=$tmp/bootloader.$domid.d
  install -m 0600 /dev/null "$out"
  mkdir -m 0600 "$dir"
  local argv=(/usr/bin/nixboot "--args=console=hvc0 marker=from-xl-extra" "$@"
    "--output=$out" --output-format=simple0 "--output-directory=$dir" "$img")
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=vt100 NIXBOOT_CACHE_DIR= \
    timeout 120 script -qec "$(printf '%q ' "${argv[@]}")" "$tmp/bootloader.$domid.log" <&3 > /dev/null
}

# items FILE: the simple0 items, one per line.
items() { tr '\0' '\n' < "$1" | sed '/^$/d'; }

check_result() { # DOMID ARGS-EXPECTED
  local domid=$1 want_args=$2
  local out=$tmp/bootloader.$domid.out dir=$tmp/bootloader.$domid.d
  local k r a
  k=$(items "$out" | sed -n 's/^kernel //p')
  r=$(items "$out" | sed -n 's/^ramdisk //p')
  a=$(items "$out" | sed -n 's/^args //p')
  check "domain $domid: result has exactly kernel, ramdisk, args" \
    test "$(items "$out" | cut -d' ' -f1 | tr '\n' ' ')" = "kernel ramdisk args "
  check "domain $domid: result ends with the empty item" sh -c "tail -c 2 '$out' | od -An -tx1 | grep -q '00 00'"
  check "domain $domid: kernel copy inside the output directory" test "$(dirname "$k")" = "$dir"
  check "domain $domid: ramdisk copy inside the output directory" test "$(dirname "$r")" = "$dir"
  check "domain $domid: kernel copy is mode 0600" test "$(stat -c %a "$k")" = 600
  check "domain $domid: kernel bytes are the guest's" cmp -s "$k" "$tmp/want-kernel"
  check "domain $domid: initrd bytes are the guest's" cmp -s "$r" "$tmp/want-initrd"
  check "domain $domid: args" test "$a" = "$want_args"
}

echo "== boot the demo disk as libxl does (domain 7; the menu counts down 5 s)"
boot 7
check_result 7 "init=$g2/init console=hvc0 loglevel=4 console=hvc0 marker=from-xl-extra"
check "domain 7: the log says which generation booted and why" \
  grep -q "nixboot: booting NixOS - Configuration 2 (2024-12-01 - 24.11.5678.0123456) from MBR partition 1.*system profile's current generation" "$tmp/bootloader.7.log"
check "domain 7: the log has the kernel with its size" grep -q "nixboot: kernel $kernel ([0-9]* bytes; boots as Xen pv" "$tmp/bootloader.7.log"

echo "== rollback through bootloader_args (domain 8: --entry=1)"
boot 8 --entry=1
check_result 8 "init=/nix/store/9q3bm1h2mdsf9aisqgd0f0bsl6gy3kdk-nixos-system-demo-23.05.1234.abcdef0/init console=hvc0 loglevel=4 console=hvc0 marker=from-xl-extra"
check "domain 8: the log names --entry=1" grep -q "Configuration 1 .*: --entry=1" "$tmp/bootloader.8.log"

if getent passwd 131081 >/dev/null; then
  echo "== uid 131081 is taken on this machine: not testing restricted mode"
else
  echo "== restricted mode (domain 9: --runas=131081 --quiet)"
  boot 9 --runas=131081 --quiet
  check_result 9 "init=$g2/init console=hvc0 loglevel=4 console=hvc0 marker=from-xl-extra"
  check "domain 9: -q still logs what booted" grep -q "nixboot: booting NixOS - Configuration 2" "$tmp/bootloader.9.log"
  check "domain 9: -q logs no details" sh -c "! grep -q 'nixboot: kernel ' '$tmp/bootloader.9.log'"
fi

echo "== a failure leaves no result (domain 10: unknown entry)"
set +e
boot 10 --entry=99
set -e
check "domain 10: result file stays empty" test ! -s "$tmp/bootloader.10.out"
check "domain 10: output directory stays empty" test -z "$(ls -A "$tmp/bootloader.10.d")"
check "domain 10: one error line in the log" grep -q "nixboot: error: guest disk: .*no generation 99" "$tmp/bootloader.10.log"

echo
echo "deb: $passed passed, $failed failed"
[ "$failed" = 0 ]
