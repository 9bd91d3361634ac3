//! Drives sagas: the only place where the pure state machine meets the network and the database.
//!
//! The loop is: take the commands the machine asked for, **persist the state first** (fenced on
//! the driver's epoch, see [`crate::repo`]), make the calls concurrently, classify the answers
//! with the status contract, feed them back as events, and repeat until the phase is terminal. Transient
//! failures back off exponentially with full jitter; the retry deadline (the reservation TTL,
//! counted from when this instance started driving) turns endless forward retries into a
//! compensation.

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use order_saga_platform::telemetry::TracePropagation;
use order_saga_proto::reservation::v1::{
    AssignRequest, AssignResponse, CompleteRequest, GetLimitsRequest, Limits, ReleaseRequest,
    ReleaseResponse, ReserveRequest, ReserveResponse,
    reservation_service_client::ReservationServiceClient,
};
use order_saga_saga::{Call, Command, Event, Side, Verdict, classify, retry_hint, round};
use rand::Rng;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tonic::{Status, codegen::InterceptedService, transport::Channel};

use crate::{
    calls::Coalescer,
    history::{CallRecord, EventKind, Transition},
    repo::{OrderRecord, OrderRepo, RepoError},
    stats::{Step, StepStats},
};

/// The longest retry delay a participant's `RetryInfo` can make a saga wait between rounds.
const MAX_HONOURED_DELAY: Duration = Duration::from_secs(5);

/// A participant client with trace propagation.
pub type ParticipantClient =
    ReservationServiceClient<InterceptedService<Channel, TracePropagation>>;

/// Saga timing.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// Reservation TTL asked of the participants; also the retry deadline for forward progress.
    pub reservation_ttl: Duration,
    /// How long an instance owns a saga between writes; another instance may take over after.
    pub lease: Duration,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// How long a request keeps retrying releases before leaving them to the recovery loop.
    pub compensation_budget: Duration,
    /// Most sagas this instance drives at once (requests, operators and recovery together);
    /// the rest wait for a slot, or are answered busy.
    pub max_sagas: usize,
    /// Coalesce the steps bound for one participant into `Batch` calls (else one unary call
    /// per step).
    pub batch_calls: bool,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            reservation_ttl: Duration::from_secs(30),
            lease: Duration::from_secs(10),
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            compensation_budget: Duration::from_secs(10),
            max_sagas: 256,
            batch_calls: false,
        }
    }
}

/// The orchestrator of one order-service instance.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    repo: OrderRepo,
    store: ParticipantClient,
    delivery: ParticipantClient,
    /// The saga steps bound for each participant, coalesced into `Batch` calls.
    store_calls: Option<Coalescer>,
    delivery_calls: Option<Coalescer>,
    config: SagaConfig,
    instance: String,
    /// One permit per saga this instance may drive at once.
    sagas: Arc<Semaphore>,
    /// Latency of each step.
    stats: StepStats,
    /// Held while a round's calls are queued (see [`Orchestrator::queued_together`]).
    call_order: std::sync::Mutex<()>,
}

/// The right to drive one saga, held until its driver stops (see [`SagaConfig::max_sagas`]).
#[derive(Debug)]
pub struct SagaSlot {
    _permit: OwnedSemaphorePermit,
}

/// One executed command: the event it produced, for failures the error text and the retry
/// delay a busy participant asked for, and the call as the history records it.
struct Answer {
    event: Event,
    error: Option<String>,
    retry_after: Option<Duration>,
    call: CallRecord,
}

impl Orchestrator {
    /// An orchestrator identified as `instance` (the lease owner name). Starts the senders of
    /// the coalesced participant calls, so it must be called inside a Tokio runtime.
    pub fn new(
        repo: OrderRepo,
        store: ParticipantClient,
        delivery: ParticipantClient,
        config: SagaConfig,
        instance: String,
    ) -> Self {
        let sagas = Arc::new(Semaphore::new(config.max_sagas.max(1)));
        Self {
            inner: Arc::new(Inner {
                repo,
                store_calls: config
                    .batch_calls
                    .then(|| Coalescer::start("store", store.clone())),
                delivery_calls: config
                    .batch_calls
                    .then(|| Coalescer::start("delivery", delivery.clone())),
                store,
                delivery,
                config,
                instance,
                sagas,
                stats: StepStats::default(),
                call_order: std::sync::Mutex::new(()),
            }),
        }
    }

    /// Runs a round of calls whose first poll, which queues every coalesced call of the round
    /// (nothing before the queueing awaits), happens under one lock. So the two reserves of
    /// one saga reach the store's and delivery's queues with no other saga's reserves between
    /// them, and both participants see the sagas in the same order: the order in which a
    /// scarce pool hands out its last units. Without it, two sagas driven on two threads
    /// could queue A's store reserve, then B's two, then A's delivery reserve; the store and
    /// delivery then gave their last units to different orders, and
    /// `the_batched_engine_places_exactly_the_stock` placed 49 of 50 (seen once in CI). The
    /// lock is never held across an await.
    async fn queued_together<F: std::future::Future>(&self, round: F) -> F::Output {
        let mut round = std::pin::pin!(round);
        let mut first = true;
        std::future::poll_fn(move |cx| {
            let _queueing = std::mem::take(&mut first).then(|| {
                self.inner
                    .call_order
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            });
            round.as_mut().poll(cx)
        })
        .await
    }

    /// A saga slot, waiting for one until `until`; `None` if none freed up in time.
    pub async fn saga_slot(&self, until: Instant) -> Option<SagaSlot> {
        let acquire = self.inner.sagas.clone().acquire_owned();
        match tokio::time::timeout_at(until, acquire).await {
            Ok(Ok(permit)) => Some(SagaSlot { _permit: permit }),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Latency of each saga step on this instance.
    pub fn stats(&self) -> &StepStats {
        &self.inner.stats
    }

    /// A saga slot if one is free now.
    pub fn try_saga_slot(&self) -> Option<SagaSlot> {
        self.inner
            .sagas
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| SagaSlot { _permit: permit })
    }

    /// Saga slots free now.
    pub fn free_saga_slots(&self) -> usize {
        self.inner.sagas.available_permits()
    }

    /// The repository.
    pub fn repo(&self) -> &OrderRepo {
        &self.inner.repo
    }

    /// Saga timing.
    pub fn config(&self) -> &SagaConfig {
        &self.inner.config
    }

    /// This instance's lease-owner name.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Applies `event` (an operator's force-fail) to a saga this driver has just claimed,
    /// persists it (fenced on the claim's epoch), then drives the saga.
    pub async fn apply_and_drive(
        &self,
        mut record: OrderRecord,
        event: Event,
    ) -> Result<OrderRecord, RepoError> {
        let from = record.saga.phase;
        let (saga, _) = record.saga.step(&event);
        record.saga = saga;
        let transition = Transition {
            kind: EventKind::Step,
            from: Some(from),
            calls: Vec::new(),
            error: Some(format!("{event:?} by an operator")),
        };
        let record = self.persist(&record, &transition).await?;
        self.drive(record).await
    }

    /// Drives a saga this driver has claimed (`record.epoch` is its fencing token) until it is
    /// terminal, or until compensation has used its budget (the recovery loop finishes it
    /// later). Returns the last state it **persisted**, never an unwritten in-memory state.
    /// Fails with [`RepoError::LostLease`] as soon as one of its writes is refused because a
    /// newer claim superseded it (that driver finishes the saga), or with the database error
    /// that interrupted it (recovery will finish it).
    #[tracing::instrument(skip_all, fields(order_id = %record.order_id), err)]
    pub async fn drive(&self, mut record: OrderRecord) -> Result<OrderRecord, RepoError> {
        let cfg = &self.inner.config;
        let started = Instant::now();
        let retry_deadline = started + cfg.reservation_ttl;
        let mut compensation_started: Option<Instant> = None;
        let mut retry_round: u32 = 0;
        // Resume may change the state (a reserving saga asks both sides again); the change is
        // persisted with the answers of the first round, before any further call.
        let (resumed, mut commands) = record.saga.step(&Event::Resume);
        record.saga = resumed;

        while !commands.is_empty() {
            let calls = join_all(commands.iter().map(|c| self.execute(&record, c)));
            let answers = self.queued_together(calls).await;

            let mut transient = false;
            // The longest delay a busy participant asked for this round.
            let mut asked_delay = Duration::ZERO;
            let mut transition = Transition {
                kind: EventKind::Step,
                from: Some(record.saga.phase),
                calls: Vec::with_capacity(answers.len()),
                error: None,
            };
            let mut events = Vec::with_capacity(answers.len());
            for answer in answers {
                metrics::counter!(
                    "saga_participant_calls_total",
                    "side" => answer.call.side.clone(),
                    "call" => answer.call.call.clone(),
                    "code" => answer.call.code.clone(),
                )
                .increment(1);
                if let Event::Transient { side, call } = answer.event {
                    metrics::counter!(
                        "saga_retries_total",
                        "side" => side.as_str(),
                        "call" => call.as_str(),
                    )
                    .increment(1);
                }
                transition.calls.push(answer.call);
                if matches!(answer.event, Event::Transient { .. }) {
                    transient = true;
                    record.attempts += 1;
                    asked_delay = asked_delay.max(answer.retry_after.unwrap_or_default());
                }
                if let Some(error) = answer.error {
                    if let Event::Refused { .. } = answer.event {
                        record.detail.get_or_insert(error.clone());
                    }
                    transition.error = Some(error.clone());
                    record.last_error = Some(error);
                }
                events.push(answer.event);
            }
            // The pure round (shared with the model check): step the answers in command
            // order; forward progress is bounded by the reservations' lifetime.
            let stepped = round(&record.saga, &events, Instant::now() >= retry_deadline);
            if stepped.deadline_compensated {
                tracing::warn!(reason = ?stepped.saga.reason, "retry deadline passed, compensating");
                let last = transition.error.take().unwrap_or_default();
                transition.error = Some(format!("retry deadline passed; last error: {last}"));
                if let Some(error) = &record.last_error {
                    record.detail.get_or_insert(error.clone());
                }
            }
            record.saga = stepped.saga;
            let next = stepped.commands;

            record = self.persist(&record, &transition).await?;
            if record.saga.phase.is_terminal() && transition.from.is_some_and(|p| !p.is_terminal())
            {
                count_outcome(&record);
            }

            if record.saga.phase == order_saga_saga::Phase::Compensating {
                let since = *compensation_started.get_or_insert_with(Instant::now);
                if transient && since.elapsed() >= cfg.compensation_budget {
                    tracing::warn!("releases still failing; leaving them to the recovery loop");
                    return Ok(record);
                }
            }
            if transient {
                retry_round += 1;
                // A busy participant's RetryInfo is a floor: coming back sooner only adds load.
                let delay = self
                    .backoff(retry_round)
                    .max(asked_delay.min(MAX_HONOURED_DELAY));
                tokio::time::sleep(delay).await;
            }
            commands = next;
        }
        self.inner.stats.record(Step::Saga, started.elapsed());
        if record.saga.phase.is_terminal() {
            tracing::info!(phase = record.saga.phase.as_str(), reason = ?record.saga.reason, "saga finished");
        }
        Ok(record)
    }

    /// Writes the saga state, fenced on this instance's name, the record's epoch and a
    /// non-terminal stored phase. Failpoints
    /// `order-before-persist-<phase>` and `order-after-persist-<phase>` surround the write,
    /// `<phase>` being the phase written.
    async fn persist(
        &self,
        record: &OrderRecord,
        transition: &Transition,
    ) -> Result<OrderRecord, RepoError> {
        let inner = &self.inner;
        fail::fail_point!(&format!(
            "order-before-persist-{}",
            record.saga.phase.as_str()
        ));
        let started = Instant::now();
        let persisted = inner
            .repo
            .persist(record, &inner.instance, inner.config.lease, transition)
            .await?;
        inner.stats.record(Step::Persist, started.elapsed());
        fail::fail_point!(&format!(
            "order-after-persist-{}",
            record.saga.phase.as_str()
        ));
        Ok(persisted)
    }

    /// Exponential backoff with full jitter: uniform in [0, min(max, base * 2^round)].
    fn backoff(&self, round: u32) -> Duration {
        let cfg = &self.inner.config;
        let cap = cfg
            .backoff_base
            .saturating_mul(2u32.saturating_pow(round.min(16)))
            .min(cfg.backoff_max);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(0..=cap_ms))
    }

    fn client(&self, side: Side) -> ParticipantClient {
        match side {
            Side::Store => self.inner.store.clone(),
            Side::Delivery => self.inner.delivery.clone(),
        }
    }

    /// Makes one call. Failpoints `order-before-call-<call>-<side>` and
    /// `order-after-call-<call>-<side>` (e.g. `order-after-call-assign-store`) surround it.
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
    async fn execute(&self, record: &OrderRecord, command: &Command) -> Answer {
        let (call, step) = match command {
            Command::Reserve(_) => (Call::Reserve, Step::Reserve),
            Command::Assign(..) => (Call::Assign, Step::Assign),
            Command::Release(_) => (Call::Release, Step::Release),
        };
        // The failpoint names are only formatted in builds with failpoints.
        fail::fail_point!(&format!(
            "order-before-call-{}-{}",
            call.as_str(),
            command.side().as_str()
        ));
        let started = Instant::now();
        let mut answer = self.call(record, command).await;
        let elapsed = started.elapsed();
        self.inner.stats.record(step, elapsed);
        answer.call.ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        fail::fail_point!(&format!(
            "order-after-call-{}-{}",
            call.as_str(),
            command.side().as_str()
        ));
        answer
    }

    async fn call(&self, record: &OrderRecord, command: &Command) -> Answer {
        let side = command.side();
        let calls = Calls {
            coalesced: match side {
                Side::Store => self.inner.store_calls.as_ref(),
                Side::Delivery => self.inner.delivery_calls.as_ref(),
            },
            unary: self.client(side),
        };
        let order_id = record.order_id.clone();
        let (call, result) = match command {
            Command::Reserve(_) => {
                let pool = match side {
                    Side::Store => record.request.food_id.clone(),
                    Side::Delivery => record.request.zone.clone(),
                };
                let ttl = prost_types::Duration::try_from(self.inner.config.reservation_ttl).ok();
                let r = calls
                    .reserve(ReserveRequest {
                        order_id,
                        pool,
                        ttl,
                    })
                    .await;
                (Call::Reserve, r.map(|r| Some(r.unit_id)))
            }
            Command::Assign(_, unit) => {
                let r = calls
                    .assign(AssignRequest {
                        order_id,
                        unit_id: unit.clone(),
                    })
                    .await;
                (Call::Assign, r.map(|_| None))
            }
            Command::Release(_) => {
                let r = calls.release(ReleaseRequest { order_id }).await;
                (Call::Release, r.map(|_| None))
            }
        };
        match result {
            Ok(unit) => Answer {
                call: CallRecord {
                    unit: unit.clone(),
                    ..CallRecord::new(side, call, tonic::Code::Ok, Duration::ZERO)
                },
                event: match call {
                    Call::Reserve => Event::Reserved {
                        side,
                        unit: unit.unwrap_or_default(),
                    },
                    Call::Assign => Event::Assigned { side },
                    Call::Release => Event::Released { side },
                },
                error: None,
                retry_after: None,
            },
            Err(status) => answer_for_error(side, call, &status),
        }
    }

    /// Tells delivery that `order_id`'s work is done, freeing its agent. The caller has read
    /// the order stored PLACED: that is the only case in which a unit a customer was promised
    /// may be freed (docs/design.md, invariant 6). Returns the freed agent, if this call freed
    /// it.
    pub async fn complete_delivery(&self, order_id: &str) -> Result<Option<String>, Status> {
        let mut client = self.client(Side::Delivery);
        let freed = client
            .complete(CompleteRequest {
                order_id: order_id.to_owned(),
            })
            .await?
            .into_inner()
            .unit_id;
        Ok((!freed.is_empty()).then_some(freed))
    }

    /// The limits of the participant on `side` (`GetLimits`).
    pub async fn participant_limits(&self, side: Side) -> Result<Limits, Status> {
        let mut client = self.client(side);
        Ok(client.get_limits(GetLimitsRequest {}).await?.into_inner())
    }
}

/// One participant's calls: coalesced into `Batch` calls, or unary.
struct Calls<'a> {
    coalesced: Option<&'a Coalescer>,
    unary: ParticipantClient,
}

impl Calls<'_> {
    async fn reserve(mut self, r: ReserveRequest) -> Result<ReserveResponse, Status> {
        match self.coalesced {
            Some(c) => c.reserve(r).await,
            None => Ok(self.unary.reserve(r).await?.into_inner()),
        }
    }

    async fn assign(mut self, r: AssignRequest) -> Result<AssignResponse, Status> {
        match self.coalesced {
            Some(c) => c.assign(r).await,
            None => Ok(self.unary.assign(r).await?.into_inner()),
        }
    }

    async fn release(mut self, r: ReleaseRequest) -> Result<ReleaseResponse, Status> {
        match self.coalesced {
            Some(c) => c.release(r).await,
            None => Ok(self.unary.release(r).await?.into_inner()),
        }
    }
}

fn answer_for_error(side: Side, call: Call, status: &Status) -> Answer {
    let error = format!(
        "{} {}: {:?}: {}",
        side.as_str(),
        call.as_str(),
        status.code(),
        status.message()
    );
    let event = match classify(call, status) {
        Verdict::Definitive(refusal) => Event::Refused {
            side,
            call,
            refusal,
        },
        Verdict::Transient => {
            tracing::debug!(%error, "transient failure, will retry");
            Event::Transient { side, call }
        }
    };
    Answer {
        event,
        call: CallRecord {
            error: Some(status.message().to_owned()),
            ..CallRecord::new(side, call, status.code(), Duration::ZERO)
        },
        error: Some(error),
        retry_after: retry_hint(status),
    }
}

/// `saga_orders_total{outcome, reason}`: counted by the one driver whose write made the order
/// terminal (the fence lets only one write do that).
fn count_outcome(record: &OrderRecord) {
    let reason = record.saga.reason.map_or("", |r| r.as_str());
    metrics::counter!(
        "saga_orders_total",
        "outcome" => record.saga.phase.as_str(),
        "reason" => reason,
    )
    .increment(1);
}
