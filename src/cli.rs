//! Command-line definitions: the libxl/pygrub argv (the default, no
//! subcommand) and the `list` subcommand. Parsing only; no I/O.
//!
//! libxl runs, in this order (libxl_bootloader.c `make_bootloader_args`):
//! `nixboot [--kernel=P] [--ramdisk=P] [--args=CMDLINE] [--runas=UID
//! --quiet] --output=FILE --output-format=simple0 --output-directory=DIR
//! [bootloader_args...] DISK`. Options and the disk may come in any order.
//! Usage errors print one line and exit 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::limits::{DEFAULT_MAX_INITRD, DEFAULT_MAX_KERNEL, MAX_BOOT_FILE};
use crate::output::Format;

const AFTER_HELP: &str = "\
libxl runs nixboot as:
  nixboot [--kernel=P] [--ramdisk=P] [--args=CMDLINE] [--runas=UID --quiet]
          --output=/var/lib/xen/bootloader.<domid>.out --output-format=simple0
          --output-directory=/var/lib/xen/bootloader.<domid>.d [bootloader_args...] DISK

Exit status: 0 when the result file is complete, 1 on any failure (one line
on stderr says whether the guest disk or dom0 is at fault), 2 on usage errors.";

/// nixboot: boot NixOS Xen PV guests from dom0 (a pygrub replacement).
#[derive(Debug, Parser)]
#[command(name = "nixboot", version, about, after_help = AFTER_HELP)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
// getopt (pygrub) lets a repeated option's last value win; libxl adds
// `--quiet` in restricted mode and admins keep pygrub's
// `bootloader_args = ["-q"]`, so a repeat must not be a usage error.
#[command(args_override_self = true)]
pub struct Cli {
    /// Boot options (the libxl/pygrub argv).
    #[command(flatten)]
    pub boot: BootArgs,
    /// Subcommands.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the NixOS generations on a guest disk.
    List(ListArgs),
    /// Build a bootable disk image from a NixOS system (no root needed).
    Image(ImageArgs),
    /// Write the man pages and shell completions into DIR (for packagers).
    #[command(hide = true)]
    GenerateAssets(GenerateAssetsArgs),
}

/// `nixboot image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The NixOS system: a store path or a link to one (e.g. ./result).
    #[arg(long, value_name = "PATH")]
    pub system: PathBuf,
    /// Disk size (e.g. 10G, 512M); the image file is sparse.
    #[arg(long, value_name = "SIZE", value_parser = parse_disk_size)]
    pub size: u64,
    /// The image to write.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Partition table.
    #[arg(long, value_enum, default_value = "mbr", value_name = "TABLE")]
    pub partition_table: crate::image::fs::Table,
    /// Filesystem label (what fileSystems."/".device = "/dev/disk/by-label/NIXOS" finds).
    #[arg(long, default_value = "NIXOS", value_name = "LABEL")]
    pub label: String,
    /// Copied to /etc/nixos/configuration.nix.
    #[arg(long, value_name = "FILE")]
    pub configuration: Option<PathBuf>,
    /// Channel for /root/.nix-channels: URL and optional name (default
    /// name "nixos"; default URL the channel of the system's nixos-version).
    #[arg(long, num_args = 1..=2, value_names = ["URL", "NAME"])]
    pub channel: Option<Vec<String>>,
    /// Also write an xl domain config that boots the image with nixboot.
    #[arg(long, value_name = "FILE")]
    pub domain_config: Option<PathBuf>,
    /// Domain name in the config (default: the image's file name stem).
    #[arg(long, value_name = "N", requires = "domain_config")]
    pub name: Option<String>,
    /// Domain memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 1024, requires = "domain_config")]
    pub memory: u64,
    /// Domain vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "domain_config")]
    pub vcpus: u32,
    /// Domain type in the config: pv, or pvh (the kernel must be built
    /// with CONFIG_XEN_PVH; NixOS's are).
    #[arg(
        long = "type",
        value_enum,
        value_name = "TYPE",
        default_value = "pv",
        requires = "domain_config"
    )]
    pub guest_type: crate::kernel::XenMode,
    /// Replace an existing output image (and domain config).
    #[arg(long)]
    pub force: bool,
    /// More log lines on stderr (-vv shows every command run).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl ImageArgs {
    /// The builder's options.
    pub fn options(&self) -> crate::image::Options {
        crate::image::Options {
            system: self.system.clone(),
            size: self.size,
            output: self.output.clone(),
            table: self.partition_table,
            label: self.label.clone(),
            configuration: self.configuration.clone(),
            channel: self.channel.as_ref().and_then(|c| {
                let mut it = c.iter().cloned();
                it.next().map(|u| (u, it.next()))
            }),
            domain_config: self.domain_config.clone(),
            name: self.name.clone(),
            memory: self.memory,
            vcpus: self.vcpus,
            guest_type: self.guest_type,
            force: self.force,
        }
    }
}

/// A disk size: bytes or K/M/G/T (binary units).
fn parse_disk_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t)
        .to_owned();
    let (num, shift) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t.as_str(), 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 10G)"))?;
    let v = n.checked_mul(1u64 << shift).ok_or("size overflows")?;
    if v < (16 << 20) {
        return Err("at least 16M".into());
    }
    Ok(v)
}

/// `nixboot generate-assets` (hidden).
#[derive(Debug, Args)]
pub struct GenerateAssetsArgs {
    /// Output directory: man pages go to DIR/man, completions to
    /// DIR/completions.
    pub dir: PathBuf,
}

/// `nixboot list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Filesystem byte offset (skip partition discovery).
    #[arg(long, value_name = "BYTES")]
    pub offset: Option<u64>,
    /// More log lines on stderr.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The guest disk (image file or block device).
    pub disk: PathBuf,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('G') => (t.trim_end_matches('G').to_owned(), 1u64 << 30),
        t if t.ends_with('M') => (t.trim_end_matches('M').to_owned(), 1 << 20),
        t if t.ends_with('K') => (t.trim_end_matches('K').to_owned(), 1 << 10),
        t => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 512M)"))?;
    let v = n.checked_mul(mult).ok_or("size overflows")?;
    if v > MAX_BOOT_FILE {
        return Err(format!(
            "at most {}M (libxc refuses larger images)",
            MAX_BOOT_FILE >> 20
        ));
    }
    Ok(v)
}

/// A `--profile` name: `system` or a name nixboot reads from
/// system-profiles.
fn parse_profile(s: &str) -> Result<String, String> {
    if s == "system" || crate::nixos::valid_profile_name(s.as_bytes()) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a profile name (letters, digits, _ . + -; as nixos-rebuild -p NAME)"
        ))
    }
}

/// The boot options: pygrub's, plus nixboot's own.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Guest path of a kernel to boot instead of the NixOS generation
    /// (pygrub: bypasses the menu; the command line is --args alone).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<String>,
    /// Guest path of the ramdisk to boot with --kernel.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub ramdisk: Option<String>,
    /// Appended to the entry's command line (xl's extra=/root=/cmdline=).
    #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Entry to boot: N (generation), N/NAME (its specialisation), NAME
    /// (specialisation of the default generation), or an exact menu title.
    #[arg(long, value_name = "ENTRY")]
    pub entry: Option<String>,
    /// Boot from this `nixos-rebuild -p NAME` profile
    /// (/nix/var/nix/profiles/system-profiles/NAME): its current
    /// generation, or --entry inside it. `system` is the system profile.
    #[arg(long, value_name = "NAME", value_parser = parse_profile)]
    pub profile: Option<String>,
    /// The domain's type (libxl does not tell a boot loader): the kernel
    /// must boot in this mode. Without it a kernel that boots as PV or as
    /// PVH passes.
    #[arg(long, value_enum, value_name = "TYPE")]
    pub domain_type: Option<crate::kernel::XenMode>,
    /// Hand libxl the kernel's decompressed ELF (vmlinux) instead of the
    /// bzImage, for a dom0 whose libxenguest cannot decompress the guest's
    /// kernel (e.g. zstd before Xen 4.15, or built without libzstd).
    #[arg(long)]
    pub unpack_kernel: bool,
    /// Restricted mode: parse the disk as this uid (what libxl passes when
    /// LIBXL_BOOTLOADER_RESTRICT is set).
    #[arg(long, value_name = "UID")]
    pub runas: Option<u32>,
    /// Non-interactive: no menu, fewer messages.
    #[arg(short, long)]
    pub quiet: bool,
    /// Interactive (pygrub compatibility; the menu is the default on a tty).
    #[arg(short, long, conflicts_with = "quiet")]
    pub interactive: bool,
    /// More log lines on stderr (-vv for debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Debug logging (pygrub compatibility; same as -vv).
    #[arg(long)]
    pub debug: bool,
    /// Seconds the console menu counts down before booting the default
    /// (0: no menu). Default: the guest's boot.loader.timeout recorded in
    /// /nix/var/nix/nixboot.json (at most 60), else 5. The menu appears
    /// only on a terminal, without -q, --runas, --entry, --profile or
    /// --kernel.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Resolve and print what would boot; copy nothing, write no result.
    #[arg(short = 'n', long)]
    pub not_really: bool,
    /// Filesystem byte offset: skip partition discovery.
    #[arg(long, value_name = "BYTES")]
    pub offset: Option<u64>,
    /// Result file (libxl pre-creates it); `-` or none for stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Result format.
    #[arg(long, value_enum, default_value = "sxp", value_name = "FORMAT")]
    pub output_format: Format,
    /// Directory for the kernel and initrd copies (must exist). Default: a
    /// new private directory under $TMPDIR.
    #[arg(long, value_name = "DIR")]
    pub output_directory: Option<PathBuf>,
    /// Largest kernel accepted (e.g. 512M; at most 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value_t = DEFAULT_MAX_KERNEL, hide_default_value = true)]
    pub max_kernel_size: u64,
    /// Largest initrd accepted (e.g. 512M; at most 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value_t = DEFAULT_MAX_INITRD, hide_default_value = true)]
    pub max_initrd_size: u64,
    /// The guest disk: an image file or a block device.
    #[arg(required = true)]
    pub disk: Option<PathBuf>,
}

impl BootArgs {
    /// The log verbosity these flags ask for.
    pub fn verbosity(&self) -> u8 {
        if self.debug {
            2
        } else if self.quiet {
            0
        } else {
            1u8.saturating_add(self.verbose)
        }
    }
}

/// clap's message as one line: its lines up to the first blank one (the
/// usage block follows), trimmed and joined. Some messages put what they
/// are about on the following lines ("the following required arguments
/// were not provided:" / "  <DISK>"), so the first line alone names nothing.
fn one_line(text: &str) -> String {
    let msg: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
    let msg = msg.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    if msg.is_empty() {
        "invalid arguments".to_owned()
    } else {
        msg.to_owned()
    }
}

/// Parse `args` and run; the process exit code.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "nixboot: error: usage: {} (see nixboot --help)",
                one_line(&e.to_string())
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::List(l)) => {
            crate::logging::init(1u8.saturating_add(l.verbose));
            crate::app::list(&l)
        }
        Some(Command::Image(i)) => {
            crate::logging::init(1u8.saturating_add(i.verbose));
            crate::image::run(&i.options())
        }
        Some(Command::GenerateAssets(g)) => {
            crate::logging::init(1);
            crate::assets::generate(&g.dir)
        }
        None => {
            crate::logging::init(cli.boot.verbosity());
            crate::app::boot(&cli.boot)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixboot: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("nixboot").chain(args.iter().copied()))
    }

    #[test]
    fn libxl_plain_argv() {
        let c = parse(&[
            "--output=/var/lib/xen/bootloader.1.out",
            "--output-format=simple0",
            "--output-directory=/var/lib/xen/bootloader.1.d",
            "/guest/guest.img",
        ])
        .unwrap();
        assert!(c.command.is_none());
        let b = c.boot;
        assert_eq!(b.output.unwrap(), PathBuf::from("/var/lib/xen/bootloader.1.out"));
        assert_eq!(b.output_format, Format::Simple0);
        assert_eq!(
            b.output_directory.unwrap(),
            PathBuf::from("/var/lib/xen/bootloader.1.d")
        );
        assert_eq!(b.disk.unwrap(), PathBuf::from("/guest/guest.img"));
        assert_eq!(b.max_kernel_size, DEFAULT_MAX_KERNEL);
    }

    #[test]
    fn libxl_full_argv_with_bootloader_args() {
        let b = parse(&[
            "--kernel=/boot/vmlinuz",
            "--ramdisk=/boot/initrd.img",
            "--args=console=hvc0 marker=from-xl-extra",
            "--runas=131073",
            "--quiet",
            "--output=/var/lib/xen/bootloader.3.out",
            "--output-format=simple0",
            "--output-directory=/var/lib/xen/bootloader.3.d",
            "--entry=41",
            "/dev/vg0/guest",
        ])
        .unwrap()
        .boot;
        assert_eq!(b.kernel.as_deref(), Some("/boot/vmlinuz"));
        assert_eq!(b.ramdisk.as_deref(), Some("/boot/initrd.img"));
        assert_eq!(b.args.as_deref(), Some("console=hvc0 marker=from-xl-extra"));
        assert_eq!(b.runas, Some(131073));
        assert!(b.quiet);
        assert_eq!(b.entry.as_deref(), Some("41"));
        assert_eq!(b.verbosity(), 0);
    }

    #[test]
    fn disk_may_come_first_and_args_may_start_with_a_dash() {
        let b = parse(&["disk.img", "--args=-s", "-q", "--output-format=simple"])
            .unwrap()
            .boot;
        assert_eq!(b.disk.unwrap(), PathBuf::from("disk.img"));
        assert_eq!(b.args.as_deref(), Some("-s"));
    }

    #[test]
    fn usage_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--output-format=xml", "d"]).is_err());
        assert!(parse(&["--runas=nobody", "d"]).is_err());
        assert!(parse(&["--ramdisk=/x", "d"]).is_err());
        assert!(parse(&["--max-kernel-size=2G", "d"]).is_err());
        assert!(parse(&["a", "b"]).is_err());
    }

    #[test]
    fn repeated_options_override_like_getopt() {
        let b = parse(&["--quiet", "--entry=1", "-q", "--entry=2", "--args=a", "--args=b", "d"])
            .unwrap()
            .boot;
        assert!(b.quiet);
        assert_eq!(b.entry.as_deref(), Some("2"));
        assert_eq!(b.args.as_deref(), Some("b"));
    }

    #[test]
    fn usage_messages_keep_their_detail_lines() {
        let e = parse(&["--ramdisk=/x", "d"]).unwrap_err();
        assert_eq!(
            one_line(&e.to_string()),
            "the following required arguments were not provided: --kernel <PATH>"
        );
        let e = parse(&["--output=-"]).unwrap_err();
        assert_eq!(
            one_line(&e.to_string()),
            "the following required arguments were not provided: <DISK>"
        );
        assert_eq!(one_line(""), "invalid arguments");
    }

    #[test]
    fn list_subcommand() {
        let c = parse(&["list", "--json", "disk.img"]).unwrap();
        match c.command {
            Some(Command::List(l)) => {
                assert!(l.json);
                assert_eq!(l.disk, PathBuf::from("disk.img"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn image_subcommand() {
        let c = parse(&[
            "image",
            "--system",
            "./result",
            "--size",
            "10G",
            "--output",
            "d.img",
            "--channel",
            "https://c/x",
            "x",
        ])
        .unwrap();
        let Some(Command::Image(i)) = c.command else {
            panic!("not image")
        };
        let o = i.options();
        assert_eq!(o.size, 10 << 30);
        assert_eq!(o.table, crate::image::fs::Table::Mbr);
        assert_eq!(o.label, "NIXOS");
        assert_eq!(o.channel, Some(("https://c/x".into(), Some("x".into()))));
        let c = parse(&[
            "image",
            "--system",
            "s",
            "--size",
            "64M",
            "-o",
            "d",
            "--partition-table",
            "gpt",
            "--channel",
            "u",
        ])
        .unwrap();
        let Some(Command::Image(i)) = c.command else {
            panic!("not image")
        };
        assert_eq!(i.options().channel, Some(("u".into(), None)));
        assert!(parse(&["image", "--system", "s", "--size", "1M", "-o", "d"]).is_err());
        assert!(parse(&["image", "--system", "s", "--size", "1G", "-o", "d", "--memory", "5"]).is_err());
        assert_eq!(parse_disk_size("2T"), Ok(2 << 40));
        assert_eq!(parse_disk_size("512MiB"), Ok(512 << 20));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
    }
}
