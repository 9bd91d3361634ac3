//! Overload: more orders in flight than every server admits. Busy is never sold out.
//!
//! The servers get tiny admission limits and the order service few saga slots, then one client
//! connection (and then three) sends far more orders at once than that. Every request must end
//! `PLACED` (stock and agents are plentiful) after retrying only answers that are `UNAVAILABLE`
//! with a `google.rpc.RetryInfo` hint; any other refusal, or any `NOT_PLACED`, fails the test.
//! Before admission control, tonic's per-connection load shedding answered such load
//! `RESOURCE_EXHAUSTED`, which clients read as final and sagas read as "out of stock".

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use futures::future::join_all;
use order_saga_e2e::{Cluster, ClusterOptions};
use order_saga_platform::{admission::AdmissionConfig, testing::TestBackend};
use order_saga_proto::order::v1::{
    OrderState, PlaceOrderRequest, order_service_client::OrderServiceClient,
};
use order_saga_saga::{ClientRetry, client_retry};
use tonic::transport::Channel;

const SETTLE: Duration = Duration::from_secs(30);

/// What the clients saw.
#[derive(Default)]
struct Tally {
    busy: AtomicUsize,
    other_refusals: AtomicUsize,
    not_placed: AtomicUsize,
    placed: AtomicUsize,
}

/// Places one order, retrying (same key) only busy answers, as `sagactl` does.
async fn place(client: &mut OrderServiceClient<Channel>, key: String, tally: &Tally) {
    let request = PlaceOrderRequest {
        idempotency_key: key,
        customer_id: "load".into(),
        food_id: "pizza".into(),
        zone: "north".into(),
    };
    for _ in 0..10_000 {
        match client.place_order(request.clone()).await {
            Ok(order) => {
                let counter = if order.into_inner().state() == OrderState::Placed {
                    &tally.placed
                } else {
                    &tally.not_placed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(status) => match client_retry(&status) {
                ClientRetry::Busy(delay) => {
                    tally.busy.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    eprintln!("refused: {:?} {}", status.code(), status.message());
                    tally.other_refusals.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    }
    panic!("an order stayed busy for 10,000 attempts");
}

fn tight() -> ClusterOptions {
    ClusterOptions {
        order_admission: AdmissionConfig {
            max_in_flight: 24,
            max_queued: 24,
            queue_wait: Duration::from_millis(200),
            retry_after: Duration::from_millis(10),
            max_per_second: None,
        },
        // Smaller than the calls the saga slots allow at once: participants are busy too.
        participant_admission: AdmissionConfig {
            max_in_flight: 2,
            max_queued: 2,
            queue_wait: Duration::from_millis(50),
            retry_after: Duration::from_millis(5),
            max_per_second: None,
        },
        max_sagas: 8,
        ..ClusterOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_load_than_admitted_is_backpressure_never_sold_out() {
    let cluster = Cluster::start(TestBackend::Sqlite, tight()).await;
    cluster.add_food("pizza", 1_000).await;
    cluster.add_agents("north", 1_000).await;

    // One connection, 300 orders at once; then three connections of 100 each.
    let one = cluster.orders().await;
    let tally = Tally::default();
    join_all((0..300).map(|i| {
        let mut client = one.clone();
        let tally = &tally;
        async move { place(&mut client, format!("one-{i}"), tally).await }
    }))
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(cluster.orders().await);
    }
    join_all((0..300).map(|i| {
        let mut client = clients[i % 3].clone();
        let tally = &tally;
        async move { place(&mut client, format!("three-{i}"), tally).await }
    }))
    .await;

    let (busy, placed) = (tally.busy.into_inner(), tally.placed.into_inner());
    let (other, not_placed) = (
        tally.other_refusals.into_inner(),
        tally.not_placed.into_inner(),
    );
    eprintln!("placed {placed}, not placed {not_placed}, busy answers {busy}, other {other}");
    assert_eq!(
        other, 0,
        "every refusal under load is UNAVAILABLE with a retry hint"
    );
    assert_eq!(not_placed, 0, "busy participants never read as sold out");
    assert_eq!(placed, 600);
    assert!(
        busy > 0,
        "the load must exceed what the servers admit, or this test shows nothing"
    );
    cluster.assert_invariants_when_quiet(SETTLE).await;
    cluster.stop().await;
}
