//! How figures are written, the same in the markdown, the targets and the
//! plot.

/// `x` with 3 significant digits (integers from 100 up).
pub(crate) fn sig3(x: f64) -> String {
    fn decimals(x: f64) -> usize {
        if x == 0.0 || !x.is_finite() {
            return 0;
        }
        let mag = x.abs().log10().floor() as i32;
        usize::try_from(2 - mag).unwrap_or(0)
    }
    if !x.is_finite() {
        return "n/a".into();
    }
    let d = decimals(x);
    let s = format!("{x:.d$}");
    // 9.996 prints as "10.00": re-round at the new magnitude.
    match s.parse::<f64>() {
        Ok(r) if decimals(r) < d => {
            let d = decimals(r);
            format!("{r:.d$}")
        }
        _ => s,
    }
}

/// Milliseconds, 3 significant digits.
pub(crate) fn ms(x: f64) -> String {
    format!("{} ms", sig3(x))
}

/// KiB as MiB, one decimal.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
