//! The participant engine (store and delivery run the same one), as
//! `crates/reservation/src/engine.rs` implements it, reduced to what the protocol can observe.
//!
//! Each call is one atomic step, as each is one statement (or one short transaction) in the
//! engine. Time is abstract: a reservation is either unexpired or expired, and expiry is an action
//! of the model (time passes); the sweeper is another.

use order_saga_saga::{Refusal, Side};

/// One unit (a packet, an agent): the `units` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// `status = 'available'`.
    Free,
    /// `status = 'reserved'` for `order`; `expired` once `expires_at <= now()`.
    Reserved {
        /// The holder.
        order: u8,
        /// The reservation's expiry has passed (it is not swept yet).
        expired: bool,
    },
    /// `status = 'assigned'` to `order`.
    Assigned {
        /// The holder.
        order: u8,
    },
}

impl Unit {
    /// The order holding the unit, if any (an expired reservation still names its holder until
    /// it is swept or claimed by another order).
    pub fn holder(self) -> Option<u8> {
        match self {
            Unit::Free => None,
            Unit::Reserved { order, .. } | Unit::Assigned { order } => Some(order),
        }
    }
}

/// What a participant answers. The model turns it into a gRPC status code and lets the production
/// contract ([`order_saga_saga::classify`]) decide what the orchestrator makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// `Reserve` succeeded with this unit (index into the pool).
    Reserved(u8),
    /// `Assign` succeeded.
    Assigned,
    /// `Release` succeeded.
    Released,
    /// `RESOURCE_EXHAUSTED`: no free unit.
    Exhausted,
    /// `FAILED_PRECONDITION`: a reserve after the order's release (tombstone), or an assign of a
    /// unit the order does not hold unexpired.
    FailedPrecondition,
}

impl Outcome {
    /// The status the participant's gRPC adapter answers a refusal with (its code and its
    /// `ErrorInfo` reason, built by the production contract); `OK` for a success.
    pub fn status(self) -> tonic::Status {
        match self {
            Outcome::Reserved(_) | Outcome::Assigned | Outcome::Released => tonic::Status::ok(""),
            Outcome::Exhausted => Refusal::Exhausted.status("no free unit"),
            Outcome::FailedPrecondition => Refusal::NotHeld.status("not held"),
        }
    }
}

/// One participant database: its units and its per-order release tombstones (`claims`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Participant {
    /// The units of the one pool the model uses.
    pub units: Vec<Unit>,
    /// `tombstones[order]`: the order was released here (`claims.released_at` set).
    pub tombstones: Vec<bool>,
    /// `completed[order]`: the order's assignment here was ended because its work is done
    /// (`claims.completed_at` set), freeing its unit.
    pub completed: Vec<bool>,
}

impl Participant {
    /// A pool of `stock` free units, for up to `orders` orders.
    pub fn new(stock: u8, orders: u8) -> Self {
        Self {
            units: vec![Unit::Free; usize::from(stock)],
            tombstones: vec![false; usize::from(orders)],
            completed: vec![false; usize::from(orders)],
        }
    }

    /// The unit `order` holds, if any (reserved, even expired, or assigned).
    pub fn held_by(&self, order: u8) -> Option<u8> {
        self.units
            .iter()
            .position(|u| u.holder() == Some(order))
            .and_then(|i| u8::try_from(i).ok())
    }

    /// `Engine::reserve`: refused after a release (tombstone); idempotent per order (the unit it
    /// already holds, even an expired reservation not swept yet, whose reservation it renews);
    /// else the first free or expired unit (the engine's `LIMIT 1` picks any; units are
    /// interchangeable, so the model takes the lowest index); else `RESOURCE_EXHAUSTED`.
    pub fn reserve(&mut self, order: u8) -> Outcome {
        if self.tombstoned(order) {
            return Outcome::FailedPrecondition;
        }
        if let Some(unit) = self.held_by(order) {
            if let Some(Unit::Reserved { expired, .. }) = self.units.get_mut(usize::from(unit)) {
                *expired = false;
            }
            return Outcome::Reserved(unit);
        }
        let claimable = |u: &Unit| matches!(u, Unit::Free | Unit::Reserved { expired: true, .. });
        match self.units.iter().position(claimable) {
            Some(i) => {
                self.units[i] = Unit::Reserved {
                    order,
                    expired: false,
                };
                u8::try_from(i).map_or(Outcome::Exhausted, Outcome::Reserved)
            }
            None => Outcome::Exhausted,
        }
    }

    /// `Engine::assign`: succeeds while `unit` is reserved by `order` and unexpired, and again
    /// once assigned to it; otherwise `FAILED_PRECONDITION`.
    pub fn assign(&mut self, order: u8, unit: u8) -> Outcome {
        let Some(slot) = self.units.get_mut(usize::from(unit)) else {
            return Outcome::FailedPrecondition;
        };
        match *slot {
            Unit::Reserved {
                order: holder,
                expired: false,
            } if holder == order => {
                *slot = Unit::Assigned { order };
                Outcome::Assigned
            }
            Unit::Assigned { order: holder } if holder == order => Outcome::Assigned,
            _ => Outcome::FailedPrecondition,
        }
    }

    /// `Engine::release`: leaves a tombstone and frees whatever the order holds. Idempotent.
    pub fn release(&mut self, order: u8) -> Outcome {
        if let Some(t) = self.tombstones.get_mut(usize::from(order)) {
            *t = true;
        }
        for unit in &mut self.units {
            if unit.holder() == Some(order) {
                *unit = Unit::Free;
            }
        }
        Outcome::Released
    }

    /// `Engine::complete` (the order service's `CompleteDelivery`, once it read the order
    /// stored PLACED): a tombstone, and the order's assigned unit freed. Idempotent; changes
    /// nothing for an order holding an unassigned unit (the engine refuses it).
    pub fn complete(&mut self, order: u8) {
        if self
            .held_by(order)
            .and_then(|u| self.units.get(usize::from(u)))
            .is_some_and(|u| !matches!(u, Unit::Assigned { .. }))
        {
            return;
        }
        if let Some(t) = self.tombstones.get_mut(usize::from(order)) {
            *t = true;
        }
        self.free_assignment(order);
    }

    /// Frees the unit assigned to `order` and marks its work done; whether it freed one. (The
    /// old `CompleteDelivery` did only this, for any assigned unit, whatever its order's state.)
    pub fn free_assignment(&mut self, order: u8) -> bool {
        let Some(unit) = self
            .units
            .iter_mut()
            .find(|u| **u == Unit::Assigned { order })
        else {
            return false;
        };
        *unit = Unit::Free;
        if let Some(c) = self.completed.get_mut(usize::from(order)) {
            *c = true;
        }
        true
    }

    /// Whether the order's work here was completed (its unit freed by a completion).
    pub fn completed(&self, order: u8) -> bool {
        self.completed
            .get(usize::from(order))
            .copied()
            .unwrap_or(false)
    }

    /// Time passes for one reservation. Returns whether it was an unexpired reservation.
    pub fn expire(&mut self, unit: u8) -> bool {
        match self.units.get_mut(usize::from(unit)) {
            Some(Unit::Reserved { expired, .. }) if !*expired => {
                *expired = true;
                true
            }
            _ => false,
        }
    }

    /// `Engine::sweep`: frees every expired reservation. Returns whether it freed any.
    pub fn sweep(&mut self) -> bool {
        let mut freed = false;
        for unit in &mut self.units {
            if let Unit::Reserved { expired: true, .. } = unit {
                *unit = Unit::Free;
                freed = true;
            }
        }
        freed
    }

    /// Whether the order was released here.
    pub fn tombstoned(&self, order: u8) -> bool {
        self.tombstones
            .get(usize::from(order))
            .copied()
            .unwrap_or(false)
    }
}

/// The unit id the participant hands out for unit `index` (what the saga stores).
pub fn unit_name(side: Side, index: u8) -> String {
    match side {
        Side::Store => format!("pkt{index}"),
        Side::Delivery => format!("agent{index}"),
    }
}

/// The index of a unit id made by [`unit_name`]; `None` for any other string.
pub fn unit_index(side: Side, name: &str) -> Option<u8> {
    let prefix = match side {
        Side::Store => "pkt",
        Side::Delivery => "agent",
    };
    name.strip_prefix(prefix)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_idempotent_and_refused_after_release() {
        let mut p = Participant::new(1, 2);
        assert_eq!(p.reserve(0), Outcome::Reserved(0));
        assert_eq!(p.reserve(0), Outcome::Reserved(0));
        assert_eq!(p.reserve(1), Outcome::Exhausted);
        assert_eq!(p.release(0), Outcome::Released);
        assert_eq!(p.reserve(0), Outcome::FailedPrecondition);
        assert_eq!(p.reserve(1), Outcome::Reserved(0));
    }

    #[test]
    fn expired_reservations_are_returned_to_their_holder_and_claimable_by_others() {
        let mut p = Participant::new(1, 2);
        assert_eq!(p.reserve(0), Outcome::Reserved(0));
        assert!(p.expire(0));
        assert_eq!(
            p.reserve(0),
            Outcome::Reserved(0),
            "not swept: same unit, renewed"
        );
        assert_eq!(p.assign(0, 0), Outcome::Assigned, "renewed: assignable");
        assert_eq!(p.release(0), Outcome::Released);
        let mut p = Participant::new(1, 2);
        assert_eq!(p.reserve(0), Outcome::Reserved(0));
        assert!(p.expire(0));
        assert_eq!(p.assign(0, 0), Outcome::FailedPrecondition, "expired");
        assert_eq!(
            p.reserve(1),
            Outcome::Reserved(0),
            "claimed by another order"
        );
        assert_eq!(
            p.assign(0, 0),
            Outcome::FailedPrecondition,
            "held by another"
        );
        assert_eq!(p.assign(1, 0), Outcome::Assigned);
        assert_eq!(p.assign(1, 0), Outcome::Assigned, "repeat succeeds");
        assert!(!p.sweep(), "assigned units are not swept");
        assert_eq!(p.release(1), Outcome::Released);
        assert_eq!(p.units[0], Unit::Free);
    }

    #[test]
    fn completion_frees_only_an_assignment_and_refuses_a_late_reserve() {
        let mut p = Participant::new(1, 2);
        assert_eq!(p.reserve(0), Outcome::Reserved(0));
        p.complete(0);
        assert_eq!(
            p.units[0],
            Unit::Reserved {
                order: 0,
                expired: false
            },
            "not assigned"
        );
        assert!(!p.completed(0));
        assert_eq!(p.assign(0, 0), Outcome::Assigned);
        p.complete(0);
        assert_eq!(p.units[0], Unit::Free);
        assert!(p.completed(0));
        assert_eq!(p.reserve(0), Outcome::FailedPrecondition, "tombstone");
        assert_eq!(
            p.reserve(1),
            Outcome::Reserved(0),
            "the agent serves another order"
        );
    }

    #[test]
    fn unit_names_round_trip() {
        for side in Side::BOTH {
            assert_eq!(unit_index(side, &unit_name(side, 3)), Some(3));
        }
        assert_eq!(unit_index(Side::Store, "agent1"), None);
    }
}
