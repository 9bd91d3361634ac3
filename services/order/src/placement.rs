//! The use cases behind `PlaceOrder`, `RedriveOrder` and `ForceFailOrder`: creating or
//! replaying an order, claiming a saga, driving it in its own task and waiting for its outcome
//! within the client's deadline.
//!
//! Every path that drives a saga first **claims** it, which increments the order's fencing
//! epoch (see [`crate::repo`]): creation, a waiting client taking over an expired lease, and an
//! operator taking over regardless of the lease. Whoever held the saga before is fenced off and
//! stops at its next write, even when it runs in this same process. An answer is always a
//! state that is stored: either what our own driver wrote last (its writes succeed only while
//! it holds the newest epoch and the order is not terminal) or what we read back from the
//! database after our driver was superseded. A stale in-memory state is never answered.

use std::{sync::Arc, time::Duration};

use order_saga_saga::{Event, busy, retry_hint};
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument;

use crate::{
    catalogue::Catalogue,
    history::EventKind,
    orchestrator::{Orchestrator, SagaSlot},
    repo::{Created, NewOrder, OrderRecord, OrderState, RepoError},
    stats::Step,
};

/// How often a waiting request re-reads an order another driver is running.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The retry hint of an `UNAVAILABLE` answer that is not about saga slots (a participant or
/// the database could not answer).
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_millis(250);
/// Answer this long before the client's deadline, so it gets our status rather than a timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// Why a placement or an operator action did not produce an order to answer with. Mapped to a
/// gRPC status in one place, [`From<PlaceError> for Status`](#impl-From<PlaceError>-for-Status).
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The idempotency key exists with different order parameters.
    #[error("idempotency_key was already used for a different order")]
    KeyReused,
    /// The food or zone does not exist.
    #[error("{field} {value:?} not found")]
    UnknownPool {
        /// `food_id` or `zone`.
        field: &'static str,
        /// What the client sent.
        value: String,
    },
    /// No order has this id.
    #[error("order_id {0:?} not found")]
    NoSuchOrder(String),
    /// An operator tried to fail an order that is already placed.
    #[error("order {0} is placed; it cannot be failed")]
    AlreadyPlaced(String),
    /// An operator tried to complete the delivery of an order that is not placed.
    #[error(
        "order {0} is {1}, not placed: only a placed order's delivery can be completed \
         (its agent may still be needed, or is already free)"
    )]
    NotPlaced(String, &'static str),
    /// A participant refused a call an operator's action needed.
    #[error("{0}")]
    ParticipantRefused(String),
    /// The saga is still running when the client's deadline comes.
    #[error("order {0} is still being placed; retry with the same idempotency_key for its outcome")]
    StillRunning(String),
    /// The driver stopped on a database error; the recovery loop will finish the saga.
    #[error(
        "order {0} was accepted but its outcome is not known yet; retry with the same \
         idempotency_key"
    )]
    OutcomeUnknown(String),
    /// A participant could not answer the catalogue check.
    #[error("{0} service unavailable, retry later")]
    ParticipantUnavailable(&'static str),
    /// The saga task panicked (a bug); the recovery loop will finish the saga.
    #[error("saga task of order {0} failed")]
    TaskFailed(String),
    /// Every saga slot stayed taken while the request waited: come back after the delay.
    #[error("order service busy: every saga slot is taken; retry after the RetryInfo delay")]
    Busy(Duration),
    /// The orders database failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<PlaceError> for Status {
    /// Every `UNAVAILABLE` answer carries a `google.rpc.RetryInfo` hint, so a client can tell
    /// "come back shortly with the same key" from an answer about its order.
    fn from(err: PlaceError) -> Self {
        let message = err.to_string();
        let status = match err {
            PlaceError::KeyReused => Status::invalid_argument(message),
            PlaceError::UnknownPool { .. } | PlaceError::NoSuchOrder(_) => {
                Status::not_found(message)
            }
            PlaceError::AlreadyPlaced(_)
            | PlaceError::NotPlaced(..)
            | PlaceError::ParticipantRefused(_) => Status::failed_precondition(message),
            PlaceError::StillRunning(_) => Status::deadline_exceeded(message),
            PlaceError::OutcomeUnknown(_) | PlaceError::ParticipantUnavailable(_) => {
                Status::unavailable(message)
            }
            PlaceError::Busy(retry_after) => busy(message, retry_after),
            PlaceError::TaskFailed(_) => {
                tracing::error!(error = %message, "saga task failed; recovery will finish it");
                Status::internal("internal error")
            }
            PlaceError::Repo(e) => e.into(),
        };
        if status.code() == tonic::Code::Unavailable && retry_hint(&status).is_none() {
            return busy(status.message(), UNAVAILABLE_RETRY_AFTER);
        }
        status
    }
}

/// What an operator's take-over found.
#[derive(Debug)]
pub enum TakeOver {
    /// The saga was unfinished and is now claimed by us with a new epoch.
    Claimed(OrderRecord),
    /// The order is already terminal: nothing to drive.
    Finished(OrderRecord),
}

/// The placement use cases of one order-service instance.
#[derive(Debug, Clone)]
pub struct Placement {
    orchestrator: Orchestrator,
    catalogue: Arc<Catalogue>,
    /// Longest a request waits for its saga when the client sets no shorter deadline.
    max_wait: Duration,
    /// How long a request waits for a saga slot, and the retry delay it is told when none
    /// frees up.
    busy: BusyPolicy,
}

/// What a request does when every saga slot is taken.
#[derive(Debug, Clone, Copy)]
pub struct BusyPolicy {
    /// Longest wait for a slot (a shorter client deadline wins).
    pub slot_wait: Duration,
    /// The delay the busy answer's `RetryInfo` asks for.
    pub retry_after: Duration,
}

impl Placement {
    /// Placement over an orchestrator and the catalogue check.
    pub fn new(
        orchestrator: Orchestrator,
        catalogue: Catalogue,
        max_wait: Duration,
        busy: BusyPolicy,
    ) -> Self {
        Self {
            orchestrator,
            catalogue: Arc::new(catalogue),
            max_wait,
            busy,
        }
    }

    /// A saga slot, waiting at most the busy policy's wait (or until `deadline`).
    async fn slot(&self, deadline: Instant) -> Result<SagaSlot, PlaceError> {
        let started = Instant::now();
        let until = deadline.min(started + self.busy.slot_wait);
        let slot = self.orchestrator.saga_slot(until).await;
        let stats = self.orchestrator.stats();
        stats.record(Step::SlotWait, started.elapsed());
        slot.ok_or(PlaceError::Busy(self.busy.retry_after))
    }

    /// The orchestrator.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// When a request with the client's `timeout` (if it sent one) must be answered.
    pub fn deadline(&self, timeout: Option<Duration>) -> Instant {
        let wait = timeout
            .map(|d| d.saturating_sub(DEADLINE_MARGIN))
            .map_or(self.max_wait, |d| d.min(self.max_wait));
        Instant::now() + wait
    }

    /// Places `order`, or replays the outcome of an earlier request with its idempotency key.
    ///
    /// A new key costs no read before its creation: the create is an `INSERT ... ON CONFLICT`
    /// on the key and answers a replayed key with the stored order. A replay needs no saga
    /// slot, so when none is free the key is looked up first and a replay is answered without
    /// waiting for one; only a new order waits.
    pub async fn place(
        &self,
        order: NewOrder,
        deadline: Instant,
    ) -> Result<OrderRecord, PlaceError> {
        let repo = self.orchestrator.repo();
        let slot = match self.orchestrator.try_saga_slot() {
            Some(slot) => slot,
            None => {
                if let Some(existing) = self.stored(&order).await? {
                    return self.replay(existing, &order, deadline).await;
                }
                // Bound the sagas this instance runs before creating anything: a request
                // that finds no slot is answered busy with nothing stored, and its retry
                // starts afresh.
                self.slot(deadline).await?
            }
        };
        if let Err(refused) = self.catalogue.check(&order.food_id, &order.zone).await {
            // A replay is answered with its order, whatever the catalogue says now.
            drop(slot);
            return match self.stored(&order).await? {
                Some(existing) => self.replay(existing, &order, deadline).await,
                None => Err(refused),
            };
        }

        // Time-ordered (UUIDv7: milliseconds, then 74 random bits), so every index keyed by
        // order id, here and at the participants, grows at its right edge instead of taking
        // each new order at a random page of an index that outgrows the cache.
        let order_id = format!("ord-{}", uuid::Uuid::now_v7().simple());
        order_saga_platform::telemetry::record_order_id(&order_id);
        let span = tracing::info_span!("place_order", order_id = %order_id);
        let orch = &self.orchestrator;
        let started = Instant::now();
        let created = repo
            .create(&order_id, &order, orch.instance(), orch.config().lease)
            .instrument(span.clone())
            .await?;
        orch.stats().record(Step::Create, started.elapsed());
        match created {
            Created::New(record) => {
                fail::fail_point!("order-after-create");
                self.drive_and_wait(record, None, deadline, slot)
                    .instrument(span)
                    .await
            }
            // The key was taken after all (a replay, or a concurrent request with it): the
            // order id drawn above names nothing.
            Created::Existing(existing) => {
                drop(slot);
                self.replay(existing, &order, deadline).await
            }
        }
    }

    /// The order stored under `order`'s customer and idempotency key, if any.
    async fn stored(&self, order: &NewOrder) -> Result<Option<OrderRecord>, PlaceError> {
        let repo = self.orchestrator.repo();
        Ok(repo
            .by_key(&order.customer_id, &order.idempotency_key)
            .await?)
    }

    /// An operator's redrive: claims the saga whatever its lease and drives it from its stored
    /// state. A finished order is returned as it is.
    pub async fn redrive(
        &self,
        order_id: &str,
        deadline: Instant,
    ) -> Result<OrderRecord, PlaceError> {
        let slot = self.slot(deadline).await?;
        match self.take_over(order_id, EventKind::Redriven).await? {
            TakeOver::Claimed(record) => self.drive_and_wait(record, None, deadline, slot).await,
            TakeOver::Finished(record) => Ok(record),
        }
    }

    /// An operator's force-fail: claims the saga whatever its lease and compensates it. A
    /// placed order cannot be failed; a not-placed one is returned as it is.
    pub async fn force_fail(
        &self,
        order_id: &str,
        deadline: Instant,
    ) -> Result<OrderRecord, PlaceError> {
        let slot = self.slot(deadline).await?;
        match self.take_over(order_id, EventKind::ForceFailed).await? {
            TakeOver::Claimed(record) if record.state() == OrderState::Pending => {
                self.drive_and_wait(record, Some(Event::ForceFail), deadline, slot)
                    .await
            }
            // Already compensating: the decision stands, finish the releases.
            TakeOver::Claimed(record) => self.drive_and_wait(record, None, deadline, slot).await,
            TakeOver::Finished(record) if record.state() == OrderState::Placed => {
                Err(PlaceError::AlreadyPlaced(record.order_id))
            }
            TakeOver::Finished(record) => Ok(record),
        }
    }

    /// An operator's completion of a delivery: only for an order **stored** PLACED (a terminal
    /// row is never rewritten, so it stays placed), delivery frees its agent for the next
    /// order and refuses any later reserve for this one; the order's history records it.
    /// Returns the agent this call freed (`None` when it was freed before). An order still
    /// being placed, or not placed, is refused: its agent may be the one a PLACED answer is
    /// about to rely on (docs/design.md, invariant 6).
    pub async fn complete_delivery(&self, order_id: &str) -> Result<Option<String>, PlaceError> {
        let orch = &self.orchestrator;
        let record = orch
            .repo()
            .by_id(order_id)
            .await?
            .ok_or_else(|| PlaceError::NoSuchOrder(order_id.to_owned()))?;
        if record.saga.phase != order_saga_saga::Phase::Placed {
            return Err(PlaceError::NotPlaced(
                order_id.to_owned(),
                record.state().as_str(),
            ));
        }
        let freed = orch
            .complete_delivery(order_id)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::FailedPrecondition => PlaceError::ParticipantRefused(format!(
                    "delivery refused to complete order {order_id}: {}",
                    s.message()
                )),
                code => {
                    tracing::warn!(
                        order_id,
                        ?code,
                        message = s.message(),
                        "completing a delivery failed"
                    );
                    PlaceError::ParticipantUnavailable("delivery")
                }
            })?;
        orch.repo()
            .record_completion(order_id, orch.instance(), freed.clone())
            .await?;
        tracing::info!(order_id, agent = ?freed, "delivery completed");
        Ok(freed)
    }

    /// Claims an unfinished order regardless of its lease (a new epoch fences off its current
    /// driver), or reports that it is finished.
    async fn take_over(&self, order_id: &str, kind: EventKind) -> Result<TakeOver, PlaceError> {
        let orch = &self.orchestrator;
        if let Some(claimed) = orch
            .repo()
            .take_over(order_id, orch.instance(), orch.config().lease, kind)
            .await?
        {
            return Ok(TakeOver::Claimed(claimed));
        }
        match orch.repo().by_id(order_id).await? {
            Some(finished) => Ok(TakeOver::Finished(finished)),
            None => Err(PlaceError::NoSuchOrder(order_id.to_owned())),
        }
    }

    /// Drives a saga we have just claimed in its own task, so a client that goes away does not
    /// abandon it half-way, and waits for the outcome until `deadline`. When our driver is
    /// superseded, waits for the stored outcome instead.
    async fn drive_and_wait(
        &self,
        record: OrderRecord,
        event: Option<Event>,
        deadline: Instant,
        slot: SagaSlot,
    ) -> Result<OrderRecord, PlaceError> {
        let order_id = record.order_id.clone();
        let orchestrator = self.orchestrator.clone();
        // The task keeps the request's span, so the saga's calls stay in the caller's trace;
        // it holds the saga slot until the driver stops, even if the client goes away.
        let task = tokio::spawn(
            async move {
                let _slot = slot;
                match event {
                    Some(e) => orchestrator.apply_and_drive(record, e).await,
                    None => orchestrator.drive(record).await,
                }
            }
            .instrument(tracing::Span::current()),
        );
        match tokio::time::timeout_at(deadline, task).await {
            // The last state our driver persisted: stored, and never rewritten once terminal.
            Ok(Ok(Ok(stored))) => Ok(stored),
            Ok(Ok(Err(RepoError::LostLease(_)))) => {
                tracing::info!(
                    order_id,
                    "driver superseded; answering from the stored outcome"
                );
                self.wait_for_outcome(&order_id, deadline).await
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(order_id, error = %e, "saga interrupted; recovery will finish it");
                Err(PlaceError::OutcomeUnknown(order_id))
            }
            Ok(Err(join)) => {
                tracing::error!(order_id, error = %join, "saga task panicked");
                Err(PlaceError::TaskFailed(order_id))
            }
            Err(_) => Err(PlaceError::StillRunning(order_id)),
        }
    }

    /// Waits for an order another driver (or the recovery loop) is running, reading its stored
    /// state; claims it (a new epoch) when its lease runs out.
    async fn wait_for_outcome(
        &self,
        order_id: &str,
        deadline: Instant,
    ) -> Result<OrderRecord, PlaceError> {
        let orch = &self.orchestrator;
        loop {
            let record = orch
                .repo()
                .by_id(order_id)
                .await?
                .ok_or_else(|| PlaceError::NoSuchOrder(order_id.to_owned()))?;
            if record.state() != OrderState::Pending {
                return Ok(record);
            }
            // Claim only with a slot to drive it; without one, keep waiting for the driver.
            if let Some(slot) = orch.try_saga_slot()
                && let Some(claimed) = orch
                    .repo()
                    .claim_one(order_id, orch.instance(), orch.config().lease)
                    .await?
            {
                return Box::pin(self.drive_and_wait(claimed, None, deadline, slot)).await;
            }
            if Instant::now() + POLL_INTERVAL >= deadline {
                return Err(PlaceError::StillRunning(order_id.to_owned()));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// A repeat of an idempotency key: the same order's outcome, waiting for it if needed.
    async fn replay(
        &self,
        existing: OrderRecord,
        request: &NewOrder,
        deadline: Instant,
    ) -> Result<OrderRecord, PlaceError> {
        order_saga_platform::telemetry::record_order_id(&existing.order_id);
        if &existing.request != request {
            return Err(PlaceError::KeyReused);
        }
        if existing.state() != OrderState::Pending {
            return Ok(existing);
        }
        self.wait_for_outcome(&existing.order_id, deadline).await
    }
}
