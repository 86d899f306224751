//! What an `rdt-upstream` counted since it started, as one text line
//! (`connections=12 tls_failed=0 … requests=3400`) that it writes to
//! whoever connects to its `--stats` Unix socket. The benchmark reads it
//! before and after each run and keeps the difference
//! ([`UpstreamStats::since`]); the upstream lives across runs.
//!
//! The socket is a path, so the harness reaches it from any network
//! namespace, and answering it costs the upstream one small write off the
//! request path: requests only bump an atomic counter.

use std::fmt;

use anyhow::{Context, Result, bail};

/// Counters of one `rdt-upstream` (or a sum of several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// TLS handshakes that failed or that the client abandoned.
    pub tls_failed: u64,
    /// Completed full TLS handshakes, with or without a HelloRetryRequest.
    pub tls_full: u64,
    /// Of `tls_full`, those that needed a HelloRetryRequest.
    pub tls_hello_retry: u64,
    /// Completed resumed TLS handshakes (a ticket or session ID accepted).
    pub tls_resumed: u64,
    /// Full handshakes counted again when their connection's first request
    /// arrives: the connections that carried traffic. A health check that
    /// only handshakes and leaves is in `tls_full`, not here.
    pub tls_full_used: u64,
    /// Resumed handshakes counted again at their connection's first request.
    pub tls_resumed_used: u64,
    /// HTTP requests answered.
    pub requests: u64,
}

const FIELDS: usize = 8;

impl UpstreamStats {
    fn fields(&self) -> [(&'static str, u64); FIELDS] {
        [
            ("connections", self.connections),
            ("tls_failed", self.tls_failed),
            ("tls_full", self.tls_full),
            ("tls_hello_retry", self.tls_hello_retry),
            ("tls_resumed", self.tls_resumed),
            ("tls_full_used", self.tls_full_used),
            ("tls_resumed_used", self.tls_resumed_used),
            ("requests", self.requests),
        ]
    }

    fn field_mut(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "connections" => &mut self.connections,
            "tls_failed" => &mut self.tls_failed,
            "tls_full" => &mut self.tls_full,
            "tls_hello_retry" => &mut self.tls_hello_retry,
            "tls_resumed" => &mut self.tls_resumed,
            "tls_full_used" => &mut self.tls_full_used,
            "tls_resumed_used" => &mut self.tls_resumed_used,
            "requests" => &mut self.requests,
            _ => return None,
        })
    }

    fn combine(&self, other: &UpstreamStats, f: impl Fn(u64, u64) -> u64) -> UpstreamStats {
        let mut out = UpstreamStats::default();
        for ((name, a), (_, b)) in self.fields().into_iter().zip(other.fields()) {
            if let Some(slot) = out.field_mut(name) {
                *slot = f(a, b);
            }
        }
        out
    }

    /// What was counted between `earlier` and `self`, field by field (0
    /// where a counter went back: the upstream was restarted).
    pub fn since(&self, earlier: &UpstreamStats) -> UpstreamStats {
        self.combine(earlier, u64::saturating_sub)
    }

    /// Field by field sum, e.g. over every HTTPS upstream.
    pub fn plus(&self, other: &UpstreamStats) -> UpstreamStats {
        self.combine(other, u64::saturating_add)
    }

    /// Parses the line [`fmt::Display`] writes: every field once, in any
    /// order, nothing else.
    pub fn parse(line: &str) -> Result<UpstreamStats> {
        let mut stats = UpstreamStats::default();
        let mut seen = Vec::new();
        for pair in line.split_whitespace() {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("{pair:?} is not name=value in {line:?}"))?;
            let slot = stats
                .field_mut(name)
                .with_context(|| format!("unknown counter {name:?} in {line:?}"))?;
            *slot = value
                .parse()
                .with_context(|| format!("counter {name}={value:?} in {line:?}"))?;
            if seen.contains(&name) {
                bail!("counter {name} twice in {line:?}");
            }
            seen.push(name);
        }
        if seen.len() != FIELDS {
            bail!("expected {FIELDS} counters, got {} in {line:?}", seen.len());
        }
        Ok(stats)
    }
}

impl fmt::Display for UpstreamStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.fields().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(base: u64) -> UpstreamStats {
        UpstreamStats {
            connections: base + 1,
            tls_failed: base + 2,
            tls_full: base + 3,
            tls_hello_retry: base + 4,
            tls_resumed: base + 5,
            tls_full_used: base + 6,
            tls_resumed_used: base + 7,
            requests: base + 8,
        }
    }

    #[test]
    fn the_line_round_trips() {
        let s = sample(10);
        let line = s.to_string();
        assert_eq!(
            line,
            "connections=11 tls_failed=12 tls_full=13 tls_hello_retry=14 tls_resumed=15 \
             tls_full_used=16 tls_resumed_used=17 requests=18"
        );
        assert_eq!(UpstreamStats::parse(&line).unwrap(), s);
        assert_eq!(UpstreamStats::parse(&format!("{line}\n")).unwrap(), s);
        let reordered: Vec<&str> = line.split(' ').rev().collect();
        assert_eq!(UpstreamStats::parse(&reordered.join(" ")).unwrap(), s);
    }

    #[test]
    fn bad_lines_are_refused() {
        let line = sample(0).to_string();
        for bad in [
            String::new(),
            line.replace("requests=8", ""),
            line.replace("requests=8", "requests=8 requests=8"),
            line.replace("requests=8", "requests=x"),
            line.replace("requests=8", "requests"),
            format!("{line} extra=1"),
        ] {
            assert!(UpstreamStats::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn differences_and_sums() {
        assert_eq!(sample(100).since(&sample(0)), {
            let mut d = UpstreamStats::default();
            for name in sample(0).fields().map(|(n, _)| n) {
                *d.field_mut(name).unwrap() = 100;
            }
            d
        });
        // A restart resets the counters: nothing is counted, not a wrap.
        assert_eq!(sample(0).since(&sample(100)), UpstreamStats::default());
        let sum = sample(0).plus(&sample(10));
        assert_eq!(sum.connections, 1 + 11);
        assert_eq!(sum.requests, 8 + 18);
        assert_eq!(sum.tls_resumed_used, 7 + 17);
    }
}
