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
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            max_concurrent: 64,
        }
    }
}

/// Runs until `shutdown` completes. Errors are logged and retried on the next tick.
pub async fn run(
    orchestrator: Orchestrator,
    config: RecoveryConfig,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let permits = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        // Claim no more than this loop and the instance's saga slots can drive now.
        let free = permits
            .available_permits()
            .min(orchestrator.free_saga_slots());
        if free == 0 {
            continue;
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
                continue;
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
}
