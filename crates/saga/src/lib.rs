//! The order saga as a pure state machine: `(state, event) -> (next state, commands)`.
//!
//! The orchestrator (the order service) owns all I/O. It persists every state this machine
//! returns **before** it executes the commands that came with it, feeds the participants'
//! answers back as [`Event`]s, and stops when the phase is terminal. Because this module does
//! no I/O and reads no clock, every state and event can be tested exhaustively, and a saga
//! picked up by another instance after a crash resumes from its persisted state alone
//! ([`Event::Resume`]).
//!
//! The flow (docs/design.md):
//! 1. `Reserving`: reserve a packet (store) and an agent (delivery) concurrently.
//! 2. `Assigning`: once both are reserved, assign both.
//! 3. `Placed` once both assignments are acknowledged.
//!
//! Any definitive refusal, an operator's force-fail, or the retry deadline passing sends the
//! saga to `Compensating`, which releases **both** sides (release is idempotent and leaves a
//! tombstone, so it is also correct for a side whose reserve never answered), then `NotPlaced`.

pub mod auth;
pub mod contract;
mod round;

pub use auth::BearerToken;
pub use contract::{
    Call, ClientRetry, ERROR_DOMAIN, Refusal, Verdict, busy, classify, classify_code,
    client_may_retry, client_retry, retry_hint,
};
pub use round::{Round, round};

/// A participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The store: one packet of the ordered food.
    Store,
    /// Delivery: one agent of the zone.
    Delivery,
}

impl Side {
    /// Both sides, store first.
    pub const BOTH: [Side; 2] = [Side::Store, Side::Delivery];

    /// Name used in logs and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Store => "store",
            Side::Delivery => "delivery",
        }
    }
}

/// Where the saga as a whole stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Reserving on both sides.
    Reserving,
    /// Both reserved; assigning both.
    Assigning,
    /// Both assigned: terminal, the order is placed.
    Placed,
    /// Decided not to place; releasing both sides. The customer outcome is already NOT_PLACED.
    Compensating,
    /// Both sides released: terminal.
    NotPlaced,
}

impl Phase {
    /// True for `Placed` and `NotPlaced`: nothing more to do.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Placed | Phase::NotPlaced)
    }

    /// Stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Reserving => "reserving",
            Phase::Assigning => "assigning",
            Phase::Placed => "placed",
            Phase::Compensating => "compensating",
            Phase::NotPlaced => "not_placed",
        }
    }

    /// Parses [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reserving" => Phase::Reserving,
            "assigning" => Phase::Assigning,
            "placed" => Phase::Placed,
            "compensating" => Phase::Compensating,
            "not_placed" => Phase::NotPlaced,
            _ => return None,
        })
    }
}

/// What the orchestrator knows about one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegState {
    /// No definitive answer yet: a reserve may or may not have happened.
    Unknown,
    /// A unit is reserved (the unit id is in [`Leg::unit`]).
    Reserved,
    /// The unit is assigned.
    Assigned,
    /// The side refused definitively; it holds nothing for the order.
    Refused,
    /// The side acknowledged a release; it holds nothing and will refuse a late reserve.
    Released,
}

impl LegState {
    /// Every leg state, for exhaustive tests.
    pub const ALL: [LegState; 5] = [
        LegState::Unknown,
        LegState::Reserved,
        LegState::Assigned,
        LegState::Refused,
        LegState::Released,
    ];

    /// Stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            LegState::Unknown => "unknown",
            LegState::Reserved => "reserved",
            LegState::Assigned => "assigned",
            LegState::Refused => "refused",
            LegState::Released => "released",
        }
    }

    /// Parses [`LegState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unknown" => LegState::Unknown,
            "reserved" => LegState::Reserved,
            "assigned" => LegState::Assigned,
            "refused" => LegState::Refused,
            "released" => LegState::Released,
            _ => return None,
        })
    }
}

/// One side of the saga.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Leg {
    /// What we know.
    pub state: LegState,
    /// The unit reserved for the order, kept after release for the audit trail.
    pub unit: Option<String>,
}

impl Leg {
    /// A side nothing is known about yet.
    pub fn unknown() -> Self {
        Self {
            state: LegState::Unknown,
            unit: None,
        }
    }
}

/// Why an order was not placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The store had no packet of the food.
    OutOfStock,
    /// Delivery had no agent in the zone.
    NoAgent,
    /// The store does not know the food.
    UnknownFood,
    /// Delivery does not know the zone.
    UnknownZone,
    /// A reservation expired (or was released) before it was assigned.
    ReservationExpired,
    /// The store kept failing transiently until the retry deadline.
    StoreUnavailable,
    /// Delivery kept failing transiently until the retry deadline.
    DeliveryUnavailable,
    /// An operator failed the order.
    ForceFailed,
    /// A participant refused for another reason.
    Refused,
}

impl Reason {
    /// Every reason, for exhaustive tests.
    pub const ALL: [Reason; 9] = [
        Reason::OutOfStock,
        Reason::NoAgent,
        Reason::UnknownFood,
        Reason::UnknownZone,
        Reason::ReservationExpired,
        Reason::StoreUnavailable,
        Reason::DeliveryUnavailable,
        Reason::ForceFailed,
        Reason::Refused,
    ];

    /// Stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OutOfStock => "out_of_stock",
            Reason::NoAgent => "no_agent",
            Reason::UnknownFood => "unknown_food",
            Reason::UnknownZone => "unknown_zone",
            Reason::ReservationExpired => "reservation_expired",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::DeliveryUnavailable => "delivery_unavailable",
            Reason::ForceFailed => "force_failed",
            Reason::Refused => "refused",
        }
    }

    /// Parses [`Reason::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The reason a definitive refusal of `call` by `side` gives.
    pub fn from_refusal(side: Side, call: Call, refusal: Refusal) -> Self {
        match (side, call, refusal) {
            (Side::Store, Call::Reserve, Refusal::Exhausted) => Reason::OutOfStock,
            (Side::Delivery, Call::Reserve, Refusal::Exhausted) => Reason::NoAgent,
            (Side::Store, Call::Reserve, Refusal::UnknownPool) => Reason::UnknownFood,
            (Side::Delivery, Call::Reserve, Refusal::UnknownPool) => Reason::UnknownZone,
            (_, Call::Assign, Refusal::NotHeld) => Reason::ReservationExpired,
            _ => Reason::Refused,
        }
    }

    /// The reason for giving up on `side` after transient failures.
    pub fn unavailable(side: Side) -> Self {
        match side {
            Side::Store => Reason::StoreUnavailable,
            Side::Delivery => Reason::DeliveryUnavailable,
        }
    }
}

/// The whole state of one saga: exactly what the order service persists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Saga {
    /// Overall phase.
    pub phase: Phase,
    /// The store side (packet).
    pub store: Leg,
    /// The delivery side (agent).
    pub delivery: Leg,
    /// Why it is not placed (set on entering `Compensating`).
    pub reason: Option<Reason>,
    /// The side that failed transiently most recently: names the culprit if the retry
    /// deadline passes.
    pub last_transient: Option<Side>,
}

/// Something that happened, fed to [`Saga::step`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    /// (Re)start driving from the current state: after creation, after a crash, on re-drive.
    Resume,
    /// A reserve succeeded.
    Reserved {
        /// Which side.
        side: Side,
        /// The reserved unit.
        unit: String,
    },
    /// An assign succeeded.
    Assigned {
        /// Which side.
        side: Side,
    },
    /// A release succeeded.
    Released {
        /// Which side.
        side: Side,
    },
    /// A call was refused definitively (see [`contract`]).
    Refused {
        /// Which side.
        side: Side,
        /// Which call.
        call: Call,
        /// What kind of refusal.
        refusal: Refusal,
    },
    /// A call failed transiently and may be retried.
    Transient {
        /// Which side.
        side: Side,
        /// Which call.
        call: Call,
    },
    /// The orchestrator's retry deadline passed: the reservations cannot be relied on any more.
    RetryDeadlinePassed,
    /// An operator gave up on the order.
    ForceFail,
}

/// A remote call the orchestrator must make next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// Reserve one unit on `side`.
    Reserve(Side),
    /// Assign `unit` on `side`.
    Assign(Side, String),
    /// Release whatever `side` holds for the order.
    Release(Side),
}

impl Command {
    /// The side the command goes to.
    pub fn side(&self) -> Side {
        match self {
            Command::Reserve(s) | Command::Assign(s, _) | Command::Release(s) => *s,
        }
    }
}

impl Default for Saga {
    fn default() -> Self {
        Self::new()
    }
}

impl Saga {
    /// A new saga: nothing reserved yet.
    pub fn new() -> Self {
        Self {
            phase: Phase::Reserving,
            store: Leg::unknown(),
            delivery: Leg::unknown(),
            reason: None,
            last_transient: None,
        }
    }

    /// One side.
    pub fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::Store => &self.store,
            Side::Delivery => &self.delivery,
        }
    }

    fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::Store => &mut self.store,
            Side::Delivery => &mut self.delivery,
        }
    }

    /// Applies `event`, returning the next state and the calls to make. The caller persists
    /// the returned state before making any of the calls.
    #[must_use]
    pub fn step(&self, event: &Event) -> (Saga, Vec<Command>) {
        let mut next = self.clone();
        let commands = next.apply(event);
        (next, commands)
    }

    /// The calls that drive the saga forward from its current state (what `Resume` emits).
    pub fn pending_commands(&self) -> Vec<Command> {
        match self.phase {
            Phase::Reserving => Side::BOTH
                .into_iter()
                .filter(|&s| self.leg(s).state == LegState::Unknown)
                .map(Command::Reserve)
                .collect(),
            Phase::Assigning => Side::BOTH
                .into_iter()
                .filter_map(|s| self.assign_command(s))
                .collect(),
            Phase::Compensating => Side::BOTH
                .into_iter()
                .filter(|&s| self.leg(s).state != LegState::Released)
                .map(Command::Release)
                .collect(),
            Phase::Placed | Phase::NotPlaced => Vec::new(),
        }
    }

    fn assign_command(&self, side: Side) -> Option<Command> {
        let leg = self.leg(side);
        match (leg.state, &leg.unit) {
            (LegState::Reserved, Some(unit)) => Some(Command::Assign(side, unit.clone())),
            _ => None,
        }
    }

    fn compensate(&mut self, reason: Reason) -> Vec<Command> {
        self.phase = Phase::Compensating;
        self.reason = Some(reason);
        self.pending_commands()
    }

    fn apply(&mut self, event: &Event) -> Vec<Command> {
        use Phase::*;
        if self.phase.is_terminal() {
            return Vec::new();
        }
        match (self.phase, event) {
            // A driver that (re)starts a saga still reserving asks both sides again, including
            // a side it knows reserved: that reserve renews the reservation (or, if it was
            // lost, claims another unit), so a saga recovered late in `Reserving` does not
            // assign a reservation that ran out while nobody drove it. The leg forgets its
            // state, not its unit (kept for the audit trail until the answer replaces it).
            (Reserving, Event::Resume) => {
                for side in Side::BOTH {
                    let leg = self.leg_mut(side);
                    if leg.state == LegState::Reserved {
                        leg.state = LegState::Unknown;
                    }
                }
                self.pending_commands()
            }
            (_, Event::Resume) => self.pending_commands(),

            (Reserving, Event::Reserved { side, unit }) => {
                let leg = self.leg_mut(*side);
                if leg.state != LegState::Unknown {
                    return Vec::new();
                }
                // The unit answered is the one the order holds now (a renewal of the one it
                // had, or another when that one was lost).
                leg.state = LegState::Reserved;
                leg.unit = Some(unit.clone());
                if Side::BOTH
                    .iter()
                    .all(|&s| self.leg(s).state == LegState::Reserved)
                {
                    self.phase = Assigning;
                    self.pending_commands()
                } else {
                    Vec::new()
                }
            }
            // A reserve that answers after we decided to compensate: the release already
            // commanded for that side frees it (or its tombstone refused it). Keep the unit id
            // for the audit trail only.
            (Compensating, Event::Reserved { side, unit }) => {
                let leg = self.leg_mut(*side);
                if leg.unit.is_none() {
                    leg.unit = Some(unit.clone());
                }
                Vec::new()
            }

            (Assigning, Event::Assigned { side }) => {
                let leg = self.leg_mut(*side);
                if leg.state != LegState::Reserved {
                    return Vec::new();
                }
                leg.state = LegState::Assigned;
                if Side::BOTH
                    .iter()
                    .all(|&s| self.leg(s).state == LegState::Assigned)
                {
                    self.phase = Placed;
                }
                Vec::new()
            }

            (Compensating, Event::Released { side }) => {
                self.leg_mut(*side).state = LegState::Released;
                if Side::BOTH
                    .iter()
                    .all(|&s| self.leg(s).state == LegState::Released)
                {
                    self.phase = NotPlaced;
                }
                Vec::new()
            }

            (
                Reserving,
                Event::Refused {
                    side,
                    call: Call::Reserve,
                    refusal,
                },
            ) => {
                self.leg_mut(*side).state = LegState::Refused;
                self.compensate(Reason::from_refusal(*side, Call::Reserve, *refusal))
            }
            (
                Assigning,
                Event::Refused {
                    side,
                    call: Call::Assign,
                    refusal,
                },
            ) => self.compensate(Reason::from_refusal(*side, Call::Assign, *refusal)),

            (
                Reserving,
                Event::Transient {
                    side,
                    call: Call::Reserve,
                },
            ) if self.leg(*side).state == LegState::Unknown => {
                self.last_transient = Some(*side);
                vec![Command::Reserve(*side)]
            }
            (
                Assigning,
                Event::Transient {
                    side,
                    call: Call::Assign,
                },
            ) => {
                self.last_transient = Some(*side);
                self.assign_command(*side).into_iter().collect()
            }
            (
                Compensating,
                Event::Transient {
                    side,
                    call: Call::Release,
                },
            ) if self.leg(*side).state != LegState::Released => {
                self.last_transient = Some(*side);
                vec![Command::Release(*side)]
            }

            (Reserving | Assigning, Event::RetryDeadlinePassed) => {
                let reason = self
                    .last_transient
                    .map_or(Reason::ReservationExpired, Reason::unavailable);
                self.compensate(reason)
            }
            (Reserving | Assigning, Event::ForceFail) => self.compensate(Reason::ForceFailed),

            // Everything else is stale or out of place (an answer to a call the current phase
            // no longer makes, a deadline while compensating): ignored.
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
