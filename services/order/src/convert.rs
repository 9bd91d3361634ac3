//! Conversions between the order domain types and `order.v1`'s prost types, at the gRPC edge.

use order_saga_platform::validate_id;
use order_saga_proto::order::v1::{self as pb, NotPlacedReason, SagaInfo};
use order_saga_saga::Reason;
use tonic::Status;

use crate::{
    grpc::MAX_ID_LEN,
    history::HistoryEvent,
    repo::{OrderRecord, OrderState},
};

fn timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

/// One history event as the admin API shows it.
pub fn event_to_proto(e: HistoryEvent) -> pb::SagaEvent {
    pb::SagaEvent {
        seq: e.seq,
        epoch: e.epoch,
        kind: e.kind,
        phase_from: e.phase_from.unwrap_or_default(),
        phase_to: e.phase_to,
        calls: e
            .calls
            .into_iter()
            .map(|c| pb::SagaCall {
                side: c.side,
                call: c.call,
                code: c.code,
                unit_id: c.unit.unwrap_or_default(),
                latency: Some(prost_types::Duration {
                    seconds: i64::try_from(c.ms / 1000).unwrap_or(i64::MAX),
                    nanos: i32::try_from((c.ms % 1000) * 1_000_000).unwrap_or(0),
                }),
                error: c.error.unwrap_or_default(),
            })
            .collect(),
        packet_id: e.packet_id.unwrap_or_default(),
        agent_id: e.agent_id.unwrap_or_default(),
        error: e.error.unwrap_or_default(),
        instance: e.instance,
        at: timestamp(e.at),
    }
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

/// The state filter of `ListOrders`: `None` for unspecified.
pub fn state_from_proto(value: i32) -> Result<Option<OrderState>, Status> {
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

/// The customer's view of an order: as [`order_to_proto`], but the detail of a not-placed
/// order says what the reason means rather than what a participant answered (its words name
/// pools and internal ids; operators read them through the admin API).
pub fn customer_order(r: &OrderRecord) -> pb::Order {
    let mut order = order_to_proto(r);
    order.detail = match (r.state(), r.saga.reason) {
        (OrderState::NotPlaced, Some(reason)) => customer_detail(reason).to_owned(),
        _ => String::new(),
    };
    order
}

/// What a not-placed reason means, in a customer's words.
fn customer_detail(reason: Reason) -> &'static str {
    match reason {
        Reason::OutOfStock => "the food is sold out",
        Reason::NoAgent => "no delivery agent is free in the zone",
        Reason::UnknownFood => "the food is not in the catalogue",
        Reason::UnknownZone => "the zone is not served",
        Reason::ReservationExpired => "the order could not be completed in time",
        Reason::StoreUnavailable => "the store could not be reached in time",
        Reason::DeliveryUnavailable => "the delivery service could not be reached in time",
        Reason::ForceFailed => "the order was cancelled by an operator",
        Reason::Refused => "the order was refused",
    }
}

/// The operator's view of an unfinished saga.
pub fn saga_to_proto(r: &OrderRecord) -> SagaInfo {
    SagaInfo {
        order: Some(order_to_proto(r)),
        step: r.saga.phase.as_str().to_owned(),
        attempts: i32::try_from(r.attempts).unwrap_or(i32::MAX),
        last_error: r.last_error.clone().unwrap_or_default(),
        lease_owner: r.lease_owner.clone().unwrap_or_default(),
        lease_expires_at: r.lease_expires_at.and_then(timestamp),
        epoch: r.epoch,
    }
}

/// The page token that continues after `r` (newest first).
pub fn page_token(r: &OrderRecord) -> String {
    format!("{}.{}", r.created_at, r.order_id)
}

/// The longest page token [`page_token`] issues: a timestamp, a dot and an order id.
const MAX_PAGE_TOKEN_LEN: usize = 20 + 1 + MAX_ID_LEN;

/// Parses [`page_token`]; empty means the first page. Anything longer than a token this server
/// issues, or whose order id is not an id, is refused before it reaches the database.
pub fn parse_page_token(token: &str) -> Result<Option<(i64, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("page_token is not one this server issued");
    if token.len() > MAX_PAGE_TOKEN_LEN {
        return Err(bad());
    }
    let (at, id) = token.split_once('.').ok_or_else(bad)?;
    let at = at.parse().map_err(|_| bad())?;
    validate_id("page_token", id, MAX_ID_LEN).map_err(|_| bad())?;
    Ok(Some((at, id.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(parse_page_token("").ok(), Some(None));
        assert_eq!(
            parse_page_token("12.ord-1").ok(),
            Some(Some((12, "ord-1".to_owned())))
        );
        assert!(parse_page_token("nope").is_err());
        assert!(parse_page_token(&format!("12.{}", "x".repeat(10_000))).is_err());
        assert!(parse_page_token("12.ord\n1").is_err());
    }
}
