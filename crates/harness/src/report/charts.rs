//! The SVG charts of the page, drawn with plotters into strings.

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use std::fmt::Write as _;

use super::{Ceiling, Interval, Percentiles, Report, format::*};

pub(super) const CHART_W: u32 = 1040;
pub(super) const CHART_H: u32 = 340;
pub(super) const FONT: &str = "sans-serif";
pub(super) const C_BLUE: RGBColor = RGBColor(31, 119, 180);
pub(super) const C_ORANGE: RGBColor = RGBColor(230, 126, 34);
pub(super) const C_RED: RGBColor = RGBColor(200, 40, 40);
pub(super) const C_GREY: RGBColor = RGBColor(140, 140, 140);
pub(super) const C_AXIS: RGBColor = RGBColor(90, 90, 90);

/// Renders one chart into an SVG string.
pub(super) fn svg_chart(
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
pub(super) fn axis_top(max: f64, headroom: f64) -> f64 {
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
pub(super) fn clean(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

/// One line of a time-series chart.
pub(super) struct Line {
    label: &'static str,
    color: RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
}

/// How a legend entry is marked.
pub(super) enum Mark {
    /// A short line in the series' style.
    Line(ShapeStyle),
    /// A filled square in the series' color.
    Box(RGBColor),
}

/// Height of the legend strip above each chart, px.
pub(super) const LEGEND_H: u32 = 34;
/// Left and right space around the plotting area of each chart, px.
pub(super) const MARGIN_L: u32 = 14;
pub(super) const MARGIN_R: u32 = 28;
pub(super) const Y_LABEL_W: u32 = 72;

/// Draws a one-row legend, right-aligned with the plotting area, into `area` (the strip above
/// the chart). Text widths are estimated, since SVG text is measured only by the browser.
pub(super) fn draw_legend(
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
pub(super) fn fmt_axis(v: f64) -> String {
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
pub(super) fn time_chart(lines: Vec<Line>, y_desc: &str, x_end: f64) -> anyhow::Result<String> {
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
pub(super) fn timeline_end(report: &Report) -> f64 {
    report
        .timeline
        .iter()
        .map(|i| i.t_s)
        .filter(|t| t.is_finite())
        .fold(0.0_f64, f64::max)
}

/// Chart (a): placed and not-placed orders per second over time.
pub(super) fn throughput_chart(report: &Report) -> anyhow::Result<String> {
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
pub(super) fn latency_chart(report: &Report) -> anyhow::Result<String> {
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
pub(super) struct StepAxis(usize);

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
pub(super) type BarSeries = (&'static str, RGBColor, f64, fn(&Percentiles) -> f64);

/// Chart (c): p50 and p99 of each saga step as grouped bars.
pub(super) fn steps_chart(report: &Report) -> anyhow::Result<String> {
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
pub(super) fn ceiling_svg(orders_per_s: f64, ceiling: &Ceiling) -> String {
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
