//! End to end: real servers on port 0, real databases, both backends.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use order_saga_e2e::{Cluster, ClusterOptions, pb_duration};
use order_saga_platform::{admission::AdmissionConfig, both_backends, testing::TestBackend};
use order_saga_proto::{
    order::v1::{
        ForceFailOrderRequest, GetOrderHistoryRequest, ListOrdersRequest, ListStuckOrdersRequest,
        NotPlacedReason, OrderState, PlaceOrderRequest, RedriveOrderRequest,
    },
    reservation::v1::ReserveRequest,
    store::v1::GetFoodRequest,
};
use tonic::Code;

const SETTLE: Duration = Duration::from_secs(30);
/// A lease that never runs out during a test (year 2255).
const FAR_FUTURE_MS: i64 = 9_000_000_000_000;

async fn food_counts(cluster: &Cluster, food: &str) -> (i64, i64, i64) {
    let f = cluster
        .store()
        .await
        .get_food(GetFoodRequest {
            food_id: food.into(),
        })
        .await
        .expect("get food")
        .into_inner();
    (f.available, f.reserved, f.assigned)
}

async fn zone_counts(cluster: &Cluster, zone: &str) -> (i64, i64, i64) {
    let mut client =
        order_saga_proto::delivery::v1::delivery_service_client::DeliveryServiceClient::connect(
            format!("http://{}", cluster.delivery_addrs.public),
        )
        .await
        .expect("connect");
    let z = client
        .get_zone(order_saga_proto::delivery::v1::GetZoneRequest { zone: zone.into() })
        .await
        .expect("get zone")
        .into_inner();
    (z.available, z.reserved, z.assigned)
}

/// Reserves a pizza packet and a north agent for `order_id` straight at the participants, as
/// an orchestrator that then crashed would have.
async fn reserve_both(cluster: &Cluster, order_id: &str, ttl: Duration) -> (String, String) {
    let reserve = |pool: &str| ReserveRequest {
        order_id: order_id.into(),
        pool: pool.into(),
        ttl: pb_duration(ttl),
    };
    let mut store = cluster.store_reservations().await;
    let mut delivery = cluster.delivery_reservations().await;
    let packet = store
        .reserve(reserve("pizza"))
        .await
        .expect("reserve packet");
    let agent = delivery
        .reserve(reserve("north"))
        .await
        .expect("reserve agent");
    (packet.into_inner().unit_id, agent.into_inner().unit_id)
}

both_backends!(happy_path_places_the_order, |backend| async move {
    let cluster = Cluster::start(backend, ClusterOptions::default()).await;
    cluster.add_food("pizza", 2).await;
    cluster.add_agents("north", 2).await;
    let order = cluster.place("k1", "pizza", "north").await.expect("place");
    assert_eq!(order.state, OrderState::Placed as i32);
    assert!(order.packet_id.starts_with("pkt-") && order.agent_id.starts_with("agent-"));
    assert_eq!(food_counts(&cluster, "pizza").await, (1, 0, 1));
    assert_eq!(zone_counts(&cluster, "north").await, (1, 0, 1));
    cluster.assert_invariants_when_quiet(SETTLE).await;
    cluster.stop().await;
});

both_backends!(
    out_of_stock_is_not_placed_and_releases_the_agent,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 0).await;
        cluster.add_agents("north", 1).await;
        let order = cluster.place("k1", "pizza", "north").await.expect("place");
        assert_eq!(order.state, OrderState::NotPlaced as i32);
        assert_eq!(order.not_placed_reason, NotPlacedReason::OutOfStock as i32);
        // Customers read what the reason means; the participant's words (pool names,
        // internal ids) are for operators. (Main answered "store reserve:
        // ResourceExhausted: no unit available in pool \"pizza\"" on the public API.)
        assert_eq!(order.detail, "the food is sold out");
        let public = cluster
            .orders()
            .await
            .get_order(order_saga_proto::order::v1::GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(public.detail, "the food is sold out");
        let listed = cluster
            .order_admin()
            .await
            .list_orders(ListOrdersRequest {
                page_size: 1,
                ..ListOrdersRequest::default()
            })
            .await
            .expect("list")
            .into_inner()
            .orders;
        assert!(
            listed[0].detail.contains("no unit available"),
            "{}",
            listed[0].detail
        );
        assert_eq!(
            zone_counts(&cluster, "north").await,
            (1, 0, 0),
            "agent released"
        );
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    no_agent_is_not_placed_and_releases_the_packet,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 1).await;
        cluster.add_agents("north", 1).await;
        let first = cluster.place("k1", "pizza", "north").await.expect("place");
        assert_eq!(first.state, OrderState::Placed as i32);
        cluster.add_food("soup", 1).await;
        let second = cluster.place("k2", "soup", "north").await.expect("place");
        assert_eq!(second.state, OrderState::NotPlaced as i32);
        assert_eq!(second.not_placed_reason, NotPlacedReason::NoAgent as i32);
        assert_eq!(
            food_counts(&cluster, "soup").await,
            (1, 0, 0),
            "packet released"
        );
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    idempotent_replay_returns_the_same_order,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 5).await;
        cluster.add_agents("north", 5).await;
        let first = cluster
            .place("same-key", "pizza", "north")
            .await
            .expect("place");
        let again = cluster
            .place("same-key", "pizza", "north")
            .await
            .expect("replay");
        assert_eq!(first.order_id, again.order_id);
        assert_eq!(first.state, again.state);
        assert_eq!(first.packet_id, again.packet_id);
        // Concurrent replays of a fresh key still make one order.
        let replays = (0..10).map(|_| cluster.place("burst", "pizza", "north"));
        let orders = futures::future::join_all(replays).await;
        let ids: std::collections::HashSet<String> = orders
            .into_iter()
            .map(|o| o.expect("place").order_id)
            .collect();
        assert_eq!(ids.len(), 1, "one key, one order");
        // The same key for a different order is refused.
        let err = cluster
            .place("same-key", "pizza", "south")
            .await
            .expect_err("reuse");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("idempotency_key"));
        assert_eq!(food_counts(&cluster, "pizza").await, (3, 0, 2));
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    a_replay_is_answered_while_every_saga_slot_is_taken,
    |backend| async move {
        // One saga slot, which a request waits for 5 ms at most: new orders keep it taken
        // and some are answered busy. A replay needs no slot, so none of them may be.
        let options = ClusterOptions {
            max_sagas: 1,
            order_admission: AdmissionConfig {
                queue_wait: Duration::from_millis(5),
                ..AdmissionConfig::default()
            },
            ..ClusterOptions::default()
        };
        let cluster = Cluster::start(backend, options).await;
        cluster.add_food("pizza", 1000).await;
        cluster.add_agents("north", 1000).await;
        let first = cluster
            .place("kept", "pizza", "north")
            .await
            .expect("place");
        let done = AtomicBool::new(false);
        let busy = AtomicUsize::new(0);
        let load = (0..8).map(|worker| {
            let (cluster, done, busy) = (&cluster, &done, &busy);
            async move {
                for i in 0.. {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("load-{worker}-{i}");
                    if let Err(status) = cluster.place(&key, "pizza", "north").await {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        busy.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let replays = async {
            for _ in 0..60 {
                let again = cluster
                    .place("kept", "pizza", "north")
                    .await
                    .expect("a replay is answered, never busy");
                assert_eq!(again.order_id, first.order_id);
                assert_eq!(again.state, first.state);
            }
            done.store(true, Ordering::Relaxed);
        };
        futures::future::join(futures::future::join_all(load), replays).await;
        assert!(
            busy.load(Ordering::Relaxed) > 0,
            "the slot was never contended, so the test proved nothing"
        );
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    bad_input_is_refused_naming_the_field,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 1).await;
        cluster.add_agents("north", 1).await;
        let cases = [
            (
                "",
                "pizza",
                "north",
                Code::InvalidArgument,
                "idempotency_key",
            ),
            ("k", "", "north", Code::InvalidArgument, "food_id"),
            ("k", "pizza", "", Code::InvalidArgument, "zone"),
            (
                "k",
                &"x".repeat(65),
                "north",
                Code::InvalidArgument,
                "food_id",
            ),
            (
                "k",
                "pizza; drop",
                "north",
                Code::InvalidArgument,
                "food_id",
            ),
            ("k", "sushi", "north", Code::NotFound, "food_id"),
            ("k", "pizza", "mars", Code::NotFound, "zone"),
        ];
        for (key, food, zone, code, field) in cases {
            let err = cluster
                .place(key, food, zone)
                .await
                .expect_err("must be refused");
            assert_eq!(err.code(), code, "{key:?} {food:?} {zone:?}: {err:?}");
            assert!(err.message().contains(field), "{err:?} should name {field}");
        }
        // Refused requests create no order.
        let listed = cluster
            .order_admin()
            .await
            .list_orders(ListOrdersRequest::default())
            .await
            .expect("list")
            .into_inner();
        assert!(listed.orders.is_empty());
        // Participant edge: a TTL out of range is refused.
        let err = cluster
            .store_reservations()
            .await
            .reserve(ReserveRequest {
                order_id: "o".into(),
                pool: "pizza".into(),
                ttl: pb_duration(Duration::from_secs(86_400)),
            })
            .await
            .expect_err("ttl too long");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("ttl"));
        cluster.stop().await;
    }
);

both_backends!(
    abandoned_reservation_is_swept_and_reused,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 1).await;
        cluster.add_agents("north", 1).await;
        // An order that reserved the only packet and vanished.
        cluster
            .store_reservations()
            .await
            .reserve(ReserveRequest {
                order_id: "ord-abandoned".into(),
                pool: "pizza".into(),
                ttl: pb_duration(Duration::from_secs(1)),
            })
            .await
            .expect("reserve");
        let blocked = cluster.place("k1", "pizza", "north").await.expect("place");
        assert_eq!(blocked.state, OrderState::NotPlaced as i32);
        assert_eq!(
            blocked.not_placed_reason,
            NotPlacedReason::OutOfStock as i32
        );
        // The sweeper frees it once expired...
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while food_counts(&cluster, "pizza").await != (1, 0, 0) {
            assert!(tokio::time::Instant::now() < deadline, "never swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ...and the packet serves the next order.
        let placed = cluster.place("k2", "pizza", "north").await.expect("place");
        assert_eq!(placed.state, OrderState::Placed as i32);
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    concurrent_orders_place_exactly_the_stock,
    |backend| async move { place_exactly_the_stock(backend, ClusterOptions::default()).await }
);

both_backends!(
    the_batched_engine_places_exactly_the_stock,
    |backend| async move {
        let batched = ClusterOptions {
            batched: true,
            ..ClusterOptions::default()
        };
        place_exactly_the_stock(backend, batched).await
    }
);

/// 200 concurrent orders for 50 packets and 80 agents place exactly 50, replay to the same
/// outcomes, and leave the counts exact.
async fn place_exactly_the_stock(backend: TestBackend, options: ClusterOptions) {
    {
        let cluster = Cluster::start(backend, options).await;
        cluster.add_food("pizza", 50).await;
        cluster.add_agents("north", 80).await;
        let client = cluster.orders().await;
        let orders = (0..200).map(|i| {
            let mut client = client.clone();
            async move {
                client
                    .place_order(PlaceOrderRequest {
                        idempotency_key: format!("load-{i}"),
                        customer_id: format!("c{i}"),
                        food_id: "pizza".into(),
                        zone: "north".into(),
                    })
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        let results = futures::future::join_all(orders).await;
        let mut by_state: HashMap<i32, usize> = HashMap::new();
        let mut first = Vec::new();
        for r in results {
            let o = r.expect("every order gets an answer");
            *by_state.entry(o.state).or_default() += 1;
            first.push(o);
        }
        assert_eq!(
            by_state.get(&(OrderState::Placed as i32)),
            Some(&50),
            "{by_state:?}"
        );
        assert_eq!(
            by_state.get(&(OrderState::NotPlaced as i32)),
            Some(&150),
            "{by_state:?}"
        );
        cluster.assert_invariants_when_quiet(SETTLE).await;
        // Invariant 5: replaying every request gives the same order and outcome.
        let mut client = cluster.orders().await;
        for o in &first {
            let again = client
                .place_order(PlaceOrderRequest {
                    idempotency_key: o.idempotency_key.clone(),
                    customer_id: o.customer_id.clone(),
                    food_id: o.food_id.clone(),
                    zone: o.zone.clone(),
                })
                .await
                .expect("replay")
                .into_inner();
            assert_eq!((&again.order_id, again.state), (&o.order_id, o.state));
        }
        assert_eq!(food_counts(&cluster, "pizza").await, (0, 0, 50));
        assert_eq!(zone_counts(&cluster, "north").await, (30, 0, 50));
        cluster.stop().await;
    }
}

both_backends!(
    recovery_finishes_a_saga_abandoned_after_reserving,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 1).await;
        cluster.add_agents("north", 1).await;
        // A crashed instance reserved both sides and persisted that, then died before assigning.
        let (packet, agent) = reserve_both(&cluster, "ord-crashed", Duration::from_secs(60)).await;
        cluster
            .insert_abandoned_order(
                "ord-crashed",
                "pizza",
                "north",
                "assigning",
                ("reserved", "reserved"),
                (Some(&packet), Some(&agent)),
                0,
            )
            .await;
        let order = cluster.wait_terminal("ord-crashed", SETTLE).await;
        assert_eq!(order.state, OrderState::Placed as i32);
        assert_eq!(
            (order.packet_id.as_str(), order.agent_id.as_str()),
            (packet.as_str(), agent.as_str())
        );
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    recovery_finishes_a_saga_abandoned_before_any_answer,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 1).await;
        cluster.add_agents("north", 1).await;
        // Crashed right after persisting the order, before knowing what was reserved: recovery
        // reserves again (idempotent per order) and completes.
        cluster
            .insert_abandoned_order(
                "ord-early",
                "pizza",
                "north",
                "reserving",
                ("unknown", "unknown"),
                (None, None),
                0,
            )
            .await;
        let order = cluster.wait_terminal("ord-early", SETTLE).await;
        assert_eq!(order.state, OrderState::Placed as i32);
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    recovery_compensates_when_reservations_expired,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 1).await;
        cluster.add_agents("north", 1).await;
        let (packet, agent) = reserve_both(&cluster, "ord-late", Duration::from_secs(1)).await;
        // Wait for the store sweeper to free the expired packet: the crash lasted longer than the TTL.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while food_counts(&cluster, "pizza").await != (1, 0, 0) {
            assert!(tokio::time::Instant::now() < deadline, "never swept");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster
            .insert_abandoned_order(
                "ord-late",
                "pizza",
                "north",
                "assigning",
                ("reserved", "reserved"),
                (Some(&packet), Some(&agent)),
                0,
            )
            .await;
        let order = cluster.wait_terminal("ord-late", SETTLE).await;
        assert_eq!(order.state, OrderState::NotPlaced as i32);
        assert_eq!(
            order.not_placed_reason,
            NotPlacedReason::ReservationExpired as i32
        );
        cluster.assert_invariants_when_quiet(SETTLE).await;
        assert_eq!(food_counts(&cluster, "pizza").await, (1, 0, 0));
        assert_eq!(zone_counts(&cluster, "north").await, (1, 0, 0));
        cluster.stop().await;
    }
);

both_backends!(operators_see_and_fail_stuck_orders, |backend| async move {
    // A long lease keeps the recovery loop away from the abandoned order, like a live but
    // stalled instance.
    let cluster = Cluster::start(backend, ClusterOptions::default()).await;
    cluster.add_food("pizza", 1).await;
    cluster.add_agents("north", 1).await;
    cluster
        .insert_abandoned_order(
            "ord-stuck",
            "pizza",
            "north",
            "reserving",
            ("unknown", "unknown"),
            (None, None),
            FAR_FUTURE_MS,
        )
        .await;
    let mut admin = cluster.order_admin().await;
    let stuck = admin
        .list_stuck_orders(ListStuckOrdersRequest::default())
        .await
        .expect("stuck")
        .into_inner()
        .sagas;
    assert_eq!(stuck.len(), 1);
    assert_eq!(stuck[0].step, "reserving");
    assert_eq!(stuck[0].lease_owner, "dead-instance");
    // Re-driving one takes its lease over and finishes it.
    cluster
        .insert_abandoned_order(
            "ord-redrive",
            "pizza",
            "north",
            "reserving",
            ("unknown", "unknown"),
            (None, None),
            FAR_FUTURE_MS,
        )
        .await;
    let redriven = admin
        .redrive_order(RedriveOrderRequest {
            order_id: "ord-redrive".into(),
        })
        .await
        .expect("redrive")
        .into_inner();
    assert_eq!(redriven.state, OrderState::Placed as i32, "{redriven:?}");
    let failed = admin
        .force_fail_order(ForceFailOrderRequest {
            order_id: "ord-stuck".into(),
        })
        .await
        .expect("force fail")
        .into_inner();
    assert_eq!(failed.state, OrderState::NotPlaced as i32);
    assert_eq!(
        failed.not_placed_reason,
        NotPlacedReason::ForceFailed as i32
    );
    // The force-fail is in the history: the operator's claim, the decision, the releases.
    let history = admin
        .get_order_history(GetOrderHistoryRequest {
            order_id: "ord-stuck".into(),
        })
        .await
        .expect("history")
        .into_inner()
        .events;
    let summary: Vec<_> = history
        .iter()
        .map(|e| (e.kind.as_str(), e.phase_from.as_str(), e.phase_to.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("force_failed", "reserving", "reserving"),
            ("step", "reserving", "compensating"),
            ("step", "compensating", "not_placed"),
        ],
        "{history:#?}"
    );
    assert!(history[1].error.contains("ForceFail"), "{history:#?}");
    let releases: Vec<_> = history[2].calls.iter().map(|c| c.call.as_str()).collect();
    assert_eq!(releases, ["release", "release"], "{history:#?}");
    // Placed orders cannot be failed.
    let err = admin
        .force_fail_order(ForceFailOrderRequest {
            order_id: redriven.order_id,
        })
        .await
        .expect_err("placed");
    assert_eq!(err.code(), Code::FailedPrecondition);
    cluster.assert_invariants_when_quiet(SETTLE).await;
    cluster.stop().await;
});

both_backends!(
    orders_are_listed_newest_first_in_pages,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 3).await;
        cluster.add_agents("north", 5).await;
        for i in 0..5 {
            cluster
                .place(&format!("k{i}"), "pizza", "north")
                .await
                .expect("place");
        }
        let mut client = cluster.order_admin().await;
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_orders(ListOrdersRequest {
                    page_size: 2,
                    page_token: token,
                    state: 0,
                })
                .await
                .expect("list")
                .into_inner();
            assert!(page.orders.len() <= 2);
            seen.extend(page.orders.into_iter().map(|o| o.idempotency_key));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 5);
        let placed = client
            .list_orders(ListOrdersRequest {
                page_size: 10,
                page_token: String::new(),
                state: OrderState::Placed as i32,
            })
            .await
            .expect("list placed")
            .into_inner();
        assert_eq!(placed.orders.len(), 3);
        let err = client
            .list_orders(ListOrdersRequest {
                page_size: 0,
                page_token: "garbage".into(),
                state: 0,
            })
            .await
            .expect_err("bad token");
        assert_eq!(err.code(), Code::InvalidArgument);
        cluster.stop().await;
    }
);

both_backends!(
    admin_input_is_checked_before_anything_is_stored,
    |backend| async move {
        use order_saga_proto::{
            delivery::v1::{
                AddAgentsRequest, GetZoneRequest, delivery_service_client::DeliveryServiceClient,
            },
            store::v1::CreateFoodRequest,
        };
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        let mut store_admin = cluster.store_admin().await;
        for name in ["Pizza\nINFO forged log line", "Pizza\u{1b}[2J", "Pizza\0"] {
            let err = store_admin
                .create_food(CreateFoodRequest {
                    food_id: "pizza".into(),
                    name: name.into(),
                })
                .await
                .expect_err("control characters in a name");
            assert_eq!(err.code(), Code::InvalidArgument, "{name:?}");
            assert!(err.message().contains("control"), "{}", err.message());
        }
        // A refused count must not leave an empty zone behind.
        let mut delivery_admin = cluster.delivery_admin().await;
        for count in [0, -1, 10_001] {
            let err = delivery_admin
                .add_agents(AddAgentsRequest {
                    zone: "atlantis".into(),
                    count,
                })
                .await
                .expect_err("bad count");
            assert_eq!(err.code(), Code::InvalidArgument, "count {count}");
        }
        let err =
            DeliveryServiceClient::connect(format!("http://{}", cluster.delivery_addrs.public))
                .await
                .expect("connect")
                .get_zone(GetZoneRequest {
                    zone: "atlantis".into(),
                })
                .await
                .expect_err("the zone was never created");
        assert_eq!(err.code(), Code::NotFound);
        cluster.stop().await;
    }
);

both_backends!(
    every_write_of_a_saga_is_in_its_history,
    |backend| async move {
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 1).await;
        cluster.add_agents("north", 1).await;
        let order = cluster
            .place("hist-1", "pizza", "north")
            .await
            .expect("place");
        assert_eq!(order.state, OrderState::Placed as i32);
        let mut admin = cluster.order_admin().await;
        let history = |order_id: &str| GetOrderHistoryRequest {
            order_id: order_id.to_owned(),
        };
        let events = admin
            .get_order_history(history(&order.order_id))
            .await
            .expect("history")
            .into_inner()
            .events;
        let summary: Vec<_> = events
            .iter()
            .map(|e| {
                let mut calls: Vec<_> = e
                    .calls
                    .iter()
                    .map(|c| format!("{} {} {}", c.side, c.call, c.code))
                    .collect();
                calls.sort();
                (e.seq, e.epoch, e.kind.as_str(), e.phase_to.as_str(), calls)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, 1, "created", "reserving", vec![]),
                (
                    2,
                    1,
                    "step",
                    "assigning",
                    vec![
                        "delivery reserve Ok".to_owned(),
                        "store reserve Ok".to_owned()
                    ]
                ),
                (
                    3,
                    1,
                    "step",
                    "placed",
                    vec![
                        "delivery assign Ok".to_owned(),
                        "store assign Ok".to_owned()
                    ]
                ),
            ],
            "{events:#?}"
        );
        assert_eq!(events[2].packet_id, order.packet_id);
        assert_eq!(events[2].agent_id, order.agent_id);
        assert!(
            events
                .iter()
                .all(|e| !e.instance.is_empty() && e.at.is_some())
        );

        // A refused order records the refusal and its code.
        let refused = cluster
            .place("hist-2", "pizza", "north")
            .await
            .expect("place");
        assert_eq!(refused.state, OrderState::NotPlaced as i32);
        let events = admin
            .get_order_history(history(&refused.order_id))
            .await
            .expect("history")
            .into_inner()
            .events;
        let codes: Vec<_> = events
            .iter()
            .flat_map(|e| e.calls.iter().map(|c| c.code.as_str()))
            .collect();
        assert!(codes.contains(&"ResourceExhausted"), "{events:#?}");
        assert!(events.iter().any(|e| !e.error.is_empty()), "{events:#?}");

        // Unknown orders are NOT_FOUND; malformed ids INVALID_ARGUMENT.
        let err = admin
            .get_order_history(history("ord-nope"))
            .await
            .expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound);
        let err = admin
            .get_order_history(history("bad id"))
            .await
            .expect_err("malformed");
        assert_eq!(err.code(), Code::InvalidArgument);

        // Retention: nothing is younger than a day; everything is older than -1 s (the future).
        let repo = order_service::repo::OrderRepo::new(cluster.order_db().await);
        assert_eq!(
            repo.prune_history(Duration::from_secs(86_400), 100)
                .await
                .expect("prune"),
            0
        );
        let pruned = repo.prune_history(Duration::ZERO, 2).await.expect("prune");
        assert_eq!(pruned, 2, "one batch");
        repo.prune_history(Duration::ZERO, 100)
            .await
            .expect("prune");
        // A pruned order still exists: an empty history, not NOT_FOUND.
        let events = admin
            .get_order_history(history(&order.order_id))
            .await
            .expect("history")
            .into_inner()
            .events;
        assert!(events.is_empty(), "{events:#?}");
        cluster.stop().await;
    }
);

both_backends!(
    idempotency_keys_belong_to_their_customer,
    |backend| async move {
        // Alice and Bob both use "order-1": two orders, and neither learns of the other's key.
        // (Main refused Bob INVALID_ARGUMENT, "idempotency_key was already used for a different
        // order".)
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 5).await;
        cluster.add_agents("north", 5).await;
        let mut client = cluster.orders().await;
        let request = |customer: &str, food: &str| PlaceOrderRequest {
            idempotency_key: "order-1".into(),
            customer_id: customer.into(),
            food_id: food.into(),
            zone: "north".into(),
        };
        let alice = client
            .place_order(request("alice", "pizza"))
            .await
            .expect("alice")
            .into_inner();
        let bob = client
            .place_order(request("bob", "pizza"))
            .await
            .expect("bob's own order under his own key")
            .into_inner();
        assert_ne!(alice.order_id, bob.order_id);
        assert_eq!(bob.state, OrderState::Placed as i32);
        // Each key still replays within its customer, and guards its customer's parameters.
        let again = client
            .place_order(request("alice", "pizza"))
            .await
            .expect("replay")
            .into_inner();
        assert_eq!(again.order_id, alice.order_id);
        cluster.add_food("soup", 1).await;
        let err = client
            .place_order(request("bob", "soup"))
            .await
            .expect_err("bob reused his key");
        assert_eq!(err.code(), Code::InvalidArgument);
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(
    only_a_placed_orders_delivery_is_completed,
    |backend| async move {
        use order_saga_proto::order::v1::CompleteDeliveryRequest;
        let cluster = Cluster::start(backend, ClusterOptions::default()).await;
        cluster.add_food("pizza", 3).await;
        cluster.add_agents("solo", 1).await;
        let mut admin = cluster.order_admin().await;
        let first = cluster.place("k1", "pizza", "solo").await.expect("place");
        assert_eq!(first.state, OrderState::Placed as i32);
        // The zone's one agent is busy: the next order finds none.
        let second = cluster.place("k2", "pizza", "solo").await.expect("place");
        assert_eq!(second.not_placed_reason, NotPlacedReason::NoAgent as i32);
        // A not-placed order's delivery cannot be completed; an unknown one does not exist.
        let refused = admin
            .complete_delivery(CompleteDeliveryRequest {
                order_id: second.order_id.clone(),
            })
            .await
            .expect_err("not placed");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let unknown = admin
            .complete_delivery(CompleteDeliveryRequest {
                order_id: "ord-none".into(),
            })
            .await
            .expect_err("unknown");
        assert_eq!(unknown.code(), Code::NotFound);
        // The placed order's delivery frees its agent, once; the repeat frees nothing.
        let done = admin
            .complete_delivery(CompleteDeliveryRequest {
                order_id: first.order_id.clone(),
            })
            .await
            .expect("complete")
            .into_inner();
        assert_eq!(done.agent_id, first.agent_id);
        let again = admin
            .complete_delivery(CompleteDeliveryRequest {
                order_id: first.order_id.clone(),
            })
            .await
            .expect("repeat")
            .into_inner();
        assert_eq!(again.agent_id, "");
        assert_eq!(zone_counts(&cluster, "solo").await, (1, 0, 0));
        let history = admin
            .get_order_history(GetOrderHistoryRequest {
                order_id: first.order_id.clone(),
            })
            .await
            .expect("history")
            .into_inner()
            .events;
        assert!(
            history.iter().any(|e| e.kind == "delivery_completed"),
            "{history:#?}"
        );
        // The first order stays placed; its agent serves the next one.
        let third = cluster.place("k3", "pizza", "solo").await.expect("place");
        assert_eq!(third.state, OrderState::Placed as i32);
        assert_eq!(third.agent_id, first.agent_id);
        cluster.assert_invariants_when_quiet(SETTLE).await;
        cluster.stop().await;
    }
);

both_backends!(history_answers_the_newest_events, |backend| async move {
    // A saga retried through a long outage writes many events; the operator needs how it
    // ended. (Main answered the oldest ones: with a limit of two, `created` and the first
    // step.)
    use order_service::repo::OrderRepo;
    let cluster = Cluster::start(backend, ClusterOptions::default()).await;
    cluster.add_food("pizza", 1).await;
    cluster.add_agents("north", 1).await;
    let order = cluster.place("k1", "pizza", "north").await.expect("place");
    let repo = OrderRepo::new(cluster.order_db().await);
    let all = repo.history(&order.order_id, 100).await.expect("history");
    assert!(all.len() >= 3, "{all:#?}");
    let newest = repo.history(&order.order_id, 2).await.expect("history");
    assert_eq!(
        newest,
        all[all.len() - 2..].to_vec(),
        "the newest two, oldest first"
    );
    assert_eq!(newest[1].phase_to, "placed");
    cluster.stop().await;
});

both_backends!(
    a_cancelled_order_write_never_leaves_its_transaction_on_the_connection,
    |backend| async move {
        // One pooled connection, and order writes cancelled at points spread over their
        // transactions (a client whose deadline passes drops the request's future at any
        // await). Had a cancelled write left the connection inside its transaction, the next
        // write on it would run as a savepoint of that transaction: acknowledged, invisible to
        // every other connection, and lost with the connection. (The order repository ran its
        // transactions in the request's future on main; now they run detached.)
        use order_saga_platform::db::{Db, DbOptions};
        use order_service::repo::{Created, NewOrder, OrderRepo};
        let url = order_saga_platform::testing::fresh_database_url(backend, "order").await;
        let one = DbOptions {
            max_connections: 1,
            ..DbOptions::default()
        };
        let repo = OrderRepo::new(
            Db::connect(&url, &one, &order_service::MIGRATOR)
                .await
                .expect("connect"),
        );
        let observer = Db::connect(&url, &one, &order_service::MIGRATOR)
            .await
            .expect("observer");
        let new = |key: String| NewOrder {
            idempotency_key: key,
            customer_id: "c".into(),
            food_id: "pizza".into(),
            zone: "north".into(),
        };
        let lease = Duration::from_secs(30);
        let mut cancelled = 0;
        for i in 0..400u64 {
            let cut = Duration::from_micros((i * 7919) % 400);
            let (victim_id, victim) = (format!("ord-v{i}"), new(format!("v{i}")));
            let write = repo.create(&victim_id, &victim, "me", lease);
            if tokio::time::timeout(cut, write).await.is_err() {
                cancelled += 1;
            }
            let id = format!("ord-k{i}");
            match repo
                .create(&id, &new(format!("k{i}")), "me", lease)
                .await
                .expect("create")
            {
                Created::New(_) => {}
                Created::Existing(o) => panic!("key k{i} existed: {o:?}"),
            }
            let seen: Option<String> =
                sqlx::query_scalar("SELECT order_id FROM orders WHERE order_id = $1")
                    .bind(&id)
                    .fetch_optional(observer.pool())
                    .await
                    .expect("observe");
            assert_eq!(
                seen.as_deref(),
                Some(id.as_str()),
                "iteration {i}: an acknowledged order is invisible to other connections"
            );
        }
        assert!(cancelled > 0, "the test cancelled writes mid-flight");
    }
);

both_backends!(
    order_reads_have_their_own_connections,
    |backend| async move {
        // The writes' only connection is held by a transaction; lookups and history through
        // the read pool still answer at once.
        use order_saga_platform::db::{Db, DbOptions};
        use order_service::repo::{Created, NewOrder, OrderRepo};
        let url = order_saga_platform::testing::fresh_database_url(backend, "order").await;
        let one = DbOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(300),
            ..DbOptions::default()
        };
        let db = Db::connect(&url, &one, &order_service::MIGRATOR)
            .await
            .expect("connect");
        let reads = Db::connect_reader(&url, &one).await.expect("reader");
        let repo = OrderRepo::new(db.clone()).reading_from(reads);
        let order = NewOrder {
            idempotency_key: "k".into(),
            customer_id: "c".into(),
            food_id: "pizza".into(),
            zone: "north".into(),
        };
        let lease = Duration::from_secs(30);
        let Created::New(created) = repo
            .create("ord-1", &order, "me", lease)
            .await
            .expect("create")
        else {
            panic!("a new key found an order");
        };
        let mut held = db.pool().begin().await.expect("begin");
        sqlx::query("UPDATE orders SET updated_at = updated_at")
            .execute(&mut *held)
            .await
            .expect("write");
        assert!(
            OrderRepo::new(db.clone()).by_id("ord-1").await.is_err(),
            "the writes' pool is exhausted"
        );
        let found = repo.by_id("ord-1").await.expect("read").expect("order");
        assert_eq!(found.order_id, created.order_id);
        let by_key = repo.by_key("c", "k").await.expect("read").expect("order");
        assert_eq!(by_key.order_id, created.order_id);
        assert_eq!(repo.history("ord-1", 10).await.expect("history").len(), 1);
        held.rollback().await.expect("rollback");
    }
);

both_backends!(
    batched_saga_writes_answer_each_write_as_if_alone,
    |backend| async move {
        // Creations and persists queued together share transactions (on PostgreSQL, three set
        // statements each): every write still gets its own answer. A replayed key answers the
        // order that took it, a persist behind a stale fence loses its lease alone, and each
        // write that happened has exactly one history event.
        use order_saga_platform::db::{Db, DbOptions};
        use order_saga_saga::Phase;
        use order_service::{
            history::{EventKind, Transition},
            repo::{Created, NewOrder, OrderRepo, RepoError},
        };
        let url = order_saga_platform::testing::fresh_database_url(backend, "order").await;
        let db = Db::connect(&url, &DbOptions::default(), &order_service::MIGRATOR)
            .await
            .expect("connect");
        let repo = OrderRepo::with_write_batch(db.clone(), 128);
        let lease = Duration::from_secs(30);
        // 24 creations; orders 20..24 reuse the keys of orders 0..4 (same customers).
        let key = |i: usize| if i >= 20 { i - 20 } else { i };
        let creates = (0..24).map(|i| {
            let repo = repo.clone();
            async move {
                let order = NewOrder {
                    idempotency_key: format!("k{}", key(i)),
                    customer_id: format!("c{}", key(i)),
                    food_id: "pizza".into(),
                    zone: "north".into(),
                };
                (
                    i,
                    repo.create(&format!("ord-{i}"), &order, "me", lease).await,
                )
            }
        });
        let mut records = HashMap::new();
        let mut existing = HashMap::new();
        for (i, created) in futures::future::join_all(creates).await {
            match created.expect("create") {
                Created::New(record) => {
                    records.insert(key(i), record);
                }
                Created::Existing(record) => {
                    existing.insert(key(i), record);
                }
            }
        }
        assert_eq!(records.len(), 20, "one new order per key");
        assert_eq!(
            existing.len(),
            4,
            "each replayed key answers the order that took it"
        );
        for (k, record) in &existing {
            assert_eq!(record.order_id, records[k].order_id, "key k{k}");
        }
        // Persist every order: even keys with their fence, odd keys behind a stale epoch.
        let commits_before = order_saga_platform::testing::commits(&db).await;
        let persists = records.values().map(|record| {
            let repo = repo.clone();
            let k: usize = record.request.idempotency_key[1..].parse().expect("key");
            let mut next = record.clone();
            next.saga.phase = Phase::Assigning;
            next.attempts = 1;
            if k % 2 == 1 {
                next.epoch -= 1;
            }
            let transition = Transition {
                kind: EventKind::Step,
                from: Some(Phase::Reserving),
                calls: Vec::new(),
                error: None,
            };
            async move { (k, repo.persist(&next, "me", lease, &transition).await) }
        });
        for (k, persisted) in futures::future::join_all(persists).await {
            match (k % 2, persisted) {
                (0, Ok(row)) => {
                    assert_eq!(row.saga.phase, Phase::Assigning, "k{k}");
                    assert_eq!(row.attempts, 1, "k{k}");
                }
                (1, Err(RepoError::LostLease(id))) => assert_eq!(id, records[&k].order_id),
                (_, other) => panic!("k{k}: {other:?}"),
            }
        }
        // On PostgreSQL, count the commits: 20 persists queued at once took far fewer.
        if let Some(before) = commits_before {
            let used = order_saga_platform::testing::commits(&db)
                .await
                .expect("commits")
                - before;
            assert!(used < 20, "20 persists took {used} commits");
        }
        for (k, record) in &records {
            let stored = repo
                .by_id(&record.order_id)
                .await
                .expect("read")
                .expect("order");
            let events = repo.history(&record.order_id, 10).await.expect("history");
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            if k % 2 == 0 {
                assert_eq!(stored.saga.phase, Phase::Assigning, "k{k}");
                assert_eq!(kinds, ["created", "step"], "k{k}");
                assert_eq!(seqs, [1, 2], "k{k}");
            } else {
                assert_eq!(
                    stored.saga.phase,
                    Phase::Reserving,
                    "k{k}: a stale fence wrote"
                );
                assert_eq!(kinds, ["created"], "k{k}");
            }
        }
    }
);

/// `n` new orders created and persisted to `Assigning` at once, as sagas do under load.
async fn create_and_persist(repo: &order_service::repo::OrderRepo, round: usize, n: usize) {
    use order_saga_saga::Phase;
    use order_service::{
        history::{EventKind, Transition},
        repo::{Created, NewOrder},
    };
    let lease = Duration::from_secs(30);
    let creates = (0..n).map(|i| async move {
        let order = NewOrder {
            idempotency_key: format!("k{round}-{i}"),
            customer_id: "c".into(),
            food_id: "pizza".into(),
            zone: "north".into(),
        };
        let id = format!("ord-{round}-{i}");
        match repo.create(&id, &order, "me", lease).await.expect("create") {
            Created::New(record) => record,
            Created::Existing(record) => panic!("{id}: a new key found {record:?}"),
        }
    });
    let records = futures::future::join_all(creates).await;
    let persists = records.into_iter().map(|record| async move {
        let mut next = record.clone();
        next.saga.phase = Phase::Assigning;
        let transition = Transition {
            kind: EventKind::Step,
            from: Some(Phase::Reserving),
            calls: Vec::new(),
            error: None,
        };
        repo.persist(&next, "me", lease, &transition)
            .await
            .expect("persist");
    });
    futures::future::join_all(persists).await;
}

/// A fresh database's order tables are empty when the first batches run on a connection, and
/// grow under load without an ANALYZE in between (this machine's server runs without
/// autovacuum). A cached generic plan of a set statement, costed on the empty table, scanned
/// the whole table on every batch ever after: the bench decayed from 925 orders/s to 280 in
/// five minutes. The set statements are planned for each batch, so they find rows by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_saga_writes_find_rows_by_key_after_the_tables_grow() {
    use order_saga_platform::db::{Db, DbOptions};
    let url =
        order_saga_platform::testing::fresh_database_url(TestBackend::Postgres, "order").await;
    // One connection: every statement runs on it often enough for PostgreSQL to settle on a
    // cached plan (after five executions of a prepared statement).
    let options = DbOptions {
        max_connections: 1,
        ..DbOptions::default()
    };
    let db = Db::connect(&url, &options, &order_service::MIGRATOR)
        .await
        .expect("connect");
    let repo = order_service::repo::OrderRepo::with_write_batch(db.clone(), 128);
    for round in 0..12 {
        create_and_persist(&repo, round, 6).await;
    }
    // The tables grow to what a few minutes of load leave behind, with no ANALYZE.
    sqlx::query(
        "INSERT INTO orders (order_id, idempotency_key, customer_id, food_id, zone, state, \
           phase, store_leg, delivery_leg, created_at, updated_at) \
         SELECT 'old-' || i, 'old-' || i, 'c', 'pizza', 'north', 'placed', 'placed', \
           'assigned', 'assigned', i, i FROM generate_series(1, 60000) AS i",
    )
    .execute(db.pool())
    .await
    .expect("grow orders");
    sqlx::query(
        "INSERT INTO saga_events (order_id, seq, epoch, instance, kind, phase_to, at) \
         SELECT 'old-' || (i / 3), i % 3 + 1, 1, 'me', 'step', 'placed', i \
         FROM generate_series(3, 180002) AS i",
    )
    .execute(db.pool())
    .await
    .expect("grow history");
    let before = (
        order_saga_platform::testing::seq_scans(&db, "orders").await,
        order_saga_platform::testing::seq_scans(&db, "saga_events").await,
    );
    for round in 100..104 {
        create_and_persist(&repo, round, 6).await;
    }
    let after = (
        order_saga_platform::testing::seq_scans(&db, "orders").await,
        order_saga_platform::testing::seq_scans(&db, "saga_events").await,
    );
    assert_eq!(
        after, before,
        "(orders, saga_events) whole-table scans: the batches after the tables grew scanned \
         them instead of finding their rows by key"
    );
}
