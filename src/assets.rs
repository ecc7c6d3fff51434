//! Man pages and shell completions, generated from the clap definitions
//! (`nixboot generate-assets DIR`, hidden from `--help`; packagers run it
//! with the built binary). dom0 side; no guest data.
//!
//! `nixboot(1)` is clap_mangen's NAME, SYNOPSIS and OPTIONS, one
//! subsection per visible subcommand (so a subcommand added to
//! [`crate::cli::Command`] is documented without touching this file),
//! then the sections below: the libxl argv, which generation boots, the
//! menu, logging, exit status, limits (from [`crate::limits`]), restricted
//! mode, environment, files and examples. Each visible subcommand also
//! gets its own `nixboot-<name>(1)`. Completions: bash, zsh and fish.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use crate::cli::Cli;
use crate::error::Error;
use crate::limits::{
    CHILD_ADDRESS_SPACE, CHILD_DEADLINE_SECS, DEFAULT_MAX_INITRD, DEFAULT_MAX_KERNEL, MAX_BOOT_FILE, MAX_BOOTSPEC,
    MAX_CMDLINE, MAX_DIR_ENTRIES, MAX_EBR_HOPS, MAX_GENERATIONS, MAX_GPT_ENTRIES, MAX_GPT_ENTRY_SIZE,
    MAX_GUEST_MENU_TIMEOUT, MAX_INSTALLED_FILE, MAX_KERNEL_DECOMPRESSED, MAX_KERNEL_PARAMS, MAX_PARTITIONS,
    MAX_PATH_LEN, MAX_SMALL_FILE, MAX_SPECIALISATIONS, MAX_SYMLINKS, MIB,
};
use crate::menu::{DEFAULT_TIMEOUT, HARD_DEADLINE};
use crate::nixos::installed::INSTALLED_FILE;

/// Completion scripts written, with their file names.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "nixboot.bash"),
    (Shell::Zsh, "_nixboot"),
    (Shell::Fish, "nixboot.fish"),
];

/// A block of man page text.
enum Block {
    /// A paragraph.
    P(&'static str),
    /// A paragraph built at run time (limits).
    Owned(String),
    /// A tagged paragraph: the tag in bold, then the text.
    Item(&'static str, &'static str),
    /// A tagged paragraph built at run time.
    ItemOwned(String, String),
    /// Literal lines, indented, not filled.
    Code(&'static str),
}

use Block::{Code, Item, ItemOwned, Owned, P};

fn render_blocks(roff: &mut Roff, blocks: &[Block]) {
    for b in blocks {
        match b {
            P(t) => {
                roff.control("PP", []).text([roman(*t)]);
            }
            Owned(t) => {
                roff.control("PP", []).text([roman(t.as_str())]);
            }
            Item(tag, t) => {
                roff.control("TP", []).text([bold(*tag)]).text([roman(*t)]);
            }
            ItemOwned(tag, t) => {
                roff.control("TP", [])
                    .text([bold(tag.as_str())])
                    .text([roman(t.as_str())]);
            }
            Code(t) => {
                roff.control("PP", []).control("RS", ["4"]).control("nf", []);
                for line in t.lines() {
                    roff.text([roman(line)]);
                }
                roff.control("fi", []).control("RE", []);
            }
        }
    }
}

fn section(roff: &mut Roff, name: &str, blocks: &[Block]) {
    roff.control("SH", [name]);
    render_blocks(roff, blocks);
}

fn description() -> Vec<Block> {
    vec![
        P(
            "nixboot is a Xen PV boot loader for NixOS guests that libxl runs in dom0 the way it runs pygrub: name it in a domain configuration as bootloader = \"/usr/bin/nixboot\". It opens the guest disk read-only, finds the ext4 filesystem holding the NixOS system profile (/nix/var/nix/profiles/system), follows it to the generation the guest last installed, reads that generation's boot.json (or, before NixOS 23.05, its kernel, initrd, init and kernel-params files), checks that the kernel is a Xen PV or PVH kernel, copies kernel and initrd into dom0 and hands libxl the kernel, the ramdisk and the command line init=<toplevel>/init <kernelParams> <--args>.",
        ),
        P(
            "Without a subcommand nixboot boots (libxl's argv, below); nixboot list shows the generations on a disk. The guest disk is parsed by a confined child process; nothing on the disk is trusted.",
        ),
    ]
}

fn libxl() -> Vec<Block> {
    vec![
        P("For a domain with bootloader = \"/usr/bin/nixboot\", libxl (xl create, xendomains) runs, as root:"),
        Code(
            "nixboot [--kernel=P] [--ramdisk=P] [--args=CMDLINE] [--runas=UID --quiet]\n        --output=/var/lib/xen/bootloader.<domid>.out --output-format=simple0\n        --output-directory=/var/lib/xen/bootloader.<domid>.d [bootloader_args...] <disk>",
        ),
        P(
            "kernel= and ramdisk= of the domain configuration become --kernel and --ramdisk (guest paths, booted as they are, with --args as the whole command line); extra=, root= and cmdline= become --args, appended to the generation's command line; bootloader_args are passed verbatim (e.g. --entry=41); --runas and --quiet come with restricted mode. The disk is always last. stdin, stdout and stderr are a pty: the guest console (xl create -c) and the log file.",
        ),
        P(
            "The result goes into the --output file libxl created, in simple0 format: NUL-terminated items kernel <path>, ramdisk <path> and args <command line>. The kernel and ramdisk copies are new files (mode 0600) inside --output-directory; libxl maps and deletes them. No value with NUL, newline or another control character is ever written.",
        ),
    ]
}

fn which() -> Vec<Block> {
    vec![
        Owned(format!(
            "Without --entry or --kernel, nixboot boots the installed default: the toplevel recorded in {INSTALLED_FILE} by the guest's last switch-to-configuration switch or boot (the install hook of the NixOS module xen/nix/guest.nix), when that file is valid and names a generation of a profile (the system profile or a nixos-rebuild -p NAME profile) or a specialisation of one. This follows nixos-rebuild switch --specialisation X and system-N-link/bin/switch-to-configuration boot, where the profile alone is wrong. Otherwise (no file, an invalid file, an unknown toplevel) it boots the profile's current generation, and says why in the log."
        )),
        P(
            "A generation is bootable when its kernel and initrd are regular files within the size caps and the kernel is a Xen kernel (an ELF, or a bzImage whose payload libxenguest can decompress, carrying Xen's PV entry note XEN_ELFNOTE_ENTRY or its PVH one XEN_ELFNOTE_PHYS32_ENTRY; --domain-type=pv|pvh requires that mode's). If the default entry is not bootable, nixboot boots the newest older bootable generation and says so on the console; with --entry it never falls back. Kernels that passed the check are remembered in /var/cache/nixboot/pv-kernels.",
        ),
        P(
            "--entry=N boots generation N; --entry=N/NAME its specialisation NAME; --entry=NAME the default generation's specialisation NAME; --entry=TITLE the entry with that exact menu title (NixOS - Configuration N (DATE - VERSION)). An unknown entry is an error naming what exists.",
        ),
    ]
}

fn menu() -> Vec<Block> {
    vec![Owned(format!(
        "On a terminal (libxl's pty, seen with xl create -c), without -q, --runas, --entry, --kernel or -n, nixboot shows the generations and their specialisations, newest first, and counts down before booting the highlighted default: --timeout seconds, else the guest's boot.loader.timeout from {INSTALLED_FILE} (null: wait for a key; a guest cannot ask for more than {MAX_GUEST_MENU_TIMEOUT} s), else {DEFAULT_TIMEOUT} s; 0 boots at once. The guest's configuration limit keeps the menu to its newest generations. Up/Down (k/j) select, Enter boots, e edits the command line for this boot only, any key stops the countdown. Nothing waits longer than {} s.",
        HARD_DEADLINE.as_secs()
    ))]
}

fn logging() -> Vec<Block> {
    vec![
        P(
            "Messages are plain lines on stderr starting with nixboot:. libxl copies them to the guest console and to /var/log/xen/bootloader.<domid>.log. By default they say which entry boots, from which partition and why (the installed default, the profile, --entry, the menu, or a fallback and its cause), the toplevel, the kernel and initrd with their sizes, the command line and where the result was written.",
        ),
        P(
            "-q (which libxl passes in restricted mode) keeps warnings and the one line saying which entry boots and why; -v adds debug lines; RUST_LOG (e.g. RUST_LOG=debug) overrides both. Errors are one line: nixboot: error: guest disk: ... (the guest's data is at fault), nixboot: error: dom0: ... (host I/O, the output directory) or nixboot: error: usage: .... Strings from the guest are shown escaped.",
        ),
    ]
}

fn exit_status() -> Vec<Block> {
    vec![
        Item(
            "0",
            "The result file is complete (kernel, ramdisk, args); for list, the listing was printed.",
        ),
        Item(
            "1",
            "Any failure: the guest disk is corrupt, unsupported or hostile, no generation is bootable, or dom0 I/O failed. One line on stderr says which.",
        ),
        Item("2", "Usage error: bad options or arguments."),
    ]
}

fn mib(b: u64) -> String {
    format!("{} MiB", b / MIB)
}

fn limits() -> Vec<Block> {
    vec![
        P(
            "Every size, count and depth that comes from the guest is capped; going over a cap is an error, never a truncation.",
        ),
        ItemOwned(
            "kernel, initrd".into(),
            format!(
                "{} and {} by default (--max-kernel-size, --max-initrd-size; at most {}, libxc's own limit).",
                mib(DEFAULT_MAX_KERNEL),
                mib(DEFAULT_MAX_INITRD),
                mib(MAX_BOOT_FILE)
            ),
        ),
        ItemOwned(
            "files read".into(),
            format!(
                "boot.json {}; other toplevel files {} KiB; {INSTALLED_FILE} {} KiB.",
                mib(MAX_BOOTSPEC),
                MAX_SMALL_FILE / 1024,
                MAX_INSTALLED_FILE / 1024
            ),
        ),
        ItemOwned(
            "paths".into(),
            format!("{MAX_SYMLINKS} symlinks per resolution, {MAX_PATH_LEN} bytes per path."),
        ),
        ItemOwned(
            "generations".into(),
            format!(
                "{MAX_DIR_ENTRIES} directory entries listed, the newest {MAX_GENERATIONS} generations considered, {MAX_SPECIALISATIONS} specialisations per generation, {MAX_KERNEL_PARAMS} kernel parameters per entry."
            ),
        ),
        ItemOwned(
            "command line".into(),
            format!("{MAX_CMDLINE} bytes, what a PV guest receives; longer is an error."),
        ),
        ItemOwned(
            "partitions".into(),
            format!(
                "{MAX_PARTITIONS} partitions, {MAX_GPT_ENTRIES} GPT entries of at most {MAX_GPT_ENTRY_SIZE} bytes, {MAX_EBR_HOPS} extended boot records."
            ),
        ),
        ItemOwned(
            "kernel check".into(),
            format!("{} of payload decompressed.", mib(MAX_KERNEL_DECOMPRESSED)),
        ),
        ItemOwned(
            "parse child".into(),
            format!(
                "{} of address space, {CHILD_DEADLINE_SECS} s of wall clock and CPU time.",
                mib(CHILD_ADDRESS_SPACE)
            ),
        ),
        ItemOwned(
            "menu".into(),
            format!(
                "a guest's timeout at most {MAX_GUEST_MENU_TIMEOUT} s; the menu at most {} s.",
                HARD_DEADLINE.as_secs()
            ),
        ),
    ]
}

fn restricted() -> Vec<Block> {
    vec![
        P(
            "With LIBXL_BOOTLOADER_RESTRICT=1 (or LIBXL_BOOTLOADER_USER) in xl's environment (Xen 4.17.3 and later; Xen 4.18 and later also have bootloader_restrict = 1 in the domain configuration and xl.conf), libxl passes --runas=<uid> --quiet, where uid is that of the user xen-qemuuser-range-base plus the domid, and kills the boot loader after LIBXL_BOOTLOADER_TIMEOUT seconds (default 120).",
        ),
        P(
            "nixboot then runs its parse child in new mount, IPC, network and UTS namespaces, chrooted into an empty read-only tmpfs, as that uid and gid with no supplementary groups, in addition to the seccomp allowlist and resource limits it always applies. There is no menu. --runas=0 is refused. The parent stays root only to open the disk and the output files. Set up the uid range once:",
        ),
        Code(
            "adduser --system --no-create-home --uid 65536 --group xen-qemuuser-range-base\necho 'LIBXL_BOOTLOADER_RESTRICT=1' >> /etc/default/xendomains",
        ),
    ]
}

fn environment() -> Vec<Block> {
    vec![
        Item(
            "RUST_LOG",
            "Log filter (error, warn, info, debug, trace); overrides -q and -v.",
        ),
        Item(
            "NIXBOOT_CACHE_DIR",
            "Where kernels that passed the PV check are remembered (default /var/cache/nixboot); empty disables the cache.",
        ),
        Item(
            "TMPDIR",
            "Where a private output directory is made when --output-directory is not given.",
        ),
        Item(
            "LIBXL_BOOTLOADER_RESTRICT, LIBXL_BOOTLOADER_USER, LIBXL_BOOTLOADER_TIMEOUT",
            "Read by libxl, not by nixboot: restricted mode and its timeout.",
        ),
    ]
}

fn files() -> Vec<Block> {
    vec![
        Item(
            "/var/lib/xen/bootloader.<domid>.out",
            "The result file libxl creates and reads (simple0).",
        ),
        Item(
            "/var/lib/xen/bootloader.<domid>.d/",
            "Where the kernel and initrd copies go (boot_kernel.XXXXXXXX, boot_ramdisk.XXXXXXXX); libxl removes it.",
        ),
        Item(
            "/var/log/xen/bootloader.<domid>.log",
            "Everything nixboot prints for that domain: what booted and why, warnings, errors.",
        ),
        Item(
            "/var/cache/nixboot/pv-kernels",
            "Keys of kernels that passed the Xen PV check.",
        ),
        Item(
            "/nix/var/nix/profiles/system, system-N-link",
            "In the guest: the system profile and its generations; /nix/var/nix/profiles/system-profiles/NAME and NAME-N-link, the profiles of nixos-rebuild -p NAME.",
        ),
        Item(
            "/nix/var/nix/nixboot.json",
            "In the guest: the installed default, timeout and menu limit, written by xen/nix/guest.nix's install hook.",
        ),
        Item(
            "/usr/share/doc/nixboot/examples/",
            "A commented domain configuration and the restricted-mode setup.",
        ),
    ]
}

fn examples(cmd: &clap::Command) -> Vec<Block> {
    let mut v = vec![
        P("A domain configuration (/etc/xen/guest.cfg):"),
        Code(
            "type       = \"pv\"\nbootloader = \"/usr/bin/nixboot\"\nextra      = \"console=hvc0\"\ndisk       = [ 'format=raw,vdev=xvda,access=rw,target=/srv/xen/guest.img' ]\n#bootloader_args = [ \"--entry=41\" ]   # roll back",
        ),
        P("Boot generation 41 once, without editing the configuration:"),
        Code("xl create /etc/xen/guest.cfg 'bootloader_args=[\"--entry=41\"]'"),
        P("What would boot, without copying anything; the same with a specialisation:"),
        Code("nixboot -n /srv/xen/guest.img\nnixboot -n --entry=41/debug /srv/xen/guest.img"),
        P("Run as libxl does, printing the result instead of writing libxl's file:"),
        Code("nixboot -q --output-format=simple --args=console=hvc0 /dev/vg0/guest"),
        P("List the generations, as a table and as JSON:"),
        Code("nixboot list /srv/xen/guest.img\nnixboot list --json /srv/xen/guest.img"),
        P("Read why the last boot of domain 7 chose what it did:"),
        Code("grep 'nixboot:' /var/log/xen/bootloader.7.log"),
    ];
    if cmd.find_subcommand("image").is_some_and(|s| !s.is_hide_set()) {
        v.push(P(
            "Build a disk image from a NixOS system and a domain configuration that boots it:",
        ));
        v.push(Code(
            "nixboot image --system ./result --size 8G --output guest.img --domain-config guest.cfg",
        ));
    }
    v
}

fn see_also(cmd: &clap::Command) -> Vec<Block> {
    let mut refs: Vec<String> = visible_subcommands(cmd)
        .map(|s| format!("nixboot-{}(1)", s.get_name()))
        .collect();
    refs.extend(["xl(1)", "xl.cfg(5)", "xl.conf(5)", "pygrub(1)"].map(String::from));
    vec![
        Owned(refs.join(", ")),
        P("The README in /usr/share/doc/nixboot/ (design, security model, the NixOS guest module)."),
    ]
}

fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// The clap command, built (bin names and display names set).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Render one clap_mangen section into roff text without its `.SH` line.
fn chunk(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> std::io::Result<String> {
    let mut buf = Vec::new();
    f(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text
        .lines()
        .filter(|l| !l.starts_with(".SH "))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// `nixboot(1)`.
pub fn main_page() -> std::io::Result<String> {
    let cmd = command();
    let man = Man::new(cmd.clone()).manual("nixboot manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    let mut roff = Roff::new();
    section(&mut roff, "DESCRIPTION", &description());
    roff.to_writer(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    roff.to_writer(&mut out)?;
    for sub in visible_subcommands(&cmd) {
        let sm = Man::new(sub.clone());
        let mut roff = Roff::new();
        roff.control("SS", [sub.get_bin_name().unwrap_or(sub.get_name())]);
        roff.to_writer(&mut out)?;
        out.extend_from_slice(chunk(|b| sm.render_synopsis_section(b))?.as_bytes());
        out.extend_from_slice(b".PP\n");
        out.extend_from_slice(chunk(|b| sm.render_description_section(b))?.as_bytes());
        out.extend_from_slice(chunk(|b| sm.render_options_section(b))?.as_bytes());
        let mut roff = Roff::new();
        roff.control("PP", []).text([
            roman("See "),
            italic(format!("nixboot-{}", sub.get_name())),
            roman("(1)."),
        ]);
        roff.to_writer(&mut out)?;
    }
    let mut roff = Roff::new();
    section(&mut roff, "LIBXL INVOCATION", &libxl());
    section(&mut roff, "WHICH GENERATION BOOTS", &which());
    section(&mut roff, "CONSOLE MENU", &menu());
    section(&mut roff, "LOGGING", &logging());
    section(&mut roff, "EXIT STATUS", &exit_status());
    section(&mut roff, "LIMITS", &limits());
    section(&mut roff, "RESTRICTED MODE", &restricted());
    section(&mut roff, "ENVIRONMENT", &environment());
    section(&mut roff, "FILES", &files());
    section(&mut roff, "EXAMPLES", &examples(&cmd));
    section(&mut roff, "SEE ALSO", &see_also(&cmd));
    roff.to_writer(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `nixboot-<name>(1)` for each visible subcommand: (file name, roff).
pub fn subcommand_pages() -> std::io::Result<Vec<(String, String)>> {
    let cmd = command();
    let mut pages = Vec::new();
    for sub in visible_subcommands(&cmd) {
        let man = Man::new(sub.clone()).manual("nixboot manual");
        let mut out = Vec::new();
        man.render(&mut out)?;
        let mut roff = Roff::new();
        section(&mut roff, "EXIT STATUS", &exit_status());
        roff.control("SH", ["SEE ALSO"]).text([italic("nixboot"), roman("(1)")]);
        roff.to_writer(&mut out)?;
        pages.push((man.get_filename(), String::from_utf8_lossy(&out).into_owned()));
    }
    Ok(pages)
}

/// A completion script. clap_complete completes hidden subcommands too,
/// so it gets a copy of the command without them.
pub fn completion(shell: Shell) -> Vec<u8> {
    let full = Cli::command();
    let mut cmd = clap::Command::new("nixboot")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .args_conflicts_with_subcommands(true)
        .subcommand_negates_reqs(true);
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "nixboot", &mut out);
    out
}

fn write(path: PathBuf, bytes: &[u8]) -> Result<(), Error> {
    let mut f = fs::File::create(&path).map_err(|e| Error::host(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::host(format!("writing {}", path.display()), e))?;
    log::info!("wrote {}", path.display());
    Ok(())
}

/// Write `DIR/man/*.1` and `DIR/completions/*`.
pub fn generate(dir: &Path) -> Result<(), Error> {
    let (man_dir, comp_dir) = (dir.join("man"), dir.join("completions"));
    for d in [&man_dir, &comp_dir] {
        fs::create_dir_all(d).map_err(|e| Error::host(format!("creating {}", d.display()), e))?;
    }
    let io = |e| Error::host("rendering the man page", e);
    write(man_dir.join("nixboot.1"), main_page().map_err(io)?.as_bytes())?;
    for (name, page) in subcommand_pages().map_err(io)? {
        write(man_dir.join(name), page.as_bytes())?;
    }
    for (shell, name) in SHELLS {
        write(comp_dir.join(name), &completion(shell))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How roff shows a long option: `--output-format` → `\-\-output\-format`.
    fn roff_long(name: &str) -> String {
        format!("--{name}").replace('-', "\\-")
    }

    fn long_options(cmd: &clap::Command) -> Vec<String> {
        cmd.get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "help" | "version"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn man_page_documents_every_option_and_section() {
        let page = main_page().unwrap();
        let cmd = command();
        let mut checked = 0;
        for long in long_options(&cmd) {
            assert!(page.contains(&roff_long(&long)), "nixboot(1) lacks --{long}");
            checked += 1;
        }
        for sub in visible_subcommands(&cmd) {
            assert!(
                page.contains(&format!(".SS \"nixboot {}\"", sub.get_name()))
                    || page.contains(&format!(".SS nixboot {}", sub.get_name())),
                "nixboot(1) lacks the {} subcommand",
                sub.get_name()
            );
            for long in long_options(sub) {
                assert!(
                    page.contains(&roff_long(&long)),
                    "nixboot(1) lacks {} --{long}",
                    sub.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} options found");
        for s in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "COMMANDS",
            "\"LIBXL INVOCATION\"",
            "\"WHICH GENERATION BOOTS\"",
            "\"EXIT STATUS\"",
            "LIMITS",
            "\"RESTRICTED MODE\"",
            "ENVIRONMENT",
            "FILES",
            "EXAMPLES",
            "\"SEE ALSO\"",
        ] {
            assert!(page.contains(&format!("\n.SH {s}\n")), "nixboot(1) lacks section {s}");
        }
        for text in [
            "/var/lib/xen/bootloader.<domid>.out",
            "/var/lib/xen/bootloader.<domid>.d",
            "/var/log/xen/bootloader.<domid>.log",
            "/nix/var/nix/nixboot.json",
            "\\-\\-output\\-format=simple0",
            "nixboot list",
            "xen\\-qemuuser\\-range\\-base",
        ] {
            assert!(page.contains(text), "nixboot(1) lacks {text}");
        }
        assert!(!page.contains("generate\\-assets"), "the hidden subcommand leaked");
    }

    #[test]
    fn man_page_is_valid_roff_for_man() {
        let page = main_page().unwrap();
        assert!(page.lines().any(|l| l.starts_with(".TH nixboot 1 ")), "{}", &page[..80]);
        // Every line that starts with a dot is a request we emitted, never
        // text that roff would take for one.
        for line in page.lines().filter(|l| l.starts_with('.')) {
            let req = line.split_whitespace().next().unwrap();
            assert!(
                matches!(
                    req,
                    ".TH"
                        | ".SH"
                        | ".SS"
                        | ".PP"
                        | ".TP"
                        | ".RS"
                        | ".RE"
                        | ".nf"
                        | ".fi"
                        | ".br"
                        | ".ie"
                        | ".el"
                        | ".IP"
                ),
                "unexpected request line {line:?}"
            );
        }
    }

    #[test]
    fn subcommand_pages_and_completions() {
        let pages = subcommand_pages().unwrap();
        assert!(
            pages
                .iter()
                .any(|(n, p)| n == "nixboot-list.1" && p.contains("\\-\\-json"))
        );
        assert!(pages.iter().all(|(n, _)| !n.contains("generate")));
        for (shell, _) in SHELLS {
            let c = String::from_utf8(completion(shell)).unwrap();
            assert!(c.contains("output-format") && c.contains("list"), "{shell}");
            assert!(
                !c.contains("generate-assets"),
                "{shell} completes the hidden subcommand"
            );
        }
    }
}
