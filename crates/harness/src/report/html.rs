//! The self-contained HTML page.

use std::fmt::Write as _;

use super::{Report, ServiceUsage, charts::*, format::*};

pub(super) const STYLE: &str = r#"
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
pub(super) fn html_table(
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
    h.push_str("<h2>Durability and maintenance settings</h2>\n");
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
            let mut rows = vec![vec![
                esc(&ceil.method),
                ceil.clients.to_string(),
                fmt_num(ceil.claims_per_s),
                fmt_num(t.orders_per_s),
                fmt_ratio(ceil.ratio),
            ]];
            if ceil.batched_claims_per_s > 0.0 {
                rows.push(vec![
                    "batched: the same claims, many per commit".to_owned(),
                    ceil.clients.to_string(),
                    fmt_num(ceil.batched_claims_per_s),
                    fmt_num(t.orders_per_s),
                    fmt_ratio(ceil.batched_ratio),
                ]);
            }
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

    // Cost model.
    if let Some(cost) = &report.cost {
        h.push_str("<h2>Cost per order</h2>\n");
        let mut rows: Vec<Vec<String>> = cost
            .commits
            .iter()
            .map(|c| {
                vec![
                    format!("commits: {}", esc(&c.name)),
                    fmt_num(c.total),
                    fmt_num(c.per_order),
                ]
            })
            .collect();
        if let Some(flushes) = cost.wal_flushes_per_order {
            rows.push(vec![
                "WAL flushes (durable commits, whole server)".to_owned(),
                String::new(),
                fmt_num(flushes),
            ]);
        }
        rows.extend(cost.statements.iter().map(|c| {
            vec![
                format!("statements: {}", esc(&c.name)),
                fmt_num(c.total),
                fmt_num(c.per_order),
            ]
        }));
        if let Some(why) = &cost.statements_unmeasured {
            rows.push(vec![
                "statements".to_owned(),
                format!("not counted: {}", esc(why)),
                String::new(),
            ]);
        }
        rows.push(vec![
            "participant calls (saga steps)".to_owned(),
            String::new(),
            fmt_num(cost.participant_calls_per_order),
        ]);
        html_table(
            &mut h,
            "",
            &["what", "over the window", "per order"],
            &rows,
            &[1, 2],
        );
        let rows: Vec<Vec<String>> = cost
            .batches
            .iter()
            .map(|b| {
                let histogram = b
                    .histogram
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(le, n)| format!("≤{}: {n}", esc(le)))
                    .collect::<Vec<_>>()
                    .join(", ");
                vec![
                    esc(&b.what),
                    fmt_num(b.batches_per_order),
                    fmt_num(b.items_per_order),
                    fmt_num(b.mean_batch),
                    histogram,
                ]
            })
            .collect();
        html_table(
            &mut h,
            "",
            &[
                "batched",
                "batches / order",
                "items / order",
                "mean batch",
                "batches by size",
            ],
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
