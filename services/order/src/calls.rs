//! Coalesced participant calls: the steps of many sagas bound for one participant travel in
//! one `Batch` RPC.
//!
//! Every saga asks for its calls one at a time, as before; a [`Coalescer`] per participant
//! queues them and a sender drains the queue whenever its in-flight slot is free
//! (no timer: a lone call leaves at once). The participant answers each item with the status
//! its unary call would have returned, ErrorInfo and RetryInfo included, so the status contract
//! classifies a batched answer exactly as a unary one. When the `Batch` call fails as a whole
//! (overload, a broken connection, a deadline), every item it carried gets that status: its
//! outcome is unknown, as a failed unary call's is, and the saga retries it (every participant
//! call is idempotent).

use std::sync::Arc;

use order_saga_proto::reservation::v1::{
    AssignRequest, AssignResponse, BatchItem, BatchRequest, BatchResult, ReleaseRequest,
    ReleaseResponse, ReserveRequest, ReserveResponse, batch_item, batch_result,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;

use crate::orchestrator::ParticipantClient;

/// Most `Batch` calls in flight to one participant at once. One: each participant then sees
/// the sagas' calls in the order they were made, the same order at both, so the earliest
/// orders get the last units of both a scarce food and a scarce zone (with two in flight the
/// participants interleaved the calls of concurrent batches differently, and
/// `concurrent_orders_place_exactly_the_stock` placed 49 of 50).
const IN_FLIGHT: usize = 1;
/// Most items one `Batch` call carries (the participant accepts up to 512).
const MAX_ITEMS: usize = 256;

type Job = (BatchItem, oneshot::Sender<Result<BatchResult, Status>>);

/// The coalescing queue in front of one participant; cloning shares it.
#[derive(Debug, Clone)]
pub struct Coalescer {
    queue: mpsc::UnboundedSender<Job>,
}

impl Coalescer {
    /// Starts the sender for `client`, the participant on `side` (`store`, `delivery`: the
    /// label of `saga_call_batch_size`); it stops when every clone is dropped.
    pub fn start(side: &'static str, client: ParticipantClient) -> Self {
        let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            let mut batch = Vec::with_capacity(MAX_ITEMS);
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if jobs.recv_many(&mut batch, MAX_ITEMS).await == 0 {
                    return;
                }
                let batch = std::mem::replace(&mut batch, Vec::with_capacity(MAX_ITEMS));
                metrics::histogram!("saga_call_batch_size", "side" => side)
                    .record(batch.len() as f64);
                let client = client.clone();
                tokio::spawn(async move {
                    send(client, batch).await;
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    async fn call(&self, call: batch_item::Call) -> Result<batch_result::Response, Status> {
        let (answer, answered) = oneshot::channel();
        let item = BatchItem {
            call: Some(call),
            // The saga's trace travels with its item, not with the batch.
            trace_context: order_saga_platform::telemetry::trace_carrier(),
        };
        self.queue
            .send((item, answer))
            .map_err(|_| Status::unavailable("the participant call queue is closed"))?;
        let result = answered
            .await
            .map_err(|_| Status::unavailable("the participant call was dropped"))??;
        if result.code != 0 {
            return Err(Status::with_details(
                tonic::Code::from(result.code),
                result.message,
                result.details.into(),
            ));
        }
        result
            .response
            .ok_or_else(|| Status::internal("a batch answered OK without a response"))
    }

    /// A coalesced `Reserve`.
    pub async fn reserve(&self, request: ReserveRequest) -> Result<ReserveResponse, Status> {
        match self.call(batch_item::Call::Reserve(request)).await? {
            batch_result::Response::Reserve(r) => Ok(r),
            _ => Err(mismatched()),
        }
    }

    /// A coalesced `Assign`.
    pub async fn assign(&self, request: AssignRequest) -> Result<AssignResponse, Status> {
        match self.call(batch_item::Call::Assign(request)).await? {
            batch_result::Response::Assign(r) => Ok(r),
            _ => Err(mismatched()),
        }
    }

    /// A coalesced `Release`.
    pub async fn release(&self, request: ReleaseRequest) -> Result<ReleaseResponse, Status> {
        match self.call(batch_item::Call::Release(request)).await? {
            batch_result::Response::Release(r) => Ok(r),
            _ => Err(mismatched()),
        }
    }
}

/// An answer of the wrong kind: a participant bug, reported as a bare (transient) status.
fn mismatched() -> Status {
    Status::internal("a batch answered an item with another call's response")
}

/// Sends one `Batch` call and answers each of its jobs.
async fn send(mut client: ParticipantClient, jobs: Vec<Job>) {
    let (items, answers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
    match client.batch(BatchRequest { items }).await {
        Ok(response) => {
            let results = response.into_inner().results;
            if results.len() != answers.len() {
                let status = Status::internal(format!(
                    "a batch of {} items was answered with {} results",
                    answers.len(),
                    results.len()
                ));
                for answer in answers {
                    let _ = answer.send(Err(status.clone()));
                }
                return;
            }
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(Ok(result));
            }
        }
        Err(status) => {
            for answer in answers {
                let _ = answer.send(Err(status.clone()));
            }
        }
    }
}
