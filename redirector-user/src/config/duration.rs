//! Go-style durations (`15s`, `1m`, `1h30m`, `1.5s`, `100ms`).
//!
//! Istio users write durations the way Go's `time.ParseDuration` reads them
//! (the blog's `baseEjectionTime: 1m`), which is not protobuf's `1.5s`-only
//! form, so we parse Go's grammar: an optional sign, then one or more decimal
//! numbers each followed by a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`).
//! A bare `0` is allowed, as in Go. Negative values parse, so the caller can
//! say "must be positive" rather than "bad syntax".

use std::time::Duration;

/// A parsed duration that may be negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Signed {
    pub(super) negative: bool,
    pub(super) magnitude: Duration,
}

const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// The longest duration: Go's `time.Duration` holds at most 2^63 − 1
/// nanoseconds (about 292 years), and Istio reads every duration into one
/// (`AsDuration`), so nothing longer means anything to Istio either. Go's
/// `ParseDuration` rejects longer ones, and so does [`parse`].
pub(crate) const MAX: Duration = Duration::new(9_223_372_036, 854_775_807);

/// Parses Go duration syntax. Never panics, whatever `text` is: every
/// step is checked, and anything longer than [`MAX`] is an error.
pub(super) fn parse(text: &str) -> Result<Signed, String> {
    let invalid =
        || format!("invalid duration {text:?}: expected a Go duration such as 15s, 1m or 1h30m");
    let too_long = || {
        format!(
            "invalid duration {text:?}: longer than {}, the longest duration Go (and so Istio) \
             can hold",
            format(MAX)
        )
    };
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Signed {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let max = MAX.as_nanos();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("invalid duration {text:?}: missing unit (ns, us, ms, s, m or h)")
            } else {
                format!("invalid duration {text:?}: unknown unit {unit:?} (ns, us, ms, s, m or h)")
            });
        };
        // Only digits are left, so the one way to fail is a number too
        // big for u128, which is far beyond MAX.
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| too_long())?
        };
        let mut nanos = whole.checked_mul(scale).ok_or_else(too_long)?;
        // Fractions finer than a nanosecond are dropped, as Go does.
        let mut place = scale;
        for digit in frac.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            nanos = nanos
                .checked_add(u128::from(digit - b'0') * place)
                .ok_or_else(too_long)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        if total > max {
            return Err(too_long());
        }
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| too_long())?;
    let magnitude = Duration::new(secs, (total % 1_000_000_000) as u32);
    Ok(Signed {
        negative,
        magnitude,
    })
}

/// Formats like Go's `Duration.String` (`1m0s`, `1h30m0s`, `1.5s`, `100ms`),
/// so the effective config reads like what the user wrote.
pub(super) fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = match nanos {
            n if n < 1_000 => ("ns", 1),
            n if n < 1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = nanos % 60_000_000_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&decimal(seconds, 1_000_000_000));
    out.push('s');
    out
}

/// `value / scale` with the fraction written only as far as needed.
fn decimal(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let frac = value % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// For `#[serde(serialize_with)]`: durations as Go strings in config dumps.
pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

pub(super) fn serialize_opt<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        let d = parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
        assert!(!d.negative, "{text:?} parsed as negative");
        d.magnitude
    }

    #[test]
    fn parses_go_syntax() {
        assert_eq!(ok("15s"), Duration::from_secs(15));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("2.s"), Duration::from_secs(2));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("10µs"), Duration::from_micros(10));
        assert_eq!(ok("10μs"), Duration::from_micros(10));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("1h1m1s1ms"), Duration::from_millis(3_661_001));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("+3s"), Duration::from_secs(3));
        let neg = parse("-1s").expect("negative parses");
        assert!(neg.negative);
        assert_eq!(neg.magnitude, Duration::from_secs(1));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "-",
            "s",
            "10",
            "1x",
            "1.5",
            "1 s",
            "1s 2m",
            "..s",
            "1e3s",
            "99999999999999999999999h",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("invalid duration"), "{bad:?}: {e}");
        }
        assert!(parse("10").unwrap_err().contains("missing unit"));
        assert!(parse("1d").unwrap_err().contains("unknown unit \"d\""));
    }

    #[test]
    fn the_longest_is_gos_and_longer_is_an_error() {
        assert_eq!(ok("2562047h47m16.854775807s"), MAX);
        assert_eq!(format(MAX), "2562047h47m16.854775807s");
        for bad in [
            "2562047h47m16.854775808s",
            "2562048h",
            "9223372037s",
            "1000000000000h",
            "2562047h2562047h",
            "99999999999999999999999h",
            "99999999999999999999999999999999999999999999999ns",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(
                e.contains("longer than 2562047h47m16.854775807s"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn a_fraction_cannot_overflow() {
        // The whole part times an hour fits in u128 with less than 0.9h to
        // spare: the fraction used to overflow (a panic in debug builds).
        let e = parse("94522879700260684295381835.9h").expect_err("far too long");
        assert!(e.contains("longer than"), "{e}");
        // Digits finer than a nanosecond are dropped, however many.
        let long = format!("1.{}s", "9".repeat(10_000));
        assert_eq!(ok(&long), Duration::new(1, 999_999_999));
        let zeros = format!("{}1s", "0".repeat(10_000));
        assert_eq!(ok(&zeros), Duration::from_secs(1));
    }

    #[test]
    fn formats_like_go() {
        let cases = [
            (Duration::from_secs(15), "15s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::ZERO, "0s"),
        ];
        for (d, text) in cases {
            assert_eq!(format(d), text);
            assert_eq!(ok(text), d, "round trip of {text}");
        }
    }
}
