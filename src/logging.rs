//! Log lines on stderr: plain text prefixed `nixboot:`, no colour.
//!
//! stderr is libxl's pty, so every line lands on the guest console and in
//! `/var/log/xen/bootloader.<domid>.log`. Info by default, `-q` for
//! warnings and the one [`SUMMARY`] line (which entry boots and why: libxl
//! passes `--quiet` in restricted mode, and the log must still say it),
//! `-v` for debug; `RUST_LOG` overrides both.

use std::io::Write;

/// The log target of the one line that says what boots and why.
pub const SUMMARY: &str = "nixboot::summary";

/// Initialise the logger. `verbosity`: 0 = warnings, 1 = info, 2+ = debug.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level)
        .filter_module(SUMMARY, level.max(log::LevelFilter::Info))
        .parse_env("RUST_LOG")
        .write_style(env_logger::WriteStyle::Never)
        .format(|f, r| match r.level() {
            log::Level::Info => writeln!(f, "nixboot: {}", r.args()),
            l => writeln!(f, "nixboot: {}: {}", l.as_str().to_ascii_lowercase(), r.args()),
        });
    let _ = b.try_init();
}
