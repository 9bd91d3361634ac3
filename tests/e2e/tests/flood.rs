//! A flood of anonymous public reads cannot slow ordering down: the review found that a few
//! hundred callers of the participants' public catalogue (`ListFoods`, page size 500, counting
//! every unit ever assigned) held the pool the orchestrator's reserves needed; ordering fell to
//! a few orders per second, orders were refused busy for seconds on end, and reserves that kept
//! timing out would have ended NOT_PLACED with stock on the shelf.
//!
//! Real processes on PostgreSQL. Orders run from closed-loop clients for a measured window,
//! then again while 200 callers hammer the public catalogue of both participants without ever
//! waiting for a retry hint. Stock is plentiful, so any NOT_PLACED is false. Checks: no
//! NOT_PLACED, no order kept busy (refused busy, retried, refused again) for a second or more,
//! and ordering under the flood at least 80% of ordering without it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use order_saga_proto::{
    delivery::v1::{
        GetZoneRequest, ListZonesRequest, delivery_service_client::DeliveryServiceClient,
    },
    order::v1::{OrderState, PlaceOrderRequest, order_service_client::OrderServiceClient},
    store::v1::{GetFoodRequest, ListFoodsRequest, store_service_client::StoreServiceClient},
};
use order_saga_saga::{ClientRetry, client_retry};
use order_saga_testkit::procs::{ProcCluster, ProcConfig};
use tonic::transport::Channel;

const FOODS: usize = 4;
const ZONES: usize = 4;
const CLIENTS: usize = 24;
const FLOODERS: usize = 200;
const WINDOW: Duration = Duration::from_secs(3);
/// Quiet and flooded windows alternate this many times each, so drift on a shared machine
/// (other processes, the database growing) falls on both alike.
const ROUNDS: usize = 5;

/// What one measured window saw.
#[derive(Debug, Default)]
struct Window {
    placed: AtomicU64,
    not_placed: AtomicU64,
    refused: AtomicU64,
    /// The longest time one order spent being refused busy before its answer, in ms.
    longest_busy_ms: AtomicU64,
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// Closed-loop clients for `WINDOW`, retrying busy answers after their hint, as sagactl does.
async fn order_for_a_window(order_url: &str, phase: &str) -> Arc<Window> {
    let window = Arc::new(Window::default());
    let stop = Arc::new(AtomicBool::new(false));
    let channel = channel(order_url).await;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (window, stop) = (window.clone(), stop.clone());
        let mut client = OrderServiceClient::new(channel.clone());
        let phase = phase.to_owned();
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let request = PlaceOrderRequest {
                    idempotency_key: format!("{phase}-{c}-{n}"),
                    customer_id: format!("c{c}"),
                    food_id: format!("food-{}", n % FOODS),
                    zone: format!("zone-{}", (n + c) % ZONES),
                };
                let mut first_busy = None;
                loop {
                    match client.place_order(request.clone()).await {
                        Ok(order) => {
                            let counter = if order.into_inner().state() == OrderState::Placed {
                                &window.placed
                            } else {
                                &window.not_placed
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(status) => match client_retry(&status) {
                            ClientRetry::Busy(delay) => {
                                first_busy.get_or_insert_with(tokio::time::Instant::now);
                                tokio::time::sleep(delay).await;
                            }
                            ClientRetry::Backoff => {
                                first_busy.get_or_insert_with(tokio::time::Instant::now);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            ClientRetry::Stop => {
                                eprintln!("refused: {status:?}");
                                window.refused.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        },
                    }
                }
                if let Some(since) = first_busy {
                    let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                    window.longest_busy_ms.fetch_max(ms, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    window
}

/// Callers of the public catalogue that never stop and never wait: list every food and zone
/// (the largest page), read single ones, and send the next request as soon as an answer comes.
fn flood(store_url: &str, delivery_url: &str, stop: Arc<AtomicBool>) -> Arc<Mutex<[u64; 2]>> {
    let answered = Arc::new(Mutex::new([0u64; 2]));
    for f in 0..FLOODERS {
        let (store_url, delivery_url) = (store_url.to_owned(), delivery_url.to_owned());
        let (stop, answered) = (stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut store = StoreServiceClient::new(channel(&store_url).await);
            let mut delivery = DeliveryServiceClient::new(channel(&delivery_url).await);
            let mut i = f;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ok = match i % 4 {
                    0 => store
                        .list_foods(ListFoodsRequest {
                            page_size: 500,
                            page_token: String::new(),
                        })
                        .await
                        .is_ok(),
                    1 => delivery
                        .list_zones(ListZonesRequest {
                            page_size: 500,
                            page_token: String::new(),
                        })
                        .await
                        .is_ok(),
                    2 => store
                        .get_food(GetFoodRequest {
                            food_id: format!("food-{}", i % FOODS),
                        })
                        .await
                        .is_ok(),
                    _ => delivery
                        .get_zone(GetZoneRequest {
                            zone: format!("zone-{}", i % ZONES),
                        })
                        .await
                        .is_ok(),
                };
                if let Ok(mut a) = answered.lock() {
                    a[usize::from(!ok)] += 1;
                }
            }
        });
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_public_reads_leaves_ordering_alone() {
    let mut c = ProcCluster::start(&ProcConfig {
        reservation_ttl: Duration::from_secs(30),
        lease: Duration::from_secs(10),
        call_timeout: Duration::from_secs(2),
        // The participants' production queue wait (the test clusters' default is shorter, to
        // fit their 1 s call timeouts): a flooder over the public rate waits this long for
        // its busy answer. The public budgets themselves are the shipped defaults.
        env: vec![
            ("STORE_QUEUE_WAIT".into(), "1s".into()),
            ("DELIVERY_QUEUE_WAIT".into(), "1s".into()),
        ],
        ..ProcConfig::default()
    })
    .await
    .expect("start cluster");
    for i in 0..FOODS {
        c.add_food(&format!("food-{i}"), 6_000).await.expect("food");
    }
    for i in 0..ZONES {
        c.add_agents(&format!("zone-{i}"), 6_000)
            .await
            .expect("zone");
    }
    let order_url = c.orders[0].url.clone();
    // Warm up (the catalogue check's cache, connections, the planner's statistics).
    order_for_a_window(&order_url, "warm").await;

    let (mut quiet, mut flooded, mut reads) = (Vec::new(), Vec::new(), [0u64; 2]);
    for round in 0..ROUNDS {
        quiet.push(order_for_a_window(&order_url, &format!("quiet{round}")).await);
        let stop = Arc::new(AtomicBool::new(false));
        let flooded_reads = flood(&c.store.url, &c.delivery.url, stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        flooded.push(order_for_a_window(&order_url, &format!("flooded{round}")).await);
        stop.store(true, Ordering::Relaxed);
        let seen = *flooded_reads.lock().expect("reads");
        reads = [reads[0] + seen[0], reads[1] + seen[1]];
        // Flooders still waiting for an answer stop after it (at most the queue wait).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    let total = |ws: &[Arc<Window>], f: fn(&Window) -> &AtomicU64| {
        ws.iter().map(|w| f(w).load(Ordering::Relaxed)).sum::<u64>()
    };
    let seconds = WINDOW.as_secs_f64() * ROUNDS as f64;
    let rate = |ws: &[Arc<Window>]| total(ws, |w| &w.placed) as f64 / seconds;
    let (quiet_rate, flooded_rate) = (rate(&quiet), rate(&flooded));
    println!(
        "flood: {} public reads answered, {} refused busy, in {ROUNDS} x {WINDOW:?}",
        reads[0], reads[1]
    );
    for (name, ws) in [("quiet", &quiet), ("flooded", &flooded)] {
        println!(
            "{name}: {:.0} orders/s, {} not placed, {} refused, longest busy {} ms",
            rate(ws),
            total(ws, |w| &w.not_placed),
            total(ws, |w| &w.refused),
            ws.iter()
                .map(|w| w.longest_busy_ms.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0)
        );
    }
    for w in quiet.iter().chain(&flooded) {
        assert_eq!(w.not_placed.load(Ordering::Relaxed), 0, "false NOT_PLACED");
        assert_eq!(w.refused.load(Ordering::Relaxed), 0, "refusals");
        assert!(
            w.longest_busy_ms.load(Ordering::Relaxed) < 1000,
            "an order was kept busy for a second or more"
        );
    }
    assert!(reads[0] > 0, "the flood was answered at all");
    assert!(
        flooded_rate >= 0.8 * quiet_rate,
        "ordering under the flood: {flooded_rate:.0}/s, without it {quiet_rate:.0}/s"
    );
    c.shutdown().await;
}
