//! The benchmark report of `make bench`: the data model of one run and its renderings.
//!
//! A [`Report`] is written as `report.json` (the machine-readable record) and `report.html` (a
//! self-contained page with inline CSS and SVG charts, see [`render_html`]) by [`write`];
//! [`print_summary`] prints a compact table of the key figures to stdout and [`screenshot`]
//! renders the page to a PNG with headless Chromium.

mod charts;
mod format;
mod html;
mod screenshot;
mod summary;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use html::render_html;
pub use screenshot::screenshot;
pub use summary::print_summary;

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
    /// What one order cost in commits, write transactions and participant calls.
    #[serde(default)]
    pub cost: Option<Cost>,
}

/// What one completed order cost over the measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cost {
    /// Commits per database (`pg_stat_database.xact_commit` deltas; PostgreSQL only), and
    /// `all` summed over the three. Read-only transactions count too (an autocommit read is a
    /// transaction), so this is more than the commits that waited for the disk.
    pub commits: Vec<PerOrder>,
    /// What waited for the disk: the server's WAL flushes (`pg_stat_wal.wal_sync`, one per
    /// durable commit or fewer when the server flushed several together) per order, over
    /// every database and background writer of the server; `None` off PostgreSQL.
    #[serde(default)]
    pub wal_flushes_per_order: Option<f64>,
    /// Statements per database (`pg_stat_statements` calls, `BEGIN` and `COMMIT` included),
    /// and `all` summed over the three; empty when they could not be counted.
    #[serde(default)]
    pub statements: Vec<PerOrder>,
    /// Why statements were not counted (e.g. the server does not preload
    /// `pg_stat_statements`).
    #[serde(default)]
    pub statements_unmeasured: Option<String>,
    /// Each group commit and call coalescer: how many batches and items per order, and the
    /// batch-size histogram.
    pub batches: Vec<Batching>,
    /// Participant calls the sagas made (saga steps, batched or not) per order.
    pub participant_calls_per_order: f64,
}

/// A count over the window and its value per order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerOrder {
    /// What was counted.
    pub name: String,
    /// Over the window.
    pub total: f64,
    /// Per completed order.
    pub per_order: f64,
}

/// One batching point: a group commit (transactions) or a call coalescer (`Batch` RPCs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batching {
    /// What is batched, e.g. "store database writes".
    pub what: String,
    /// Batches (transactions or RPCs) per completed order.
    pub batches_per_order: f64,
    /// Items (writes or calls) per completed order.
    pub items_per_order: f64,
    /// Items per batch, on average.
    pub mean_batch: f64,
    /// Batches per size bucket over the window: (upper bound `le`, batches).
    pub histogram: Vec<(String, u64)>,
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
    /// Claims per second with many claims per transaction (one commit for the batch).
    #[serde(default)]
    pub batched_claims_per_s: f64,
    /// Orders per second of the run divided by the batched claims per second.
    #[serde(default)]
    pub batched_ratio: f64,
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
