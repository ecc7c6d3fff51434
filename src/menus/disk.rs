//! The guest's own menus on a real disk: every partition's filesystems
//! ([`Volume`]), the menus found on each (GRUB 2, BLS, extlinux, GRUB
//! legacy, in pygrub's order), and a menu's [`FileRef`]s resolved to the
//! filesystem GRUB would use (fs-uuid, label, a file it holds, partition
//! number). Guest data, parse-child side; reads only through [`GuestFs`]
//! with the menu caps.

use std::rc::Rc;

use super::{Device, FileRef, Menu, MenuError, MenuFiles, MenuKind, bls, extlinux, grub, legacy};
use crate::disk::BlockSource;
use crate::error::escape;
use crate::fs::{self, FsError, GuestFs, Mount};
use crate::limits::{MAX_GUEST_MENU_ENTRIES, MAX_MENU_CONFIG};
use crate::part::{self, Source};

/// One filesystem tree of the disk.
pub struct Volume {
    /// The tree, as the root of its own filesystem.
    pub fs: GuestFs,
    /// For diagnostics: "MBR partition 1 (…)" (plus the subvolume).
    pub place: String,
    /// Its partition number (MBR or GPT, from 1), if it is a partition.
    pub part: Option<u32>,
}

/// Every filesystem tree on the disk, in partition order, and one line
/// for each partition that holds none nixboot can read.
pub fn volumes(src: Rc<dyn BlockSource>, offset: Option<u64>) -> Result<(Vec<Volume>, Vec<String>), crate::Error> {
    let mut vols = Vec::new();
    let mut skipped = Vec::new();
    for c in part::candidates(src.as_ref(), offset)? {
        let Some(window) = c.window(src.clone()) else {
            continue;
        };
        let part = match c.source {
            Source::Mbr { number, .. } | Source::Gpt { number } => Some(number),
            Source::Bare | Source::Offset | Source::Lvm { .. } => None,
        };
        match fs::probe(window) {
            Ok(trees) => {
                for t in trees {
                    let place = match t.kind() {
                        "ext4" => format!("{c}, ext4"),
                        _ => format!("{c}, {}", t.describe()),
                    };
                    vols.push(Volume {
                        fs: GuestFs::new(t, Mount::Root),
                        place,
                        part,
                    });
                }
            }
            Err(FsError::NotAFilesystem) => skipped.push(format!("{c}: no ext4 or btrfs filesystem")),
            Err(e) => skipped.push(format!("{c}: {e}")),
        }
    }
    Ok((vols, skipped))
}

/// `0F2C7E11-4b0a-…` → `0f2c7e114b0a…`: UUIDs compare without dashes and case.
fn uuid_key(s: &[u8]) -> Vec<u8> {
    s.iter().filter(|c| **c != b'-').map(u8::to_ascii_lowercase).collect()
}

fn hex(u: &[u8; 16]) -> Vec<u8> {
    u.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect()
}

/// The volume `device` names (`None`: `home`, the menu's own).
pub fn resolve(vols: &[Volume], home: usize, device: Option<&Device>) -> Option<usize> {
    match device {
        None => Some(home),
        Some(Device::FsUuid(u)) => {
            let want = uuid_key(u);
            vols.iter()
                .position(|v| v.fs.fs().uuid().is_some_and(|id| hex(&id) == want))
        }
        Some(Device::Label(l)) => vols
            .iter()
            .position(|v| v.fs.fs().label().as_deref() == Some(l.as_slice())),
        Some(Device::File(p)) => {
            // GRUB's `search --file` takes the first filesystem that has it.
            std::iter::once(home)
                .chain(0..vols.len())
                .find(|i| vols.get(*i).is_some_and(|v| v.fs.exists(p).unwrap_or(false)))
        }
        Some(Device::Partition { disk: 0, part: Some(n) }) => vols.iter().position(|v| v.part == Some(*n)),
        Some(Device::Partition { disk: 0, part: None }) => vols.iter().position(|v| v.part.is_none()),
        Some(_) => None,
    }
}

/// [`MenuFiles`] over the disk's volumes, for a menu read from `home`.
pub struct DiskFiles<'a> {
    /// Every volume.
    pub vols: &'a [Volume],
    /// The menu's own.
    pub home: usize,
}

impl DiskFiles<'_> {
    fn vol(&self, device: Option<&Device>) -> Option<&GuestFs> {
        resolve(self.vols, self.home, device)
            .and_then(|i| self.vols.get(i))
            .map(|v| &v.fs)
    }
}

impl MenuFiles for DiskFiles<'_> {
    fn read(&self, device: Option<&Device>, path: &[u8]) -> Option<Vec<u8>> {
        self.vol(device)?.read_small(path, MAX_MENU_CONFIG).ok()
    }
    fn list(&self, device: Option<&Device>, dir: &[u8]) -> Vec<Vec<u8>> {
        let Some(fs) = self.vol(device) else { return Vec::new() };
        let mut names: Vec<Vec<u8>> = fs
            .list_dir(dir)
            .map(|v| v.into_iter().map(|e| e.name).collect())
            .unwrap_or_default();
        names.truncate(MAX_GUEST_MENU_ENTRIES);
        names
    }
    fn size(&self, device: Option<&Device>, path: &[u8]) -> Option<u64> {
        self.vol(device)?.stat_regular(path, u64::MAX).ok().map(|(_, len)| len)
    }
}

/// A menu found on a volume.
pub struct Found {
    /// The volume it was read from.
    pub vol: usize,
    /// Its grammar.
    pub kind: MenuKind,
    /// The file (or directory, for BLS) it was read from.
    pub path: Vec<u8>,
    /// The parsed menu.
    pub menu: Menu,
}

const GRUB: [&str; 4] = [
    "/boot/grub/grub.cfg",
    "/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub2/grub.cfg",
];
const BLS: [&str; 2] = ["/boot/loader/entries", "/loader/entries"];
const EXTLINUX: [&str; 15] = [
    "/boot/extlinux/extlinux.conf",
    "/boot/extlinux/syslinux.cfg",
    "/extlinux/extlinux.conf",
    "/extlinux/syslinux.cfg",
    "/boot/syslinux/syslinux.cfg",
    "/boot/syslinux/extlinux.conf",
    "/syslinux/syslinux.cfg",
    "/syslinux/extlinux.conf",
    "/isolinux/isolinux.cfg",
    "/boot/isolinux/isolinux.cfg",
    "/boot/extlinux.conf",
    "/extlinux.conf",
    "/syslinux.cfg",
    "/boot/syslinux.cfg",
    "/isolinux.cfg",
];
const LEGACY: [&str; 4] = [
    "/boot/grub/menu.lst",
    "/boot/grub/grub.conf",
    "/grub/menu.lst",
    "/grub/grub.conf",
];

fn dir_of(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|c| *c == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(i) => path.get(..i).unwrap_or_default().to_vec(),
    }
}

fn take(
    problems: &mut Vec<String>,
    vol: usize,
    kind: MenuKind,
    path: &[u8],
    r: Result<Menu, MenuError>,
) -> Option<Found> {
    match r {
        Ok(menu) if !menu.entries.is_empty() => Some(Found {
            vol,
            kind,
            path: path.to_vec(),
            menu,
        }),
        Ok(_) => {
            problems.push(format!("{} {}: no entries", kind.name(), escape(path)));
            None
        }
        Err(e) => {
            problems.push(format!("{} {}: {e}", kind.name(), escape(path)));
            None
        }
    }
}

/// The first menu on volume `vol` (GRUB 2, BLS, extlinux, GRUB legacy,
/// or only `only`), or why there is none.
pub fn find_menu(vols: &[Volume], vol: usize, only: Option<MenuKind>) -> Result<Found, String> {
    let Some(v) = vols.get(vol) else {
        return Err("no such volume".into());
    };
    let files = DiskFiles { vols, home: vol };
    let mut problems = Vec::new();
    let kinds: [(MenuKind, &[&str]); 4] = [
        (MenuKind::Grub, &GRUB),
        (MenuKind::Bls, &BLS),
        (MenuKind::Extlinux, &EXTLINUX),
        (MenuKind::Legacy, &LEGACY),
    ];
    for (kind, paths) in kinds {
        if only.is_some_and(|o| o != kind) {
            continue;
        }
        for p in paths {
            let path = p.as_bytes();
            let dir = dir_of(path);
            let parsed = if kind == MenuKind::Bls {
                if !v.fs.exists(path).unwrap_or(false) {
                    continue;
                }
                bls::parse(&files, path)
            } else {
                let text = match v.fs.read_small(path, MAX_MENU_CONFIG) {
                    Ok(t) => t,
                    Err(FsError::NotFound(_)) => continue,
                    Err(e) => {
                        problems.push(format!("{} {}: {e}", kind.name(), escape(path)));
                        continue;
                    }
                };
                match kind {
                    MenuKind::Grub => grub::parse(&text, &grub::Context { dir }, &files),
                    MenuKind::Extlinux => extlinux::parse(&text, &extlinux::Context { dir }, &files),
                    _ => legacy::parse(&text, &legacy::Context { dir }, &files),
                }
            };
            if let Some(f) = take(&mut problems, vol, kind, path, parsed) {
                return Ok(f);
            }
        }
    }
    if problems.is_empty() {
        Err(match only {
            Some(k) => format!("no {} menu", k.name()),
            None => "no boot menu".into(),
        })
    } else {
        Err(problems.join("; "))
    }
}

/// A file of an entry, resolved: the volume and the path on it.
pub fn locate(vols: &[Volume], home: usize, f: &FileRef) -> Result<usize, String> {
    resolve(vols, home, f.device.as_ref()).ok_or_else(|| match &f.device {
        Some(d) => format!("{f}: no filesystem on this disk is the {d}"),
        None => format!("{f}: not found"),
    })
}
