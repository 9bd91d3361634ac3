//! Prometheus metrics: one recorder per process, served at `GET /metrics` on the admin listener
//! (a bearer token of either role, like the admin API's reads).
//!
//! Code records with the `metrics` crate's macros (`counter!`, `histogram!`, `gauge!`);
//! histograms whose name ends in `_seconds` get the [`LATENCY_BUCKETS`], those ending in
//! `_batch_size` the [`BATCH_BUCKETS`]. Values that are cheaper
//! to read than to track (queue depths, units per pool) are set by collectors registered with
//! [`on_scrape`] or by the service's own loops. The names are listed in the README's metrics
//! table and used by the Grafana dashboard in `deploy/grafana/`.

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds of every `*_seconds` histogram: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0,
];

/// Bucket bounds of every `*_batch_size` histogram: 1 to 512 items.
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A function run before each scrape, to set gauges from state read on demand; it answers
/// `false` once what it reads is gone, and is then dropped.
type Collector = Box<dyn Fn() -> bool + Send + Sync>;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new());

/// Installs the process's recorder, labelling every series with `service` (first call wins:
/// tests run several services in one process). Returns the handle that renders the scrape.
pub fn install(service: &'static str) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .add_global_label("service", service)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), &BATCH_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder was installed first; ours then records nothing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            // Histogram samples wait in buffers until upkeep folds them into the buckets; do it
            // even when nobody scrapes, so memory stays bounded.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            handle
        })
        .clone()
}

/// Runs `collector` before every scrape (for gauges read from state, such as queue depths),
/// until it answers `false`.
pub fn on_scrape(collector: impl Fn() -> bool + Send + Sync + 'static) {
    COLLECTORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(collector));
}

/// The scrape: every collector run, then the Prometheus text format.
pub fn render(handle: &PrometheusHandle) -> String {
    COLLECTORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|collect| collect());
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics` for the admin listener.
pub fn routes(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&handle),
                )
            }
        }),
    )
}
