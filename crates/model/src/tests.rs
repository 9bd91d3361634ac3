//! The checks `cargo test` runs: the small bound holds, the broken fence is caught, and the
//! state graph has no cycle (which makes the quiescence property a sound liveness check).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
};

use stateright::Model;

use super::*;
use crate::properties::{
    COMPLETION_ONLY_WHEN_PLACED, ONE_HOLDER_PER_UNIT, PLACED_ANSWER_IS_TRUE, PLACED_IS_ASSIGNED,
};

fn print(report: &Report) {
    println!(
        "{} unique states, depth {}, {:?}",
        report.unique_states, report.max_depth, report.elapsed
    );
    for v in &report.verdicts {
        println!("{:>5} {:?} {}", v.holds, v.expectation, v.name);
        if !v.holds || v.expectation != Expectation::Sometimes {
            for line in &v.trace {
                println!("      {line}");
            }
        }
    }
}

#[test]
fn the_small_bound_satisfies_every_property() {
    let report = check(ModelConfig::small(), 2);
    print(&report);
    for v in &report.verdicts {
        assert!(v.holds, "{} does not hold", v.name);
    }
}

#[test]
fn one_order_survives_crashes_lost_leases_and_a_force_fail() {
    let report = check(ModelConfig::takeovers(), 2);
    print(&report);
    assert!(report.all_hold(), "{report:?}");
}

#[test]
fn fencing_on_the_owner_name_alone_is_caught() {
    let broken = check(ModelConfig::fencing_demo().with_epoch_fence(false), 1);
    print(&broken);
    let v = broken
        .verdict(PLACED_ANSWER_IS_TRUE)
        .expect("the property exists");
    assert!(!v.holds, "the checker must find the stale PLACED answer");
    assert!(
        v.trace.iter().any(|l| l.contains("ForceFailOrder")),
        "{v:?}"
    );
    assert!(
        !broken
            .verdict(PLACED_IS_ASSIGNED)
            .expect("the property exists")
            .holds
    );

    let fixed = check(ModelConfig::fencing_demo(), 1);
    assert!(fixed.all_hold(), "{fixed:?}");
}

#[test]
fn deliveries_completed_at_any_moment_keep_every_placed_answer_true() {
    let report = check(ModelConfig::completions(), 2);
    print(&report);
    assert!(report.all_hold(), "{report:?}");
}

#[test]
fn completing_a_delivery_whose_order_is_not_placed_is_caught() {
    // The old rule: delivery's admin API freed any assigned agent. With one agent and two
    // orders, an operator completing the first order's delivery while its store assign is
    // still to come lets the second order take the agent; both are answered PLACED.
    let broken = check(ModelConfig::completions().with_completion_check(false), 1);
    print(&broken);
    for property in [
        COMPLETION_ONLY_WHEN_PLACED,
        PLACED_ANSWER_IS_TRUE,
        ONE_HOLDER_PER_UNIT,
    ] {
        let v = broken.verdict(property).expect("the property exists");
        assert!(
            !v.holds,
            "the checker must catch the early completion: {property}"
        );
        assert!(
            v.trace.iter().any(|l| l.contains("CompleteDelivery")),
            "{v:?}"
        );
    }
}

#[test]
fn a_second_process_with_the_same_instance_id_cannot_drive_the_same_saga() {
    let mut config = ModelConfig::fencing_demo();
    config.instances = 2;
    config.shared_instance_id = true;
    config.budget.force_fails = 0;
    config.budget.lease_expiries = 1;
    let fixed = check(config.clone(), 1);
    print(&fixed);
    assert!(fixed.safe(), "no counterexample with the epoch fence");
    let broken = check(config.with_epoch_fence(false), 1);
    print(&broken);
    assert!(
        !broken.safe(),
        "the stale driver of the twin must be caught"
    );
}

fn fingerprint(state: &State) -> u64 {
    let mut h = DefaultHasher::new();
    state.hash(&mut h);
    h.finish()
}

/// Depth-first search that fails on a back edge (a cycle); returns the number of states.
fn assert_acyclic(model: &SagaModel) -> usize {
    #[derive(PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    let mut marks: HashMap<u64, Mark> = HashMap::new();
    for init in model.init_states() {
        marks.insert(fingerprint(&init), Mark::OnPath);
        let mut path = vec![(fingerprint(&init), model.next_states(&init))];
        while let Some((fp, successors)) = path.last_mut() {
            let Some(next) = successors.pop() else {
                marks.insert(*fp, Mark::Done);
                path.pop();
                continue;
            };
            let next_fp = fingerprint(&next);
            match marks.get(&next_fp) {
                Some(Mark::OnPath) => panic!("cycle through {}", next.brief()),
                Some(Mark::Done) => {}
                None => {
                    marks.insert(next_fp, Mark::OnPath);
                    let successors = model.next_states(&next);
                    path.push((next_fp, successors));
                }
            }
        }
    }
    marks.len()
}

#[test]
fn every_behaviour_ends() {
    // One fault kind at a time (each kind's actions must make progress or spend a budget),
    // then the combination `make test` checks.
    let kinds: [fn(&mut Budgets); 9] = [
        |b| b.crashes = 1,
        |b| b.lease_expiries = 1,
        |b| b.drops = 1,
        |b| b.duplicates = 1,
        |b| b.late_requests = 1,
        |b| b.reservation_expiries = 1,
        |b| b.client_retries = 1,
        |b| b.redrives = 1,
        |b| b.force_fails = 1,
    ];
    for (i, kind) in kinds.iter().enumerate() {
        let mut config = ModelConfig::small();
        config.clients = 1;
        config.budget = Budgets::NONE;
        kind(&mut config.budget);
        let states = assert_acyclic(&SagaModel::new(config));
        println!("fault kind {i}: {states} states, no cycle");
    }
    let states = assert_acyclic(&SagaModel::new(ModelConfig::takeovers()));
    println!("takeovers: {states} states, no cycle");
}
