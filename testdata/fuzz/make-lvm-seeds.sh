#!/bin/sh
# Regenerate the seeds of the `lvm` fuzz target in testdata/fuzz/seeds/lvm/.
#
# A real LVM2 physical volume made by pvcreate/vgcreate/lvcreate on a loop
# device (small metadata area and 16 KiB extents so the whole PV fits in
# 160 KiB): VG `seedvg`, LV `root` in two segments (extents 0-1 and 3-4,
# because `swap` took extent 2 before root was extended), LV `swap`. Every
# seed starts with the target's mode byte (see `nixboot::fuzzing::lvm`):
#
#   pv-whole.img   0x00 + the PV as a whole disk
#   pv-mbr.img     0x00 + an MBR with one type-0x8e partition at LBA 64
#                  holding the same PV
#   metadata.txt   0x01 + the PV's metadata text (the fuzzer wraps it in a
#                  valid PV, checksums fixed, so it reaches the grammar)
#
# The uuids and times inside differ from run to run (LVM does not let
# them be pinned); the structure does not.
#
# Needs root, lvm2 (2.03.16), util-linux (losetup, sfdisk), python3.
#
# Usage: testdata/fuzz/make-lvm-seeds.sh [OUTDIR]   (default: next to this script)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/seeds}/lvm
mkdir -p "$out"
work=$(mktemp -d)
loop=
vg=seedvg
# LVM on the loop device only, no device-mapper, no backups in /etc.
cfg='devices { filter=["a|^/dev/loop|","r|.*|"] obtain_device_list_from_udev=0 } global { activation=0 } backup { backup=0 archive=0 }'
cleanup() {
  vgremove --config "$cfg" -f "$vg" >/dev/null 2>&1 || true
  [ -n "$loop" ] && losetup -d "$loop"
  rm -rf "$work"
}
trap cleanup EXIT
truncate -s 8M "$work/pv"
loop=$(losetup -f --show "$work/pv")
pvcreate --config "$cfg" --metadatasize 16k --dataalignment 64k "$loop"
vgcreate --config "$cfg" -s 16k "$vg" "$loop"
lvcreate --config "$cfg" -an -Zn -l 2 -n root "$vg"
lvcreate --config "$cfg" -an -Zn -l 1 -n swap "$vg"
lvextend --config "$cfg" -l +2 "$vg/root"
dd if="$loop" of="$work/head" bs=16k count=10 status=none
vgremove --config "$cfg" -f "$vg"
python3 - "$work/head" "$out" <<'PY'
import struct, sys
head = open(sys.argv[1], "rb").read()
out = sys.argv[2]
open(f"{out}/pv-whole.img", "wb").write(b"\0" + head)
mbr = bytearray(64 * 512)
mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x8E, b"\0\0\0", 64, len(head) // 512)
mbr[510:512] = b"\x55\xaa"
open(f"{out}/pv-mbr.img", "wb").write(b"\0" + bytes(mbr) + head)
# The committed metadata: the first raw_locn of the area at 4096.
off, size = struct.unpack_from("<QQ", head, 4096 + 40)
text = head[4096 + off : 4096 + off + size].rstrip(b"\0")
open(f"{out}/metadata.txt", "wb").write(b"\1" + text)
PY
