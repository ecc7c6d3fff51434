#!/usr/bin/env bash
# nixboot's boot.loader.external install hook (see guest.nix), run in the
# guest by switch-to-configuration switch|boot as:
#
#   install-hook.sh TIMEOUT LIMIT TOPLEVEL
#
# TIMEOUT and LIMIT are JSON values fixed when the configuration is built
# (an integer or null); TOPLEVEL is the configuration being installed
# (switch-to-configuration passes its own $out: a specialisation's toplevel
# after `nixos-rebuild switch --specialisation X`). The hook records it in
# /nix/var/nix/nixboot.json, which nixboot reads from dom0 at the next boot:
#
#   {"version":1,"default":"/nix/store/...","timeout":5,"limit":null}
#
# The file is written to a temporary name in the same directory, synced and
# renamed over the old one, so nixboot sees the old or the new file, never
# half of one. NIXBOOT_STATE_DIR overrides the directory (for tests).
set -euo pipefail

if [ "$#" -ne 3 ]; then
  echo "usage: $0 TIMEOUT LIMIT TOPLEVEL" >&2
  exit 2
fi
timeout=$1 limit=$2 toplevel=$3
dir=${NIXBOOT_STATE_DIR:-/nix/var/nix}

case $timeout in
  null) ;;
  -[0-9]*) [[ $timeout =~ ^-[0-9]{1,9}$ ]] && timeout=null ;; # negative: wait for a key
esac
[[ $timeout == null || $timeout =~ ^(0|[1-9][0-9]{0,8})$ ]] ||
  { echo "nixboot: the timeout must be an integer or null, not '$timeout'" >&2; exit 2; }
[[ $limit == null || $limit =~ ^[1-9][0-9]{0,8}$ ]] ||
  { echo "nixboot: the limit must be a positive integer or null, not '$limit'" >&2; exit 2; }
# A store path needs no JSON escaping; refuse anything else.
[[ $toplevel =~ ^/nix/store/[0-9a-z]{32}-[A-Za-z0-9+._?=-]+$ ]] ||
  { echo "nixboot: '$toplevel' is not a /nix/store path" >&2; exit 1; }
if [ -z "${NIXBOOT_STATE_DIR:-}" ] && [ ! -e "$toplevel/init" ]; then
  echo "nixboot: $toplevel has no init; is it a NixOS system?" >&2
  exit 1
fi

mkdir -p "$dir"
tmp=$(mktemp "$dir/.nixboot.json.XXXXXX")
trap 'rm -f "$tmp"' EXIT
printf '{"version":1,"default":"%s","timeout":%s,"limit":%s}\n' "$toplevel" "$timeout" "$limit" > "$tmp"
chmod 0644 "$tmp"
sync "$tmp" 2>/dev/null || sync
mv -f "$tmp" "$dir/nixboot.json"
trap - EXIT
echo "nixboot: the next boot from dom0 starts $toplevel (menu timeout $timeout, limit $limit)"
