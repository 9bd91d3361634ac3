//! The system state, the actions that change it, and the [`stateright::Model`] tying them
//! together. Every orchestrator decision is [`Saga::step`]; everything around it (the orders
//! table, drivers, participants, network, clients, operator, faults) is modelled here.

use std::fmt;

use order_saga_saga::{Call, Command, Event, Phase, Saga, Side, Verdict, classify, round};
use stateright::{Model, Property};

use crate::{
    config::{Budgets, ModelConfig},
    network::{Msg, Op, ReplyTo, send, take},
    orders::{Answer, OrderRow},
    participant::{Outcome, Participant, unit_index, unit_name},
    properties,
};

/// The model: a configuration. Build a checker with [`Model::checker`].
#[derive(Debug, Clone)]
pub struct SagaModel {
    /// What to explore.
    pub config: ModelConfig,
}

/// One call a driver made and is waiting for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The command the saga gave.
    pub command: Command,
    /// The event its answer became; `None` while in flight.
    pub answer: Option<Event>,
}

/// Where a driver is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stage {
    /// An operator's force-fail took the saga over; next: step `ForceFail`, persist, drive.
    ForceFail,
    /// Waiting for the answers to one round of concurrent calls (`join_all`).
    Calls(Vec<Slot>),
}

/// One running `Orchestrator::drive` (an in-memory task of an instance).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Driver {
    /// The order.
    pub order: u8,
    /// The fencing token its claim was handed.
    pub epoch: u8,
    /// The instance (process) it runs in.
    pub instance: u8,
    /// The saga as this driver last wrote it (or as its claim read it).
    pub saga: Saga,
    /// What it does next.
    pub stage: Stage,
    /// The client whose `PlaceOrder` waits for this driver's answer.
    pub waiter: Option<u8>,
}

/// A `PlaceOrder` request that waits for a saga someone else drives (`wait_for_outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Poller {
    /// The instance handling the request.
    pub instance: u8,
    /// The client (= idempotency key).
    pub client: u8,
}

/// One client: it places its order once under its own key, and may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Client {
    /// Sent its first `PlaceOrder`.
    pub placed: bool,
    /// Was ever answered `PLACED`.
    pub told_placed: bool,
    /// Was ever answered `NOT_PLACED`.
    pub told_not_placed: bool,
}

impl Client {
    fn tell(&mut self, answer: Answer) {
        match answer {
            Answer::Placed => self.told_placed = true,
            Answer::NotPlaced => self.told_not_placed = true,
        }
    }
}

/// The whole system at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The orders table; the order id is the index.
    pub orders: Vec<OrderRow>,
    /// The store's database.
    pub store: Participant,
    /// Delivery's database.
    pub delivery: Participant,
    /// Live drivers, sorted by (order, epoch).
    pub drivers: Vec<Driver>,
    /// Waiting `PlaceOrder` requests, sorted.
    pub pollers: Vec<Poller>,
    /// Messages in flight, sorted (a multiset).
    pub net: Vec<Msg>,
    /// The clients, by idempotency key.
    pub clients: Vec<Client>,
    /// The faults still allowed.
    pub budget: Budgets,
    /// A driver ran out of commands in a pending phase (the saga machine would be wrong).
    pub stalled: bool,
}

impl State {
    /// A participant.
    pub fn participant(&self, side: Side) -> &Participant {
        match side {
            Side::Store => &self.store,
            Side::Delivery => &self.delivery,
        }
    }

    fn participant_mut(&mut self, side: Side) -> &mut Participant {
        match side {
            Side::Store => &mut self.store,
            Side::Delivery => &mut self.delivery,
        }
    }

    /// The order created under idempotency key `key`.
    pub fn order_of_key(&self, key: u8) -> Option<u8> {
        self.orders
            .iter()
            .position(|o| o.key == key)
            .and_then(|i| u8::try_from(i).ok())
    }

    fn row(&self, order: u8) -> Option<&OrderRow> {
        self.orders.get(usize::from(order))
    }

    fn row_mut(&mut self, order: u8) -> Option<&mut OrderRow> {
        self.orders.get_mut(usize::from(order))
    }

    fn driver_index(&self, order: u8, epoch: u8) -> Option<usize> {
        self.drivers
            .binary_search_by_key(&(order, epoch), |d| (d.order, d.epoch))
            .ok()
    }

    fn slot_mut(&mut self, to: ReplyTo) -> Option<&mut Slot> {
        let i = self.driver_index(to.order, to.epoch)?;
        match &mut self.drivers[i].stage {
            Stage::Calls(slots) => slots.get_mut(usize::from(to.slot)),
            Stage::ForceFail => None,
        }
    }

    /// Whether the driver holding the row's current epoch is alive.
    fn lease_holder_alive(&self, order: u8) -> bool {
        self.row(order)
            .is_some_and(|row| self.driver_index(order, row.epoch).is_some())
    }

    /// Whether `order`'s lease may have run out: always once the driver of its current epoch
    /// is gone (time passes), and while that driver lives only as a budgeted fault (a pause).
    fn lease_may_have_run_out(&self, order: u8) -> bool {
        !self.lease_holder_alive(order) || self.budget.lease_expiries > 0
    }

    /// A claim relies on the lease having run out: spends the fault if its holder is alive.
    fn lease_runs_out(&mut self, order: u8) -> Option<()> {
        if self.lease_holder_alive(order) {
            self.budget.lease_expiries = self.budget.lease_expiries.checked_sub(1)?;
        }
        Some(())
    }

    /// Whether a request of `client` is still being handled somewhere.
    fn client_waiting(&self, client: u8) -> bool {
        self.drivers.iter().any(|d| d.waiter == Some(client))
            || self.pollers.iter().any(|p| p.client == client)
    }

    fn add_driver(&mut self, driver: Driver) {
        let at = self
            .drivers
            .partition_point(|d| (d.order, d.epoch) < (driver.order, driver.epoch));
        self.drivers.insert(at, driver);
    }

    fn add_poller(&mut self, poller: Poller) {
        let at = self.pollers.partition_point(|p| p < &poller);
        self.pollers.insert(at, poller);
    }

    /// Requests whose caller is gone stay in flight; their answers will go nowhere.
    fn orphan_requests_of(&mut self, gone: impl Fn(ReplyTo) -> bool) {
        let mut net: Vec<Msg> = std::mem::take(&mut self.net)
            .into_iter()
            .map(|m| match m.reply_to {
                Some(to) if gone(to) => m.orphan(),
                _ => m,
            })
            .collect();
        net.sort();
        self.net = net;
    }

    /// A one-line summary: the stored orders, the units, the answers given.
    pub fn brief(&self) -> String {
        let mut out = Vec::new();
        for (i, o) in self.orders.iter().enumerate() {
            out.push(format!(
                "o{i}={}(e{} {})",
                o.saga.phase.as_str(),
                o.epoch,
                instance_name(o.owner),
            ));
        }
        for side in Side::BOTH {
            let units: Vec<String> = self
                .participant(side)
                .units
                .iter()
                .map(|u| match u {
                    crate::participant::Unit::Free => "free".to_owned(),
                    crate::participant::Unit::Reserved { order, expired } => {
                        format!("res:o{order}{}", if *expired { "(exp)" } else { "" })
                    }
                    crate::participant::Unit::Assigned { order } => format!("asg:o{order}"),
                })
                .collect();
            out.push(format!("{}=[{}]", side.as_str(), units.join(",")));
        }
        let drivers: Vec<String> = self
            .drivers
            .iter()
            .map(|d| {
                format!(
                    "o{}/e{}@{}:{}",
                    d.order,
                    d.epoch,
                    instance_name(d.instance),
                    d.saga.phase.as_str()
                )
            })
            .collect();
        out.push(format!("drivers=[{}]", drivers.join(",")));
        for (i, c) in self.clients.iter().enumerate() {
            let told = match (c.told_placed, c.told_not_placed) {
                (false, false) => "-",
                (true, false) => "PLACED",
                (false, true) => "NOT_PLACED",
                (true, true) => "PLACED+NOT_PLACED",
            };
            out.push(format!("c{i}:{told}"));
        }
        out.join(" ")
    }
}

/// Something that can happen next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A client sends `PlaceOrder` (first time, or a retry) to an instance.
    Place {
        /// The client (= idempotency key).
        client: u8,
        /// The instance it reaches.
        instance: u8,
    },
    /// A driver moves on: force-fail's first write, or a round whose answers are all in (step
    /// every answer, maybe the retry deadline, persist fenced, then send the next calls, give up
    /// compensating, or answer its waiting client).
    Step {
        /// The driver's order.
        order: u8,
        /// The driver's epoch.
        epoch: u8,
        /// The retry deadline has passed (only after a transient failure).
        deadline: bool,
        /// The compensation budget is spent: leave the releases to recovery.
        give_up: bool,
    },
    /// A request arrives and runs at the participant; the answer reaches its caller.
    Deliver(Msg),
    /// A request runs at the participant but its answer is lost: the call fails `UNAVAILABLE`.
    LoseAnswer(Msg),
    /// A request is lost before it runs: the call fails `UNAVAILABLE`.
    LoseRequest(Msg),
    /// A request is delivered twice (the copy's answer goes nowhere).
    Duplicate(Msg),
    /// The call times out (`DEADLINE_EXCEEDED`) while its request is still in flight: the
    /// request may still run later.
    TimeOut(Msg),
    /// A waiting `PlaceOrder` re-reads the order: answers a decided one, claims one whose lease
    /// ran out.
    Poll {
        /// The instance handling the request.
        instance: u8,
        /// The client.
        client: u8,
    },
    /// The recovery loop of an instance claims an unfinished order whose lease ran out. The
    /// lease running out is part of the claim (nothing but a claim reads it): free when the
    /// driver of the current epoch is gone, a `lease_expiries` fault (a pause) while it lives.
    Recover {
        /// The claiming instance.
        instance: u8,
        /// The order.
        order: u8,
    },
    /// An operator re-drives an order through an instance.
    Redrive {
        /// The instance the operator reaches.
        instance: u8,
        /// The order.
        order: u8,
    },
    /// An operator force-fails an order through an instance.
    ForceFail {
        /// The instance the operator reaches.
        instance: u8,
        /// The order.
        order: u8,
    },
    /// An operator completes an order's delivery through an instance (`CompleteDelivery`): the
    /// instance reads the stored row and, only if it is PLACED, tells delivery to free the
    /// order's agent (with the old rule, delivery freed the agent whatever the row said).
    CompleteDelivery {
        /// The instance the operator reaches.
        instance: u8,
        /// The order.
        order: u8,
    },
    /// A reservation's expiry passes.
    ReservationExpires {
        /// The participant.
        side: Side,
        /// The unit.
        unit: u8,
    },
    /// A participant's sweeper frees its expired reservations.
    Sweep {
        /// The participant.
        side: Side,
    },
    /// An instance crashes and restarts: its drivers and waiting requests vanish.
    Crash {
        /// The instance.
        instance: u8,
    },
}

/// `A`, `B`, ...: an instance or an instance name.
pub fn instance_name(i: u8) -> char {
    char::from(b'A'.saturating_add(i))
}

fn describe(msg: &Msg) -> String {
    let op = match msg.op {
        Op::Reserve => "reserve".to_owned(),
        Op::Assign(u) => format!("assign({})", unit_name(msg.side, u)),
        Op::Release => "release".to_owned(),
    };
    let reply = match msg.reply_to {
        Some(r) => format!("driver o{}/e{}", r.order, r.epoch),
        None => "nobody waiting".to_owned(),
    };
    format!("{}.{op}(o{}) from {reply}", msg.side.as_str(), msg.order)
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = instance_name;
        match self {
            Action::Place { client, instance } => {
                write!(
                    f,
                    "client {client}: PlaceOrder(key {client}) at {}",
                    i(*instance)
                )
            }
            Action::Step {
                order,
                epoch,
                deadline,
                give_up,
            } => {
                write!(f, "driver o{order}/e{epoch}: step answers, persist, go on")?;
                if *deadline {
                    write!(f, " [retry deadline passed]")?;
                }
                if *give_up {
                    write!(f, " [gives up compensating]")?;
                }
                Ok(())
            }
            Action::Deliver(m) => write!(f, "run {}", describe(m)),
            Action::LoseAnswer(m) => write!(f, "run {}, ANSWER LOST", describe(m)),
            Action::LoseRequest(m) => write!(f, "LOSE request {}", describe(m)),
            Action::Duplicate(m) => write!(f, "DUPLICATE {}", describe(m)),
            Action::TimeOut(m) => write!(f, "TIME OUT while in flight: {}", describe(m)),
            Action::Poll { instance, client } => {
                write!(
                    f,
                    "{}: waiting PlaceOrder of client {client} re-reads",
                    i(*instance)
                )
            }
            Action::Recover { instance, order } => {
                write!(
                    f,
                    "{}: recovery claims o{order} (its lease ran out)",
                    i(*instance)
                )
            }
            Action::Redrive { instance, order } => {
                write!(f, "operator: RedriveOrder(o{order}) at {}", i(*instance))
            }
            Action::ForceFail { instance, order } => {
                write!(f, "operator: ForceFailOrder(o{order}) at {}", i(*instance))
            }
            Action::CompleteDelivery { instance, order } => {
                write!(
                    f,
                    "operator: CompleteDelivery(o{order}) at {}",
                    i(*instance)
                )
            }
            Action::ReservationExpires { side, unit } => {
                write!(f, "reservation of {} expires", unit_name(*side, *unit))
            }
            Action::Sweep { side } => write!(f, "{} sweeper frees expired units", side.as_str()),
            Action::Crash { instance } => write!(f, "CRASH {} (restarts empty)", i(*instance)),
        }
    }
}

fn call_of(command: &Command) -> Call {
    match command {
        Command::Reserve(_) => Call::Reserve,
        Command::Assign(..) => Call::Assign,
        Command::Release(_) => Call::Release,
    }
}

/// A failed call as the orchestrator sees it: the production contract classifies the code.
fn failure(command: &Command, status: &tonic::Status) -> Event {
    let (side, call) = (command.side(), call_of(command));
    match classify(call, status) {
        Verdict::Definitive(refusal) => Event::Refused {
            side,
            call,
            refusal,
        },
        Verdict::Transient => Event::Transient { side, call },
    }
}

/// A participant's answer as the orchestrator sees it.
fn event_for(command: &Command, outcome: Outcome) -> Event {
    let side = command.side();
    match outcome {
        Outcome::Reserved(unit) => Event::Reserved {
            side,
            unit: unit_name(side, unit),
        },
        Outcome::Assigned => Event::Assigned { side },
        Outcome::Released => Event::Released { side },
        Outcome::Exhausted | Outcome::FailedPrecondition => failure(command, &outcome.status()),
    }
}

fn answers(driver: &Driver) -> Option<Vec<Event>> {
    match &driver.stage {
        Stage::Calls(slots) => slots.iter().map(|s| s.answer.clone()).collect(),
        Stage::ForceFail => None,
    }
}

impl SagaModel {
    /// A model of `config`.
    pub fn new(config: ModelConfig) -> Self {
        Self { config }
    }

    fn instances(&self) -> std::ops::Range<u8> {
        0..self.config.instances
    }

    fn orders(state: &State) -> std::ops::Range<u8> {
        0..u8::try_from(state.orders.len()).unwrap_or(u8::MAX)
    }

    /// A claim just made by `instance` hands the saga to a new driver, which starts like
    /// `drive` (commands of `Resume`, no write: the claim wrote the row it read) or, for a
    /// force-fail of a pending saga, like `apply_and_drive` (write first).
    fn start_driver(
        &self,
        s: &mut State,
        order: u8,
        instance: u8,
        waiter: Option<u8>,
        force_fail: bool,
    ) -> Option<()> {
        let row = s.row(order)?;
        let driver = Driver {
            order,
            epoch: row.epoch,
            instance,
            saga: row.saga.clone(),
            stage: Stage::Calls(Vec::new()),
            waiter,
        };
        if force_fail && Answer::of(row.saga.phase).is_none() {
            s.add_driver(Driver {
                stage: Stage::ForceFail,
                ..driver
            });
        } else {
            // As `drive` does, the driver keeps what `Resume` made of the state (a reserving
            // saga asks both sides again); it writes it with its first round's answers.
            let (saga, commands) = driver.saga.step(&Event::Resume);
            Self::proceed(s, Driver { saga, ..driver }, commands);
        }
        Some(())
    }

    /// After a write that succeeded (or a claim): make the next calls, or finish and answer the
    /// waiting client with the state just written.
    fn proceed(s: &mut State, mut driver: Driver, commands: Vec<Command>) {
        if commands.is_empty() {
            match Answer::of(driver.saga.phase) {
                Some(answer) => {
                    if let Some(c) = driver
                        .waiter
                        .and_then(|c| s.clients.get_mut(usize::from(c)))
                    {
                        c.tell(answer);
                    }
                }
                None => s.stalled = true,
            }
            return;
        }
        let mut slots = Vec::new();
        for (i, command) in commands.into_iter().enumerate() {
            let side = command.side();
            let op = match &command {
                Command::Reserve(_) => Op::Reserve,
                Command::Assign(_, unit) => Op::Assign(unit_index(side, unit).unwrap_or(u8::MAX)),
                Command::Release(_) => Op::Release,
            };
            let reply_to = ReplyTo {
                order: driver.order,
                epoch: driver.epoch,
                slot: u8::try_from(i).unwrap_or(u8::MAX),
            };
            send(
                &mut s.net,
                Msg {
                    side,
                    order: driver.order,
                    op,
                    reply_to: Some(reply_to),
                },
            );
            slots.push(Slot {
                command,
                answer: None,
            });
        }
        driver.stage = Stage::Calls(slots);
        s.add_driver(driver);
    }

    /// The fenced write of a driver. A refused driver stops; its waiting client (if any) goes
    /// back to reading the row.
    fn write(&self, s: &mut State, driver: &Driver, saga: &Saga) -> bool {
        let owner = self.config.owner_name(driver.instance);
        let fence = self.config.fence_on_epoch;
        let written = s
            .row_mut(driver.order)
            .is_some_and(|row| row.write(fence, owner, driver.epoch, saga));
        if !written && let Some(client) = driver.waiter {
            s.add_poller(Poller {
                instance: driver.instance,
                client,
            });
        }
        written
    }

    fn step(
        &self,
        s: &mut State,
        order: u8,
        epoch: u8,
        deadline: bool,
        give_up: bool,
    ) -> Option<()> {
        let index = s.driver_index(order, epoch)?;
        let mut driver = s.drivers.remove(index);
        if driver.stage == Stage::ForceFail {
            let (saga, _) = driver.saga.step(&Event::ForceFail);
            if self.write(s, &driver, &saga) {
                let (resumed, commands) = saga.step(&Event::Resume);
                driver.saga = resumed;
                Self::proceed(s, driver, commands);
            }
            return Some(());
        }
        let round = round(&driver.saga, &answers(&driver)?, deadline);
        if self.write(s, &driver, &round.saga) {
            driver.saga = round.saga;
            let commands = if give_up { Vec::new() } else { round.commands };
            Self::proceed(s, driver, commands);
        }
        Some(())
    }

    /// The `Step` actions of a driver whose answers are all in: the retry deadline may pass
    /// after a transient failure while pending; compensation may give up after one.
    fn step_actions(driver: &Driver, out: &mut Vec<Action>) {
        let Some(events) = answers(driver) else {
            return;
        };
        for deadline in [false, true] {
            let r = round(&driver.saga, &events, deadline);
            if deadline && !(r.transient && Answer::of(r.saga.phase).is_none()) {
                continue;
            }
            let can_give_up =
                r.transient && r.saga.phase == Phase::Compensating && !r.commands.is_empty();
            for give_up in [false, true] {
                if give_up && !can_give_up {
                    continue;
                }
                out.push(Action::Step {
                    order: driver.order,
                    epoch: driver.epoch,
                    deadline,
                    give_up,
                });
            }
        }
    }

    fn place(&self, s: &mut State, client: u8, instance: u8) -> Option<()> {
        let c = s.clients.get_mut(usize::from(client))?;
        if c.placed {
            s.budget.client_retries = s.budget.client_retries.checked_sub(1)?;
        }
        c.placed = true;
        match s.order_of_key(client) {
            None => {
                let order = u8::try_from(s.orders.len()).ok()?;
                s.orders
                    .push(OrderRow::new(client, self.config.owner_name(instance)));
                self.start_driver(s, order, instance, Some(client), false)
            }
            Some(order) => {
                match s.row(order)?.answer() {
                    Some(answer) => s.clients[usize::from(client)].tell(answer),
                    None => s.add_poller(Poller { instance, client }),
                }
                Some(())
            }
        }
    }

    fn poll(&self, s: &mut State, instance: u8, client: u8) -> Option<()> {
        let order = s.order_of_key(client)?;
        let row = s.row(order)?;
        let at = s.pollers.binary_search(&Poller { instance, client }).ok()?;
        if let Some(answer) = row.answer() {
            s.pollers.remove(at);
            s.clients.get_mut(usize::from(client))?.tell(answer);
            Some(())
        } else if s.lease_may_have_run_out(order) {
            s.pollers.remove(at);
            s.lease_runs_out(order)?;
            s.row_mut(order)?.claim(self.config.owner_name(instance));
            self.start_driver(s, order, instance, Some(client), false)
        } else {
            None
        }
    }

    /// The participant executes `msg`; its answer reaches the caller unless `answer_lost`.
    fn deliver(s: &mut State, msg: &Msg, answer_lost: bool) -> Option<()> {
        if !take(&mut s.net, msg) {
            return None;
        }
        let p = s.participant_mut(msg.side);
        let outcome = match msg.op {
            Op::Reserve => p.reserve(msg.order),
            Op::Assign(unit) => p.assign(msg.order, unit),
            Op::Release => p.release(msg.order),
        };
        if answer_lost {
            return Self::fail_call(s, msg, tonic::Code::Unavailable);
        }
        if let Some(to) = msg.reply_to {
            let slot = s.slot_mut(to)?;
            slot.answer = Some(event_for(&slot.command, outcome));
        }
        Some(())
    }

    /// The call waiting for `msg` ends with `code` (the caller stops waiting).
    fn fail_call(s: &mut State, msg: &Msg, code: tonic::Code) -> Option<()> {
        if let Some(to) = msg.reply_to {
            let slot = s.slot_mut(to)?;
            slot.answer = Some(failure(&slot.command, &tonic::Status::new(code, "lost")));
        }
        Some(())
    }

    fn crash(s: &mut State, instance: u8) {
        let gone: Vec<(u8, u8)> = s
            .drivers
            .iter()
            .filter(|d| d.instance == instance)
            .map(|d| (d.order, d.epoch))
            .collect();
        s.drivers.retain(|d| d.instance != instance);
        s.pollers.retain(|p| p.instance != instance);
        s.orphan_requests_of(|to| gone.contains(&(to.order, to.epoch)));
    }

    fn apply(&self, s: &mut State, action: &Action) -> Option<()> {
        let b = &mut s.budget;
        match action {
            Action::Place { client, instance } => self.place(s, *client, *instance),
            Action::Step {
                order,
                epoch,
                deadline,
                give_up,
            } => self.step(s, *order, *epoch, *deadline, *give_up),
            Action::Deliver(msg) => Self::deliver(s, msg, false),
            Action::LoseAnswer(msg) => {
                b.drops = b.drops.checked_sub(1)?;
                Self::deliver(s, msg, true)
            }
            Action::LoseRequest(msg) => {
                b.drops = b.drops.checked_sub(1)?;
                if !take(&mut s.net, msg) {
                    return None;
                }
                Self::fail_call(s, msg, tonic::Code::Unavailable)
            }
            Action::Duplicate(msg) => {
                b.duplicates = b.duplicates.checked_sub(1)?;
                send(&mut s.net, msg.orphan());
                Some(())
            }
            Action::TimeOut(msg) => {
                b.late_requests = b.late_requests.checked_sub(1)?;
                if !take(&mut s.net, msg) {
                    return None;
                }
                send(&mut s.net, msg.orphan());
                Self::fail_call(s, msg, tonic::Code::DeadlineExceeded)
            }
            Action::Poll { instance, client } => self.poll(s, *instance, *client),
            Action::Recover { instance, order } => {
                s.lease_runs_out(*order)?;
                let row = s.row_mut(*order)?;
                if !row.unfinished() {
                    return None;
                }
                row.claim(self.config.owner_name(*instance));
                self.start_driver(s, *order, *instance, None, false)
            }
            Action::Redrive { instance, order } | Action::ForceFail { instance, order } => {
                let force_fail = matches!(action, Action::ForceFail { .. });
                if force_fail {
                    b.force_fails = b.force_fails.checked_sub(1)?;
                } else {
                    b.redrives = b.redrives.checked_sub(1)?;
                }
                let row = s.row_mut(*order)?;
                if !row.unfinished() {
                    return None;
                }
                row.claim(self.config.owner_name(*instance));
                self.start_driver(s, *order, *instance, None, force_fail)
            }
            Action::CompleteDelivery { order, .. } => {
                b.completions = b.completions.checked_sub(1)?;
                let placed = s.row(*order)?.saga.phase == Phase::Placed;
                if self.config.completion_checks_placed {
                    if !placed {
                        // Refused FAILED_PRECONDITION: nothing changes (the budget is spent
                        // all the same, so refusals are explored without looping).
                        return Some(());
                    }
                    s.delivery.complete(*order);
                } else {
                    s.delivery.free_assignment(*order);
                }
                if placed {
                    s.row_mut(*order)?.delivered = true;
                }
                Some(())
            }
            Action::ReservationExpires { side, unit } => {
                b.reservation_expiries = b.reservation_expiries.checked_sub(1)?;
                s.participant_mut(*side).expire(*unit).then_some(())
            }
            Action::Sweep { side } => s.participant_mut(*side).sweep().then_some(()),
            Action::Crash { instance } => {
                b.crashes = b.crashes.checked_sub(1)?;
                Self::crash(s, *instance);
                Some(())
            }
        }
    }
}

impl Model for SagaModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let c = &self.config;
        vec![State {
            orders: Vec::new(),
            store: Participant::new(c.packets, c.clients),
            delivery: Participant::new(c.agents, c.clients),
            drivers: Vec::new(),
            pollers: Vec::new(),
            net: Vec::new(),
            clients: vec![Client::default(); usize::from(c.clients)],
            budget: c.budget,
            stalled: false,
        }]
    }

    /// Only enabled actions are listed, so a state with none is one where nothing more can
    /// happen (the quiescence property relies on it).
    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.stalled {
            return;
        }
        let b = &s.budget;
        for (client, c) in (0u8..).zip(&s.clients) {
            if !c.placed || (b.client_retries > 0 && !s.client_waiting(client)) {
                for instance in self.instances() {
                    out.push(Action::Place { client, instance });
                }
            }
        }
        for driver in &s.drivers {
            if driver.stage == Stage::ForceFail {
                out.push(Action::Step {
                    order: driver.order,
                    epoch: driver.epoch,
                    deadline: false,
                    give_up: false,
                });
            } else {
                Self::step_actions(driver, out);
            }
        }
        for (i, msg) in s.net.iter().enumerate() {
            if i > 0 && s.net[i - 1] == *msg {
                continue;
            }
            out.push(Action::Deliver(msg.clone()));
            let waited_for = msg.reply_to.is_some();
            if b.drops > 0 {
                if waited_for {
                    out.push(Action::LoseAnswer(msg.clone()));
                }
                out.push(Action::LoseRequest(msg.clone()));
            }
            if b.duplicates > 0 {
                out.push(Action::Duplicate(msg.clone()));
            }
            if b.late_requests > 0 && waited_for {
                out.push(Action::TimeOut(msg.clone()));
            }
        }
        for p in &s.pollers {
            let enabled = s
                .order_of_key(p.client)
                .and_then(|o| Some((o, s.row(o)?)))
                .is_some_and(|(o, row)| row.answer().is_some() || s.lease_may_have_run_out(o));
            if enabled {
                out.push(Action::Poll {
                    instance: p.instance,
                    client: p.client,
                });
            }
        }
        if b.completions > 0 {
            // Which instance the operator reaches changes nothing: it only reads the row.
            for order in Self::orders(s) {
                out.push(Action::CompleteDelivery { instance: 0, order });
            }
        }
        for order in Self::orders(s) {
            let Some(row) = s.row(order) else { continue };
            if !row.unfinished() {
                continue;
            }
            let claimable = s.lease_may_have_run_out(order);
            for instance in self.instances() {
                if claimable {
                    out.push(Action::Recover { instance, order });
                }
                if b.redrives > 0 {
                    out.push(Action::Redrive { instance, order });
                }
                if b.force_fails > 0 {
                    out.push(Action::ForceFail { instance, order });
                }
            }
        }
        for side in Side::BOTH {
            let units = &s.participant(side).units;
            for (unit, u) in (0u8..).zip(units) {
                let reserved =
                    matches!(u, crate::participant::Unit::Reserved { expired: false, .. });
                if reserved && b.reservation_expiries > 0 {
                    out.push(Action::ReservationExpires { side, unit });
                }
            }
            let expired = units
                .iter()
                .any(|u| matches!(u, crate::participant::Unit::Reserved { expired: true, .. }));
            if expired {
                out.push(Action::Sweep { side });
            }
        }
        if b.crashes > 0 {
            for instance in self.instances() {
                let busy = s.drivers.iter().any(|d| d.instance == instance)
                    || s.pollers.iter().any(|p| p.instance == instance);
                if busy {
                    out.push(Action::Crash { instance });
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut next = last.clone();
        self.apply(&mut next, &action)?;
        Some(next)
    }

    fn format_action(&self, action: &Action) -> String {
        action.to_string()
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all(&self.config)
    }
}
