#!/usr/bin/env python3
"""Write a tiny stand-in Xen PV kernel: an ELF64 x86-64 executable with one
PT_LOAD segment and a PT_NOTE segment carrying the Xen ELF notes Linux's
vmlinux carries (what `readnotes` prints), padded to SIZE bytes.
Usage: pvkernel.py OUT SIZE. It is not a runnable kernel."""
import struct, sys

out, size = sys.argv[1], int(sys.argv[2])
VIRT = 0xffffffff80000000
def note(ntype, desc):
    name = b"Xen\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)
notes = b"".join([
    note(6, b"linux\0"),                       # GUEST_OS
    note(7, b"2.6\0"),                         # GUEST_VERSION
    note(5, b"xen-3.0\0"),                     # XEN_VERSION
    note(3, struct.pack("<Q", VIRT)),          # VIRT_BASE
    note(4, struct.pack("<Q", 0)),             # PADDR_OFFSET
    note(1, struct.pack("<Q", VIRT + 0x1000)), # ENTRY
    note(2, struct.pack("<Q", VIRT + 0x2000)), # HYPERCALL_PAGE
    note(10, b"!writable_page_tables\0"),      # FEATURES
    note(9, b"yes\0"),                         # PAE_MODE
    note(8, b"generic\0"),                     # LOADER
])
ehsize, phsize = 64, 56
note_off = ehsize + 2 * phsize
load_off = 0x1000
size = max(size, load_off + 0x3000)
ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, VIRT + 0x1000, ehsize, 0, 0,
                           ehsize, phsize, 2, 64, 0, 0)
filesz = size - load_off
ph_load = struct.pack("<IIQQQQQQ", 1, 7, load_off, VIRT, 0x1000000, filesz, filesz, 0x1000)
ph_note = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(notes), len(notes), 4)
body = ehdr + ph_load + ph_note + notes
body += b"\0" * (load_off - len(body))
# Deterministic, non-zero filler so that copies can be compared.
fill = bytearray()
x = 0x6e697862
while len(fill) < size - load_off:
    x = (x * 1103515245 + 12345) & 0xffffffff
    fill += struct.pack("<I", x)
with open(out, "wb") as f:
    f.write(body + bytes(fill[: size - load_off]))
