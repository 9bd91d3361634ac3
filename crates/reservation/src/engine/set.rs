//! A batch of writes as a handful of set-based statements (PostgreSQL).
//!
//! Run one by one, a batch costs three statements per reserve and one per assign, each a round
//! trip the single writer waits for, so a batch's length grows with its size. Here a batch of
//! writes for distinct orders costs the same few statements whatever its size: one anchors
//! every reserving order's claim, one reads what any of them already holds, one claims free
//! units for all of them (per pool, in arrival order), one assigns every assign, and one moves
//! the counts of every pool touched ([`Deltas::apply`]). The requests travel as one JSON
//! parameter (`jsonb_to_recordset`), so no SQL is assembled from values.
//!
//! What stays one by one, because it is rare and its rules are subtle: releases, a reserve of
//! an order that already holds a unit (a retry: renew or return it), and the takeover of an
//! expired reservation when no unit is free. The answers are those of running the writes one by
//! one in some order: releases first (a release and a reserve of distinct orders commute, and
//! a unit a release frees may go to a claim of the same batch), then reserves in arrival order
//! (the earliest get a pool's last units, as with [`Writer::run_batch`]'s loop), then assigns
//! (of units reserved before the batch: an order's reserve and assign never share a batch,
//! since every order id in a set batch is distinct).
//!
//! Every set statement runs unprepared (`persistent(false)`), so each batch is planned against
//! the tables as they are: a cached generic plan is costed once, and one costed on an empty
//! table keeps scanning it as it grows (measured at the order database:
//! `order_service::repo::sets`).

use std::collections::{HashMap, HashSet};

use serde_json::json;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::{CountsDelta, Deltas, EngineError, Reservation, Write, Writer, Written};

/// The set statements, rendered once for PostgreSQL.
#[derive(Debug)]
pub(super) struct SetQueries {
    /// Inserts or locks the claims row of every order in `$1` (a JSON array of ids, sorted so
    /// that rows are locked in one order), returning each tombstone.
    anchor: String,
    /// The orders of `$1` that hold a unit here.
    holders: String,
    /// Claims free units for `$1` (`[{seq, order_id, pool, ttl}]`): per pool, as many as
    /// asked, skipping locked units, paired with the requests in `seq` order.
    claim: String,
    /// Assigns every live reservation of `$1` (`[{order_id, unit_id}]`). Every set statement
    /// names the rows it changes by `= ANY(ARRAY(...))` as well as by its join, so the rows are
    /// found through their key whatever the planner estimates for the set (100 rows).
    assign: String,
    /// Moves the counts of every pool in `$1` (`[{pool, a, r, s, t}]`), locking the rows in
    /// pool order first.
    counts: String,
}

impl SetQueries {
    pub(super) fn new(db: &order_saga_platform::db::Db) -> Self {
        Self {
            anchor: db.sql(
                "INSERT INTO claims (order_id, released_at, created_at) \
                 SELECT r.order_id, NULL, {now} \
                 FROM jsonb_array_elements_text($1::jsonb) AS r(order_id) ORDER BY r.order_id \
                 ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id \
                 RETURNING order_id, released_at",
            ),
            // `= ANY(ARRAY(...))` is an index condition whatever the planner estimates; a
            // join with the set read `units_one_per_order` from its start (a merge join).
            holders: "SELECT order_id FROM units WHERE order_id = \
                 ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))"
                .to_owned(),
            // `picked` is materialised, so each unit is locked once, by the index walk of its
            // pool (`units_free`, as the single claim does); the outer WHERE re-checks the row.
            claim: db.sql(
                "WITH req AS ( \
                   SELECT r.seq, r.order_id, r.pool, r.ttl, \
                     row_number() OVER (PARTITION BY r.pool ORDER BY r.seq) AS rn \
                   FROM jsonb_to_recordset($1::jsonb) \
                     AS r(seq bigint, order_id text, pool text, ttl bigint) \
                 ), picked AS MATERIALIZED ( \
                   SELECT f.unit_id, w.pool, \
                     row_number() OVER (PARTITION BY w.pool ORDER BY f.unit_id) AS rn \
                   FROM (SELECT pool, COUNT(*) AS n FROM req GROUP BY pool ORDER BY pool) w \
                   CROSS JOIN LATERAL ( \
                     SELECT unit_id FROM units WHERE pool = w.pool AND status = 'available' \
                     ORDER BY unit_id LIMIT w.n {skip_locked}) f \
                 ) \
                 UPDATE units u SET status = 'reserved', order_id = req.order_id, \
                   expires_at = {now} + req.ttl, updated_at = {now} \
                 FROM picked JOIN req ON req.pool = picked.pool AND req.rn = picked.rn \
                 WHERE u.unit_id = picked.unit_id AND u.status = 'available' \
                   AND u.unit_id = ANY(ARRAY(SELECT unit_id FROM picked)) \
                 RETURNING req.seq, u.unit_id, u.pool, u.expires_at",
            ),
            assign: db.sql(
                "UPDATE units u SET status = 'assigned', expires_at = NULL, updated_at = {now} \
                 FROM jsonb_to_recordset($1::jsonb) AS r(order_id text, unit_id text) \
                 WHERE u.unit_id = r.unit_id AND u.order_id = r.order_id \
                   AND u.status = 'reserved' AND u.expires_at > {now} \
                   AND u.unit_id = ANY(ARRAY( \
                     SELECT x->>'unit_id' FROM jsonb_array_elements($1::jsonb) x)) \
                 RETURNING r.order_id, u.pool",
            ),
            counts: "WITH d AS ( \
                   SELECT * FROM jsonb_to_recordset($1::jsonb) \
                     AS d(pool text, a bigint, r bigint, s bigint, t bigint) \
                 ), locked AS MATERIALIZED ( \
                   SELECT p.pool FROM pools p WHERE p.pool IN (SELECT pool FROM d) \
                   ORDER BY p.pool FOR UPDATE \
                 ) \
                 UPDATE pools p SET available = p.available + d.a, reserved = p.reserved + d.r, \
                   assigned = p.assigned + d.s, retired = p.retired + d.t \
                 FROM d JOIN locked ON locked.pool = d.pool WHERE p.pool = d.pool"
                .to_owned(),
        }
    }

    /// Applies the counts changes of a transaction in one statement.
    pub(super) async fn apply(
        &self,
        conn: &mut AnyConnection,
        deltas: Deltas,
    ) -> Result<(), EngineError> {
        if deltas.0.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = deltas
            .0
            .into_iter()
            .map(|(pool, d)| {
                json!({"pool": pool, "a": d.available, "r": d.reserved, "s": d.assigned, "t": d.retired})
            })
            .collect();
        sqlx::query(AssertSqlSafe(self.counts.as_str()))
            .bind(serde_json::Value::from(rows).to_string())
            .persistent(false)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Whether `writes` may run as sets: every write names a different order.
pub(super) fn distinct_orders(writes: &[Write]) -> bool {
    let mut seen = HashSet::with_capacity(writes.len());
    writes.iter().all(|w| seen.insert(w.order_id()))
}

impl Writer {
    /// Runs `writes` (each for a different order, see [`distinct_orders`]) in the caller's
    /// transaction, as sets where it can; the answers are in the order of `writes`. A database
    /// error fails the whole batch.
    pub(super) async fn run_set(
        &self,
        conn: &mut AnyConnection,
        writes: &[Write],
        deltas: &mut Deltas,
    ) -> Result<Vec<Result<Written, EngineError>>, EngineError> {
        let set = self
            .sql
            .set
            .as_ref()
            .ok_or_else(|| bad_row("backend (set statements are PostgreSQL's)"))?;
        let mut answers: Vec<Option<Result<Written, EngineError>>> =
            (0..writes.len()).map(|_| None).collect();
        // Releases one by one, first.
        for (i, write) in writes.iter().enumerate() {
            if let Write::Release { .. } = write {
                answers[i] = Some(business(self.write_in(conn, write, deltas).await)?);
            }
        }
        self.reserve_set(conn, set, writes, &mut answers, deltas)
            .await?;
        self.assign_set(conn, set, writes, &mut answers, deltas)
            .await?;
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| bad_row("answer (a write went unanswered)")))
            .collect()
    }

    /// Every reserve of `writes`: anchored together, then claimed together unless the order
    /// holds a unit already or nothing free was visible (then one by one, as [`Writer::reserve_in`]).
    async fn reserve_set(
        &self,
        conn: &mut AnyConnection,
        set: &SetQueries,
        writes: &[Write],
        answers: &mut [Option<Result<Written, EngineError>>],
        deltas: &mut Deltas,
    ) -> Result<(), EngineError> {
        let reserves: Vec<(usize, &str, &str, i64)> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                Write::Reserve {
                    order_id,
                    pool,
                    ttl_ms,
                } => Some((i, order_id.as_str(), pool.as_str(), *ttl_ms)),
                _ => None,
            })
            .collect();
        if reserves.is_empty() {
            return Ok(());
        }
        let ids = |of: &[(usize, &str, &str, i64)]| {
            let mut ids: Vec<&str> = of.iter().map(|r| r.1).collect();
            ids.sort_unstable();
            serde_json::to_string(&ids).expect("ids serialise")
        };
        let anchored: Vec<(String, Option<i64>)> =
            sqlx::query_as(AssertSqlSafe(set.anchor.as_str()))
                .bind(ids(&reserves))
                .persistent(false)
                .fetch_all(&mut *conn)
                .await?;
        let released: HashSet<String> = anchored
            .into_iter()
            .filter_map(|(order, at)| at.map(|_| order))
            .collect();
        let mut fresh = Vec::with_capacity(reserves.len());
        for r in reserves {
            if released.contains(r.1) {
                answers[r.0] = Some(Err(EngineError::Released(r.1.to_owned())));
            } else {
                fresh.push(r);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let holders: HashSet<String> = sqlx::query_scalar(AssertSqlSafe(set.holders.as_str()))
            .bind(ids(&fresh))
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let mut claimants = Vec::with_capacity(fresh.len());
        for (i, order_id, pool, ttl_ms) in fresh {
            if holders.contains(order_id) {
                let held = self.reserve_in(conn, order_id, pool, ttl_ms, deltas).await;
                answers[i] = Some(business(held.map(Written::Claimed))?);
            } else {
                claimants.push((i, order_id, pool, ttl_ms));
            }
        }
        if claimants.is_empty() {
            return Ok(());
        }
        fail::fail_point!("participant-reserve-before-claim");
        let requests: Vec<_> = claimants
            .iter()
            .map(|&(i, order_id, pool, ttl)| {
                json!({"seq": i, "order_id": order_id, "pool": pool, "ttl": ttl})
            })
            .collect();
        let claimed: Vec<(i64, String, String, i64)> =
            sqlx::query_as(AssertSqlSafe(set.claim.as_str()))
                .bind(serde_json::Value::from(requests).to_string())
                .persistent(false)
                .fetch_all(&mut *conn)
                .await?;
        let mut granted: HashMap<usize, (String, i64)> = HashMap::with_capacity(claimed.len());
        for (seq, unit_id, pool, expires_at) in claimed {
            let seq = usize::try_from(seq).map_err(|_| bad_row("seq"))?;
            deltas.add(
                &pool,
                CountsDelta {
                    available: -1,
                    reserved: 1,
                    ..CountsDelta::default()
                },
            );
            granted.insert(seq, (unit_id, expires_at));
        }
        for (i, order_id, pool, ttl_ms) in claimants {
            let reservation = match granted.remove(&i) {
                Some((unit_id, expires_at)) => Some(Reservation {
                    unit_id,
                    expires_at_ms: Some(expires_at),
                }),
                // Nothing free was visible: an expired reservation, if any, one by one.
                None => self.claim_expired_in(conn, order_id, pool, ttl_ms).await?,
            };
            answers[i] = Some(Ok(Written::Claimed(reservation)));
        }
        Ok(())
    }

    /// Every assign of `writes`, in one statement.
    async fn assign_set(
        &self,
        conn: &mut AnyConnection,
        set: &SetQueries,
        writes: &[Write],
        answers: &mut [Option<Result<Written, EngineError>>],
        deltas: &mut Deltas,
    ) -> Result<(), EngineError> {
        let assigns: Vec<(usize, &str, &str)> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                Write::Assign { order_id, unit_id } => {
                    Some((i, order_id.as_str(), unit_id.as_str()))
                }
                _ => None,
            })
            .collect();
        if assigns.is_empty() {
            return Ok(());
        }
        let requests: Vec<_> = assigns
            .iter()
            .map(|&(_, order_id, unit_id)| json!({"order_id": order_id, "unit_id": unit_id}))
            .collect();
        let done: HashMap<String, String> = sqlx::query_as(AssertSqlSafe(set.assign.as_str()))
            .bind(serde_json::Value::from(requests).to_string())
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        for (i, order_id, _) in assigns {
            let assigned = match done.get(order_id) {
                Some(pool) => {
                    deltas.add(
                        pool,
                        CountsDelta {
                            reserved: -1,
                            assigned: 1,
                            ..CountsDelta::default()
                        },
                    );
                    true
                }
                None => false,
            };
            answers[i] = Some(Ok(Written::Assigned(assigned)));
        }
        Ok(())
    }
}

/// A write's answer, unless it is a database error: that fails the whole batch (its
/// transaction is aborted).
fn business(
    answer: Result<Written, EngineError>,
) -> Result<Result<Written, EngineError>, EngineError> {
    match answer {
        Err(EngineError::Db(e)) => Err(EngineError::Db(e)),
        answer => Ok(answer),
    }
}

/// A row of a set statement that cannot be decoded: a bug, reported as a database error.
fn bad_row(what: &str) -> EngineError {
    EngineError::Db(sqlx::Error::Protocol(format!(
        "a set statement returned a bad {what}"
    )))
}
