//! `order.v1.OrderService` and `order.v1.OrderAdminService`: validation, idempotent replay,
//! waiting within the client's deadline, and the conversion between domain and prost types.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use order_saga_platform::{db::status_from_db_error, telemetry::TracePropagation, validate_id};
use order_saga_proto::{
    delivery::v1::{GetZoneRequest, delivery_service_client::DeliveryServiceClient},
    order::v1::{
        self as pb, ForceFailOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse,
        ListStuckOrdersRequest, ListStuckOrdersResponse, NotPlacedReason, PlaceOrderRequest,
        RedriveOrderRequest, SagaInfo, order_admin_service_server::OrderAdminService,
        order_service_server::OrderService,
    },
    store::v1::{GetFoodRequest, store_service_client::StoreServiceClient},
};
use order_saga_saga::{Event, Reason};
use tokio::time::Instant;
use tonic::{
    Code, Request, Response, Status, codegen::InterceptedService, metadata::MetadataMap,
    transport::Channel,
};
use tracing::Instrument;

use crate::{
    orchestrator::Orchestrator,
    repo::{Created, NewOrder, OrderRecord, OrderState, RepoError},
};

/// Longest idempotency key.
pub const MAX_KEY_LEN: usize = 128;
/// Longest customer, food or zone id.
pub const MAX_ID_LEN: usize = 64;
/// How often a waiting request re-reads an order another driver is running.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Answer this long before the client's deadline, so it gets our status rather than a timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

impl From<RepoError> for Status {
    fn from(err: RepoError) -> Self {
        match err {
            RepoError::Db(e) => status_from_db_error(&e, "orders"),
            RepoError::LostLease(id) => Status::aborted(format!(
                "order {id} is being driven by another instance; retry with the same idempotency_key"
            )),
            RepoError::Corrupt(id, what) => {
                tracing::error!(order_id = %id, what, "corrupt order row");
                Status::internal("internal error")
            }
        }
    }
}

/// Checks that foods and zones exist before an order is created, so a typo is answered
/// `NOT_FOUND` naming the field instead of becoming a not-placed order. Foods and zones are
/// never deleted, so a positive answer is cached.
#[derive(Debug)]
pub struct Catalogue {
    store: StoreServiceClient<InterceptedService<Channel, TracePropagation>>,
    delivery: DeliveryServiceClient<InterceptedService<Channel, TracePropagation>>,
    known: Mutex<HashSet<String>>,
}

/// Entries kept before the cache is cleared (it only saves a round trip).
const CATALOGUE_CACHE_MAX: usize = 10_000;

impl Catalogue {
    /// A catalogue over the participants' read APIs.
    pub fn new(store: Channel, delivery: Channel) -> Self {
        Self {
            store: StoreServiceClient::with_interceptor(store, TracePropagation),
            delivery: DeliveryServiceClient::with_interceptor(delivery, TracePropagation),
            known: Mutex::new(HashSet::new()),
        }
    }

    fn is_known(&self, key: &str) -> bool {
        self.known.lock().map(|k| k.contains(key)).unwrap_or(false)
    }

    fn remember(&self, key: String) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= CATALOGUE_CACHE_MAX {
                known.clear();
            }
            known.insert(key);
        }
    }

    /// Resolves to `Ok` when `key` is known or `lookup` finds it; `NOT_FOUND` with
    /// `not_found` when the participant does not know it; `UNAVAILABLE` when it cannot answer.
    async fn ensure(
        &self,
        key: String,
        lookup: impl std::future::Future<Output = Result<(), Status>>,
        not_found: String,
        service: &str,
    ) -> Result<(), Status> {
        if self.is_known(&key) {
            return Ok(());
        }
        match lookup.await {
            Ok(()) => {
                self.remember(key);
                Ok(())
            }
            Err(s) if s.code() == Code::NotFound => Err(Status::not_found(not_found)),
            Err(s) => Err(unavailable(service, &s)),
        }
    }

    async fn check(&self, food_id: &str, zone: &str) -> Result<(), Status> {
        let mut store = self.store.clone();
        let mut delivery = self.delivery.clone();
        let food = self.ensure(
            format!("food/{food_id}"),
            async move {
                let request = GetFoodRequest {
                    food_id: food_id.to_owned(),
                };
                store.get_food(request).await.map(drop)
            },
            format!("food_id {food_id:?} not found"),
            "store",
        );
        let zone_check = self.ensure(
            format!("zone/{zone}"),
            async move {
                let request = GetZoneRequest {
                    zone: zone.to_owned(),
                };
                delivery.get_zone(request).await.map(drop)
            },
            format!("zone {zone:?} not found"),
            "delivery",
        );
        let (f, z) = tokio::join!(food, zone_check);
        f.and(z)
    }
}

fn unavailable(service: &str, status: &Status) -> Status {
    tracing::warn!(service, code = ?status.code(), message = status.message(), "catalogue check failed");
    Status::unavailable(format!("{service} service unavailable, retry later"))
}

/// Reads the client's `grpc-timeout` header.
fn client_deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The public and admin order APIs.
#[derive(Debug, Clone)]
pub struct OrderApi {
    orchestrator: Orchestrator,
    catalogue: std::sync::Arc<Catalogue>,
    /// Longest a PlaceOrder waits for its saga when the client sets no shorter deadline.
    max_wait: Duration,
}

impl OrderApi {
    /// The APIs over an orchestrator.
    pub fn new(orchestrator: Orchestrator, catalogue: Catalogue, max_wait: Duration) -> Self {
        Self {
            orchestrator,
            catalogue: std::sync::Arc::new(catalogue),
            max_wait,
        }
    }

    fn budget(&self, metadata: &MetadataMap) -> Instant {
        let wait = client_deadline(metadata)
            .map(|d| d.saturating_sub(DEADLINE_MARGIN))
            .map_or(self.max_wait, |d| d.min(self.max_wait));
        Instant::now() + wait
    }

    /// Drives a leased saga in its own task, so a client that goes away does not abandon it
    /// half-way, and waits for the outcome until `deadline`.
    async fn drive_and_wait(
        &self,
        record: OrderRecord,
        event: Option<Event>,
        deadline: Instant,
    ) -> Result<OrderRecord, Status> {
        let order_id = record.order_id.clone();
        let orchestrator = self.orchestrator.clone();
        // The task keeps the request's span, so the saga's calls stay in the caller's trace.
        let task = tokio::spawn(
            async move {
                match event {
                    Some(e) => orchestrator.apply_and_drive(record, e).await,
                    None => orchestrator.drive(record).await,
                }
            }
            .instrument(tracing::Span::current()),
        );
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(record))) => Ok(record),
            Ok(Ok(Err(RepoError::LostLease(_)))) => {
                self.wait_for_outcome(&order_id, deadline).await
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(order_id, error = %e, "saga interrupted; recovery will finish it");
                Err(Status::unavailable(format!(
                    "order {order_id} was accepted but its outcome is not known yet; retry with \
                     the same idempotency_key"
                )))
            }
            Ok(Err(join)) => {
                tracing::error!(order_id, error = %join, "saga task failed; recovery will finish it");
                Err(Status::internal("internal error"))
            }
            Err(_) => Err(still_running(&order_id)),
        }
    }

    /// Waits for an order another driver (or the recovery loop) is running; takes it over when
    /// its lease runs out.
    async fn wait_for_outcome(
        &self,
        order_id: &str,
        deadline: Instant,
    ) -> Result<OrderRecord, Status> {
        let orch = &self.orchestrator;
        loop {
            let record = orch
                .repo()
                .by_id(order_id)
                .await?
                .ok_or_else(|| Status::not_found(format!("order_id {order_id:?} not found")))?;
            if record.state() != OrderState::Pending {
                return Ok(record);
            }
            if let Some(claimed) = orch
                .repo()
                .claim_one(order_id, orch.instance(), orch.config().lease)
                .await?
            {
                return Box::pin(self.drive_and_wait(claimed, None, deadline)).await;
            }
            if Instant::now() + POLL_INTERVAL >= deadline {
                return Err(still_running(order_id));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn replay(
        &self,
        existing: OrderRecord,
        request: &NewOrder,
        deadline: Instant,
    ) -> Result<OrderRecord, Status> {
        if &existing.request != request {
            return Err(Status::invalid_argument(
                "idempotency_key was already used for a different order",
            ));
        }
        if existing.state() != OrderState::Pending {
            return Ok(existing);
        }
        self.wait_for_outcome(&existing.order_id, deadline).await
    }
}

fn still_running(order_id: &str) -> Status {
    Status::deadline_exceeded(format!(
        "order {order_id} is still being placed; retry with the same idempotency_key for its outcome"
    ))
}

fn check(field: &str, value: &str, max: usize) -> Result<(), Status> {
    validate_id(field, value, max).map_err(Status::invalid_argument)
}

fn timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

fn reason_to_proto(reason: Reason) -> NotPlacedReason {
    match reason {
        Reason::OutOfStock => NotPlacedReason::OutOfStock,
        Reason::NoAgent => NotPlacedReason::NoAgent,
        Reason::UnknownFood => NotPlacedReason::UnknownFood,
        Reason::UnknownZone => NotPlacedReason::UnknownZone,
        Reason::ReservationExpired => NotPlacedReason::ReservationExpired,
        Reason::StoreUnavailable => NotPlacedReason::StoreUnavailable,
        Reason::DeliveryUnavailable => NotPlacedReason::DeliveryUnavailable,
        Reason::ForceFailed => NotPlacedReason::ForceFailed,
        Reason::Refused => NotPlacedReason::Refused,
    }
}

fn state_to_proto(state: OrderState) -> pb::OrderState {
    match state {
        OrderState::Pending => pb::OrderState::Pending,
        OrderState::Placed => pb::OrderState::Placed,
        OrderState::NotPlaced => pb::OrderState::NotPlaced,
    }
}

fn state_from_proto(value: i32) -> Result<Option<OrderState>, Status> {
    match pb::OrderState::try_from(value) {
        Ok(pb::OrderState::Unspecified) => Ok(None),
        Ok(pb::OrderState::Pending) => Ok(Some(OrderState::Pending)),
        Ok(pb::OrderState::Placed) => Ok(Some(OrderState::Placed)),
        Ok(pb::OrderState::NotPlaced) => Ok(Some(OrderState::NotPlaced)),
        Err(_) => Err(Status::invalid_argument("state is not a known OrderState")),
    }
}

/// The customer's view of an order.
pub fn order_to_proto(r: &OrderRecord) -> pb::Order {
    let state = r.state();
    pb::Order {
        order_id: r.order_id.clone(),
        idempotency_key: r.request.idempotency_key.clone(),
        customer_id: r.request.customer_id.clone(),
        food_id: r.request.food_id.clone(),
        zone: r.request.zone.clone(),
        state: state_to_proto(state).into(),
        packet_id: r.saga.store.unit.clone().unwrap_or_default(),
        agent_id: r.saga.delivery.unit.clone().unwrap_or_default(),
        not_placed_reason: match (state, r.saga.reason) {
            (OrderState::NotPlaced, Some(reason)) => reason_to_proto(reason).into(),
            _ => NotPlacedReason::Unspecified.into(),
        },
        detail: if state == OrderState::NotPlaced {
            r.detail.clone().unwrap_or_default()
        } else {
            String::new()
        },
        created_at: timestamp(r.created_at),
        updated_at: timestamp(r.updated_at),
    }
}

fn page_token(r: &OrderRecord) -> String {
    format!("{}.{}", r.created_at, r.order_id)
}

fn parse_page_token(token: &str) -> Result<Option<(i64, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("page_token is not one this server issued");
    let (at, id) = token.split_once('.').ok_or_else(bad)?;
    Ok(Some((at.parse().map_err(|_| bad())?, id.to_owned())))
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let deadline = self.budget(request.metadata());
        let req = request.into_inner();
        check("idempotency_key", &req.idempotency_key, MAX_KEY_LEN)?;
        check("customer_id", &req.customer_id, MAX_ID_LEN)?;
        check("food_id", &req.food_id, MAX_ID_LEN)?;
        check("zone", &req.zone, MAX_ID_LEN)?;
        let new = NewOrder {
            idempotency_key: req.idempotency_key,
            customer_id: req.customer_id,
            food_id: req.food_id,
            zone: req.zone,
        };
        let orch = &self.orchestrator;
        if let Some(existing) = orch.repo().by_key(&new.idempotency_key).await? {
            let record = self.replay(existing, &new, deadline).await?;
            return Ok(Response::new(order_to_proto(&record)));
        }
        self.catalogue.check(&new.food_id, &new.zone).await?;

        let order_id = format!("ord-{}", uuid::Uuid::new_v4().simple());
        let span = tracing::info_span!("place_order", order_id = %order_id);
        let record = async {
            match orch
                .repo()
                .create(&order_id, &new, orch.instance(), orch.config().lease)
                .await?
            {
                Created::New(record) => {
                    fail::fail_point!("order-after-create");
                    self.drive_and_wait(record, None, deadline).await
                }
                Created::Existing(existing) => self.replay(existing, &new, deadline).await,
            }
        }
        .instrument(span)
        .await?;
        Ok(Response::new(order_to_proto(&record)))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let req = request.into_inner();
        check("order_id", &req.order_id, MAX_ID_LEN)?;
        let record = self
            .orchestrator
            .repo()
            .by_id(&req.order_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("order_id {:?} not found", req.order_id)))?;
        Ok(Response::new(order_to_proto(&record)))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let req = request.into_inner();
        let size = match req.page_size {
            0 => 50,
            n @ 1..=1000 => i64::from(n),
            _ => {
                return Err(Status::invalid_argument(
                    "page_size must be between 1 and 1000",
                ));
            }
        };
        let state = state_from_proto(req.state)?;
        let after = parse_page_token(&req.page_token)?;
        // One extra row tells whether another page exists.
        let mut rows = self
            .orchestrator
            .repo()
            .list(state, after, size + 1)
            .await?;
        let more = rows.len() as i64 > size;
        rows.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        let next_page_token = match rows.last() {
            Some(last) if more => page_token(last),
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders: rows.iter().map(order_to_proto).collect(),
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl OrderAdminService for OrderApi {
    async fn list_stuck_orders(
        &self,
        request: Request<ListStuckOrdersRequest>,
    ) -> Result<Response<ListStuckOrdersResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n @ 1..=1000 => i64::from(n),
            _ => return Err(Status::invalid_argument("limit must be between 1 and 1000")),
        };
        let rows = self.orchestrator.repo().stuck(limit).await?;
        let sagas = rows
            .iter()
            .map(|r| SagaInfo {
                order: Some(order_to_proto(r)),
                step: r.saga.phase.as_str().to_owned(),
                attempts: i32::try_from(r.attempts).unwrap_or(i32::MAX),
                last_error: r.last_error.clone().unwrap_or_default(),
                lease_owner: r.lease_owner.clone().unwrap_or_default(),
                lease_expires_at: r.lease_expires_at.and_then(timestamp),
            })
            .collect();
        Ok(Response::new(ListStuckOrdersResponse { sagas }))
    }

    async fn redrive_order(
        &self,
        request: Request<RedriveOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let deadline = self.budget(request.metadata());
        let record = self.take_over(&request.into_inner().order_id).await?;
        let record = match record {
            Ok(leased) => self.drive_and_wait(leased, None, deadline).await?,
            Err(finished) => finished,
        };
        Ok(Response::new(order_to_proto(&record)))
    }

    async fn force_fail_order(
        &self,
        request: Request<ForceFailOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let deadline = self.budget(request.metadata());
        let record = match self.take_over(&request.into_inner().order_id).await? {
            Ok(leased) if leased.state() == OrderState::Pending => {
                self.drive_and_wait(leased, Some(Event::ForceFail), deadline)
                    .await?
            }
            // Already compensating: just finish the releases.
            Ok(leased) => self.drive_and_wait(leased, None, deadline).await?,
            Err(finished) if finished.state() == OrderState::Placed => {
                return Err(Status::failed_precondition(format!(
                    "order {} is placed; it cannot be failed",
                    finished.order_id
                )));
            }
            Err(finished) => finished,
        };
        Ok(Response::new(order_to_proto(&record)))
    }
}

impl OrderApi {
    /// Leases an unfinished order to this instance (`Ok`), or returns the finished order
    /// (`Err`), or `NOT_FOUND`.
    async fn take_over(&self, order_id: &str) -> Result<Result<OrderRecord, OrderRecord>, Status> {
        check("order_id", order_id, MAX_ID_LEN)?;
        let orch = &self.orchestrator;
        if let Some(leased) = orch
            .repo()
            .take_over(order_id, orch.instance(), orch.config().lease)
            .await?
        {
            return Ok(Ok(leased));
        }
        match orch.repo().by_id(order_id).await? {
            Some(finished) => Ok(Err(finished)),
            None => Err(Status::not_found(format!(
                "order_id {order_id:?} not found"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed() {
        let mut md = MetadataMap::new();
        assert_eq!(client_deadline(&md), None);
        md.insert("grpc-timeout", "250m".parse().expect("value"));
        assert_eq!(client_deadline(&md), Some(Duration::from_millis(250)));
        md.insert("grpc-timeout", "3S".parse().expect("value"));
        assert_eq!(client_deadline(&md), Some(Duration::from_secs(3)));
        md.insert("grpc-timeout", "x".parse().expect("value"));
        assert_eq!(client_deadline(&md), None);
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(parse_page_token("").ok(), Some(None));
        assert_eq!(
            parse_page_token("12.ord-1").ok(),
            Some(Some((12, "ord-1".to_owned())))
        );
        assert!(parse_page_token("nope").is_err());
    }
}
