//! Metrics and logs: the Prometheus scrape on each admin listener moves with the work done, is
//! closed to callers without a token, and `LOG_FORMAT=json` lines name the order and the trace.
//! (Its own test binary: the metrics recorder is one per process.)

use std::time::Duration;

use order_saga_e2e::{Cluster, ClusterOptions, OPERATOR_TOKEN, VIEWER_TOKEN, http, metric};
use order_saga_platform::testing::TestBackend;
use order_saga_proto::order::v1::{OrderState, PlaceOrderRequest};
use order_saga_testkit::procs::{ProcCluster, ProcConfig};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let bearer = format!("Bearer {VIEWER_TOKEN}");
    let answer = http(addr, "GET", "/metrics", &[("authorization", &bearer)], None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{answer:?}"
    );
    answer.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scrape_moves_with_orders_and_needs_a_token() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    cluster.add_food("pizza", 3).await;
    cluster.add_agents("north", 5).await;
    let admin = cluster.order_addrs.admin;

    // Closed to anonymous callers and wrong tokens; the public listener has no scrape.
    let answer = http(admin, "GET", "/metrics", &[], None).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    let wrong = http(
        admin,
        "GET",
        "/metrics",
        &[("authorization", "Bearer not-the-token-at-all")],
        None,
    )
    .await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let public = http(cluster.order_addrs.public, "GET", "/metrics", &[], None).await;
    assert_ne!(public.status, 200, "{public:?}");

    let before = scrape(admin).await;
    let placed = |s: &str| metric(s, "saga_orders_total", &["outcome=\"placed\""]);
    let out_of_stock = |s: &str| {
        metric(
            s,
            "saga_orders_total",
            &["outcome=\"not_placed\"", "reason=\"out_of_stock\""],
        )
    };
    for i in 0..5 {
        let order = cluster
            .place(&format!("metrics-{i}"), "pizza", "north")
            .await
            .expect("place");
        let want = if i < 3 {
            OrderState::Placed
        } else {
            OrderState::NotPlaced
        };
        assert_eq!(order.state, want as i32, "{order:?}");
    }
    let after = scrape(admin).await;
    assert_eq!(placed(&after) - placed(&before), 3.0, "{after}");
    assert_eq!(out_of_stock(&after) - out_of_stock(&before), 2.0, "{after}");
    let calls = |s: &str, code: &str| {
        metric(
            s,
            "saga_participant_calls_total",
            &["side=\"store\"", "call=\"reserve\"", code],
        )
    };
    assert_eq!(
        calls(&after, "code=\"Ok\"") - calls(&before, "code=\"Ok\""),
        3.0
    );
    assert_eq!(
        calls(&after, "code=\"ResourceExhausted\"") - calls(&before, "code=\"ResourceExhausted\""),
        2.0
    );
    let sagas = |s: &str| metric(s, "saga_step_duration_seconds_count", &["step=\"saga\""]);
    assert_eq!(sagas(&after) - sagas(&before), 5.0, "{after}");
    assert!(
        after.contains("saga_step_duration_seconds_bucket{"),
        "{after}"
    );
    assert!(after.contains("admission_in_flight{"), "{after}");
    assert!(after.contains("admission_queued{"), "{after}");

    // An operator's token may scrape too; the participants' admin listeners serve their own
    // unit counts, refreshed every 10 s.
    let operator = format!("Bearer {OPERATOR_TOKEN}");
    let store = cluster.store_addrs.admin;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http(
            store,
            "GET",
            "/metrics",
            &[("authorization", &operator)],
            None,
        )
        .await;
        assert_eq!(answer.status, 200);
        let assigned = metric(
            &answer.body,
            "reservation_units",
            &["pool=\"pizza\"", "state=\"assigned\""],
        );
        if assigned == 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reservation_units never showed the 3 assigned packets: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_name_the_order_and_the_trace_on_every_line_of_a_request() {
    let mut c = ProcCluster::start(&ProcConfig {
        env: vec![
            ("LOG_FORMAT".into(), "json".into()),
            (
                "RUST_LOG".into(),
                "info,order_saga_reservation=debug,sqlx=warn".into(),
            ),
        ],
        ..ProcConfig::default()
    })
    .await
    .expect("cluster");
    c.add_food("pizza", 1).await.expect("food");
    c.add_agents("north", 1).await.expect("agents");
    let mut client = c.order_client(0).await.expect("client");
    let order = client
        .place_order(PlaceOrderRequest {
            idempotency_key: "json-logs".into(),
            customer_id: "c".into(),
            food_id: "pizza".into(),
            zone: "north".into(),
        })
        .await
        .expect("place")
        .into_inner();
    assert_eq!(order.state, OrderState::Placed as i32);
    // Let the processes flush their lines.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let lines = |name: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(c.log_dir.join(format!("{name}.log"))).expect("log");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    // The fields of every span a line is in.
    let field = |line: &serde_json::Value, key: &str| -> Option<String> {
        line["spans"]
            .as_array()?
            .iter()
            .find_map(|s| s[key].as_str().map(str::to_owned))
    };
    let order_lines: Vec<_> = lines("order0")
        .into_iter()
        .filter(|l| field(l, "rpc.path").is_some_and(|p| p.ends_with("/PlaceOrder")))
        .collect();
    assert!(!order_lines.is_empty(), "no line of the PlaceOrder request");
    let trace = field(&order_lines[0], "trace_id").expect("a trace id");
    assert_eq!(trace.len(), 32, "{trace}");
    for line in &order_lines {
        assert_eq!(
            field(line, "order_id").as_deref(),
            Some(order.order_id.as_str()),
            "{line}"
        );
        assert_eq!(
            field(line, "trace_id").as_deref(),
            Some(trace.as_str()),
            "{line}"
        );
    }
    // The participants' lines of that order carry the same trace (propagated by traceparent).
    let store_lines: Vec<_> = lines("store")
        .into_iter()
        .filter(|l| field(l, "order_id").as_deref() == Some(order.order_id.as_str()))
        .collect();
    assert!(
        !store_lines.is_empty(),
        "the store logged nothing of the order"
    );
    for line in &store_lines {
        assert_eq!(
            field(line, "trace_id").as_deref(),
            Some(trace.as_str()),
            "{line}"
        );
    }
    c.shutdown().await;
}
