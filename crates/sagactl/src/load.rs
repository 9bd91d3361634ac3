//! `sagactl place-many`: many orders at once, counting outcomes and busy answers.
//!
//! This is a smoke-level load generator (the walkthrough and the compose smoke test use it).
//! For throughput and latency figures use the benchmark: `make bench`.

use std::{sync::Arc, time::Duration};

use anyhow::bail;
use order_saga_proto::order::v1::{
    OrderState, PlaceOrderRequest, order_service_client::OrderServiceClient,
};
use tokio::time::Instant;

use order_saga_saga::ClientRetry;

use crate::client::{Urls, retry_after_error, state_name};

/// What to place (the flags of `sagactl place-many`).
#[derive(Debug, clap::Args)]
pub struct Load {
    /// How many orders.
    #[arg(long)]
    pub count: usize,
    /// How many in flight at once (all on one connection).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Food to order.
    #[arg(long)]
    pub food: String,
    /// Delivery zone.
    #[arg(long)]
    pub zone: String,
    /// Prefix of the idempotency keys (`<prefix>-<n>`); default a fresh one.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Keep retrying a failed request (same key) for this long; busy answers
    /// (`UNAVAILABLE` with a retry hint) are always retried, after the hinted delay.
    #[arg(long, default_value = "0s", value_parser = crate::client::humantime_duration)]
    pub retry_for: Duration,
    /// Exit 0 even when some requests failed.
    #[arg(long)]
    pub allow_errors: bool,
}

#[derive(Debug, Default)]
struct Outcome {
    placed: usize,
    not_placed: usize,
    errors: usize,
    busy_retries: usize,
    first_error: Option<String>,
}

/// One order, retried with its key until it has a final answer. Returns the state and how
/// many busy answers it met.
async fn place_one(
    mut client: OrderServiceClient<tonic::transport::Channel>,
    request: PlaceOrderRequest,
    retry_for: Duration,
) -> (Result<i32, String>, usize) {
    let give_up = Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(100);
    let mut busy = 0;
    loop {
        match client.place_order(request.clone()).await {
            Ok(order) => return (Ok(order.into_inner().state), busy),
            Err(s) => match retry_after_error(&s, give_up) {
                ClientRetry::Busy(delay) => {
                    busy += 1;
                    tokio::time::sleep(delay).await;
                }
                ClientRetry::Backoff => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                ClientRetry::Stop => {
                    return (Err(format!("{:?}: {}", s.code(), s.message())), busy);
                }
            },
        }
    }
}

/// Places `load` and prints the counts; fails if a request failed, unless `allow_errors`.
pub async fn run(urls: &Urls, load: Load) -> anyhow::Result<()> {
    let prefix = load
        .key_prefix
        .clone()
        .unwrap_or_else(|| format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let client = OrderServiceClient::new(urls.connect(&urls.order).await?);
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(load.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..load.count {
        let permits = permits.clone();
        let request = PlaceOrderRequest {
            idempotency_key: format!("{prefix}-{i}"),
            customer_id: "load".into(),
            food_id: load.food.clone(),
            zone: load.zone.clone(),
        };
        let (client, retry_for) = (client.clone(), load.retry_for);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            place_one(client, request, retry_for).await
        });
    }
    let mut outcome = Outcome::default();
    while let Some(result) = tasks.join_next().await {
        let (result, busy) = match result {
            Ok(done) => done,
            Err(e) => (Err(e.to_string()), 0),
        };
        outcome.busy_retries += busy;
        match result {
            Ok(state) if state == OrderState::Placed as i32 => outcome.placed += 1,
            Ok(state) if state == OrderState::NotPlaced as i32 => outcome.not_placed += 1,
            Ok(state) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert(format!("unexpected state {}", state_name(state)));
            }
            Err(e) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(e) = &outcome.first_error {
        eprintln!("first error: {e}");
    }
    println!(
        "elapsed={:.2}s throughput={:.1}/s",
        elapsed.as_secs_f64(),
        load.count as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "attempted={} placed={} not_placed={} errors={} busy_retries={}",
        load.count, outcome.placed, outcome.not_placed, outcome.errors, outcome.busy_retries
    );
    if outcome.errors > 0 && !load.allow_errors {
        bail!("{} request(s) failed", outcome.errors);
    }
    Ok(())
}
