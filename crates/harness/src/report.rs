//! The benchmark report of `make bench`: the data model of one run and its renderings.
//!
//! A [`Report`] is written as `report.json` (the machine-readable record) and `report.html` (a
//! self-contained page with inline CSS and SVG charts, see [`render_html`]) by [`write`];
//! [`print_summary`] prints a compact table of the key figures to stdout and [`screenshot`]
//! renders the page to a PNG with headless Chromium.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

/// Everything measured in one benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When the run started, RFC 3339.
    pub started_at: String,
    /// How the run was configured.
    pub config: RunConfig,
    /// Durability settings of the stores in effect during the run (e.g. `synchronous_commit`).
    pub durability: Vec<Setting>,
    /// Order counts and rates over the measured window.
    pub totals: Totals,
    /// End-to-end `PlaceOrder` latency (open loop: measured from the scheduled send time).
    pub latency: Percentiles,
    /// Latency of each saga step, e.g. "create", "reserve", "assign", "persist", "release", "saga".
    pub steps: Vec<StepLatency>,
    /// One entry per second of the measured run.
    pub timeline: Vec<Interval>,
    /// The raw reservation-claim ceiling the saga throughput is compared with, if measured.
    pub ceiling: Option<Ceiling>,
    /// CPU and memory used by each service during the measured window.
    pub services: Vec<ServiceUsage>,
    /// Throughput of the first versus the last minute, if the run was long enough.
    pub decay: Option<Decay>,
    /// The result of the post-run invariant check.
    pub invariants: Invariants,
}

/// One named setting, e.g. `("synchronous_commit", "on")`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setting {
    /// Name of the setting.
    pub name: String,
    /// Its value as reported by the store.
    pub value: String,
}

/// The configuration of a benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// Storage backend, e.g. "postgres" or "sqlite".
    pub backend: String,
    /// Name of the workload.
    pub workload: String,
    /// Number of foods in the catalogue.
    pub foods: u32,
    /// Number of delivery zones.
    pub zones: u32,
    /// Load model: "closed" or "open".
    pub mode: String,
    /// Number of concurrent clients (closed loop) or maximum in flight (open loop).
    pub clients: u32,
    /// Target arrival rate in orders per second (open loop only).
    pub rate: Option<f64>,
    /// Warm-up before measuring, seconds.
    pub warmup_s: f64,
    /// Length of the measured window, seconds.
    pub duration_s: f64,
    /// What was benchmarked: "own cluster (release binaries)" or a URL.
    pub target: String,
}

/// Order counts and rates over the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    /// Orders placed.
    pub placed: u64,
    /// Orders completed but not placed (e.g. out of stock, no courier).
    pub not_placed: u64,
    /// Retries after a "busy" answer.
    pub busy_retries: u64,
    /// Requests that failed with an error.
    pub errors: u64,
    /// Completed orders (placed + not placed) per second.
    pub orders_per_s: f64,
    /// Placed orders per second.
    pub placed_per_s: f64,
}

/// Summary of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl Percentiles {
    /// Summarizes a histogram of MICROsecond samples in milliseconds; an empty histogram gives
    /// all zeros.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency of one saga step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLatency {
    /// Step name, e.g. "reserve".
    pub name: String,
    /// Its latency distribution.
    pub latency: Percentiles,
}

/// One interval (normally one second) of the measured run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interval {
    /// Seconds since the start of measurement at the END of the interval.
    pub t_s: f64,
    /// Orders placed in the interval.
    pub placed: u64,
    /// Orders completed but not placed in the interval.
    pub not_placed: u64,
    /// Busy retries in the interval.
    pub busy: u64,
    /// Median end-to-end latency in the interval, ms.
    pub p50_ms: f64,
    /// 99th percentile end-to-end latency in the interval, ms.
    pub p99_ms: f64,
    /// Maximum end-to-end latency in the interval, ms.
    pub max_ms: f64,
}

/// The throughput ceiling: raw reservation claims per second without the saga around them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ceiling {
    /// How the ceiling was measured.
    pub method: String,
    /// Concurrent clients used to measure it.
    pub clients: u32,
    /// Claims per second reached.
    pub claims_per_s: f64,
    /// Orders per second of the run divided by claims per second.
    pub ratio: f64,
}

/// Resource usage of one service during the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceUsage {
    /// Service name.
    pub name: String,
    /// CPU time used (user + system), seconds.
    pub cpu_s: f64,
    /// CPU time per completed order, milliseconds.
    pub cpu_ms_per_order: f64,
    /// Peak resident set size, MiB (0 when not measured, e.g. PostgreSQL's many backends).
    pub peak_rss_mib: f64,
}

/// A peak RSS cell: "n/a" when it was not measured.
fn fmt_rss(mib: f64) -> String {
    if mib > 0.0 {
        fmt_num(mib)
    } else {
        "n/a".to_owned()
    }
}

/// Throughput decay between the first and the last minute of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decay {
    /// Completed orders per second during the first minute.
    pub first_minute_per_s: f64,
    /// Completed orders per second during the last minute.
    pub last_minute_per_s: f64,
    /// Last divided by first.
    pub ratio: f64,
}

/// The result of the post-run invariant check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invariants {
    /// Whether the check ran at all.
    pub checked: bool,
    /// Violations found (empty if the invariants hold).
    pub violations: Vec<String>,
}

/// Creates `dir` and writes `report.json` (pretty-printed) and `report.html` into it; returns the
/// path of the HTML page.
pub fn write(dir: &Path, report: &Report) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join("report.json");
    let json = serde_json::to_string_pretty(report).context("serializing the report")?;
    std::fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = dir.join("report.html");
    let html = render_html(report)?;
    std::fs::write(&html_path, html).with_context(|| format!("writing {}", html_path.display()))?;
    Ok(html_path)
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An integer with thousands separators: `1234567` → `1,234,567`.
fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate or other measured quantity with a precision that suits its size.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    let a = v.abs();
    if a >= 1_000.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        format!("{sign}{}", fmt_int(a.round() as u64))
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A latency in milliseconds.
fn fmt_ms(v: f64) -> String {
    fmt_num(v)
}

/// A ratio, with two decimals.
fn fmt_ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "–".to_owned()
    }
}

/// Seconds, without a trailing ".0" for whole numbers.
fn fmt_secs(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0} s")
    } else {
        format!("{v:.1} s")
    }
}

/// The load model in words: "closed loop, 64 clients" or "open loop at 500 orders/s".
fn describe_load(c: &RunConfig) -> String {
    if c.mode == "open" {
        match c.rate {
            Some(r) => format!(
                "open loop at {} orders/s (up to {} in flight)",
                fmt_num(r),
                c.clients
            ),
            None => format!("open loop (up to {} in flight)", c.clients),
        }
    } else if c.mode == "closed" {
        format!(
            "closed loop, {} client{}",
            c.clients,
            if c.clients == 1 { "" } else { "s" }
        )
    } else {
        format!("{} loop, {} clients", c.mode, c.clients)
    }
}

// ---------------------------------------------------------------------------------------------
// Charts

const CHART_W: u32 = 1040;
const CHART_H: u32 = 340;
const FONT: &str = "sans-serif";
const C_BLUE: RGBColor = RGBColor(31, 119, 180);
const C_ORANGE: RGBColor = RGBColor(230, 126, 34);
const C_RED: RGBColor = RGBColor(200, 40, 40);
const C_GREY: RGBColor = RGBColor(140, 140, 140);
const C_AXIS: RGBColor = RGBColor(90, 90, 90);

/// Renders one chart into an SVG string.
fn svg_chart(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(buf)
}

/// The upper end of an axis that starts at zero: the largest value plus headroom, at least 1.
/// The result is rounded up to a "nice" number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k).
fn axis_top(max: f64, headroom: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let v = max * headroom;
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&t| t >= v)
        .unwrap_or(v)
}

/// A finite, non-negative value for plotting.
fn clean(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

/// One line of a time-series chart.
struct Line {
    label: &'static str,
    color: RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
}

/// How a legend entry is marked.
enum Mark {
    /// A short line in the series' style.
    Line(ShapeStyle),
    /// A filled square in the series' color.
    Box(RGBColor),
}

/// Height of the legend strip above each chart, px.
const LEGEND_H: u32 = 34;
/// Left and right space around the plotting area of each chart, px.
const MARGIN_L: u32 = 14;
const MARGIN_R: u32 = 28;
const Y_LABEL_W: u32 = 72;

/// Draws a one-row legend, right-aligned with the plotting area, into `area` (the strip above
/// the chart). Text widths are estimated, since SVG text is measured only by the browser.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    items: &[(&str, Mark)],
) -> anyhow::Result<()> {
    const MARK_W: i32 = 24;
    const GAP: i32 = 8;
    const SPACING: i32 = 26;
    let char_w = 7.0_f64;
    let widths: Vec<i32> = items
        .iter()
        .map(|(label, _)| MARK_W + GAP + (label.chars().count() as f64 * char_w).ceil() as i32)
        .collect();
    let total: i32 = widths.iter().sum::<i32>() + SPACING * (items.len() as i32 - 1).max(0);
    let (w, h) = area.dim_in_pixel();
    let right = w as i32 - MARGIN_R as i32;
    let left_min = (MARGIN_L + Y_LABEL_W) as i32;
    let mut x = (right - total).max(left_min);
    let y = h as i32 / 2 + 2;
    let text = TextStyle::from((FONT, 17).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for ((label, mark), width) in items.iter().zip(&widths) {
        match mark {
            Mark::Line(style) => {
                area.draw(&PathElement::new(vec![(x, y), (x + MARK_W, y)], *style))?;
            }
            Mark::Box(color) => {
                area.draw(&Rectangle::new(
                    [(x + 5, y - 7), (x + 19, y + 7)],
                    color.filled(),
                ))?;
            }
        }
        area.draw(&Text::new(
            label.to_string(),
            (x + MARK_W + GAP, y),
            text.clone(),
        ))?;
        x += width + SPACING;
    }
    Ok(())
}

/// An axis tick label: integers without decimals (with thousands separators), other values
/// with up to two decimals.
fn fmt_axis(v: f64) -> String {
    if !v.is_finite() {
        return String::new();
    }
    if (v - v.round()).abs() < 1e-9 {
        let r = v.round();
        if r < 0.0 {
            format!("-{}", fmt_int(-r as u64))
        } else {
            fmt_int(r as u64)
        }
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A line chart over the timeline: x = seconds since measurement start.
fn time_chart(lines: Vec<Line>, y_desc: &str, x_end: f64) -> anyhow::Result<String> {
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_top = axis_top(y_max, 1.08);
    let x_end = if x_end.is_finite() && x_end > 0.0 {
        x_end
    } else {
        1.0
    };
    svg_chart((CHART_W, CHART_H), |root| {
        let (legend, plot) = root.split_vertically(LEGEND_H);
        let items: Vec<(&str, Mark)> = lines
            .iter()
            .map(|l| {
                let style = ShapeStyle::from(&l.color).stroke_width(l.width.max(2));
                (l.label, Mark::Line(style))
            })
            .collect();
        draw_legend(&legend, &items)?;
        let mut chart = ChartBuilder::on(&plot)
            .margin_left(MARGIN_L)
            .margin_right(MARGIN_R)
            .margin_top(6)
            .margin_bottom(8)
            .x_label_area_size(50)
            .y_label_area_size(Y_LABEL_W)
            .build_cartesian_2d(0.0..x_end, 0.0..y_top)?;
        chart
            .configure_mesh()
            .max_light_lines(1)
            .light_line_style(RGBColor(242, 242, 242))
            .bold_line_style(RGBColor(220, 220, 220))
            .axis_style(C_AXIS)
            .x_desc("seconds since start of measurement")
            .y_desc(y_desc)
            .label_style((FONT, 16).into_font().color(&C_AXIS))
            .axis_desc_style((FONT, 17).into_font().color(&BLACK))
            .x_label_formatter(&|v| fmt_axis(*v))
            .y_label_formatter(&|v| fmt_axis(*v))
            .x_labels(13)
            .y_labels(7)
            .draw()?;
        for line in lines {
            let style = ShapeStyle::from(&line.color).stroke_width(line.width);
            chart.draw_series(LineSeries::new(line.points, style))?;
        }
        Ok(())
    })
}

/// The end of the x axis of the time charts.
fn timeline_end(report: &Report) -> f64 {
    report
        .timeline
        .iter()
        .map(|i| i.t_s)
        .filter(|t| t.is_finite())
        .fold(0.0_f64, f64::max)
}

/// Chart (a): placed and not-placed orders per second over time.
fn throughput_chart(report: &Report) -> anyhow::Result<String> {
    let mut prev = 0.0_f64;
    let mut placed = Vec::with_capacity(report.timeline.len());
    let mut not_placed = Vec::with_capacity(report.timeline.len());
    let mut busy = Vec::with_capacity(report.timeline.len());
    for i in &report.timeline {
        let dt = i.t_s - prev;
        let dt = if dt.is_finite() && dt > 0.0 { dt } else { 1.0 };
        prev = i.t_s;
        placed.push((i.t_s, i.placed as f64 / dt));
        not_placed.push((i.t_s, i.not_placed as f64 / dt));
        busy.push((i.t_s, i.busy as f64 / dt));
    }
    let mut lines = vec![
        Line {
            label: "placed / s",
            color: C_BLUE,
            width: 2,
            points: placed,
        },
        Line {
            label: "not placed / s",
            color: C_ORANGE,
            width: 2,
            points: not_placed,
        },
    ];
    if report.timeline.iter().any(|i| i.busy > 0) {
        lines.push(Line {
            label: "busy retries / s",
            color: C_GREY,
            width: 1,
            points: busy,
        });
    }
    time_chart(lines, "orders per second", timeline_end(report))
}

/// Chart (b): p50, p99 and max latency per interval.
fn latency_chart(report: &Report) -> anyhow::Result<String> {
    let series = |f: fn(&Interval) -> f64| -> Vec<(f64, f64)> {
        report
            .timeline
            .iter()
            .map(|i| (i.t_s, clean(f(i))))
            .collect()
    };
    let lines = vec![
        Line {
            label: "p50",
            color: C_BLUE,
            width: 2,
            points: series(|i| i.p50_ms),
        },
        Line {
            label: "p99",
            color: C_ORANGE,
            width: 2,
            points: series(|i| i.p99_ms),
        },
        Line {
            label: "max",
            color: C_RED,
            width: 1,
            points: series(|i| i.max_ms),
        },
    ];
    time_chart(lines, "latency (ms)", timeline_end(report))
}

/// The x axis of the step chart: `0..n` with one key point (and label) in the middle of each
/// step's slot.
struct StepAxis(usize);

impl Ranged for StepAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let n = self.0.max(1) as f64;
        limit.0 + ((limit.1 - limit.0) as f64 * value / n).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            // Only bold points: no light grid lines between the steps.
            return Vec::new();
        }
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.0.max(1) as f64
    }
}

/// One bar series of the step chart: legend label, color, offset of the bar within its step's
/// slot, and the percentile it shows.
type BarSeries = (&'static str, RGBColor, f64, fn(&Percentiles) -> f64);

/// Chart (c): p50 and p99 of each saga step as grouped bars.
fn steps_chart(report: &Report) -> anyhow::Result<String> {
    let names: Vec<String> = report.steps.iter().map(|s| s.name.clone()).collect();
    let y_max = report
        .steps
        .iter()
        .map(|s| clean(s.latency.p99_ms).max(clean(s.latency.p50_ms)))
        .fold(0.0_f64, f64::max);
    let y_top = axis_top(y_max, 1.12);
    let bars: [BarSeries; 2] = [
        ("p50", C_BLUE, 0.12, |p| p.p50_ms),
        ("p99", C_ORANGE, 0.52, |p| p.p99_ms),
    ];
    svg_chart((CHART_W, CHART_H), |root| {
        let (legend, plot) = root.split_vertically(LEGEND_H);
        let items: Vec<(&str, Mark)> = bars
            .iter()
            .map(|(label, color, _, _)| (*label, Mark::Box(*color)))
            .collect();
        draw_legend(&legend, &items)?;
        let mut chart = ChartBuilder::on(&plot)
            .margin_left(MARGIN_L)
            .margin_right(MARGIN_R)
            .margin_top(6)
            .margin_bottom(8)
            .x_label_area_size(50)
            .y_label_area_size(Y_LABEL_W)
            .build_cartesian_2d(StepAxis(names.len()), 0.0..y_top)?;
        let label_of = |v: &f64| -> String {
            let i = v.floor();
            if i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .light_line_style(RGBColor(242, 242, 242))
            .bold_line_style(RGBColor(220, 220, 220))
            .axis_style(C_AXIS)
            .x_desc("saga step")
            .y_desc("latency (ms)")
            .label_style((FONT, 16).into_font().color(&C_AXIS))
            .axis_desc_style((FONT, 17).into_font().color(&BLACK))
            .x_label_formatter(&label_of)
            .y_label_formatter(&|v| fmt_axis(*v))
            .y_labels(7)
            .draw()?;
        let value_style = TextStyle::from((FONT, 15).into_font())
            .color(&RGBColor(60, 60, 60))
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (_, color, offset, get) in bars {
            let rects = report.steps.iter().enumerate().map(move |(i, s)| {
                let x0 = i as f64 + offset;
                Rectangle::new(
                    [(x0, 0.0), (x0 + 0.36, clean(get(&s.latency)))],
                    color.filled(),
                )
            });
            chart.draw_series(rects)?;
            let values = report.steps.iter().enumerate().map(|(i, s)| {
                let v = clean(get(&s.latency));
                EmptyElement::at((i as f64 + offset + 0.18, v))
                    + Text::new(fmt_ms(v), (0, -3), value_style.clone())
            });
            chart.draw_series(values)?;
        }
        Ok(())
    })
}

/// A hand-drawn horizontal bar chart comparing the saga's orders/s with the claims/s ceiling.
fn ceiling_svg(orders_per_s: f64, ceiling: &Ceiling) -> String {
    const W: f64 = 760.0;
    const LABEL_W: f64 = 190.0;
    const BAR_MAX: f64 = 430.0;
    const BAR_H: f64 = 30.0;
    let orders = clean(orders_per_s);
    let claims = clean(ceiling.claims_per_s);
    let max = orders.max(claims);
    let scale = if max > 0.0 { BAR_MAX / max } else { 0.0 };
    let rows = [
        ("saga orders / s", orders, C_BLUE),
        ("ceiling claims / s", claims, C_GREY),
    ];
    let mut svg = String::new();
    let height = 24.0 + rows.len() as f64 * (BAR_H + 14.0) + 40.0;
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="system-ui, sans-serif" font-size="14">"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{LABEL_W}" y1="14" x2="{LABEL_W}" y2="{}" stroke="#999"/>"##,
        24.0 + rows.len() as f64 * (BAR_H + 14.0)
    );
    for (i, (label, value, color)) in rows.iter().enumerate() {
        let y = 20.0 + i as f64 * (BAR_H + 14.0);
        let w = (value * scale).max(if *value > 0.0 { 1.0 } else { 0.0 });
        let RGBColor(r, g, b) = *color;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end" dominant-baseline="middle" fill="#222">{}</text><rect x="{LABEL_W}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="rgb({r},{g},{b})"/><text x="{}" y="{}" dominant-baseline="middle" fill="#222" font-weight="600">{}</text>"##,
            LABEL_W - 10.0,
            y + BAR_H / 2.0,
            esc(label),
            LABEL_W + w + 8.0,
            y + BAR_H / 2.0,
            esc(&fmt_num(*value)),
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{LABEL_W}" y="{}" fill="#444">ratio orders/s ÷ claims/s = <tspan font-weight="600">{}</tspan> ({} % of the ceiling)</text></svg>"##,
        height - 14.0,
        esc(&fmt_ratio(ceiling.ratio)),
        esc(&fmt_num(ceiling.ratio * 100.0)),
    );
    svg
}

// ---------------------------------------------------------------------------------------------
// HTML

const STYLE: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #222; background: #f6f7f9; margin: 0; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 28px; margin: 0 0 2px; }
h2 { font-size: 19px; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e3e3; }
h3 { font-size: 15px; margin: 18px 0 6px; color: #444; }
.when { color: #666; font-size: 14px; margin: 0 0 12px; }
.config { font-size: 15px; margin: 0 0 8px; color: #333; }
.config b { font-weight: 600; }
.config > span { white-space: nowrap; }
.config .sep { color: #aaa; margin: 0 2px; }
table { border-collapse: collapse; font-size: 14px; margin: 4px 0 8px; }
th, td { border: 1px solid #dcdfe3; padding: 5px 10px; }
th { background: #f2f4f7; font-weight: 600; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.headline { width: 100%; }
table.headline th { text-align: center; font-size: 13px; white-space: nowrap; }
table.headline td { text-align: center; font-size: 17px; font-weight: 600; font-variant-numeric: tabular-nums; }
table.headline td.unit { font-weight: 400; }
.ok { display: inline-block; color: #fff; background: #2e8b57; padding: 3px 12px; border-radius: 4px; font-weight: 600; }
.bad { display: inline-block; color: #fff; background: #c62828; padding: 3px 12px; border-radius: 4px; font-weight: 600; }
.muted { color: #777; }
ul.violations { color: #b71c1c; margin: 8px 0; }
figure { margin: 6px 0 10px; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #666; margin-top: 2px; }
.note { font-size: 13px; color: #666; }
"#;

/// Appends a table with one header row and the given body rows; cells are already HTML.
/// Columns whose index is in `numeric` are right-aligned.
fn html_table(
    out: &mut String,
    class: &str,
    head: &[&str],
    rows: &[Vec<String>],
    numeric: &[usize],
) {
    let cls = |i: usize| {
        if numeric.contains(&i) {
            " class=\"num\""
        } else {
            ""
        }
    };
    if class.is_empty() {
        out.push_str("<table>\n<thead><tr>");
    } else {
        let _ = write!(out, "<table class=\"{}\">\n<thead><tr>", esc(class));
    }
    for (i, h) in head.iter().enumerate() {
        let _ = write!(out, "<th{}>{}</th>", cls(i), esc(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(out, "<td{}>{cell}</td>", cls(i));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// Renders the report as a self-contained HTML page (inline CSS and SVG, no external resources).
pub fn render_html(report: &Report) -> anyhow::Result<String> {
    let c = &report.config;
    let t = &report.totals;
    let l = &report.latency;
    let mut h = String::with_capacity(64 * 1024);

    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        h,
        "<title>order-saga bench — {}</title>",
        esc(&report.started_at)
    );
    let _ = writeln!(h, "<style>{STYLE}</style>\n</head>\n<body>\n<main>");

    // Title and configuration.
    h.push_str("<h1>order-saga bench</h1>\n");
    let _ = writeln!(
        h,
        "<p class=\"when\">started {}</p>",
        esc(&report.started_at)
    );
    let sep = " <span class=\"sep\">·</span> ";
    let _ = writeln!(
        h,
        "<p class=\"config\"><span>backend <b>{}</b></span>{sep}<span>workload <b>{}</b></span>{sep}<span><b>{}</b> foods × <b>{}</b> zones</span>{sep}<span><b>{}</b></span>{sep}<span>warm-up <b>{}</b>, measured <b>{}</b></span>{sep}<span>target <b>{}</b></span></p>",
        esc(&c.backend),
        esc(&c.workload),
        c.foods,
        c.zones,
        esc(&describe_load(c)),
        esc(&fmt_secs(c.warmup_s)),
        esc(&fmt_secs(c.duration_s)),
        esc(&c.target),
    );

    // Headline figures.
    h.push_str("<h2>Headline</h2>\n");
    let head = [
        "placed/s",
        "completed/s",
        "placed",
        "not placed",
        "busy retries",
        "errors",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    ];
    let row = vec![
        fmt_num(t.placed_per_s),
        fmt_num(t.orders_per_s),
        fmt_int(t.placed),
        fmt_int(t.not_placed),
        fmt_int(t.busy_retries),
        fmt_int(t.errors),
        fmt_ms(l.p50_ms),
        fmt_ms(l.p90_ms),
        fmt_ms(l.p99_ms),
        fmt_ms(l.p999_ms),
        fmt_ms(l.max_ms),
    ];
    html_table(&mut h, "headline", &head, &[row], &[]);
    let _ = writeln!(
        h,
        "<p class=\"note\">End-to-end PlaceOrder latency over {} requests{}; completed = placed + not placed.</p>",
        fmt_int(l.count),
        if c.mode == "open" {
            ", measured from the scheduled send time (open loop)"
        } else {
            ""
        }
    );

    // Durability.
    h.push_str("<h2>Durability settings</h2>\n");
    if report.durability.is_empty() {
        h.push_str("<p class=\"muted\">No durability settings were recorded.</p>\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .durability
            .iter()
            .map(|s| vec![esc(&s.name), format!("<code>{}</code>", esc(&s.value))])
            .collect();
        html_table(&mut h, "", &["setting", "value"], &rows, &[]);
    }

    // Invariants.
    h.push_str("<h2>Invariants</h2>\n");
    let inv = &report.invariants;
    if !inv.checked {
        h.push_str("<p><span class=\"muted\">not checked</span></p>\n");
    } else if inv.violations.is_empty() {
        h.push_str("<p><span class=\"ok\">hold</span> <span class=\"muted\">no violations found after the run</span></p>\n");
    } else {
        let _ = writeln!(
            h,
            "<p><span class=\"bad\">{} violation{}</span></p>\n<ul class=\"violations\">",
            inv.violations.len(),
            if inv.violations.len() == 1 { "" } else { "s" }
        );
        for v in &inv.violations {
            let _ = writeln!(h, "<li>{}</li>", esc(v));
        }
        h.push_str("</ul>\n");
    }

    // Ceiling.
    h.push_str("<h2>Ceiling</h2>\n");
    match &report.ceiling {
        None => h.push_str("<p class=\"muted\">No ceiling was measured in this run.</p>\n"),
        Some(ceil) => {
            let rows = vec![vec![
                esc(&ceil.method),
                ceil.clients.to_string(),
                fmt_num(ceil.claims_per_s),
                fmt_num(t.orders_per_s),
                fmt_ratio(ceil.ratio),
            ]];
            html_table(
                &mut h,
                "",
                &["method", "clients", "claims/s", "orders/s", "ratio"],
                &rows,
                &[1, 2, 3, 4],
            );
            let _ = writeln!(
                h,
                "<figure>{}<figcaption>Completed saga orders per second against the raw reservation-claim ceiling.</figcaption></figure>",
                ceiling_svg(t.orders_per_s, ceil)
            );
        }
    }

    // Timeline charts.
    h.push_str("<h2>Throughput over time</h2>\n");
    if report.timeline.is_empty() {
        h.push_str("<p class=\"muted\">The timeline is empty.</p>\n");
    }
    let _ = writeln!(
        h,
        "<figure>{}<figcaption>Orders completed per one-second interval of the measured run.</figcaption></figure>",
        throughput_chart(report)?
    );
    h.push_str("<h2>Latency over time</h2>\n");
    let _ = writeln!(
        h,
        "<figure>{}<figcaption>End-to-end PlaceOrder latency per interval: median, 99th percentile and maximum.</figcaption></figure>",
        latency_chart(report)?
    );

    // Steps.
    h.push_str("<h2>Saga steps</h2>\n");
    let _ = writeln!(
        h,
        "<figure>{}<figcaption>Median and 99th percentile latency of each saga step.</figcaption></figure>",
        steps_chart(report)?
    );
    if report.steps.is_empty() {
        h.push_str("<p class=\"muted\">No per-step latencies were recorded.</p>\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .steps
            .iter()
            .map(|s| {
                let p = &s.latency;
                vec![
                    esc(&s.name),
                    fmt_int(p.count),
                    fmt_ms(p.mean_ms),
                    fmt_ms(p.p50_ms),
                    fmt_ms(p.p90_ms),
                    fmt_ms(p.p99_ms),
                    fmt_ms(p.p999_ms),
                    fmt_ms(p.max_ms),
                ]
            })
            .collect();
        html_table(
            &mut h,
            "",
            &[
                "step", "count", "mean ms", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
            ],
            &rows,
            &[1, 2, 3, 4, 5, 6, 7],
        );
    }

    // Services.
    h.push_str("<h2>Services</h2>\n");
    if report.services.is_empty() {
        h.push_str("<p class=\"muted\">No service usage was recorded.</p>\n");
    } else {
        let mut rows: Vec<Vec<String>> = report
            .services
            .iter()
            .map(|s| {
                vec![
                    esc(&s.name),
                    fmt_num(s.cpu_s),
                    fmt_num(s.cpu_ms_per_order),
                    fmt_rss(s.peak_rss_mib),
                ]
            })
            .collect();
        if report.services.len() > 1 {
            let sum = |f: fn(&ServiceUsage) -> f64| report.services.iter().map(f).sum::<f64>();
            rows.push(
                [
                    "total".to_owned(),
                    fmt_num(sum(|s| s.cpu_s)),
                    fmt_num(sum(|s| s.cpu_ms_per_order)),
                    fmt_num(sum(|s| s.peak_rss_mib)),
                ]
                .into_iter()
                .map(|cell| format!("<strong>{cell}</strong>"))
                .collect(),
            );
        }
        html_table(
            &mut h,
            "",
            &["service", "CPU s", "CPU ms / order", "peak RSS MiB"],
            &rows,
            &[1, 2, 3],
        );
    }

    // Decay.
    if let Some(d) = &report.decay {
        h.push_str("<h2>Decay</h2>\n");
        let rows = vec![vec![
            fmt_num(d.first_minute_per_s),
            fmt_num(d.last_minute_per_s),
            fmt_ratio(d.ratio),
        ]];
        html_table(
            &mut h,
            "",
            &[
                "first minute orders/s",
                "last minute orders/s",
                "ratio last ÷ first",
            ],
            &rows,
            &[0, 1, 2],
        );
    }

    h.push_str("</main>\n</body>\n</html>\n");
    Ok(h)
}

// ---------------------------------------------------------------------------------------------
// Terminal summary

/// Prints a compact table of the key figures to stdout, suitable for pasting into a note.
pub fn print_summary(report: &Report) {
    println!("{}", summary_table(report));
}

/// Builds the table printed by [`print_summary`].
fn summary_table(report: &Report) -> comfy_table::Table {
    let t = &report.totals;
    let l = &report.latency;
    let c = &report.config;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec!["order-saga bench", report.started_at.as_str()]);
    let mut row = |k: &str, v: String| {
        table.add_row(vec![k.to_owned(), v]);
    };
    row(
        "run",
        format!(
            "{} · {} · {}×{} · {} · {} measured",
            c.backend,
            c.workload,
            c.foods,
            c.zones,
            describe_load(c),
            fmt_secs(c.duration_s)
        ),
    );
    row(
        "placed/s (completed/s)",
        format!("{} ({})", fmt_num(t.placed_per_s), fmt_num(t.orders_per_s)),
    );
    row(
        "placed / not placed / busy / errors",
        format!(
            "{} / {} / {} / {}",
            fmt_int(t.placed),
            fmt_int(t.not_placed),
            fmt_int(t.busy_retries),
            fmt_int(t.errors)
        ),
    );
    row(
        "latency p50 / p99 / max ms",
        format!(
            "{} / {} / {}",
            fmt_ms(l.p50_ms),
            fmt_ms(l.p99_ms),
            fmt_ms(l.max_ms)
        ),
    );
    match &report.ceiling {
        Some(ceil) => row(
            "ceiling claims/s (ratio)",
            format!("{} ({})", fmt_num(ceil.claims_per_s), fmt_ratio(ceil.ratio)),
        ),
        None => row("ceiling", "not measured".to_owned()),
    }
    for s in &report.services {
        row(
            &format!("{} CPU ms/order, RSS", s.name),
            format!(
                "{} ms ({} s), RSS {}",
                fmt_num(s.cpu_ms_per_order),
                fmt_num(s.cpu_s),
                match fmt_rss(s.peak_rss_mib).as_str() {
                    "n/a" => "n/a".to_owned(),
                    mib => format!("{mib} MiB"),
                }
            ),
        );
    }
    let inv = &report.invariants;
    row(
        "invariants",
        if !inv.checked {
            "not checked".to_owned()
        } else if inv.violations.is_empty() {
            "hold".to_owned()
        } else {
            format!("{} violation(s)", inv.violations.len())
        },
    );
    if let Some(d) = &report.decay {
        row(
            "decay first → last minute /s",
            format!(
                "{} → {} ({})",
                fmt_num(d.first_minute_per_s),
                fmt_num(d.last_minute_per_s),
                fmt_ratio(d.ratio)
            ),
        );
    }
    table
}

// ---------------------------------------------------------------------------------------------
// Screenshot

/// Finds the first of `names` that is an executable file on `PATH`.
fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Renders the HTML page `html` to the PNG `png` with headless Chromium (`chromium`,
/// `chromium-browser` or `google-chrome`, whichever is first found on `PATH`).
pub fn screenshot(html: &Path, png: &Path) -> anyhow::Result<()> {
    const BROWSERS: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];
    let Some(browser) = find_on_path(&BROWSERS) else {
        bail!(
            "no headless browser found: none of {} is on PATH (on Debian: apt-get install chromium)",
            BROWSERS.join(", ")
        );
    };
    let html_abs =
        std::fs::canonicalize(html).with_context(|| format!("resolving {}", html.display()))?;
    let png_abs = if png.is_absolute() {
        png.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(png)
    };
    if let Some(parent) = png_abs.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // A stale file would make the existence check below meaningless.
    if png_abs.exists() {
        std::fs::remove_file(&png_abs)
            .with_context(|| format!("removing old {}", png_abs.display()))?;
    }
    let output = std::process::Command::new(&browser)
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--hide-scrollbars")
        .arg("--window-size=1200,3000")
        .arg(format!("--screenshot={}", png_abs.display()))
        .arg(format!("file://{}", html_abs.display()))
        .output()
        .with_context(|| format!("running {}", browser.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            browser.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if !png_abs.is_file() {
        bail!(
            "{} exited successfully but wrote no screenshot to {}: {}",
            browser.display(),
            png_abs.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(p50: f64) -> Percentiles {
        Percentiles {
            count: 12_345,
            mean_ms: p50 * 1.2,
            p50_ms: p50,
            p90_ms: p50 * 2.1,
            p99_ms: p50 * 4.3,
            p999_ms: p50 * 8.0,
            max_ms: p50 * 15.0,
        }
    }

    pub(super) fn sample() -> Report {
        let timeline = (1..=60)
            .map(|s| {
                let wobble = ((s as f64) * 0.7).sin();
                let placed = (410.0 + 25.0 * wobble - if s > 45 { 30.0 } else { 0.0 }) as u64;
                Interval {
                    t_s: s as f64,
                    placed,
                    not_placed: 18 + (s % 7) as u64,
                    busy: if s % 10 == 0 { 12 } else { (s % 3) as u64 },
                    p50_ms: 14.0 + 2.0 * wobble,
                    p99_ms: 48.0 + 9.0 * wobble.abs(),
                    max_ms: 70.0 + 40.0 * ((s as f64) * 1.3).cos().abs(),
                }
            })
            .collect();
        Report {
            started_at: "2025-06-01T12:00:00+00:00".to_owned(),
            config: RunConfig {
                backend: "postgres".to_owned(),
                workload: "hot-foods".to_owned(),
                foods: 200,
                zones: 8,
                mode: "closed".to_owned(),
                clients: 64,
                rate: None,
                warmup_s: 10.0,
                duration_s: 60.0,
                target: "own cluster (release binaries)".to_owned(),
            },
            durability: vec![
                Setting {
                    name: "synchronous_commit".to_owned(),
                    value: "on".to_owned(),
                },
                Setting {
                    name: "fsync".to_owned(),
                    value: "on".to_owned(),
                },
            ],
            totals: Totals {
                placed: 24_321,
                not_placed: 1_234,
                busy_retries: 321,
                errors: 2,
                orders_per_s: 425.9,
                placed_per_s: 405.35,
            },
            latency: pct(15.25),
            steps: vec![
                StepLatency {
                    name: "create".to_owned(),
                    latency: pct(1.2),
                },
                StepLatency {
                    name: "reserve".to_owned(),
                    latency: pct(4.8),
                },
                StepLatency {
                    name: "assign".to_owned(),
                    latency: pct(3.1),
                },
                StepLatency {
                    name: "persist".to_owned(),
                    latency: pct(2.2),
                },
                StepLatency {
                    name: "saga".to_owned(),
                    latency: pct(13.7),
                },
            ],
            timeline,
            ceiling: Some(Ceiling {
                method: "direct ReserveFood calls".to_owned(),
                clients: 64,
                claims_per_s: 1_873.4,
                ratio: 425.9 / 1_873.4,
            }),
            services: vec![
                ServiceUsage {
                    name: "order".to_owned(),
                    cpu_s: 41.2,
                    cpu_ms_per_order: 1.61,
                    peak_rss_mib: 38.5,
                },
                ServiceUsage {
                    name: "store".to_owned(),
                    cpu_s: 22.9,
                    cpu_ms_per_order: 0.9,
                    peak_rss_mib: 27.1,
                },
                ServiceUsage {
                    name: "delivery".to_owned(),
                    cpu_s: 18.0,
                    cpu_ms_per_order: 0.7,
                    peak_rss_mib: 25.0,
                },
            ],
            decay: Some(Decay {
                first_minute_per_s: 431.0,
                last_minute_per_s: 402.0,
                ratio: 402.0 / 431.0,
            }),
            invariants: Invariants {
                checked: true,
                violations: vec![],
            },
        }
    }

    #[test]
    fn renders_sample() {
        let r = sample();
        let html = render_html(&r).expect("render");
        assert!(html.matches("<svg").count() >= 3, "too few charts");
        for needle in [
            "order-saga bench",
            "2025-06-01T12:00:00+00:00",
            "postgres",
            "hot-foods",
            "closed loop, 64 clients",
            "405",
            "426",
            "24,321",
            "1,234",
            "15.2",
            "synchronous_commit",
            "hold",
            "1,873",
            "0.23",
            "reserve",
            "persist",
            "peak RSS MiB",
            "38.5",
            "0.93",
            "throughput",
        ] {
            assert!(
                html.to_lowercase().contains(&needle.to_lowercase()),
                "missing {needle}"
            );
        }
        assert!(!html.contains("http://") || !html.contains("<link"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn renders_degenerate() {
        let mut r = sample();
        r.timeline.clear();
        r.ceiling = None;
        r.decay = None;
        r.services.clear();
        r.durability.clear();
        r.totals = Totals {
            placed: 0,
            not_placed: 0,
            busy_retries: 0,
            errors: 0,
            orders_per_s: 0.0,
            placed_per_s: 0.0,
        };
        r.latency = Percentiles::default();
        for s in &mut r.steps {
            s.latency = Percentiles::default();
        }
        let html = render_html(&r).expect("render empty");
        assert!(html.matches("<svg").count() >= 3);
        assert!(html.contains("No ceiling"));

        r.steps.clear();
        r.invariants = Invariants {
            checked: true,
            violations: vec!["stock <negative> for food 7 & zone 2".to_owned()],
        };
        r.timeline = vec![Interval {
            t_s: 1.0,
            placed: 0,
            not_placed: 0,
            busy: 0,
            p50_ms: 0.0,
            p99_ms: f64::NAN,
            max_ms: 0.0,
        }];
        r.ceiling = Some(Ceiling {
            method: "x".to_owned(),
            clients: 1,
            claims_per_s: 0.0,
            ratio: 0.0,
        });
        let html = render_html(&r).expect("render zero");
        assert!(html.contains("stock &lt;negative&gt; for food 7 &amp; zone 2"));
        assert!(html.contains("1 violation"));
        // The summary must not panic either.
        let _ = summary_table(&r).to_string();
    }

    #[test]
    fn escapes_interpolated_strings() {
        let mut r = sample();
        r.config.target = "http://x/?a=<b>&c=\"d\"".to_owned();
        r.steps[0].name = "<script>".to_owned();
        let html = render_html(&r).expect("render");
        assert!(!html.contains("<script>"));
        assert!(html.contains("http://x/?a=&lt;b&gt;&amp;c=&quot;d&quot;"));
    }

    #[test]
    fn percentiles_from_histogram() {
        let empty = Histogram::<u64>::new(3).expect("histogram");
        assert_eq!(Percentiles::from_histogram(&empty), Percentiles::default());
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        for us in 1..=1000_u64 {
            h.record(us * 1000).expect("record");
        }
        let p = Percentiles::from_histogram(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 2.0, "{p:?}");
        assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
        assert!((p.mean_ms - 500.5).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn json_round_trip_and_write() {
        let r = sample();
        let dir = std::env::temp_dir().join(format!("report-test-{}", std::process::id()));
        let html = write(&dir, &r).expect("write");
        assert!(html.ends_with("report.html"));
        let json = std::fs::read_to_string(dir.join("report.json")).expect("read json");
        let back: Report = serde_json::from_str(&json).expect("parse json");
        assert_eq!(back.timeline.len(), 60);
        assert_eq!(back.totals.placed, r.totals.placed);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn fmt_helpers() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_int(1234567), "1,234,567");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12345.6), "12,346");
        assert_eq!(fmt_num(1873.4), "1,873");
        assert_eq!(fmt_num(f64::NAN), "–");
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
