//! The properties checked at every reachable state: docs/design.md's invariants 1-5, the answer
//! invariant, and `sometimes` examples that catch a vacuous model.

use order_saga_saga::{LegState, Phase, Reason, Side};
use stateright::{Model, Property};

use crate::{
    config::ModelConfig,
    model::{SagaModel, State},
    orders::OrderRow,
    participant::{Unit, unit_index},
};

/// Invariant 1: no unit is reserved or assigned to two orders at once.
pub const ONE_HOLDER_PER_UNIT: &str = "no unit is held by two orders";
/// Invariant 2: every stored PLACED order has its packet and agent assigned to it (its agent
/// until its delivery is completed).
pub const PLACED_IS_ASSIGNED: &str = "every stored PLACED order holds its packet and agent";
/// Invariant 6: no admin action frees a unit an answered PLACED relies on: a completion frees
/// an agent only of an order stored PLACED.
pub const COMPLETION_ONLY_WHEN_PLACED: &str = "a delivery is completed only for a PLACED order";
/// Invariant 3, as liveness: once nothing more can happen, every order is terminal and no unit
/// is held by an order that is not PLACED.
pub const QUIESCENT_IS_CLEAN: &str = "once quiet, every order is terminal and nothing is held";
/// Invariant 4: per pool, available + reserved + assigned = stock.
pub const UNITS_CONSERVED: &str = "units are conserved";
/// Invariant 5: one idempotency key, one order, one answer.
pub const ONE_ORDER_ONE_ANSWER: &str = "one key yields one order and one answer";
/// An answer of PLACED is stored PLACED, with both units assigned and both participants
/// agreeing.
pub const PLACED_ANSWER_IS_TRUE: &str = "an answer of PLACED is stored PLACED and held";
/// Example: an order can be placed.
pub const CAN_PLACE: &str = "an order can be PLACED";
/// Example: an order can end NOT_PLACED.
pub const CAN_NOT_PLACE: &str = "an order can be NOT_PLACED";
/// Example: a client can be told PLACED.
pub const CAN_ANSWER_PLACED: &str = "a client can be told PLACED";
/// Example (only with completions): a delivery is completed.
pub const CAN_COMPLETE: &str = "a delivery can be completed";
/// Example (only when orders outnumber units): an order loses the race for the last unit.
pub const CAN_SELL_OUT: &str = "an order can be refused for lack of units";

/// Every property of a configuration.
pub fn all(config: &ModelConfig) -> Vec<Property<SagaModel>> {
    let mut properties = vec![
        Property::always(ONE_HOLDER_PER_UNIT, one_holder_per_unit),
        Property::always(PLACED_IS_ASSIGNED, placed_is_assigned),
        Property::always(QUIESCENT_IS_CLEAN, quiescent_is_clean),
        Property::always(UNITS_CONSERVED, units_conserved),
        Property::always(ONE_ORDER_ONE_ANSWER, one_order_one_answer),
        Property::always(PLACED_ANSWER_IS_TRUE, placed_answer_is_true),
        Property::always(COMPLETION_ONLY_WHEN_PLACED, completion_only_when_placed),
        Property::sometimes(CAN_PLACE, |_, s: &State| {
            s.orders.iter().any(|o| o.saga.phase == Phase::Placed)
        }),
        Property::sometimes(CAN_NOT_PLACE, |_, s: &State| {
            s.orders.iter().any(|o| o.saga.phase == Phase::NotPlaced)
        }),
        Property::sometimes(CAN_ANSWER_PLACED, |_, s: &State| {
            s.clients.iter().any(|c| c.told_placed)
        }),
    ];
    if config.budget.completions > 0 {
        properties.push(Property::sometimes(CAN_COMPLETE, |_, s: &State| {
            (0u8..).zip(&s.orders).any(|(o, _)| s.delivery.completed(o))
        }));
    }
    if config.clients > config.packets.min(config.agents) {
        properties.push(Property::sometimes(CAN_SELL_OUT, |_, s: &State| {
            s.orders.iter().any(|o| {
                o.saga.phase == Phase::NotPlaced
                    && matches!(o.saga.reason, Some(Reason::OutOfStock | Reason::NoAgent))
            })
        }));
    }
    properties
}

/// The participant holds `row`'s unit of `side` assigned to `order`, as the saga says, or the
/// order's delivery was completed once it was placed (which freed the agent).
fn holds_assigned(s: &State, order: u8, row: &OrderRow, side: Side) -> bool {
    let leg = row.saga.leg(side);
    let unit = leg.unit.as_deref().and_then(|u| unit_index(side, u));
    leg.state == LegState::Assigned
        && ((side == Side::Delivery && row.delivered)
            || unit.is_some_and(|u| {
                s.participant(side).units.get(usize::from(u)) == Some(&Unit::Assigned { order })
            }))
}

fn placed_and_held(s: &State, order: u8) -> bool {
    s.orders.get(usize::from(order)).is_some_and(|row| {
        row.saga.phase == Phase::Placed
            && Side::BOTH
                .into_iter()
                .all(|side| holds_assigned(s, order, row, side))
    })
}

fn order_ids(s: &State) -> impl Iterator<Item = u8> {
    0..u8::try_from(s.orders.len()).unwrap_or(u8::MAX)
}

/// At each participant an order holds at most one unit (the engine's unique index on
/// `units.order_id`; a unit row names one holder by construction), and no two stored PLACED
/// orders claim the same unit.
fn one_holder_per_unit(_: &SagaModel, s: &State) -> bool {
    Side::BOTH.into_iter().all(|side| {
        let units = &s.participant(side).units;
        let per_order =
            order_ids(s).all(|o| units.iter().filter(|u| u.holder() == Some(o)).count() <= 1);
        // A placed order whose delivery was completed no longer holds its agent, which may now
        // serve another order.
        let placed_units: Vec<&str> = s
            .orders
            .iter()
            .filter(|o| o.saga.phase == Phase::Placed && !(side == Side::Delivery && o.delivered))
            .filter_map(|o| o.saga.leg(side).unit.as_deref())
            .collect();
        let distinct = placed_units
            .iter()
            .enumerate()
            .all(|(i, u)| !placed_units[..i].contains(u));
        per_order && distinct
    })
}

fn placed_is_assigned(_: &SagaModel, s: &State) -> bool {
    order_ids(s).all(|o| {
        s.orders
            .get(usize::from(o))
            .is_none_or(|row| row.saga.phase != Phase::Placed || placed_and_held(s, o))
    })
}

/// Checked at every state, but it only bites where no action is enabled: a terminal state of
/// the search. Every fault is budgeted and every other action makes progress, so every
/// behaviour ends in such a state (see the crate docs), and this says how it must end.
fn quiescent_is_clean(model: &SagaModel, s: &State) -> bool {
    // A request in flight can be delivered, a driver can step or is waiting for a request:
    // not quiet. Only the remaining states need the full list of enabled actions.
    if !s.net.is_empty() || !s.drivers.is_empty() {
        return true;
    }
    let mut actions = Vec::new();
    model.actions(s, &mut actions);
    if !actions.is_empty() {
        return true;
    }
    let every_order_terminal = !s.stalled
        && s.clients.iter().all(|c| c.placed)
        && s.orders.iter().all(|o| o.saga.phase.is_terminal());
    let nothing_stray = Side::BOTH.into_iter().all(|side| {
        s.participant(side).units.iter().all(|u| {
            u.holder().is_none_or(|o| {
                s.orders
                    .get(usize::from(o))
                    .is_some_and(|row| row.saga.phase == Phase::Placed)
            })
        })
    });
    every_order_terminal && nothing_stray
}

/// The participant's pool counts (an expired reservation counts as available, as the engine's
/// `pool_info` does) add up to the stock.
fn units_conserved(model: &SagaModel, s: &State) -> bool {
    let stock = |side| match side {
        Side::Store => model.config.packets,
        Side::Delivery => model.config.agents,
    };
    Side::BOTH.into_iter().all(|side| {
        let units = &s.participant(side).units;
        let count = |f: fn(&Unit) -> bool| units.iter().filter(|u| f(u)).count();
        let available = count(|u| matches!(u, Unit::Free | Unit::Reserved { expired: true, .. }));
        let reserved = count(|u| matches!(u, Unit::Reserved { expired: false, .. }));
        let assigned = count(|u| matches!(u, Unit::Assigned { .. }));
        available + reserved + assigned == usize::from(stock(side))
    })
}

fn one_order_one_answer(_: &SagaModel, s: &State) -> bool {
    let one_order = (0u8..)
        .zip(&s.clients)
        .all(|(key, _)| s.orders.iter().filter(|o| o.key == key).count() <= 1);
    let one_answer = s
        .clients
        .iter()
        .all(|c| !(c.told_placed && c.told_not_placed));
    one_order && one_answer
}

fn placed_answer_is_true(_: &SagaModel, s: &State) -> bool {
    (0u8..).zip(&s.clients).all(|(key, c)| {
        !c.told_placed || s.order_of_key(key).is_some_and(|o| placed_and_held(s, o))
    })
}

/// Every order whose agent was freed by a completion was stored PLACED when it happened: no
/// operator freed an agent that a PLACED answer was still to rely on.
fn completion_only_when_placed(_: &SagaModel, s: &State) -> bool {
    (0u8..)
        .zip(&s.orders)
        .all(|(order, row)| !s.participant(Side::Delivery).completed(order) || row.delivered)
}
