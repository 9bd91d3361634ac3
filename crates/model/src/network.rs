//! Requests in flight from the drivers to the participants.
//!
//! The network is a multiset of requests (a sorted `Vec`, so that equal networks are equal
//! states). Any request may be delivered next (reordering), lost, duplicated, or outlive its
//! caller's patience (all budgeted faults). A participant's answer goes straight into the
//! waiting call's slot, or is lost (a fault): an answer travelling back needs no message of its
//! own, because the driver only acts on its answers in a later, separate step (`Step`), and
//! everything that could happen while an answer travels can happen before that step.

use std::cmp::Ordering;

use order_saga_saga::Side;

/// Which call of which driver a request's answer goes to. A driver is named by its order and
/// its epoch: every claim increments the epoch, so no two drivers ever share the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyTo {
    /// The order.
    pub order: u8,
    /// The driver's epoch.
    pub epoch: u8,
    /// Which of the driver's concurrent calls.
    pub slot: u8,
}

/// A participant call as it travels (the unit of an assign by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `Reserve(order)`.
    Reserve,
    /// `Assign(order, unit)`.
    Assign(u8),
    /// `Release(order)`.
    Release,
}

/// A request in flight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Msg {
    /// The participant.
    pub side: Side,
    /// The order the call is for.
    pub order: u8,
    /// The call.
    pub op: Op,
    /// Where the answer goes; `None` when nobody waits for it any more (the caller timed out
    /// or is gone) or the request is a duplicate.
    pub reply_to: Option<ReplyTo>,
}

impl Msg {
    /// The same request with nobody waiting for its answer.
    pub fn orphan(&self) -> Msg {
        Msg {
            reply_to: None,
            ..self.clone()
        }
    }

    fn sort_key(&self) -> (u8, u8, Op, Option<ReplyTo>) {
        (side_index(self.side), self.order, self.op, self.reply_to)
    }
}

impl PartialOrd for Msg {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Msg {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

/// `Side` as a number, for ordering.
pub fn side_index(side: Side) -> u8 {
    match side {
        Side::Store => 0,
        Side::Delivery => 1,
    }
}

/// Adds a request to the multiset.
pub fn send(net: &mut Vec<Msg>, msg: Msg) {
    let at = net.partition_point(|m| m < &msg);
    net.insert(at, msg);
}

/// Removes one copy of `msg`; `false` if none is in flight.
pub fn take(net: &mut Vec<Msg>, msg: &Msg) -> bool {
    match net.binary_search(msg) {
        Ok(i) => {
            net.remove(i);
            true
        }
        Err(_) => false,
    }
}
