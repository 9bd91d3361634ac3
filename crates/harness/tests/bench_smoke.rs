//! A few seconds of `make bench` on the dev binaries `make test` builds (figures from the dev
//! profile mean nothing; this checks the benchmark itself works end to end: cluster, load,
//! per-step histograms, ceiling, invariants, report files).

use std::time::Duration;

use clap::Parser;
use order_saga_harness::bench::{BenchArgs, run};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_bench_reports_figures_and_checks_the_invariants() {
    let out = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    let bin_dir = order_saga_testkit::procs::default_bin_dir();
    let cli = Cli::parse_from([
        "bench",
        "--backend",
        "sqlite",
        "--workload",
        "scarce",
        "--foods",
        "2",
        "--zones",
        "2",
        "--clients",
        "8",
        "--duration",
        "3s",
        // No warm-up: the scarce stock must not run out before measuring starts.
        "--warmup",
        "0s",
        // Stock for 10 orders/s: sold out within the run however slowly a loaded CI machine
        // places (at 100/s the stock outlasted a 3 s run once, and no order was NOT_PLACED).
        "--expect-rate",
        "10",
        "--ceiling-duration",
        "1s",
        "--bin-dir",
        bin_dir.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    let report = tokio::time::timeout(Duration::from_secs(240), run(&cli.args))
        .await
        .expect("bench finishes")
        .expect("bench runs");
    assert!(report.invariants.checked);
    assert!(
        report.invariants.violations.is_empty(),
        "{:?}",
        report.invariants.violations
    );
    assert_eq!(report.totals.errors, 0);
    assert!(report.totals.placed > 0, "some orders are placed");
    assert!(
        report.totals.not_placed > 0,
        "scarce stock ends some orders NOT_PLACED"
    );
    assert_eq!(report.timeline.len(), 3);
    let saga = report
        .steps
        .iter()
        .find(|s| s.name == "saga")
        .expect("a saga step");
    assert!(saga.latency.count > 0);
    assert!(
        report
            .ceiling
            .as_ref()
            .is_some_and(|c| c.claims_per_s > 0.0)
    );
    assert!(
        report
            .services
            .iter()
            .any(|s| s.name == "order" && s.peak_rss_mib > 0.0)
    );
    assert!(
        report
            .durability
            .iter()
            .any(|s| s.name == "sqlite synchronous" && s.value == "FULL")
    );
    let run_dir = std::fs::read_dir(&out)
        .expect("results dir")
        .next()
        .expect("one run")
        .expect("entry")
        .path();
    let html = std::fs::read_to_string(run_dir.join("report.html")).expect("report.html");
    assert!(html.matches("<svg").count() >= 3);
    assert!(run_dir.join("report.json").exists());
    let _ = std::fs::remove_dir_all(&out);
}
