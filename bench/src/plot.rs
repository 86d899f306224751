//! The results plot: for the keep-alive, open-loop workloads at their
//! highest rate (plain, and TLS when it was run), latency percentiles and
//! CPU per 1000 rps per system, as grouped bars with min–max whiskers.
//!
//! Drawn with `plotters`' SVG backend only: SVG text is left to the viewer
//! to render, so no font or image system libraries are needed to build or
//! run the benchmark, and the file diffs as text in git. Latency uses a
//! log scale because p99.9 is often ten times p50 and a linear axis would
//! flatten the p50 bars. System names are drawn by hand under each group
//! rather than as axis ticks, so each sits exactly under its bars.
//! Font sizes are given about 1.24 times the pixel size wanted, since
//! plotters scales text down by that factor.

use std::path::Path;

use anyhow::Result;
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{
    format::sig3,
    model::{BenchReport, Conn, SystemId, Upstream, Workload},
    summary::{Aggregate, Stat, aggregate, open_rps},
};

const WIDTH: u32 = 1100;
const TITLE_H: u32 = 64;
const LATENCY_H: u32 = 380;
const CPU_H: u32 = 280;
const NOTE_H: u32 = 44;
const FONT: &str = "sans-serif";

const P_COLORS: [RGBColor; 3] = [
    RGBColor(158, 202, 225),
    RGBColor(66, 146, 198),
    RGBColor(8, 69, 148),
];
const REDIRECTOR: RGBColor = RGBColor(230, 85, 13);
const BASELINE: RGBColor = RGBColor(140, 45, 4);
const FAST_PATH: RGBColor = RGBColor(253, 141, 60);
const POD: RGBColor = RGBColor(217, 72, 1);
const OTHER: RGBColor = RGBColor(140, 140, 140);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The workloads plotted: keep-alive, open loop, highest rate, for plain
/// then TLS, among those with numbers.
pub(crate) fn chosen(aggs: &[Aggregate]) -> Vec<Workload> {
    [Upstream::Plain, Upstream::Tls]
        .into_iter()
        .filter_map(|up| {
            aggs.iter()
                .map(|a| a.workload)
                .filter(|w| w.conn == Conn::KeepAlive && w.upstream == up)
                .filter_map(|w| open_rps(&w).map(|r| (r, w)))
                .max_by_key(|(r, _)| *r)
                .map(|(_, w)| w)
        })
        .collect()
}

/// Writes the plot of `report` to `path` as SVG.
pub(crate) fn svg(report: &BenchReport, path: &Path) -> Result<()> {
    let aggs = aggregate(report);
    let workloads = chosen(&aggs);
    let body_h = if workloads.is_empty() {
        60
    } else {
        (LATENCY_H + CPU_H + NOTE_H) * u32::try_from(workloads.len()).unwrap_or(2)
    };
    let root = SVGBackend::new(path, (WIDTH, TITLE_H + body_h)).into_drawing_area();
    root.fill(&WHITE)?;
    let m = &report.machine;
    let title = format!(
        "redirector benchmark{}",
        if m.date.is_empty() {
            String::new()
        } else {
            format!(", {}", m.date)
        }
    );
    root.draw(&Text::new(title, (16, 12), (FONT, 28).into_font()))?;
    let sub = format!(
        "{}, {} vCPU, kernel {}; medians of the repetitions used, whiskers min–max",
        if m.cpu_model.is_empty() {
            "unknown CPU"
        } else {
            &m.cpu_model
        },
        m.cpus,
        if m.kernel.is_empty() { "?" } else { &m.kernel },
    );
    root.draw(&Text::new(sub, (16, 40), text(17, &RGBColor(80, 80, 80))))?;
    let (_, body) = root.split_vertically(TITLE_H);
    if workloads.is_empty() {
        body.draw(&Text::new(
            "no keep-alive open-loop workload in this run: nothing to plot",
            (16, 20),
            (FONT, 19).into_font(),
        ))?;
    }
    let mut rest = body;
    for w in workloads {
        let (block, below) = rest.split_vertically(LATENCY_H + CPU_H + NOTE_H);
        rest = below;
        let (lat, lower) = block.split_vertically(LATENCY_H);
        let (cpu, note) = lower.split_vertically(CPU_H);
        let rows: Vec<&Aggregate> = SystemId::ALL
            .iter()
            .filter_map(|s| aggs.iter().find(|a| a.workload == w && a.system == *s))
            .collect();
        latency_panel(&root, &lat, w, &rows)?;
        let cpu_rows: Vec<&Aggregate> = rows
            .iter()
            .copied()
            .filter(|a| a.cpu_per_krps.is_some())
            .collect();
        cpu_panel(&root, &cpu, w, &cpu_rows)?;
        notes(report, &note, w, &rows, &cpu_rows)?;
    }
    root.present()?;
    Ok(())
}

fn text(size: u32, color: &RGBColor) -> TextStyle<'static> {
    (FONT, size).into_font().color(color)
}

/// Style of a value label: centred, its bottom at the anchor (drawn a few
/// pixels above the whisker, see `LABEL_LIFT`).
fn label_style(size: u32) -> TextStyle<'static> {
    text(size, &BLACK).pos(Pos::new(HPos::Center, VPos::Bottom))
}

const LABEL_LIFT: (i32, i32) = (0, -3);

/// The largest 1-2-5 value ≤ `x` (above: the smallest ≥ `x`), so the
/// axis ends on a labelled value.
fn nice(x: f64, above: bool) -> f64 {
    let decade = 10f64.powf(x.log10().floor());
    let m = x / decade;
    let steps = [1.0, 2.0, 5.0, 10.0];
    let pick = if above {
        steps.iter().find(|s| **s >= m * (1.0 - 1e-9))
    } else {
        steps.iter().rev().find(|s| **s <= m * (1.0 + 1e-9))
    };
    decade * pick.copied().unwrap_or(1.0)
}

/// The system names under the groups, in backend (root) coordinates.
fn x_names(root: &Area, at: impl Iterator<Item = ((i32, i32), SystemId)>) -> Result<()> {
    for ((x, y), s) in at {
        let color = match s {
            SystemId::Redirector => REDIRECTOR,
            SystemId::RedirectorBaseline => BASELINE,
            SystemId::RedirectorFastPath => FAST_PATH,
            SystemId::RedirectorPod => POD,
            _ => BLACK,
        };
        root.draw(&Text::new(
            s.key(),
            (x, y + 8),
            text(17, &color).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    Ok(())
}

fn whisker(x: f64, s: &Stat, half: f64) -> PathElement<(f64, f64)> {
    PathElement::new(
        vec![
            (x - half, s.min),
            (x + half, s.min),
            (x, s.min),
            (x, s.max),
            (x - half, s.max),
            (x + half, s.max),
        ],
        BLACK.stroke_width(1),
    )
}

fn latency_panel(root: &Area, area: &Area, w: Workload, rows: &[&Aggregate]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let stats = |a: &Aggregate| [a.p50_ms, a.p99_ms, a.p999_ms];
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let lo_v = rows
        .iter()
        .flat_map(|a| stats(a).map(|s| s.min))
        .filter(|x| positive(*x))
        .fold(f64::INFINITY, f64::min);
    let hi_v = rows
        .iter()
        .flat_map(|a| stats(a).map(|s| s.max))
        .filter(|x| positive(*x))
        .fold(0.0, f64::max);
    let (lo, hi) = if lo_v.is_finite() && hi_v > 0.0 {
        // Room below the shortest bar and above the tallest label.
        (nice(lo_v / 1.3, false), nice(hi_v * 2.5, true))
    } else {
        (0.01, 10.0)
    };
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{w}: client latency, ms (log scale)"),
            (FONT, 21).into_font(),
        )
        .margin_left(16)
        .margin_right(24)
        .margin_top(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..n - 0.5, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(12)
        .y_label_formatter(&|v| sig3(*v))
        .y_desc("ms")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    let bar = 0.8 / 3.0;
    for (j, (name, color)) in ["p50", "p99", "p99.9"]
        .into_iter()
        .zip(P_COLORS)
        .enumerate()
    {
        let bars = rows.iter().enumerate().map(move |(i, a)| {
            let x0 = i as f64 - 0.4 + bar * j as f64;
            let top = stats(a)[j].median.max(lo);
            Rectangle::new([(x0 + 0.01, lo), (x0 + bar - 0.01, top)], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    for (i, a) in rows.iter().enumerate() {
        for (j, s) in stats(a).iter().enumerate() {
            let xc = i as f64 - 0.4 + bar * (j as f64 + 0.5);
            let clamp = |x: f64| x.max(lo);
            let s = Stat {
                median: clamp(s.median),
                min: clamp(s.min),
                max: clamp(s.max),
            };
            if s.min < s.max {
                chart.draw_series(std::iter::once(whisker(xc, &s, bar / 6.0)))?;
            }
            chart.draw_series(std::iter::once(
                EmptyElement::at((xc, s.max))
                    + Text::new(sig3(s.median), LABEL_LIFT, label_style(13)),
            ))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    x_names(
        root,
        rows.iter()
            .enumerate()
            .map(|(i, a)| (chart.backend_coord(&(i as f64, lo)), a.system)),
    )
}

fn cpu_panel(root: &Area, area: &Area, w: Workload, rows: &[&Aggregate]) -> Result<()> {
    let caption = format!("{w}: CPU of the system under test, vCPU per 1000 rps");
    if rows.is_empty() {
        area.draw(&Text::new(
            format!("{caption}: no system with a process of its own ran"),
            (16, 16),
            (FONT, 19).into_font(),
        ))?;
        return Ok(());
    }
    let cpu = |a: &Aggregate| {
        a.cpu_per_krps.unwrap_or(Stat {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        })
    };
    let hi = rows.iter().map(|a| cpu(a).max).fold(0.0, f64::max);
    let hi = if hi > 0.0 { hi * 1.25 } else { 1.0 };
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 21).into_font())
        .margin_left(16)
        .margin_right(24)
        .margin_top(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.3}"))
        .y_desc("vCPU / 1000 rps")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, a) in rows.iter().enumerate() {
        let s = cpu(a);
        let x = i as f64;
        let color = match a.system {
            SystemId::Redirector => REDIRECTOR,
            SystemId::RedirectorBaseline => BASELINE,
            SystemId::RedirectorFastPath => FAST_PATH,
            SystemId::RedirectorPod => POD,
            _ => OTHER,
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x - 0.25, 0.0), (x + 0.25, s.median)],
            color.filled(),
        )))?;
        if s.min < s.max {
            chart.draw_series(std::iter::once(whisker(x, &s, 0.06)))?;
        }
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, s.max))
                + Text::new(format!("{:.3}", s.median), LABEL_LIFT, label_style(14)),
        ))?;
    }
    x_names(
        root,
        rows.iter()
            .enumerate()
            .map(|(i, a)| (chart.backend_coord(&(i as f64, 0.0)), a.system)),
    )
}

/// Which systems are missing from the panels, and why.
fn notes(
    report: &BenchReport,
    area: &Area,
    w: Workload,
    rows: &[&Aggregate],
    cpu_rows: &[&Aggregate],
) -> Result<()> {
    let mut lines = Vec::new();
    let missing: Vec<String> = report
        .not_available
        .iter()
        .filter(|n| n.workload == w && !rows.iter().any(|a| a.system == n.system))
        .map(|n| format!("{} ({})", n.system, shorten(&n.reason, 70)))
        .collect();
    if !missing.is_empty() {
        lines.push(format!("Not available, omitted: {}.", missing.join("; ")));
    }
    let no_cpu: Vec<&str> = rows
        .iter()
        .filter(|a| !cpu_rows.iter().any(|c| c.system == a.system))
        .map(|a| a.system.key())
        .collect();
    if !no_cpu.is_empty() {
        lines.push(format!(
            "No CPU bar for {}: no process of its own to measure.",
            no_cpu.join(", ")
        ));
    }
    for (i, line) in lines.iter().enumerate() {
        let y = 4 + 18 * i32::try_from(i).unwrap_or(0);
        area.draw(&Text::new(
            line.as_str(),
            (24, y),
            text(16, &RGBColor(90, 90, 90)),
        ))?;
    }
    Ok(())
}

fn shorten(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::fixture::{KA_PLAIN, KA_TLS, SYSTEMS, synthetic};

    fn render(report: &BenchReport, name: &str) -> String {
        let path =
            std::env::temp_dir().join(format!("xtask-plot-{}-{name}.svg", std::process::id()));
        svg(report, &path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        if std::env::var_os("XTASK_KEEP_PLOT").is_none() {
            let _ = fs::remove_file(&path);
        } else {
            eprintln!("plot kept at {}", path.display());
        }
        text
    }

    #[test]
    fn plots_both_keep_alive_workloads() {
        let r = synthetic();
        assert_eq!(chosen(&aggregate(&r)), [KA_PLAIN, KA_TLS]);
        let text = render(&r, "synthetic");
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::trim))
            .collect();
        for s in SYSTEMS {
            // Latency panels for both workloads; CPU panels only for proxies.
            let want = if s.is_proxy() { 4 } else { 2 };
            assert_eq!(texts.iter().filter(|t| **t == s.key()).count(), want, "{s}");
        }
        assert!(
            texts
                .iter()
                .any(|t| t.contains("keep-alive/plain/open-1000rps: client latency"))
        );
        assert!(
            texts
                .iter()
                .any(|t| t.contains("keep-alive/tls/open-1000rps: CPU"))
        );
        assert!(texts.iter().any(|t| t.contains(
            "Not available, omitted: redirector-fast-path (the kernel fast path is not built yet)."
        )));
        assert!(texts.contains(&"p99.9"));
        // The redirector's p50 median label, from repetitions 0..=3.
        assert!(texts.contains(&"0.139"));
    }

    #[test]
    fn picks_the_highest_open_loop_rate() {
        let mut r = synthetic();
        let mut more = r.cells.clone();
        for c in &mut more {
            c.workload.load = crate::model::Load::OpenLoop { rps: 5000 };
        }
        r.cells.extend(more);
        let ws = chosen(&aggregate(&r));
        assert_eq!(ws.len(), 2);
        assert!(ws.iter().all(|w| open_rps(w) == Some(5000)));
    }

    #[test]
    fn axis_ends_are_1_2_5_values() {
        assert_eq!(nice(0.06, false), 0.05);
        assert_eq!(nice(0.06, true), 0.1);
        assert_eq!(nice(3.5, true), 5.0);
        assert_eq!(nice(2.0, false), 2.0);
        assert_eq!(nice(2.0, true), 2.0);
        assert_eq!(nice(0.9, false), 0.5);
    }

    /// Every system present, for a look at the most crowded plot
    /// (`XTASK_KEEP_PLOT=1` keeps it).
    #[test]
    fn plots_all_seven_systems() {
        let mut r = synthetic();
        r.not_available.clear();
        let extra: Vec<_> = r
            .cells
            .iter()
            .filter(|c| c.system == SystemId::Nginx)
            .flat_map(|c| {
                let mut h = c.clone();
                h.system = SystemId::Haproxy;
                h.load.p999_ms *= 8.0;
                let mut f = c.clone();
                f.system = SystemId::RedirectorFastPath;
                f.load.p50_ms *= 0.6;
                f.load.p99_ms *= 0.6;
                [h, f]
            })
            .collect();
        r.cells.extend(extra);
        let text = render(&r, "all");
        roxmltree::Document::parse(&text).unwrap();
        assert!(!text.contains("Not available"));
    }

    #[test]
    fn plots_the_baseline_beside_the_redirector() {
        let r = crate::fixture::with_baseline(synthetic(), 1.25);
        let text = render(&r, "baseline");
        let doc = roxmltree::Document::parse(&text).unwrap();
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::trim))
            .collect();
        // Latency and CPU panels of both workloads.
        assert_eq!(
            texts
                .iter()
                .filter(|t| **t == "redirector-baseline")
                .count(),
            4
        );
        // Its p50 median label: the redirector's 0.139 × 1.25.
        assert!(texts.contains(&"0.174"), "{texts:?}");
    }

    #[test]
    fn empty_report_still_plots() {
        let text = render(&BenchReport::default(), "empty");
        roxmltree::Document::parse(&text).unwrap();
        assert!(text.contains("nothing to plot"));
    }
}
