#!/usr/bin/env python3
"""Timestamp QEMU's serial output (Xen + dom0 console) line by line.

Usage: serial-log.py LOG [all]

Reads stdin, writes every line to LOG as "[<seconds since start>] <line>"
(host wall clock), and echoes the interesting lines to stdout: dom0-init's
"@@" events, the guests' NIXBOOT-E2E report lines, the bootloader logs,
rebuild-switch's output (generation 2 entering the NixOS disk), and the
bootloader argv / errors from xl. With "all", echoes everything.
"""

import re
import sys
import time

INTERESTING = re.compile(
    rb"^(@@ |\[blog |\[rebuild-switch |\[guest [^]]*\] NIXBOOT-E2E|"
    rb"\[xl [^]]*\] .*(bootloader arg:|executing bootloader|bootloader completed|libxl: error))"
)


def main() -> None:
    log = open(sys.argv[1], "wb")
    echo_all = len(sys.argv) > 2 and sys.argv[2] == "all"
    out = sys.stdout.buffer
    t0 = time.monotonic()
    for raw in sys.stdin.buffer:
        line = raw.rstrip(b"\r\n").replace(b"\r", b"")
        stamped = b"[%7.2f] " % (time.monotonic() - t0) + line + b"\n"
        log.write(stamped)
        log.flush()
        if echo_all or INTERESTING.search(line):
            out.write(stamped)
            out.flush()


if __name__ == "__main__":
    main()
