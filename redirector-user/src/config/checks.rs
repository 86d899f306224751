//! Checks more than one kind of document uses: names, port numbers,
//! ranges, durations, DNS names, labels, subjectAltNames. Each reports
//! through [`Ctx`] and returns the value it checked, or `None`.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::ctx::{Ctx, Doc, pos};
use super::{duration, raw};

/// `metadata.name` is required for Istio kinds; reports its absence.
pub(super) fn metadata_name<S>(ctx: &mut Ctx, doc: &Doc, d: &raw::Document<S>) -> String {
    match qualified_name(&d.metadata) {
        Some(name) if !name.is_empty() => name,
        _ => {
            let at = match &d.metadata {
                Some(m) => pos(m.referenced),
                None => pos(d.kind.referenced),
            };
            ctx.at(doc, at, "metadata.name", "metadata.name is required");
            String::new()
        }
    }
}

/// `namespace/name`, or `name` without a namespace.
pub(super) fn qualified_name(metadata: &Option<Spanned<raw::Metadata>>) -> Option<String> {
    let m = &metadata.as_ref()?.value;
    let name = &m.name.as_ref()?.value;
    Some(match &m.namespace {
        Some(ns) if !ns.value.is_empty() => format!("{}/{name}", ns.value),
        _ => name.clone(),
    })
}

pub(super) fn port_number(ctx: &mut Ctx, doc: &Doc, n: &Spanned<i64>, field: &str) -> Option<u16> {
    match u16::try_from(n.value) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            ctx.value(
                doc,
                n,
                field,
                format!("port {} is out of range 1-65535", n.value),
            );
            None
        }
    }
}

/// A whole number in `range`, or a problem saying `expected`.
pub(super) fn number(
    ctx: &mut Ctx,
    doc: &Doc,
    v: &Spanned<i64>,
    field: &str,
    range: RangeInclusive<i64>,
    expected: &str,
) -> Option<u32> {
    if range.contains(&v.value) {
        u32::try_from(v.value).ok()
    } else {
        ctx.value(
            doc,
            v,
            field,
            format!("{} is out of range: expected {expected}", v.value),
        );
        None
    }
}

pub(super) const U32_MAX: i64 = u32::MAX as i64;

/// A duration greater than zero; `default` when unset.
pub(super) fn positive_duration(
    ctx: &mut Ctx,
    doc: &Doc,
    v: &Option<Spanned<String>>,
    field: &str,
    default: Duration,
) -> Option<Duration> {
    let Some(v) = v else { return Some(default) };
    match duration::parse(&v.value) {
        Ok(d) if !d.negative && !d.magnitude.is_zero() => Some(d.magnitude),
        Ok(_) => {
            ctx.value(
                doc,
                v,
                field,
                format!("duration {:?} must be greater than zero", v.value),
            );
            None
        }
        Err(e) => {
            ctx.value(doc, v, field, e);
            None
        }
    }
}

/// Why `name` is not a DNS name, if it is not.
pub(super) fn dns_name_problem(name: &str) -> Option<String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let bad_label = bare.split('.').find(|label| {
        label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if bare.is_empty() || bare.len() > 253 || bad_label.is_some() {
        Some(format!(
            "{name:?} is not a valid DNS name (letters, digits, `-` and `_` in dot-separated labels)"
        ))
    } else {
        None
    }
}

/// Why `key` is not a Kubernetes label key (`[prefix/]name`: a DNS
/// subdomain prefix, a name of 1–63 letters, digits, `-`, `_`, `.` that
/// starts and ends with a letter or digit), as Istio checks labels.
pub(super) fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    });
    if !prefix_ok || name.is_empty() || label_value_problem(name).is_some() {
        Some(format!(
            "{key:?} is not a valid label key ([prefix/]name: a name of 1-63 letters, digits, `-`, `_` \
             and `.`, starting and ending with a letter or digit; the prefix a lowercase DNS name)"
        ))
    } else {
        None
    }
}

/// Why `value` is not a Kubernetes label value (empty, or up to 63 letters,
/// digits, `-`, `_`, `.` starting and ending with a letter or digit).
pub(super) fn label_value_problem(value: &str) -> Option<String> {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    (!ok).then(|| {
        format!(
            "{value:?} is not a valid label value (up to 63 letters, digits, `-`, `_` and `.`, \
             starting and ending with a letter or digit)"
        )
    })
}

/// A `subjectAltNames` list: each entry a DNS name, an IP address or a URI
/// (like `spiffe://domain/ns/x/sa/y`), matched exactly as Istio's are
/// (a wildcard certificate still covers a DNS name it matches).
pub(super) fn subject_alt_names(
    ctx: &mut Ctx,
    doc: &Doc,
    field: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, san) in list.value.iter().enumerate() {
        let name = san.value.as_str();
        let problem = if name.parse::<IpAddr>().is_ok() {
            None
        } else if let Some((scheme, rest)) = name.split_once(':') {
            let scheme_ok = scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            (!scheme_ok || rest.is_empty()).then(|| {
                format!("{name:?} is neither a DNS name, an IP address nor a URI like spiffe://domain/path")
            })
        } else if name.contains('*') {
            Some(format!(
                "{name:?} is a pattern; subjectAltNames are exact names (a wildcard certificate \
                 matches the names it covers), so list the names themselves"
            ))
        } else {
            dns_name_problem(name)
        };
        match problem {
            Some(p) => ctx.value(doc, san, format!("{field}[{i}]"), p),
            None => out.push(name.to_owned()),
        }
    }
    out
}
