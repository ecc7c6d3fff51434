//! nixboot: a Xen PV boot loader for NixOS guests, run by libxl in dom0 the
//! way it runs pygrub (`bootloader = "/usr/bin/nixboot"`).
//!
//! Data flows one way: [`cli`] → [`disk`] → [`part`] → [`fs`] →
//! [`nixos`] → [`cmdline`] → [`output`]. The stages from `part` to
//! `cmdline` read guest data and run in a confined child process
//! ([`sandbox`], [`boot`]); only [`disk`], [`output`], [`sandbox`] and
//! [`app`] touch the OS. Every guest-derived size and count is bounded by a
//! constant in [`limits`].

pub mod app;
pub mod assets;
pub mod boot;
pub mod bytes;
pub mod cache;
pub mod cli;
pub mod cmdline;
pub mod disk;
pub mod error;
#[doc(hidden)]
pub mod fixtures;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod ipc;
pub mod kernel;
pub mod limits;
pub mod list;
pub mod logging;
pub mod menu;
pub mod nixos;
pub mod output;
pub mod part;
pub mod sandbox;
pub mod seccomp;

pub use error::{Error, Fault};
