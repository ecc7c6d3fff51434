//! The LVM2 text metadata grammar, parsed with nom. Guest data.
//!
//! A volume group's metadata is a config-style text: `name { … }`
//! sections, `key = value` settings, values that are integers, quoted
//! strings (with backslash escapes) or flat arrays of those, and `#`
//! comments to the end of a line. This module turns that text into a
//! [`Section`] tree and nothing else; the meaning of the keys is
//! [`super`]'s business.
//!
//! Bounded: sections nest at most [`MAX_LVM_NESTING`] deep (the parser
//! recurses once per level, so the stack is bounded too), and at most
//! [`MAX_LVM_TOKENS`] settings, sections and array elements are accepted
//! in all. The text itself is capped by its reader
//! ([`crate::limits::MAX_LVM_METADATA`]), so every string is too.

use nom::bytes::complete::{is_not, take_while1};
use nom::character::complete::{anychar, char, digit1, multispace1, not_line_ending};
use nom::combinator::{opt, recognize};
use nom::error::{ErrorKind, ParseError};
use nom::{IResult, Parser};

use crate::limits::{MAX_LVM_NESTING, MAX_LVM_TOKENS};

/// A value of a setting.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An integer (`pe_start = 2048`).
    Int(i64),
    /// A number with a fraction; LVM's metadata has none, kept as text.
    Float(String),
    /// A quoted string, escapes resolved.
    Str(String),
    /// A flat array (`stripes = ["pv0", 0]`).
    Array(Vec<Value>),
    /// A nested section (`pv0 { … }`).
    Section(Section),
}

/// The items of a section (or of the whole text), in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    /// `(name, value)` pairs: settings and subsections alike.
    pub items: Vec<(String, Value)>,
}

impl Section {
    /// The first value named `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.items.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The integer setting `key`.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The string setting `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The subsection `key`.
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }

    /// The subsections, with their names, in order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.items.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
}

/// Why the text was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Not the grammar.
    #[error("metadata syntax error at line {line}: {what}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// What was expected.
        what: &'static str,
    },
    /// Sections nested deeper than the cap.
    #[error("metadata sections nest deeper than {max}")]
    TooDeep {
        /// The cap.
        max: usize,
    },
    /// More items than the cap.
    #[error("metadata has more than {max} settings and values")]
    TooManyTokens {
        /// The cap.
        max: usize,
    },
}

/// The parser's error: nom's position and kind, or a cap.
#[derive(Debug)]
enum PErr<'a> {
    Nom(&'a str),
    Expected(&'a str, &'static str),
    TooDeep,
    TooManyTokens,
}

impl<'a> ParseError<&'a str> for PErr<'a> {
    fn from_error_kind(input: &'a str, _: ErrorKind) -> Self {
        PErr::Nom(input)
    }
    fn append(_: &'a str, _: ErrorKind, other: Self) -> Self {
        other
    }
}

type Res<'a, T> = IResult<&'a str, T, PErr<'a>>;

/// A hard error (no backtracking) at `at`.
fn fail<'a, T>(at: &'a str, what: &'static str) -> Res<'a, T> {
    Err(nom::Err::Failure(PErr::Expected(at, what)))
}

/// Whitespace and comments.
fn ws(mut i: &str) -> Res<'_, ()> {
    loop {
        if let Ok((rest, _)) = multispace1::<_, PErr<'_>>(i) {
            i = rest;
        } else if let Ok((rest, _)) = char::<_, PErr<'_>>('#')(i) {
            let (rest, _) = not_line_ending(rest)?;
            i = rest;
        } else {
            return Ok((i, ()));
        }
    }
}

/// A key or section name: LVM's name characters.
fn ident(i: &str) -> Res<'_, &str> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-'))(i)
}

/// A quoted string; `\x` stands for `x`.
fn string(i: &str) -> Res<'_, String> {
    let (mut i, _) = char('"')(i)?;
    let mut out = String::new();
    loop {
        if let Ok((rest, part)) = is_not::<_, _, PErr<'_>>("\"\\")(i) {
            out.push_str(part);
            i = rest;
        }
        match anychar::<_, PErr<'_>>(i) {
            Ok((rest, '"')) => return Ok((rest, out)),
            Ok((rest, _backslash)) => match anychar::<_, PErr<'_>>(rest) {
                Ok((rest, c)) => {
                    out.push(c);
                    i = rest;
                }
                Err(_) => return fail(rest, "a character after a backslash"),
            },
            Err(_) => return fail(i, "a closing quote"),
        }
    }
}

/// An integer or a number with a fraction.
fn number(i: &str) -> Res<'_, Value> {
    let (rest, text) = recognize((opt(char('-')), digit1, opt((char('.'), digit1)))).parse(i)?;
    if text.contains('.') {
        return Ok((rest, Value::Float(text.to_owned())));
    }
    match text.parse::<i64>() {
        Ok(n) => Ok((rest, Value::Int(n))),
        Err(_) => fail(i, "an integer that fits 64 bits"),
    }
}

/// A scalar: string or number.
fn scalar(i: &str) -> Res<'_, Value> {
    if i.starts_with('"') {
        let (rest, s) = string(i)?;
        return Ok((rest, Value::Str(s)));
    }
    number(i)
}

/// The parse state: the token budget.
struct Ctx {
    tokens: usize,
}

impl Ctx {
    fn count<'a>(&mut self, at: &'a str) -> Res<'a, ()> {
        self.tokens = self.tokens.saturating_add(1);
        if self.tokens > MAX_LVM_TOKENS {
            return Err(nom::Err::Failure(PErr::TooManyTokens));
        }
        Ok((at, ()))
    }
}

/// `[ v, v, … ]`, flat, a trailing comma allowed.
fn array<'a>(ctx: &mut Ctx, i: &'a str) -> Res<'a, Vec<Value>> {
    let (mut i, _) = char('[')(i)?;
    let mut out = Vec::new();
    loop {
        (i, _) = ws(i)?;
        if let Ok((rest, _)) = char::<_, PErr<'_>>(']')(i) {
            return Ok((rest, out));
        }
        ctx.count(i)?;
        let (rest, v) = match scalar(i) {
            Ok(ok) => ok,
            Err(nom::Err::Error(_)) => return fail(i, "a string or a number in an array"),
            Err(e) => return Err(e),
        };
        out.push(v);
        (i, _) = ws(rest)?;
        if let Ok((rest, _)) = char::<_, PErr<'_>>(',')(i) {
            i = rest;
        } else if char::<_, PErr<'_>>(']')(i).is_err() {
            return fail(i, "',' or ']'");
        }
    }
}

/// The items of a section up to (not including) its closing brace, or of
/// the whole text up to its end (`depth` 0).
fn items<'a>(ctx: &mut Ctx, mut i: &'a str, depth: usize) -> Res<'a, Section> {
    let mut out = Section::default();
    loop {
        (i, _) = ws(i)?;
        if i.is_empty() || i.starts_with('}') {
            return Ok((i, out));
        }
        ctx.count(i)?;
        let (rest, name) = match ident(i) {
            Ok(ok) => ok,
            Err(_) => return fail(i, "a name"),
        };
        let (rest, _) = ws(rest)?;
        if let Ok((rest, _)) = char::<_, PErr<'_>>('{')(rest) {
            if depth >= MAX_LVM_NESTING {
                return Err(nom::Err::Failure(PErr::TooDeep));
            }
            let (rest, sub) = items(ctx, rest, depth.saturating_add(1))?;
            let Ok((rest, _)) = char::<_, PErr<'_>>('}')(rest) else {
                return fail(rest, "'}'");
            };
            out.items.push((name.to_owned(), Value::Section(sub)));
            i = rest;
        } else if let Ok((rest, _)) = char::<_, PErr<'_>>('=')(rest) {
            let (rest, _) = ws(rest)?;
            let (rest, v) = if rest.starts_with('[') {
                let (r, a) = array(ctx, rest)?;
                (r, Value::Array(a))
            } else {
                match scalar(rest) {
                    Ok(ok) => ok,
                    Err(nom::Err::Error(_)) => return fail(rest, "a value"),
                    Err(e) => return Err(e),
                }
            };
            out.items.push((name.to_owned(), v));
            i = rest;
        } else {
            return fail(rest, "'=' or '{'");
        }
    }
}

/// Parse a whole metadata text (trailing NUL bytes allowed).
pub fn parse(text: &str) -> Result<Section, TextError> {
    let body = text.trim_end_matches('\0');
    let line_of = |at: &str| {
        let done = body.len().saturating_sub(at.len());
        body.get(..done)
            .map_or(0, |s| s.matches('\n').count())
            .saturating_add(1)
    };
    let mut ctx = Ctx { tokens: 0 };
    let err = match items(&mut ctx, body, 0) {
        Ok((rest, top)) => {
            // `items` stops at the end or at a stray '}'.
            if rest.is_empty() {
                return Ok(top);
            }
            PErr::Expected(rest, "a name (unbalanced '}')")
        }
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => e,
        Err(nom::Err::Incomplete(_)) => PErr::Expected("", "more text"),
    };
    Err(match err {
        PErr::TooDeep => TextError::TooDeep { max: MAX_LVM_NESTING },
        PErr::TooManyTokens => TextError::TooManyTokens { max: MAX_LVM_TOKENS },
        PErr::Expected(at, what) => TextError::Syntax {
            line: line_of(at),
            what,
        },
        PErr::Nom(at) => TextError::Syntax {
            line: line_of(at),
            what: "valid metadata",
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn real_shape() {
        let t = "vg0 {\nid = \"abc\"\nseqno = 3\nstatus = [\"READ\", \"WRITE\"]\nflags = []\n\
                 physical_volumes {\npv0 {\nid = \"x\"\npe_start = 2048\n}\n}\n}\n\
                 # Generated by LVM2\ncontents = \"Text Format Volume Group\"\nversion = 1\n\
                 description = \"a \\\"quoted\\\" \\\\ word\"\ncreation_time = 17\t# comment\n\0\0";
        let top = parse(t).unwrap();
        let vg = top.section("vg0").unwrap();
        assert_eq!(vg.str("id"), Some("abc"));
        assert_eq!(vg.int("seqno"), Some(3));
        assert_eq!(
            vg.get("status"),
            Some(&Value::Array(vec![
                Value::Str("READ".into()),
                Value::Str("WRITE".into())
            ]))
        );
        assert_eq!(vg.get("flags"), Some(&Value::Array(vec![])));
        assert_eq!(
            vg.section("physical_volumes")
                .unwrap()
                .section("pv0")
                .unwrap()
                .int("pe_start"),
            Some(2048)
        );
        assert_eq!(top.str("description"), Some("a \"quoted\" \\ word"));
        assert_eq!(top.int("creation_time"), Some(17));
        assert_eq!(top.sections().count(), 1);
    }

    #[test]
    fn numbers_and_arrays() {
        let top = parse("a = -5\nb = 1.5\nc = [\"pv0\", 0, \"pv1\", 8,]\n").unwrap();
        assert_eq!(top.int("a"), Some(-5));
        assert_eq!(top.get("b"), Some(&Value::Float("1.5".into())));
        assert_eq!(
            top.get("c"),
            Some(&Value::Array(vec![
                Value::Str("pv0".into()),
                Value::Int(0),
                Value::Str("pv1".into()),
                Value::Int(8)
            ]))
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (t, line) in [
            ("a = 1\nb = \n", 3),
            ("a {\nb = 1\n", 3),
            ("a = \"open", 1),
            ("a = [1 2]", 1),
            ("a = [[1]]", 1),
            ("}", 1),
            ("a = 99999999999999999999", 1),
            ("a b", 1),
            ("= 1", 1),
            ("a = \"x\\", 1),
        ] {
            match parse(t) {
                Err(TextError::Syntax { line: l, .. }) => assert_eq!(l, line, "{t:?}"),
                other => panic!("{t:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn nesting_bomb_is_refused_quickly() {
        let deep = "a {".repeat(1_000_000);
        let t0 = std::time::Instant::now();
        assert_eq!(parse(&deep), Err(TextError::TooDeep { max: MAX_LVM_NESTING }));
        let ok = format!("{}{}", "a {".repeat(MAX_LVM_NESTING), "}".repeat(MAX_LVM_NESTING));
        assert!(parse(&ok).is_ok());
        assert!(t0.elapsed().as_secs() < 2);
    }

    #[test]
    fn token_flood_is_refused() {
        let t = "a = 1\n".repeat(MAX_LVM_TOKENS + 1);
        assert_eq!(parse(&t), Err(TextError::TooManyTokens { max: MAX_LVM_TOKENS }));
        let arr = format!("a = [{}]", "1,".repeat(MAX_LVM_TOKENS + 1));
        assert_eq!(parse(&arr), Err(TextError::TooManyTokens { max: MAX_LVM_TOKENS }));
    }
}
