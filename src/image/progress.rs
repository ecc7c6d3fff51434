//! Feedback while building: an indicatif bar (or spinner) per stage when
//! stderr is a terminal, plain `nixboot: …` log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// One progress display for the whole build.
pub struct Progress {
    tty: bool,
    bar: Option<ProgressBar>,
    stage: String,
    started: Instant,
}

impl Progress {
    /// A bar on a terminal, log lines elsewhere.
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            bar: None,
            stage: String::new(),
            started: Instant::now(),
        }
    }

    /// Start a stage: a counting bar when `total` is known, a spinner
    /// otherwise. Ends the previous stage.
    pub fn stage(&mut self, what: &str, total: Option<u64>) {
        self.finish();
        self.stage = what.to_owned();
        self.started = Instant::now();
        if !self.tty {
            log::info!("{}", split(what).1);
            return;
        }
        let bar = match total {
            Some(n) => {
                let b = ProgressBar::new(n);
                if let Ok(s) = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed})") {
                    b.set_style(s.progress_chars("=> "));
                }
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                if let Ok(s) = ProgressStyle::with_template("{prefix:>12} {spinner} {msg} ({elapsed})") {
                    b.set_style(s);
                }
                b.enable_steady_tick(Duration::from_millis(120));
                b
            }
        };
        b_prefix(&bar, what);
        self.bar = Some(bar);
    }

    /// Advance the counting bar by one.
    pub fn inc(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// Show a detail next to the bar (a terminal only).
    pub fn detail(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_owned());
        }
    }

    /// End the current stage.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            eprintln!(
                "nixboot: {}: done ({:.1}s)",
                split(&self.stage).1,
                self.started.elapsed().as_secs_f64()
            );
        } else if !self.tty && !self.stage.is_empty() {
            log::debug!(
                "{} took {:.1}s",
                split(&self.stage).1,
                self.started.elapsed().as_secs_f64()
            );
        }
        self.stage.clear();
    }

    /// Print a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(format!("nixboot: {line}")),
            None => log::info!("{line}"),
        }
    }
}

/// `"mkfs: making ext4"` → prefix `mkfs`, message `making ext4`.
fn split(what: &str) -> (&str, &str) {
    what.split_once(": ").unwrap_or((what, ""))
}

fn b_prefix(bar: &ProgressBar, what: &str) {
    let (prefix, msg) = split(what);
    bar.set_prefix(prefix.to_owned());
    bar.set_message(msg.to_owned());
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}
