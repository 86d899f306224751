//! Multi-document YAML with absolute line numbers.
//!
//! serde-saphyr reads one document at a time into a type, but which type
//! depends on the document's `kind`, and error locations must point into the
//! user's file, not into a slice of it. So each document is read from its
//! own lines alone (markers and directives blanked, so the parser sees a
//! single document), and every line number that comes out of it is moved by
//! the lines before it ([`Document::line_offset`]: here for read errors,
//! in `ctx` for problems found later). Each line of the file is copied once,
//! so loading is linear in the file's size. Errors keep serde's message,
//! saphyr's line/column and `serde_path_to_error`'s field path.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_saphyr::{DuplicateKeyPolicy, Location, MessageFormatter, UserMessageFormatter};

/// One non-empty document of a stream.
#[derive(Debug)]
pub(super) struct Document {
    /// 1-based position among the non-empty documents.
    pub(super) index: usize,
    /// 1-based line of the document's first content line, in the file.
    pub(super) first_line: u64,
    /// Lines of the file before `text`'s first: a line `n` of `text` is
    /// line `n + line_offset` of the file.
    pub(super) line_offset: u64,
    /// The document's own lines, markers and directives blanked.
    pub(super) text: String,
}

/// A failure to read a document into its type.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ReadError {
    pub(super) line: Option<u64>,
    pub(super) column: Option<u64>,
    /// Dotted path of the failing field, if inside the document.
    pub(super) field: Option<String>,
    pub(super) message: String,
}

/// Splits a stream at `---` and `...` marker lines. YAML forbids those
/// markers at column 0 inside any scalar, so a textual split agrees with the
/// parser. Documents holding only comments and blank lines are dropped, as
/// they are by every Kubernetes tool.
pub(super) fn split(text: &str) -> Vec<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut documents = Vec::new();
    let mut start = 0;
    let flush = |start: usize, end: usize, documents: &mut Vec<Document>| {
        let body = &lines[start..end];
        let Some(first) = body.iter().position(|l| is_content(&neutralize(l))) else {
            return;
        };
        let mut copy = String::with_capacity(body.iter().map(|l| l.len() + 1).sum());
        for line in body {
            copy.push_str(&neutralize(line));
            copy.push('\n');
        }
        documents.push(Document {
            index: documents.len() + 1,
            first_line: (start + first + 1) as u64,
            line_offset: start as u64,
            text: copy,
        });
    };
    for (i, line) in lines.iter().enumerate() {
        if is_marker(line, "---") && i > start {
            flush(start, i, &mut documents);
            start = i;
        } else if is_marker(line, "...") {
            flush(start, i, &mut documents);
            start = i + 1;
        }
    }
    flush(start, lines.len(), &mut documents);
    documents
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

/// Blanks what would make the parser see more than one document: the `---`
/// marker itself (keeping anything after it, at the same columns), `...`
/// lines and directives.
fn neutralize(line: &str) -> String {
    if is_marker(line, "---") {
        format!("   {}", &line[3..])
    } else if is_marker(line, "...") || line.starts_with('%') {
        String::new()
    } else {
        line.to_owned()
    }
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// Reads `document` as `T`, recording where it failed (in the file's
/// lines). Duplicate keys are errors, as in Kubernetes. Spans inside the
/// value are the document's own lines; `ctx` moves them.
pub(super) fn read<T: DeserializeOwned>(document: &Document) -> Result<T, ReadError> {
    read_with(document, DuplicateKeyPolicy::Error)
}

/// Reads only to learn a document's kind and name, so a problem that the
/// typed pass will report (such as a duplicate key) does not stop it: the
/// typed pass then names the document properly.
pub(super) fn read_header<T: DeserializeOwned>(document: &Document) -> Result<T, ReadError> {
    read_with(document, DuplicateKeyPolicy::FirstWins)
}

fn read_with<T: DeserializeOwned>(
    document: &Document,
    duplicate_keys: DuplicateKeyPolicy,
) -> Result<T, ReadError> {
    // Snippets are not wanted: problems are one line each, with a position.
    let options = serde_saphyr::options! { with_snippet: false, duplicate_keys: duplicate_keys };
    let mut track = serde_path_to_error::Track::new();
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(&document.text, options, |de| {
            T::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
        });
    result.map_err(|e| {
        let e = e.without_snippet();
        let (line, column) = position(e.location());
        let message = UserMessageFormatter.format_message(e).into_owned();
        ReadError {
            line: line.map(|l| l + document.line_offset),
            column,
            field: field_path(&track.path()),
            message,
        }
    })
}

/// A saphyr location as optional line and column (`UNKNOWN` is line 0).
pub(super) fn position(location: Option<Location>) -> (Option<u64>, Option<u64>) {
    match location {
        Some(l) if l.line() > 0 => (Some(l.line()), Some(l.column()).filter(|&c| c > 0)),
        _ => (None, None),
    }
}

/// Renders a tracked path as `spec.ports[0].name`. `Spanned<T>` is itself a
/// small struct whose payload is the field `value`; that step means nothing to
/// the user and is left out, as are the steps serde could not name.
fn field_path(path: &serde_path_to_error::Path) -> Option<String> {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Where the key `key` is written for a value found at `value`. Spans point
/// at values, and for a nested mapping that is the line below the key the
/// user should look at, so this searches backwards (at most a few lines) for
/// `key:`. Falls back to the value's own position.
pub(super) fn key_position(text: &str, key: &str, value: Location) -> (Option<u64>, Option<u64>) {
    let fallback = position(Some(value));
    let Some(value_line) = fallback.0 else {
        return fallback;
    };
    let lines: Vec<&str> = text.lines().collect();
    let first = value_line.saturating_sub(20).max(1);
    for n in (first..=value_line).rev() {
        let Some(line) = lines.get((n - 1) as usize) else {
            continue;
        };
        // On the value's own line, only what precedes the value can be the key.
        let chars: Vec<char> = line.chars().collect();
        let limit = if n == value_line {
            (value.column().saturating_sub(1) as usize).min(chars.len())
        } else {
            chars.len()
        };
        let line: String = chars[..limit].iter().collect();
        if let Some(col) = find_key(&line, key) {
            return (Some(n), Some(col));
        }
    }
    fallback
}

/// 1-based character column of the last `key:` (optionally quoted) in `line`.
fn find_key(line: &str, key: &str) -> Option<u64> {
    let mut found = None;
    for (byte, _) in line.match_indices(key) {
        let before = line[..byte].chars().last();
        let quoted = matches!(before, Some('"' | '\''));
        let starts_token = match before {
            None => true,
            Some(c) => c.is_whitespace() || matches!(c, '{' | ',' | '-' | '?' | '"' | '\''),
        };
        let mut rest = &line[byte + key.len()..];
        if quoted {
            rest = rest.strip_prefix(['"', '\'']).unwrap_or("");
        }
        if starts_token && rest.trim_start().starts_with(':') {
            let col = line[..byte].chars().count() as u64 + 1 - u64::from(quoted);
            found = Some(col);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_absolute_lines_and_drops_empty_documents() {
        let text = "# leading comment\n---\na: 1\n---\n# only a comment\n---\n\n  b: 2\n...\n--- # c\nc: 3\n";
        let docs = split(text);
        let firsts: Vec<u64> = docs.iter().map(|d| d.first_line).collect();
        assert_eq!(firsts, [3, 8, 11], "documents: {docs:#?}");
        assert_eq!(docs.iter().map(|d| d.index).collect::<Vec<_>>(), [1, 2, 3]);
        let offsets: Vec<u64> = docs.iter().map(|d| d.line_offset).collect();
        assert_eq!(offsets, [1, 5, 9], "documents: {docs:#?}");
        // Only the document's own lines, the marker blanked at its columns.
        let lines: Vec<&str> = docs[1].text.lines().collect();
        assert_eq!(lines, ["   ", "", "  b: 2"], "{:?}", docs[1].text);
        assert_eq!(docs[2].text, "    # c\nc: 3\n");
    }

    #[test]
    fn each_line_is_copied_once() {
        // 5,000 documents: their texts together are the file's size, not
        // thousands of times it (as when each was a blanked copy of all).
        let one = "apiVersion: v1\nkind: X\nmetadata: {name: x}\n";
        let text = format!("---\n{one}").repeat(5000);
        let docs = split(&text);
        assert_eq!(docs.len(), 5000);
        let copied: usize = docs.iter().map(|d| d.text.len()).sum();
        assert!(
            copied <= text.len(),
            "{copied} bytes copied of {}",
            text.len()
        );
        assert_eq!(docs[4999].first_line, 5000 * 4 - 2);
    }

    #[test]
    fn split_without_markers_is_one_document() {
        let docs = split("a: 1\nb: 2\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].first_line, 1);
        assert!(split("").is_empty());
        assert!(split("# nothing\n\n").is_empty());
    }

    #[test]
    fn markers_need_column_zero_and_a_break() {
        assert!(is_marker("---", "---"));
        assert!(is_marker("--- # x", "---"));
        assert!(!is_marker("----", "---"));
        assert!(!is_marker(" ---", "---"));
        assert!(!is_marker("---x", "---"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        #[allow(dead_code)]
        a: Vec<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        n: serde_saphyr::Spanned<u8>,
    }

    #[test]
    fn read_reports_absolute_position_and_path() {
        let docs = split("a: []\n---\na:\n- n: 1\n- n: 300\n");
        read::<T>(&docs[0]).expect("first document is valid");
        let e = read::<T>(&docs[1]).expect_err("300 is not a u8");
        assert_eq!((e.line, e.column), (Some(5), Some(6)), "{e:?}");
        assert_eq!(e.field.as_deref(), Some("a[1].n"), "{e:?}");
    }

    #[test]
    fn read_reports_malformed_yaml() {
        let docs = split("a: [\n  - n: 1\n");
        let e = read::<T>(&docs[0]).expect_err("unclosed flow sequence");
        assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
    }

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Pool {
        connection_pool: serde_saphyr::Spanned<serde::de::IgnoredAny>,
    }

    #[test]
    fn key_position_finds_the_key_above_a_nested_value() {
        let text = "\n\nconnectionPool:\n  # comment\n  tcp: {}\n";
        let pool: Pool = serde_saphyr::from_str(text).expect("valid");
        assert_eq!(pool.connection_pool.referenced.line(), 5);
        assert_eq!(
            key_position(text, "connectionPool", pool.connection_pool.referenced),
            (Some(3), Some(1))
        );
        // A key that is not there leaves the value's own position.
        assert_eq!(
            key_position(text, "nope", pool.connection_pool.referenced),
            (Some(5), Some(3))
        );
    }

    #[test]
    fn find_key_matches_whole_keys_only() {
        assert_eq!(find_key("  connectionPool:", "connectionPool"), Some(3));
        assert_eq!(find_key("  \"weight\": 1", "weight"), Some(3));
        assert_eq!(find_key("  myweight: 1", "weight"), None);
        assert_eq!(find_key("  weights: 1", "weight"), None);
        assert_eq!(find_key("- {a: 1, weight: 2}", "weight"), Some(10));
    }
}
