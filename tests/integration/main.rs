//! Integration tests: the real `nixboot` binary, run the way libxl runs it
//! (under a pty, with libxl's argv), on ext4 disk images generated at test
//! time with `mke2fs -d` and `sfdisk`.
//!
//! * `boot`: images of every layout and block size → the result libxl
//!   reads, and the copied bytes.
//! * `cli_compat`: argv forms, exit codes, output formats, usage errors.
//! * `generations`: the bootable check, fallback, `list`, the console menu.
//! * `profiles`: `nixos-rebuild -p` profiles (`--profile`, `list`, the
//!   menu, an installed default in a profile) and GRUB titles for `--entry`.
//! * `xen_modes`: PV and PVH kernels, `--domain-type`, `--unpack-kernel`.
//! * `nix_partition`: `/nix` on its own filesystem (impermanence, tmpfs
//!   roots): the guest's `/nix` paths map into it.
//! * `lvm`: guests on LVM2 logical volumes made by the real LVM tools on
//!   loop devices (as root): linear in two segments boots; striped, thin
//!   and thin-pool LVs are named errors.
//! * `hostile`: crafted images under an address-space cap: a clear error
//!   or a safe result, quickly, never a crash, the image unchanged.

#![allow(unreachable_pub, reason = "helpers are shared between this binary's modules")]

mod boot;
mod btrfs;
mod cli_compat;
mod common;
mod generations;
mod hostile;
mod lvm;
mod nix_partition;
mod profiles;
mod readers;
mod xen_modes;
