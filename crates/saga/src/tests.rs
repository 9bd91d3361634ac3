//! Exhaustive tests: every state the saga can be persisted in, crossed with every event.

use super::*;
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn legs() -> Vec<Leg> {
    let mut out = Vec::new();
    for state in LegState::ALL {
        match state {
            LegState::Reserved | LegState::Assigned => {
                out.push(Leg {
                    state,
                    unit: Some("u-1".into()),
                });
            }
            _ => {
                out.push(Leg { state, unit: None });
                out.push(Leg {
                    state,
                    unit: Some("u-1".into()),
                });
            }
        }
    }
    out
}

/// The states the machine can persist: what [`reachable_states_are_well_formed`] proves.
fn well_formed(s: &Saga) -> bool {
    let legs = [&s.store, &s.delivery];
    let with_unit = |l: &Leg| l.unit.is_some();
    match s.phase {
        Phase::Reserving => {
            s.reason.is_none()
                && legs.iter().all(|l| match l.state {
                    LegState::Unknown => true,
                    LegState::Reserved => with_unit(l),
                    _ => false,
                })
                && !legs.iter().all(|l| l.state == LegState::Reserved)
        }
        Phase::Assigning => {
            s.reason.is_none()
                && legs.iter().all(|l| {
                    matches!(l.state, LegState::Reserved | LegState::Assigned) && with_unit(l)
                })
                && !legs.iter().all(|l| l.state == LegState::Assigned)
        }
        Phase::Placed => {
            s.reason.is_none()
                && legs
                    .iter()
                    .all(|l| l.state == LegState::Assigned && with_unit(l))
        }
        Phase::Compensating => {
            s.reason.is_some() && !legs.iter().all(|l| l.state == LegState::Released)
        }
        Phase::NotPlaced => {
            s.reason.is_some() && legs.iter().all(|l| l.state == LegState::Released)
        }
    }
}

#[test]
fn reachable_states_are_well_formed() {
    let mut seen = std::collections::HashSet::new();
    let mut frontier = vec![Saga::new()];
    let events = all_events();
    while let Some(s) = frontier.pop() {
        assert!(well_formed(&s), "reachable but not well formed: {s:?}");
        for e in &events {
            let (n, _) = s.step(e);
            if seen.insert(n.clone()) {
                frontier.push(n);
            }
        }
    }
    // Both terminal outcomes and every phase are reachable.
    for phase in [
        Phase::Reserving,
        Phase::Assigning,
        Phase::Placed,
        Phase::Compensating,
        Phase::NotPlaced,
    ] {
        assert!(
            seen.iter().any(|s| s.phase == phase),
            "{phase:?} unreachable"
        );
    }
}

fn all_states() -> Vec<Saga> {
    let phases = [
        Phase::Reserving,
        Phase::Assigning,
        Phase::Placed,
        Phase::Compensating,
        Phase::NotPlaced,
    ];
    let reasons: Vec<Option<Reason>> = std::iter::once(None)
        .chain(Reason::ALL.into_iter().map(Some))
        .collect();
    let mut out = Vec::new();
    for phase in phases {
        for store in legs() {
            for delivery in legs() {
                for &reason in &reasons {
                    for last_transient in [None, Some(Side::Store), Some(Side::Delivery)] {
                        out.push(Saga {
                            phase,
                            store: store.clone(),
                            delivery: delivery.clone(),
                            reason,
                            last_transient,
                        });
                    }
                }
            }
        }
    }
    out.retain(well_formed);
    out
}

fn all_events() -> Vec<Event> {
    let mut out = vec![Event::Resume, Event::RetryDeadlinePassed, Event::ForceFail];
    for side in Side::BOTH {
        out.push(Event::Reserved {
            side,
            unit: "u-2".into(),
        });
        out.push(Event::Assigned { side });
        out.push(Event::Released { side });
        for call in Call::ALL {
            out.push(Event::Transient { side, call });
            for refusal in Refusal::ALL {
                out.push(Event::Refused {
                    side,
                    call,
                    refusal,
                });
            }
        }
    }
    out
}

#[test]
fn every_state_and_event_respects_the_saga_rules() {
    let states = all_states();
    let events = all_events();
    let mut checked = 0usize;
    for s in &states {
        for e in &events {
            let (n, cmds) = s.step(e);
            checked += 1;
            let ctx = || format!("state {s:?}\nevent {e:?}\nnext {n:?}\ncommands {cmds:?}");

            // Terminal states never move and never call anyone.
            if s.phase.is_terminal() {
                assert_eq!(&n, s, "{}", ctx());
                assert!(cmds.is_empty(), "{}", ctx());
                continue;
            }
            // Placed only from Assigning, on an assign ack, with both sides assigned.
            if n.phase == Phase::Placed {
                assert_eq!(s.phase, Phase::Assigning, "{}", ctx());
                assert!(matches!(e, Event::Assigned { .. }), "{}", ctx());
                assert_eq!(n.store.state, LegState::Assigned, "{}", ctx());
                assert_eq!(n.delivery.state, LegState::Assigned, "{}", ctx());
                assert!(
                    n.store.unit.is_some() && n.delivery.unit.is_some(),
                    "{}",
                    ctx()
                );
            }
            // Not placed only once both sides acknowledged a release.
            if n.phase == Phase::NotPlaced {
                assert_eq!(n.store.state, LegState::Released, "{}", ctx());
                assert_eq!(n.delivery.state, LegState::Released, "{}", ctx());
                assert!(n.reason.is_some() || s.reason.is_some(), "{}", ctx());
            }
            // Once compensating, never forward again.
            if s.phase == Phase::Compensating {
                assert!(
                    matches!(n.phase, Phase::Compensating | Phase::NotPlaced),
                    "{}",
                    ctx()
                );
            }
            // Assigning is entered only with both sides reserved.
            if n.phase == Phase::Assigning && s.phase == Phase::Reserving {
                assert_eq!(n.store.state, LegState::Reserved, "{}", ctx());
                assert_eq!(n.delivery.state, LegState::Reserved, "{}", ctx());
            }
            // Entering compensation names a reason and releases every side not yet released.
            if n.phase == Phase::Compensating && s.phase != Phase::Compensating {
                assert!(n.reason.is_some(), "{}", ctx());
                for side in Side::BOTH {
                    if n.leg(side).state != LegState::Released {
                        assert!(cmds.contains(&Command::Release(side)), "{}", ctx());
                    }
                }
            }
            // Each command fits the phase it is issued in.
            for c in &cmds {
                match c {
                    Command::Reserve(side) => {
                        assert_eq!(n.phase, Phase::Reserving, "{}", ctx());
                        assert_eq!(n.leg(*side).state, LegState::Unknown, "{}", ctx());
                    }
                    Command::Assign(side, unit) => {
                        assert_eq!(n.phase, Phase::Assigning, "{}", ctx());
                        assert_eq!(n.leg(*side).state, LegState::Reserved, "{}", ctx());
                        assert_eq!(n.leg(*side).unit.as_ref(), Some(unit), "{}", ctx());
                    }
                    Command::Release(side) => {
                        assert_eq!(n.phase, Phase::Compensating, "{}", ctx());
                        assert_ne!(n.leg(*side).state, LegState::Released, "{}", ctx());
                    }
                }
            }
            // Resume changes nothing and asks for exactly the pending calls; while reserving,
            // it asks both sides again (a reserve renews what a side holds), keeping the units.
            if *e == Event::Resume {
                if s.phase == Phase::Reserving {
                    let mut renewed = s.clone();
                    for side in [Side::Store, Side::Delivery] {
                        if renewed.leg(side).state == LegState::Reserved {
                            renewed.leg_mut(side).state = LegState::Unknown;
                        }
                    }
                    assert_eq!(n, renewed, "{}", ctx());
                    assert_eq!(
                        cmds,
                        vec![
                            Command::Reserve(Side::Store),
                            Command::Reserve(Side::Delivery)
                        ],
                        "{}",
                        ctx()
                    );
                } else {
                    assert_eq!(&n, s, "{}", ctx());
                }
                assert_eq!(cmds, n.pending_commands(), "{}", ctx());
            }
            // A definitive refusal of the call the phase makes always ends in compensation.
            if let Event::Refused {
                side,
                call,
                refusal,
            } = e
            {
                let live = (s.phase == Phase::Reserving && *call == Call::Reserve)
                    || (s.phase == Phase::Assigning && *call == Call::Assign);
                if live {
                    assert_eq!(n.phase, Phase::Compensating, "{}", ctx());
                    assert_eq!(
                        n.reason,
                        Some(Reason::from_refusal(*side, *call, *refusal)),
                        "{}",
                        ctx()
                    );
                } else {
                    assert_eq!(&n, s, "stale refusal must be ignored: {}", ctx());
                }
            }
            // A transient failure of the call the phase makes retries that call, same phase.
            if let Event::Transient { side, call } = e {
                let retried: Vec<Command> = match (s.phase, call) {
                    (Phase::Reserving, Call::Reserve)
                        if s.leg(*side).state == LegState::Unknown =>
                    {
                        vec![Command::Reserve(*side)]
                    }
                    (Phase::Assigning, Call::Assign) => {
                        s.assign_command(*side).into_iter().collect()
                    }
                    (Phase::Compensating, Call::Release)
                        if s.leg(*side).state != LegState::Released =>
                    {
                        vec![Command::Release(*side)]
                    }
                    _ => Vec::new(),
                };
                assert_eq!(cmds, retried, "{}", ctx());
                assert_eq!(n.phase, s.phase, "{}", ctx());
            }
            // The retry deadline and force-fail stop forward progress.
            if matches!(e, Event::RetryDeadlinePassed | Event::ForceFail)
                && matches!(s.phase, Phase::Reserving | Phase::Assigning)
            {
                assert_eq!(n.phase, Phase::Compensating, "{}", ctx());
            }
        }
    }
    assert!(checked > 10_000, "only {checked} pairs checked");
}

/// Drives a saga against scripted participants until no command is left.
fn run(mut saga: Saga, mut answer: impl FnMut(&Command) -> Event) -> (Saga, Vec<Command>) {
    let mut log = Vec::new();
    let (s, mut pending) = saga.step(&Event::Resume);
    saga = s;
    let mut guard = 0;
    while !pending.is_empty() {
        guard += 1;
        assert!(guard < 100, "saga did not settle: {saga:?}");
        let events: Vec<Event> = pending.iter().map(&mut answer).collect();
        log.append(&mut pending);
        for e in events {
            let (s, mut cmds) = saga.step(&e);
            saga = s;
            pending.append(&mut cmds);
        }
    }
    (saga, log)
}

fn ok(c: &Command) -> Event {
    match c {
        Command::Reserve(side) => Event::Reserved {
            side: *side,
            unit: format!("{}-unit", side.as_str()),
        },
        Command::Assign(side, _) => Event::Assigned { side: *side },
        Command::Release(side) => Event::Released { side: *side },
    }
}

#[test]
fn happy_path_reserves_then_assigns_both() {
    let (saga, log) = run(Saga::new(), ok);
    assert_eq!(saga.phase, Phase::Placed);
    assert_eq!(
        log,
        vec![
            Command::Reserve(Side::Store),
            Command::Reserve(Side::Delivery),
            Command::Assign(Side::Store, "store-unit".into()),
            Command::Assign(Side::Delivery, "delivery-unit".into()),
        ]
    );
}

#[test]
fn out_of_stock_releases_the_agent_and_is_not_placed() {
    let (saga, log) = run(Saga::new(), |c| match c {
        Command::Reserve(Side::Store) => Event::Refused {
            side: Side::Store,
            call: Call::Reserve,
            refusal: Refusal::Exhausted,
        },
        other => ok(other),
    });
    assert_eq!(saga.phase, Phase::NotPlaced);
    assert_eq!(saga.reason, Some(Reason::OutOfStock));
    assert!(log.contains(&Command::Release(Side::Delivery)));
    assert!(!log.iter().any(|c| matches!(c, Command::Assign(..))));
}

#[test]
fn expired_assign_undoes_the_other_assignment() {
    let (saga, log) = run(Saga::new(), |c| match c {
        Command::Assign(Side::Delivery, _) => Event::Refused {
            side: Side::Delivery,
            call: Call::Assign,
            refusal: Refusal::NotHeld,
        },
        other => ok(other),
    });
    assert_eq!(saga.phase, Phase::NotPlaced);
    assert_eq!(saga.reason, Some(Reason::ReservationExpired));
    assert!(log.contains(&Command::Release(Side::Store)));
    assert!(log.contains(&Command::Release(Side::Delivery)));
}

#[test]
fn transient_assign_failures_are_retried_until_success() {
    let mut failures = 3;
    let (saga, log) = run(Saga::new(), |c| match c {
        Command::Assign(Side::Store, _) if failures > 0 => {
            failures -= 1;
            Event::Transient {
                side: Side::Store,
                call: Call::Assign,
            }
        }
        other => ok(other),
    });
    assert_eq!(saga.phase, Phase::Placed);
    let store_assigns = log
        .iter()
        .filter(|c| matches!(c, Command::Assign(Side::Store, _)))
        .count();
    assert_eq!(store_assigns, 4);
}

#[test]
fn deadline_during_assign_blames_the_failing_side() {
    let saga = Saga::new();
    let (saga, _) = saga.step(&Event::Reserved {
        side: Side::Store,
        unit: "p".into(),
    });
    let (saga, _) = saga.step(&Event::Reserved {
        side: Side::Delivery,
        unit: "a".into(),
    });
    let (saga, _) = saga.step(&Event::Assigned {
        side: Side::Delivery,
    });
    let (saga, _) = saga.step(&Event::Transient {
        side: Side::Store,
        call: Call::Assign,
    });
    let (saga, cmds) = saga.step(&Event::RetryDeadlinePassed);
    assert_eq!(saga.phase, Phase::Compensating);
    assert_eq!(saga.reason, Some(Reason::StoreUnavailable));
    assert_eq!(
        cmds,
        vec![
            Command::Release(Side::Store),
            Command::Release(Side::Delivery)
        ]
    );
}

#[test]
fn a_resumed_saga_continues_where_it_stopped() {
    let mut saga = Saga::new();
    saga.store = Leg {
        state: LegState::Assigned,
        unit: Some("p".into()),
    };
    saga.delivery = Leg {
        state: LegState::Reserved,
        unit: Some("a".into()),
    };
    saga.phase = Phase::Assigning;
    assert_eq!(
        saga.pending_commands(),
        vec![Command::Assign(Side::Delivery, "a".into())]
    );
    let (saga, _) = run(saga, ok);
    assert_eq!(saga.phase, Phase::Placed);
}

#[test]
fn a_saga_resumed_while_reserving_renews_what_it_reserved() {
    // A driver crashed after the store reserved and before delivery answered. The next driver
    // reserves both again: the store's answer renews the packet's reservation (or replaces a
    // packet that was lost) before anything is assigned.
    let (saga, _) = Saga::new().step(&Event::Reserved {
        side: Side::Store,
        unit: "p-old".into(),
    });
    let (saga, cmds) = saga.step(&Event::Resume);
    assert_eq!(
        cmds,
        vec![
            Command::Reserve(Side::Store),
            Command::Reserve(Side::Delivery)
        ]
    );
    assert_eq!(
        saga.store.unit.as_deref(),
        Some("p-old"),
        "kept for the audit trail"
    );
    let (saga, log) = run(saga, |c| match c {
        Command::Reserve(Side::Store) => Event::Reserved {
            side: Side::Store,
            unit: "p-new".into(),
        },
        other => ok(other),
    });
    assert_eq!(saga.phase, Phase::Placed);
    assert!(log.contains(&Command::Assign(Side::Store, "p-new".into())));
    assert!(!log.contains(&Command::Assign(Side::Store, "p-old".into())));
}

#[test]
fn names_round_trip() {
    for p in [
        Phase::Reserving,
        Phase::Assigning,
        Phase::Placed,
        Phase::Compensating,
        Phase::NotPlaced,
    ] {
        assert_eq!(Phase::parse(p.as_str()), Some(p));
    }
    for l in LegState::ALL {
        assert_eq!(LegState::parse(l.as_str()), Some(l));
    }
    for r in Reason::ALL {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
    }
    assert_eq!(Phase::parse("nope"), None);
}

#[test]
fn the_status_contract_is_as_documented() {
    use Verdict::*;
    let all = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];
    let reasons = [
        None,
        Some("POOL_EXHAUSTED"),
        Some("POOL_NOT_FOUND"),
        Some("NOT_HELD"),
        Some("INVALID_REQUEST"),
        Some("SOMETHING_ELSE"),
    ];
    for code in all {
        for reason in reasons {
            // Release never gives up.
            assert_eq!(
                classify_code(Call::Release, code, reason),
                Transient,
                "{code:?} {reason:?}"
            );
            for call in [Call::Reserve, Call::Assign] {
                let expected = match (code, reason) {
                    (Code::ResourceExhausted, Some("POOL_EXHAUSTED")) => {
                        Definitive(Refusal::Exhausted)
                    }
                    (Code::NotFound, Some("POOL_NOT_FOUND")) => Definitive(Refusal::UnknownPool),
                    (Code::FailedPrecondition, Some("NOT_HELD")) => Definitive(Refusal::NotHeld),
                    (Code::InvalidArgument, Some("INVALID_REQUEST")) => {
                        Definitive(Refusal::Rejected)
                    }
                    _ => Transient,
                };
                assert_eq!(
                    classify_code(call, code, reason),
                    expected,
                    "{call:?} {code:?} {reason:?}"
                );
            }
        }
    }
    // The transport failures the design names are retried.
    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Unknown,
        Code::Aborted,
    ] {
        assert_eq!(classify_code(Call::Assign, code, None), Transient);
    }
}

#[test]
fn a_misroute_or_a_proxys_bare_refusal_is_never_definitive() {
    // What a URL pointing at the wrong listener, or a proxy answering 404/403/401 or a bad
    // request of its own, turns into: codes without our ErrorInfo. They delay an order (it is
    // retried until the retry deadline); they never refuse it.
    for status in [
        Status::unimplemented("unknown service reservation.v1.ReservationService"),
        Status::permission_denied("forbidden"),
        Status::unauthenticated("no credentials"),
        Status::invalid_argument("grpc-timeout header malformed"),
        Status::already_exists("x"),
        Status::out_of_range("x"),
    ] {
        for call in [Call::Reserve, Call::Assign] {
            assert_eq!(
                classify(call, &status),
                Verdict::Transient,
                "{call:?} {status:?}"
            );
        }
    }
}

#[test]
fn a_refusal_round_trips_through_its_status_and_overload_never_reads_as_one() {
    for refusal in Refusal::ALL {
        let status = refusal.status("no");
        assert_eq!(status.code(), refusal.code());
        assert_eq!(
            classify(Call::Reserve, &status),
            Verdict::Definitive(refusal),
            "{refusal:?}"
        );
    }
    // What tonic's own load shedding and a message-size limit answer: no ErrorInfo.
    let shed = Status::resource_exhausted("Too many active requests for the connection");
    assert_eq!(classify(Call::Reserve, &shed), Verdict::Transient);
    // The same reason from another domain is not ours.
    let foreign = Status::with_error_details(
        Code::ResourceExhausted,
        "quota",
        tonic_types::ErrorDetails::with_error_info("POOL_EXHAUSTED", "example.com", []),
    );
    assert_eq!(classify(Call::Reserve, &foreign), Verdict::Transient);
    // Busy is transient everywhere and carries its hint.
    let busy = busy("busy", std::time::Duration::from_millis(250));
    assert_eq!(busy.code(), Code::Unavailable);
    assert_eq!(classify(Call::Assign, &busy), Verdict::Transient);
    assert!(client_may_retry(busy.code()));
    assert_eq!(
        retry_hint(&busy),
        Some(std::time::Duration::from_millis(250))
    );
    assert_eq!(retry_hint(&shed), None);
    assert_eq!(
        client_retry(&busy),
        ClientRetry::Busy(std::time::Duration::from_millis(250))
    );
    assert_eq!(
        client_retry(&Status::unavailable("down")),
        ClientRetry::Backoff
    );
    assert_eq!(
        client_retry(&Status::invalid_argument("bad")),
        ClientRetry::Stop
    );
    for refusal in Refusal::ALL {
        assert_eq!(
            Refusal::of(&refusal.status("no")),
            Some(refusal),
            "{refusal:?}"
        );
    }
    assert_eq!(Refusal::of(&foreign), None);
}
