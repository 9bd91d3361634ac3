//! The status-code contract between the orchestrator and the participants, written down once.
//!
//! A status code alone is ambiguous: `RESOURCE_EXHAUSTED` is what a participant answers when its
//! pool is empty, but it is also what an overloaded server, a proxy or a message-size limit
//! answers; `NOT_FOUND` may be an unknown food or an unknown method behind a misrouted proxy;
//! `UNIMPLEMENTED`, `PERMISSION_DENIED` and `UNAUTHENTICATED` are what a URL pointing at the
//! wrong listener, or a proxy's bare 404/403, produce. So the participants' definitive refusals
//! carry a `google.rpc.ErrorInfo` detail in [`ERROR_DOMAIN`] naming the [`Refusal`], and only a
//! status carrying the reason that matches its code is read as a refusal. Every other status,
//! whatever its code, is transient: a misroute or a proxy can delay an order, never refuse it.
//!
//! | call    | definitive (no retry)                                          | transient (retried)  |
//! |---------|----------------------------------------------------------------|----------------------|
//! | Reserve | `RESOURCE_EXHAUSTED` + `POOL_EXHAUSTED`, `NOT_FOUND` + `POOL_NOT_FOUND`, `FAILED_PRECONDITION` + `NOT_HELD`, `INVALID_ARGUMENT` + `INVALID_REQUEST` | everything else: those codes without their reason, `UNIMPLEMENTED`, `PERMISSION_DENIED`, `UNAUTHENTICATED`, `ALREADY_EXISTS`, `OUT_OF_RANGE`, `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `CANCELLED`, `UNKNOWN` (connection errors), `INTERNAL`, `DATA_LOSS` |
//! | Assign  | the same set (`NOT_HELD`: expired, released or held by another) | the same set |
//! | Release | none: release is idempotent and must eventually succeed        | every error          |
//!
//! Retrying a transient failure is always safe because every participant call is idempotent
//! per order: a reserve repeats the unit already held, an assign repeats success, a release
//! repeats its tombstone. The README's "Status-code contract" section mirrors this table.
//!
//! Overload is answered `UNAVAILABLE` with a `google.rpc.RetryInfo` detail ([`busy`]); a client
//! waits [`retry_hint`] and sends the same request again.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo` domain of the participants' definitive refusals.
pub const ERROR_DOMAIN: &str = "reservation.order-saga";

/// A participant call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// `Reserve`.
    Reserve,
    /// `Assign`.
    Assign,
    /// `Release`.
    Release,
}

impl Call {
    /// Every call, for exhaustive tests.
    pub const ALL: [Call; 3] = [Call::Reserve, Call::Assign, Call::Release];

    /// Name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Reserve => "reserve",
            Call::Assign => "assign",
            Call::Release => "release",
        }
    }
}

/// What kind of definitive refusal a participant gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `RESOURCE_EXHAUSTED`: the pool has no free unit.
    Exhausted,
    /// `NOT_FOUND`: the pool (food, zone) or unit does not exist.
    UnknownPool,
    /// `FAILED_PRECONDITION`: expired, released (tombstone) or held by another order.
    NotHeld,
    /// `INVALID_ARGUMENT`: the participant found the request itself wrong.
    Rejected,
}

impl Refusal {
    /// Every refusal, for exhaustive tests.
    pub const ALL: [Refusal; 4] = [
        Refusal::Exhausted,
        Refusal::UnknownPool,
        Refusal::NotHeld,
        Refusal::Rejected,
    ];

    /// The `ErrorInfo.reason` a participant sends with this refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Exhausted => "POOL_EXHAUSTED",
            Refusal::UnknownPool => "POOL_NOT_FOUND",
            Refusal::NotHeld => "NOT_HELD",
            Refusal::Rejected => "INVALID_REQUEST",
        }
    }

    /// The status code this refusal is sent with.
    pub fn code(self) -> Code {
        match self {
            Refusal::Exhausted => Code::ResourceExhausted,
            Refusal::UnknownPool => Code::NotFound,
            Refusal::NotHeld => Code::FailedPrecondition,
            Refusal::Rejected => Code::InvalidArgument,
        }
    }

    /// The refusal as a participant answers it: [`Refusal::code`] with `message`, and the
    /// `ErrorInfo` that makes it definitive.
    pub fn status(self, message: impl Into<String>) -> Status {
        Status::with_error_details(
            self.code(),
            message,
            ErrorDetails::with_error_info(self.reason(), ERROR_DOMAIN, []),
        )
    }
}

/// How the orchestrator must treat a participant's non-OK status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Do not retry: the saga compensates.
    Definitive(Refusal),
    /// Retry with backoff while the retry deadline allows.
    Transient,
}

/// Whether a client of `order.v1.OrderService/PlaceOrder` may send the same request again
/// (same idempotency key) after this status: the outcome is unknown or not final yet, and the
/// key makes the retry safe. Everything else is a definitive answer about the request.
pub fn client_may_retry(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
    )
}

/// What a client of `PlaceOrder` does after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRetry {
    /// The server is busy (nothing was done): send the same request after this delay.
    Busy(Duration),
    /// The outcome is unknown or not final yet: back off, then send the same request.
    Backoff,
    /// A definitive answer about the request: stop.
    Stop,
}

/// The one place clients (`sagactl`, the chaos clients, the benchmark) decide how to retry.
pub fn client_retry(status: &Status) -> ClientRetry {
    match retry_hint(status) {
        Some(delay) if status.code() == Code::Unavailable => ClientRetry::Busy(delay),
        _ if client_may_retry(status.code()) => ClientRetry::Backoff,
        _ => ClientRetry::Stop,
    }
}

/// Classifies a non-OK `status` answered to `call`: [`classify_code`] with the status's
/// `ErrorInfo` reason, if it carries one in [`ERROR_DOMAIN`].
pub fn classify(call: Call, status: &Status) -> Verdict {
    classify_code(call, status.code(), refusal_reason(status).as_deref())
}

/// The `ErrorInfo.reason` of `status`, when its domain is [`ERROR_DOMAIN`].
pub fn refusal_reason(status: &Status) -> Option<String> {
    let info = status.get_details_error_info()?;
    (info.domain == ERROR_DOMAIN).then_some(info.reason)
}

impl Refusal {
    /// The refusal `status` carries: its code with the matching reason, or `None`.
    pub fn of(status: &Status) -> Option<Refusal> {
        let reason = refusal_reason(status)?;
        Refusal::ALL
            .into_iter()
            .find(|r| r.code() == status.code() && r.reason() == reason.as_str())
    }
}

/// Classifies a non-OK status `code` answered to `call`, with the `reason` of its `ErrorInfo`
/// in [`ERROR_DOMAIN`] if it had one. A status is definitive only when it is one of the
/// participants' [`Refusal`]s: its code **with** the matching reason. Every other status is
/// transient, since overload, a proxy or a misrouted URL can produce any code, but not our
/// reason in our domain.
pub fn classify_code(call: Call, code: Code, reason: Option<&str>) -> Verdict {
    if call == Call::Release {
        return Verdict::Transient;
    }
    Refusal::ALL
        .into_iter()
        .find(|r| r.code() == code && Some(r.reason()) == reason)
        .map_or(Verdict::Transient, Verdict::Definitive)
}

/// `UNAVAILABLE` with a `google.rpc.RetryInfo` detail: the server is busy, send the same
/// request again after `retry_after`. Never read as a final answer by a saga or a client.
pub fn busy(message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// The delay a `google.rpc.RetryInfo` detail of `status` asks for, if it carries one.
pub fn retry_hint(status: &Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}
