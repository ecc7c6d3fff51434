//! dom0's memory of kernels already found to be Xen PV kernels.
//!
//! Checking a kernel means decompressing its payload up to its ELF notes
//! (about half a second for an xz-compressed distribution kernel), so the
//! parent remembers the keys of kernels that passed (`boot::kernel_key`)
//! in `/var/cache/nixboot/pv-kernels` (or `$NIXBOOT_CACHE_DIR`; set it
//! empty to disable) and hands them to the parse child, which then skips
//! the decompression. The key covers every byte of the kernel (a key over
//! samples let a guest keep a known kernel's key with another middle).
//! Only positive results are kept: a forged match could only make nixboot
//! skip its own check (libxc then reports the bad kernel), never make it
//! refuse a good one. The file is
//! best effort: any error reading or writing it is logged at debug level
//! and otherwise ignored. At most [`MAX_KNOWN_KERNELS`] keys are kept.

use std::io::Write;
use std::path::PathBuf;

use crate::limits::MAX_KNOWN_KERNELS;

/// Default cache directory.
pub const DEFAULT_DIR: &str = "/var/cache/nixboot";
const FILE: &str = "pv-kernels";

/// The cache file, if caching is enabled.
#[derive(Clone, Debug)]
pub struct KernelCache {
    file: Option<PathBuf>,
}

fn valid(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl KernelCache {
    /// The cache named by `$NIXBOOT_CACHE_DIR`, or the default.
    pub fn from_env() -> KernelCache {
        let dir = match std::env::var_os("NIXBOOT_CACHE_DIR") {
            Some(d) if d.is_empty() => return KernelCache { file: None },
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(DEFAULT_DIR),
        };
        KernelCache {
            file: Some(dir.join(FILE)),
        }
    }

    /// The remembered keys (newest last).
    pub fn known(&self) -> Vec<String> {
        let Some(f) = &self.file else { return Vec::new() };
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                log::debug!("kernel cache {}: {e}", f.display());
                return Vec::new();
            }
        };
        let mut keys: Vec<String> = text.lines().filter(|l| valid(l)).map(str::to_owned).collect();
        let drop = keys.len().saturating_sub(MAX_KNOWN_KERNELS);
        keys.drain(..drop);
        keys
    }

    /// Remember `key` (best effort).
    pub fn remember(&self, key: &str) {
        let Some(f) = &self.file else { return };
        if !valid(key) {
            return;
        }
        let mut keys = self.known();
        if keys.iter().any(|k| k == key) {
            return;
        }
        keys.push(key.to_owned());
        let drop = keys.len().saturating_sub(MAX_KNOWN_KERNELS);
        keys.drain(..drop);
        let write = || -> std::io::Result<()> {
            let dir = f.parent().unwrap_or(f);
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            for k in &keys {
                writeln!(tmp, "{k}")?;
            }
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
            tmp.persist(f).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            log::debug!("kernel cache {}: {e}", f.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_valid_keys_only_and_caps() {
        let d = tempfile::tempdir().unwrap();
        let c = KernelCache {
            file: Some(d.path().join("sub").join(FILE)),
        };
        assert!(c.known().is_empty());
        let k = |i: usize| format!("{i:064x}");
        c.remember(&k(1));
        c.remember("not a key\nkernel /etc/shadow");
        c.remember(&k(1));
        assert_eq!(c.known(), vec![k(1)]);
        // A file over the cap: the oldest keys are dropped on read and write.
        let many: String = (1..=MAX_KNOWN_KERNELS + 5).map(|i| k(i) + "\n").collect();
        std::fs::write(d.path().join("sub").join(FILE), many).unwrap();
        assert_eq!(c.known().len(), MAX_KNOWN_KERNELS);
        c.remember(&k(MAX_KNOWN_KERNELS + 6));
        let known = c.known();
        assert_eq!(known.len(), MAX_KNOWN_KERNELS);
        assert_eq!(known.last(), Some(&k(MAX_KNOWN_KERNELS + 6)));
        assert!(!known.contains(&k(6)));
        assert!(KernelCache { file: None }.known().is_empty());
    }
}
