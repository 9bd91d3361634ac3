//! Rendering tests of the report.

use super::{format::*, html::*, summary::*, *};

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
            batched_claims_per_s: 21_000.0,
            batched_ratio: 425.9 / 21_000.0,
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
        cost: Some(Cost {
            commits: vec![PerOrder {
                name: "all".into(),
                total: 6000.0,
                per_order: 1.2,
            }],
            wal_flushes_per_order: Some(0.8),
            statements: vec![PerOrder {
                name: "all".into(),
                total: 90000.0,
                per_order: 18.0,
            }],
            statements_unmeasured: None,
            batches: vec![Batching {
                what: "store database writes".into(),
                batches_per_order: 0.1,
                items_per_order: 2.0,
                mean_batch: 20.0,
                histogram: vec![("16".into(), 3), ("32".into(), 7)],
            }],
            participant_calls_per_order: 4.0,
        }),
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
        "Cost per order",
        "store database writes",
        "≤32: 7",
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
        batched_claims_per_s: 0.0,
        batched_ratio: 0.0,
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
