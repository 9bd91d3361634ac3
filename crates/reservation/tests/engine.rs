//! The participant engine against real databases, on both backends.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use order_saga_platform::{
    both_backends,
    db::{Db, DbOptions},
    testing::{TestBackend, commits, fresh_database_url},
};
use order_saga_reservation::{Engine, EngineConfig, EngineError, MIGRATOR};

async fn engine(backend: TestBackend) -> Engine {
    let url = fresh_database_url(backend, "engine").await;
    let db = Db::connect(
        &url,
        &DbOptions {
            max_connections: 32,
            ..DbOptions::default()
        },
        &MIGRATOR,
    )
    .await
    .expect("connect test database");
    // Tests use short TTLs so expiry happens within the test.
    let config = EngineConfig {
        min_ttl: Duration::from_millis(1),
        ..EngineConfig::new("pkt")
    };
    Engine::new(db, config)
}

async fn pool_with(engine: &Engine, pool: &str, units: i64) {
    engine.create_pool(pool, pool).await.expect("create pool");
    engine.add_units(pool, units).await.expect("add units");
}

const LONG: Duration = Duration::from_secs(60);

/// Waits (polling the database clock, not sleeping blindly) until `unit`'s reservation expired.
async fn wait_expired(engine: &Engine, unit: &str) {
    let sql = engine.db().sql(
        "SELECT CASE WHEN expires_at <= {now} THEN 'yes' ELSE 'no' END FROM units WHERE unit_id = $1",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let expired: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .bind(unit)
            .fetch_one(engine.db().pool())
            .await
            .expect("read unit");
        if expired == "yes" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reservation never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

both_backends!(racing_reserves_claim_each_unit_once, |backend| async move {
    let engine = engine(backend).await;
    pool_with(&engine, "pizza", 10).await;
    let racers = (0..64).map(|i| {
        let engine = engine.clone();
        async move { engine.reserve(&format!("order-{i}"), "pizza", LONG).await }
    });
    let results = futures::future::join_all(racers).await;
    let mut units = HashSet::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(res) => assert!(units.insert(res.unit_id), "a unit was claimed twice"),
            Err(EngineError::Exhausted(_) | EngineError::Contended(_)) => refused += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(units.len(), 10, "exactly the 10 units are claimed");
    assert_eq!(refused, 54);
    let info = engine.pool_info("pizza").await.expect("info");
    assert_eq!((info.counts.available, info.counts.reserved), (0, 10));
});

both_backends!(reserve_is_idempotent_per_order, |backend| async move {
    let engine = engine(backend).await;
    pool_with(&engine, "pizza", 3).await;
    let first = engine.reserve("o1", "pizza", LONG).await.expect("reserve");
    let again = engine
        .reserve("o1", "pizza", LONG)
        .await
        .expect("reserve again");
    assert_eq!(first.unit_id, again.unit_id);
    assert_eq!(
        engine
            .pool_info("pizza")
            .await
            .expect("info")
            .counts
            .reserved,
        1
    );
    // Concurrent repeats of one order still hold one unit.
    let repeats = (0..8).map(|_| engine.reserve("o2", "pizza", LONG));
    let units: HashSet<String> = futures::future::join_all(repeats)
        .await
        .into_iter()
        .map(|r| r.expect("reserve").unit_id)
        .collect();
    assert_eq!(units.len(), 1);
    assert_eq!(
        engine
            .pool_info("pizza")
            .await
            .expect("info")
            .counts
            .reserved,
        2
    );
});

both_backends!(
    assign_succeeds_once_held_and_repeats,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 2).await;
        let r = engine.reserve("o1", "pizza", LONG).await.expect("reserve");
        engine.assign("o1", &r.unit_id).await.expect("assign");
        engine
            .assign("o1", &r.unit_id)
            .await
            .expect("repeat assign succeeds");
        // Another order cannot assign a unit it does not hold.
        assert!(matches!(
            engine.assign("o2", &r.unit_id).await,
            Err(EngineError::NotHeld(_))
        ));
        assert!(matches!(
            engine.assign("o1", "pkt-nope").await,
            Err(EngineError::NotHeld(_))
        ));
        let info = engine.pool_info("pizza").await.expect("info");
        assert_eq!(
            (
                info.counts.available,
                info.counts.reserved,
                info.counts.assigned
            ),
            (1, 0, 1)
        );
    }
);

both_backends!(assign_after_expiry_fails, |backend| async move {
    let engine = engine(backend).await;
    pool_with(&engine, "pizza", 1).await;
    let r = engine
        .reserve("o1", "pizza", Duration::from_millis(50))
        .await
        .expect("reserve");
    wait_expired(&engine, &r.unit_id).await;
    match engine.assign("o1", &r.unit_id).await {
        Err(EngineError::NotHeld(why)) => assert!(why.contains("expired"), "{why}"),
        other => panic!("assign after expiry must fail, got {other:?}"),
    }
    // The expired unit is free for anyone, even before the sweeper runs.
    let other = engine
        .reserve("o2", "pizza", LONG)
        .await
        .expect("reserve expired unit");
    assert_eq!(other.unit_id, r.unit_id);
    assert!(engine.assign("o1", &r.unit_id).await.is_err());
    engine
        .assign("o2", &r.unit_id)
        .await
        .expect("new holder assigns");
});

both_backends!(
    release_is_idempotent_and_undoes_assignment,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 1).await;
        let r = engine.reserve("o1", "pizza", LONG).await.expect("reserve");
        engine.assign("o1", &r.unit_id).await.expect("assign");
        assert_eq!(
            engine.release("o1").await.expect("release"),
            Some(r.unit_id.clone())
        );
        assert_eq!(engine.release("o1").await.expect("release again"), None);
        let info = engine.pool_info("pizza").await.expect("info");
        assert_eq!((info.counts.available, info.counts.assigned), (1, 0));
        // A released order cannot assign nor reserve again.
        assert!(matches!(
            engine.assign("o1", &r.unit_id).await,
            Err(EngineError::NotHeld(_))
        ));
        assert!(matches!(
            engine.reserve("o1", "pizza", LONG).await,
            Err(EngineError::Released(_))
        ));
    }
);

both_backends!(
    release_before_reserve_leaves_a_tombstone,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 1).await;
        assert_eq!(engine.release("late").await.expect("release"), None);
        assert!(matches!(
            engine.reserve("late", "pizza", LONG).await,
            Err(EngineError::Released(_))
        ));
        assert_eq!(
            engine
                .pool_info("pizza")
                .await
                .expect("info")
                .counts
                .available,
            1
        );
    }
);

both_backends!(
    release_racing_reserve_leaves_nothing_held,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 20).await;
        // Each order's reserve and release race; whichever wins, nothing stays held.
        let races = (0..20).map(|i| {
            let engine = engine.clone();
            async move {
                let id = format!("o{i}");
                let (reserve, release) =
                    tokio::join!(engine.reserve(&id, "pizza", LONG), engine.release(&id));
                release.expect("release never fails");
                if reserve.is_ok() {
                    // The reserve won the race; the release came after and freed it... or the
                    // release won and the reserve was refused. Either way a second release is a no-op.
                    engine.release(&id).await.expect("release");
                }
            }
        });
        futures::future::join_all(races).await;
        let info = engine.pool_info("pizza").await.expect("info");
        assert_eq!((info.counts.available, info.counts.reserved), (20, 0));
    }
);

both_backends!(
    release_racing_assign_leaves_one_state,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 16).await;
        let mut reservations = Vec::new();
        for i in 0..16 {
            reservations.push(
                engine
                    .reserve(&format!("o{i}"), "pizza", LONG)
                    .await
                    .expect("reserve"),
            );
        }
        let races = reservations.iter().enumerate().map(|(i, r)| {
            let engine = engine.clone();
            let unit = r.unit_id.clone();
            async move {
                let id = format!("o{i}");
                let (assign, release) =
                    tokio::join!(engine.assign(&id, &unit), engine.release(&id));
                release.expect("release");
                assign.is_ok()
            }
        });
        futures::future::join_all(races).await;
        // Release always wins in the end: either it ran after the assign and undid it, or the
        // assign ran after it and was refused.
        let info = engine.pool_info("pizza").await.expect("info");
        assert_eq!(
            (
                info.counts.available,
                info.counts.reserved,
                info.counts.assigned
            ),
            (16, 0, 0)
        );
    }
);

both_backends!(
    sweeper_frees_only_expired_reservations,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 3).await;
        let short = engine
            .reserve("short", "pizza", Duration::from_millis(50))
            .await
            .expect("reserve");
        let long = engine
            .reserve("long", "pizza", LONG)
            .await
            .expect("reserve");
        let assigned = engine
            .reserve("done", "pizza", Duration::from_millis(50))
            .await
            .expect("reserve");
        engine
            .assign("done", &assigned.unit_id)
            .await
            .expect("assign");
        wait_expired(&engine, &short.unit_id).await;
        // Two sweepers at once free the expired reservation exactly once between them.
        let (a, b) = tokio::join!(engine.sweep(100), engine.sweep(100));
        let mut freed = a.expect("sweep");
        freed.extend(b.expect("sweep"));
        assert_eq!(freed, vec![short.unit_id.clone()]);
        assert!(engine.sweep(100).await.expect("sweep").is_empty());
        engine
            .assign("long", &long.unit_id)
            .await
            .expect("unexpired reservation survives");
        let info = engine.pool_info("pizza").await.expect("info");
        assert_eq!(
            (
                info.counts.available,
                info.counts.reserved,
                info.counts.assigned
            ),
            (1, 0, 2)
        );
        // The swept order may reserve again (no tombstone: it was never released).
        engine
            .reserve("short", "pizza", LONG)
            .await
            .expect("reserve again after sweep");
    }
);

both_backends!(bad_input_is_refused, |backend| async move {
    let engine = engine(backend).await;
    pool_with(&engine, "pizza", 1).await;
    assert!(matches!(
        engine.reserve("o", "nope", LONG).await,
        Err(EngineError::UnknownPool(_))
    ));
    assert!(matches!(
        engine
            .reserve("o", "pizza", Duration::from_secs(7200))
            .await,
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.add_units("pizza", 0).await,
        Err(EngineError::InvalidArgument(_))
    ));
    assert!(matches!(
        engine.add_units("nope", 1).await,
        Err(EngineError::UnknownPool(_))
    ));
    assert!(matches!(
        engine.create_pool("pizza", "again").await,
        Err(EngineError::PoolExists(_))
    ));
    engine.create_pool("empty", "empty").await.expect("create");
    assert!(matches!(
        engine.reserve("o", "empty", LONG).await,
        Err(EngineError::Exhausted(_))
    ));
});

both_backends!(
    concurrent_sweepers_free_each_reservation_once,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 40).await;
        let mut last = String::new();
        for i in 0..40 {
            last = engine
                .reserve(&format!("o{i}"), "pizza", Duration::from_millis(20))
                .await
                .expect("reserve")
                .unit_id;
        }
        wait_expired(&engine, &last).await;
        // Four sweepers drain the backlog in small batches at the same time.
        let sweepers = (0..4).map(|_| {
            let engine = engine.clone();
            async move {
                let mut freed = Vec::new();
                loop {
                    let batch = engine.sweep(3).await.expect("sweep");
                    if batch.is_empty() {
                        return freed;
                    }
                    freed.extend(batch);
                }
            }
        });
        let freed: Vec<String> = futures::future::join_all(sweepers)
            .await
            .into_iter()
            .flatten()
            .collect();
        let distinct: HashSet<&String> = freed.iter().collect();
        assert_eq!(distinct.len(), freed.len(), "a reservation was swept twice");
        assert_eq!(freed.len(), 40);
    }
);

both_backends!(
    a_cancelled_call_never_leaves_its_transaction_on_the_connection,
    |backend| async move {
        // One pooled connection, so every call reuses the one a cancelled call used. A client
        // that gives up (its deadline passes, it disconnects) drops the handler's future at
        // any await. If the server were left inside that call's transaction, the next
        // autocommit write on the connection (an assign) would join it: acknowledged, yet
        // invisible to every other connection, and lost when the connection closes.
        let url = fresh_database_url(backend, "engine").await;
        let options = DbOptions {
            max_connections: 1,
            ..DbOptions::default()
        };
        let db = Db::connect(&url, &options, &MIGRATOR)
            .await
            .expect("connect");
        let engine = Engine::new(db, EngineConfig::new("pkt"));
        pool_with(&engine, "p", 400).await;
        let observer = Db::connect(&url, &options, &MIGRATOR)
            .await
            .expect("observer");
        let assigned_to =
            observer.sql("SELECT order_id FROM units WHERE unit_id = $1 AND status = 'assigned'");
        let mut cancelled = 0;
        for i in 0..300u64 {
            let (victim, order) = (format!("cancelled-{i}"), format!("order-{i}"));
            let unit = engine.reserve(&order, "p", LONG).await.expect("reserve");
            // Cancel a reserve and a release at points spread over their transactions.
            let cut = Duration::from_micros(20 + (i * 7919) % 1500);
            if tokio::time::timeout(cut, engine.reserve(&victim, "p", LONG))
                .await
                .is_err()
            {
                cancelled += 1;
            }
            if tokio::time::timeout(cut, engine.release(&victim))
                .await
                .is_err()
            {
                cancelled += 1;
            }
            // An acknowledged autocommit write must be visible to another connection at once.
            engine.assign(&order, &unit.unit_id).await.expect("assign");
            let holder: Option<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(assigned_to.clone()))
                    .bind(&unit.unit_id)
                    .fetch_optional(observer.pool())
                    .await
                    .expect("observe");
            assert_eq!(
                holder.as_deref(),
                Some(order.as_str()),
                "iteration {i}: an acknowledged assignment is invisible to other connections \
                 (the connection was left inside a cancelled call's transaction)"
            );
        }
        assert!(cancelled > 0, "the test cancelled calls mid-flight");
    }
);

/// Right after a restock the claim must read one entry of the partial index `units_free`, not
/// sort the pool: `add_units` refreshes the planner's statistics. Without that, a table whose
/// statistics predate the restock (autovacuum visits a database at most once a minute) got a
/// cached plan that walked `units_by_pool_status` and sorted every free unit on each claim
/// (with 16 pools, as the bench stocks them; it fails that way without the `ANALYZE`).
#[tokio::test]
async fn claim_reads_the_free_index_right_after_a_restock() {
    let engine = engine(TestBackend::Postgres).await;
    for i in 0..16 {
        pool_with(&engine, &format!("food-{i}"), 3_000).await;
    }
    let mut conn = engine.db().pool().acquire().await.expect("connection");
    // The plan a prepared claim settles on (prepared statements switch to it after five runs).
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .expect("set plan cache mode");
    sqlx::query(
        "PREPARE claim(text) AS SELECT unit_id FROM units \
         WHERE pool = $1 AND status = 'available' ORDER BY unit_id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .execute(&mut *conn)
    .await
    .expect("prepare");
    let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE claim('food-3')")
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("units_free") && !plan.contains("Sort"),
        "the claim sorts the pool instead of reading units_free:\n{plan}"
    );
}

both_backends!(
    claims_are_forgotten_after_their_retention,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 3).await;
        engine
            .reserve("kept", "pizza", LONG)
            .await
            .expect("reserve");
        engine
            .reserve("gone", "pizza", LONG)
            .await
            .expect("reserve");
        engine.release("gone").await.expect("release");
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM claims")
                .fetch_one(engine.db().pool())
                .await
                .expect("count claims")
        };
        assert_eq!(count().await, 2);
        // Nothing is as old as an hour.
        let forgotten = engine
            .forget_claims(Duration::from_secs(3600), 100)
            .await
            .expect("forget");
        assert_eq!(forgotten, 0);
        // With no retention both go, in batches of one.
        let mut forgotten = 0;
        for _ in 0..3 {
            forgotten += engine
                .forget_claims(Duration::ZERO, 1)
                .await
                .expect("forget");
        }
        assert_eq!(forgotten, 2);
        assert_eq!(count().await, 0);
        // The held unit is untouched: forgetting a claim frees nothing.
        let again = engine
            .reserve("kept", "pizza", LONG)
            .await
            .expect("reserve");
        assert!(again.expires_at_ms.is_some(), "still the same reservation");
        assert_eq!(
            engine
                .pool_info("pizza")
                .await
                .expect("info")
                .counts
                .reserved,
            1
        );
    }
);

/// The pool's maintained counts against the units themselves.
async fn counted(engine: &Engine, pool: &str) -> (i64, i64, i64) {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM units WHERE pool = $1 GROUP BY status")
            .bind(pool)
            .fetch_all(engine.db().pool())
            .await
            .expect("count units");
    let of = |s: &str| rows.iter().find(|r| r.0 == s).map_or(0, |r| r.1);
    (of("available"), of("reserved"), of("assigned"))
}

async fn maintained(engine: &Engine, pool: &str) -> (i64, i64, i64) {
    sqlx::query_as("SELECT available, reserved, assigned FROM pools WHERE pool = $1")
        .bind(pool)
        .fetch_one(engine.db().pool())
        .await
        .expect("read counts")
}

both_backends!(
    counts_are_maintained_through_every_change,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 30).await;
        // Many orders at once, each through a different path: assigned, released after
        // reserving, released after assigning, completed, expired and swept, repeated.
        let work = (0..40).map(|i| {
            let engine = engine.clone();
            async move {
                let id = format!("o{i}");
                let ttl = if i % 6 == 4 {
                    Duration::from_millis(30)
                } else {
                    LONG
                };
                let Ok(r) = engine.reserve(&id, "pizza", ttl).await else {
                    return;
                };
                match i % 6 {
                    0 => engine.assign(&id, &r.unit_id).await.expect("assign"),
                    1 => drop(engine.release(&id).await.expect("release")),
                    2 => {
                        engine.assign(&id, &r.unit_id).await.expect("assign");
                        engine.release(&id).await.expect("release");
                    }
                    3 => {
                        engine.assign(&id, &r.unit_id).await.expect("assign");
                        engine.assign(&id, &r.unit_id).await.expect("repeat");
                        engine.complete(&id).await.expect("complete");
                        engine.complete(&id).await.expect("repeat");
                    }
                    4 => {}
                    _ => drop(engine.reserve(&id, "pizza", LONG).await),
                }
            }
        });
        futures::future::join_all(work).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while counted(&engine, "pizza").await != maintained(&engine, "pizza").await
            || !engine.sweep(100).await.expect("sweep").is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "counts {:?}, units {:?}",
                maintained(&engine, "pizza").await,
                counted(&engine, "pizza").await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (a, r, s) = counted(&engine, "pizza").await;
        assert_eq!(a + r + s, 30, "units conserved");
        assert_eq!(maintained(&engine, "pizza").await, (a, r, s));
    }
);

both_backends!(
    a_repeated_reserve_renews_a_reservation_nobody_took,
    |backend| async move {
        // A driver recovering a saga reserves again; the unit the order still holds must come
        // back with a fresh expiry, so the assign that follows is not refused for a
        // reservation that ran out while nobody drove the saga. (Main returned the unit but
        // kept its expiry, and the assign failed "expired".)
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 1).await;
        let first = engine
            .reserve("o1", "pizza", Duration::from_millis(50))
            .await
            .expect("reserve");
        wait_expired(&engine, &first.unit_id).await;
        let again = engine.reserve("o1", "pizza", LONG).await.expect("renew");
        assert_eq!(again.unit_id, first.unit_id, "the same unit");
        assert!(again.expires_at_ms > first.expires_at_ms, "a later expiry");
        engine
            .assign("o1", &again.unit_id)
            .await
            .expect("the renewed reservation is assignable");
        // An assigned unit is returned as it is.
        let assigned = engine.reserve("o1", "pizza", LONG).await.expect("repeat");
        assert_eq!(assigned.expires_at_ms, None);
    }
);

both_backends!(
    completion_frees_only_an_assignment_and_refuses_a_late_reserve,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "north", 1).await;
        // Nothing held: a no-op that still refuses a late reserve.
        assert_eq!(engine.complete("never").await.expect("complete"), None);
        assert!(matches!(
            engine.reserve("never", "north", LONG).await,
            Err(EngineError::Released(_))
        ));
        let r = engine.reserve("o1", "north", LONG).await.expect("reserve");
        assert!(matches!(
            engine.complete("o1").await,
            Err(EngineError::NotAssigned(_))
        ));
        engine.assign("o1", &r.unit_id).await.expect("assign");
        assert_eq!(
            engine.complete("o1").await.expect("complete"),
            Some(r.unit_id.clone())
        );
        assert_eq!(engine.complete("o1").await.expect("repeat"), None);
        assert!(matches!(
            engine.reserve("o1", "north", LONG).await,
            Err(EngineError::Released(_))
        ));
        let next = engine.reserve("o2", "north", LONG).await.expect("reserve");
        assert_eq!(next.unit_id, r.unit_id, "the agent serves the next order");
        let completed: Option<i64> =
            sqlx::query_scalar("SELECT completed_at FROM claims WHERE order_id = 'o1'")
                .fetch_one(engine.db().pool())
                .await
                .expect("claim");
        assert!(completed.is_some());
        // A completion that freed nothing records none (only the tombstone): invariant 6
        // reads `completed_at` as "a completion freed this order's unit".
        let nothing: Option<i64> =
            sqlx::query_scalar("SELECT completed_at FROM claims WHERE order_id = 'never'")
                .fetch_one(engine.db().pool())
                .await
                .expect("claim");
        assert_eq!(nothing, None);
    }
);

both_backends!(
    old_assignments_are_retired_and_still_counted,
    |backend| async move {
        let engine = engine(backend).await;
        pool_with(&engine, "pizza", 5).await;
        for i in 0..3 {
            let id = format!("o{i}");
            let r = engine.reserve(&id, "pizza", LONG).await.expect("reserve");
            engine.assign(&id, &r.unit_id).await.expect("assign");
        }
        engine
            .reserve("held", "pizza", LONG)
            .await
            .expect("reserve");
        assert_eq!(
            engine
                .retire_assigned(Duration::from_secs(3600), 100)
                .await
                .expect("retire"),
            0,
            "nothing is an hour old"
        );
        let mut retired = 0;
        for _ in 0..4 {
            retired += engine
                .retire_assigned(Duration::ZERO, 2)
                .await
                .expect("retire");
        }
        assert_eq!(retired, 3, "only the assigned units, in batches");
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM units WHERE pool = 'pizza'")
            .fetch_one(engine.db().pool())
            .await
            .expect("count");
        assert_eq!(left, 2, "the table keeps only the live units");
        let c = engine.pool_info("pizza").await.expect("info").counts;
        assert_eq!(
            (c.available, c.reserved, c.assigned, c.retired),
            (1, 1, 0, 3)
        );
    }
);

both_backends!(
    public_reads_have_their_own_connections,
    |backend| async move {
        // The writer pool's only connection is held by a transaction; a count read through the
        // public read pool still answers at once.
        let url = fresh_database_url(backend, "engine").await;
        let one = DbOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(300),
            ..DbOptions::default()
        };
        let db = Db::connect(&url, &one, &MIGRATOR).await.expect("connect");
        let engine = Engine::new(db.clone(), EngineConfig::new("pkt"));
        pool_with(&engine, "pizza", 3).await;
        let public = engine.reading_from(Db::connect_reader(&url, &one).await.expect("reader"));
        let mut held = db.pool().begin().await.expect("begin");
        sqlx::query("UPDATE pools SET name = name WHERE pool = 'pizza'")
            .execute(&mut *held)
            .await
            .expect("write");
        assert!(
            engine.pool_info("pizza").await.is_err(),
            "the writer pool is exhausted"
        );
        let info = public.pool_info("pizza").await.expect("public read");
        assert_eq!(info.counts.available, 3);
        held.rollback().await.expect("rollback");
    }
);

both_backends!(
    writes_queued_together_share_a_commit_and_keep_their_own_answers,
    |backend| async move {
        let engine = engine(backend).await;
        for pool in ["a", "b", "c"] {
            pool_with(&engine, pool, 20).await;
        }
        engine.reserve("gone", "a", LONG).await.expect("reserve");
        engine.release("gone").await.expect("release");
        let commits_before = commits(engine.db()).await;
        // 60 orders over three pools, plus a released order and an unknown pool in the same
        // batches: each request gets its own answer, and each granted unit is the one the
        // database says the order holds, in the pool it asked for.
        let pools = ["a", "b", "c"];
        let reserves = (0..60).map(|i| {
            let engine = engine.clone();
            let pool = pools[i % 3];
            async move {
                (
                    i,
                    pool,
                    engine.reserve(&format!("order-{i}"), pool, LONG).await,
                )
            }
        });
        let odd_ones = async {
            (
                engine.reserve("gone", "a", LONG).await,
                engine.reserve("lost", "nowhere", LONG).await,
            )
        };
        let (granted, (gone, lost)) =
            futures::future::join(futures::future::join_all(reserves), odd_ones).await;
        // Counted before the checks below, whose reads are transactions too.
        let commits_after = commits(engine.db()).await;
        assert!(matches!(gone, Err(EngineError::Released(_))), "{gone:?}");
        assert!(matches!(lost, Err(EngineError::UnknownPool(_))), "{lost:?}");
        for (i, pool, answer) in granted {
            let unit = answer
                .expect("20 units per pool, 20 orders per pool")
                .unit_id;
            let (holder, held_pool): (Option<String>, String) =
                sqlx::query_as("SELECT order_id, pool FROM units WHERE unit_id = $1")
                    .bind(&unit)
                    .fetch_one(engine.db().pool())
                    .await
                    .expect("unit");
            assert_eq!(
                holder.as_deref(),
                Some(format!("order-{i}").as_str()),
                "{unit}"
            );
            assert_eq!(held_pool, pool);
        }
        for pool in pools {
            assert_eq!(maintained(&engine, pool).await, (0, 20, 0));
            assert_eq!(counted(&engine, pool).await, (0, 20, 0));
        }
        // On PostgreSQL, count the commits: 62 reserves queued at once took far fewer.
        if let (Some(before), Some(after)) = (commits_before, commits_after) {
            let used = after - before;
            assert!(used < 40, "62 reserves took {used} commits");
        }
    }
);

both_backends!(
    a_batch_of_every_kind_of_write_answers_each_as_if_alone,
    |backend| async move {
        // Reserves, assigns and releases of different orders queued at once share
        // transactions (on PostgreSQL, set statements), and each still gets the answer it
        // would get alone: a retried reserve keeps its unit, an assign of a unit the order does
        // not hold is refused, a release frees its unit, a released order's reserve is
        // refused, an order holding another pool's unit is refused, new orders get units of
        // their own, and the pool's counts stay exact.
        let engine = engine(backend).await;
        pool_with(&engine, "p", 10).await;
        pool_with(&engine, "q", 1).await;
        let mut before = HashMap::new();
        for order in ["held", "to-assign", "unassigned", "to-release", "gone"] {
            let unit = engine
                .reserve(order, "p", LONG)
                .await
                .expect("reserve")
                .unit_id;
            before.insert(order, unit);
        }
        engine.release("gone").await.expect("release");
        engine
            .reserve("other-pool", "q", LONG)
            .await
            .expect("reserve q");
        let held = engine.reserve("held", "p", LONG);
        let assign = engine.assign("to-assign", &before["to-assign"]);
        let stranger = engine.assign("stranger", &before["unassigned"]);
        let release = engine.release("to-release");
        let gone = engine.reserve("gone", "p", LONG);
        let other = engine.reserve("other-pool", "p", LONG);
        let fresh = futures::future::join_all((0..5).map(|i| {
            let engine = engine.clone();
            async move { engine.reserve(&format!("new-{i}"), "p", LONG).await }
        }));
        let (held, assign, stranger, release, gone, other, fresh) =
            tokio::join!(held, assign, stranger, release, gone, other, fresh);
        assert_eq!(held.expect("retried reserve").unit_id, before["held"]);
        assign.expect("assign");
        assert!(
            matches!(stranger, Err(EngineError::NotHeld(_))),
            "{stranger:?}"
        );
        assert_eq!(
            release.expect("release"),
            Some(before["to-release"].clone())
        );
        assert!(matches!(gone, Err(EngineError::Released(_))), "{gone:?}");
        assert!(
            matches!(other, Err(EngineError::InvalidArgument(_))),
            "{other:?}"
        );
        let mut units = HashSet::new();
        for (i, answer) in fresh.into_iter().enumerate() {
            let unit = answer.expect("a free unit").unit_id;
            let holder: Option<String> =
                sqlx::query_scalar("SELECT order_id FROM units WHERE unit_id = $1")
                    .bind(&unit)
                    .fetch_one(engine.db().pool())
                    .await
                    .expect("unit");
            assert_eq!(holder, Some(format!("new-{i}")), "{unit}");
            assert!(units.insert(unit), "a unit granted twice");
        }
        // held, unassigned and the five new orders reserve; to-assign is assigned.
        assert_eq!(counted(&engine, "p").await, (2, 7, 1));
        assert_eq!(maintained(&engine, "p").await, (2, 7, 1));
        assert_eq!(maintained(&engine, "q").await, (0, 1, 0));
    }
);
