//! Saga history: how each saga got where it is.
//!
//! Every write of the orders row (creation, every claim, every step a driver persists) appends
//! one event to `saga_events` **in the same transaction** ([`crate::repo`] does both), so the
//! history holds exactly the transitions that happened: a write refused by the fence appends
//! nothing, and no event survives a rolled-back write. Events carry the epoch and instance of
//! the driver that wrote them, the phase before and after, the calls of the round with their
//! status codes and latencies, the units held, the error and the database time.
//!
//! Events older than the retention are deleted by [`prune`]'s loop (`ORDER_HISTORY_RETENTION`).

use std::time::Duration;

use order_saga_platform::db::Db;
use order_saga_saga::{Call, Phase, Side};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, Row, any::AnyRow};

/// Why an event was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `PlaceOrder` created the order (epoch 1).
    Created,
    /// The recovery loop claimed the saga after its lease ran out.
    Recovered,
    /// A client waiting on the order took the expired saga over.
    TakenOver,
    /// An operator's redrive claimed the saga.
    Redriven,
    /// An operator's force-fail claimed the saga and decided it `NOT_PLACED`.
    ForceFailed,
    /// A driver persisted a step: the answers of one round of calls.
    Step,
    /// An operator completed the delivery of the placed order: its agent was freed.
    DeliveryCompleted,
}

impl EventKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Recovered => "recovered",
            EventKind::TakenOver => "taken_over",
            EventKind::Redriven => "redriven",
            EventKind::ForceFailed => "force_failed",
            EventKind::Step => "step",
            EventKind::DeliveryCompleted => "delivery_completed",
        }
    }
}

/// One participant call of a step and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// `store` or `delivery`.
    pub side: String,
    /// `reserve`, `assign` or `release`.
    pub call: String,
    /// The gRPC status code name (`Ok`, `Unavailable`, ...).
    pub code: String,
    /// The unit a reserve returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// How long the call took, in milliseconds.
    pub ms: u64,
    /// The status message of a failed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CallRecord {
    /// A call on `side` that answered `code` after `elapsed`.
    pub fn new(side: Side, call: Call, code: tonic::Code, elapsed: Duration) -> Self {
        Self {
            side: side.as_str().to_owned(),
            call: call.as_str().to_owned(),
            code: format!("{code:?}"),
            unit: None,
            ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            error: None,
        }
    }
}

/// What a write appends besides the row it writes (the rest comes from the written row).
#[derive(Debug, Clone)]
pub struct Transition {
    /// Why.
    pub kind: EventKind,
    /// The phase before the write (`None` at creation).
    pub from: Option<Phase>,
    /// The calls whose answers this step applies.
    pub calls: Vec<CallRecord>,
    /// What went wrong, if anything (a refusal, a transient failure, the retry deadline).
    pub error: Option<String>,
}

impl Transition {
    /// A claim or creation: no calls, the phase unchanged.
    pub fn claim(kind: EventKind, phase: Option<Phase>) -> Self {
        Self {
            kind,
            from: phase,
            calls: Vec::new(),
            error: None,
        }
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    /// Position in the order's history, from 1.
    pub seq: i64,
    /// The fencing epoch of the writer.
    pub epoch: i64,
    /// Why ([`EventKind::as_str`]).
    pub kind: String,
    /// Phase before (empty at creation).
    pub phase_from: Option<String>,
    /// Phase after.
    pub phase_to: String,
    /// The step's calls.
    pub calls: Vec<CallRecord>,
    /// Packet held after the write.
    pub packet_id: Option<String>,
    /// Agent held after the write.
    pub agent_id: Option<String>,
    /// Error text.
    pub error: Option<String>,
    /// The instance that wrote it.
    pub instance: String,
    /// Database time of the write (Unix ms).
    pub at: i64,
}

/// The history statements, rendered once for the backend.
#[derive(Debug)]
pub(crate) struct HistorySql {
    pub append: String,
    pub read: String,
    pub prune: String,
}

impl HistorySql {
    pub fn new(db: &Db) -> Self {
        Self {
            // The row lock the same transaction's orders write holds serialises writers of one
            // order, so MAX(seq) + 1 is unique. `order_id` is bound twice ($1, $11) and the
            // parameters appear in order: SQLite numbers `$N` parameters by first appearance.
            append: db.sql(
                "INSERT INTO saga_events (order_id, seq, epoch, kind, phase_from, phase_to, calls, \
                   packet_id, agent_id, error, instance, at) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, {now} \
                 FROM saga_events WHERE order_id = $11",
            ),
            read: "SELECT seq, epoch, kind, phase_from, phase_to, calls, packet_id, agent_id, \
                     error, instance, at FROM saga_events WHERE order_id = $1 \
                   ORDER BY seq DESC LIMIT $2"
                .to_owned(),
            prune: db.sql(
                "DELETE FROM saga_events WHERE (order_id, seq) IN ( \
                   SELECT order_id, seq FROM saga_events WHERE at <= {now_once} - $1 \
                   ORDER BY at LIMIT $2)",
            ),
        }
    }
}

/// The event `transition` describes, written by `owner` at `epoch`, after which the saga is
/// `phase` holding `packet` and `agent`.
pub(crate) struct Append<'a> {
    pub order_id: &'a str,
    pub epoch: i64,
    pub phase: Phase,
    pub packet: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub owner: &'a str,
    pub transition: &'a Transition,
}

pub(crate) async fn append(
    sql: &HistorySql,
    conn: &mut sqlx::AnyConnection,
    event: Append<'_>,
) -> Result<(), sqlx::Error> {
    let t = event.transition;
    let calls = (!t.calls.is_empty())
        .then(|| serde_json::to_string(&t.calls).expect("call records serialise"));
    sqlx::query(AssertSqlSafe(sql.append.as_str()))
        .bind(event.order_id)
        .bind(event.epoch)
        .bind(t.kind.as_str())
        .bind(t.from.map(Phase::as_str))
        .bind(event.phase.as_str())
        .bind(calls)
        .bind(event.packet.map(str::to_owned))
        .bind(event.agent.map(str::to_owned))
        .bind(t.error.clone())
        .bind(event.owner)
        .bind(event.order_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The newest `limit` events of `order_id`, oldest first (a saga retried through a long outage
/// writes many; the operator wants how it ended).
pub(crate) async fn read(
    sql: &HistorySql,
    db: &Db,
    order_id: &str,
    limit: i64,
) -> Result<Vec<HistoryEvent>, sqlx::Error> {
    let rows = sqlx::query(AssertSqlSafe(sql.read.as_str()))
        .bind(order_id)
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    let mut events = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    events.reverse();
    Ok(events)
}

fn decode(row: &AnyRow) -> Result<HistoryEvent, sqlx::Error> {
    let calls: Option<String> = row.try_get("calls")?;
    let calls = match calls {
        Some(json) => serde_json::from_str(&json).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        None => Vec::new(),
    };
    Ok(HistoryEvent {
        seq: row.try_get("seq")?,
        epoch: row.try_get("epoch")?,
        kind: row.try_get("kind")?,
        phase_from: row.try_get("phase_from")?,
        phase_to: row.try_get("phase_to")?,
        calls,
        packet_id: row.try_get("packet_id")?,
        agent_id: row.try_get("agent_id")?,
        error: row.try_get("error")?,
        instance: row.try_get("instance")?,
        at: row.try_get("at")?,
    })
}

/// Deletes up to `batch` events older than `retention` (database clock); how many it deleted.
pub(crate) async fn prune(
    sql: &HistorySql,
    db: &Db,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let done = sqlx::query(AssertSqlSafe(sql.prune.as_str()))
        .bind(retention_ms)
        .bind(batch)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}
