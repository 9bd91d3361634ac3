//! An exhaustive model check of the order saga with [stateright]: the production state machine
//! ([`order_saga_saga::Saga::step`]) driven by a model of everything around it, checked against
//! docs/design.md's invariants under crashes, lost, duplicated and reordered messages, expiring leases
//! and reservations, client retries and operator actions.
//!
//! # What is real and what is modelled
//!
//! * **Real**: every orchestrator decision is `Saga::step` (with `Event`, `Command`, `Phase`,
//!   `LegState`), and every participant status is classified by the production contract
//!   ([`order_saga_saga::classify`]). There is no second copy of the saga logic.
//! * **Modelled** ([`model`]): the drive loop of `services/order/src/orchestrator.rs` (one
//!   round = the concurrent calls of one step; all answers are stepped in command order, the
//!   retry deadline may pass after a transient failure, the state is persisted with the fenced
//!   write **before** the next calls are sent, compensation may give up and leave the releases to
//!   recovery); the orders table ([`orders`]: saga, owner, epoch, lease); `PlaceOrder`
//!   (insert-or-find on the idempotency key, wait for a running saga, take it over when its lease
//!   ran out); the recovery loop; the operator's re-drive and force-fail; the participants
//!   ([`participant`], the engine of `crates/reservation/src/engine.rs`); the network
//!   ([`network`]).
//!
//! # Abstractions
//!
//! * **Time** is a set of nondeterministic events: a lease runs out, a reservation expires, the
//!   retry deadline passes, compensation runs out of budget. Clocks and durations do not exist.
//! * **Atomic steps**: each database statement is one step (insert-or-find, a fenced write, a
//!   claim, a reserve / assign / release / sweep). A driver's "persist, then send the next calls"
//!   is one step: sending only puts messages in flight, so a crash right after it is the same as
//!   a crash between the two with the requests lost (the drop budget covers lost requests).
//! * **Identities**: orders, clients (one idempotency key each), instances and units are small
//!   integers; unit ids are `pkt<n>` / `agent<n>`. A driver is named by (order, epoch): every
//!   claim increments the epoch, so the pair is unique; in-flight answers are routed by it.
//! * **Network**: a multiset of messages. Any message may be delivered next, so reordering is
//!   free. A lost message (request or response) or a call that times out while its request is
//!   still in flight ends the call `UNAVAILABLE` / `DEADLINE_EXCEEDED`; a timed-out or
//!   duplicated request may still run at the participant later, its answer going nowhere.
//!   Participants do not crash: a participant crash is a lost request or a lost response.
//! * **Crashes** restart the instance at once under the same name: the instance's drivers and
//!   waiting requests vanish, their requests stay in flight.
//! * **Leases**: only claims read a lease, so its expiry is decided at the claim: a lease runs
//!   out for free when its holder (the driver of the current epoch) is gone (time passes);
//!   while that driver is alive it takes a `lease_expiries` fault (a pause).
//! * **Clients** place once and may retry (budgeted) whenever none of their requests is still
//!   being handled (after a lost answer or a crashed instance); a client's own deadline while a
//!   driver is still running is not modelled.
//! * **Operator** requests have no waiting client; a refused operator driver simply stops.
//!
//! # Properties ([`properties`])
//!
//! docs/design.md's invariants 1 (one holder per unit), 2 (a stored PLACED order holds both units),
//! 4 (conservation), 5 (one key: one order, one answer), the answer invariant (an answer of
//! PLACED is stored PLACED and held), and invariant 3 as liveness: *once nothing more can
//! happen, every order is terminal and nothing is held by an order that is not PLACED*.
//!
//! Liveness is checked that way, as an `always` property that only bites where no action is
//! enabled, rather than with `Property::eventually`: stateright evaluates `eventually` only on
//! paths that end in a state without successors, and its BFS does not revisit a state reached a
//! second time, so a path joining a known state is never judged (a false negative). The
//! formulation used here is exact as long as every behaviour ends, which the model guarantees:
//! every fault spends a budget, and every other action makes progress (delivers or drops a
//! request, advances a saga or a unit, or claims a saga, which increments its epoch for good).
//! A test walks the state graph of smaller configurations to confirm that it has no cycle.
//!
//! `sometimes` properties (an order can be placed, can end not placed, a client can be told
//! placed, and an order can sell out where orders outnumber units) catch a vacuous model.
//!
//! # The fencing switch
//!
//! [`ModelConfig::fence_on_epoch`] `= false` models the old protocol (writes fenced on the owner
//! name only, terminal rows rewritable). The checker then finds the two-driver counterexample:
//! an operator force-fail taken over by the same instance starts a second driver, the first one
//! still writes PLACED and answers it, and the second one releases both units.
//!
//! # Not covered
//!
//! Database failures (`UNAVAILABLE` from the order database), `ABORTED` from a participant's
//! lost claim race, unknown foods or zones, more than one unit per pool per order, backoff
//! timing, the client's deadline while its saga runs, request validation, and the admin and
//! read APIs beyond re-drive and force-fail.

pub mod config;
pub mod model;
pub mod network;
pub mod orders;
pub mod participant;
pub mod properties;

use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, Model};

pub use config::{Budgets, ModelConfig};
pub use model::{Action, SagaModel, State};

/// The verdict on one property.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The property.
    pub name: &'static str,
    /// `Always` (safety), `Sometimes` (an example must exist) or `Eventually`.
    pub expectation: Expectation,
    /// Whether the property holds (an `always` with no counterexample, a `sometimes` with an
    /// example).
    pub holds: bool,
    /// The discovery, one step per line: the counterexample of a failed `always`, the example
    /// of a `sometimes`; empty when there is none.
    pub trace: Vec<String>,
}

/// What one exhaustive check found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Distinct states explored.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub total_states: usize,
    /// Length of the longest behaviour explored.
    pub max_depth: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// One verdict per property.
    pub verdicts: Vec<Verdict>,
}

impl Report {
    /// True when every `always` property holds (no counterexample), whatever the examples.
    pub fn safe(&self) -> bool {
        self.verdicts
            .iter()
            .all(|v| v.holds || v.expectation == Expectation::Sometimes)
    }

    /// True when every property holds: every `always` and every `sometimes`.
    pub fn all_hold(&self) -> bool {
        self.verdicts.iter().all(|v| v.holds)
    }

    /// The verdict on `name`.
    pub fn verdict(&self, name: &str) -> Option<&Verdict> {
        self.verdicts.iter().find(|v| v.name == name)
    }
}

/// Explores every state of `config` breadth-first on `threads` threads and judges every
/// property. Breadth-first search makes every counterexample a shortest one.
pub fn check(config: ModelConfig, threads: usize) -> Report {
    let started = Instant::now();
    let model = SagaModel::new(config);
    let checker = model
        .clone()
        .checker()
        .threads(threads.max(1))
        .spawn_bfs()
        .join();
    let elapsed = started.elapsed();
    let mut discoveries = checker.discoveries();
    let verdicts = model
        .properties()
        .into_iter()
        .map(|p| {
            let path = discoveries.remove(p.name);
            let holds = match p.expectation {
                Expectation::Sometimes => path.is_some(),
                Expectation::Always | Expectation::Eventually => path.is_none(),
            };
            // The checker keeps the last path it saw for a property; cut it at the first
            // state that decides the property, so the trace ends where the problem starts.
            let trace = path
                .map(|path| {
                    let mut steps = path.into_vec();
                    let decisive = |s: &State| match p.expectation {
                        Expectation::Sometimes => (p.condition)(&model, s),
                        Expectation::Always => !(p.condition)(&model, s),
                        // The whole path to its end is the counterexample.
                        Expectation::Eventually => false,
                    };
                    if let Some(first) = steps.iter().position(|(s, _)| decisive(s)) {
                        steps.truncate(first + 1);
                    }
                    trace(&model, steps)
                })
                .unwrap_or_default();
            Verdict {
                name: p.name,
                expectation: p.expectation,
                holds,
                trace,
            }
        })
        .collect();
    Report {
        unique_states: checker.unique_state_count(),
        total_states: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        verdicts,
    }
}

/// A discovery path, readable: each action on its own line, followed by the state it led to.
fn trace(model: &SagaModel, path: Vec<(State, Option<Action>)>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut steps = path.into_iter().peekable();
    while let Some((_, action)) = steps.next() {
        let (Some(action), Some((after, _))) = (action, steps.peek()) else {
            continue;
        };
        lines.push(format!(
            "{:>3}. {}",
            lines.len() / 2 + 1,
            model.format_action(&action)
        ));
        lines.push(format!("       {}", after.brief()));
    }
    lines
}

#[cfg(test)]
mod tests;
