//! Waiting for something to be ready rather than for a fixed time: poll a
//! readiness signal (a line in a log, an HTTP answer, an answer from the
//! primary, the datapath a connect takes) until it holds, within one
//! generous deadline, and say what was awaited and what was last seen if
//! it never holds. A loaded machine (a concurrent build, the kernel still
//! tearing down a test suite's namespaces) makes everything slower, and
//! then a fixed sleep or a short timeout loses the race.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// How long anything the bench starts may take to be ready: far more than
/// it takes on an idle machine (well under a second for most, a few
/// seconds for Envoy or a daemon resolving its endpoints).
pub(crate) const READY: Duration = Duration::from_secs(60);

/// One look at the signal.
pub(crate) enum Seen<T> {
    /// Ready, with what the caller wanted to know.
    Ready(T),
    /// Not yet: what was seen instead, for the error.
    Not(String),
}

/// Looks at `check` every `every` until it is [`Seen::Ready`]; fails
/// after `within` with `waiting_for` and the last thing seen.
pub(crate) fn until<T>(
    waiting_for: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Seen<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let last = match check()? {
            Seen::Ready(value) => return Ok(value),
            Seen::Not(last) => last,
        };
        if start.elapsed() >= within {
            bail!("still waiting for {waiting_for} after {within:?}; last seen: {last}");
        }
        thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_a_few_looks() {
        let mut looks = 0;
        let got = until("the third look", READY, Duration::ZERO, || {
            looks += 1;
            Ok(if looks == 3 {
                Seen::Ready(looks)
            } else {
                Seen::Not(format!("look {looks}"))
            })
        })
        .unwrap();
        assert_eq!(got, 3);
    }

    #[test]
    fn never_ready_says_what_it_waited_for_and_saw() {
        let err = until::<()>(
            "east to answer",
            Duration::from_millis(30),
            Duration::from_millis(10),
            || Ok(Seen::Not("503 from east".into())),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "still waiting for east to answer after 30ms; last seen: 503 from east"
        );
    }

    #[test]
    fn an_error_ends_the_wait() {
        let err = until::<()>("nothing", READY, Duration::ZERO, || bail!("gone")).unwrap_err();
        assert_eq!(err.to_string(), "gone");
    }
}
