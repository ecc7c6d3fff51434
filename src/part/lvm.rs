//! LVM2 physical volumes: the label, the metadata area and the volume
//! group's text metadata, mapped to one [`Candidate`] per linear logical
//! volume. Guest data, read only through [`BlockSource`], capped.
//!
//! On disk (all integers little-endian; "crc" is LVM's CRC-32: reflected
//! polynomial 0xEDB88320, seed 0xF597A6CF, no final inversion):
//!
//! * The **label** sits at the start of one of the first four 512-byte
//!   sectors of the volume: `LABELONE`, the sector's own number (u64), a
//!   crc of the sector's bytes 20..512 (u32), the offset of the PV header
//!   in the sector (u32), `LVM2 001`.
//! * The **PV header**: the PV's 32-character uuid, its size, then two
//!   zero-terminated lists of `(offset, size)` byte ranges: data areas,
//!   then metadata areas.
//! * Each **metadata area** starts with a 512-byte `mda_header`: crc of
//!   bytes 4..512, the magic ` LVM2 x[5A%r0N*>`, version 1, the area's own
//!   start and size, then `raw_locn`s (offset in the area, size, crc of the
//!   text, flags). The text lives in a circular buffer after the header:
//!   when it runs past the area's end it continues right after the header.
//! * The **text** ([`text`], parsed with nom) names the VG, its extent
//!   size, its PVs (`pv0 { id = …, pe_start = … }`) and its LVs, each a
//!   list of segments (`start_extent`, `extent_count`, `type`,
//!   `stripe_count`, `stripes = ["pv0", first_pe]`).
//!
//! Only **linear** LVs are mapped: every segment `striped` with one stripe,
//! on a PV this disk holds. Their extents become the disk ranges of a
//! [`crate::disk::Window`] (an LV need not be contiguous). Hidden LVs
//! (components of pools, mirrors and snapshots) are skipped; every other
//! LV, and every damaged PV, becomes an [`Unusable`] with the reason,
//! named in the diagnostics but never fatal for the other candidates.
//!
//! What it must not do: allocate from an unchecked size or count (metadata
//! is read only after its size is checked against [`MAX_LVM_METADATA`];
//! LVs, segments and VGs are counted against their caps as they are met),
//! read outside the PV that holds a structure, or recurse without a bound.

pub mod text;

use std::collections::HashMap;

use self::text::{Section, TextError, Value};
use super::{Candidate, PartError, SECTOR, Source, read_vec};
use crate::bytes::{le32, le64};
use crate::disk::BlockSource;
use crate::limits::{MAX_LVM_LVS, MAX_LVM_METADATA, MAX_LVM_PVS, MAX_LVM_SEGMENTS, MAX_LVM_VGS};

/// GPT partition type of an LVM physical volume.
pub const GPT_TYPE: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

/// MBR partition type of an LVM physical volume.
pub const MBR_TYPE: u8 = 0x8E;

const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// Sectors searched for the label.
const LABEL_SCAN_SECTORS: u64 = 4;
const INITIAL_CRC: u32 = 0xF597_A6CF;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_HEADER_SIZE: u64 = 512;
/// `raw_locn` flag: this metadata area is ignored (`pvchange --metadataignore`).
const RAW_LOCN_IGNORED: u32 = 1;
/// Length of a PV uuid without its dashes.
const ID_LEN: usize = 32;

/// Why a physical or logical volume cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LvmError {
    /// A read failed.
    #[error("{0}")]
    Read(String),
    /// The label sector is damaged.
    #[error("LVM label in sector {sector}: {why}")]
    Label {
        /// Sector of the volume.
        sector: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The label checksum does not match.
    #[error("LVM label in sector {sector}: checksum 0x{stored:08x}, computed 0x{computed:08x}")]
    LabelCrc {
        /// Sector of the volume.
        sector: u64,
        /// Stored crc.
        stored: u32,
        /// Computed crc.
        computed: u32,
    },
    /// The PV header is damaged.
    #[error("LVM physical volume header: {0}")]
    PvHeader(&'static str),
    /// A metadata area header is damaged.
    #[error("LVM metadata area at byte {offset} of the volume: {why}")]
    Mda {
        /// Offset of the area in the PV.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The metadata is larger than the cap.
    #[error("LVM metadata of {size} bytes exceeds the {max}-byte limit")]
    MetadataTooLarge {
        /// Claimed size.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// The metadata text's checksum does not match.
    #[error("LVM metadata at byte {offset} of the volume: checksum 0x{stored:08x}, computed 0x{computed:08x}")]
    MetadataCrc {
        /// Offset of the area in the PV.
        offset: u64,
        /// Stored crc.
        stored: u32,
        /// Computed crc.
        computed: u32,
    },
    /// The PV has no usable metadata and no other PV describes its VG.
    #[error("LVM physical volume {0} carries no metadata and no volume group on this disk lists it")]
    NoMetadata(String),
    /// The text is not LVM metadata.
    #[error("LVM metadata: {0}")]
    Text(#[from] TextError),
    /// The text parses but lacks or garbles something.
    #[error("LVM metadata: {0}")]
    Metadata(String),
    /// A cap was hit.
    #[error("LVM: more than {max} {what}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The cap.
        max: usize,
    },
    /// A segment of a type other than linear.
    #[error("segment {segment} is of type {segtype:?}; only linear logical volumes can be read")]
    Unsupported {
        /// Segment number (1-based, as in the metadata).
        segment: usize,
        /// The segment type, as written.
        segtype: String,
    },
    /// A striped segment.
    #[error("segment {segment} is of type \"striped\" with {stripes} stripes; only linear logical volumes can be read")]
    Striped {
        /// Segment number.
        segment: usize,
        /// Its stripe count.
        stripes: i64,
    },
    /// A segment on a PV this disk does not hold.
    #[error("segment {segment} lies on physical volume {pv} ({id}), which is not on this disk")]
    MissingPv {
        /// Segment number.
        segment: usize,
        /// The PV's name in the metadata.
        pv: String,
        /// Its uuid.
        id: String,
    },
}

impl From<PartError> for LvmError {
    fn from(e: PartError) -> Self {
        LvmError::Read(e.to_string())
    }
}

/// A volume that cannot be used, and why: kept for the diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    /// What it is (`LVM logical volume vg0/thin (on MBR partition 2)`).
    pub what: String,
    /// Why it cannot be used.
    pub error: LvmError,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.error)
    }
}

/// LVM's CRC-32 (the standard reflected polynomial, LVM's seed, no
/// inversions), nibble-wise as lvm2 computes it.
pub fn crc(seed: u32, data: &[u8]) -> u32 {
    const TAB: [u32; 16] = [
        0x0000_0000,
        0x1DB7_1064,
        0x3B6E_20C8,
        0x26D9_30AC,
        0x76DC_4190,
        0x6B6B_51F4,
        0x4DB2_6158,
        0x5005_713C,
        0xEDB8_8320,
        0xF00F_9344,
        0xD6D6_A3E8,
        0xCB61_B38C,
        0x9B64_C2B0,
        0x86D3_D2D4,
        0xA00A_E278,
        0xBDBD_F21C,
    ];
    let step = |c: u32, nibble: u32| {
        let i = usize::try_from((c ^ nibble) & 0xF).unwrap_or(0);
        (c >> 4) ^ TAB.get(i).copied().unwrap_or(0)
    };
    data.iter()
        .fold(seed, |c, &b| step(step(c, u32::from(b)), u32::from(b >> 4)))
}

/// A PV's label and header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// Sector of the volume the label is in.
    pub sector: u64,
    /// PV uuid, 32 characters, no dashes.
    pub uuid: String,
    /// Metadata areas: `(offset, size)` in bytes from the start of the PV.
    pub mdas: Vec<(u64, u64)>,
}

/// Parse a label sector (the 512 bytes of sector `sector`). `Ok(None)`
/// when it does not start with `LABELONE`.
pub fn parse_label(sec: &[u8], sector: u64) -> Result<Option<Label>, LvmError> {
    let bad = |why| LvmError::Label { sector, why };
    if sec.get(..8) != Some(LABEL_ID.as_slice()) {
        return Ok(None);
    }
    if sec.len() != 512 {
        return Err(bad("short sector"));
    }
    if le64(sec, 8) != Some(sector) {
        return Err(bad("records another sector number"));
    }
    let stored = le32(sec, 16).ok_or(bad("short sector"))?;
    let computed = crc(INITIAL_CRC, sec.get(20..).unwrap_or_default());
    if stored != computed {
        return Err(LvmError::LabelCrc {
            sector,
            stored,
            computed,
        });
    }
    if sec.get(24..32) != Some(LABEL_TYPE.as_slice()) {
        return Err(bad("not an LVM2 label"));
    }
    let at = le32(sec, 20)
        .and_then(|o| usize::try_from(o).ok())
        .ok_or(bad("short sector"))?;
    let hdr = sec
        .get(at..)
        .filter(|h| at >= 32 && h.len() >= ID_LEN.saturating_add(8))
        .ok_or(LvmError::PvHeader("offset outside the label sector"))?;
    let uuid = hdr.get(..ID_LEN).unwrap_or_default();
    if !uuid.iter().all(u8::is_ascii_alphanumeric) {
        return Err(LvmError::PvHeader("uuid is not alphanumeric"));
    }
    let uuid = String::from_utf8_lossy(uuid).into_owned();
    // Two zero-terminated lists of 16-byte (offset, size) entries; the
    // sector bounds them (at most 29 entries).
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    let mut pos = ID_LEN.saturating_add(8);
    for list in &mut lists {
        loop {
            let (Some(offset), Some(size)) = (le64(hdr, pos), le64(hdr, pos.saturating_add(8))) else {
                return Err(LvmError::PvHeader("area list runs past the label sector"));
            };
            pos = pos.saturating_add(16);
            if offset == 0 {
                break;
            }
            list.push((offset, size));
        }
    }
    let [_data, mdas] = lists;
    Ok(Some(Label { sector, uuid, mdas }))
}

/// Look for a label in the first four sectors of the `len` bytes at
/// `base`.
pub fn probe(src: &dyn BlockSource, base: u64, len: u64) -> Result<Option<Label>, LvmError> {
    for s in 0..LABEL_SCAN_SECTORS {
        let off = s.saturating_mul(SECTOR);
        if off.saturating_add(SECTOR) > len {
            break;
        }
        let Some(abs) = base.checked_add(off) else { break };
        let sec = read_vec(src, abs, 512)?;
        if let Some(l) = parse_label(&sec, s)? {
            return Ok(Some(l));
        }
    }
    Ok(None)
}

/// The metadata text of the area `(offset, size)` of the PV at `base`
/// (`len` bytes); `Ok(None)` when the area holds none (empty or ignored).
pub fn read_mda(
    src: &dyn BlockSource,
    base: u64,
    len: u64,
    (offset, size): (u64, u64),
) -> Result<Option<Vec<u8>>, LvmError> {
    let bad = |why| LvmError::Mda { offset, why };
    if size < MDA_HEADER_SIZE.saturating_mul(2) || offset.checked_add(size).is_none_or(|e| e > len) {
        return Err(bad("lies outside the volume or is too small"));
    }
    let area = base.checked_add(offset).ok_or(bad("lies outside the volume"))?;
    let h = read_vec(src, area, 512)?;
    let stored = le32(&h, 0).unwrap_or_default();
    if h.get(4..20) != Some(MDA_MAGIC.as_slice()) {
        return Err(bad("bad magic"));
    }
    let computed = crc(INITIAL_CRC, h.get(4..).unwrap_or_default());
    if stored != computed {
        return Err(bad("header checksum mismatch"));
    }
    if le32(&h, 20) != Some(1) {
        return Err(bad("unknown version"));
    }
    if le64(&h, 24) != Some(offset) || le64(&h, 32) != Some(size) {
        return Err(bad("header does not describe its own area"));
    }
    // The first raw_locn is the committed metadata.
    let (r_off, r_size) = (le64(&h, 40).unwrap_or(0), le64(&h, 48).unwrap_or(0));
    let (r_crc, r_flags) = (le32(&h, 56).unwrap_or(0), le32(&h, 60).unwrap_or(0));
    if r_off == 0 || r_flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    if r_size > MAX_LVM_METADATA {
        return Err(LvmError::MetadataTooLarge {
            size: r_size,
            max: MAX_LVM_METADATA,
        });
    }
    let ring = size.saturating_sub(MDA_HEADER_SIZE);
    if r_off < MDA_HEADER_SIZE || r_off >= size || r_size > ring || r_size == 0 {
        return Err(bad("metadata location outside the area"));
    }
    // Circular buffer: the part up to the area's end, then the rest
    // right after the header.
    let first = r_size.min(size.saturating_sub(r_off));
    let wrapped = r_size.saturating_sub(first);
    let to_usize = |n: u64| usize::try_from(n).map_err(|_| bad("metadata too large"));
    let mut text = read_vec(src, area.saturating_add(r_off), to_usize(first)?)?;
    if wrapped > 0 {
        text.extend(read_vec(src, area.saturating_add(MDA_HEADER_SIZE), to_usize(wrapped)?)?);
    }
    let computed = crc(INITIAL_CRC, &text);
    if computed != r_crc {
        return Err(LvmError::MetadataCrc {
            offset,
            stored: r_crc,
            computed,
        });
    }
    Ok(Some(text))
}

/// One segment of a linear LV: `count` extents from LV extent `start`,
/// at extent `pe` of the PV named `pv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First LV extent.
    pub start: u64,
    /// Extents.
    pub count: u64,
    /// PV name in the metadata (`pv0`).
    pub pv: String,
    /// First extent on that PV.
    pub pe: u64,
}

/// A logical volume as the metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lv {
    /// Its name.
    pub name: String,
    /// Its segments in LV order, or why it is not linear.
    pub segments: Result<Vec<Segment>, LvmError>,
}

/// A PV as the VG metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvDesc {
    /// Name in the metadata (`pv0`).
    pub name: String,
    /// Uuid without dashes.
    pub uuid: String,
    /// Where its first extent starts, in bytes from the PV's start.
    pub pe_start: u64,
    /// Its extent count.
    pub pe_count: u64,
}

/// A volume group: what nixboot needs of its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vg {
    /// Its name.
    pub name: String,
    /// Its uuid (as written, with dashes).
    pub id: String,
    /// Metadata sequence number: the highest copy wins.
    pub seqno: u64,
    /// Extent size in bytes.
    pub extent: u64,
    /// Its PVs.
    pub pvs: Vec<PvDesc>,
    /// Its visible LVs.
    pub lvs: Vec<Lv>,
}

fn meta(msg: String) -> LvmError {
    LvmError::Metadata(msg)
}

/// A non-negative integer setting.
fn uint(s: &Section, key: &str, within: &str) -> Result<u64, LvmError> {
    match s.int(key) {
        Some(n) => u64::try_from(n).map_err(|_| meta(format!("{within}: {key} is negative"))),
        None => Err(meta(format!("{within}: no integer {key}"))),
    }
}

/// LVM's name rule: `[A-Za-z0-9+_.-]`, not starting with `-`, not `.`
/// or `..`, at most 127 bytes. The grammar already allows nothing else.
fn check_name(name: &str, what: &str) -> Result<(), LvmError> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(meta(format!("invalid {what} name")))
    }
}

/// Interpret a parsed metadata text.
pub fn parse_vg(top: &Section) -> Result<Vg, LvmError> {
    let mut vgs = top.sections();
    let (name, vg) = vgs.next().ok_or_else(|| meta("no volume group section".into()))?;
    if vgs.next().is_some() {
        return Err(meta("more than one volume group section".into()));
    }
    check_name(name, "volume group")?;
    let id = vg
        .str("id")
        .ok_or_else(|| meta(format!("volume group {name}: no id")))?;
    let seqno = uint(vg, "seqno", name)?;
    let extent_sectors = uint(vg, "extent_size", name)?;
    let extent = extent_sectors
        .checked_mul(SECTOR)
        .filter(|e| *e > 0)
        .ok_or_else(|| meta(format!("volume group {name}: bad extent_size {extent_sectors}")))?;
    let mut pvs = Vec::new();
    let pv_sec = vg
        .section("physical_volumes")
        .ok_or_else(|| meta(format!("volume group {name}: no physical_volumes")))?;
    for (pv, s) in pv_sec.sections() {
        let within = format!("physical volume {pv}");
        let uuid: String = s
            .str("id")
            .ok_or_else(|| meta(format!("{within}: no id")))?
            .chars()
            .filter(|c| *c != '-')
            .collect();
        let pe_start = uint(s, "pe_start", &within)?
            .checked_mul(SECTOR)
            .ok_or_else(|| meta(format!("{within}: pe_start overflows")))?;
        pvs.push(PvDesc {
            name: pv.to_owned(),
            uuid,
            pe_start,
            pe_count: uint(s, "pe_count", &within)?,
        });
    }
    let mut lvs = Vec::new();
    let mut segments_seen = 0usize;
    if let Some(lv_sec) = vg.section("logical_volumes") {
        for (lv, s) in lv_sec.sections() {
            let visible = matches!(s.get("status"), Some(Value::Array(a)) if a.contains(&Value::Str("VISIBLE".into())));
            if !visible {
                // A component of a pool, mirror, raid or snapshot.
                continue;
            }
            if lvs.len() >= MAX_LVM_LVS {
                return Err(LvmError::TooMany {
                    what: "logical volumes",
                    max: MAX_LVM_LVS,
                });
            }
            check_name(lv, "logical volume")?;
            lvs.push(Lv {
                name: lv.to_owned(),
                segments: parse_segments(s, &mut segments_seen),
            });
            if segments_seen > MAX_LVM_SEGMENTS {
                return Err(LvmError::TooMany {
                    what: "segments in a volume group",
                    max: MAX_LVM_SEGMENTS,
                });
            }
        }
    }
    Ok(Vg {
        name: name.to_owned(),
        id: id.to_owned(),
        seqno,
        extent,
        pvs,
        lvs,
    })
}

/// The segments of one LV, checked to be linear and to cover its extents
/// from 0 without gaps or overlaps.
fn parse_segments(lv: &Section, seen: &mut usize) -> Result<Vec<Segment>, LvmError> {
    let claimed = lv.int("segment_count").unwrap_or(0);
    if usize::try_from(claimed).map_or(true, |c| c > MAX_LVM_SEGMENTS) {
        return Err(LvmError::TooMany {
            what: "segments in a logical volume",
            max: MAX_LVM_SEGMENTS,
        });
    }
    let mut segs: Vec<Segment> = Vec::new();
    for (n, (key, s)) in (1usize..).zip(lv.sections().filter(|(k, _)| k.starts_with("segment"))) {
        *seen = seen.saturating_add(1);
        if *seen > MAX_LVM_SEGMENTS {
            return Err(LvmError::TooMany {
                what: "segments in a volume group",
                max: MAX_LVM_SEGMENTS,
            });
        }
        let segtype = s.str("type").unwrap_or("");
        if segtype != "striped" && segtype != "linear" {
            return Err(LvmError::Unsupported {
                segment: n,
                segtype: segtype.to_owned(),
            });
        }
        let stripes = s.int("stripe_count").unwrap_or(1);
        if stripes != 1 {
            return Err(LvmError::Striped { segment: n, stripes });
        }
        let (pv, pe) = match s.get("stripes") {
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::Str(pv), Value::Int(pe)] => (pv.clone(), u64::try_from(*pe).ok()),
                _ => (String::new(), None),
            },
            _ => (String::new(), None),
        };
        let pe = pe.ok_or_else(|| meta(format!("{key}: stripes is not [\"pvN\", extent]")))?;
        segs.push(Segment {
            start: uint(s, "start_extent", key)?,
            count: uint(s, "extent_count", key)?,
            pv,
            pe,
        });
    }
    if segs.is_empty() {
        return Err(meta("logical volume has no segments".into()));
    }
    if usize::try_from(claimed).ok() != Some(segs.len()) {
        return Err(meta(format!(
            "segment_count {claimed} but {} segments are listed",
            segs.len()
        )));
    }
    segs.sort_by_key(|s| s.start);
    let mut next = 0u64;
    for s in &segs {
        if s.start != next || s.count == 0 {
            return Err(meta(format!("segments leave a gap or overlap at extent {next}")));
        }
        next = next
            .checked_add(s.count)
            .ok_or_else(|| meta("extent count overflows".into()))?;
    }
    Ok(segs)
}

/// Parse and interpret a metadata text.
pub fn parse_metadata(text: &[u8]) -> Result<Vg, LvmError> {
    let s = String::from_utf8_lossy(text);
    parse_vg(&text::parse(&s)?)
}

/// A labelled volume found on the disk.
struct FoundPv {
    /// Index into the places.
    place: usize,
    label: Label,
}

/// The short name of a place, for "(on …)".
pub(crate) fn place_name(s: &Source) -> String {
    match s {
        Source::Bare => "whole disk".into(),
        Source::Mbr { number, .. } => format!("MBR partition {number}"),
        Source::Gpt { number } => format!("GPT partition {number}"),
        Source::Offset => "forced offset".into(),
        Source::Lvm { vg, lv, .. } => format!("LVM logical volume {vg}/{lv}"),
    }
}

/// Replace every LVM physical volume among `places` by the linear logical
/// volumes it holds. `places` lists the disk's ranges in the order they
/// are tried (a whole-disk place first, marked by `whole_disk`: it is
/// kept only if it is no PV). Returns the candidates, in that order, and
/// the volumes that cannot be used.
pub fn expand(src: &dyn BlockSource, places: Vec<Candidate>, whole_disk: bool) -> (Vec<Candidate>, Vec<Unusable>) {
    let mut unusable = Vec::new();
    let mut found: Vec<FoundPv> = Vec::new();
    let mut is_pv = vec![false; places.len()];
    for (i, p) in places.iter().enumerate() {
        let what = || format!("LVM physical volume on {}", place_name(&p.source));
        match probe(src, p.offset, p.len) {
            Ok(Some(label)) => {
                if let Some(flag) = is_pv.get_mut(i) {
                    *flag = true;
                }
                if found.len() >= MAX_LVM_PVS {
                    unusable.push(Unusable {
                        what: what(),
                        error: LvmError::TooMany {
                            what: "physical volumes on one disk",
                            max: MAX_LVM_PVS,
                        },
                    });
                    continue;
                }
                found.push(FoundPv { place: i, label });
            }
            Ok(None) => {
                let typed = matches!(p.source, Source::Mbr { sys: MBR_TYPE, .. });
                if typed {
                    log::info!("{} has the LVM type but no LVM label", place_name(&p.source));
                }
            }
            Err(e) => {
                if let Some(flag) = is_pv.get_mut(i) {
                    *flag = true;
                }
                unusable.push(Unusable { what: what(), error: e });
            }
        }
    }
    // The newest metadata of each VG, and the first place that carries it.
    let mut vgs: Vec<(Vg, usize)> = Vec::new();
    let mut described: Vec<bool> = vec![false; found.len()];
    for (k, pv) in found.iter().enumerate() {
        let Some(p) = places.get(pv.place) else { continue };
        let what = || format!("LVM physical volume on {}", place_name(&p.source));
        let mut text = None;
        let mut last_err = None;
        for &mda in &pv.label.mdas {
            match read_mda(src, p.offset, p.len, mda) {
                Ok(Some(t)) => {
                    text = Some(t);
                    break;
                }
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        let vg = match (text, last_err) {
            (Some(t), _) => parse_metadata(&t),
            (None, Some(e)) => Err(e),
            (None, None) => continue, // no metadata copy; another PV may describe it
        };
        if vg.is_err()
            && let Some(flag) = described.get_mut(k)
        {
            // Its own error says enough.
            *flag = true;
        }
        match vg {
            Ok(vg) => match vgs.iter().position(|(v, _)| v.id == vg.id) {
                Some(k) => {
                    if let Some((old, _)) = vgs.get_mut(k)
                        && vg.seqno > old.seqno
                    {
                        *old = vg;
                    }
                }
                None if vgs.len() >= MAX_LVM_VGS => unusable.push(Unusable {
                    what: what(),
                    error: LvmError::TooMany {
                        what: "volume groups on one disk",
                        max: MAX_LVM_VGS,
                    },
                }),
                None => vgs.push((vg, pv.place)),
            },
            Err(e) => unusable.push(Unusable { what: what(), error: e }),
        }
    }
    // Map each VG's LVs; they are tried where the VG's first PV was.
    let by_uuid: HashMap<&str, usize> = found
        .iter()
        .enumerate()
        .map(|(k, pv)| (pv.label.uuid.as_str(), k))
        .collect();
    let mut lvs_at: Vec<Vec<Candidate>> = vec![Vec::new(); places.len()];
    let mut lv_total = 0usize;
    for (vg, first) in &vgs {
        for d in &vg.pvs {
            if let Some(&k) = by_uuid.get(d.uuid.as_str())
                && let Some(flag) = described.get_mut(k)
            {
                *flag = true;
            }
        }
        for lv in &vg.lvs {
            let on = lv
                .segments
                .as_ref()
                .ok()
                .and_then(|s| s.first())
                .and_then(|s| vg.pvs.iter().find(|d| d.name == s.pv))
                .and_then(|d| by_uuid.get(d.uuid.as_str()))
                .and_then(|&k| found.get(k))
                .and_then(|pv| places.get(pv.place))
                .map_or_else(
                    || places.get(*first).map(|p| p.source.clone()).unwrap_or(Source::Bare),
                    |p| p.source.clone(),
                );
            let source = Source::Lvm {
                vg: vg.name.clone(),
                lv: lv.name.clone(),
                on: Box::new(on),
            };
            lv_total = lv_total.saturating_add(1);
            let what = Candidate {
                source: source.clone(),
                offset: 0,
                len: 0,
                ranges: Vec::new(),
            }
            .to_string();
            if lv_total > MAX_LVM_LVS {
                unusable.push(Unusable {
                    what,
                    error: LvmError::TooMany {
                        what: "logical volumes on one disk",
                        max: MAX_LVM_LVS,
                    },
                });
                break;
            }
            match map_lv(vg, lv, &found, &places, &by_uuid) {
                Ok(ranges) => {
                    let offset = ranges.first().map_or(0, |r| r.0);
                    let len = ranges.iter().fold(0u64, |a, r| a.saturating_add(r.1));
                    if let Some(slot) = lvs_at.get_mut(*first) {
                        slot.push(Candidate {
                            source,
                            offset,
                            len,
                            ranges,
                        });
                    }
                }
                Err(error) => unusable.push(Unusable { what, error }),
            }
        }
    }
    for (k, pv) in found.iter().enumerate() {
        if !described.get(k).copied().unwrap_or(true)
            && let Some(p) = places.get(pv.place)
        {
            unusable.push(Unusable {
                what: format!("LVM physical volume on {}", place_name(&p.source)),
                error: LvmError::NoMetadata(pv.label.uuid.clone()),
            });
        }
    }
    let mut out = Vec::new();
    for (i, (p, lvs)) in places.into_iter().zip(lvs_at).enumerate() {
        let pv = is_pv.get(i).copied().unwrap_or(false);
        let keep = !pv && (i != 0 || !whole_disk);
        if keep {
            out.push(p);
        }
        out.extend(lvs);
    }
    (out, unusable)
}

/// The disk ranges of a linear LV, in LV order.
fn map_lv(
    vg: &Vg,
    lv: &Lv,
    found: &[FoundPv],
    places: &[Candidate],
    by_uuid: &HashMap<&str, usize>,
) -> Result<Vec<(u64, u64)>, LvmError> {
    let segs = lv.segments.as_ref().map_err(Clone::clone)?;
    let mut out = Vec::new();
    for (n, s) in (1usize..).zip(segs) {
        let desc = vg
            .pvs
            .iter()
            .find(|d| d.name == s.pv)
            .ok_or_else(|| meta(format!("segment {n} names an unknown physical volume")))?;
        let place = by_uuid
            .get(desc.uuid.as_str())
            .and_then(|&k| found.get(k))
            .and_then(|pv| places.get(pv.place))
            .ok_or_else(|| LvmError::MissingPv {
                segment: n,
                pv: desc.name.clone(),
                id: desc.uuid.clone(),
            })?;
        let outside = || meta(format!("segment {n} lies outside its physical volume"));
        if s.pe.checked_add(s.count).is_none_or(|e| e > desc.pe_count) {
            return Err(outside());
        }
        let start =
            s.pe.checked_mul(vg.extent)
                .and_then(|b| b.checked_add(desc.pe_start))
                .ok_or_else(outside)?;
        let len = s.count.checked_mul(vg.extent).ok_or_else(outside)?;
        if start.checked_add(len).is_none_or(|e| e > place.len) {
            return Err(outside());
        }
        out.push((place.offset.checked_add(start).ok_or_else(outside)?, len));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use crate::fuzzing::{LVM_PV_UUID, lvm_image};
    use crate::part::scan;

    /// Metadata in LVM's own shape; extents of 4 KiB from byte 64 KiB.
    fn vg_text(lvs: &str) -> String {
        format!(
            "vg0 {{\nid = \"Etky0o-sOzv-hTFc-ftcd-2U9o-umeg-3b1Duy\"\nseqno = 5\nformat = \"lvm2\"\n\
             status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\nflags = []\nextent_size = 8\n\
             physical_volumes {{\npv0 {{\nid = \"012345-6789-abcd-efgh-ijAB-CDEF-GHIJkl\"\n\
             device = \"/dev/loop0\"\nstatus = [\"ALLOCATABLE\"]\nflags = []\ndev_size = 512\n\
             pe_start = 128\npe_count = 48\n}}\n}}\nlogical_volumes {{\n{lvs}}}\n}}\n\
             # Generated by LVM2\ncontents = \"Text Format Volume Group\"\nversion = 1\n"
        )
    }

    fn lv(name: &str, status: &str, segs: &[(u64, u64, &str, &str)]) -> String {
        let mut s = format!(
            "{name} {{\nid = \"x\"\nstatus = [{status}]\nflags = []\nsegment_count = {}\n",
            segs.len()
        );
        for (i, (start, count, ty, stripes)) in segs.iter().enumerate() {
            s += &format!(
                "segment{} {{\nstart_extent = {start}\nextent_count = {count}\ntype = \"{ty}\"\n{stripes}\n}}\n",
                i + 1
            );
        }
        s + "}\n"
    }

    const VIS: &str = "\"READ\", \"WRITE\", \"VISIBLE\"";

    fn linear(pe: u64) -> String {
        format!("stripe_count = 1\nstripes = [\n\"pv0\", {pe}\n]")
    }

    /// A 256 KiB whole-disk PV whose extents 0.. hold their own number.
    fn disk(lvs: &str) -> Vec<u8> {
        let mut img = lvm_image(vg_text(lvs).as_bytes(), 256 * 1024);
        for e in 0..48usize {
            let at = 64 * 1024 + e * 4096;
            img[at..at + 4096].fill(u8::try_from(e).unwrap());
        }
        img
    }

    #[test]
    fn crc_matches_lvm() {
        // The label sector of a PV made by pvcreate 2.03.16.
        let mut sec = vec![0u8; 512];
        sec[..8].copy_from_slice(b"LABELONE");
        sec[8] = 1;
        sec[20] = 0x20;
        sec[24..32].copy_from_slice(b"LVM2 001");
        sec[32..64].copy_from_slice(b"53CTDdABv2rCxHMTQAZVOrJV4UxxpkH2");
        sec[64..72].copy_from_slice(&(64u64 << 20).to_le_bytes());
        sec[72..80].copy_from_slice(&(1u64 << 20).to_le_bytes());
        sec[104..112].copy_from_slice(&4096u64.to_le_bytes());
        sec[112..120].copy_from_slice(&0xF_F000u64.to_le_bytes());
        sec[0x88] = 2;
        sec[0x8c] = 1;
        assert_eq!(crc(INITIAL_CRC, &sec[20..]), 0x245B_2506);
    }

    #[test]
    fn linear_volumes_become_candidates() {
        let lvs = lv(
            "root",
            VIS,
            &[(0, 4, "striped", &linear(2)), (4, 2, "striped", &linear(10))],
        ) + &lv("swap", VIS, &[(0, 2, "striped", &linear(6))])
            + &lv("pool_tdata", "\"READ\", \"WRITE\"", &[(0, 2, "striped", &linear(20))]);
        let img = disk(&lvs);
        let s = scan(&img, None).unwrap();
        assert!(s.unusable.is_empty(), "{:?}", s.unusable);
        let names: Vec<String> = s.candidates.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "LVM logical volume vg0/root (on whole disk)",
                "LVM logical volume vg0/swap (on whole disk)"
            ]
        );
        let root = &s.candidates[0];
        assert_eq!(
            root.ranges,
            [(64 * 1024 + 2 * 4096, 4 * 4096), (64 * 1024 + 10 * 4096, 2 * 4096)]
        );
        assert_eq!(root.len, 6 * 4096);
        let src: std::rc::Rc<dyn BlockSource> = std::rc::Rc::new(img);
        let w = root.window(src).unwrap();
        let mut b = [0u8; 2];
        w.read_exact_at(4 * 4096 - 1, &mut b).unwrap();
        assert_eq!(b, [5, 10]);
    }

    #[test]
    fn other_segment_types_are_named() {
        let lvs = lv(
            "thin",
            VIS,
            &[(0, 4, "thin", "thin_pool = \"pool\"\ntransaction_id = 1")],
        ) + &lv(
            "wide",
            VIS,
            &[(
                0,
                4,
                "striped",
                "stripe_count = 2\nstripe_size = 128\nstripes = [\"pv0\", 0, \"pv0\", 8]",
            )],
        ) + &lv("mirror", VIS, &[(0, 4, "raid1", "device_count = 2")])
            + &lv(
                "elsewhere",
                VIS,
                &[(0, 4, "striped", "stripe_count = 1\nstripes = [\"pv1\", 0]")],
            )
            + &lv("good", VIS, &[(0, 4, "striped", &linear(0))]);
        let text = vg_text(&lvs).replace(
            "physical_volumes {\n",
            "physical_volumes {\npv1 {\nid = \"ZZZZZZ-6789-abcd-efgh-ijAB-CDEF-GHIJkl\"\npe_start = 2048\npe_count = 10\n}\n",
        );
        let img = lvm_image(text.as_bytes(), 256 * 1024);
        let s = scan(&img, None).unwrap();
        let got: Vec<String> = s.unusable.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "LVM logical volume vg0/thin (on whole disk): segment 1 is of type \"thin\"; only linear logical volumes can be read",
                "LVM logical volume vg0/wide (on whole disk): segment 1 is of type \"striped\" with 2 stripes; only linear logical volumes can be read",
                "LVM logical volume vg0/mirror (on whole disk): segment 1 is of type \"raid1\"; only linear logical volumes can be read",
                "LVM logical volume vg0/elsewhere (on whole disk): segment 1 lies on physical volume pv1 (ZZZZZZ6789abcdefghijABCDEFGHIJkl), which is not on this disk",
            ]
        );
        assert_eq!(s.candidates.len(), 1);
        assert_eq!(
            s.candidates[0].to_string(),
            "LVM logical volume vg0/good (on whole disk)"
        );
    }

    #[test]
    fn damaged_labels_and_areas_are_clear_errors() {
        let good = disk(&lv("root", VIS, &[(0, 4, "striped", &linear(0))]));
        assert_eq!(scan(&good, None).unwrap().candidates.len(), 1);
        let check = |patch: &dyn Fn(&mut Vec<u8>), want: &str| {
            let mut img = good.clone();
            patch(&mut img);
            let s = scan(&img, None).unwrap();
            assert!(s.candidates.is_empty(), "{want}: {:?}", s.candidates);
            let got = s
                .unusable
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            assert!(got.contains(want), "{got} lacks {want}");
        };
        check(&|i| i[600] ^= 1, "LVM label in sector 1: checksum");
        check(&|i| i[4096 + 600] ^= 1, "checksum 0x");
        check(&|i| i[4096 + 5] = b'X', "bad magic");
        // Huge metadata size, with the header checksum fixed up.
        let fix = |i: &mut Vec<u8>| {
            let c = crc(INITIAL_CRC, &i[4096 + 4..4096 + 512]);
            i[4096..4100].copy_from_slice(&c.to_le_bytes());
        };
        check(
            &|i| {
                i[4096 + 48..4096 + 56].copy_from_slice(&u64::MAX.to_le_bytes());
                fix(i);
            },
            "exceeds the 4194304-byte limit",
        );
        check(
            &|i| {
                i[4096 + 40..4096 + 48].copy_from_slice(&(1u64 << 40).to_le_bytes());
                fix(i);
            },
            "metadata location outside the area",
        );
        check(
            &|i| {
                i[4096 + 32..4096 + 40].copy_from_slice(&(1u64 << 62).to_le_bytes());
                fix(i);
            },
            "does not describe its own area",
        );
    }

    #[test]
    fn wrapped_metadata_is_read() {
        // Move the text so it runs past the end of the 60 KiB area and
        // continues after the header.
        let text = vg_text(&lv("root", VIS, &[(0, 4, "striped", &linear(0))]));
        let mut img = disk(&lv("root", VIS, &[(0, 4, "striped", &linear(0))]));
        let (mda, size) = (4096usize, 60 * 1024usize);
        img[mda + 512..mda + size].fill(0);
        let off = size - 100;
        img[mda + off..mda + size].copy_from_slice(&text.as_bytes()[..100]);
        img[mda + 512..mda + 512 + text.len() - 100].copy_from_slice(&text.as_bytes()[100..]);
        img[mda + 40..mda + 48].copy_from_slice(&u64::try_from(off).unwrap().to_le_bytes());
        let c = crc(INITIAL_CRC, &img[mda + 4..mda + 512]);
        img[mda..mda + 4].copy_from_slice(&c.to_le_bytes());
        let s = scan(&img, None).unwrap();
        assert!(s.unusable.is_empty(), "{:?}", s.unusable);
        assert_eq!(s.candidates.len(), 1);
    }

    #[test]
    fn hostile_metadata_ends_quickly() {
        let t0 = std::time::Instant::now();
        let cases: Vec<(String, &str)> = vec![
            (
                vg_text(&lv("root", VIS, &[(0, 4, "striped", &linear(0))]))
                    .replace("segment_count = 1", "segment_count = 10000000"),
                "more than 4096 segments",
            ),
            (
                vg_text(
                    &(0..5000)
                        .map(|i| lv(&format!("l{i}"), VIS, &[(0, 1, "striped", &linear(0))]))
                        .collect::<String>(),
                ),
                "more than 1024 logical volumes",
            ),
            (
                vg_text(&lv(
                    "root",
                    VIS,
                    &(0..5000)
                        .map(|i| (i, 1, "striped", "stripe_count = 1\nstripes = [\"pv0\", 0]"))
                        .collect::<Vec<_>>(),
                )),
                "more than 4096 segments",
            ),
            ("a {".repeat(100_000), "nest deeper than 16"),
            (
                vg_text(&lv("root", VIS, &[(0, 4, "striped", &linear(47))])),
                "segment 1 lies outside its physical volume",
            ),
            (
                vg_text(&lv(
                    "root",
                    VIS,
                    &[(0, 4, "striped", &linear(0)), (6, 1, "striped", &linear(4))],
                )),
                "gap or overlap at extent 4",
            ),
            (
                vg_text(&lv("root", VIS, &[(0, 4, "striped", &linear(0))]))
                    .replace("extent_size = 8", "extent_size = 9223372036854775807"),
                "bad extent_size",
            ),
            (
                vg_text(&lv(
                    "root",
                    VIS,
                    &[(0, u64::try_from(i64::MAX).unwrap(), "striped", &linear(0))],
                )),
                "outside its physical volume",
            ),
            (
                vg_text(&lv("root", VIS, &[])).replace("segment_count = 0", "segment_count = 1"),
                "no segments",
            ),
            ("vg0 {\n}\nvg1 {\n}\n".into(), "more than one volume group"),
            ("vg0 {\nid = \"x\"\nseqno = -1\n}\n".into(), "seqno is negative"),
        ];
        for (text, want) in cases {
            let img = lvm_image(text.as_bytes(), 256 * 1024);
            let s = scan(&img, None).unwrap();
            assert!(s.candidates.is_empty(), "{want}");
            let got = s
                .unusable
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
        assert!(t0.elapsed().as_secs() < 5, "{:?}", t0.elapsed());
    }

    /// The fuzz seeds are real PVs (made by lvm2): both layouts map to
    /// the same LVs, root in two pieces around swap.
    #[test]
    fn real_pv_seeds_map() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz/seeds/lvm");
        for (file, on, base) in [
            ("pv-whole.img", "whole disk", 0u64),
            ("pv-mbr.img", "MBR partition 1", 32768),
        ] {
            let img = std::fs::read(dir.join(file)).unwrap()[1..].to_vec();
            let s = scan(&img, None).unwrap();
            assert!(s.unusable.is_empty(), "{file}: {:?}", s.unusable);
            let got: Vec<(String, Vec<(u64, u64)>)> =
                s.candidates.iter().map(|c| (c.to_string(), c.ranges.clone())).collect();
            let pe = |n: u64| base + 65536 + n * 16384;
            assert_eq!(
                got,
                [
                    (
                        format!("LVM logical volume seedvg/root (on {on})"),
                        vec![(pe(0), 2 * 16384), (pe(3), 2 * 16384)]
                    ),
                    (
                        format!("LVM logical volume seedvg/swap (on {on})"),
                        vec![(pe(2), 16384)]
                    ),
                ],
                "{file}"
            );
        }
    }

    #[test]
    fn pv_uuid_constant_is_what_the_metadata_names() {
        assert_eq!(LVM_PV_UUID.len(), ID_LEN);
        assert_eq!("012345-6789-abcd-efgh-ijAB-CDEF-GHIJkl".replace('-', ""), LVM_PV_UUID);
    }
}
