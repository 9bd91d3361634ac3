//! The reservation protocol over one participant database.
//!
//! Every state change is one atomic statement, or a short transaction that first locks the
//! order's `claims` row (serialising reserve, release and completion of the same order) and
//! never spans a network call. Expiry is compared with the database clock inside the statement
//! that acts on it, so application clocks never matter. Every change of a unit's status updates
//! its pool's counts in the same transaction, so counts are read from one row per pool.

use std::{collections::BTreeMap, time::Duration};

use order_saga_platform::{
    db::{Backend, Db, detached, is_unique_violation},
    group_commit::{Committer, GroupCommit, GroupCommitConfig},
};
use sqlx::AssertSqlSafe;
use tracing::instrument;

mod set;

/// Most units one `add_units` call may create.
pub const MAX_UNITS_PER_CALL: i64 = 10_000;

/// How many rows one multi-row insert carries.
const INSERT_CHUNK: usize = 500;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Prefix of generated unit ids (`pkt` for packets, `agent` for agents).
    pub unit_prefix: &'static str,
    /// Shortest reservation a caller may ask for.
    pub min_ttl: Duration,
    /// Longest reservation a caller may ask for.
    pub max_ttl: Duration,
    /// How often a reserve that lost every race retries before answering `ABORTED`.
    pub claim_attempts: u32,
    /// How reserves, assigns and releases share transactions (see [`Engine`]).
    pub group_commit: GroupCommitConfig,
}

impl EngineConfig {
    /// Defaults for units with the given id prefix: TTL from 1 s to 1 h, 3 claim attempts.
    pub fn new(unit_prefix: &'static str) -> Self {
        Self {
            unit_prefix,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            claim_attempts: 3,
            // One writer: claims are made in the order the requests arrived, so the two
            // participants hand out their last units to the same (earliest) orders and a
            // scarce pool places exactly its stock (`concurrent_orders_place_exactly_the_stock`
            // placed 48 of 50 with two writers batching in order-id order).
            group_commit: GroupCommitConfig {
                writers: 1,
                ..GroupCommitConfig::default()
            },
        }
    }
}

/// A unit held by an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The unit.
    pub unit_id: String,
    /// When an unassigned reservation expires (database clock, Unix ms); `None` once assigned.
    pub expires_at_ms: Option<i64>,
}

/// Unit counts of a pool. Expired reservations count as available: any claim may take them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Free to reserve.
    pub available: i64,
    /// Held by an unexpired reservation.
    pub reserved: i64,
    /// Permanently assigned.
    pub assigned: i64,
    /// Assigned longer ago than the unit retention, and no longer kept one by one.
    pub retired: i64,
}

/// A pool and its counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    /// Pool id (food id, zone).
    pub pool: String,
    /// Display name.
    pub name: String,
    /// Creation time (Unix ms).
    pub created_at_ms: i64,
    /// Unit counts.
    pub counts: PoolCounts,
}

/// Why an engine call did not succeed. Each variant maps to one status code (see `grpc`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The pool does not exist.
    #[error("pool {0:?} not found")]
    UnknownPool(String),
    /// Every unit of the pool is reserved or assigned.
    #[error("no unit available in pool {0:?}")]
    Exhausted(String),
    /// Units exist but other claimants held them for every attempt; a retry may succeed.
    #[error("lost the race for the free units of pool {0:?}; retry")]
    Contended(String),
    /// The order was released here before this reserve arrived (tombstone).
    #[error("order {0:?} was already released here")]
    Released(String),
    /// Assign refused: the reservation expired, was released, or is held by another order.
    #[error("{0}")]
    NotHeld(String),
    /// Completion refused: the order holds a unit here that is not assigned.
    #[error("order {0:?} holds a unit here that is not assigned; only an assignment completes")]
    NotAssigned(String),
    /// The pool exists already.
    #[error("pool {0:?} already exists")]
    PoolExists(String),
    /// A request field is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// SQL for this engine's backend, rendered once.
#[derive(Debug)]
struct Queries {
    anchor_claim: String,
    held: String,
    renew: String,
    claim_free: String,
    claim_expired: String,
    free_count: String,
    assign: String,
    assigned_already: String,
    unit_state: String,
    tombstone: String,
    complete_claim: String,
    mark_completed: String,
    lock_held: String,
    free_unit: String,
    sweep: String,
    retire: String,
    forget_claims: String,
    counts: String,
    pool_info: String,
    list_pools: String,
    insert_pool: String,
    insert_pool_if_missing: String,
    /// A batch's set statements (PostgreSQL only; SQLite runs a batch's writes one by one).
    set: Option<set::SetQueries>,
}

/// The columns of a pool with its counts; expired reservations move from reserved to
/// available here, counted through `units_reserved_by_pool` (only live units).
const POOL_COLUMNS: &str = "p.pool, p.name, p.created_at, p.available, p.reserved, p.assigned, \
    p.retired, (SELECT COUNT(*) FROM units u WHERE u.pool = p.pool AND u.status = 'reserved' \
    AND u.expires_at <= {now}) AS expired";

impl Queries {
    fn new(db: &Db) -> Self {
        Self {
            // One statement inserts the order's claim row or, when it exists, locks it (the
            // no-op update takes the row lock) and returns its tombstone either way.
            anchor_claim: db.sql(
                "INSERT INTO claims (order_id, released_at, created_at) VALUES ($1, NULL, {now}) \
                 ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id \
                 RETURNING released_at",
            ),
            held: "SELECT unit_id, pool, status, expires_at FROM units WHERE order_id = $1"
                .to_owned(),
            // A repeated reserve of a held reservation renews it: the order still holds the
            // unit (nobody took it), so extending it is the same as claiming it afresh.
            renew: db.sql(
                "UPDATE units SET expires_at = {now} + $3, updated_at = {now} \
                 WHERE unit_id = $1 AND order_id = $2 AND status = 'reserved' \
                 RETURNING expires_at",
            ),
            // One statement: pick a free unit nobody else is locking, and take it. `ORDER BY
            // unit_id` makes the planner walk the partial index `units_free`, which holds only
            // available units; without it PostgreSQL chose a sequential scan that passed over
            // every unit already handed out. The outer WHERE re-checks the row after the lock,
            // so a unit changed meanwhile is never taken.
            claim_free: db.sql(
                "UPDATE units SET status = 'reserved', order_id = $1, \
                   expires_at = {now} + $3, updated_at = {now} \
                 WHERE unit_id = ( \
                   SELECT unit_id FROM units WHERE pool = $2 AND status = 'available' \
                   ORDER BY unit_id LIMIT 1 {skip_locked}) \
                 AND status = 'available' \
                 RETURNING unit_id, expires_at",
            ),
            // When no unit is free: take over a reservation that expired and that the sweeper
            // has not freed yet (reserved stays reserved: the counts do not change).
            claim_expired: db.sql(
                "UPDATE units SET status = 'reserved', order_id = $1, \
                   expires_at = {now} + $3, updated_at = {now} \
                 WHERE unit_id = ( \
                   SELECT unit_id FROM units \
                   WHERE pool = $2 AND status = 'reserved' AND expires_at <= {now} \
                   LIMIT 1 {skip_locked}) \
                 AND status = 'reserved' AND expires_at <= {now} \
                 RETURNING unit_id, expires_at",
            ),
            // Free units of one pool, from its counts row and its expired reservations.
            free_count: db.sql(
                "SELECT p.available + (SELECT COUNT(*) FROM units u WHERE u.pool = p.pool \
                   AND u.status = 'reserved' AND u.expires_at <= {now}) \
                 FROM pools p WHERE p.pool = $1",
            ),
            // Only a live reservation is assigned here; a repeat of a done assign is
            // recognised by `assigned_already`, so the counts move once.
            assign: db.sql(
                "UPDATE units SET status = 'assigned', expires_at = NULL, updated_at = {now} \
                 WHERE unit_id = $2 AND order_id = $1 \
                   AND status = 'reserved' AND expires_at > {now} \
                 RETURNING pool",
            ),
            assigned_already: "SELECT unit_id FROM units \
                 WHERE unit_id = $2 AND order_id = $1 AND status = 'assigned'"
                .to_owned(),
            unit_state: db.sql("SELECT order_id, expires_at, {now} FROM units WHERE unit_id = $1"),
            tombstone: db.sql(
                "INSERT INTO claims (order_id, released_at, created_at) VALUES ($1, {now}, {now}) \
                 ON CONFLICT (order_id) DO UPDATE \
                 SET released_at = COALESCE(claims.released_at, excluded.released_at)",
            ),
            // A completion's tombstone, like a release's; `mark_completed` records, once a
            // unit was actually freed, that a completion freed it (invariant 6 reads it).
            complete_claim: db.sql(
                "INSERT INTO claims (order_id, released_at, created_at) VALUES ($1, {now}, {now}) \
                 ON CONFLICT (order_id) DO UPDATE \
                 SET released_at = COALESCE(claims.released_at, excluded.released_at)",
            ),
            mark_completed: db.sql(
                "UPDATE claims SET completed_at = COALESCE(completed_at, {now}) WHERE order_id = $1",
            ),
            // The unit an order holds (at most one, by `units_one_per_order`), locked.
            lock_held: db
                .sql("SELECT unit_id, pool, status FROM units WHERE order_id = $1 {for_update}"),
            free_unit: db.sql(
                "UPDATE units SET status = 'available', order_id = NULL, expires_at = NULL, \
                   updated_at = {now} \
                 WHERE unit_id = $1",
            ),
            sweep: db.sql(
                "UPDATE units SET status = 'available', order_id = NULL, expires_at = NULL, \
                   updated_at = {now} \
                 WHERE unit_id IN ( \
                   SELECT unit_id FROM units \
                   WHERE status = 'reserved' AND expires_at <= {now_once} \
                   LIMIT $1 {skip_locked}) \
                 AND status = 'reserved' AND expires_at <= {now_once} \
                 RETURNING unit_id, pool",
            ),
            // Assigned longer ago than the retention: oldest first, through
            // `units_assigned_by_age` (bounded by `{now_once}`, see `Backend::sql`); SKIP
            // LOCKED leaves a unit another statement is changing.
            retire: db.sql(
                "DELETE FROM units WHERE unit_id IN ( \
                   SELECT unit_id FROM units \
                   WHERE status = 'assigned' AND updated_at <= {now_once} - $1 \
                   ORDER BY updated_at LIMIT $2 {skip_locked}) \
                 AND status = 'assigned' AND updated_at <= {now_once} - $1 \
                 RETURNING pool",
            ),
            // Claims whose retention has passed: the anchor's reserve and any release are
            // that long ago. SKIP LOCKED leaves a claim a reserve or release is using alone.
            forget_claims: db.sql(
                "DELETE FROM claims WHERE order_id IN ( \
                   SELECT order_id FROM claims \
                   WHERE created_at <= {now_once} - $1 \
                     AND (released_at IS NULL OR released_at <= {now_once} - $1) \
                   ORDER BY created_at LIMIT $2 {skip_locked})",
            ),
            counts: "UPDATE pools SET available = available + $2, reserved = reserved + $3, \
                   assigned = assigned + $4, retired = retired + $5 WHERE pool = $1"
                .to_owned(),
            pool_info: db.sql(&format!(
                "SELECT {POOL_COLUMNS} FROM pools p WHERE p.pool = $1"
            )),
            list_pools: db.sql(&format!(
                "SELECT {POOL_COLUMNS} FROM pools p WHERE p.pool > $1 ORDER BY p.pool LIMIT $2"
            )),
            insert_pool: db
                .sql("INSERT INTO pools (pool, name, created_at) VALUES ($1, $2, {now})"),
            insert_pool_if_missing: db.sql(
                "INSERT INTO pools (pool, name, created_at) VALUES ($1, $2, {now}) \
                 ON CONFLICT (pool) DO NOTHING",
            ),
            set: (db.backend() == Backend::Postgres).then(|| set::SetQueries::new(db)),
        }
    }
}

/// A change of one pool's counts.
#[derive(Debug, Clone, Copy, Default)]
struct CountsDelta {
    available: i64,
    reserved: i64,
    assigned: i64,
    retired: i64,
}

impl std::ops::AddAssign for CountsDelta {
    fn add_assign(&mut self, other: Self) {
        self.available += other.available;
        self.reserved += other.reserved;
        self.assigned += other.assigned;
        self.retired += other.retired;
    }
}

/// The counts changes of one transaction, per pool, applied in pool order just before it
/// commits: every writer locks counts rows last and in one order, so two transactions never
/// wait for each other's counts rows in a cycle.
#[derive(Debug, Default)]
struct Deltas(BTreeMap<String, CountsDelta>);

impl Deltas {
    fn add(&mut self, pool: &str, delta: CountsDelta) {
        *self.0.entry(pool.to_owned()).or_default() += delta;
    }

    async fn apply(self, sql: &Queries, conn: &mut sqlx::AnyConnection) -> Result<(), EngineError> {
        if let Some(set) = &sql.set {
            return set.apply(conn, self).await;
        }
        for (pool, delta) in self.0 {
            sql.count(conn, &pool, delta).await?;
        }
        Ok(())
    }
}

/// The reservation engine of one participant.
///
/// Reserves, assigns and releases go through a [`GroupCommit`]: those that arrive while a
/// transaction is in flight run together in the next one, with one commit for the batch and
/// an answer of its own for each (see [`Writer`]).
#[derive(Debug, Clone)]
pub struct Engine {
    db: Db,
    /// Where pool counts are read from: the main pool, or the public read path's own pool
    /// ([`Engine::reading_from`]).
    reads: Db,
    config: EngineConfig,
    sql: std::sync::Arc<Queries>,
    writes: GroupCommit<Writer>,
}

type CountsRow = (String, String, i64, i64, i64, i64, i64, i64);

fn pool_info_from_row(
    (pool, name, created_at_ms, available, reserved, assigned, retired, expired): CountsRow,
) -> PoolInfo {
    PoolInfo {
        pool,
        name,
        created_at_ms,
        counts: PoolCounts {
            available: available + expired,
            reserved: reserved - expired,
            assigned,
            retired,
        },
    }
}

/// Fails with [`EngineError::InvalidArgument`] unless `count` units may be added in one call
/// (1 to [`MAX_UNITS_PER_CALL`]). Callers that create a pool before adding units check first,
/// so a bad count creates nothing.
pub fn check_unit_count(count: i64) -> Result<(), EngineError> {
    if (1..=MAX_UNITS_PER_CALL).contains(&count) {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(format!(
            "count must be between 1 and {MAX_UNITS_PER_CALL}"
        )))
    }
}

/// Fails with [`EngineError::UnknownPool`] unless `pool` exists.
async fn require_pool<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    pool: &str,
) -> Result<(), EngineError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT pool FROM pools WHERE pool = $1")
        .bind(pool)
        .fetch_optional(executor)
        .await?;
    match exists {
        Some(_) => Ok(()),
        None => Err(EngineError::UnknownPool(pool.to_owned())),
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Engine {
    /// An engine over `db`, whose schema must be migrated with [`crate::MIGRATOR`]. Starts the
    /// group-commit writers, so it must be called inside a Tokio runtime.
    pub fn new(db: Db, config: EngineConfig) -> Self {
        let sql = std::sync::Arc::new(Queries::new(&db));
        let writer = Writer {
            db: db.clone(),
            sql: sql.clone(),
        };
        let writes = GroupCommit::start(
            "participant",
            writer,
            config.group_commit.for_backend(db.backend()),
        );
        Self {
            reads: db.clone(),
            db,
            config,
            sql,
            writes,
        }
    }

    /// The same engine, reading pool counts from `reads` (the public catalogue's own pool, so
    /// no volume of public reads can hold the connections the orchestrator's calls need).
    pub fn reading_from(&self, reads: Db) -> Self {
        Self {
            reads,
            ..self.clone()
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The database pool counts are read from.
    pub fn read_db(&self) -> &Db {
        &self.reads
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Claims one free unit of `pool` for `order_id` until `ttl` passes.
    ///
    /// Idempotent per order: when the order already holds a unit here, that unit is returned,
    /// and a reservation of it is renewed until `ttl` from now (a recovering driver keeps
    /// what the crashed one reserved). Refused with [`EngineError::Released`] after a release
    /// of the order (tombstone), [`EngineError::Exhausted`] when the pool has no free unit,
    /// [`EngineError::Contended`] when free units exist but concurrent claimants held them on
    /// every attempt.
    #[instrument(skip_all, fields(order_id = %order_id, pool = %pool), err(level = "debug"))]
    pub async fn reserve(
        &self,
        order_id: &str,
        pool: &str,
        ttl: Duration,
    ) -> Result<Reservation, EngineError> {
        if ttl < self.config.min_ttl || ttl > self.config.max_ttl {
            return Err(EngineError::InvalidArgument(format!(
                "ttl must be between {:?} and {:?}",
                self.config.min_ttl, self.config.max_ttl
            )));
        }
        let write = Write::Reserve {
            order_id: order_id.to_owned(),
            pool: pool.to_owned(),
            ttl_ms: ms(ttl),
        };
        for attempt in 1..=self.config.claim_attempts.max(1) {
            if let Written::Claimed(Some(r)) = self.writes.submit(write.clone()).await? {
                return Ok(r);
            }
            let free: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.sql.free_count.as_str()))
                .bind(pool)
                .fetch_optional(self.db.pool())
                .await?;
            match free {
                None => return Err(EngineError::UnknownPool(pool.to_owned())),
                Some(0) => return Err(EngineError::Exhausted(pool.to_owned())),
                Some(free) => {
                    tracing::debug!(attempt, free, "claim skipped locked units, retrying")
                }
            }
            tokio::task::yield_now().await;
        }
        Err(EngineError::Contended(pool.to_owned()))
    }

    /// Makes the reservation of `unit_id` by `order_id` permanent.
    ///
    /// Succeeds while the reservation is held by the order and unexpired, and again on every
    /// repeat after success. Otherwise [`EngineError::NotHeld`] says why.
    #[instrument(skip_all, fields(order_id = %order_id, unit_id = %unit_id), err(level = "debug"))]
    pub async fn assign(&self, order_id: &str, unit_id: &str) -> Result<(), EngineError> {
        let write = Write::Assign {
            order_id: order_id.to_owned(),
            unit_id: unit_id.to_owned(),
        };
        if let Written::Assigned(true) = self.writes.submit(write).await? {
            return Ok(());
        }
        let repeat: Option<String> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.assigned_already.as_str()))
                .bind(order_id)
                .bind(unit_id)
                .fetch_optional(self.db.pool())
                .await?;
        if repeat.is_some() {
            return Ok(());
        }
        // Refused: say why, from one more read (the refusal itself was atomic).
        let state: Option<(Option<String>, Option<i64>, i64)> =
            sqlx::query_as(AssertSqlSafe(self.sql.unit_state.as_str()))
                .bind(unit_id)
                .fetch_optional(self.db.pool())
                .await?;
        let why = match state {
            None => format!("unit {unit_id:?} does not exist"),
            Some((holder, expires, now)) if holder.as_deref() == Some(order_id) => {
                if expires.is_some_and(|e| e <= now) {
                    format!("reservation of {unit_id:?} expired")
                } else {
                    format!("unit {unit_id:?} is not assignable")
                }
            }
            Some(_) => format!(
                "unit {unit_id:?} is not held by order {order_id:?} (released, expired or never reserved)"
            ),
        };
        Err(EngineError::NotHeld(why))
    }

    /// Frees whatever `order_id` holds here, reserved or assigned, and leaves a tombstone so
    /// that a reserve for the order arriving later is refused. Idempotent. Returns the unit
    /// freed by this call, if any.
    #[instrument(skip_all, fields(order_id = %order_id), err(level = "debug"))]
    pub async fn release(&self, order_id: &str) -> Result<Option<String>, EngineError> {
        let write = Write::Release {
            order_id: order_id.to_owned(),
        };
        match self.writes.submit(write).await? {
            Written::Released(freed) => Ok(freed),
            other => unreachable_answer(other),
        }
    }

    /// Ends the assignment of `order_id` because its work is done (a delivery was made): the
    /// unit becomes available for the next order, and a tombstone refuses any later reserve
    /// for this one. Only the orchestrator calls it, and only for an order it has stored
    /// PLACED (design, invariant 6). Idempotent: a repeat frees nothing and succeeds.
    /// Refused with [`EngineError::NotAssigned`] if the order holds an unassigned unit here.
    #[instrument(skip_all, fields(order_id = %order_id), err(level = "debug"))]
    pub async fn complete(&self, order_id: &str) -> Result<Option<String>, EngineError> {
        let (this, order_id) = (self.clone(), order_id.to_owned());
        detached(async move { this.complete_tx(&order_id).await }).await
    }

    async fn complete_tx(&self, order_id: &str) -> Result<Option<String>, EngineError> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(AssertSqlSafe(self.sql.complete_claim.as_str()))
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
        let mut deltas = Deltas::default();
        let freed = self
            .sql
            .free_held(&mut tx, order_id, true, &mut deltas)
            .await?;
        deltas.apply(&self.sql, &mut tx).await?;
        if freed.is_some() {
            sqlx::query(AssertSqlSafe(self.sql.mark_completed.as_str()))
                .bind(order_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(freed)
    }

    /// Frees up to `batch` reservations whose expiry has passed by the database clock.
    /// Safe to run from any number of sweepers at once. Returns the freed units.
    #[instrument(skip_all, err)]
    pub async fn sweep(&self, batch: i64) -> Result<Vec<String>, EngineError> {
        let this = self.clone();
        detached(async move { this.sweep_tx(batch).await }).await
    }

    async fn sweep_tx(&self, batch: i64) -> Result<Vec<String>, EngineError> {
        let mut tx = self.db.pool().begin().await?;
        let freed: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(self.sql.sweep.as_str()))
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        for (pool, n) in per_pool(freed.iter().map(|(_, pool)| pool)) {
            let delta = CountsDelta {
                available: n,
                reserved: -n,
                ..CountsDelta::default()
            };
            self.sql.count(&mut tx, pool, delta).await?;
        }
        tx.commit().await?;
        Ok(freed.into_iter().map(|(unit, _)| unit).collect())
    }

    /// Removes up to `batch` units assigned longer ago than `retention` (database clock),
    /// counting them as retired in their pool. Returns how many it removed.
    ///
    /// Only for units consumed by their assignment (the store's packets): a retired unit is
    /// never freed, so no answered PLACED order loses it to another order.
    #[instrument(skip_all, err)]
    pub async fn retire_assigned(
        &self,
        retention: Duration,
        batch: i64,
    ) -> Result<u64, EngineError> {
        let this = self.clone();
        detached(async move { this.retire_tx(retention, batch).await }).await
    }

    async fn retire_tx(&self, retention: Duration, batch: i64) -> Result<u64, EngineError> {
        let mut tx = self.db.pool().begin().await?;
        let pools: Vec<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.retire.as_str()))
            .bind(ms(retention))
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        for (pool, n) in per_pool(pools.iter()) {
            let delta = CountsDelta {
                assigned: -n,
                retired: n,
                ..CountsDelta::default()
            };
            self.sql.count(&mut tx, pool, delta).await?;
        }
        tx.commit().await?;
        Ok(pools.len() as u64)
    }

    /// Deletes up to `batch` claims (an order's anchor and its release tombstone) older than
    /// `retention` by the database clock. Returns how many it deleted.
    ///
    /// A tombstone refuses a reserve that arrives after the order's release; the orchestrator
    /// stops sending reserves once the reservation TTL has passed, so a retention well beyond
    /// the longest TTL forgets only claims nobody will ask about. Even a reserve older than the
    /// retention would only hold a unit until its TTL, when the sweeper frees it.
    #[instrument(skip_all, err)]
    pub async fn forget_claims(&self, retention: Duration, batch: i64) -> Result<u64, EngineError> {
        let done = sqlx::query(AssertSqlSafe(self.sql.forget_claims.as_str()))
            .bind(ms(retention))
            .bind(batch)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Creates a pool; [`EngineError::PoolExists`] if it exists.
    #[instrument(skip_all, fields(pool = %pool), err(level = "debug"))]
    pub async fn create_pool(&self, pool: &str, name: &str) -> Result<PoolInfo, EngineError> {
        match sqlx::query(AssertSqlSafe(self.sql.insert_pool.as_str()))
            .bind(pool)
            .bind(name)
            .execute(self.db.pool())
            .await
        {
            Ok(_) => self.pool_info(pool).await,
            Err(e) if is_unique_violation(&e) => Err(EngineError::PoolExists(pool.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates a pool unless it exists.
    pub async fn ensure_pool(&self, pool: &str, name: &str) -> Result<(), EngineError> {
        sqlx::query(AssertSqlSafe(self.sql.insert_pool_if_missing.as_str()))
            .bind(pool)
            .bind(name)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Adds `count` new units to an existing pool, in one transaction.
    #[instrument(skip_all, fields(pool = %pool, count), err(level = "debug"))]
    pub async fn add_units(&self, pool: &str, count: i64) -> Result<PoolInfo, EngineError> {
        check_unit_count(count)?;
        let (this, pool_id) = (self.clone(), pool.to_owned());
        detached(async move { this.add_units_tx(&pool_id, count).await }).await?;
        self.pool_info(pool).await
    }

    async fn add_units_tx(&self, pool: &str, count: i64) -> Result<(), EngineError> {
        let mut tx = self.db.pool().begin().await?;
        require_pool(&mut *tx, pool).await?;
        let ids: Vec<String> = (0..count)
            .map(|_| {
                let hex = uuid::Uuid::new_v4().simple().to_string();
                format!("{}-{}", self.config.unit_prefix, &hex[..16])
            })
            .collect();
        for chunk in ids.chunks(INSERT_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(${}, $1, 'available', NULL, NULL, {now}, {now})",
                        i + 2,
                        now = self.db.backend().now_ms()
                    )
                })
                .collect();
            let insert = format!(
                "INSERT INTO units (unit_id, pool, status, order_id, expires_at, created_at, \
                 updated_at) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(insert)).bind(pool);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await?;
        }
        let delta = CountsDelta {
            available: count,
            ..CountsDelta::default()
        };
        self.sql.count(&mut tx, pool, delta).await?;
        tx.commit().await?;
        // Refresh the planner's statistics now rather than when autovacuum next visits (up to
        // a minute later on PostgreSQL). Until then a table that was empty when last analysed
        // has no statistics, and the planner walked `units_by_pool_status` and sorted the
        // whole pool on every claim (5 ms a claim for 2,500 free units) instead of reading
        // one entry of `units_free`. The units are added either way: a failure is only logged.
        if let Err(e) = sqlx::query("ANALYZE units").execute(self.db.pool()).await {
            tracing::warn!(error = %e, "ANALYZE units after adding units failed");
        }
        Ok(())
    }

    /// One pool with its counts (one row, whatever the pool handed out).
    pub async fn pool_info(&self, pool: &str) -> Result<PoolInfo, EngineError> {
        let row: Option<CountsRow> = sqlx::query_as(AssertSqlSafe(self.sql.pool_info.as_str()))
            .bind(pool)
            .fetch_optional(self.reads.pool())
            .await?;
        row.map(pool_info_from_row)
            .ok_or_else(|| EngineError::UnknownPool(pool.to_owned()))
    }

    /// Up to `limit` pools with their counts, ordered by id, starting after the pool `after`
    /// (`""` for the first page). One row per pool, plus its expired reservations.
    pub async fn list_pools(&self, after: &str, limit: i64) -> Result<Vec<PoolInfo>, EngineError> {
        let rows: Vec<CountsRow> = sqlx::query_as(AssertSqlSafe(self.sql.list_pools.as_str()))
            .bind(after)
            .bind(limit)
            .fetch_all(self.reads.pool())
            .await?;
        Ok(rows.into_iter().map(pool_info_from_row).collect())
    }
}

/// How many of `pools` name each pool, in pool order (so counts rows are locked in one order).
fn per_pool<'a>(pools: impl Iterator<Item = &'a String>) -> Vec<(&'a str, i64)> {
    let mut counted = std::collections::BTreeMap::<&str, i64>::new();
    for pool in pools {
        *counted.entry(pool.as_str()).or_default() += 1;
    }
    counted.into_iter().collect()
}

/// Answers a write with the wrong kind of answer: a bug, reported as an internal error.
fn unreachable_answer<T>(answer: Written) -> Result<T, EngineError> {
    tracing::error!(?answer, "a write was answered with another write's answer");
    Err(EngineError::Db(sqlx::Error::Protocol(
        "a write was answered with another write's answer".into(),
    )))
}

/// One write a [`GroupCommit`] carries.
#[derive(Debug, Clone)]
enum Write {
    /// One claim attempt (see [`Writer::reserve_in`]).
    Reserve {
        order_id: String,
        pool: String,
        ttl_ms: i64,
    },
    /// Assign a live reservation.
    Assign { order_id: String, unit_id: String },
    /// Free what the order holds and leave its tombstone.
    Release { order_id: String },
}

impl Write {
    fn order_id(&self) -> &str {
        match self {
            Self::Reserve { order_id, .. }
            | Self::Assign { order_id, .. }
            | Self::Release { order_id } => order_id,
        }
    }
}

/// The answer to a [`Write`].
#[derive(Debug)]
enum Written {
    /// The reservation, or `None` when nothing free was visible (the pool is empty, or others
    /// hold locks on what is left).
    Claimed(Option<Reservation>),
    /// Whether a live reservation was assigned by this write.
    Assigned(bool),
    /// The unit freed, if the order held one.
    Released(Option<String>),
}

/// Runs [`Write`]s, alone or many in one transaction.
///
/// A batch runs its writes in the order they arrived, so the earliest reserves get the last
/// units of a pool (with one writer, the default, exactly as if they had run one by one);
/// unit claims skip locked rows; counts rows are changed last, in pool order ([`Deltas`]). A write refused for a business reason (released, nothing free, not
/// held) is answered and the batch goes on; a database error fails the batch as a whole and
/// [`GroupCommit`] runs each write again alone. Every write is idempotent per order, so that
/// is safe even when a commit's outcome was unknown.
#[derive(Debug, Clone)]
struct Writer {
    db: Db,
    sql: std::sync::Arc<Queries>,
}

impl Committer for Writer {
    type Item = Write;
    type Output = Written;
    type Error = EngineError;

    async fn run_one(&self, write: &Write) -> Result<Written, EngineError> {
        if let Write::Assign { .. } = write {
            fail::fail_point!("participant-assign-before-commit");
        }
        let mut tx = self.db.pool().begin().await?;
        let mut deltas = Deltas::default();
        let written = self.write_in(&mut tx, write, &mut deltas).await?;
        if let Written::Claimed(None) | Written::Assigned(false) = written {
            // Nothing changed but the reserve's anchor row: leave no trace.
            tx.rollback().await?;
            return Ok(written);
        }
        deltas.apply(&self.sql, &mut tx).await?;
        before_commit(std::slice::from_ref(write));
        tx.commit().await?;
        after_commit(std::slice::from_ref(write));
        Ok(written)
    }

    async fn run_batch(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<Written, EngineError>>, sqlx::Error> {
        if writes.iter().any(|w| matches!(w, Write::Assign { .. })) {
            fail::fail_point!("participant-assign-before-commit");
        }
        let mut tx = self.db.pool().begin().await?;
        let mut deltas = Deltas::default();
        let answers = if self.sql.set.is_some() && set::distinct_orders(writes) {
            self.run_set(&mut tx, writes, &mut deltas)
                .await
                .map_err(into_db)?
        } else {
            // In the order they arrived: claims go to the earliest requests.
            let mut answers = Vec::with_capacity(writes.len());
            for write in writes {
                match self.write_in(&mut tx, write, &mut deltas).await {
                    Err(EngineError::Db(e)) => return Err(e),
                    answer => answers.push(answer),
                }
            }
            answers
        };
        deltas.apply(&self.sql, &mut tx).await.map_err(into_db)?;
        before_commit(writes);
        tx.commit().await?;
        after_commit(writes);
        Ok(answers)
    }
}

/// The database error inside an engine error (the only kind a batch's helpers return
/// besides the answers themselves).
fn into_db(e: EngineError) -> sqlx::Error {
    match e {
        EngineError::Db(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Failpoints `participant-<write>-before-commit`, once per kind of write in the transaction.
fn before_commit(writes: &[Write]) {
    if writes.iter().any(|w| matches!(w, Write::Reserve { .. })) {
        fail::fail_point!("participant-reserve-before-commit");
    }
    if writes.iter().any(|w| matches!(w, Write::Release { .. })) {
        fail::fail_point!("participant-release-before-commit");
    }
}

/// Failpoints `participant-<write>-after-commit`, once per kind of write in the transaction.
fn after_commit(writes: &[Write]) {
    if writes.iter().any(|w| matches!(w, Write::Reserve { .. })) {
        fail::fail_point!("participant-reserve-after-commit");
    }
    if writes.iter().any(|w| matches!(w, Write::Assign { .. })) {
        fail::fail_point!("participant-assign-after-commit");
    }
    if writes.iter().any(|w| matches!(w, Write::Release { .. })) {
        fail::fail_point!("participant-release-after-commit");
    }
}

impl Writer {
    /// Runs one write in the caller's transaction, adding its counts changes to `deltas`.
    async fn write_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        write: &Write,
        deltas: &mut Deltas,
    ) -> Result<Written, EngineError> {
        match write {
            Write::Reserve {
                order_id,
                pool,
                ttl_ms,
            } => Ok(Written::Claimed(
                self.reserve_in(conn, order_id, pool, *ttl_ms, deltas)
                    .await?,
            )),
            Write::Assign { order_id, unit_id } => Ok(Written::Assigned(
                self.assign_in(conn, order_id, unit_id, deltas).await?,
            )),
            Write::Release { order_id } => {
                sqlx::query(AssertSqlSafe(self.sql.tombstone.as_str()))
                    .bind(order_id)
                    .execute(&mut *conn)
                    .await?;
                let freed = self.sql.free_held(conn, order_id, false, deltas).await?;
                Ok(Written::Released(freed))
            }
        }
    }

    /// One claim attempt: anchors the order (its `claims` row lock serialises a concurrent
    /// release or reserve of the same order), returns or renews what it holds, else claims a
    /// free unit, else an expired reservation. `None` when nothing free was visible.
    async fn reserve_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        order_id: &str,
        pool: &str,
        ttl_ms: i64,
        deltas: &mut Deltas,
    ) -> Result<Option<Reservation>, EngineError> {
        let sql = &self.sql;
        let released: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.anchor_claim.as_str()))
            .bind(order_id)
            .fetch_one(&mut *conn)
            .await?;
        if released.is_some() {
            return Err(EngineError::Released(order_id.to_owned()));
        }
        // Always read what the order holds, even when its anchor is fresh: the sweeper forgets
        // claims after their retention while a unit may still be held
        // (`claims_are_forgotten_after_their_retention`).
        let held: Option<(String, String, String, Option<i64>)> =
            sqlx::query_as(AssertSqlSafe(sql.held.as_str()))
                .bind(order_id)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((unit_id, held_pool, status, expires_at_ms)) = held {
            if held_pool != pool {
                return Err(EngineError::InvalidArgument(format!(
                    "order {order_id:?} already holds a unit of pool {held_pool:?}"
                )));
            }
            if status == "assigned" {
                return Ok(Some(Reservation {
                    unit_id,
                    expires_at_ms,
                }));
            }
            let renewed: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.renew.as_str()))
                .bind(&unit_id)
                .bind(order_id)
                .bind(ttl_ms)
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(expires_at) = renewed {
                return Ok(Some(Reservation {
                    unit_id,
                    expires_at_ms: Some(expires_at),
                }));
            }
            // The sweeper freed it between our read and the renewal: claim afresh below.
        }
        fail::fail_point!("participant-reserve-before-claim");
        let claimed: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(sql.claim_free.as_str()))
            .bind(order_id)
            .bind(pool)
            .bind(ttl_ms)
            .fetch_optional(&mut *conn)
            .await?;
        if claimed.is_some() {
            let delta = CountsDelta {
                available: -1,
                reserved: 1,
                ..CountsDelta::default()
            };
            deltas.add(pool, delta);
            return Ok(claimed.map(|(unit_id, expires_at)| Reservation {
                unit_id,
                expires_at_ms: Some(expires_at),
            }));
        }
        self.claim_expired_in(conn, order_id, pool, ttl_ms).await
    }

    /// Takes over a reservation of `pool` that expired and that the sweeper has not freed yet
    /// (the counts do not change); `None` when there is none.
    async fn claim_expired_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        order_id: &str,
        pool: &str,
        ttl_ms: i64,
    ) -> Result<Option<Reservation>, EngineError> {
        let claimed: Option<(String, i64)> =
            sqlx::query_as(AssertSqlSafe(self.sql.claim_expired.as_str()))
                .bind(order_id)
                .bind(pool)
                .bind(ttl_ms)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(claimed.map(|(unit_id, expires_at)| Reservation {
            unit_id,
            expires_at_ms: Some(expires_at),
        }))
    }

    /// Assigns a live reservation; false when there was none.
    async fn assign_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        order_id: &str,
        unit_id: &str,
        deltas: &mut Deltas,
    ) -> Result<bool, EngineError> {
        let pool: Option<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.assign.as_str()))
            .bind(order_id)
            .bind(unit_id)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(pool) = pool else {
            return Ok(false);
        };
        let delta = CountsDelta {
            reserved: -1,
            assigned: 1,
            ..CountsDelta::default()
        };
        deltas.add(&pool, delta);
        Ok(true)
    }
}

impl Queries {
    /// Moves one pool's counts by `delta`, in the caller's transaction.
    async fn count(
        &self,
        conn: &mut sqlx::AnyConnection,
        pool: &str,
        delta: CountsDelta,
    ) -> Result<(), EngineError> {
        sqlx::query(AssertSqlSafe(self.counts.as_str()))
            .bind(pool)
            .bind(delta.available)
            .bind(delta.reserved)
            .bind(delta.assigned)
            .bind(delta.retired)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Frees the unit `order_id` holds (locked first), adding the counts change to `deltas`.
    /// With `only_assigned`, a held unit that is not assigned is refused instead. Returns the
    /// freed unit, if the order held one.
    async fn free_held(
        &self,
        conn: &mut sqlx::AnyConnection,
        order_id: &str,
        only_assigned: bool,
        deltas: &mut Deltas,
    ) -> Result<Option<String>, EngineError> {
        let held: Option<(String, String, String)> =
            sqlx::query_as(AssertSqlSafe(self.lock_held.as_str()))
                .bind(order_id)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((unit_id, pool, status)) = held else {
            return Ok(None);
        };
        let assigned = status == "assigned";
        if only_assigned && !assigned {
            return Err(EngineError::NotAssigned(order_id.to_owned()));
        }
        sqlx::query(AssertSqlSafe(self.free_unit.as_str()))
            .bind(&unit_id)
            .execute(&mut *conn)
            .await?;
        let delta = CountsDelta {
            available: 1,
            reserved: if assigned { 0 } else { -1 },
            assigned: if assigned { -1 } else { 0 },
            ..CountsDelta::default()
        };
        deltas.add(&pool, delta);
        Ok(Some(unit_id))
    }
}
