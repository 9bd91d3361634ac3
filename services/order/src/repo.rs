//! The orders table: creation, fenced saga persistence, claims and queries.
//!
//! Fencing (docs/design.md, "Leases and fencing"): every claim of a saga (creation, a recovery
//! claim, a waiting client's take-over, an operator's take-over) increments the row's `epoch`
//! and hands the new value to exactly one driver. Every write of that driver is conditional on
//! `lease_owner`, `epoch` **and** a non-terminal phase, so a driver that was superseded (even
//! by the same instance, or by a second process configured with the same instance id) has its
//! next write refused with [`RepoError::LostLease`] and stops; a terminal row is never
//! rewritten.
//!
//! Domain types only: prost types never reach this module.

use std::time::Duration;

use order_saga_platform::{
    db::{Backend, Db, detached},
    group_commit::{GroupCommit, GroupCommitConfig},
};

mod sets;
mod writes;

use writes::{SagaWrite, SagaWriter, SagaWritten};

use crate::history::{self, Append, EventKind, HistoryEvent, HistorySql, Transition};
use order_saga_saga::{Leg, LegState, Phase, Reason, Saga, Side};
use sqlx::{AssertSqlSafe, Row, any::AnyRow};

/// The customer-facing state of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// The saga is running.
    Pending,
    /// Packet and agent assigned.
    Placed,
    /// Not placed; nothing stays held (releases may still be in flight).
    NotPlaced,
}

impl OrderState {
    /// The state customers see for a saga phase. A compensating saga is already `NotPlaced`:
    /// the decision is final, only the releases remain.
    pub fn of(phase: Phase) -> Self {
        match phase {
            Phase::Reserving | Phase::Assigning => OrderState::Pending,
            Phase::Placed => OrderState::Placed,
            Phase::Compensating | Phase::NotPlaced => OrderState::NotPlaced,
        }
    }

    /// Stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::Placed => "placed",
            OrderState::NotPlaced => "not_placed",
        }
    }
}

/// What a customer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Client idempotency key.
    pub idempotency_key: String,
    /// Customer.
    pub customer_id: String,
    /// Food (store pool).
    pub food_id: String,
    /// Zone (delivery pool).
    pub zone: String,
}

/// One order with its saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    /// Server-assigned id.
    pub order_id: String,
    /// The request.
    pub request: NewOrder,
    /// The saga state.
    pub saga: Saga,
    /// Detail of the not-placed reason (a participant's refusal message).
    pub detail: Option<String>,
    /// Transient failures so far.
    pub attempts: i64,
    /// Last error seen.
    pub last_error: Option<String>,
    /// Instance driving the saga.
    pub lease_owner: Option<String>,
    /// Fencing token: incremented by every claim or take-over. The driver that holds this
    /// record may write only while the stored epoch still equals it.
    pub epoch: i64,
    /// Lease end (database clock, Unix ms).
    pub lease_expires_at: Option<i64>,
    /// Created (Unix ms).
    pub created_at: i64,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

impl OrderRecord {
    /// The customer-facing state.
    pub fn state(&self) -> OrderState {
        OrderState::of(self.saga.phase)
    }
}

/// Repository errors.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The saga was claimed by another driver (a newer epoch) or is already terminal: this
    /// driver's write was refused and it must stop.
    #[error("order {0} is no longer driven by this driver (superseded or finished)")]
    LostLease(String),
    /// A stored value does not parse (a bug or a newer schema).
    #[error("corrupt order row {0}: {1}")]
    Corrupt(String, String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Result of inserting an order.
#[derive(Debug)]
pub enum Created {
    /// A new order, leased to the caller.
    New(OrderRecord),
    /// The idempotency key exists: the existing order.
    Existing(OrderRecord),
}

const COLUMNS: &str = "order_id, idempotency_key, customer_id, food_id, zone, phase, store_leg, \
    delivery_leg, packet_id, agent_id, reason, detail, last_transient, attempts, last_error, \
    lease_owner, lease_expires_at, epoch, created_at, updated_at";

const UNFINISHED: &str = "phase IN ('reserving', 'assigning', 'compensating')";

/// Every claim: a new owner, a new lease and the next fencing token.
const CLAIM: &str = "lease_owner = $2, lease_expires_at = {now} + $3, epoch = epoch + 1";

#[derive(Debug)]
struct Queries {
    insert: String,
    persist: String,
    claim_expired: String,
    claim_one: String,
    take_over: String,
    by_id: String,
    by_key: String,
    lock_placed: String,
    stuck: String,
    history: HistorySql,
    /// A batch's set statements (PostgreSQL only; SQLite runs a batch one write at a time).
    set: Option<sets::SetSql>,
}

/// The orders repository.
///
/// Creation and saga persists go through a [`GroupCommit`]: the writes of sagas that arrive
/// while a transaction is in flight share the next one (see [`writes`]). Reads (lookups,
/// listings, history) use a pool of their own when one is given ([`OrderRepo::reading_from`]):
/// on SQLite the writes have one connection, and a console listing orders must not hold it
/// while sagas wait to persist. Every read sees what was committed when it started, which is
/// all any caller relies on: a saga answers from what its own write returned.
#[derive(Debug, Clone)]
pub struct OrderRepo {
    db: Db,
    /// The pool reads use: `db` itself unless [`OrderRepo::reading_from`] gave another.
    reads: Db,
    sql: std::sync::Arc<Queries>,
    writes: GroupCommit<SagaWriter>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl OrderRepo {
    /// A repository over a migrated order database, a transaction per write. Starts the
    /// group-commit writers, so it must be called inside a Tokio runtime.
    pub fn new(db: Db) -> Self {
        Self::with_write_batch(db, 1)
    }

    /// A repository whose saga writes share transactions, up to `write_batch` each (`1`: a
    /// transaction per write, as many at once as the pool has connections).
    pub fn with_write_batch(db: Db, write_batch: usize) -> Self {
        let sql = Queries {
            insert: db.sql(&format!(
                "INSERT INTO orders (order_id, idempotency_key, customer_id, food_id, zone, state, \
                   phase, store_leg, delivery_leg, attempts, lease_owner, lease_expires_at, \
                   epoch, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', 'reserving', 'unknown', 'unknown', 0, $6, \
                   {{now}} + $7, 1, {{now}}, {{now}}) \
                 ON CONFLICT DO NOTHING \
                 RETURNING {COLUMNS}"
            )),
            persist: db.sql(&format!(
                "UPDATE orders SET state = $3, phase = $4, store_leg = $5, delivery_leg = $6, \
                   packet_id = $7, agent_id = $8, reason = $9, detail = $10, last_transient = $11, \
                   attempts = $12, last_error = $13, lease_expires_at = {{now}} + $14, \
                   updated_at = {{now}} \
                 WHERE order_id = $1 AND lease_owner = $2 AND epoch = $15 AND {UNFINISHED} \
                 RETURNING {COLUMNS}"
            )),
            claim_expired: db.sql(&format!(
                "UPDATE orders SET {CLAIM} \
                 WHERE order_id IN ( \
                   SELECT order_id FROM orders \
                   WHERE {UNFINISHED} AND (lease_expires_at IS NULL OR lease_expires_at <= {{now_once}}) \
                   ORDER BY lease_expires_at LIMIT $1 {{skip_locked}}) \
                 AND {UNFINISHED} AND (lease_expires_at IS NULL OR lease_expires_at <= {{now_once}}) \
                 RETURNING {COLUMNS}"
            )),
            claim_one: db.sql(&format!(
                "UPDATE orders SET {CLAIM} \
                 WHERE order_id = $1 AND {UNFINISHED} \
                   AND (lease_expires_at IS NULL OR lease_expires_at <= {{now}}) \
                 RETURNING {COLUMNS}"
            )),
            take_over: db.sql(&format!(
                "UPDATE orders SET {CLAIM} \
                 WHERE order_id = $1 AND {UNFINISHED} \
                 RETURNING {COLUMNS}"
            )),
            by_id: format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"),
            by_key: format!(
                "SELECT {COLUMNS} FROM orders WHERE customer_id = $1 AND idempotency_key = $2"
            ),
            lock_placed: db.sql(&format!(
                "SELECT {COLUMNS} FROM orders WHERE order_id = $1 AND phase = 'placed' {{for_update}}"
            )),
            stuck: format!(
                "SELECT {COLUMNS} FROM orders WHERE {UNFINISHED} ORDER BY created_at, order_id LIMIT $1"
            ),
            history: HistorySql::new(&db),
            set: (db.backend() == Backend::Postgres).then(|| sets::SetSql::new(&db)),
        };
        let sql = std::sync::Arc::new(sql);
        let writer = SagaWriter {
            db: db.clone(),
            sql: sql.clone(),
        };
        // Four writers when batched: each batch runs its statements one after another, so
        // more writers mean shorter waits; orders compete for nothing here.
        let config = GroupCommitConfig::for_write_batch(
            write_batch,
            db.pool().options().get_max_connections(),
            4,
        )
        .for_backend(db.backend());
        Self {
            writes: GroupCommit::start("orders", writer, config),
            reads: db.clone(),
            db,
            sql,
        }
    }

    /// This repository with its reads on `reads` (see [`Db::connect_reader`]): another pool on
    /// the same database.
    pub fn reading_from(mut self, reads: Db) -> Self {
        self.reads = reads;
        self
    }

    /// The pool reads use.
    pub fn read_db(&self) -> &Db {
        &self.reads
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts a new order in `reserving`, leased to `owner` for `lease`. An existing
    /// idempotency key of the same customer returns that order instead.
    ///
    /// Every transaction of this repository runs detached from its caller
    /// ([`order_saga_platform::db::detached`]): a request that is cancelled mid-transaction
    /// must not hand its connection back inside an open transaction.
    #[tracing::instrument(skip_all, fields(order_id = %order_id), err)]
    pub async fn create(
        &self,
        order_id: &str,
        order: &NewOrder,
        owner: &str,
        lease: Duration,
    ) -> Result<Created, RepoError> {
        let write = SagaWrite::Create {
            order_id: order_id.to_owned(),
            order: order.clone(),
            owner: owner.to_owned(),
            lease,
        };
        match self.writes.submit(write).await? {
            SagaWritten::Created(created) => Ok(created),
            SagaWritten::Persisted(_) => Err(wrong_answer(order_id)),
        }
    }

    /// Writes the saga state of the driver holding `record`, fenced on its owner **and**
    /// epoch and on the stored phase not being terminal. Renews the lease, or clears it when
    /// the written phase is terminal (the saga needs no driver any more). Fails with
    /// [`RepoError::LostLease`] when the driver was superseded or the order already finished:
    /// the caller must stop driving and read the stored outcome.
    #[tracing::instrument(skip_all, fields(order_id = %record.order_id, epoch = record.epoch, phase = record.saga.phase.as_str()), err)]
    pub async fn persist(
        &self,
        record: &OrderRecord,
        owner: &str,
        lease: Duration,
        transition: &Transition,
    ) -> Result<OrderRecord, RepoError> {
        let write = SagaWrite::Persist {
            record: Box::new(record.clone()),
            owner: owner.to_owned(),
            lease,
            transition: transition.clone(),
        };
        match self.writes.submit(write).await? {
            SagaWritten::Persisted(persisted) => Ok(persisted),
            SagaWritten::Created(_) => Err(wrong_answer(&record.order_id)),
        }
    }

    /// Appends a claim event for each of `claimed`, then commits their claim.
    async fn commit_claims(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Any>,
        claimed: &[OrderRecord],
        kind: EventKind,
    ) -> Result<(), RepoError> {
        for record in claimed {
            let transition = Transition::claim(kind, Some(record.saga.phase));
            self.sql.append(&mut tx, record, &transition).await?;
        }
        tx.commit().await?;
        if !claimed.is_empty() {
            metrics::counter!("saga_claims_total", "kind" => kind.as_str())
                .increment(claimed.len() as u64);
        }
        Ok(())
    }

    /// Appends the history event of a completed delivery to a placed order, under the row's
    /// lock (so its `seq` is unique); the order itself is not rewritten. `None` when the
    /// order is not placed.
    pub async fn record_completion(
        &self,
        order_id: &str,
        owner: &str,
        agent: Option<String>,
    ) -> Result<Option<OrderRecord>, RepoError> {
        let (this, order_id, owner) = (self.clone(), order_id.to_owned(), owner.to_owned());
        detached(async move {
            let mut tx = this.db.pool().begin().await?;
            let row = sqlx::query(AssertSqlSafe(this.sql.lock_placed.as_str()))
                .bind(&order_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            let mut record = decode(&row)?;
            record.lease_owner = Some(owner);
            let transition = Transition {
                kind: EventKind::DeliveryCompleted,
                from: Some(record.saga.phase),
                calls: Vec::new(),
                error: agent.map(|a| format!("agent {a} freed")),
            };
            this.sql.append(&mut tx, &record, &transition).await?;
            tx.commit().await?;
            Ok::<_, RepoError>(Some(record))
        })
        .await
    }

    /// The newest `limit` history events of `order_id`, oldest first.
    pub async fn history(
        &self,
        order_id: &str,
        limit: i64,
    ) -> Result<Vec<HistoryEvent>, RepoError> {
        Ok(history::read(&self.sql.history, &self.reads, order_id, limit).await?)
    }

    /// Deletes up to `batch` history events older than `retention`; how many it deleted.
    pub async fn prune_history(&self, retention: Duration, batch: i64) -> Result<u64, RepoError> {
        Ok(history::prune(&self.sql.history, &self.db, retention, batch).await?)
    }

    /// Claims up to `limit` unfinished orders whose lease ran out, for `owner`, each with a
    /// new epoch. Atomic: two instances never claim the same order.
    pub async fn claim_expired(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<OrderRecord>, RepoError> {
        let (this, owner) = (self.clone(), owner.to_owned());
        detached(async move { this.claim_expired_tx(&owner, lease, limit).await }).await
    }

    async fn claim_expired_tx(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<OrderRecord>, RepoError> {
        let mut tx = self.db.pool().begin().await?;
        let rows = sqlx::query(AssertSqlSafe(self.sql.claim_expired.as_str()))
            .bind(limit)
            .bind(owner)
            .bind(ms(lease))
            .fetch_all(&mut *tx)
            .await?;
        let claimed = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        self.commit_claims(tx, &claimed, EventKind::Recovered)
            .await?;
        Ok(claimed)
    }

    /// Claims one unfinished order if its lease ran out (a waiting client's take-over), with a
    /// new epoch.
    pub async fn claim_one(
        &self,
        order_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<OrderRecord>, RepoError> {
        self.claim_with(Claimant::One, order_id, owner, lease, EventKind::TakenOver)
            .await
    }

    /// Takes an unfinished order over regardless of its lease (operator redrive or
    /// force-fail, recorded in the history as `kind`), with a new epoch. The previous driver's
    /// next write fails on the fence and it stops, even when it runs in this same instance.
    pub async fn take_over(
        &self,
        order_id: &str,
        owner: &str,
        lease: Duration,
        kind: EventKind,
    ) -> Result<Option<OrderRecord>, RepoError> {
        self.claim_with(Claimant::TakeOver, order_id, owner, lease, kind)
            .await
    }

    async fn claim_with(
        &self,
        claimant: Claimant,
        order_id: &str,
        owner: &str,
        lease: Duration,
        kind: EventKind,
    ) -> Result<Option<OrderRecord>, RepoError> {
        let (this, order_id, owner) = (self.clone(), order_id.to_owned(), owner.to_owned());
        detached(async move {
            this.claim_with_tx(claimant, &order_id, &owner, lease, kind)
                .await
        })
        .await
    }

    async fn claim_with_tx(
        &self,
        claimant: Claimant,
        order_id: &str,
        owner: &str,
        lease: Duration,
        kind: EventKind,
    ) -> Result<Option<OrderRecord>, RepoError> {
        let sql = match claimant {
            Claimant::One => &self.sql.claim_one,
            Claimant::TakeOver => &self.sql.take_over,
        };
        let mut tx = self.db.pool().begin().await?;
        let row = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(order_id)
            .bind(owner)
            .bind(ms(lease))
            .fetch_optional(&mut *tx)
            .await?;
        let claimed = row.as_ref().map(decode).transpose()?;
        self.commit_claims(tx, claimed.as_slice(), kind).await?;
        Ok(claimed)
    }

    /// One order by id.
    pub async fn by_id(&self, order_id: &str) -> Result<Option<OrderRecord>, RepoError> {
        self.one(&self.sql.by_id, order_id).await
    }

    /// One order by its customer and idempotency key.
    pub async fn by_key(
        &self,
        customer_id: &str,
        key: &str,
    ) -> Result<Option<OrderRecord>, RepoError> {
        let row = sqlx::query(AssertSqlSafe(self.sql.by_key.as_str()))
            .bind(customer_id)
            .bind(key)
            .fetch_optional(self.reads.pool())
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn one(&self, sql: &str, arg: &str) -> Result<Option<OrderRecord>, RepoError> {
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(arg)
            .fetch_optional(self.reads.pool())
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Unfinished sagas, oldest first.
    pub async fn stuck(&self, limit: i64) -> Result<Vec<OrderRecord>, RepoError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.stuck.as_str()))
            .bind(limit)
            .fetch_all(self.reads.pool())
            .await?;
        rows.iter().map(decode).collect()
    }

    /// A page of orders, newest first, starting after `after` (created_at, order_id).
    pub async fn list(
        &self,
        state: Option<OrderState>,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<OrderRecord>, RepoError> {
        let filter = OrderFilter {
            state,
            ..OrderFilter::default()
        };
        self.search(&filter, after, limit).await
    }

    /// A page of the orders matching `filter`, newest first, starting after `after`
    /// (created_at, order_id).
    pub async fn search(
        &self,
        filter: &OrderFilter,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<OrderRecord>, RepoError> {
        let mut sql = format!("SELECT {COLUMNS} FROM orders WHERE 1 = 1");
        let mut binds: Vec<Bind> = Vec::new();
        let next = |b: Bind, binds: &mut Vec<Bind>| {
            binds.push(b);
            binds.len()
        };
        if let Some(state) = filter.state {
            let n = next(Bind::Text(state.as_str().to_owned()), &mut binds);
            sql.push_str(&format!(" AND state = ${n}"));
        }
        for (column, value) in [
            ("reason", &filter.reason),
            ("food_id", &filter.food_id),
            ("zone", &filter.zone),
        ] {
            if let Some(value) = value {
                let n = next(Bind::Text(value.clone()), &mut binds);
                sql.push_str(&format!(" AND {column} = ${n}"));
            }
        }
        if let Some(since) = filter.created_since {
            let n = next(Bind::Int(since), &mut binds);
            sql.push_str(&format!(" AND created_at >= ${n}"));
        }
        if let Some(id) = &filter.id_or_key {
            let a = next(Bind::Text(id.clone()), &mut binds);
            let b = next(Bind::Text(id.clone()), &mut binds);
            sql.push_str(&format!(" AND (order_id = ${a} OR idempotency_key = ${b})"));
        }
        if let Some((created_at, order_id)) = after {
            let a = next(Bind::Int(created_at), &mut binds);
            let b = next(Bind::Int(created_at), &mut binds);
            let c = next(Bind::Text(order_id), &mut binds);
            sql.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${b} AND order_id < ${c}))"
            ));
        }
        let n = next(Bind::Int(limit), &mut binds);
        sql.push_str(&format!(
            " ORDER BY created_at DESC, order_id DESC LIMIT ${n}"
        ));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                Bind::Text(v) => query.bind(v),
                Bind::Int(v) => query.bind(v),
            };
        }
        let rows = query.fetch_all(self.reads.pool()).await?;
        rows.iter().map(decode).collect()
    }

    /// Orders finished per minute since `since_ms` (by their last write, database clock), by
    /// state and reason, oldest minute first: (minute start in Unix ms, state, reason, count).
    pub async fn outcomes_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(i64, String, Option<String>, i64)>, RepoError> {
        let rows = sqlx::query(
            "SELECT (updated_at / 60000) * 60000 AS minute, state, reason, COUNT(*) AS n \
             FROM orders WHERE updated_at >= $1 AND state <> 'pending' \
             GROUP BY (updated_at / 60000) * 60000, state, reason ORDER BY minute",
        )
        .bind(since_ms)
        .fetch_all(self.reads.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("minute")?,
                    r.try_get("state")?,
                    r.try_get("reason")?,
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    /// The database clock, Unix ms.
    pub async fn now_ms(&self) -> Result<i64, RepoError> {
        let sql = self.db.sql("SELECT {now} AS now");
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(self.reads.pool())
            .await?)
    }
}

/// Which claim of one order [`OrderRepo::claim_with`] makes.
#[derive(Debug, Clone, Copy)]
enum Claimant {
    /// A waiting client's: only when the lease ran out.
    One,
    /// An operator's: whatever the lease.
    TakeOver,
}

/// A bound value of a query built at run time.
enum Bind {
    Text(String),
    Int(i64),
}

/// Which orders [`OrderRepo::search`] returns; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    /// Customer-facing state.
    pub state: Option<OrderState>,
    /// Not-placed reason (`out_of_stock`, ...).
    pub reason: Option<String>,
    /// Food.
    pub food_id: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// Created at or after (Unix ms).
    pub created_since: Option<i64>,
    /// An order id or an idempotency key.
    pub id_or_key: Option<String>,
}

impl Queries {
    /// Appends the history event of a write of `record` in that write's transaction.
    async fn append(
        &self,
        conn: &mut sqlx::AnyConnection,
        record: &OrderRecord,
        transition: &Transition,
    ) -> Result<(), RepoError> {
        let event = Append {
            order_id: &record.order_id,
            epoch: record.epoch,
            phase: record.saga.phase,
            packet: record.saga.store.unit.as_deref(),
            agent: record.saga.delivery.unit.as_deref(),
            owner: record.lease_owner.as_deref().unwrap_or_default(),
            transition,
        };
        Ok(history::append(&self.history, conn, event).await?)
    }
}

/// A write answered with another write's answer: a bug, reported as a corrupt row.
fn wrong_answer(order_id: &str) -> RepoError {
    RepoError::Corrupt(
        order_id.to_owned(),
        "a write was answered with another write's answer".into(),
    )
}

fn decode(row: &AnyRow) -> Result<OrderRecord, RepoError> {
    let order_id: String = row.try_get("order_id")?;
    let corrupt = |what: &str| RepoError::Corrupt(order_id.clone(), what.to_owned());
    let phase: String = row.try_get("phase")?;
    let store_leg: String = row.try_get("store_leg")?;
    let delivery_leg: String = row.try_get("delivery_leg")?;
    let reason: Option<String> = row.try_get("reason")?;
    let last_transient: Option<String> = row.try_get("last_transient")?;
    let saga = Saga {
        phase: Phase::parse(&phase).ok_or_else(|| corrupt("phase"))?,
        store: Leg {
            state: LegState::parse(&store_leg).ok_or_else(|| corrupt("store_leg"))?,
            unit: row.try_get("packet_id")?,
        },
        delivery: Leg {
            state: LegState::parse(&delivery_leg).ok_or_else(|| corrupt("delivery_leg"))?,
            unit: row.try_get("agent_id")?,
        },
        reason: match reason {
            Some(r) => Some(Reason::parse(&r).ok_or_else(|| corrupt("reason"))?),
            None => None,
        },
        last_transient: match last_transient.as_deref() {
            None => None,
            Some("store") => Some(Side::Store),
            Some("delivery") => Some(Side::Delivery),
            Some(_) => return Err(corrupt("last_transient")),
        },
    };
    Ok(OrderRecord {
        request: NewOrder {
            idempotency_key: row.try_get("idempotency_key")?,
            customer_id: row.try_get("customer_id")?,
            food_id: row.try_get("food_id")?,
            zone: row.try_get("zone")?,
        },
        saga,
        detail: row.try_get("detail")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        lease_owner: row.try_get("lease_owner")?,
        epoch: row.try_get("epoch")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        order_id,
    })
}
