//! The xl domain config written by `--domain-config`: a PV domain, or with
//! `--type pvh` a PVH one (libxl runs the bootloader for both; nixboot
//! checks the kernel for the mode named in `bootloader_args`).

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
    /// `type = "pv"` or `"pvh"`.
    pub guest_type: crate::kernel::XenMode,
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
    let (what, ty) = match d.guest_type {
        crate::kernel::XenMode::Pv => ("PV", "pv"),
        crate::kernel::XenMode::Pvh => ("PVH", "pvh"),
    };
    // A disk spec is comma-separated: the target must come last, and may
    // then hold commas, but not the quote that ends the string.
    Ok(format!(
        "# Xen {what} domain for {image}\n\
         # written by `nixboot image`; start it with `xl create <this file>`.\n\
         name = \"{name}\"\n\
         type = \"{ty}\"\n\
         memory = {memory}\n\
         vcpus = {vcpus}\n\
         \n\
         # nixboot reads the guest's NixOS generations like pygrub reads grub.cfg.\n\
         bootloader = \"{boot}\"\n\
         # libxl does not tell nixboot the domain type: name it, so a kernel\n\
         # without this mode's entry point is refused before libxl tries it.\n\
         bootloader_args = [\"--domain-type={ty}\"]\n\
         # Roll back: boot generation N instead of the current one.\n\
         #bootloader_args = [\"--domain-type={ty}\", \"--entry=N\"]\n\
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
            guest_type: crate::kernel::XenMode::Pv,
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
            "bootloader_args = [\"--domain-type=pv\"]\n",
            "#bootloader_args = [\"--domain-type=pv\", \"--entry=N\"]\n",
            "disk = ['format=raw,vdev=xvda,access=rw,target=/srv/xen/web.img']\n",
        ] {
            assert!(s.contains(want), "{want:?} missing from\n{s}");
        }
        let pvh = render(&Domain {
            guest_type: crate::kernel::XenMode::Pvh,
            ..d.clone()
        })
        .unwrap();
        assert!(pvh.starts_with("# Xen PVH domain for /srv/xen/web.img\n"), "{pvh}");
        assert!(pvh.contains("type = \"pvh\"\n"), "{pvh}");
        assert!(pvh.contains("bootloader_args = [\"--domain-type=pvh\"]\n"), "{pvh}");
        let bad = Domain { name: "a\"b", ..d };
        assert!(render(&bad).is_err());
    }
}
