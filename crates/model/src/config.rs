//! What the model checks: the sizes of the world and how many faults of each kind may happen.

/// How many faults of each kind the checker may inject along one behaviour. Every budget is
/// spent by the action it names, so the state space is finite; once a budget is spent that fault
/// stops happening ("faults stop"), which is what the quiescence property relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budgets {
    /// Order instances crashing (every driver and waiting request of the instance vanishes; the
    /// process restarts at once with the same instance name).
    pub crashes: u8,
    /// Leases running out while their driver is still alive (a paused or slow driver). A lease
    /// whose driver is gone runs out for free: that is just time passing.
    pub lease_expiries: u8,
    /// Messages (requests or responses) lost; the caller's call ends `UNAVAILABLE`.
    pub drops: u8,
    /// Requests delivered twice (the copy's answer goes nowhere).
    pub duplicates: u8,
    /// Calls that time out (`DEADLINE_EXCEEDED`) while their request is still in flight: the
    /// request may still be executed later, after the caller moved on.
    pub late_requests: u8,
    /// Reservations expiring before they are assigned or released.
    pub reservation_expiries: u8,
    /// `PlaceOrder` retries with the same idempotency key (all clients together), after a lost
    /// answer or a crashed instance.
    pub client_retries: u8,
    /// Operator re-drives (`RedriveOrder`: take over regardless of the lease, resume).
    pub redrives: u8,
    /// Operator force-fails (`ForceFailOrder`: take over, step `ForceFail`, persist, drive).
    pub force_fails: u8,
    /// Operator completions of a delivery (`CompleteDelivery`), at any moment, of any order.
    pub completions: u8,
}

impl Budgets {
    /// The budget called `name` (as in the field names), for command-line overrides.
    pub fn slot(&mut self, name: &str) -> Option<&mut u8> {
        Some(match name {
            "crashes" => &mut self.crashes,
            "lease_expiries" => &mut self.lease_expiries,
            "drops" => &mut self.drops,
            "duplicates" => &mut self.duplicates,
            "late_requests" => &mut self.late_requests,
            "reservation_expiries" => &mut self.reservation_expiries,
            "client_retries" => &mut self.client_retries,
            "redrives" => &mut self.redrives,
            "force_fails" => &mut self.force_fails,
            "completions" => &mut self.completions,
            _ => return None,
        })
    }

    /// No faults at all.
    pub const NONE: Budgets = Budgets {
        crashes: 0,
        lease_expiries: 0,
        drops: 0,
        duplicates: 0,
        late_requests: 0,
        reservation_expiries: 0,
        client_retries: 0,
        redrives: 0,
        force_fails: 0,
        completions: 0,
    };
}

/// The world the checker explores.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelConfig {
    /// Clients, each placing one order under its own idempotency key (at most 8).
    pub clients: u8,
    /// Packets of the (single) food in stock at the store.
    pub packets: u8,
    /// Agents of the (single) zone at delivery.
    pub agents: u8,
    /// Order-service instances (1 or 2).
    pub instances: u8,
    /// Both instances run with the same instance id (lease-owner name): two live processes
    /// configured alike. Only the epoch can tell their drivers apart.
    pub shared_instance_id: bool,
    /// The fix under test: every driver write is conditional on the epoch it was handed and on a
    /// non-terminal phase. `false` models the old, broken protocol: writes are fenced on the
    /// owner name only and a terminal row may be rewritten.
    pub fence_on_epoch: bool,
    /// The completion rule under test: an operator's `CompleteDelivery` frees an agent only
    /// for an order stored PLACED (the order service checks the row, then tells delivery).
    /// `false` models the old rule: delivery's admin API freed any assigned agent, whatever
    /// its order's state.
    pub completion_checks_placed: bool,
    /// The fault budgets.
    pub budget: Budgets,
}

impl ModelConfig {
    /// The bound `make test` checks (`cargo test`, about ten seconds): two orders competing
    /// for one packet and one agent, two instances, an operator force-fail, a reservation
    /// expiring and a client retry, each at most once.
    pub fn small() -> Self {
        Self {
            clients: 2,
            packets: 1,
            agents: 1,
            instances: 2,
            shared_instance_id: false,
            fence_on_epoch: true,
            completion_checks_placed: true,
            budget: Budgets {
                force_fails: 1,
                reservation_expiries: 1,
                client_retries: 1,
                ..Budgets::NONE
            },
        }
    }

    /// Two orders competing for one agent while an operator completes deliveries at any
    /// moment (also checked by `make test`): the agent of a placed order may be freed and
    /// serve the other order; an early completion must change nothing.
    pub fn completions() -> Self {
        Self {
            clients: 2,
            packets: 2,
            agents: 1,
            instances: 1,
            budget: Budgets {
                completions: 2,
                reservation_expiries: 1,
                ..Budgets::NONE
            },
            ..Self::small()
        }
    }

    /// One order under the faults that take a saga from its driver: an instance crash, a
    /// lease running out under a live driver, an operator force-fail, a client retry (also
    /// checked by `make test`).
    pub fn takeovers() -> Self {
        Self {
            clients: 1,
            budget: Budgets {
                crashes: 1,
                lease_expiries: 1,
                client_retries: 1,
                force_fails: 1,
                ..Budgets::NONE
            },
            ..Self::small()
        }
    }

    /// The bounds `make model-check` checks, each exhaustively: every fault kind appears in at
    /// least one, the combinations that grow the state space fastest are split across them.
    pub fn full() -> Vec<(&'static str, Self)> {
        let two_orders = Self::small();
        let mut crash = Self::small();
        crash.budget = Budgets {
            crashes: 1,
            client_retries: 1,
            ..Budgets::NONE
        };
        let mut operators = Self::takeovers();
        operators.shared_instance_id = true;
        operators.budget.force_fails = 0;
        operators.budget.redrives = 1;
        operators.budget.reservation_expiries = 1;
        let mut network = Self::takeovers();
        network.budget = Budgets {
            crashes: 1,
            drops: 1,
            duplicates: 1,
            late_requests: 1,
            reservation_expiries: 1,
            client_retries: 1,
            ..Budgets::NONE
        };
        let mut completions = Self::completions();
        completions.instances = 2;
        completions.budget.crashes = 1;
        completions.budget.client_retries = 1;
        vec![
            (
                "two orders, one packet: force-fail, expiry, retry",
                two_orders,
            ),
            (
                "two orders, one agent: deliveries completed at any moment, an expiry, a crash",
                completions,
            ),
            ("two orders, one packet: an instance crash, a retry", crash),
            (
                "one order, two processes sharing one instance id: crash, lost lease, redrive, expiry",
                operators,
            ),
            (
                "one order: lost, duplicated and late messages, expiry, a crash",
                network,
            ),
        ]
    }

    /// The smallest world that shows why the epoch fence is needed: one order, one instance,
    /// one operator force-fail; use it with `fence_on_epoch: false`.
    pub fn fencing_demo() -> Self {
        Self {
            clients: 1,
            packets: 1,
            agents: 1,
            instances: 1,
            shared_instance_id: false,
            fence_on_epoch: true,
            completion_checks_placed: true,
            budget: Budgets {
                force_fails: 1,
                client_retries: 1,
                ..Budgets::NONE
            },
        }
    }

    /// The same world with the epoch fence switched on or off.
    pub fn with_epoch_fence(mut self, on: bool) -> Self {
        self.fence_on_epoch = on;
        self
    }

    /// The same world with the completion rule switched on or off.
    pub fn with_completion_check(mut self, on: bool) -> Self {
        self.completion_checks_placed = on;
        self
    }

    /// The lease-owner name of instance `instance`.
    pub fn owner_name(&self, instance: u8) -> u8 {
        if self.shared_instance_id { 0 } else { instance }
    }
}
