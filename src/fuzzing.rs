//! Fuzz entry points, shared by the cargo-fuzz targets in `fuzz/` and by
//! the stable replay test (`tests/fuzz_replay.rs`) that runs every
//! committed seed and regression input under `cargo test`.
//!
//! Each function takes arbitrary bytes and must return without panicking,
//! aborting or hanging, whatever the bytes are; where a stage makes a
//! promise about its output (a command line has no control characters and
//! fits a PV guest, a result file splits into exactly its items) the entry
//! point asserts it, so a broken promise is a crash the fuzzer reports.
//! Not part of the API: hidden from the docs and subject to change.

use std::io;
use std::rc::Rc;

use crate::boot::{self, Mode, Request, Selection};
use crate::cmdline;
use crate::disk::BlockSource;
use crate::ipc::{self, Listing, Plan, Tag};
use crate::limits::{MAX_CMDLINE, MAX_PARTITIONS, MAX_RESULT_ITEM, MIB};
use crate::nixos::bootspec;
use crate::output::{self, BootResult, Format};
use crate::part::{self, gpt, mbr};

/// Separator between the fields of a structured input ([`cmdline`],
/// [`render`]): never part of valid UTF-8, so a field can hold any text.
pub const FIELD_SEP: u8 = 0xFF;

/// Kernel and initrd caps for [`disk`]: a sparse file on a small image can
/// claim any size up to the cap, and streaming hundreds of MiB of holes
/// would only slow the fuzzer down without reaching new code.
pub const FUZZ_MAX_FILE: u64 = 4 * MIB;

/// Partition discovery on a disk image: the candidates (with and without a
/// forced offset) and the MBR and GPT parsers on the raw sectors.
///
/// # Panics
///
/// If a candidate lies outside the disk or is empty, or there are more
/// than [`MAX_PARTITIONS`] of them (plus the bare filesystem).
pub fn partitions(data: &[u8]) {
    let img = data.to_vec();
    let len = BlockSource::len(&img);
    if let Ok(cands) = part::candidates(&img, None) {
        assert!(
            cands.len()
                <= MAX_PARTITIONS
                    .saturating_add(1)
                    .saturating_add(crate::limits::MAX_LVM_LVS),
            "{} candidates",
            cands.len()
        );
        for c in &cands {
            assert!(c.len > 0, "empty candidate {c:?}");
            let ranges = if c.ranges.is_empty() {
                vec![(c.offset, c.len)]
            } else {
                c.ranges.clone()
            };
            let mut sum = 0u64;
            for (o, n) in ranges {
                let end = o.checked_add(n).expect("candidate end overflows");
                assert!(end <= len, "candidate {c:?} beyond the {len}-byte disk");
                sum = sum.checked_add(n).expect("candidate length overflows");
            }
            assert_eq!(sum, c.len, "candidate {c:?}: ranges and length disagree");
            let _ = c.to_string();
            let _ = part::has_ext_magic(&img, c.offset);
        }
    }
    // A forced offset taken from the first 8 bytes (mostly out of range).
    let forced = data
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    if let Ok(cands) = part::candidates(&img, Some(forced)) {
        assert_eq!(cands.len(), 1);
        for c in &cands {
            assert!(c.offset == forced && c.len > 0 && c.offset.saturating_add(c.len) == len);
        }
    }
    if let Some(sector0) = data.get(..512) {
        let _ = mbr::parse_table(sector0);
        if let Some(p) = mbr::parse_primaries(sector0) {
            assert!(p.len() <= 4);
        }
    }
    if let Some(sector1) = data.get(512..1024)
        && let Ok(h) = gpt::parse_header(sector1, 1)
    {
        let bytes = usize::try_from(h.count)
            .unwrap_or(0)
            .saturating_mul(usize::try_from(h.entry_size).unwrap_or(0));
        let array = data.get(1024..).unwrap_or_default();
        let array = array.get(..bytes.min(array.len())).unwrap_or_default();
        if let Ok(parts) = gpt::parse_entries(array, &h, len) {
            assert!(parts.len() <= MAX_PARTITIONS);
        }
    }
}

fn request(mode: Mode) -> Request {
    Request {
        mode,
        offset: None,
        selection: Selection::Default,
        args: Some("console=hvc0".into()),
        max_kernel: FUZZ_MAX_FILE,
        max_initrd: FUZZ_MAX_FILE,
        send_data: true,
        known_pv: Vec::new(),
        cmdline_override: None,
        domain_type: None,
        unpack_kernel: false,
    }
}

/// A writer that checks the frames the parse child would send the way the
/// parent checks them, as they are written: every frame is well formed,
/// metadata deserializes and obeys its caps, and file data adds up to what
/// the plan announced. File data is counted, not kept.
#[derive(Default)]
struct FrameChecker {
    /// Header bytes of the frame being written.
    head: Vec<u8>,
    /// Tag and payload bytes still expected for the current frame.
    current: Option<(Tag, usize)>,
    /// Payload of a metadata frame.
    payload: Vec<u8>,
    plan: Option<Plan>,
    listing: Option<Listing>,
    kernel: u64,
    initrd: u64,
    done: bool,
    /// Size of the disk: runs must lie within it.
    disk_len: u64,
}

impl FrameChecker {
    fn frame_done(&mut self, tag: Tag) {
        let buf = std::mem::take(&mut self.payload);
        match tag {
            Tag::Plan => {
                assert!(self.plan.is_none(), "second plan");
                let p: Plan = serde_json::from_slice(&buf).expect("unreadable plan");
                cmdline::check_value("command line", &p.cmdline).expect("plan with a control character");
                assert!(p.cmdline.len() <= MAX_CMDLINE);
                assert!(p.kernel_len <= FUZZ_MAX_FILE);
                assert!(p.initrd.as_ref().is_none_or(|(_, l)| *l <= FUZZ_MAX_FILE));
                self.plan = Some(p);
            }
            Tag::Listing => {
                // One frame per generation.
                let g: crate::ipc::Listed = serde_json::from_slice(&buf).expect("unreadable listing");
                let mut l = self
                    .listing
                    .clone()
                    .unwrap_or_else(|| panic!("generation before the listing head"));
                l.generations = vec![g];
                let _ = crate::list::table(&l);
                let _ = crate::list::json(&l);
            }
            Tag::ListingHead => {
                assert!(self.listing.is_none(), "second listing head");
                let h: Listing = serde_json::from_slice(&buf).expect("unreadable listing head");
                assert!(h.generations.is_empty());
                self.listing = Some(h);
            }
            Tag::Failure => panic!("boot::run writes no failure frames"),
            Tag::Done => self.done = true,
            Tag::Kernel | Tag::Initrd => {}
            Tag::KernelRun | Tag::InitrdRun => {
                let r = ipc::Run::decode(&buf).expect("malformed run");
                if let Some(o) = r.disk_offset {
                    assert!(
                        o.checked_add(r.len).is_some_and(|e| e <= self.disk_len),
                        "run outside the disk"
                    );
                }
                let n = if tag == Tag::KernelRun {
                    &mut self.kernel
                } else {
                    &mut self.initrd
                };
                *n = n.saturating_add(r.len);
            }
        }
    }

    /// After a successful run: the stream ended with `Done` and the file
    /// data matches the plan.
    fn finish(&self) {
        assert!(self.done, "no Done frame after success");
        assert!(self.head.is_empty() && self.current.is_none(), "truncated frame");
        if let Some(p) = &self.plan {
            assert_eq!(self.kernel, p.kernel_len, "kernel bytes sent");
            assert_eq!(
                self.initrd,
                p.initrd.as_ref().map_or(0, |(_, l)| *l),
                "initrd bytes sent"
            );
        }
    }
}

impl io::Write for FrameChecker {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            assert!(!self.done, "frame after Done");
            let Some((tag, left)) = self.current else {
                let want = 5usize.saturating_sub(self.head.len());
                let (h, rest) = buf.split_at(want.min(buf.len()));
                self.head.extend_from_slice(h);
                buf = rest;
                if let Ok(head) = <[u8; 5]>::try_from(self.head.as_slice()) {
                    self.head.clear();
                    let (tag, len) = ipc::parse_header(head).expect("malformed frame header");
                    if len == 0 {
                        self.frame_done(tag);
                    } else {
                        self.current = Some((tag, len));
                    }
                }
                continue;
            };
            let (p, rest) = buf.split_at(left.min(buf.len()));
            buf = rest;
            let got = u64::try_from(p.len()).unwrap_or(u64::MAX);
            match tag {
                Tag::Kernel => self.kernel = self.kernel.saturating_add(got),
                Tag::Initrd => self.initrd = self.initrd.saturating_add(got),
                _ => self.payload.extend_from_slice(p),
            }
            let left = left.saturating_sub(p.len());
            if left == 0 {
                self.current = None;
                self.frame_done(tag);
            } else {
                self.current = Some((tag, left));
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The whole guest-side pipeline on a disk image: [`boot::run`] in Boot
/// mode (streaming the kernel and initrd) and in List mode, its frames
/// checked as the parent checks them. Errors are formatted as they would
/// be for the console.
///
/// # Panics
///
/// If a successful run writes frames the parent would reject.
pub fn disk(data: &[u8]) {
    let src: Rc<dyn BlockSource> = Rc::new(data.to_vec());
    for mode in [Mode::Boot, Mode::List] {
        let mut out = FrameChecker {
            disk_len: src.len(),
            ..Default::default()
        };
        match boot::run(src.clone(), &request(mode), &mut out) {
            Ok(()) => out.finish(),
            Err(e) => {
                let _ = e.to_string();
                let _ = e.message();
                let _ = e.fault();
            }
        }
    }
}

/// `boot.json` parsing.
///
/// # Panics
///
/// If a parsed document breaks the caps the parser promises.
pub fn bootspec(data: &[u8]) {
    if let Ok(b) = bootspec::parse(data) {
        assert!(b.v1.kernel_params.len() <= crate::limits::MAX_KERNEL_PARAMS);
        assert!(b.specialisations.len() <= crate::limits::MAX_SPECIALISATIONS);
    }
}

/// `--entry` parsing, GRUB's install-grub.pl titles included (nom).
/// Input: the value (invalid UTF-8 replaced).
///
/// # Panics
///
/// If a parsed number or name is not in the input, or a GRUB title's
/// parse does not agree with [`select::parse_entry`].
pub fn entry(data: &[u8]) {
    use crate::nixos::select::{self, EntrySpec};
    let s = String::from_utf8_lossy(data);
    let spec = select::parse_entry(&s);
    match &spec {
        EntrySpec::Generation(n) | EntrySpec::Specialisation(n, _) => {
            assert!(s.contains(&n.to_string()), "{n} not in {s:?}");
        }
        EntrySpec::Name(n) => assert_eq!(n.as_str(), s.as_ref()),
        EntrySpec::Default => assert!(s.starts_with("NixOS"), "{s:?}"),
        EntrySpec::DefaultSpecialisation(n) | EntrySpec::Profile(Some(n)) => {
            assert!(!n.is_empty() || matches!(spec, EntrySpec::Profile(_)), "{s:?}");
            assert!(s.contains(n.as_str()), "{n:?} not in {s:?}");
        }
        EntrySpec::Profile(None) => assert_eq!(s.as_ref(), "NixOS - All configurations"),
    }
    if let EntrySpec::Specialisation(_, name) = &spec {
        assert!(!name.is_empty() && s.contains(name.as_str()), "{name:?} in {s:?}");
    }
    if let Some(g) = select::grub_title(&s)
        && !matches!(spec, EntrySpec::Generation(_) | EntrySpec::Specialisation(..))
    {
        assert_eq!(g, spec, "{s:?}");
    }
}

/// Split `data` into a flags byte and [`FIELD_SEP`]-separated text fields
/// (invalid UTF-8 replaced).
fn fields(data: &[u8]) -> (u8, Vec<String>) {
    let (flags, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let fields = rest
        .split(|b| *b == FIELD_SEP)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    (flags, fields)
}

/// Command-line assembly. Input: a flags byte (bit 0: the first field is
/// `init`; bit 1: the last field is `--args`), then fields separated by
/// [`FIELD_SEP`]; the fields in between are kernel parameters.
///
/// # Panics
///
/// If [`cmdline::build`] accepts a line with a control character, longer
/// than [`MAX_CMDLINE`] bytes, or that does not hold its parts in order.
pub fn cmdline(data: &[u8]) {
    let (flags, mut f) = fields(data);
    let init = (flags & 1 != 0 && !f.is_empty()).then(|| f.remove(0));
    let extra = (flags & 2 != 0).then(|| f.pop()).flatten();
    let Ok(line) = cmdline::build(init.as_deref(), &f, extra.as_deref()) else {
        return;
    };
    assert!(!line.chars().any(char::is_control), "control character in {line:?}");
    assert!(line.len() <= MAX_CMDLINE, "{}-byte command line", line.len());
    if let Some(i) = &init {
        assert!(
            line.starts_with(&format!("init={i}")),
            "{line:?} does not start with init={i:?}"
        );
    }
    if let Some(x) = extra.as_deref().filter(|x| !x.trim().is_empty()) {
        assert!(line.ends_with(x), "{line:?} does not end with --args {x:?}");
    }
    for p in f.iter().filter(|p| !p.trim().is_empty()) {
        assert!(line.contains(p.as_str()), "{line:?} lacks {p:?}");
    }
}

/// Result rendering. Input: a flags byte (bit 0: there is a ramdisk), then
/// kernel, ramdisk (only with bit 0), args separated by [`FIELD_SEP`].
///
/// # Panics
///
/// If a rendered result does not split into exactly its items, an item is
/// 8192 bytes or more, sxp holds a control character, or a result that
/// could be represented is refused.
pub fn render(data: &[u8]) {
    let (flags, mut f) = fields(data);
    f.reverse();
    let kernel = f.pop().unwrap_or_default();
    let ramdisk = if flags & 1 != 0 { f.pop() } else { None };
    let args = f.pop().unwrap_or_default();
    let r = BootResult { kernel, ramdisk, args };
    let mut items = vec![format!("kernel {}", r.kernel)];
    if let Some(rd) = &r.ramdisk {
        items.push(format!("ramdisk {rd}"));
    }
    if !r.args.is_empty() {
        items.push(format!("args {}", r.args));
    }
    let representable = items
        .iter()
        .all(|i| i.len() <= MAX_RESULT_ITEM && !i.chars().any(char::is_control));
    for format in [Format::Simple0, Format::Simple, Format::Sxp] {
        let Ok(bytes) = output::render(&r, format) else {
            assert!(!representable, "{format:?} refused a representable result {r:?}");
            continue;
        };
        assert!(representable, "{format:?} rendered {r:?}");
        match format {
            Format::Simple0 | Format::Simple => {
                let sep = if format == Format::Simple0 { b'\0' } else { b'\n' };
                // Items, each followed by SEP, then one more SEP.
                let body = bytes
                    .strip_suffix(&[sep, sep])
                    .expect("result does not end with two separators");
                let got: Vec<&[u8]> = body.split(|b| *b == sep).collect();
                let want: Vec<&[u8]> = items.iter().map(|i| i.as_bytes()).collect();
                assert_eq!(got, want, "{format:?} items");
                assert!(got.iter().all(|i| i.len() < 8192));
            }
            Format::Sxp => {
                let s = String::from_utf8(bytes).expect("sxp is not UTF-8");
                assert!(!s.chars().any(char::is_control), "control character in {s:?}");
                assert!(s.starts_with("linux (kernel "));
            }
        }
    }
}

/// Operations [`ext4`] may make on one input.
pub const FUZZ_EXT4_OPS: u32 = 2000;

/// Both ext4 readers (nixboot's own and ext4-view) on a bare filesystem
/// image: neither may panic or run away, and wherever both answer the
/// same question they must give the same answer: a directory's entries
/// (name, kind, size, mtime), a symlink's target, a file's bytes; the disk
/// ranges the fast reader gives for a file must hold those bytes.
///
/// # Panics
///
/// If the readers disagree.
pub fn ext4(data: &[u8]) {
    use crate::disk::Window;
    use crate::fs::{Ext4Fs, GuestFs, Mount};
    let src: Rc<dyn BlockSource> = Rc::new(data.to_vec());
    let Some(w) = Window::new(src.clone(), 0, src.len()) else {
        return;
    };
    let fast = Ext4Fs::open(w.clone())
        .ok()
        .map(|f| GuestFs::new(Rc::new(f), Mount::Root));
    let view = Ext4Fs::open_with_ext4_view(w)
        .ok()
        .map(|f| GuestFs::new(Rc::new(f), Mount::Root));
    let mut budget = FUZZ_EXT4_OPS;
    ext4_walk(data, fast.as_ref(), view.as_ref(), b"/", 0, &mut budget);
}

fn ext4_walk(
    image: &[u8],
    fast: Option<&crate::fs::GuestFs>,
    view: Option<&crate::fs::GuestFs>,
    dir: &[u8],
    depth: u32,
    budget: &mut u32,
) {
    use crate::fs::Kind;
    if depth > 8 {
        return;
    }
    let list = |fs: Option<&crate::fs::GuestFs>| {
        fs.and_then(|fs| fs.list_dir_stat(dir, |_| true).ok()).map(|mut v| {
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.into_iter()
                .map(|e| (e.name, e.meta.kind(), e.meta.len(), e.meta.mtime()))
                .collect::<Vec<_>>()
        })
    };
    let (a, b) = (list(fast), list(view));
    if let (Some(a), Some(b)) = (&a, &b) {
        assert_eq!(a, b, "the readers list {} differently", crate::error::escape(dir));
    }
    let Some(entries) = a.or(b) else { return };
    for (name, kind, _, _) in entries {
        if *budget == 0 {
            return;
        }
        *budget = budget.saturating_sub(1);
        let mut p = dir.to_vec();
        if p != b"/" {
            p.push(b'/');
        }
        p.extend_from_slice(&name);
        match kind {
            Kind::Dir => ext4_walk(image, fast, view, &p, depth.saturating_add(1), budget),
            Kind::Symlink => {
                let t = |fs: Option<&crate::fs::GuestFs>| fs.and_then(|fs| fs.read_link(&p).ok());
                if let (Some(x), Some(y)) = (t(fast), t(view)) {
                    assert_eq!(x, y, "the readers see {} differently", crate::error::escape(&p));
                }
            }
            Kind::File => {
                let r = |fs: Option<&crate::fs::GuestFs>| fs.and_then(|fs| fs.read_small(&p, FUZZ_MAX_FILE).ok());
                let x = r(fast);
                if let (Some(x), Some(y)) = (&x, r(view)) {
                    assert!(*x == y, "the readers read {} differently", crate::error::escape(&p));
                }
                if let (Some(x), Some(Ok(Some((len, runs))))) = (&x, fast.map(|fs| fs.data_runs(&p, FUZZ_MAX_FILE))) {
                    assert_eq!(u64::try_from(x.len()).ok(), Some(len));
                    let mut again = Vec::with_capacity(x.len());
                    for r in runs {
                        let n = usize::try_from(r.len).unwrap_or(usize::MAX);
                        match r.disk_offset {
                            Some(o) => {
                                let o = usize::try_from(o).unwrap_or(usize::MAX);
                                let src = image.get(o..o.saturating_add(n)).expect("a run outside the image");
                                again.extend_from_slice(src);
                            }
                            None => again.resize(again.len().saturating_add(n), 0),
                        }
                    }
                    assert!(
                        again == *x,
                        "the runs of {} do not hold its bytes",
                        crate::error::escape(&p)
                    );
                }
            }
            Kind::Special => {}
        }
    }
}

/// A disk image holding one LVM2 physical volume (label in sector 1, a
/// metadata area at 4 KiB with `text` in it, 60 KiB or as large as the
/// text needs, checksums right, PV uuid [`LVM_PV_UUID`]), `len` bytes long
/// (or as long as the area needs). The text says where the extents are. For tests and the `lvm` fuzz target: it lets crafted metadata
/// reach the text parser past the checksums.
pub fn lvm_image(text: &[u8], len: usize) -> Vec<u8> {
    use crate::part::lvm::crc;
    const SEED: u32 = 0xF597_A6CF;
    // The area grows with the text (the hostile tests need big ones).
    let mda_size = text.len().saturating_add(1024).next_multiple_of(4096).max(60 * 1024);
    let mut img = vec![0u8; len.max(mda_size.saturating_add(4096))];
    let put = |img: &mut Vec<u8>, at: usize, b: &[u8]| {
        if let Some(d) = img.get_mut(at..at.saturating_add(b.len())) {
            d.copy_from_slice(b);
        }
    };
    let mda = 4096usize;
    // PV header at 512 + 32.
    let mut h = Vec::new();
    h.extend_from_slice(LVM_PV_UUID.as_bytes());
    h.extend_from_slice(&u64::try_from(img.len()).unwrap_or(0).to_le_bytes());
    let mda_size64 = u64::try_from(mda_size).unwrap_or(0);
    for v in [4096 + mda_size64, 0, 0, 0, 4096, mda_size64, 0, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    put(&mut img, 512 + 32, &h);
    put(&mut img, 512, b"LABELONE");
    put(&mut img, 512 + 8, &1u64.to_le_bytes());
    put(&mut img, 512 + 20, &32u32.to_le_bytes());
    put(&mut img, 512 + 24, b"LVM2 001");
    let c = crc(SEED, img.get(512 + 20..1024).unwrap_or_default());
    put(&mut img, 512 + 16, &c.to_le_bytes());
    // The text, capped to the ring.
    let text = text.get(..text.len().min(mda_size - 512)).unwrap_or_default();
    put(&mut img, mda + 512, text);
    put(&mut img, mda + 4, b" LVM2 x[5A%r0N*>");
    put(&mut img, mda + 20, &1u32.to_le_bytes());
    put(&mut img, mda + 24, &4096u64.to_le_bytes());
    put(&mut img, mda + 32, &u64::try_from(mda_size).unwrap_or(0).to_le_bytes());
    put(&mut img, mda + 40, &512u64.to_le_bytes());
    put(
        &mut img,
        mda + 48,
        &u64::try_from(text.len()).unwrap_or(0).to_le_bytes(),
    );
    put(&mut img, mda + 56, &crc(SEED, text).to_le_bytes());
    let c = crc(SEED, img.get(mda + 4..mda + 512).unwrap_or_default());
    put(&mut img, mda, &c.to_le_bytes());
    img
}

/// The PV uuid [`lvm_image`] writes.
pub const LVM_PV_UUID: &str = "0123456789abcdefghijABCDEFGHIJkl";

/// LVM2 on a disk image. The first byte picks the mode: even, the rest
/// is a disk image; odd, the rest is metadata text wrapped by
/// [`lvm_image`] into a valid PV (so the text and the LV mapping are
/// reached past the checksums). Then the text grammar on the same bytes,
/// and the partition scan.
///
/// # Panics
///
/// If a candidate's ranges leave the disk or do not add up to its length,
/// a window cannot read its first and last byte, or a cap is exceeded.
pub fn lvm(data: &[u8]) {
    use crate::limits::{MAX_LVM_LVS, MAX_LVM_SEGMENTS};
    use crate::part::lvm;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let img = if mode & 1 == 1 {
        let _ = lvm::text::parse(&String::from_utf8_lossy(rest));
        let _ = lvm::parse_metadata(rest);
        lvm_image(rest, 256 * 1024)
    } else {
        rest.to_vec()
    };
    for (s, sec) in (0u64..4).zip(img.chunks_exact(512)) {
        let _ = lvm::parse_label(sec, s);
    }
    let len = BlockSource::len(&img);
    let src: Rc<dyn BlockSource> = Rc::new(img);
    let Ok(scan) = part::scan(src.as_ref(), None) else {
        return;
    };
    assert!(scan.candidates.len() <= MAX_PARTITIONS.saturating_add(1).saturating_add(MAX_LVM_LVS));
    for c in &scan.candidates {
        let _ = c.to_string();
        assert!(c.ranges.len() <= MAX_LVM_SEGMENTS, "{} ranges", c.ranges.len());
        if !c.ranges.is_empty() {
            let mut sum = 0u64;
            for &(o, n) in &c.ranges {
                assert!(
                    o.checked_add(n).is_some_and(|e| e <= len),
                    "range {o}+{n} beyond the disk"
                );
                sum = sum.checked_add(n).expect("ranges overflow");
            }
            assert_eq!(sum, c.len);
        }
        let w = c.window(src.clone()).expect("a candidate without a window");
        assert_eq!(w.len(), c.len);
        let mut b = [0u8; 1];
        if c.len > 0 {
            w.read_exact_at(0, &mut b).expect("first byte");
            w.read_exact_at(c.len.saturating_sub(1), &mut b).expect("last byte");
        }
        assert!(w.read_exact_at(c.len, &mut b).is_err());
    }
    for u in &scan.unusable {
        let s = u.to_string();
        assert!(!s.contains('\n'), "multi-line diagnostic {s:?}");
    }
}
