//! `reservation.v1.ReservationService` over an [`Engine`]: validation at the edge, and the one
//! mapping from engine outcomes to status codes that the orchestrator relies on.

use std::time::Duration;

use order_saga_platform::{db::status_from_db_error, telemetry::carried_call_span, validate_id};
use order_saga_proto::reservation::v1::{
    AssignRequest, AssignResponse, BatchItem, BatchRequest, BatchResponse, BatchResult,
    CompleteRequest, CompleteResponse, GetLimitsRequest, Limits, ReleaseRequest, ReleaseResponse,
    ReserveRequest, ReserveResponse, batch_item, batch_result,
    reservation_service_server::ReservationService,
};
use order_saga_saga::Refusal;
use tonic::{Request, Response, Status};

use crate::{Engine, EngineError};

/// Longest id a client may send.
pub const MAX_ID_LEN: usize = 64;

/// Most items one `Batch` call may carry.
pub const MAX_BATCH_ITEMS: usize = 512;

impl From<EngineError> for Status {
    fn from(err: EngineError) -> Self {
        match err {
            // The saga's definitive refusals carry their ErrorInfo reason (see the contract).
            EngineError::UnknownPool(_) => Refusal::UnknownPool.status(err.to_string()),
            EngineError::Exhausted(_) => Refusal::Exhausted.status(err.to_string()),
            EngineError::Released(_) | EngineError::NotHeld(_) => {
                Refusal::NotHeld.status(err.to_string())
            }
            EngineError::NotAssigned(_) => Status::failed_precondition(err.to_string()),
            EngineError::Contended(_) => Status::aborted(err.to_string()),
            EngineError::PoolExists(_) => Status::already_exists(err.to_string()),
            EngineError::InvalidArgument(msg) => Refusal::Rejected.status(msg),
            EngineError::Db(e) => status_from_db_error(&e, "reservation engine"),
        }
    }
}

/// Pools per page of a catalogue listing when the caller does not say.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
/// The largest page of a catalogue listing.
pub const MAX_PAGE_SIZE: i64 = 500;

/// One page of pools for `ListFoods`/`ListZones`: `page_token` is empty or the last pool id of
/// the previous page; returns the pools and the token of the next page (empty on the last).
pub async fn list_page(
    engine: &Engine,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<crate::PoolInfo>, String), Status> {
    let size = match i64::from(page_size) {
        0 => DEFAULT_PAGE_SIZE,
        n @ 1..=MAX_PAGE_SIZE => n,
        _ => {
            return Err(Status::invalid_argument(format!(
                "page_size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
    };
    if !page_token.is_empty() {
        validate_id("page_token", page_token, MAX_ID_LEN)
            .map_err(|_| Status::invalid_argument("page_token is not one this server issued"))?;
    }
    // One extra row tells whether another page exists.
    let mut pools = engine.list_pools(page_token, size + 1).await?;
    let more = pools.len() as i64 > size;
    pools.truncate(usize::try_from(size).unwrap_or(usize::MAX));
    let next = match pools.last() {
        Some(last) if more => last.pool.clone(),
        _ => String::new(),
    };
    Ok((pools, next))
}

/// Converts a Unix-ms timestamp from the database into a protobuf timestamp.
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A bad field of a reservation request: a definitive refusal (`INVALID_ARGUMENT` with its
/// reason), unlike a bare `INVALID_ARGUMENT` a proxy might answer.
fn check_id(field: &str, value: &str) -> Result<(), Status> {
    validate_id(field, value, MAX_ID_LEN).map_err(|m| Refusal::Rejected.status(m))
}

/// The participant gRPC service, identical for the store and delivery.
#[derive(Debug, Clone)]
pub struct ReservationGrpc {
    engine: Engine,
    queue_wait: Duration,
}

impl ReservationGrpc {
    /// Serves `engine`; `queue_wait` is the internal listener's admission wait, reported by
    /// `GetLimits`.
    pub fn new(engine: Engine, queue_wait: Duration) -> Self {
        Self { engine, queue_wait }
    }
}

fn proto_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

/// A request's TTL as a `Duration`, refusing a negative one. The sign is checked here first:
/// prost-types' own conversion negates a negative value to report it, which overflows (a panic
/// in debug builds) for `seconds = i64::MIN`; the fuzzer found that.
fn ttl_from_proto(ttl: prost_types::Duration) -> Result<Duration, Status> {
    let negative = || Refusal::Rejected.status("ttl must be positive");
    if ttl.seconds < 0 || ttl.nanos < 0 {
        return Err(negative());
    }
    Duration::try_from(ttl).map_err(|_| negative())
}

/// A batch item's answer: its unary call's status and, on success, its response.
fn batch_result<T>(
    answer: Result<Response<T>, Status>,
    wrap: impl FnOnce(T) -> batch_result::Response,
) -> BatchResult {
    match answer {
        Ok(response) => BatchResult {
            response: Some(wrap(response.into_inner())),
            ..BatchResult::default()
        },
        Err(status) => BatchResult {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: status.details().to_vec(),
            response: None,
        },
    }
}

impl ReservationGrpc {
    /// Answers one item of a batch through the item's own unary handler, so a batched call
    /// is validated, executed and classified exactly as the unary one.
    async fn batch_item(&self, item: BatchItem) -> BatchResult {
        use batch_result::Response as Answer;
        use tracing::Instrument;
        let path = |call: &str| format!("/reservation.v1.ReservationService/{call}");
        // Each item continues its own saga's trace, as its unary call would.
        let span = |call: &str| carried_call_span(&path(call), &item.trace_context);
        match item.call {
            Some(batch_item::Call::Reserve(r)) => {
                let answer = self.reserve(Request::new(r)).instrument(span("Reserve"));
                batch_result(answer.await, Answer::Reserve)
            }
            Some(batch_item::Call::Assign(r)) => {
                let answer = self.assign(Request::new(r)).instrument(span("Assign"));
                batch_result(answer.await, Answer::Assign)
            }
            Some(batch_item::Call::Release(r)) => {
                let answer = self.release(Request::new(r)).instrument(span("Release"));
                batch_result(answer.await, Answer::Release)
            }
            None => batch_result::<()>(
                Err(Refusal::Rejected.status("a batch item names no call")),
                |()| Answer::Release(ReleaseResponse::default()),
            ),
        }
    }
}

#[tonic::async_trait]
impl ReservationService for ReservationGrpc {
    async fn batch(
        &self,
        request: Request<BatchRequest>,
    ) -> Result<Response<BatchResponse>, Status> {
        let items = request.into_inner().items;
        if items.len() > MAX_BATCH_ITEMS {
            return Err(Refusal::Rejected
                .status(format!("a batch carries at most {MAX_BATCH_ITEMS} items")));
        }
        // All at once: the engine's group commit runs the writes that arrive together in one
        // transaction.
        let results =
            futures::future::join_all(items.into_iter().map(|item| self.batch_item(item))).await;
        Ok(Response::new(BatchResponse { results }))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let req = request.into_inner();
        check_id("order_id", &req.order_id)?;
        order_saga_platform::telemetry::record_order_id(&req.order_id);
        check_id("pool", &req.pool)?;
        let ttl = req
            .ttl
            .ok_or_else(|| Refusal::Rejected.status("ttl is required"))
            .and_then(ttl_from_proto)?;
        let reservation = self.engine.reserve(&req.order_id, &req.pool, ttl).await?;
        tracing::debug!(unit_id = %reservation.unit_id, pool = %req.pool, "reserved");
        Ok(Response::new(ReserveResponse {
            unit_id: reservation.unit_id,
            expires_at: reservation.expires_at_ms.map(timestamp_from_ms),
        }))
    }

    async fn assign(
        &self,
        request: Request<AssignRequest>,
    ) -> Result<Response<AssignResponse>, Status> {
        let req = request.into_inner();
        check_id("order_id", &req.order_id)?;
        order_saga_platform::telemetry::record_order_id(&req.order_id);
        check_id("unit_id", &req.unit_id)?;
        self.engine.assign(&req.order_id, &req.unit_id).await?;
        tracing::debug!(unit_id = %req.unit_id, "assigned");
        Ok(Response::new(AssignResponse {
            unit_id: req.unit_id,
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let req = request.into_inner();
        check_id("order_id", &req.order_id)?;
        order_saga_platform::telemetry::record_order_id(&req.order_id);
        let freed = self.engine.release(&req.order_id).await?;
        tracing::debug!(unit_id = ?freed, "released");
        Ok(Response::new(ReleaseResponse {
            released_unit_id: freed.unwrap_or_default(),
        }))
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let req = request.into_inner();
        check_id("order_id", &req.order_id)?;
        order_saga_platform::telemetry::record_order_id(&req.order_id);
        let freed = self.engine.complete(&req.order_id).await?;
        tracing::info!(unit_id = ?freed, "completed");
        Ok(Response::new(CompleteResponse {
            unit_id: freed.unwrap_or_default(),
        }))
    }

    async fn get_limits(
        &self,
        _request: Request<GetLimitsRequest>,
    ) -> Result<Response<Limits>, Status> {
        let config = self.engine.config();
        Ok(Response::new(Limits {
            min_ttl: proto_duration(config.min_ttl),
            max_ttl: proto_duration(config.max_ttl),
            queue_wait: proto_duration(self.queue_wait),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_at_every_edge_are_answered_without_a_panic() {
        let ttl = |seconds, nanos| ttl_from_proto(prost_types::Duration { seconds, nanos });
        assert_eq!(ttl(30, 0).ok(), Some(Duration::from_secs(30)));
        assert_eq!(ttl(1, 2_000_000_000).ok(), Some(Duration::from_secs(3)));
        for (seconds, nanos) in [
            (i64::MIN, 0),
            (-1, 0),
            (0, -1),
            (i64::MIN, i32::MIN),
            (1, -1),
        ] {
            let refused = ttl(seconds, nanos).expect_err("negative");
            assert_eq!(
                refused.code(),
                tonic::Code::InvalidArgument,
                "{seconds} {nanos}"
            );
        }
        assert!(
            ttl(i64::MAX, i32::MAX).is_ok(),
            "huge but positive: the engine bounds it"
        );
    }

    #[test]
    fn engine_errors_map_to_the_contract_codes() {
        let code = |e: EngineError| Status::from(e).code();
        assert_eq!(
            code(EngineError::Exhausted("p".into())),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            code(EngineError::Contended("p".into())),
            tonic::Code::Aborted
        );
        assert_eq!(
            code(EngineError::Released("o".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(EngineError::NotHeld("x".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(EngineError::UnknownPool("p".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(EngineError::PoolExists("p".into())),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(EngineError::InvalidArgument("x".into())),
            tonic::Code::InvalidArgument
        );
        // Every refusal the orchestrator must not retry carries its reason.
        for e in [
            EngineError::Exhausted("p".into()),
            EngineError::UnknownPool("p".into()),
            EngineError::Released("o".into()),
            EngineError::NotHeld("x".into()),
            EngineError::InvalidArgument("x".into()),
        ] {
            let status = Status::from(e);
            assert!(Refusal::of(&status).is_some(), "{status:?}");
        }
        let internal = Status::from(EngineError::Db(sqlx::Error::RowNotFound));
        assert_eq!(internal.code(), tonic::Code::Internal);
        assert_eq!(internal.message(), "internal error");
        let down = Status::from(EngineError::Db(sqlx::Error::PoolTimedOut));
        assert_eq!(down.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn timestamps_convert_from_millis() {
        let ts = timestamp_from_ms(1_500);
        assert_eq!((ts.seconds, ts.nanos), (1, 500_000_000));
    }
}
