//! A batch of saga writes as three set-based statements (PostgreSQL).
//!
//! One by one, a batch costs two statements per write (the orders row and its history event),
//! each a round trip its writer waits for. Here a batch of writes for distinct orders costs
//! one insert of every new order, one fenced update of every persisted saga and one insert of
//! every history event, whatever its size. The writes travel as one JSON parameter
//! (`jsonb_to_recordset`), so no SQL is assembled from values. The rules are those of the
//! single writes ([`super::writes`]): an insert that conflicts reads the order its key names
//! (one by one: replays are rare), and a persist whose fence returns no row is a lost lease
//! for that saga alone.
//!
//! Every set statement runs unprepared (`persistent(false)`), so PostgreSQL plans it for each
//! batch against its tables as they are then. A prepared statement's cached generic plan is
//! costed once, by the table's size at that moment: made on a fresh database's empty table it
//! joined the set to a sequential scan, kept it while the table grew, and a bench run decayed
//! from 925 orders/s in its first minute to 280 in its fifth (the set persist read 0.57 of
//! the orders table's pages a call, 4,490 at minute five). A batch shares its planning among
//! its writes.

use std::collections::HashMap;

use serde_json::json;
use sqlx::{AnyConnection, AssertSqlSafe, any::AnyRow};

use super::{COLUMNS, Created, OrderRecord, RepoError, decode, ms};
use crate::history::{EventKind, Transition};
use order_saga_platform::db::Db;
use order_saga_saga::Phase;

use super::writes::{SagaWrite, SagaWriter, SagaWritten};

/// The set statements, rendered once for PostgreSQL.
#[derive(Debug)]
pub(super) struct SetSql {
    insert: String,
    persist: String,
    append: String,
}

impl SetSql {
    pub(super) fn new(db: &Db) -> Self {
        Self {
            insert: db.sql(&format!(
                "INSERT INTO orders (order_id, idempotency_key, customer_id, food_id, zone, state, \
                   phase, store_leg, delivery_leg, attempts, lease_owner, lease_expires_at, \
                   epoch, created_at, updated_at) \
                 SELECT r.order_id, r.idempotency_key, r.customer_id, r.food_id, r.zone, \
                   'pending', 'reserving', 'unknown', 'unknown', 0, r.owner, {{now}} + r.lease, \
                   1, {{now}}, {{now}} \
                 FROM jsonb_to_recordset($1::jsonb) AS r(order_id text, idempotency_key text, \
                   customer_id text, food_id text, zone text, owner text, lease bigint) \
                 ORDER BY r.order_id \
                 ON CONFLICT DO NOTHING \
                 RETURNING {COLUMNS}"
            )),
            // The fence's phase test names the terminal phases rather than the unfinished ones
            // (the same rows: every other phase is unfinished): written as `UNFINISHED`, it
            // matches the predicate of `orders_unfinished`, and the planner AND-ed a scan of
            // that whole index (every saga in flight, and the dead entries of each lease
            // renewal) to the key lookup: 6.6 ms a batch instead of well under one.
            persist: db.sql(&format!(
                "UPDATE orders o SET state = r.state, phase = r.phase, store_leg = r.store_leg, \
                   delivery_leg = r.delivery_leg, packet_id = r.packet_id, agent_id = r.agent_id, \
                   reason = r.reason, detail = r.detail, last_transient = r.last_transient, \
                   attempts = r.attempts, last_error = r.last_error, \
                   lease_expires_at = {{now}} + r.lease, updated_at = {{now}} \
                 FROM jsonb_to_recordset($1::jsonb) AS r(order_id text, owner text, state text, \
                   phase text, store_leg text, delivery_leg text, packet_id text, agent_id text, \
                   reason text, detail text, last_transient text, attempts bigint, \
                   last_error text, lease bigint, epoch bigint) \
                 WHERE o.order_id = r.order_id AND o.lease_owner = r.owner \
                   AND o.epoch = r.epoch AND o.phase NOT IN ('placed', 'not_placed') \
                   AND o.order_id = ANY(ARRAY( \
                     SELECT x->>'order_id' FROM jsonb_array_elements($1::jsonb) x)) \
                 RETURNING {}",
                qualified("o")
            )),
            // As the single append: the orders row each event belongs to is locked by this
            // transaction, so MAX(seq) + 1 is unique (one event per order in a set).
            append: db.sql(
                "INSERT INTO saga_events (order_id, seq, epoch, kind, phase_from, phase_to, calls, \
                   packet_id, agent_id, error, instance, at) \
                 SELECT r.order_id, \
                   COALESCE((SELECT MAX(e.seq) FROM saga_events e WHERE e.order_id = r.order_id), 0) + 1, \
                   r.epoch, r.kind, r.phase_from, r.phase_to, r.calls, r.packet_id, r.agent_id, \
                   r.error, r.instance, {now} \
                 FROM jsonb_to_recordset($1::jsonb) AS r(order_id text, epoch bigint, kind text, \
                   phase_from text, phase_to text, calls text, packet_id text, agent_id text, \
                   error text, instance text)",
            ),
        }
    }
}

/// [`COLUMNS`], each qualified with `table` (an `UPDATE ... FROM` names two tables).
fn qualified(table: &str) -> String {
    COLUMNS
        .split(',')
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows a set statement returned, decoded and keyed by order id. A row this very
/// statement wrote cannot be corrupt; if one is, the batch fails and every write of it is run
/// again alone.
fn by_order_id(rows: &[AnyRow]) -> Result<HashMap<String, OrderRecord>, sqlx::Error> {
    rows.iter()
        .map(|row| match decode(row) {
            Ok(record) => Ok((record.order_id.clone(), record)),
            Err(RepoError::Db(e)) => Err(e),
            Err(other) => Err(sqlx::Error::Protocol(other.to_string())),
        })
        .collect()
}

/// The history event of a write of `record`, as one element of the append's JSON parameter.
fn event(record: &OrderRecord, transition: &Transition) -> serde_json::Value {
    let calls = (!transition.calls.is_empty())
        .then(|| serde_json::to_string(&transition.calls).expect("call records serialise"));
    json!({
        "order_id": record.order_id,
        "epoch": record.epoch,
        "kind": transition.kind.as_str(),
        "phase_from": transition.from.map(Phase::as_str),
        "phase_to": record.saga.phase.as_str(),
        "calls": calls,
        "packet_id": record.saga.store.unit,
        "agent_id": record.saga.delivery.unit,
        "error": transition.error,
        "instance": record.lease_owner.as_deref().unwrap_or_default(),
    })
}

impl SagaWriter {
    /// Runs `writes` (each for a different order) in the caller's transaction as sets; the
    /// answers are in the order of `writes`. A database error fails the whole batch.
    pub(super) async fn run_set(
        &self,
        conn: &mut AnyConnection,
        set: &SetSql,
        writes: &[SagaWrite],
    ) -> Result<Vec<Result<SagaWritten, RepoError>>, sqlx::Error> {
        let mut answers: Vec<Option<Result<SagaWritten, RepoError>>> =
            (0..writes.len()).map(|_| None).collect();
        let mut events = Vec::with_capacity(writes.len());
        let creates: Vec<_> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                SagaWrite::Create {
                    order_id,
                    order,
                    owner,
                    lease,
                } => Some((i, order_id, order, owner, lease)),
                SagaWrite::Persist { .. } => None,
            })
            .collect();
        if !creates.is_empty() {
            let rows: Vec<_> = creates
                .iter()
                .map(|(_, order_id, order, owner, lease)| {
                    json!({
                        "order_id": order_id,
                        "idempotency_key": order.idempotency_key,
                        "customer_id": order.customer_id,
                        "food_id": order.food_id,
                        "zone": order.zone,
                        "owner": owner,
                        "lease": ms(**lease),
                    })
                })
                .collect();
            let inserted = sqlx::query(AssertSqlSafe(set.insert.as_str()))
                .bind(serde_json::Value::from(rows).to_string())
                .persistent(false)
                .fetch_all(&mut *conn)
                .await?;
            let mut created = by_order_id(&inserted)?;
            for (i, order_id, order, _, _) in creates {
                answers[i] = Some(match created.remove(order_id.as_str()) {
                    Some(record) => {
                        events.push(event(&record, &Transition::claim(EventKind::Created, None)));
                        Ok(SagaWritten::Created(Created::New(record)))
                    }
                    None => match self.existing(conn, order_id, order).await {
                        Err(RepoError::Db(e)) => return Err(e),
                        answer => answer.map(SagaWritten::Created),
                    },
                });
            }
        }
        let persists: Vec<_> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                SagaWrite::Persist {
                    record,
                    owner,
                    lease,
                    transition,
                } => Some((i, record, owner, lease, transition)),
                SagaWrite::Create { .. } => None,
            })
            .collect();
        if !persists.is_empty() {
            let rows: Vec<_> = persists
                .iter()
                .map(|(_, record, owner, lease, _)| {
                    let saga = &record.saga;
                    json!({
                        "order_id": record.order_id,
                        "owner": owner,
                        "state": record.state().as_str(),
                        "phase": saga.phase.as_str(),
                        "store_leg": saga.store.state.as_str(),
                        "delivery_leg": saga.delivery.state.as_str(),
                        "packet_id": saga.store.unit,
                        "agent_id": saga.delivery.unit,
                        "reason": saga.reason.map(|r| r.as_str()),
                        "detail": record.detail,
                        "last_transient": saga.last_transient.map(|s| s.as_str()),
                        "attempts": record.attempts,
                        "last_error": record.last_error,
                        "lease": (!saga.phase.is_terminal()).then(|| ms(**lease)),
                        "epoch": record.epoch,
                    })
                })
                .collect();
            let updated = sqlx::query(AssertSqlSafe(set.persist.as_str()))
                .bind(serde_json::Value::from(rows).to_string())
                .persistent(false)
                .fetch_all(&mut *conn)
                .await?;
            let mut persisted = by_order_id(&updated)?;
            for (i, record, _, _, transition) in persists {
                answers[i] = Some(match persisted.remove(&record.order_id) {
                    Some(written) => {
                        events.push(event(&written, transition));
                        Ok(SagaWritten::Persisted(written))
                    }
                    None => Err(RepoError::LostLease(record.order_id.clone())),
                });
            }
        }
        if !events.is_empty() {
            sqlx::query(AssertSqlSafe(set.append.as_str()))
                .bind(serde_json::Value::from(events).to_string())
                .persistent(false)
                .execute(&mut *conn)
                .await?;
        }
        Ok(answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| Err(RepoError::Corrupt(String::new(), "unanswered".into())))
            })
            .collect())
    }
}
