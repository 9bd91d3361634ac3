//! The compact summary table printed at the end of a run.

use super::{Report, format::*};

/// Prints a compact table of the key figures to stdout, suitable for pasting into a note.
pub fn print_summary(report: &Report) {
    println!("{}", summary_table(report));
}

/// Builds the table printed by [`print_summary`].
pub(super) fn summary_table(report: &Report) -> comfy_table::Table {
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
        Some(ceil) => {
            row(
                "ceiling claims/s (ratio)",
                format!("{} ({})", fmt_num(ceil.claims_per_s), fmt_ratio(ceil.ratio)),
            );
            if ceil.batched_claims_per_s > 0.0 {
                row(
                    "batched ceiling claims/s (ratio)",
                    format!(
                        "{} ({})",
                        fmt_num(ceil.batched_claims_per_s),
                        fmt_ratio(ceil.batched_ratio)
                    ),
                );
            }
        }
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
    if report.services.len() > 1 {
        let box_cpu: f64 = report.services.iter().map(|s| s.cpu_ms_per_order).sum();
        row("whole box CPU ms/order", fmt_num(box_cpu));
    }
    if let Some(cost) = &report.cost {
        for c in &cost.commits {
            row(&format!("commits/order: {}", c.name), fmt_num(c.per_order));
        }
        if let Some(flushes) = cost.wal_flushes_per_order {
            row("WAL flushes/order (durable)", fmt_num(flushes));
        }
        for c in &cost.statements {
            row(
                &format!("statements/order: {}", c.name),
                fmt_num(c.per_order),
            );
        }
        if let Some(why) = &cost.statements_unmeasured {
            row("statements/order", format!("not counted: {why}"));
        }
        row(
            "participant calls/order",
            fmt_num(cost.participant_calls_per_order),
        );
        for b in &cost.batches {
            row(
                &format!("{}: batches/order (mean batch)", b.what),
                format!(
                    "{} ({})",
                    fmt_num(b.batches_per_order),
                    fmt_num(b.mean_batch)
                ),
            );
        }
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
