//! One round of a saga driver, pure: the answers of the calls a round made, stepped through
//! the machine in command order, then the retry deadline, then the next commands.
//!
//! `services/order`'s `Orchestrator::drive` and the model check (`crates/model`) both call
//! [`round`], so the model explores the production round, not a copy of it.

use crate::{Command, Event, Saga};

/// What a round made of the answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The state after every answer (and the deadline, if it applied).
    pub saga: Saga,
    /// The calls the next round makes, each once.
    pub commands: Vec<Command>,
    /// Whether any answer was transient (the driver backs off before the next round).
    pub transient: bool,
    /// Whether the retry deadline turned this round's transient failures into a compensation.
    pub deadline_compensated: bool,
}

/// Steps `saga` through `events` (the answers, in the order the calls were made). When an
/// answer was transient, the saga is not terminal and `deadline_passed` (the reservations'
/// lifetime bounds forward retries), the machine gets [`Event::RetryDeadlinePassed`]; if that
/// changes the phase, its commands replace the round's. Duplicate commands are dropped.
pub fn round(saga: &Saga, events: &[Event], deadline_passed: bool) -> Round {
    let mut saga = saga.clone();
    let mut commands = Vec::new();
    let mut transient = false;
    for event in events {
        transient |= matches!(event, Event::Transient { .. });
        let (next, mut cmds) = saga.step(event);
        saga = next;
        commands.append(&mut cmds);
    }
    let mut deadline_compensated = false;
    if deadline_passed && transient && !saga.phase.is_terminal() {
        let (next, cmds) = saga.step(&Event::RetryDeadlinePassed);
        if next.phase != saga.phase {
            commands = cmds;
            deadline_compensated = true;
        }
        saga = next;
    }
    let mut seen = Vec::with_capacity(commands.len());
    commands.retain(|c| {
        let new = !seen.contains(c);
        if new {
            seen.push(c.clone());
        }
        new
    });
    Round {
        saga,
        commands,
        transient,
        deadline_compensated,
    }
}
