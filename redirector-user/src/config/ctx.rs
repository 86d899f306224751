//! How problems are collected and located: every check reports through a
//! [`Ctx`], at a position in a [`Doc`], and the file's problems come back
//! together as one [`ConfigError`].

use std::fmt;

use serde_saphyr::{Location, Spanned};

use super::raw;
use super::yaml::{self, ReadError};

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines(.problems))]
pub(crate) struct ConfigError {
    pub(super) problems: Vec<Problem>,
}

fn lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

/// One thing wrong with a config file, located as precisely as known.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Problem {
    pub(super) source: String,
    pub(super) line: Option<u64>,
    pub(super) column: Option<u64>,
    /// Like `DestinationRule "mydynamodb" (document 2)`.
    pub(super) document: Option<String>,
    /// Dotted path inside the document, like `spec.ports[0].protocol`.
    pub(super) field: Option<String>,
    pub(super) message: String,
}

impl Problem {
    pub(super) fn file(source: &str, message: String) -> Problem {
        Problem {
            source: source.to_owned(),
            line: None,
            column: None,
            document: None,
            field: None,
            message,
        }
    }
}

impl Problem {
    /// `source:line:column: document: field`, leaving out what is unknown.
    pub(super) fn location(&self) -> String {
        let mut out = self.source.clone();
        if let Some(line) = self.line {
            out += &format!(":{line}");
            if let Some(column) = self.column {
                out += &format!(":{column}");
            }
        }
        for part in [&self.document, &self.field].into_iter().flatten() {
            out += &format!(": {part}");
        }
        out
    }
}

/// `source:line:column: document: field: message`, leaving out what is unknown.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

/// `(line, column)`, either unknown.
pub(super) type Pos = (Option<u64>, Option<u64>);

/// The message for an Istio field we know but do not implement.
const NOT_IMPLEMENTED: &str =
    "not implemented yet: redirector does not support this Istio field; remove it";

/// A document being validated: its name in messages and its text, for
/// finding keys. Positions inside it ([`Pos`], spans) count its own lines;
/// problems are reported at file lines, `line_offset` further.
pub(super) struct Doc<'a> {
    pub(super) label: String,
    pub(super) text: &'a str,
    pub(super) line_offset: u64,
}

impl Doc<'_> {
    /// `pos` (in this document's lines) as a position in the file.
    fn in_file(&self, pos: Pos) -> Pos {
        (pos.0.map(|l| l + self.line_offset), pos.1)
    }
}

/// Collects problems for one source.
pub(super) struct Ctx<'a> {
    source: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl<'a> Ctx<'a> {
    /// No problems yet; `source` names the file in every message.
    pub(super) fn new(source: &'a str) -> Ctx<'a> {
        Ctx {
            source,
            problems: Vec::new(),
        }
    }

    pub(super) fn at(
        &mut self,
        doc: &Doc,
        pos: Pos,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let field: String = field.into();
        let pos = doc.in_file(pos);
        self.problems.push(Problem {
            source: self.source.to_owned(),
            line: pos.0,
            column: pos.1,
            document: Some(doc.label.clone()),
            field: (!field.is_empty()).then_some(field),
            message: message.into(),
        });
    }

    /// Where a value is written, as a problem about it would say.
    pub(super) fn locate<T>(&self, doc: &Doc, v: &Spanned<T>, field: &str) -> String {
        let (line, column) = doc.in_file(pos(v.referenced));
        Problem {
            source: self.source.to_owned(),
            line,
            column,
            document: Some(doc.label.clone()),
            field: Some(field.to_owned()),
            message: String::new(),
        }
        .location()
    }

    /// A problem with a value, located at the value.
    pub(super) fn value<T>(
        &mut self,
        doc: &Doc,
        v: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.at(doc, pos(v.referenced), field, message);
    }

    /// A problem with a whole `key: value` entry, located at the key.
    pub(super) fn key<T>(
        &mut self,
        doc: &Doc,
        parent: &str,
        key: &str,
        v: &Spanned<T>,
        message: impl Into<String>,
    ) {
        let at = yaml::key_position(doc.text, key, v.referenced);
        self.at(doc, at, join(parent, key), message);
    }

    /// Rejects an Istio field we do not implement, if present.
    pub(super) fn unsupported(&mut self, doc: &Doc, parent: &str, key: &str, v: &raw::Unsupported) {
        if let Some(v) = v {
            self.key(doc, parent, key, v, NOT_IMPLEMENTED);
        }
    }

    pub(super) fn read_error(&mut self, label: &str, e: ReadError) {
        self.problems.push(Problem {
            source: self.source.to_owned(),
            line: e.line,
            column: e.column,
            document: Some(label.to_owned()),
            field: e.field,
            message: e.message,
        });
    }
}

pub(super) fn pos(l: Location) -> Pos {
    yaml::position(Some(l))
}

/// `parent.key`, or `key` at the top.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
