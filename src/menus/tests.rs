//! The corpus of real menus in `testdata/menus/` (provenance in
//! `testdata/README.md`), parsed and checked entry by entry, plus the
//! grammar's corner cases and caps.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::expect_used,
    clippy::type_complexity
)]

use super::*;

fn corpus(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/menus")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One entry as the tests state it: title, submenu path, kernel
/// (device, path), initrd paths, args, problem.
fn summary(
    e: &Entry,
) -> (
    String,
    String,
    Option<(Option<Device>, String)>,
    Vec<String>,
    String,
    bool,
) {
    (
        s(&e.title),
        e.submenus.iter().map(|l| s(&l.title)).collect::<Vec<_>>().join(">"),
        e.kernel.as_ref().map(|k| (k.device.clone(), s(&k.path))),
        e.initrds.iter().map(|i| s(&i.path)).collect(),
        s(&e.args),
        e.problem.is_some(),
    )
}

fn uuid(u: &str) -> Option<Device> {
    Some(Device::FsUuid(u.into()))
}

fn grub(text: &[u8], dir: &str, files: &MemFiles) -> Menu {
    grub::parse(text, &grub::Context { dir: dir.into() }, files).unwrap()
}

const DEB_BOOT: &str = "5b8e2a5c-6d1f-4c1e-9a55-0d3c2f1e7a01";
const DEB_ROOT: &str = "0f2c7e11-4b0a-4c2e-8f3b-6a1d9e5c2b02";

#[test]
fn debian12_grub_mkconfig() {
    // /boot is partition 1: grub.cfg is /grub/grub.cfg on it.
    let m = grub(&corpus("debian12-grub.cfg"), "/grub", &MemFiles::default());
    let args = format!("root=UUID={DEB_ROOT} ro quiet");
    let single = format!("root=UUID={DEB_ROOT} ro single");
    let k = |v: &str| Some((uuid(DEB_BOOT), format!("/vmlinuz-{v}")));
    let i = |v: &str| vec![format!("/initrd.img-{v}")];
    let adv = "Advanced options for Debian GNU/Linux";
    let want = vec![
        (
            "Debian GNU/Linux".into(),
            "".into(),
            k("6.1.0-28-amd64"),
            i("6.1.0-28-amd64"),
            args.clone(),
            false,
        ),
        (
            "Debian GNU/Linux, with Linux 6.1.0-28-amd64".into(),
            adv.into(),
            k("6.1.0-28-amd64"),
            i("6.1.0-28-amd64"),
            args.clone(),
            false,
        ),
        (
            "Debian GNU/Linux, with Linux 6.1.0-28-amd64 (recovery mode)".into(),
            adv.into(),
            k("6.1.0-28-amd64"),
            i("6.1.0-28-amd64"),
            single.clone(),
            false,
        ),
        (
            "Debian GNU/Linux, with Linux 6.1.0-27-amd64".into(),
            adv.into(),
            k("6.1.0-27-amd64"),
            i("6.1.0-27-amd64"),
            args.clone(),
            false,
        ),
        (
            "Debian GNU/Linux, with Linux 6.1.0-27-amd64 (recovery mode)".into(),
            adv.into(),
            k("6.1.0-27-amd64"),
            i("6.1.0-27-amd64"),
            single,
            false,
        ),
    ];
    assert_eq!(m.entries.iter().map(summary).collect::<Vec<_>>(), want);
    assert_eq!(m.default.as_deref(), Some(&b"0"[..]));
    assert_eq!(m.default_index(), Some(0));
    assert_eq!(m.timeout, Some(Timeout::Secs(5)));
    assert_eq!(
        m.entries[0].id.as_deref(),
        Some(format!("gnulinux-simple-{DEB_ROOT}").as_bytes())
    );
    assert_eq!(m.entries[3].index, 2);
    assert_eq!(
        m.entries[3].submenus[0].id.as_deref(),
        Some(format!("gnulinux-advanced-{DEB_ROOT}").as_bytes())
    );
    // The functions are skipped, the calls to them noted.
    assert!(m.notes.iter().any(|n| n.contains("\"loadfont\"")), "{:?}", m.notes);
}

#[test]
fn debian12_saved_default_from_grubenv() {
    let cfg = corpus("debian12-saved-grub.cfg");
    // Without a grubenv: saved_entry is empty, the default is entry 0.
    let m = grub(&cfg, "/grub", &MemFiles::default());
    assert_eq!(m.default, None);
    assert_eq!(m.default_index(), Some(0));
    // With grubenv (made by grub-editenv): the id path of the 6.1.0-27 entry.
    let files = MemFiles::default().with("/grub/grubenv", corpus("debian12-saved-grubenv"));
    let m = grub(&cfg, "/grub", &files);
    let d = m.default_index().unwrap();
    assert_eq!(s(&m.entries[d].title), "Debian GNU/Linux, with Linux 6.1.0-27-amd64");
    assert_eq!(select(&m, &Selector::Default), Ok(3));
    // next_entry (grub-reboot) wins over saved_entry.
    let mut env = corpus("debian12-saved-grubenv");
    env.splice(..0, b"next_entry=1>1\n".iter().copied());
    let files = MemFiles::default().with("/grub/grubenv", env);
    let m = grub(&cfg, "/grub", &files);
    assert_eq!(
        s(&m.entries[m.default_index().unwrap()].title),
        "Debian GNU/Linux, with Linux 6.1.0-28-amd64 (recovery mode)"
    );
}

#[test]
fn ubuntu2204_recordfail_and_gfxmode() {
    let u = "7d1e0a44-2b7e-4c59-8bb0-6d6a4f1c3e21";
    let m = grub(&corpus("ubuntu2204-grub.cfg"), "/boot/grub", &MemFiles::default());
    let k = Some((uuid(u), "/boot/vmlinuz-5.15.0-91-generic".to_string()));
    let i = vec!["/boot/initrd.img-5.15.0-91-generic".to_string()];
    // `$vt_handoff` is set by the `gfxmode` function, and functions are
    // never run: it stays empty (vt.handoff means nothing to a PV console).
    let quiet = format!("root=UUID={u} ro quiet splash");
    let rec = format!("root=UUID={u} ro recovery nomodeset dis_ucode_ldr");
    let adv = "Advanced options for Ubuntu".to_string();
    assert_eq!(
        m.entries.iter().map(summary).collect::<Vec<_>>(),
        vec![
            ("Ubuntu".into(), "".into(), k.clone(), i.clone(), quiet.clone(), false),
            (
                "Ubuntu, with Linux 5.15.0-91-generic".into(),
                adv.clone(),
                k.clone(),
                i.clone(),
                quiet,
                false
            ),
            (
                "Ubuntu, with Linux 5.15.0-91-generic (recovery mode)".into(),
                adv,
                k,
                i,
                rec,
                false
            ),
        ]
    );
    // timeout_style=hidden, timeout=0 ...
    assert_eq!(m.timeout, Some(Timeout::Secs(0)));
    // ... unless the last boot failed (recordfail=1 in grubenv): 30 s.
    let files = MemFiles::default().with("/boot/grub/grubenv", corpus("ubuntu2204-grubenv"));
    let m = grub(&corpus("ubuntu2204-grub.cfg"), "/boot/grub", &files);
    assert_eq!(m.timeout, Some(Timeout::Secs(30)));
    assert_eq!(s(&m.entries[0].args), format!("root=UUID={u} ro quiet splash"));
}

#[test]
fn ubuntu2404_memtest_and_efi_only_entries() {
    let u = "c3a9f1e2-5b4d-4e6f-8a7b-9c0d1e2f3a4b";
    let m = grub(&corpus("ubuntu2404-grub.cfg"), "/boot/grub", &MemFiles::default());
    let titles: Vec<String> = m.entries.iter().map(|e| s(&e.path_title())).collect();
    assert_eq!(
        titles,
        [
            "Ubuntu",
            "Advanced options for Ubuntu>Ubuntu, with Linux 6.8.0-31-generic",
            "Advanced options for Ubuntu>Ubuntu, with Linux 6.8.0-31-generic (recovery mode)",
            "Memory test (memtest86+x64.bin)",
        ]
    );
    // grub_platform is xen: the UEFI firmware entry is not defined.
    let memtest = &m.entries[3];
    assert_eq!(
        memtest.kernel.as_ref().unwrap().device,
        Some(Device::Partition { disk: 0, part: Some(2) })
    );
    assert_eq!(s(&memtest.kernel.as_ref().unwrap().path), "/boot/memtest86+x64.bin");
    assert_eq!(m.entries[0].kernel.as_ref().unwrap().device, uuid(u));
    assert_eq!(select(&m, &Selector::parse(b"3")), Ok(3));
    assert_eq!(
        select(
            &m,
            &Selector::parse(b"Advanced options for Ubuntu>Ubuntu, with Linux 6.8.0-31-generic (recovery mode)")
        ),
        Ok(2)
    );
}

const ALMA_MID: &str = "8a3c5e7f9b1d4f6a8c0e2b4d6f8a0c2e";

fn alma_files(with_env: bool) -> MemFiles {
    let mut f = MemFiles::default();
    if with_env {
        f = f.with("/grub2/grubenv", corpus("alma8/grub2/grubenv"));
    }
    for v in [
        "4.18.0-513.5.1.el8_9.x86_64",
        "4.18.0-477.10.1.el8_8.x86_64",
        "0-rescue",
    ] {
        let name = format!("{ALMA_MID}-{v}.conf");
        f = f.with(
            &format!("/loader/entries/{name}"),
            corpus(&format!("alma8/loader/entries/{name}")),
        );
    }
    f
}

#[test]
fn alma8_blscfg_with_grubenv_kernelopts() {
    let boot = "2e9a4c6b-8d0f-4b2a-9c4e-6f8a0b2c4d6e";
    let cfg = corpus("alma8/grub2/grub.cfg");
    let m = grub(&cfg, "/grub2", &alma_files(true));
    let opts = "root=/dev/mapper/almalinux-root ro crashkernel=auto resume=/dev/mapper/almalinux-swap \
                rd.lvm.lv=almalinux/root rd.lvm.lv=almalinux/swap console=hvc0";
    let e = |v: &str, title: &str| {
        (
            title.to_string(),
            String::new(),
            Some((uuid(boot), format!("/vmlinuz-{v}"))),
            vec![format!("/initramfs-{v}.img")],
            opts.to_string(),
            false,
        )
    };
    assert_eq!(
        m.entries.iter().map(summary).collect::<Vec<_>>(),
        vec![
            e(
                "4.18.0-513.5.1.el8_9.x86_64",
                "AlmaLinux (4.18.0-513.5.1.el8_9.x86_64) 8.9 (Midnight Oncilla)"
            ),
            e(
                "4.18.0-477.10.1.el8_8.x86_64",
                "AlmaLinux (4.18.0-477.10.1.el8_8.x86_64) 8.9 (Midnight Oncilla)"
            ),
            e(
                &format!("0-rescue-{ALMA_MID}"),
                &format!("AlmaLinux (0-rescue-{ALMA_MID}) 8.9 (Midnight Oncilla)")
            ),
        ]
    );
    assert_eq!(
        m.default.as_deref(),
        Some(format!("{ALMA_MID}-4.18.0-513.5.1.el8_9.x86_64").as_bytes())
    );
    assert_eq!(m.default_index(), Some(0));
    assert_eq!(m.timeout, Some(Timeout::Secs(5)));
    // Without grubenv: the fallback kernelopts from grub.cfg, default 0.
    let m = grub(&cfg, "/grub2", &alma_files(false));
    assert!(
        s(&m.entries[0].args).ends_with("rd.lvm.lv=almalinux/swap rhgb quiet"),
        "{}",
        s(&m.entries[0].args)
    );
    assert_eq!(m.default_index(), Some(0));
}

#[test]
fn nixos_install_grub() {
    let u = "5e2b8f4a-1c3d-4e6f-9a0b-2c4d6e8f0a1b";
    let m = grub(&corpus("nixos-grub.cfg"), "/boot/grub", &MemFiles::default());
    let titles: Vec<String> = m.entries.iter().map(|e| s(&e.path_title())).collect();
    assert_eq!(
        titles,
        [
            "NixOS - Default",
            "NixOS - All configurations>NixOS - Configuration 2 (2024-11-02 - 24.11.20241102.bbbbbbb)",
            "NixOS - All configurations>NixOS - Configuration 1 (2024-11-01 - 24.11.20241101.aaaaaaa)",
        ]
    );
    let e = &m.entries[2];
    let k = e.kernel.as_ref().unwrap();
    assert_eq!(k.device, uuid(u));
    assert_eq!(
        s(&k.path),
        "/nix/store/3rfn2b4v6x8z0c2e4g6i8k0m2o4q6s8u-linux-6.6.58/bzImage"
    );
    assert_eq!(
        s(&e.initrds[0].path),
        "/nix/store/9h1j3l5n7p9r1t3v5x7z9b1d3f5h7j9l-initrd-linux-6.6.58/initrd"
    );
    let sys = "/nix/store/0a67imq3pqd5kjync8vsp53m8p36p1cg-nixos-system-guest-24.11.20241101.aaaaaaa";
    assert_eq!(
        s(&e.args),
        format!("systemConfig={sys} init={sys}/init console=hvc0 loglevel=4")
    );
    assert_eq!(m.default_index(), Some(0));
    assert_eq!(m.timeout, Some(Timeout::Secs(5)));
}

#[test]
fn nixos_extlinux_builder() {
    let m = extlinux::parse(
        &corpus("nixos-extlinux.conf"),
        &extlinux::Context {
            dir: b"/boot/extlinux".to_vec(),
        },
        &MemFiles::default(),
    )
    .unwrap();
    let got: Vec<_> = m.entries.iter().map(summary).collect();
    let sys2 = "/nix/store/5x2vc8pm0kh3jjq1r1j5mdn8p1qf4r9z-nixos-system-guest-24.11.20241102.bbbbbbb";
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, "NixOS - Default");
    assert_eq!(
        got[0].2,
        Some((
            None,
            "/boot/nixos/5x2vc8pmkkkkkkkkkkkkkkkkkkkkkkkk-linux-6.6.60-bzImage".into()
        ))
    );
    assert_eq!(
        got[0].3,
        ["/boot/nixos/5x2vc8pmiiiiiiiiiiiiiiiiiiiiiiii-initrd-linux-6.6.60-initrd"]
    );
    assert_eq!(got[0].4, format!("init={sys2}/init console=hvc0 loglevel=4"));
    assert!(got[1].0.starts_with("NixOS - Configuration 2 ("));
    assert!(got[2].0.starts_with("NixOS - Configuration 1 ("));
    assert_eq!(
        got[2].2,
        Some((
            None,
            "/boot/nixos/0a67imq3kkkkkkkkkkkkkkkkkkkkkkkk-linux-6.6.58-bzImage".into()
        ))
    );
    assert_eq!(m.entries[2].id.as_deref(), Some(&b"nixos-1"[..]));
    assert_eq!(m.default.as_deref(), Some(&b"nixos-default"[..]));
    assert_eq!(m.default_index(), Some(0));
    assert_eq!(m.timeout, Some(Timeout::Secs(5)));
    assert_eq!(select(&m, &Selector::parse(b"nixos-1")), Ok(2));
}

#[test]
fn alpine_extlinux() {
    // Alpine's /boot partition: extlinux.conf at its root, names relative.
    let m = extlinux::parse(
        &corpus("alpine-extlinux.conf"),
        &extlinux::Context { dir: b"/".to_vec() },
        &MemFiles::default(),
    )
    .unwrap();
    assert_eq!(
        m.entries.iter().map(summary).collect::<Vec<_>>(),
        vec![(
            "Linux virt".into(),
            "".into(),
            Some((None, "/vmlinuz-virt".into())),
            vec!["/initramfs-virt".into()],
            "root=UUID=9b2d4f6a-8c0e-4a2c-b4d6-f8a0c2e4a6b8 modules=sd-mod,usb-storage,ext4 console=hvc0 quiet rootfstype=ext4"
                .into(),
            false
        )]
    );
    assert_eq!(m.default.as_deref(), Some(&b"virt"[..]));
    assert_eq!(m.timeout, Some(Timeout::Secs(1)));
}

#[test]
fn centos6_grub_legacy() {
    let m = legacy::parse(
        &corpus("centos6-grub.conf"),
        &legacy::Context { dir: b"/grub".to_vec() },
        &MemFiles::default(),
    )
    .unwrap();
    let p1 = Some(Device::Partition { disk: 0, part: Some(1) });
    let got: Vec<_> = m.entries.iter().map(summary).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "CentOS 6 (2.6.32-754.35.1.el6.x86_64)");
    assert_eq!(
        got[0].2,
        Some((p1.clone(), "/vmlinuz-2.6.32-754.35.1.el6.x86_64".into()))
    );
    assert_eq!(got[0].3, ["/initramfs-2.6.32-754.35.1.el6.x86_64.img"]);
    assert!(
        got[0]
            .4
            .starts_with("ro root=UUID=6a1f3c5e-7b9d-4f1a-8c3e-5a7c9e1b3d5f rd_NO_LUKS")
    );
    assert!(got[0].4.ends_with("rd_NO_DM rhgb quiet"));
    assert_eq!(got[1].2, Some((p1, "/vmlinuz-2.6.32-754.el6.x86_64".into())));
    assert_eq!(m.default_index(), Some(0));
    assert_eq!(m.timeout, Some(Timeout::Secs(5)));
}

#[test]
fn legacy_saved_default() {
    let text = b"default saved\ntitle A\nkernel (hd0,1)/a\ntitle B\nroot (hd0,0)\nkernel /b x=1\ninitrd /ib\n";
    let files = MemFiles::default().with("/boot/grub/default", "1\n#\n");
    let m = legacy::parse(
        text,
        &legacy::Context {
            dir: b"/boot/grub".to_vec(),
        },
        &files,
    )
    .unwrap();
    assert_eq!(m.default_index(), Some(1));
    assert_eq!(
        m.entries[0].kernel.as_ref().unwrap().device,
        Some(Device::Partition { disk: 0, part: Some(2) })
    );
    assert_eq!(s(&m.entries[1].args), "x=1");
}

#[test]
fn bls_kernel_install_debian12() {
    let mut files = MemFiles::default();
    for v in ["6.1.0-27-amd64", "6.1.0-28-amd64"] {
        let name = format!("4a1c2d3e4f5061728394a5b6c7d8e9f0-{v}.conf");
        files = files.with(
            &format!("/loader/entries/{name}"),
            corpus(&format!("bls-debian12/{name}")),
        );
    }
    files = files.with("/loader/loader.conf", "timeout 3\ndefault *6.1.0-27*\n");
    let m = bls::parse(&files, b"/loader/entries").unwrap();
    let got: Vec<_> = m.entries.iter().map(summary).collect();
    // Same sort-key and machine-id: newest version first.
    assert_eq!(
        got[0].2,
        Some((None, "/4a1c2d3e4f5061728394a5b6c7d8e9f0/6.1.0-28-amd64/linux".into()))
    );
    assert_eq!(
        got[0].3,
        ["/4a1c2d3e4f5061728394a5b6c7d8e9f0/6.1.0-28-amd64/initrd.img"]
    );
    assert_eq!(
        got[0].4,
        "root=UUID=0f2c7e11-4b0a-4c2e-8f3b-6a1d9e5c2b02 ro console=hvc0 systemd.machine_id=4a1c2d3e4f5061728394a5b6c7d8e9f0"
    );
    assert_eq!(got[0].0, "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(
        got[1].2,
        Some((None, "/4a1c2d3e4f5061728394a5b6c7d8e9f0/6.1.0-27-amd64/linux".into()))
    );
    assert_eq!(m.timeout, Some(Timeout::Secs(3)));
    assert_eq!(m.default_index(), Some(1));
}

#[test]
fn quoting_and_expansion() {
    let cfg = br#"
set a='x y'  b="q\"uo\$te" c=z\ w
set e=
menuentry "T $a" 'lit $a' {
  linux /k "$a" $a ${b}${c} "" x$e
  initrd /i1 /i2 ($drive9)/i3
}
menuentry --id=myid -- "second" {
  set root=(hd1,gpt3)
  linux /k2
}
set default=myid
set timeout=-1
"#;
    let m = grub(cfg, "/boot/grub", &MemFiles::default());
    assert_eq!(s(&m.entries[0].title), "T x y");
    // "$a" one word, $a split, ${b}${c} glued, "" kept empty.
    assert_eq!(s(&m.entries[0].args), "x y x y q\"uo$tez w  x");
    let i: Vec<String> = m.entries[0].initrds.iter().map(|f| s(&f.path)).collect();
    assert_eq!(i, ["/i1", "/i2", "/i3"]);
    assert_eq!(
        m.entries[1].kernel.as_ref().unwrap().device,
        Some(Device::Partition { disk: 1, part: Some(3) })
    );
    assert_eq!(m.default_index(), Some(1));
    assert_eq!(m.timeout, Some(Timeout::Forever));
}

#[test]
fn tests_and_conditions() {
    let cfg = br#"
set x=1
if [ "$x" = 1 -a -z "$nope" ]; then set r1=yes; fi
if [ ! -s $prefix/grubenv ]; then set r2=yes; fi
if [ $x -lt 2 -o bogus ]; then set r3=yes; fi
if keystatus --shift; then set r4=yes; elif [ -n "$x" ]; then set r4=elif; else set r4=else; fi
if [ -e /boot/grub/x.cfg ]; then source /boot/grub/x.cfg; fi
menuentry "$r1 $r2 $r3 $r4 $fromx" { linux /k }
"#;
    let files = MemFiles::default().with("/boot/grub/x.cfg", "set fromx=sourced\n");
    let m = grub(cfg, "/boot/grub", &files);
    assert_eq!(s(&m.entries[0].title), "yes yes yes elif sourced");
}

#[test]
fn multiboot_and_chainloader_entries_are_refused() {
    let cfg = b"menuentry xen { multiboot /xen.gz\n module /vmlinuz\n }\nmenuentry win { chainloader +1 }\nmenuentry empty { echo hi }\n";
    let m = grub(cfg, "/boot/grub", &MemFiles::default());
    assert_eq!(m.entries.len(), 3);
    assert!(m.entries.iter().all(|e| e.problem.is_some()));
}

#[test]
fn selection() {
    let m = grub(&corpus("debian12-grub.cfg"), "/grub", &MemFiles::default());
    assert_eq!(select(&m, &Selector::parse(b"1")), Ok(1));
    assert_eq!(select(&m, &Selector::parse(b"4")), Ok(4));
    assert_eq!(
        select(&m, &Selector::parse(b"5")),
        Err(SelectError::NoIndex { index: 5, len: 5 })
    );
    assert_eq!(
        select(&m, &Selector::parse(b"Debian GNU/Linux, with Linux 6.1.0-27-amd64")),
        Ok(3)
    );
    assert_eq!(
        select(
            &m,
            &Selector::parse(b"Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-27-amd64")
        ),
        Ok(3)
    );
    // GRUB-style index path.
    assert_eq!(select(&m, &Selector::parse(b"1>3")), Ok(4));
    assert!(matches!(
        select(&m, &Selector::parse(b"nope")),
        Err(SelectError::NoTitle(_))
    ));
    assert_eq!(select(&Menu::default(), &Selector::Default), Err(SelectError::Empty));
}

#[test]
fn devices() {
    assert_eq!(
        Device::parse_grub(b"hd0,msdos1"),
        Some(Device::Partition { disk: 0, part: Some(1) })
    );
    assert_eq!(
        Device::parse_grub(b"(hd0,gpt2)"),
        Some(Device::Partition { disk: 0, part: Some(2) })
    );
    assert_eq!(
        Device::parse_grub(b"hd1"),
        Some(Device::Partition { disk: 1, part: None })
    );
    assert_eq!(
        Device::parse_grub(b"xen/xvdb,3"),
        Some(Device::Partition { disk: 1, part: Some(3) })
    );
    assert_eq!(
        Device::parse_grub(b"lvm/vg-root"),
        Some(Device::Other(b"lvm/vg-root".to_vec()))
    );
    assert_eq!(Device::parse_grub(b""), None);
    for d in [
        Device::FsUuid(b"ab-cd".to_vec()),
        Device::Label(b"boot".to_vec()),
        Device::Partition { disk: 0, part: Some(2) },
    ] {
        assert_eq!(Device::parse_grub(&d.grub_name()), Some(d));
    }
    assert_eq!(resolve_relative(b"/boot/extlinux", b"../nixos/k"), b"/boot/nixos/k");
    assert_eq!(resolve_relative(b"/", b"../../x"), b"/x");
    assert_eq!(resolve_relative(b"/a", b"/abs/./y"), b"/abs/y");
}

#[test]
fn extlinux_include_append_initrd_and_caps() {
    let files = MemFiles::default()
        .with(
            "/boot/extlinux/more.conf",
            "LABEL two\n  KERNEL /k2\n  APPEND initrd=/a.img,/b.img ro\n",
        )
        .with("/boot/extlinux/loop.conf", "INCLUDE loop.conf\n");
    let ctx = extlinux::Context {
        dir: b"/boot/extlinux".to_vec(),
    };
    let m = extlinux::parse(
        b"default two\nLABEL one\n kernel menu.c32\ninclude more.conf\n",
        &ctx,
        &files,
    )
    .unwrap();
    assert!(m.entries[0].problem.is_some());
    let two = &m.entries[1];
    assert_eq!(
        two.initrds.iter().map(|f| s(&f.path)).collect::<Vec<_>>(),
        ["/a.img", "/b.img"]
    );
    assert_eq!(s(&two.args), "ro");
    assert_eq!(m.default_index(), Some(1));
    assert!(matches!(
        extlinux::parse(b"INCLUDE loop.conf\n", &ctx, &files),
        Err(MenuError::TooDeep { .. })
    ));
}

#[test]
fn grub_caps_and_errors() {
    let files = MemFiles::default().with("/boot/grub/self.cfg", "source /boot/grub/self.cfg\n");
    let ctx = grub::Context {
        dir: b"/boot/grub".to_vec(),
    };
    assert!(matches!(
        grub::parse(b"source /boot/grub/self.cfg\n", &ctx, &files),
        Err(MenuError::TooDeep { .. })
    ));
    let deep = "if true; then\n".repeat(40) + &"fi\n".repeat(40);
    assert!(matches!(
        grub::parse(deep.as_bytes(), &ctx, &files),
        Err(MenuError::TooDeep { .. })
    ));
    assert!(matches!(
        grub::parse(b"menuentry 'x {\n", &ctx, &files),
        Err(MenuError::Syntax { line: 1, .. })
    ));
    assert!(matches!(
        grub::parse(b"if true; then\n", &ctx, &files),
        Err(MenuError::Syntax { .. })
    ));
    // Doubling a variable quickly hits the expansion cap, not the memory.
    let bomb = "set a=xxxxxxxxxxxxxxxx\n".to_string() + &"set a=$a$a\n".repeat(40);
    assert!(matches!(
        grub::parse(bomb.as_bytes(), &ctx, &files),
        Err(MenuError::TooLong { .. })
    ));
    let many = "menuentry x { linux /k }\n".repeat(crate::limits::MAX_GUEST_MENU_ENTRIES + 1);
    assert!(matches!(
        grub::parse(many.as_bytes(), &ctx, &files),
        Err(MenuError::TooMany { .. })
    ));
    let big = vec![b'#'; usize::try_from(crate::limits::MAX_MENU_CONFIG).unwrap() + 1];
    assert!(matches!(
        grub::parse(&big, &ctx, &files),
        Err(MenuError::TooLarge { .. })
    ));
}
