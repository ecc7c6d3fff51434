#!/usr/bin/env bash
# Benchmark: `nixboot list` and the default boot on a guest with many
# generations (default 5,000, all system-N-link of real toplevels sharing
# one kernel, half with boot.json), after `e2fsck -fyD` as `nixboot image`
# leaves the store. Target: list of 5,000 generations < 1 s; the default
# boot reads only the chosen generation, so it must not grow with N.
# Usage: xen/bench/list-bench.sh [N] (needs e2fsprogs, python3).
set -euo pipefail
n=${1:-5000}
repo=$(cd "$(dirname "$0")/../.." && pwd)
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
nb=$repo/target/release/nixboot
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
TOPLEVELS=${TOPLEVELS:-$n} python3 - "$work/tree" "$n" "$repo/testdata/demo/pvkernel.py" <<'PY'
import os, subprocess, sys
root, n, pvk = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = f"{root}/nix/store"; prof = f"{root}/nix/var/nix/profiles"
os.makedirs(prof)
k = f"{store}/00000000000000000000000000000000-linux-6.6.1"; os.makedirs(k)
subprocess.run([sys.executable, pvk, f"{k}/bzImage", str(1 << 20)], check=True)
i = f"{store}/11111111111111111111111111111111-initrd"; os.makedirs(i)
open(f"{i}/initrd", "w").write("initrd\n")
# One toplevel per generation, as nixos-rebuild makes them (TOPLEVELS=k shares k).
tops = []
ntop = int(os.environ.get("TOPLEVELS", n))
for t in range(ntop):
    top = f"/nix/store/{t:032d}-nixos-system-g-24.11.{t}"
    os.makedirs(root + top)
    os.symlink(f"/{k[len(root)+1:]}/bzImage", f"{root}{top}/kernel")
    os.symlink(f"/{i[len(root)+1:]}/initrd", f"{root}{top}/initrd")
    open(f"{root}{top}/init", "w").write("#!/bin/sh\n")
    open(f"{root}{top}/nixos-version", "w").write(f"24.11.{t}")
    open(f"{root}{top}/kernel-params", "w").write("console=hvc0")
    if t % 2:
        open(f"{root}{top}/boot.json", "w").write(
            '{"org.nixos.bootspec.v1":{"init":"%s/init","initrd":"/%s/initrd","kernel":"/%s/bzImage",'
            '"kernelParams":["console=hvc0"],"label":"x","system":"x86_64-linux","toplevel":"%s"}}'
            % (top, i[len(root)+1:], k[len(root)+1:], top))
    tops.append(top)
for g in range(1, n + 1):
    os.symlink(tops[g % len(tops)], f"{prof}/system-{g}-link")
os.symlink(f"system-{n}-link", f"{prof}/system")
PY
mke2fs -q -t ext4 -d "$work/tree" "$work/disk.img" 256M
e2fsck -fyD "$work/disk.img" >/dev/null 2>&1 || true
export NIXBOOT_CACHE_DIR=$work/cache
"$nb" -q -n "$work/disk.img" >/dev/null   # warm the page cache and the kernel cache
t() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
best() { local b=999999 x; for _ in 1 2 3 4 5; do x=$(t "$@"); (( x < b )) && b=$x; done; echo "$b"; }
echo "generations: $n"
echo "nixboot list (table):   $(best "$nb" list "$work/disk.img") ms"
echo "nixboot list --json:    $(best "$nb" list --json "$work/disk.img") ms"
echo "default boot (-n):      $(best "$nb" -q -n "$work/disk.img") ms"
echo "--entry=1 (-n):         $(best "$nb" -q -n --entry=1 "$work/disk.img") ms"
"$nb" list --json "$work/disk.img" | python3 -c 'import json,sys; g=json.load(sys.stdin)["generations"]; print("listed", len(g), "generations; bootable", sum(x["bootable"] for x in g))'
