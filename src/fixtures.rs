//! Test fixtures shared by unit tests, integration tests, fuzzing seeds and
//! benchmarks. Not part of the boot path; hidden from the docs.

/// Xen ELF note types Linux's vmlinux carries with `CONFIG_XEN_PV`
/// (GUEST_OS, GUEST_VERSION, XEN_VERSION, VIRT_BASE, PADDR_OFFSET, ENTRY,
/// HYPERCALL_PAGE, FEATURES, PAE_MODE, LOADER).
pub const LINUX_PV_NOTES: &[u32] = &[6, 7, 5, 3, 4, 1, 2, 10, 9, 8];

/// A stand-in kernel: an ELF64 x86-64 image with a `PT_LOAD` and a
/// `PT_NOTE` segment holding Xen notes of `note_types` (placed after
/// `size` bytes of deterministic filler, where vmlinux keeps its notes:
/// after `.text`). It passes nixboot's PV check when `note_types`
/// contains 1 (ENTRY); it is not a runnable kernel.
pub fn pv_elf(note_types: &[u32], size: usize) -> Vec<u8> {
    let mut notes = Vec::new();
    for t in note_types {
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&8u32.to_le_bytes());
        notes.extend_from_slice(&t.to_le_bytes());
        notes.extend_from_slice(b"Xen\0");
        notes.extend_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
    }
    let mut e = vec![0u8; 64 + 2 * 56];
    let put = |e: &mut Vec<u8>, at: usize, b: &[u8]| {
        if let Some(d) = e.get_mut(at..at.saturating_add(b.len())) {
            d.copy_from_slice(b);
        }
    };
    put(&mut e, 0, b"\x7fELF\x02\x01\x01");
    put(&mut e, 16, &2u16.to_le_bytes());
    put(&mut e, 18, &62u16.to_le_bytes());
    put(&mut e, 20, &1u32.to_le_bytes());
    put(&mut e, 24, &0xffff_ffff_8100_0000u64.to_le_bytes());
    put(&mut e, 32, &64u64.to_le_bytes());
    put(&mut e, 52, &64u16.to_le_bytes());
    put(&mut e, 54, &56u16.to_le_bytes());
    put(&mut e, 56, &2u16.to_le_bytes());
    put(&mut e, 64, &1u32.to_le_bytes());
    let note_off = size.max(e.len().saturating_add(4096));
    let note_off64 = u64::try_from(note_off).unwrap_or(u64::MAX);
    put(&mut e, 120, &4u32.to_le_bytes());
    put(&mut e, 128, &note_off64.to_le_bytes());
    put(&mut e, 152, &u64::try_from(notes.len()).unwrap_or(0).to_le_bytes());
    let mut x: u32 = 0x6e69_7862;
    while e.len() < note_off {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        e.push(x.to_le_bytes()[3]);
    }
    e.extend_from_slice(&notes);
    e
}
