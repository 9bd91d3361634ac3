//! The sweeper: periodically frees reservations whose expiry has passed, and forgets claims
//! (anchors and release tombstones) older than the claim retention so the table stays bounded.
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
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            batch: 1000,
            claim_retention: DEFAULT_CLAIM_RETENTION,
        }
    }
}

/// Sweeps every `interval` until `shutdown` completes. Database errors are logged and the next
/// sweep tries again, so a database outage does not stop the sweeper.
pub async fn run(engine: Engine, config: SweeperConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // Drain in batches so a backlog is cleared within one tick.
        loop {
            match engine.sweep(config.batch).await {
                Ok(freed) if !freed.is_empty() => {
                    tracing::info!(count = freed.len(), "released expired reservations");
                    if (freed.len() as i64) < config.batch {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "sweep failed, will retry");
                    break;
                }
            }
        }
        forget_old_claims(&engine, &config).await;
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
