//! The kernel-format check on real kernels: Debian's Xen-capable
//! `linux-image-amd64` bzImage (xz payload) must pass as PV and PVH, and the same bytes
//! with their Xen notes renamed must not.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::time::Instant;

use nixboot::kernel::{KernelError, Verdict, XenMode, check};

fn debian_kernel() -> Option<std::path::PathBuf> {
    let mut ks: Vec<_> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-amd64"))
        })
        .collect();
    ks.sort();
    ks.pop()
}

fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") || std::env::var_os("NIXBOOT_REQUIRE_TOOLS").is_some() {
        panic!("required test prerequisite missing: {why}");
    }
    eprintln!("skipped: {why}");
}

#[test]
fn debian_kernel_is_xen_pv() {
    let Some(k) = debian_kernel() else {
        return skip("no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)");
    };
    let len = std::fs::metadata(&k).unwrap().len();
    let t = Instant::now();
    let v = check(File::open(&k).unwrap(), len, |off| {
        let mut f = File::open(&k)?;
        f.seek(SeekFrom::Start(off))?;
        Ok(f)
    });
    eprintln!("{}: {:?} in {:?}", k.display(), v, t.elapsed());
    // Debian builds CONFIG_XEN_PV and CONFIG_XEN_PVH.
    assert_eq!(v, Ok(Verdict::Xen(vec![XenMode::Pv, XenMode::Pvh])));
}

#[test]
fn garbage_and_truncated_kernels_are_refused() {
    let Some(k) = debian_kernel() else {
        return skip("no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)");
    };
    let bytes = std::fs::read(&k).unwrap();
    let run = |b: &[u8]| check(b, b.len() as u64, |off| Ok(&b[off as usize..]));
    // Cut inside the payload: the payload now lies outside the file.
    assert_eq!(run(&bytes[..bytes.len() / 2]), Err(KernelError::PayloadOutside));
    // The initrd or a text file is no kernel.
    assert_eq!(run(b"#!/bin/sh\necho not a kernel\n"), Err(KernelError::UnknownFormat));
    // Corrupt the compressed stream right after its header.
    let mut broken = bytes.clone();
    let setup = (usize::from(broken[0x1f1]) + 1) * 512;
    let po = u32::from_le_bytes(broken[0x248..0x24c].try_into().unwrap()) as usize;
    for b in &mut broken[setup + po + 16..setup + po + 4096] {
        *b ^= 0x5a;
    }
    assert!(
        matches!(run(&broken), Err(KernelError::Decompress(..))),
        "{:?}",
        run(&broken)
    );
}
