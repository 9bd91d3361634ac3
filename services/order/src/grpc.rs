//! `order.v1.OrderService` and `order.v1.OrderAdminService`: the transport. Validates requests,
//! reads the client's deadline, calls the [`Placement`] use cases or the repository, and
//! converts to prost types ([`crate::convert`]).

use std::time::Duration;

use order_saga_platform::{db::status_from_db_error, telemetry::record_order_id, validate_id};
use order_saga_proto::order::v1::{
    self as pb, CompleteDeliveryRequest, CompleteDeliveryResponse, ForceFailOrderRequest,
    GetOrderHistoryRequest, GetOrderHistoryResponse, GetOrderRequest, GetSagaStatsRequest,
    GetSagaStatsResponse, ListOrdersRequest, ListOrdersResponse, ListStuckOrdersRequest,
    ListStuckOrdersResponse, PlaceOrderRequest, RedriveOrderRequest, StepLatency,
    order_admin_service_server::OrderAdminService, order_service_server::OrderService,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    convert::{
        customer_order, event_to_proto, order_to_proto, page_token, parse_page_token,
        saga_to_proto, state_from_proto,
    },
    placement::{PlaceError, Placement},
    repo::{NewOrder, RepoError},
};

/// Longest idempotency key.
pub const MAX_KEY_LEN: usize = 128;
/// Most history events one GetOrderHistory answers (a saga writes a handful; a long outage of
/// retries some hundreds).
const MAX_HISTORY: i64 = 1000;
/// Longest customer, food or zone id.
pub const MAX_ID_LEN: usize = 64;

impl From<RepoError> for Status {
    fn from(err: RepoError) -> Self {
        match err {
            RepoError::Db(e) => status_from_db_error(&e, "orders"),
            RepoError::LostLease(id) => Status::aborted(format!(
                "order {id} is being driven by another driver; retry with the same idempotency_key"
            )),
            RepoError::Corrupt(id, what) => {
                tracing::error!(order_id = %id, what, "corrupt order row");
                Status::internal("internal error")
            }
        }
    }
}

/// Reads the client's `grpc-timeout` header.
fn client_timeout(metadata: &MetadataMap) -> Option<Duration> {
    order_saga_platform::admission::grpc_timeout(metadata.as_ref())
}

fn check(field: &str, value: &str, max: usize) -> Result<(), Status> {
    validate_id(field, value, max).map_err(Status::invalid_argument)
}

/// The public and admin order APIs.
#[derive(Debug, Clone)]
pub struct OrderApi {
    placement: Placement,
}

impl OrderApi {
    /// The APIs over the placement use cases.
    pub fn new(placement: Placement) -> Self {
        Self { placement }
    }

    fn deadline(&self, metadata: &MetadataMap) -> Instant {
        self.placement.deadline(client_timeout(metadata))
    }

    /// The customer's answer: the order with a customer-facing detail, never a participant's
    /// words.
    fn answer(
        result: Result<crate::repo::OrderRecord, PlaceError>,
    ) -> Result<Response<pb::Order>, Status> {
        Ok(Response::new(customer_order(&result?)))
    }

    /// An operator's answer: the order with the participant's detail.
    fn operator_answer(
        result: Result<crate::repo::OrderRecord, PlaceError>,
    ) -> Result<Response<pb::Order>, Status> {
        Ok(Response::new(order_to_proto(&result?)))
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let deadline = self.deadline(request.metadata());
        let req = request.into_inner();
        check("idempotency_key", &req.idempotency_key, MAX_KEY_LEN)?;
        check("customer_id", &req.customer_id, MAX_ID_LEN)?;
        check("food_id", &req.food_id, MAX_ID_LEN)?;
        check("zone", &req.zone, MAX_ID_LEN)?;
        let order = NewOrder {
            idempotency_key: req.idempotency_key,
            customer_id: req.customer_id,
            food_id: req.food_id,
            zone: req.zone,
        };
        Self::answer(self.placement.place(order, deadline).await)
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let order_id = request.into_inner().order_id;
        check("order_id", &order_id, MAX_ID_LEN)?;
        record_order_id(&order_id);
        let record = self
            .placement
            .orchestrator()
            .repo()
            .by_id(&order_id)
            .await?;
        Self::answer(record.ok_or(PlaceError::NoSuchOrder(order_id)))
    }
}

#[tonic::async_trait]
impl OrderAdminService for OrderApi {
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
            .placement
            .orchestrator()
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

    async fn list_stuck_orders(
        &self,
        request: Request<ListStuckOrdersRequest>,
    ) -> Result<Response<ListStuckOrdersResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n @ 1..=1000 => i64::from(n),
            _ => return Err(Status::invalid_argument("limit must be between 1 and 1000")),
        };
        let rows = self.placement.orchestrator().repo().stuck(limit).await?;
        Ok(Response::new(ListStuckOrdersResponse {
            sagas: rows.iter().map(saga_to_proto).collect(),
        }))
    }

    async fn redrive_order(
        &self,
        request: Request<RedriveOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let deadline = self.deadline(request.metadata());
        let order_id = request.into_inner().order_id;
        check("order_id", &order_id, MAX_ID_LEN)?;
        record_order_id(&order_id);
        Self::operator_answer(self.placement.redrive(&order_id, deadline).await)
    }

    async fn force_fail_order(
        &self,
        request: Request<ForceFailOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let deadline = self.deadline(request.metadata());
        let order_id = request.into_inner().order_id;
        check("order_id", &order_id, MAX_ID_LEN)?;
        record_order_id(&order_id);
        Self::operator_answer(self.placement.force_fail(&order_id, deadline).await)
    }

    async fn get_saga_stats(
        &self,
        _request: Request<GetSagaStatsRequest>,
    ) -> Result<Response<GetSagaStatsResponse>, Status> {
        let snapshot = self.placement.orchestrator().stats().snapshot();
        let mut steps = Vec::with_capacity(snapshot.len());
        for (step, hist) in snapshot {
            let mut histogram = Vec::new();
            use hdrhistogram::serialization::Serializer as _;
            hdrhistogram::serialization::V2Serializer::new()
                .serialize(&hist, &mut histogram)
                .map_err(|e| Status::internal(format!("serializing a histogram: {e}")))?;
            let ms = |micros: u64| micros as f64 / 1000.0;
            steps.push(StepLatency {
                step: step.as_str().to_owned(),
                count: hist.len(),
                p50_ms: ms(hist.value_at_quantile(0.5)),
                p99_ms: ms(hist.value_at_quantile(0.99)),
                max_ms: ms(hist.max()),
                histogram,
            });
        }
        Ok(Response::new(GetSagaStatsResponse { steps }))
    }

    async fn get_order_history(
        &self,
        request: Request<GetOrderHistoryRequest>,
    ) -> Result<Response<GetOrderHistoryResponse>, Status> {
        let order_id = request.into_inner().order_id;
        check("order_id", &order_id, MAX_ID_LEN)?;
        record_order_id(&order_id);
        let repo = self.placement.orchestrator().repo();
        let events = repo.history(&order_id, MAX_HISTORY).await?;
        // An order whose events were all pruned still exists; an unknown id does not.
        if events.is_empty() && repo.by_id(&order_id).await?.is_none() {
            return Err(Status::not_found(format!("no order {order_id}")));
        }
        Ok(Response::new(GetOrderHistoryResponse {
            order_id,
            events: events.into_iter().map(event_to_proto).collect(),
        }))
    }

    async fn complete_delivery(
        &self,
        request: Request<CompleteDeliveryRequest>,
    ) -> Result<Response<CompleteDeliveryResponse>, Status> {
        let order_id = request.into_inner().order_id;
        check("order_id", &order_id, MAX_ID_LEN)?;
        record_order_id(&order_id);
        let freed = self.placement.complete_delivery(&order_id).await?;
        Ok(Response::new(CompleteDeliveryResponse {
            order_id,
            agent_id: freed.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed() {
        let mut md = MetadataMap::new();
        assert_eq!(client_timeout(&md), None);
        md.insert("grpc-timeout", "250m".parse().expect("value"));
        assert_eq!(client_timeout(&md), Some(Duration::from_millis(250)));
        md.insert("grpc-timeout", "3S".parse().expect("value"));
        assert_eq!(client_timeout(&md), Some(Duration::from_secs(3)));
        md.insert("grpc-timeout", "x".parse().expect("value"));
        assert_eq!(client_timeout(&md), None);
    }
}
