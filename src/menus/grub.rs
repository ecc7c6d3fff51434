//! GRUB 2 `grub.cfg`: a nom lexer for GRUB's shell-like words (single and
//! double quotes, backslashes, `$var`/`${var}`, comments, `;`, `{ }`), a
//! block parser (`if/elif/else/fi`, `menuentry`, `submenu`, `function`,
//! loops) and an evaluator that runs only what a menu needs. Guest data,
//! parse-child side; nothing is executed.
//!
//! The evaluator keeps GRUB's variables, runs `set`/`unset`/assignments,
//! `if` with the `[`/`test` forms grub-mkconfig and NixOS emit (strings,
//! `-n`/`-z`, `=`/`!=`, numbers, `-s`/`-f`/`-e`/`-d` files, `!`, `-a`/`-o`),
//! `load_env` (grubenv), `search --fs-uuid|--label|--file --set=VAR`,
//! `source` (capped depth) and Fedora's `blscfg`. A condition it cannot
//! decide counts as false, as a command GRUB does not have would; every
//! other command is skipped with a note. Entry bodies run after the whole
//! script, with the variables as they stand then (what GRUB does when an
//! entry is booted), each in its own scope; the `linux`/`initrd` commands
//! they run make the entry. Functions and loops are never run.

#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::character::complete::{char, one_of};
use nom::combinator::{cut, map, recognize, value};
use nom::multi::{many0, many0_count, many1};
use nom::sequence::{delimited, preceded, terminated};
use nom::{IResult, Parser};

use super::{Budgeted, Device, Entry, FileRef, Level, Menu, MenuError, MenuFiles, Timeout, bls, check_size};
use crate::error::escape;
use crate::limits::{
    MAX_MENU_ENTRIES, MAX_MENU_EXPANDED_TOTAL, MAX_MENU_EXPANSION, MAX_MENU_INCLUDE_DEPTH, MAX_MENU_NESTING,
    MAX_MENU_STEPS, MAX_MENU_VARIABLES,
};

/// Where the config was found.
#[derive(Clone, Debug)]
pub struct Context {
    /// Its directory on its filesystem (`/boot/grub`, `/grub2`): GRUB's
    /// `$prefix` and `$config_directory`.
    pub dir: Vec<u8>,
}

/// One piece of a word.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Literal bytes.
    Lit(Vec<u8>),
    /// `$name` / `${name}`; `quoted` inside double quotes (not split).
    Var { name: Vec<u8>, quoted: bool },
}

/// A word as written: its parts, and whether any of it was quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Word {
    parts: Vec<Part>,
    quoted: bool,
}

impl Word {
    /// The word as a keyword: unquoted plain text.
    fn keyword(&self) -> Option<&[u8]> {
        match self.parts.as_slice() {
            [Part::Lit(l)] if !self.quoted => Some(l),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(Word),
    /// `;` or a newline.
    Sep,
    Open,
    Close,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: u32,
}

type R<'a, T> = IResult<&'a [u8], T>;

/// Blanks between words: spaces, tabs, carriage returns, backslash-newline.
fn blanks(i: &[u8]) -> R<'_, usize> {
    many0_count(alt((value((), one_of(" \t\r")), value((), tag("\\\n"))))).parse(i)
}

fn is_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `$name`, `${name}`, `$?`, `$#`, `$@`, `$*`.
fn var_ref(quoted: bool) -> impl Fn(&[u8]) -> R<'_, Part> {
    move |i| {
        map(
            preceded(
                char('$'),
                alt((
                    delimited(char('{'), take_while1(|c| c != b'}' && c != b'\n'), char('}')),
                    take_while1(is_name),
                    recognize(one_of("?#@*")),
                )),
            ),
            |n: &[u8]| Part::Var {
                name: n.to_vec(),
                quoted,
            },
        )
        .parse(i)
    }
}

fn lit(b: &[u8]) -> Part {
    Part::Lit(b.to_vec())
}

/// `'…'`: everything literal.
fn single_quoted(i: &[u8]) -> R<'_, Vec<Part>> {
    map(
        preceded(char('\''), cut(terminated(take_while(|c| c != b'\''), char('\'')))),
        |s: &[u8]| vec![lit(s)],
    )
    .parse(i)
}

/// `"…"`: `$` expands; `\` escapes `$ " \` and newline.
fn double_quoted(i: &[u8]) -> R<'_, Vec<Part>> {
    let part = alt((
        value(lit(b""), tag("\\\n")),
        map(preceded(char('\\'), one_of("$\"\\")), |c: char| {
            Part::Lit(vec![u8::try_from(c).unwrap_or(b'?')])
        }),
        map(tag("\\"), lit),
        var_ref(true),
        map(tag("$"), lit),
        map(take_while1(|c| c != b'"' && c != b'\\' && c != b'$'), lit),
    ));
    preceded(char('"'), cut(terminated(many0(part), char('"')))).parse(i)
}

/// Outside quotes: a backslash takes the next byte literally.
fn escaped(i: &[u8]) -> R<'_, Vec<Part>> {
    alt((
        value(vec![lit(b"")], tag("\\\n")),
        map(preceded(char('\\'), take_while_m_n_one), |c: &[u8]| vec![lit(c)]),
    ))
    .parse(i)
}

fn take_while_m_n_one(i: &[u8]) -> R<'_, &[u8]> {
    nom::bytes::complete::take(1usize).parse(i)
}

const WORD_STOP: &[u8] = b" \t\r\n;'\"\\$";

/// One word: unquoted runs, quoted strings, escapes and variables, glued.
fn word(i: &[u8]) -> R<'_, Word> {
    let unquoted = alt((
        map(var_ref(false), |p| (vec![p], false)),
        map(tag("$"), |s| (vec![lit(s)], false)),
        map(take_while1(|c| !WORD_STOP.contains(&c)), |s| (vec![lit(s)], false)),
        map(single_quoted, |p| (p, true)),
        map(double_quoted, |p| (p, true)),
        map(escaped, |p| (p, true)),
    ));
    map(many1(unquoted), |pieces| {
        let mut parts: Vec<Part> = Vec::new();
        let mut quoted = false;
        for (ps, q) in pieces {
            quoted |= q;
            for p in ps {
                match (parts.last_mut(), p) {
                    (Some(Part::Lit(a)), Part::Lit(b)) => a.extend_from_slice(&b),
                    (_, p) => parts.push(p),
                }
            }
        }
        Word { parts, quoted }
    })
    .parse(i)
}

fn syntax(text: &[u8], rest: &[u8], what: &str) -> MenuError {
    let offset = text.len().saturating_sub(rest.len());
    MenuError::Syntax {
        line: super::line_of(text, offset),
        what: what.to_string(),
    }
}

/// Split a script into tokens.
fn lex(text: &[u8]) -> Result<Vec<Token>, MenuError> {
    let mut toks = Vec::new();
    let mut i = text;
    let mut line: u32 = 1;
    loop {
        let before = i;
        let (rest, _) = blanks(i).map_err(|_| syntax(text, i, "unreadable blank"))?;
        line = line.saturating_add(count_nl(
            before.get(..before.len().saturating_sub(rest.len())).unwrap_or(&[]),
        ));
        i = rest;
        let Some(&c) = i.first() else { break };
        match c {
            b'#' => {
                let (rest, _) = take_while::<_, _, nom::error::Error<&[u8]>>(|c| c != b'\n')
                    .parse(i)
                    .map_err(|_| syntax(text, i, "unreadable comment"))?;
                i = rest;
            }
            b'\n' | b';' => {
                toks.push(Token { tok: Tok::Sep, line });
                if c == b'\n' {
                    line = line.saturating_add(1);
                }
                i = i.get(1..).unwrap_or(&[]);
            }
            _ => {
                let (rest, w) = word(i).map_err(|e| match e {
                    nom::Err::Failure(_) => syntax(text, i, "unterminated quote"),
                    _ => syntax(text, i, "unreadable word"),
                })?;
                let consumed = i.get(..i.len().saturating_sub(rest.len())).unwrap_or(&[]);
                let tok = match w.keyword() {
                    Some(b"{") => Tok::Open,
                    Some(b"}") => Tok::Close,
                    _ => Tok::Word(w),
                };
                toks.push(Token { tok, line });
                line = line.saturating_add(count_nl(consumed));
                i = rest;
            }
        }
    }
    Ok(toks)
}

fn count_nl(b: &[u8]) -> u32 {
    u32::try_from(b.iter().filter(|c| **c == b'\n').count()).unwrap_or(u32::MAX)
}

/// A parsed script.
#[derive(Clone, Debug)]
enum Node {
    Cmd {
        words: Vec<Word>,
        line: u32,
    },
    If {
        arms: Vec<(Vec<Node>, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Menu {
        submenu: bool,
        words: Vec<Word>,
        body: Rc<Vec<Node>>,
        line: u32,
    },
    /// A function definition or a loop: parsed, never run.
    Skipped {
        what: &'static str,
        line: u32,
    },
}

struct Parse<'t> {
    toks: &'t [Token],
    pos: usize,
}

impl Parse<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }
    fn bump(&mut self) {
        self.pos = self.pos.saturating_add(1);
    }
    fn line(&self) -> u32 {
        self.peek().or_else(|| self.toks.last()).map_or(1, |t| t.line)
    }
    fn err(&self, what: String) -> MenuError {
        MenuError::Syntax {
            line: self.line(),
            what,
        }
    }

    /// Words up to a separator, brace or the end (not consumed).
    fn words(&mut self) -> Vec<Word> {
        let mut out = Vec::new();
        while let Some(Token { tok: Tok::Word(w), .. }) = self.peek() {
            out.push(w.clone());
            self.bump();
        }
        out
    }

    /// Commands until one of `ends` (keywords, or `}`), which is consumed
    /// and returned; the end of input is allowed only when `ends` is empty.
    fn block(&mut self, depth: u32, ends: &[&[u8]]) -> Result<(Vec<Node>, Vec<u8>), MenuError> {
        if depth > MAX_MENU_NESTING {
            return Err(MenuError::TooDeep {
                what: "blocks",
                cap: MAX_MENU_NESTING,
            });
        }
        let deeper = depth.saturating_add(1);
        let mut nodes = Vec::new();
        loop {
            let Some(t) = self.peek() else {
                return match ends.first() {
                    None => Ok((nodes, Vec::new())),
                    Some(e) => Err(self.err(format!("missing {}", escape(e)))),
                };
            };
            let line = t.line;
            let kw = match &t.tok {
                Tok::Sep => {
                    self.bump();
                    continue;
                }
                Tok::Close if ends.contains(&&b"}"[..]) => {
                    self.bump();
                    return Ok((nodes, b"}".to_vec()));
                }
                Tok::Close => return Err(self.err("unexpected }".into())),
                Tok::Open => return Err(self.err("unexpected {".into())),
                Tok::Word(w) => w.keyword().map(<[u8]>::to_vec),
            };
            match kw.as_deref() {
                Some(k) if ends.contains(&k) => {
                    self.bump();
                    return Ok((nodes, k.to_vec()));
                }
                Some(b"if") => {
                    self.bump();
                    let mut arms = Vec::new();
                    let mut otherwise = Vec::new();
                    loop {
                        let (cond, _) = self.block(deeper, &[b"then"])?;
                        let (body, end) = self.block(deeper, &[b"elif", b"else", b"fi"])?;
                        arms.push((cond, body));
                        match end.as_slice() {
                            b"elif" => continue,
                            b"else" => {
                                otherwise = self.block(deeper, &[b"fi"])?.0;
                                break;
                            }
                            _ => break,
                        }
                    }
                    nodes.push(Node::If { arms, otherwise });
                }
                Some(b"function") => {
                    self.bump();
                    let _name = self.words();
                    match self.peek().map(|t| &t.tok) {
                        Some(Tok::Open) => self.bump(),
                        _ => return Err(self.err("function without {".into())),
                    }
                    self.block(deeper, &[b"}"])?;
                    nodes.push(Node::Skipped { what: "function", line });
                }
                Some(b"for" | b"while" | b"until") => {
                    self.bump();
                    self.block(deeper, &[b"do"])?;
                    self.block(deeper, &[b"done"])?;
                    nodes.push(Node::Skipped { what: "loop", line });
                }
                Some(k @ (b"menuentry" | b"submenu")) => {
                    let submenu = k == b"submenu";
                    self.bump();
                    let words = self.words();
                    match self.peek().map(|t| &t.tok) {
                        Some(Tok::Open) => self.bump(),
                        _ => return Err(self.err("menu entry without {".into())),
                    }
                    let (body, _) = self.block(deeper, &[b"}"])?;
                    nodes.push(Node::Menu {
                        submenu,
                        words,
                        body: Rc::new(body),
                        line,
                    });
                }
                Some(k @ (b"then" | b"elif" | b"else" | b"fi" | b"do" | b"done")) => {
                    return Err(self.err(format!("unexpected {}", escape(k))));
                }
                _ => {
                    let words = self.words();
                    if let Some(Token { tok: Tok::Open, .. }) = self.peek() {
                        return Err(self.err("unexpected {".into()));
                    }
                    nodes.push(Node::Cmd { words, line });
                }
            }
        }
    }
}

/// Parse `text` into nodes (no evaluation).
fn parse_script(text: &[u8]) -> Result<Vec<Node>, MenuError> {
    check_size("grub.cfg", u64::try_from(text.len()).unwrap_or(u64::MAX))?;
    let toks = lex(text)?;
    let mut p = Parse { toks: &toks, pos: 0 };
    Ok(p.block(0, &[])?.0)
}

/// A grubenv file (`# GRUB Environment Block`, `name=value` lines, `#`
/// padding): its variables in order. Values unescape `\\` and `\n`.
pub fn parse_grubenv(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        if line.starts_with(b"#") || line.is_empty() {
            continue;
        }
        let Ok((value, name)) = terminated(
            take_while1::<_, _, nom::error::Error<&[u8]>>(|c| c != b'=' && c != b'#'),
            char('='),
        )
        .parse(line) else {
            continue;
        };
        let mut v = Vec::with_capacity(value.len());
        let mut it = value.iter();
        while let Some(&c) = it.next() {
            if c == b'\\' {
                match it.next() {
                    Some(b'n') => v.push(b'\n'),
                    Some(&o) => v.push(o),
                    None => {}
                }
            } else {
                v.push(c);
            }
        }
        if out.len() >= MAX_MENU_VARIABLES {
            break;
        }
        out.push((name.to_vec(), v));
    }
    out
}

/// What a `menuentry`/`submenu`/`blscfg` defined, run after the script.
enum Item {
    Entry {
        title: Vec<u8>,
        id: Option<Vec<u8>>,
        body: Rc<Vec<Node>>,
    },
    Submenu {
        title: Vec<u8>,
        id: Option<Vec<u8>>,
        body: Rc<Vec<Node>>,
    },
    Bls {
        entry: bls::BlsEntry,
        device: Option<Device>,
    },
}

/// What an entry body built.
#[derive(Default)]
struct Built {
    kernel: Option<FileRef>,
    initrds: Vec<FileRef>,
    args: Vec<u8>,
    problem: Option<String>,
}

enum Sink<'s> {
    Items(&'s mut Vec<Item>),
    Entry(&'s mut Built),
}

/// Commands that do nothing to a menu and are skipped silently.
const QUIET: &[&[u8]] = &[
    b"insmod",
    b"echo",
    b"save_env",
    b"terminal_output",
    b"terminal_input",
    b"terminal",
    b"serial",
    b"export",
    b"clear",
    b"set_gfxpayload",
    b"play",
    b"devicetree",
    b"fdt",
    b"load_video",
    b"gfxmode",
    b"rmmod",
];

/// A scope's undo log: each variable set in it and its value before.
type UndoLog = Vec<(Vec<u8>, Option<Vec<u8>>)>;

struct Eval<'a> {
    files: Budgeted<'a>,
    vars: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Undo logs of the open scopes (entry bodies, submenus).
    scopes: Vec<UndoLog>,
    steps: u32,
    expanded: usize,
    includes: u32,
    status: bool,
    skipped: BTreeSet<Vec<u8>>,
    menu: Menu,
}

impl<'a> Eval<'a> {
    fn get(&self, name: &[u8]) -> &[u8] {
        match name {
            b"?" => {
                if self.status {
                    b"0"
                } else {
                    b"1"
                }
            }
            _ => self.vars.get(name).map_or(&[], Vec::as_slice),
        }
    }

    fn set(&mut self, name: &[u8], value: Vec<u8>) -> Result<(), MenuError> {
        if value.len() > MAX_MENU_EXPANSION {
            return Err(MenuError::TooLong {
                what: "variable",
                len: value.len(),
                cap: MAX_MENU_EXPANSION,
            });
        }
        if !self.vars.contains_key(name) && self.vars.len() >= MAX_MENU_VARIABLES {
            return Err(MenuError::TooMany {
                what: "variables",
                cap: MAX_MENU_VARIABLES,
            });
        }
        let old = self.vars.insert(name.to_vec(), value);
        if let Some(log) = self.scopes.last_mut() {
            log.push((name.to_vec(), old));
        }
        Ok(())
    }

    fn unset(&mut self, name: &[u8]) {
        let old = self.vars.remove(name);
        if let Some(log) = self.scopes.last_mut() {
            log.push((name.to_vec(), old));
        }
    }

    fn open_scope(&mut self) {
        self.scopes.push(Vec::new());
    }

    fn close_scope(&mut self) {
        if let Some(log) = self.scopes.pop() {
            for (name, old) in log.into_iter().rev() {
                match old {
                    Some(v) => self.vars.insert(name, v),
                    None => self.vars.remove(&name),
                };
            }
        }
    }

    fn charge(&mut self, n: usize) -> Result<(), MenuError> {
        self.expanded = self.expanded.saturating_add(n);
        if self.expanded > MAX_MENU_EXPANDED_TOTAL {
            return Err(MenuError::Budget {
                what: "bytes of expansion",
                cap: u64::try_from(MAX_MENU_EXPANDED_TOTAL).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }

    /// Expand a word into fields: unquoted variables split on blanks.
    fn expand(&mut self, w: &Word) -> Result<Vec<Vec<u8>>, MenuError> {
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut open = w.quoted;
        let mut total: usize = 0;
        for p in &w.parts {
            let (bytes, split) = match p {
                Part::Lit(l) => (l.clone(), false),
                Part::Var { name, quoted } => (self.get(name).to_vec(), !quoted),
            };
            total = total.saturating_add(bytes.len());
            self.charge(bytes.len())?;
            if total > MAX_MENU_EXPANSION {
                return Err(MenuError::TooLong {
                    what: "expanded word",
                    len: total,
                    cap: MAX_MENU_EXPANSION,
                });
            }
            if !split {
                if matches!(p, Part::Lit(_)) {
                    open = true;
                }
                cur.extend_from_slice(&bytes);
                continue;
            }
            let blank = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
            let mut pieces = bytes.split(blank).peekable();
            let starts_blank = bytes.first().is_some_and(blank);
            if starts_blank && (open || !cur.is_empty()) {
                fields.push(std::mem::take(&mut cur));
                open = false;
            }
            while let Some(piece) = pieces.next() {
                if piece.is_empty() {
                    continue;
                }
                cur.extend_from_slice(piece);
                open = true;
                if pieces.peek().is_some() {
                    fields.push(std::mem::take(&mut cur));
                    open = false;
                }
            }
        }
        if open || !cur.is_empty() {
            fields.push(cur);
        }
        Ok(fields)
    }

    /// Expand a word without splitting (assignments).
    fn expand_joined(&mut self, w: &Word) -> Result<Vec<u8>, MenuError> {
        let mut out = Vec::new();
        for p in &w.parts {
            let bytes = match p {
                Part::Lit(l) => l.clone(),
                Part::Var { name, .. } => self.get(name).to_vec(),
            };
            self.charge(bytes.len())?;
            out.extend_from_slice(&bytes);
            if out.len() > MAX_MENU_EXPANSION {
                return Err(MenuError::TooLong {
                    what: "expanded word",
                    len: out.len(),
                    cap: MAX_MENU_EXPANSION,
                });
            }
        }
        Ok(out)
    }

    fn argv(&mut self, words: &[Word]) -> Result<Vec<Vec<u8>>, MenuError> {
        let mut out = Vec::new();
        for w in words {
            out.extend(self.expand(w)?);
        }
        Ok(out)
    }

    fn step(&mut self) -> Result<(), MenuError> {
        self.steps = self.steps.saturating_add(1);
        if self.steps > MAX_MENU_STEPS {
            return Err(MenuError::Budget {
                what: "commands",
                cap: u64::from(MAX_MENU_STEPS),
            });
        }
        Ok(())
    }

    fn note_skip(&mut self, name: &[u8], line: u32) {
        if self.skipped.insert(name.to_vec()) {
            self.menu
                .note(format!("line {line}: skipped command {} (not evaluated)", escape(name)));
        }
    }

    /// A file as GRUB names it: `(device)/path`, or `/path` on `$root`.
    fn file_ref(&self, word: &[u8]) -> Result<FileRef, MenuError> {
        if let Some(inner) = word.strip_prefix(b"(")
            && let Some(close) = inner.iter().position(|c| *c == b')')
        {
            let dev = inner.get(..close).unwrap_or(&[]);
            let path = inner.get(close.saturating_add(1)..).unwrap_or(&[]);
            return FileRef::new(Device::parse_grub(dev), absolute(path));
        }
        FileRef::new(Device::parse_grub(self.get(b"root")), absolute(word))
    }

    fn run(&mut self, nodes: &[Node], sink: &mut Sink<'_>) -> Result<bool, MenuError> {
        let mut status = true;
        for n in nodes {
            self.step()?;
            status = match n {
                Node::Cmd { words, line } => self.command(words, *line, sink)?,
                Node::If { arms, otherwise } => {
                    let mut taken = None;
                    for (cond, body) in arms {
                        if self.run(cond, sink)? {
                            taken = Some(body);
                            break;
                        }
                    }
                    match taken {
                        Some(body) => self.run(body, sink)?,
                        None => self.run(otherwise, sink)?,
                    }
                }
                Node::Menu {
                    submenu,
                    words,
                    body,
                    line,
                } => {
                    let argv = self.argv(words)?;
                    let (title, id) = menu_title(&argv);
                    match sink {
                        Sink::Items(items) => {
                            if items.len() >= MAX_MENU_ENTRIES {
                                return Err(MenuError::TooMany {
                                    what: "entries",
                                    cap: MAX_MENU_ENTRIES,
                                });
                            }
                            let body = body.clone();
                            items.push(if *submenu {
                                Item::Submenu { title, id, body }
                            } else {
                                Item::Entry { title, id, body }
                            });
                        }
                        Sink::Entry(_) => {
                            self.menu
                                .note(format!("line {line}: menu entry inside an entry skipped"));
                        }
                    }
                    true
                }
                Node::Skipped { what, line } => {
                    if *what != "function" {
                        self.menu.note(format!("line {line}: {what} not evaluated"));
                    }
                    true
                }
            };
            self.status = status;
        }
        Ok(status)
    }

    fn command(&mut self, words: &[Word], line: u32, sink: &mut Sink<'_>) -> Result<bool, MenuError> {
        // `name=value` assignment.
        if let Some(Word { parts, .. }) = words.first()
            && let Some(Part::Lit(first)) = parts.first()
            && let Some(eq) = first.iter().position(|c| *c == b'=')
            && eq > 0
            && first.get(..eq).is_some_and(|n| n.iter().all(|c| is_name(*c)))
        {
            let name = first.get(..eq).unwrap_or(&[]).to_vec();
            let mut w = Word {
                parts: parts.clone(),
                quoted: true,
            };
            if let Some(Part::Lit(l)) = w.parts.first_mut() {
                l.drain(..=eq);
            }
            let v = self.expand_joined(&w)?;
            self.set(&name, v)?;
            return Ok(true);
        }
        let argv = self.argv(words)?;
        let Some((cmd, args)) = argv.split_first() else {
            return Ok(true);
        };
        match cmd.as_slice() {
            b"set" => {
                for a in args {
                    if let Some(eq) = a.iter().position(|c| *c == b'=') {
                        let (n, v) = a.split_at(eq);
                        self.set(n, v.get(1..).unwrap_or(&[]).to_vec())?;
                    }
                }
                Ok(true)
            }
            b"unset" => {
                for a in args {
                    self.unset(a);
                }
                Ok(true)
            }
            b"true" => Ok(true),
            b"false" => Ok(false),
            b"[" => {
                let Some((last, inner)) = args.split_last() else {
                    return Ok(false);
                };
                if last != b"]" {
                    self.menu.note(format!("line {line}: [ without ], taken as false"));
                    return Ok(false);
                }
                self.test(inner, line)
            }
            b"test" => self.test(args, line),
            b"search" | b"search.fs_uuid" | b"search.fs_label" | b"search.file" => self.search(cmd, args, line),
            b"load_env" => self.load_env(args, line),
            b"source" => self.source(args, line, sink),
            b"blscfg" => {
                match sink {
                    Sink::Items(items) => self.blscfg(items, line)?,
                    Sink::Entry(_) => self.note_skip(cmd, line),
                }
                Ok(true)
            }
            c if QUIET.contains(&c) => Ok(true),
            b"linux" | b"linux16" | b"linuxefi" | b"initrd" | b"initrd16" | b"initrdefi" | b"multiboot"
            | b"multiboot2" | b"xen_hypervisor" | b"chainloader" | b"fwsetup" | b"halt" | b"reboot" | b"kfreebsd"
            | b"knetbsd" | b"kopenbsd" | b"appleloader"
                if matches!(sink, Sink::Entry(_)) =>
            {
                if let Sink::Entry(b) = sink {
                    self.entry_command(cmd, args, b)?;
                }
                Ok(true)
            }
            _ => {
                self.note_skip(cmd, line);
                Ok(false)
            }
        }
    }

    fn entry_command(&mut self, cmd: &[u8], args: &[Vec<u8>], b: &mut Built) -> Result<(), MenuError> {
        match cmd {
            b"linux" | b"linux16" | b"linuxefi" => {
                let Some((path, rest)) = args.split_first() else {
                    b.problem = Some(format!("{} without a kernel", escape(cmd)));
                    return Ok(());
                };
                b.kernel = Some(self.file_ref(path)?);
                b.args = rest.join(&b' ');
                if b.args.len() > MAX_MENU_EXPANSION {
                    return Err(MenuError::TooLong {
                        what: "command line",
                        len: b.args.len(),
                        cap: MAX_MENU_EXPANSION,
                    });
                }
                b.problem = None;
            }
            b"initrd" | b"initrd16" | b"initrdefi" => {
                b.initrds.clear();
                for a in args.iter().filter(|a| !a.starts_with(b"--")) {
                    if b.initrds.len() >= MAX_MENU_ENTRIES {
                        return Err(MenuError::TooMany {
                            what: "initrds",
                            cap: MAX_MENU_ENTRIES,
                        });
                    }
                    b.initrds.push(self.file_ref(a)?);
                }
            }
            b"multiboot" | b"multiboot2" | b"xen_hypervisor" => {
                b.problem = Some(format!(
                    "a {} entry (a hypervisor such as Xen), not a Linux kernel",
                    escape(cmd)
                ));
            }
            other => {
                b.problem = Some(format!("a {} entry, not a Linux kernel", escape(other)));
            }
        }
        Ok(())
    }

    fn test(&mut self, args: &[Vec<u8>], line: u32) -> Result<bool, MenuError> {
        let mut any = false;
        for alternative in args.split(|a| a == b"-o") {
            let mut all = true;
            for primary in alternative.split(|a| a == b"-a") {
                match self.primary(primary)? {
                    Some(v) => all &= v,
                    None => {
                        self.menu.note(format!(
                            "line {line}: test {} not understood, taken as false",
                            escape(&primary.join(&b' '))
                        ));
                        all = false;
                    }
                }
            }
            any |= all;
        }
        Ok(any)
    }

    fn primary(&mut self, args: &[Vec<u8>]) -> Result<Option<bool>, MenuError> {
        Ok(match args {
            [] => Some(false),
            [bang, rest @ ..] if bang == b"!" => self.primary(rest)?.map(|v| !v),
            [s] => Some(!s.is_empty()),
            [op, s] => match op.as_slice() {
                b"-n" => Some(!s.is_empty()),
                b"-z" => Some(s.is_empty()),
                b"-s" | b"-f" | b"-e" => {
                    let f = self.file_ref(s)?;
                    let size = self.files.size(f.device.as_ref(), &f.path)?;
                    Some(match op.as_slice() {
                        b"-s" => size.is_some_and(|n| n > 0),
                        _ => size.is_some(),
                    })
                }
                b"-d" => {
                    let f = self.file_ref(s)?;
                    Some(!self.files.list(f.device.as_ref(), &f.path)?.is_empty())
                }
                _ => None,
            },
            [a, op, b] => match op.as_slice() {
                b"=" | b"==" => Some(a == b),
                b"!=" => Some(a != b),
                b"-eq" | b"-ne" | b"-lt" | b"-le" | b"-gt" | b"-ge" => {
                    let (Some(x), Some(y)) = (number(a), number(b)) else {
                        return Ok(None);
                    };
                    Some(match op.as_slice() {
                        b"-eq" => x == y,
                        b"-ne" => x != y,
                        b"-lt" => x < y,
                        b"-le" => x <= y,
                        b"-gt" => x > y,
                        _ => x >= y,
                    })
                }
                _ => None,
            },
            _ => None,
        })
    }

    fn search(&mut self, cmd: &[u8], args: &[Vec<u8>], line: u32) -> Result<bool, MenuError> {
        let mut kind: &[u8] = match cmd {
            b"search.fs_uuid" => b"fs-uuid=",
            b"search.fs_label" => b"label=",
            _ => b"file=",
        };
        let mut var: Option<Vec<u8>> = None;
        let mut names: Vec<&[u8]> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_slice() {
                b"--fs-uuid" | b"-u" => kind = b"fs-uuid=",
                b"--label" | b"-l" => kind = b"label=",
                b"--file" | b"-f" => kind = b"file=",
                b"--set" | b"-s" => var = Some(b"root".to_vec()),
                b"--no-floppy" | b"-n" | b"--efidisk-only" => {}
                a if a.starts_with(b"--set=") => var = a.get(6..).map(<[u8]>::to_vec),
                a if a.starts_with(b"--hint") => {
                    if !a.contains(&b'=') {
                        it.next();
                    }
                }
                a if a.starts_with(b"-") => {}
                a => names.push(a),
            }
        }
        // search.fs_uuid UUID VAR
        if cmd != b"search" && names.len() >= 2 {
            var = names.pop().map(<[u8]>::to_vec);
        }
        let Some(name) = names.first() else {
            self.menu.note(format!("line {line}: search without a name"));
            return Ok(false);
        };
        let Some(var) = var else {
            // Without --set GRUB only prints what it found.
            return Ok(true);
        };
        let mut v = super::SEARCH_PREFIX.to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(name);
        self.set(&var, v)?;
        Ok(true)
    }

    fn load_env(&mut self, args: &[Vec<u8>], line: u32) -> Result<bool, MenuError> {
        let mut file: Vec<u8> = self.get(b"prefix").to_vec();
        file.extend_from_slice(b"/grubenv");
        let mut wanted: Vec<&[u8]> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_slice() {
                b"-f" | b"--file" => {
                    if let Some(f) = it.next() {
                        file = f.clone();
                    }
                }
                a if a.starts_with(b"--file=") => file = a.get(7..).unwrap_or(&[]).to_vec(),
                b"-s" | b"--skip-sig" => {}
                a => wanted.push(a),
            }
        }
        let f = self.file_ref(&file)?;
        let Some(data) = self.files.read(f.device.as_ref(), &f.path)? else {
            self.menu.note(format!("line {line}: load_env: no {}", f));
            return Ok(false);
        };
        for (n, v) in parse_grubenv(&data) {
            if wanted.is_empty() || wanted.contains(&n.as_slice()) {
                self.set(&n, v)?;
            }
        }
        Ok(true)
    }

    fn source(&mut self, args: &[Vec<u8>], line: u32, sink: &mut Sink<'_>) -> Result<bool, MenuError> {
        let Some(path) = args.first() else {
            return Ok(false);
        };
        if self.includes >= MAX_MENU_INCLUDE_DEPTH {
            return Err(MenuError::TooDeep {
                what: "sourced files",
                cap: MAX_MENU_INCLUDE_DEPTH,
            });
        }
        let f = self.file_ref(path)?;
        let Some(text) = self.files.read(f.device.as_ref(), &f.path)? else {
            self.menu.note(format!("line {line}: source: no {f}"));
            return Ok(false);
        };
        let nodes = parse_script(&text)?;
        self.includes = self.includes.saturating_add(1);
        let r = self.run(&nodes, sink);
        self.includes = self.includes.saturating_sub(1);
        r
    }

    /// Fedora's `blscfg`: the BLS entries in `$blsdir` (else
    /// `/loader/entries`, then `/boot/loader/entries`) on `$root`.
    fn blscfg(&mut self, items: &mut Vec<Item>, line: u32) -> Result<(), MenuError> {
        let device = Device::parse_grub(self.get(b"root"));
        let blsdir = self.get(b"blsdir").to_vec();
        let dirs: Vec<Vec<u8>> = if blsdir.is_empty() {
            vec![b"/loader/entries".to_vec(), b"/boot/loader/entries".to_vec()]
        } else {
            vec![blsdir]
        };
        for dir in dirs {
            let entries = bls::read_dir(&self.files, device.as_ref(), &dir, &mut self.menu)?;
            if entries.is_empty() {
                continue;
            }
            for entry in entries {
                if items.len() >= MAX_MENU_ENTRIES {
                    return Err(MenuError::TooMany {
                        what: "entries",
                        cap: MAX_MENU_ENTRIES,
                    });
                }
                items.push(Item::Bls {
                    entry,
                    device: device.clone(),
                });
            }
            return Ok(());
        }
        self.menu.note(format!("line {line}: blscfg found no BLS entries"));
        Ok(())
    }

    /// Run the collected items: entry bodies and submenus, in order.
    fn finish(&mut self, items: Vec<Item>, levels: &[Level]) -> Result<(), MenuError> {
        if u32::try_from(levels.len()).unwrap_or(u32::MAX) > MAX_MENU_NESTING {
            return Err(MenuError::TooDeep {
                what: "submenus",
                cap: MAX_MENU_NESTING,
            });
        }
        for (index, item) in items.into_iter().enumerate() {
            match item {
                Item::Entry { title, id, body } => {
                    let mut built = Built::default();
                    self.open_scope();
                    let r = self.run(&body, &mut Sink::Entry(&mut built));
                    self.close_scope();
                    r?;
                    let mut e = Entry::new(title);
                    e.id = id;
                    e.index = index;
                    e.submenus = levels.to_vec();
                    e.problem = match (&built.kernel, built.problem) {
                        (_, Some(p)) => Some(p),
                        (None, None) => Some("the entry loads no Linux kernel".into()),
                        (Some(_), None) => None,
                    };
                    e.kernel = built.kernel;
                    e.initrds = built.initrds;
                    e.args = built.args;
                    self.menu.push(e)?;
                }
                Item::Submenu { title, id, body } => {
                    let mut inner = Vec::new();
                    self.open_scope();
                    let r = self.run(&body, &mut Sink::Items(&mut inner));
                    let mut lv = levels.to_vec();
                    lv.push(Level { title, id, index });
                    let r = r.and_then(|_| self.finish(inner, &lv));
                    self.close_scope();
                    r?;
                }
                Item::Bls { entry, device } => {
                    let e = self.bls_entry(entry, device, index, levels)?;
                    self.menu.push(e)?;
                }
            }
        }
        Ok(())
    }

    /// A BLS entry as `blscfg` boots it: `options` and `initrd` expanded
    /// with GRUB's variables (`$kernelopts`, `$tuned_params`).
    fn bls_entry(
        &mut self,
        b: bls::BlsEntry,
        device: Option<Device>,
        index: usize,
        levels: &[Level],
    ) -> Result<Entry, MenuError> {
        let mut e = b.to_entry(device.clone())?;
        e.index = index;
        e.submenus = levels.to_vec();
        let words = |s: &[u8]| -> Result<Vec<Word>, MenuError> {
            Ok(lex(s)?
                .into_iter()
                .filter_map(|t| match t.tok {
                    Tok::Word(w) => Some(w),
                    _ => None,
                })
                .collect())
        };
        let args = words(&b.options.join(&b' '))?;
        e.args = self.argv(&args)?.join(&b' ');
        let mut initrds = Vec::new();
        for i in &b.initrds {
            for w in words(i)? {
                for p in self.expand(&w)? {
                    let path = absolute(&p);
                    initrds.push(FileRef::new(device.clone(), path)?);
                }
            }
        }
        e.initrds = initrds;
        Ok(e)
    }
}

/// Title and `--id` of a `menuentry`/`submenu` line: the first word that
/// is not an option is the title.
fn menu_title(argv: &[Vec<u8>]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut title = None;
    let mut id = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_slice() {
            b"--id" => id = it.next().cloned(),
            b"--class" | b"--users" | b"--hotkey" | b"--source" => {
                it.next();
            }
            b"--unrestricted" => {}
            a if a.starts_with(b"--id=") => id = a.get(5..).map(<[u8]>::to_vec),
            a if a.starts_with(b"--") && a.contains(&b'=') => {}
            a if title.is_none() => title = Some(a.to_vec()),
            _ => {}
        }
    }
    (title.unwrap_or_default(), id.filter(|i| !i.is_empty()))
}

fn absolute(path: &[u8]) -> Vec<u8> {
    if path.starts_with(b"/") {
        path.to_vec()
    } else {
        let mut p = b"/".to_vec();
        p.extend_from_slice(path);
        p
    }
}

fn number(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, s),
    };
    let n = i64::from(super::parse_u32(digits)?);
    Some(if neg { n.saturating_neg() } else { n })
}

/// Evaluate a `grub.cfg` into a menu.
pub fn parse(text: &[u8], ctx: &Context, files: &dyn MenuFiles) -> Result<Menu, MenuError> {
    let nodes = parse_script(text)?;
    let mut ev = Eval {
        files: Budgeted::new(files),
        vars: BTreeMap::new(),
        scopes: Vec::new(),
        steps: 0,
        expanded: 0,
        includes: 0,
        status: true,
        skipped: BTreeSet::new(),
        menu: Menu::default(),
    };
    let mut cfg = ctx.dir.clone();
    cfg.extend_from_slice(b"/grub.cfg");
    for (n, v) in [
        (&b"prefix"[..], ctx.dir.clone()),
        (b"config_directory", ctx.dir.clone()),
        (b"config_file", cfg),
        (b"grub_platform", b"xen".to_vec()),
        (b"grub_cpu", b"x86_64".to_vec()),
        (b"feature_chainloader_bpb", b"y".to_vec()),
        (b"feature_ntldr", b"y".to_vec()),
        (b"feature_platform_search_hint", b"y".to_vec()),
        (b"feature_default_font_path", b"y".to_vec()),
        (b"feature_all_video_module", b"y".to_vec()),
        (b"feature_menuentry_id", b"y".to_vec()),
        (b"feature_menuentry_options", b"y".to_vec()),
        (b"feature_200_final", b"y".to_vec()),
        (b"feature_nativedisk_cmd", b"y".to_vec()),
        (b"feature_timeout_style", b"y".to_vec()),
    ] {
        ev.set(n, v)?;
    }
    let mut items = Vec::new();
    ev.run(&nodes, &mut Sink::Items(&mut items))?;
    let default = ev.get(b"default").to_vec();
    let timeout = ev.get(b"timeout").to_vec();
    let default = match default.as_slice() {
        b"saved" => ev.get(b"saved_entry").to_vec(),
        _ => default,
    };
    ev.finish(items, &[])?;
    let mut menu = ev.menu;
    menu.default = (!default.is_empty()).then_some(default);
    menu.timeout = match number(&timeout) {
        Some(n) if n < 0 => Some(Timeout::Forever),
        Some(n) => Some(Timeout::Secs(u64::try_from(n).unwrap_or(0))),
        None => None,
    };
    Ok(menu)
}
