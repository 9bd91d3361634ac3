//! The status-code contract between the orchestrator and the participants, written down once.
//!
//! | call    | definitive (no retry)                                          | transient (retried)  |
//! |---------|----------------------------------------------------------------|----------------------|
//! | Reserve | `RESOURCE_EXHAUSTED`, `NOT_FOUND`, `FAILED_PRECONDITION`, `INVALID_ARGUMENT`, `ALREADY_EXISTS`, `OUT_OF_RANGE`, `PERMISSION_DENIED`, `UNAUTHENTICATED`, `UNIMPLEMENTED` | everything else: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `ABORTED`, `CANCELLED`, `UNKNOWN` (connection errors), `INTERNAL`, `DATA_LOSS` |
//! | Assign  | the same set (`FAILED_PRECONDITION`: expired, released or held by another) | the same set |
//! | Release | none: release is idempotent and must eventually succeed        | every error          |
//!
//! Retrying a transient failure is always safe because every participant call is idempotent
//! per order: a reserve repeats the unit already held, an assign repeats success, a release
//! repeats its tombstone. The README's "Status-code contract" section mirrors this table.

use tonic::Code;

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
    /// Any other definitive code: the request itself is wrong.
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

/// Classifies a non-OK status `code` answered to `call`.
pub fn classify(call: Call, code: Code) -> Verdict {
    if call == Call::Release {
        return Verdict::Transient;
    }
    match code {
        Code::ResourceExhausted => Verdict::Definitive(Refusal::Exhausted),
        Code::NotFound => Verdict::Definitive(Refusal::UnknownPool),
        Code::FailedPrecondition => Verdict::Definitive(Refusal::NotHeld),
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => Verdict::Definitive(Refusal::Rejected),
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => Verdict::Transient,
    }
}
