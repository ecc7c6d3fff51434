//! The console menu: shown when stdin is a terminal and neither `-q`,
//! `--entry` nor `--kernel` was given. dom0 side; it draws entries the
//! parse child listed (guest strings are escaped before they are drawn).
//!
//! libxl always gives nixboot a pty; `xl create -c` connects the user to
//! it, and without `-c` nobody reads it, so the countdown simply runs out.
//! Keys: Up/Down (or k/j) select, Enter boots, `e` edits the highlighted
//! entry's command line for this boot only (Enter boots it, Esc cancels),
//! any key stops the countdown. EOF on stdin boots the default at once,
//! and nothing waits past [`HARD_DEADLINE`]. Drawing is plain text with
//! no escape sequences (the list is reprinted when the selection changes,
//! the countdown rewritten with a carriage return), so it reads the same
//! in `/var/log/xen/bootloader.<domid>.log`; a 0x0 window is taken as
//! 80x24.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, SetArg, Termios};

use crate::error::{EscapedBare, Guarded};

/// The countdown when neither `--timeout` nor the guest's installed
/// default file sets one (GRUB's and NixOS's `boot.loader.timeout`
/// default).
pub const DEFAULT_TIMEOUT: u64 = 5;

/// The menu never waits longer than this, whatever the user does.
pub const HARD_DEADLINE: Duration = Duration::from_secs(600);

/// One line of the menu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The title (guest strings in it escaped by the parse child; guarded
    /// again when drawn).
    pub label: String,
    /// The command line it would boot with.
    pub cmdline: String,
    /// Why it is not bootable, if it is not.
    pub problem: Option<String>,
}

/// What the user chose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Index into the items.
    pub index: usize,
    /// An edited command line, for this boot only.
    pub cmdline: Option<String>,
    /// Whether a person chose (false: the countdown ran out, or EOF).
    pub interactive: bool,
}

/// A key, decoded from terminal input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Enter.
    Enter,
    /// Backspace / DEL.
    Backspace,
    /// A lone Escape.
    Esc,
    /// Ctrl-U (clear line).
    ClearLine,
    /// A printable character.
    Char(char),
    /// Anything else.
    Other,
}

/// Decode the keys in one read of terminal input.
pub fn decode(bytes: &[u8]) -> Vec<Key> {
    let mut keys = Vec::new();
    let text = String::from_utf8_lossy(bytes);
    let mut it = text.chars().peekable();
    while let Some(c) = it.next() {
        keys.push(match c {
            '\x1b' => match it.peek() {
                Some('[') | Some('O') => {
                    it.next();
                    // Skip parameters, then the final byte.
                    let mut fin = None;
                    for d in it.by_ref() {
                        if d.is_ascii_alphabetic() || d == '~' {
                            fin = Some(d);
                            break;
                        }
                    }
                    match fin {
                        Some('A') => Key::Up,
                        Some('B') => Key::Down,
                        _ => Key::Other,
                    }
                }
                _ => Key::Esc,
            },
            '\r' | '\n' => Key::Enter,
            '\x7f' | '\x08' => Key::Backspace,
            '\x15' => Key::ClearLine,
            c if c.is_control() => Key::Other,
            c => Key::Char(c),
        });
    }
    keys
}

/// Menu state, separate from the terminal so it can be tested.
#[derive(Clone, Debug)]
pub struct State {
    items: Vec<Item>,
    /// The highlighted entry.
    pub selected: usize,
    /// The line being edited, if editing.
    pub editing: Option<String>,
    /// Whether the countdown still runs.
    pub counting: bool,
}

/// What a key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Keep going.
    Continue,
    /// Boot this.
    Boot(Choice),
}

impl State {
    /// A menu over `items` with `default` highlighted.
    pub fn new(items: Vec<Item>, default: usize) -> State {
        let selected = default.min(items.len().saturating_sub(1));
        State {
            items,
            selected,
            editing: None,
            counting: true,
        }
    }

    /// Apply one key.
    pub fn key(&mut self, k: Key) -> Outcome {
        self.counting = false;
        if let Some(line) = &mut self.editing {
            match k {
                Key::Enter => {
                    let cmdline = Some(line.clone());
                    return Outcome::Boot(Choice {
                        index: self.selected,
                        cmdline,
                        interactive: true,
                    });
                }
                Key::Esc => self.editing = None,
                Key::Backspace => {
                    line.pop();
                }
                Key::ClearLine => line.clear(),
                Key::Char(c) if line.len() < crate::limits::MAX_CMDLINE => line.push(c),
                _ => {}
            }
            return Outcome::Continue;
        }
        match k {
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') if self.selected.saturating_add(1) < self.items.len() => {
                self.selected = self.selected.saturating_add(1);
            }
            Key::Enter => {
                return Outcome::Boot(Choice {
                    index: self.selected,
                    cmdline: None,
                    interactive: true,
                });
            }
            Key::Char('e') => self.editing = self.items.get(self.selected).map(|i| i.cmdline.clone()),
            _ => {}
        }
        Outcome::Continue
    }

    /// The menu as plain text lines (`\r\n` line ends), without the
    /// countdown or edit line: no escape sequences, so it reads the same
    /// on a console and in the bootloader log.
    pub fn render(&self, cols: usize, rows: usize) -> String {
        let width = cols.max(20);
        let clip = |s: String| -> String { s.chars().take(width.saturating_sub(1)).collect() };
        let mut out = String::from("\r\n");
        out.push_str(&clip(
            "nixboot: NixOS generations (Up/Down select, Enter boot, e edit)".into(),
        ));
        out.push_str("\r\n");
        let room = rows.saturating_sub(5).max(3);
        let first = self.selected.saturating_sub(room.saturating_sub(1));
        for (i, item) in self.items.iter().enumerate().skip(first).take(room) {
            let mark = if i == self.selected { '>' } else { ' ' };
            // Labels and reasons were escaped by the parse child; guarded
            // again here, without escaping them twice.
            let mut line = format!("{mark} {}", Guarded(item.label.as_bytes()));
            if item.problem.is_some() {
                line.push_str(" (not bootable)");
            }
            out.push_str(&clip(line));
            out.push_str("\r\n");
        }
        if let Some(p) = self.items.get(self.selected).and_then(|i| i.problem.as_ref()) {
            out.push_str(&clip(format!("not bootable: {}", Guarded(p.as_bytes()))));
            out.push_str("\r\n");
        }
        out
    }
}

/// Restores the terminal's settings on drop.
struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}

fn window_size() -> (usize, usize) {
    // A pty nobody sized (libxl's) reports 0x0: assume vt100's 80x24.
    match std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        Some(c) if c > 0 => (c, 24),
        _ => (80, 24),
    }
}

/// Show the menu on the terminal (stdin/stdout) and return the choice.
pub fn run(items: Vec<Item>, default: usize, timeout: Duration) -> io::Result<Choice> {
    let stdin = io::stdin();
    let fd = stdin.as_fd();
    let saved = termios::tcgetattr(fd).map_err(io::Error::from)?;
    let mut raw = saved.clone();
    raw.local_flags
        .remove(termios::LocalFlags::ICANON | termios::LocalFlags::ECHO | termios::LocalFlags::ISIG);
    raw.input_flags
        .remove(termios::InputFlags::ICRNL | termios::InputFlags::IXON);
    termios::tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
    let _guard = RawMode { fd, saved };
    let (cols, rows) = window_size();
    let mut state = State::new(items, default);
    let start = Instant::now();
    let mut out = io::stdout().lock();
    let fallback = |state: &State| Choice {
        index: state.selected,
        cmdline: None,
        interactive: false,
    };
    let mut drawn: Option<(usize, bool)> = None;
    let mut shown_secs = None;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= HARD_DEADLINE {
            out.write_all(b"\r\n")?;
            return Ok(fallback(&state));
        }
        let remaining = timeout.saturating_sub(elapsed);
        if state.counting && remaining.is_zero() {
            out.write_all(b"\r\n")?;
            return Ok(fallback(&state));
        }
        // Redraw the list when the selection or mode changes; otherwise
        // only rewrite the countdown line in place with a carriage return.
        let now = (state.selected, state.editing.is_some());
        if drawn != Some(now) {
            out.write_all(state.render(cols, rows).as_bytes())?;
            if let Some(line) = &state.editing {
                write!(
                    out,
                    "Edit the command line (Enter boots, Esc cancels):\r\n{}",
                    EscapedBare(line.as_bytes())
                )?;
            }
            drawn = Some(now);
            shown_secs = None;
        }
        if state.counting && state.editing.is_none() {
            let secs = remaining
                .as_secs()
                .saturating_add(u64::from(remaining.subsec_nanos() > 0));
            if shown_secs != Some(secs) {
                write!(out, "\rBooting the highlighted entry in {secs} s. ")?;
                shown_secs = Some(secs);
            }
        }
        out.flush()?;
        let wait = if state.counting {
            remaining.min(Duration::from_millis(250))
        } else {
            HARD_DEADLINE.saturating_sub(elapsed).min(Duration::from_secs(1))
        };
        let ms = u16::try_from(wait.as_millis()).unwrap_or(1000).max(1);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let n = match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            continue;
        }
        let revents = fds.first().and_then(|f| f.revents()).unwrap_or(PollFlags::empty());
        let mut buf = [0u8; 256];
        let got = if revents.contains(PollFlags::POLLIN) {
            stdin.lock().read(&mut buf)?
        } else {
            0
        };
        if got == 0 {
            // EOF or hang-up: nobody is there; boot the default.
            out.write_all(b"\r\n")?;
            return Ok(fallback(&state));
        }
        let was_counting = state.counting;
        for k in decode(buf.get(..got).unwrap_or_default()) {
            let before = state.editing.clone();
            if let Outcome::Boot(c) = state.key(k) {
                out.write_all(b"\r\n")?;
                out.flush()?;
                return Ok(c);
            }
            // Echo edits like a plain line editor (no cursor addressing).
            if let (Some(old), Some(new)) = (&before, &state.editing) {
                if new.len() > old.len() {
                    write!(
                        out,
                        "{}",
                        EscapedBare(new.get(old.len()..).unwrap_or_default().as_bytes())
                    )?;
                } else if new.len() < old.len() {
                    if new.is_empty() {
                        out.write_all(b"\r\n")?;
                    } else {
                        out.write_all(b"\x08 \x08")?;
                    }
                }
            }
        }
        if was_counting && !state.counting && state.editing.is_none() {
            out.write_all(b"\rCountdown stopped: Enter boots the highlighted entry.\r\n")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<Item> {
        (1..=3)
            .rev()
            .map(|n| Item {
                label: format!("NixOS - Configuration {n}"),
                cmdline: format!("init=/g{n}/init"),
                problem: None,
            })
            .collect()
    }

    #[test]
    fn keys() {
        assert_eq!(decode(b"\x1b[A\x1bOB\r"), vec![Key::Up, Key::Down, Key::Enter]);
        assert_eq!(decode(b"\x1b"), vec![Key::Esc]);
        assert_eq!(
            decode(b"e x\x7f\x15"),
            vec![
                Key::Char('e'),
                Key::Char(' '),
                Key::Char('x'),
                Key::Backspace,
                Key::ClearLine
            ]
        );
        assert_eq!(decode(b"\x1b[5~\x01"), vec![Key::Other, Key::Other]);
    }

    #[test]
    fn down_enter_boots_the_previous_generation() {
        let mut s = State::new(items(), 0);
        assert_eq!(s.key(Key::Down), Outcome::Continue);
        assert_eq!(
            s.key(Key::Enter),
            Outcome::Boot(Choice {
                index: 1,
                cmdline: None,
                interactive: true
            })
        );
    }

    #[test]
    fn edit_adds_a_parameter() {
        let mut s = State::new(items(), 0);
        s.key(Key::Char('e'));
        for c in " systemd.unit=rescue.target".chars() {
            s.key(Key::Char(c));
        }
        assert_eq!(
            s.key(Key::Enter),
            Outcome::Boot(Choice {
                index: 0,
                cmdline: Some("init=/g3/init systemd.unit=rescue.target".into()),
                interactive: true
            })
        );
        let mut s = State::new(items(), 2);
        s.key(Key::Char('e'));
        s.key(Key::Esc);
        assert_eq!(s.editing, None);
        assert_eq!(s.key(Key::Up), Outcome::Continue);
        assert_eq!(s.selected, 1);
    }

    #[test]
    fn render_is_plain_and_clipped() {
        let mut it = items();
        it[1].label = "x\u{1b}[31mred".into();
        it[1].problem = Some("no kernel".into());
        let s = State::new(it, 1);
        let r = s.render(30, 24);
        assert!(r.contains("> x\\u{001b}[31mred"));
        assert!(r.contains("not bootable: no kernel"));
        assert!(!r.contains('\x1b'), "{r:?}");
        assert!(r.split("\r\n").all(|l| l.chars().count() <= 30));
    }
}
