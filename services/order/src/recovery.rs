//! The recovery loop: finishes sagas whose driver went away.
//!
//! Every `interval`, an instance atomically claims unfinished orders whose lease ran out
//! (`SKIP LOCKED` on PostgreSQL, so instances never claim the same order) and drives each one
//! from its persisted state: forward while the participants still accept the reservations,
//! backward (release both) once they refuse or the retry deadline passes.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, time::Instant};

use crate::orchestrator::Orchestrator;

/// Longest a claimed saga waits for a saga slot (the lease will long have expired).
const LONG_WAIT: Duration = Duration::from_secs(3600);

/// Recovery settings.
#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    /// Pause between claims.
    pub interval: Duration,
    /// Most sagas this instance recovers at once.
    pub max_concurrent: usize,
    /// How long saga history events are kept.
    pub history_retention: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            max_concurrent: 64,
            history_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Runs until `shutdown` completes. Errors are logged and retried on the next tick.
pub async fn run(
    orchestrator: Orchestrator,
    config: RecoveryConfig,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
    order_saga_platform::app::every(config.interval, shutdown, || {
        claim_round(&orchestrator, &permits)
    })
    .await;
}

/// Deletes history events older than the retention, once a minute, in batches, until
/// `shutdown` completes.
pub async fn prune_history(
    orchestrator: Orchestrator,
    retention: Duration,
    shutdown: impl Future<Output = ()>,
) {
    const BATCH: i64 = 1000;
    order_saga_platform::app::every(Duration::from_secs(60), shutdown, || async {
        loop {
            match orchestrator.repo().prune_history(retention, BATCH).await {
                Ok(n) if n > 0 => {
                    tracing::info!(count = n, "pruned saga history past its retention");
                    metrics::counter!("saga_history_pruned_total").increment(n);
                    if (n as i64) < BATCH {
                        return;
                    }
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning saga history failed, will retry");
                    return;
                }
            }
        }
    })
    .await;
}

/// One round: claims as many expired sagas as there are free slots and drives each in a task.
async fn claim_round(orchestrator: &Orchestrator, permits: &Arc<Semaphore>) {
    // Claim no more than this loop and the instance's saga slots can drive now.
    let free = permits
        .available_permits()
        .min(orchestrator.free_saga_slots());
    if free == 0 {
        return;
    }
    let claimed = orchestrator
        .repo()
        .claim_expired(
            orchestrator.instance(),
            orchestrator.config().lease,
            free as i64,
        )
        .await;
    let orders = match claimed {
        Ok(orders) => orders,
        Err(e) => {
            tracing::warn!(error = %e, "recovery claim failed, will retry");
            return;
        }
    };
    for record in orders {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            break;
        };
        let orchestrator = orchestrator.clone();
        tracing::info!(order_id = %record.order_id, phase = record.saga.phase.as_str(), "recovering saga");
        tokio::spawn(async move {
            let _permit = permit;
            // Requests may have taken the slots counted above; wait for one. If the lease
            // runs out meanwhile, whoever claims the saga next fences this driver off.
            let Some(_slot) = orchestrator.saga_slot(Instant::now() + LONG_WAIT).await else {
                return;
            };
            if let Err(e) = orchestrator.drive(record).await {
                tracing::warn!(error = %e, "recovery stopped; the saga will be claimed again");
            }
        });
    }
}
