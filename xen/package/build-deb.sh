#!/usr/bin/env bash
# Build nixboot's Debian package from this repository: one command,
#
#   xen/package/build-deb.sh [OUTDIR]
#
# -> OUTDIR/nixboot_<version>_<arch>.deb (OUTDIR defaults to
# $CARGO_TARGET_DIR/debian, i.e. target/debian), and its path on stdout.
# Needs cargo, dpkg-deb and gzip; dpkg-shlibdeps (dpkg-dev) and strip
# (binutils) are used when present. No root needed: files are owned by
# root in the package (dpkg-deb --root-owner-group).
#
# The package installs /usr/bin/nixboot, the man pages nixboot(1) and
# nixboot-<subcommand>(1), bash/zsh/fish completions, and under
# /usr/share/doc/nixboot/ the README, the example domain configuration and
# restricted-mode setup (examples/) and the NixOS guest module (nix/).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
out=${1:-$target/debian}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log() { printf 'build-deb: %s\n' "$*" >&2; }

pkgid=$(cargo pkgid --offline 2>/dev/null || cargo pkgid)
version=${pkgid##*[#@]}
arch=$(dpkg --print-architecture)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

log "cargo build --release (nixboot $version, $arch)"
cargo build --release --locked --bin nixboot >&2
bin=$target/release/nixboot

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/root
doc=$pkg/usr/share/doc/nixboot
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/share/man/man1" "$doc/examples" "$doc/nix" \
  "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
  "$pkg/usr/share/fish/vendor_completions.d" "$pkg/var/cache/nixboot"
chmod 0700 "$pkg/var/cache/nixboot"

install -m 0755 "$bin" "$pkg/usr/bin/nixboot"
if command -v strip >/dev/null; then
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/nixboot"
fi

log "man pages and completions (nixboot generate-assets)"
"$pkg/usr/bin/nixboot" generate-assets "$stage/assets" 2>/dev/null
for page in "$stage"/assets/man/*.1; do
  gzip -9n < "$page" > "$pkg/usr/share/man/man1/$(basename "$page").gz"
  chmod 0644 "$pkg/usr/share/man/man1/$(basename "$page").gz"
done
install -m 0644 "$stage/assets/completions/nixboot.bash" "$pkg/usr/share/bash-completion/completions/nixboot"
install -m 0644 "$stage/assets/completions/_nixboot" "$pkg/usr/share/zsh/vendor-completions/_nixboot"
install -m 0644 "$stage/assets/completions/nixboot.fish" "$pkg/usr/share/fish/vendor_completions.d/nixboot.fish"

install -m 0644 README.md "$doc/README.md"
install -m 0644 xen/examples/* "$doc/examples/"
# The guest module (copied into guests; package.nix and dom0.nix need the
# source tree and are not shipped).
install -m 0644 xen/nix/guest.nix xen/nix/install-hook.sh "$doc/nix/"
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nixboot
Source: the nixboot repository

Files: *
License: MIT or Apache-2.0
 nixboot is dual-licensed under the MIT license and the Apache License,
 version 2.0, at your option (Cargo.toml: license = "MIT OR Apache-2.0").
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
chmod 0644 "$doc/copyright"

# Depends: what the binary links, as dpkg-shlibdeps computes it; without
# dpkg-dev, the glibc symbol versions it needs, read with objdump.
depends=""
if command -v dpkg-shlibdeps >/dev/null; then
  mkdir -p "$stage/src/debian"
  printf 'Source: nixboot\n\nPackage: nixboot\nArchitecture: any\n' > "$stage/src/debian/control"
  depends=$(cd "$stage/src" && dpkg-shlibdeps -O "$pkg/usr/bin/nixboot" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
fi
if [ -z "$depends" ]; then
  glibc=$(objdump -T "$pkg/usr/bin/nixboot" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
  depends="libc6 (>= ${glibc:-2.34})"
  if readelf -d "$pkg/usr/bin/nixboot" 2>/dev/null | grep -q 'libgcc_s.so.1'; then depends="$depends, libgcc-s1"; fi
fi

size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: nixboot
Version: $version
Architecture: $arch
Maintainer: ${NIXBOOT_DEB_MAINTAINER:-nixboot maintainers <nixboot@localhost>}
Installed-Size: $size
Depends: $depends
Suggests: xen-utils-4.17 | xen-utils
Section: admin
Priority: optional
Description: Xen PV boot loader for NixOS guests (a pygrub replacement)
 nixboot is run by libxl in dom0 like pygrub (bootloader = "/usr/bin/nixboot"
 in a domain configuration). It reads the guest's ext4 filesystem, follows
 the NixOS system profile (or the default the guest installed with the
 nixboot NixOS module) to a generation, checks that its kernel is a Xen PV
 kernel, and hands libxl the kernel, initrd and command line. Older
 generations and specialisations can be booted with --entry or from a
 console menu. The guest disk is parsed by a confined child process
 (seccomp, resource limits, and with --runas namespaces and a chroot).
CONTROL
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/md5sums"

deb=$out/nixboot_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
log "wrote $deb"
echo "$deb"
