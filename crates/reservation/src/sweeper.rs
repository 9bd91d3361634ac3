//! The sweeper: periodically frees reservations whose expiry has passed, forgets claims
//! (anchors and release tombstones) older than the claim retention, and retires assigned
//! units older than the unit retention, so the tables stay bounded by the live units.
//!
//! Each participant runs one as a background task. Expiry is judged by the database clock
//! inside the sweeping statement, and rows are taken with `SKIP LOCKED`, so any number of
//! sweepers (several instances of a service) can run at once without double work or blocking.

use std::{future::Future, time::Duration};

use crate::Engine;

/// Claims are kept a week by default: far beyond the longest reservation TTL.
pub const DEFAULT_CLAIM_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Sweeper settings.
#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// Pause between sweeps.
    pub interval: Duration,
    /// Most reservations freed, or claims forgotten, per statement.
    pub batch: i64,
    /// How long claims are kept (see [`Engine::forget_claims`]).
    pub claim_retention: Duration,
    /// How long assigned units are kept before they are retired (see
    /// [`Engine::retire_assigned`]); `None` keeps them.
    pub assigned_retention: Option<Duration>,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            batch: 1000,
            claim_retention: DEFAULT_CLAIM_RETENTION,
            assigned_retention: None,
        }
    }
}

/// Sweeps every `interval` until `shutdown` completes. Database errors are logged and the next
/// sweep tries again, so a database outage does not stop the sweeper.
pub async fn run(engine: Engine, config: SweeperConfig, shutdown: impl Future<Output = ()>) {
    order_saga_platform::app::every(config.interval, shutdown, || async {
        release_expired(&engine, &config).await;
        forget_old_claims(&engine, &config).await;
        if let Some(retention) = config.assigned_retention {
            retire_old_assignments(&engine, retention, config.batch).await;
        }
    })
    .await;
}

/// Most pools whose unit counts are reported (the rest are left out of the metrics, to bound
/// their series).
const REPORTED_POOLS: usize = 1000;

/// Sets the `reservation_units{pool, state}` gauges every 10 s, until `shutdown` completes:
/// the units of each pool (the first [`REPORTED_POOLS`] by id) that are available, reserved
/// and assigned.
pub async fn report_units(engine: Engine, shutdown: impl Future<Output = ()>) {
    order_saga_platform::app::every(Duration::from_secs(10), shutdown, || async {
        let mut after = String::new();
        let mut reported = 0;
        while reported < REPORTED_POOLS {
            let page = match engine.list_pools(&after, 500).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(error = %e, "reading unit counts for the metrics failed");
                    return;
                }
            };
            for p in &page {
                let c = &p.counts;
                for (state, n) in [
                    ("available", c.available),
                    ("reserved", c.reserved),
                    ("assigned", c.assigned),
                    ("retired", c.retired),
                ] {
                    metrics::gauge!("reservation_units", "pool" => p.pool.clone(), "state" => state)
                        .set(n as f64);
                }
            }
            reported += page.len();
            match page.last() {
                Some(last) if page.len() == 500 => after = last.pool.clone(),
                _ => return,
            }
        }
    })
    .await;
}

/// Releases expired reservations in batches, so a backlog is cleared within one tick.
async fn release_expired(engine: &Engine, config: &SweeperConfig) {
    loop {
        match engine.sweep(config.batch).await {
            Ok(freed) if !freed.is_empty() => {
                tracing::info!(count = freed.len(), "released expired reservations");
                metrics::counter!("reservation_swept_total").increment(freed.len() as u64);
                if (freed.len() as i64) < config.batch {
                    return;
                }
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "sweep failed, will retry");
                return;
            }
        }
    }
}

/// Retires the units assigned longer ago than `retention`, in batches.
async fn retire_old_assignments(engine: &Engine, retention: Duration, batch: i64) {
    loop {
        match engine.retire_assigned(retention, batch).await {
            Ok(0) => return,
            Ok(n) => {
                tracing::info!(count = n, "retired units past the unit retention");
                metrics::counter!("reservation_units_retired_total").increment(n);
                if (n as i64) < batch {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retiring old assignments failed, will retry");
                return;
            }
        }
    }
}

/// Deletes the claims older than the retention, in batches.
async fn forget_old_claims(engine: &Engine, config: &SweeperConfig) {
    loop {
        match engine
            .forget_claims(config.claim_retention, config.batch)
            .await
        {
            Ok(0) => return,
            Ok(n) => {
                tracing::info!(count = n, "forgot claims past their retention");
                if (n as i64) < config.batch {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "forgetting old claims failed, will retry");
                return;
            }
        }
    }
}
