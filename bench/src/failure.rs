//! How a failed run ends: with its reason as the last lines of output, so
//! whoever reads the end of a long log (`cargo xtask test` keeps the last
//! lines of each step) sees what failed and why.
//!
//! An error's chain is printed one cause per line, outermost first (the
//! step, the cell, the system), the root cause last. A cause of several
//! lines carries a log (the system's, a peer's, a child's stderr): its
//! first line says what it is about and stays in the chain; the rest, cut
//! to its last lines, is printed above the chain under that first line. A
//! panic is caught once the bed is torn down (its drops may print logs of
//! their own) and reported the same way.

use std::{
    panic,
    sync::{Mutex, PoisonError},
    thread,
};

/// How much of each log is shown (its end).
const LOG_LINES: usize = 30;
const WHO: &str = "redirector-bench";

/// The main thread's panic, as its hook saw it.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Keeps the main thread's panic message for [`report_panic`], after the
/// default hook printed it where it happened.
pub(crate) fn keep_panics() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        default(info);
        if thread::current().name() == Some("main") {
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            *PANIC.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(format!("panicked{at}: {payload}"));
        }
    }));
}

/// Prints the failure `err`: logs first, then the chain, root cause last.
pub(crate) fn report(err: &anyhow::Error) {
    let causes: Vec<String> = err.chain().map(std::string::ToString::to_string).collect();
    print(&causes);
}

/// Prints the main thread's panic, kept by [`keep_panics`].
pub(crate) fn report_panic() {
    let message = PANIC
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_else(|| "panicked".into());
    print(&[message]);
}

fn print(causes: &[String]) {
    eprint!("{}", render(causes));
}

/// The logs carried by `causes` (outermost first), then one line per cause.
fn render(causes: &[String]) -> String {
    let mut out = String::new();
    for cause in causes {
        if let Some((first, rest)) = cause.split_once('\n')
            && !rest.trim().is_empty()
        {
            out += &format!("{WHO}: ---- {first} ----\n");
            let lines: Vec<&str> = rest.trim_end().lines().collect();
            let skipped = lines.len().saturating_sub(LOG_LINES);
            if skipped > 0 {
                out += &format!("  | ({skipped} earlier lines)\n");
            }
            for line in &lines[skipped..] {
                out += &format!("  | {line}\n");
            }
        }
    }
    let first_line = |s: &str| s.lines().next().unwrap_or_default().to_owned();
    if let Some((outer, inner)) = causes.split_first() {
        out += &format!("{WHO}: FAILED: {}\n", first_line(outer));
        for cause in inner {
            out += &format!("{WHO}:   because: {}\n", first_line(cause));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, anyhow};

    use super::*;

    fn rendered(err: &anyhow::Error) -> String {
        render(
            &err.chain()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn the_chain_comes_last_and_logs_above_it() {
        let log: String = (1..=40).map(|i| format!("log line {i}\n")).collect();
        let err = Err::<(), _>(anyhow!("connection refused"))
            .context("oha against http://240.240.0.10:80/")
            .with_context(|| format!("rep 0 of keep-alive/plain/open-1000rps through envoy\n{log}"))
            .unwrap_err();
        let text = rendered(&err);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[lines.len() - 3..],
            [
                "redirector-bench: FAILED: rep 0 of keep-alive/plain/open-1000rps through envoy",
                "redirector-bench:   because: oha against http://240.240.0.10:80/",
                "redirector-bench:   because: connection refused",
            ]
        );
        assert_eq!(
            lines[0],
            "redirector-bench: ---- rep 0 of keep-alive/plain/open-1000rps through envoy ----"
        );
        assert_eq!(lines[1], "  | (10 earlier lines)");
        assert_eq!(lines[2], "  | log line 11");
        assert_eq!(lines[31], "  | log line 40");
        assert_eq!(lines.len(), 35);
    }

    #[test]
    fn a_one_line_error_is_one_line() {
        assert_eq!(
            rendered(&anyhow!("unknown system \"nope\"")),
            "redirector-bench: FAILED: unknown system \"nope\"\n"
        );
    }
}
