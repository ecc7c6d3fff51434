//! The xl domain config written by `--domain-config`.

use std::path::Path;

use crate::error::Error;

/// What goes into the config.
#[derive(Debug, Clone)]
pub struct Domain<'a> {
    /// Domain name.
    pub name: &'a str,
    /// Memory in MiB.
    pub memory: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Absolute path of this nixboot (the bootloader).
    pub bootloader: &'a Path,
    /// Absolute path of the image.
    pub image: &'a Path,
}

fn xl_string(what: &str, s: &str) -> Result<String, Error> {
    if s.chars().any(|c| c.is_control() || c == '"' || c == '\'' || c == '\\') {
        return Err(Error::Usage(format!(
            "{what} {} cannot go into an xl config (quotes, backslashes or control characters)",
            crate::error::escape(s.as_bytes())
        )));
    }
    Ok(s.to_owned())
}

fn path_str<'p>(what: &str, p: &'p Path) -> Result<&'p str, Error> {
    p.to_str()
        .ok_or_else(|| Error::Usage(format!("{what} {} is not UTF-8", p.display())))
}

/// Render the config.
pub fn render(d: &Domain<'_>) -> Result<String, Error> {
    let name = xl_string("--name", d.name)?;
    let boot = xl_string("the nixboot path", path_str("the nixboot path", d.bootloader)?)?;
    let image = xl_string("the image path", path_str("the image path", d.image)?)?;
    // A disk spec is comma-separated: the target must come last, and may
    // then hold commas, but not the quote that ends the string.
    Ok(format!(
        "# Xen PV domain for {image}\n\
         # written by `nixboot image`; start it with `xl create <this file>`.\n\
         name = \"{name}\"\n\
         type = \"pv\"\n\
         memory = {memory}\n\
         vcpus = {vcpus}\n\
         \n\
         # nixboot reads the guest's NixOS generations like pygrub reads grub.cfg.\n\
         bootloader = \"{boot}\"\n\
         # Roll back: boot generation N instead of the current one.\n\
         #bootloader_args = [\"--entry=N\"]\n\
         \n\
         disk = ['format=raw,vdev=xvda,access=rw,target={image}']\n",
        memory = d.memory,
        vcpus = d.vcpus,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_pv_config() {
        let d = Domain {
            name: "web",
            memory: 2048,
            vcpus: 2,
            bootloader: Path::new("/usr/bin/nixboot"),
            image: Path::new("/srv/xen/web.img"),
        };
        let s = render(&d).unwrap();
        for want in [
            "name = \"web\"\n",
            "type = \"pv\"\n",
            "memory = 2048\n",
            "vcpus = 2\n",
            "bootloader = \"/usr/bin/nixboot\"\n",
            "#bootloader_args = [\"--entry=N\"]\n",
            "disk = ['format=raw,vdev=xvda,access=rw,target=/srv/xen/web.img']\n",
        ] {
            assert!(s.contains(want), "{want:?} missing from\n{s}");
        }
        let bad = Domain { name: "a\"b", ..d };
        assert!(render(&bad).is_err());
    }
}
