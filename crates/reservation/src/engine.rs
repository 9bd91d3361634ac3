//! The reservation protocol over one participant database.
//!
//! Every state change is one atomic statement, or a short transaction that first locks the
//! order's `claims` row (serialising reserve and release of the same order) and never spans a
//! network call. Expiry is compared with the database clock inside the statement that acts on
//! it, so application clocks never matter.

use std::time::Duration;

use order_saga_platform::db::{Db, detached, is_unique_violation};
use sqlx::AssertSqlSafe;
use tracing::instrument;

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
}

impl EngineConfig {
    /// Defaults for units with the given id prefix: TTL from 1 s to 1 h, 3 claim attempts.
    pub fn new(unit_prefix: &'static str) -> Self {
        Self {
            unit_prefix,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            claim_attempts: 3,
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

/// Who held a unit that was just freed by an administrative action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitHolder {
    /// The unit.
    pub unit_id: String,
    /// The order that held it.
    pub order_id: String,
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
    /// The pool exists already.
    #[error("pool {0:?} already exists")]
    PoolExists(String),
    /// The unit does not exist or is not in the state the call needs.
    #[error("{0}")]
    UnitNotFound(String),
    /// A request field is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Outcome of one claim attempt.
enum Claim {
    Claimed(Reservation),
    /// Nothing free was visible: the pool is empty, or others hold locks on what is left.
    Nothing,
}

/// SQL for this engine's backend, rendered once.
#[derive(Debug)]
struct Queries {
    anchor_claim: String,
    claim_free: String,
    claim_expired: String,
    free_count: String,
    assign: String,
    unit_state: String,
    tombstone: String,
    release_units: String,
    sweep: String,
    forget_claims: String,
    pool_info: String,
    list_pools: String,
    insert_pool: String,
    insert_pool_if_missing: String,
    lock_unit: String,
    finish_unit: String,
}

impl Queries {
    fn new(db: &Db) -> Self {
        let counts = "SELECT p.pool, p.name, p.created_at, \
               COUNT(CASE WHEN u.status = 'available' \
                 OR (u.status = 'reserved' AND u.expires_at <= {now}) THEN 1 END), \
               COUNT(CASE WHEN u.status = 'reserved' AND u.expires_at > {now} THEN 1 END), \
               COUNT(CASE WHEN u.status = 'assigned' THEN 1 END) \
             FROM pools p LEFT JOIN units u ON u.pool = p.pool";
        Self {
            // One statement inserts the order's claim row or, when it exists, locks it (the
            // no-op update takes the row lock) and returns its tombstone either way.
            anchor_claim: db.sql(
                "INSERT INTO claims (order_id, released_at, created_at) VALUES ($1, NULL, {now}) \
                 ON CONFLICT (order_id) DO UPDATE SET order_id = excluded.order_id \
                 RETURNING released_at",
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
            // has not freed yet.
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
            free_count: db.sql(
                "SELECT COUNT(*) FROM units WHERE pool = $1 AND (status = 'available' \
                   OR (status = 'reserved' AND expires_at <= {now}))",
            ),
            assign: db.sql(
                "UPDATE units SET status = 'assigned', expires_at = NULL, updated_at = {now} \
                 WHERE unit_id = $2 AND order_id = $1 \
                   AND (status = 'assigned' OR (status = 'reserved' AND expires_at > {now})) \
                 RETURNING unit_id",
            ),
            unit_state: db.sql("SELECT order_id, expires_at, {now} FROM units WHERE unit_id = $1"),
            tombstone: db.sql(
                "INSERT INTO claims (order_id, released_at, created_at) VALUES ($1, {now}, {now}) \
                 ON CONFLICT (order_id) DO UPDATE \
                 SET released_at = COALESCE(claims.released_at, excluded.released_at)",
            ),
            release_units: db.sql(
                "UPDATE units SET status = 'available', order_id = NULL, expires_at = NULL, \
                   updated_at = {now} \
                 WHERE order_id = $1 RETURNING unit_id",
            ),
            sweep: db.sql(
                "UPDATE units SET status = 'available', order_id = NULL, expires_at = NULL, \
                   updated_at = {now} \
                 WHERE unit_id IN ( \
                   SELECT unit_id FROM units \
                   WHERE status = 'reserved' AND expires_at <= {now} \
                   LIMIT $1 {skip_locked}) \
                 AND status = 'reserved' AND expires_at <= {now} \
                 RETURNING unit_id",
            ),
            // Claims whose retention has passed: the anchor's reserve and any release are
            // that long ago. SKIP LOCKED leaves a claim a reserve or release is using alone.
            forget_claims: db.sql(
                "DELETE FROM claims WHERE order_id IN ( \
                   SELECT order_id FROM claims \
                   WHERE created_at <= {now} - $1 \
                     AND (released_at IS NULL OR released_at <= {now} - $1) \
                   ORDER BY created_at LIMIT $2 {skip_locked})",
            ),
            pool_info: db.sql(&format!(
                "{counts} WHERE p.pool = $1 GROUP BY p.pool, p.name, p.created_at"
            )),
            // The page of pools is chosen first, so only its pools' units are counted (through
            // the index on units(pool, status)), never the whole table.
            list_pools: db.sql(&format!(
                "{} GROUP BY p.pool, p.name, p.created_at ORDER BY p.pool",
                counts.replace(
                    "FROM pools p",
                    "FROM (SELECT pool, name, created_at FROM pools WHERE pool > $1 \
                       ORDER BY pool LIMIT $2) p",
                )
            )),
            insert_pool: db
                .sql("INSERT INTO pools (pool, name, created_at) VALUES ($1, $2, {now})"),
            insert_pool_if_missing: db.sql(
                "INSERT INTO pools (pool, name, created_at) VALUES ($1, $2, {now}) \
                 ON CONFLICT (pool) DO NOTHING",
            ),
            lock_unit: db.sql("SELECT status, order_id FROM units WHERE unit_id = $1 {for_update}"),
            finish_unit: db.sql(
                "UPDATE units SET status = 'available', order_id = NULL, expires_at = NULL, \
                   updated_at = {now} \
                 WHERE unit_id = $1 AND status = 'assigned'",
            ),
        }
    }
}

/// The reservation engine of one participant.
#[derive(Debug, Clone)]
pub struct Engine {
    db: Db,
    config: EngineConfig,
    sql: std::sync::Arc<Queries>,
}

type CountsRow = (String, String, i64, i64, i64, i64);

fn pool_info_from_row(
    (pool, name, created_at_ms, available, reserved, assigned): CountsRow,
) -> PoolInfo {
    PoolInfo {
        pool,
        name,
        created_at_ms,
        counts: PoolCounts {
            available,
            reserved,
            assigned,
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

impl Engine {
    /// An engine over `db`, whose schema must be migrated with [`crate::MIGRATOR`].
    pub fn new(db: Db, config: EngineConfig) -> Self {
        let sql = std::sync::Arc::new(Queries::new(&db));
        Self { db, config, sql }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Claims one free unit of `pool` for `order_id` until `ttl` passes.
    ///
    /// Idempotent per order: when the order already holds a unit here, that unit is returned.
    /// Refused with [`EngineError::Released`] after a release of the order (tombstone),
    /// [`EngineError::Exhausted`] when the pool has no free unit, [`EngineError::Contended`]
    /// when free units exist but concurrent claimants held them on every attempt.
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
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        for attempt in 1..=self.config.claim_attempts.max(1) {
            let (this, order, pool_id) = (self.clone(), order_id.to_owned(), pool.to_owned());
            let claim = detached(async move { this.try_reserve(&order, &pool_id, ttl_ms).await });
            if let Claim::Claimed(r) = claim.await? {
                return Ok(r);
            }
            let free: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.free_count.as_str()))
                .bind(pool)
                .fetch_one(self.db.pool())
                .await?;
            if free == 0 {
                // Nothing to claim: an unknown pool, or one with no free unit.
                require_pool(self.db.pool(), pool).await?;
                return Err(EngineError::Exhausted(pool.to_owned()));
            }
            tracing::debug!(attempt, free, "claim skipped locked units, retrying");
            tokio::task::yield_now().await;
        }
        Err(EngineError::Contended(pool.to_owned()))
    }

    async fn try_reserve(
        &self,
        order_id: &str,
        pool: &str,
        ttl_ms: i64,
    ) -> Result<Claim, EngineError> {
        let sql = &self.sql;
        let mut tx = self.db.pool().begin().await?;
        // Anchor the order: this row lock serialises us with a concurrent release or reserve
        // of the same order.
        let released: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.anchor_claim.as_str()))
            .bind(order_id)
            .fetch_one(&mut *tx)
            .await?;
        if released.is_some() {
            return Err(EngineError::Released(order_id.to_owned()));
        }
        let held: Option<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT unit_id, pool, expires_at FROM units WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((unit_id, held_pool, expires_at_ms)) = held {
            tx.commit().await?;
            if held_pool != pool {
                return Err(EngineError::InvalidArgument(format!(
                    "order {order_id:?} already holds a unit of pool {held_pool:?}"
                )));
            }
            return Ok(Claim::Claimed(Reservation {
                unit_id,
                expires_at_ms,
            }));
        }
        fail::fail_point!("participant-reserve-before-claim");
        let mut claimed: Option<(String, i64)> =
            sqlx::query_as(AssertSqlSafe(sql.claim_free.as_str()))
                .bind(order_id)
                .bind(pool)
                .bind(ttl_ms)
                .fetch_optional(&mut *tx)
                .await?;
        if claimed.is_none() {
            claimed = sqlx::query_as(AssertSqlSafe(sql.claim_expired.as_str()))
                .bind(order_id)
                .bind(pool)
                .bind(ttl_ms)
                .fetch_optional(&mut *tx)
                .await?;
        }
        match claimed {
            Some((unit_id, expires_at)) => {
                fail::fail_point!("participant-reserve-before-commit");
                tx.commit().await?;
                fail::fail_point!("participant-reserve-after-commit");
                Ok(Claim::Claimed(Reservation {
                    unit_id,
                    expires_at_ms: Some(expires_at),
                }))
            }
            None => {
                tx.rollback().await?;
                Ok(Claim::Nothing)
            }
        }
    }

    /// Makes the reservation of `unit_id` by `order_id` permanent.
    ///
    /// Succeeds while the reservation is held by the order and unexpired, and again on every
    /// repeat after success. Otherwise [`EngineError::NotHeld`] says why.
    #[instrument(skip_all, fields(order_id = %order_id, unit_id = %unit_id), err(level = "debug"))]
    pub async fn assign(&self, order_id: &str, unit_id: &str) -> Result<(), EngineError> {
        fail::fail_point!("participant-assign-before-commit");
        let done: Option<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.assign.as_str()))
            .bind(order_id)
            .bind(unit_id)
            .fetch_optional(self.db.pool())
            .await?;
        fail::fail_point!("participant-assign-after-commit");
        if done.is_some() {
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
        let (this, order_id) = (self.clone(), order_id.to_owned());
        detached(async move { this.release_tx(&order_id).await }).await
    }

    async fn release_tx(&self, order_id: &str) -> Result<Option<String>, EngineError> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(AssertSqlSafe(self.sql.tombstone.as_str()))
            .bind(order_id)
            .execute(&mut *tx)
            .await?;
        let freed: Option<String> =
            sqlx::query_scalar(AssertSqlSafe(self.sql.release_units.as_str()))
                .bind(order_id)
                .fetch_optional(&mut *tx)
                .await?;
        fail::fail_point!("participant-release-before-commit");
        tx.commit().await?;
        fail::fail_point!("participant-release-after-commit");
        Ok(freed)
    }

    /// Frees up to `batch` reservations whose expiry has passed by the database clock.
    /// Safe to run from any number of sweepers at once. Returns the freed units.
    #[instrument(skip_all, err)]
    pub async fn sweep(&self, batch: i64) -> Result<Vec<String>, EngineError> {
        Ok(sqlx::query_scalar(AssertSqlSafe(self.sql.sweep.as_str()))
            .bind(batch)
            .fetch_all(self.db.pool())
            .await?)
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
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let done = sqlx::query(AssertSqlSafe(self.sql.forget_claims.as_str()))
            .bind(retention_ms)
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

    /// One pool with its counts.
    pub async fn pool_info(&self, pool: &str) -> Result<PoolInfo, EngineError> {
        let row: Option<CountsRow> = sqlx::query_as(AssertSqlSafe(self.sql.pool_info.as_str()))
            .bind(pool)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(pool_info_from_row)
            .ok_or_else(|| EngineError::UnknownPool(pool.to_owned()))
    }

    /// Up to `limit` pools with their counts, ordered by id, starting after the pool `after`
    /// (`""` for the first page). Counting reads only those pools' units.
    pub async fn list_pools(&self, after: &str, limit: i64) -> Result<Vec<PoolInfo>, EngineError> {
        let rows: Vec<CountsRow> = sqlx::query_as(AssertSqlSafe(self.sql.list_pools.as_str()))
            .bind(after)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.into_iter().map(pool_info_from_row).collect())
    }

    /// Ends an assignment because the work is done (a delivery completed): the unit becomes
    /// available again. Only assigned units can be finished.
    #[instrument(skip_all, fields(unit_id = %unit_id), err(level = "debug"))]
    pub async fn finish_assignment(&self, unit_id: &str) -> Result<UnitHolder, EngineError> {
        let (this, unit_id) = (self.clone(), unit_id.to_owned());
        detached(async move { this.finish_assignment_tx(&unit_id).await }).await
    }

    async fn finish_assignment_tx(&self, unit_id: &str) -> Result<UnitHolder, EngineError> {
        let mut tx = self.db.pool().begin().await?;
        let row: Option<(String, Option<String>)> =
            sqlx::query_as(AssertSqlSafe(self.sql.lock_unit.as_str()))
                .bind(unit_id)
                .fetch_optional(&mut *tx)
                .await?;
        let order_id = match row {
            None => {
                return Err(EngineError::UnitNotFound(format!(
                    "unit {unit_id:?} not found"
                )));
            }
            Some((status, Some(order_id))) if status == "assigned" => order_id,
            Some(_) => {
                return Err(EngineError::UnitNotFound(format!(
                    "unit {unit_id:?} is not assigned to an order"
                )));
            }
        };
        sqlx::query(AssertSqlSafe(self.sql.finish_unit.as_str()))
            .bind(unit_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(UnitHolder {
            unit_id: unit_id.to_owned(),
            order_id,
        })
    }
}
