//! The order service's database row and the two statements that race on it: the fenced write
//! and the claim (`services/order/src/repo.rs`).
//!
//! The lease's expiry time is not stored: only claims read it, so the model decides whether a
//! lease may have run out at the moment of a claim (see `Action::Recover`). A write renewing
//! the lease therefore needs no modelling either.

use order_saga_saga::{Phase, Saga};

/// What a customer is told about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// `PLACED`.
    Placed,
    /// `NOT_PLACED` (a compensating saga already reads as not placed).
    NotPlaced,
}

impl Answer {
    /// The answer a saga in `phase` gives the customer; `None` while it is still pending.
    pub fn of(phase: Phase) -> Option<Answer> {
        match phase {
            Phase::Placed => Some(Answer::Placed),
            Phase::Compensating | Phase::NotPlaced => Some(Answer::NotPlaced),
            Phase::Reserving | Phase::Assigning => None,
        }
    }
}

/// One row of the `orders` table (the order id is the row's index in the model).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderRow {
    /// The idempotency key (the client that placed it).
    pub key: u8,
    /// The persisted saga.
    pub saga: Saga,
    /// `lease_owner`: the instance name of the last claimant.
    pub owner: u8,
    /// `epoch`: the fencing token, incremented by every claim or take-over.
    pub epoch: u8,
    /// An operator completed the order's delivery while it was stored PLACED (the history's
    /// `delivery_completed` event): from then on its agent may serve other orders.
    pub delivered: bool,
}

impl OrderRow {
    /// The row `INSERT`ed by `PlaceOrder`: reserving, epoch 1, leased to the creating instance.
    pub fn new(key: u8, owner: u8) -> Self {
        Self {
            key,
            saga: Saga::new(),
            owner,
            epoch: 1,
            delivered: false,
        }
    }

    /// The driver write `UPDATE orders SET <saga>, lease renewed WHERE lease_owner = owner AND
    /// epoch = epoch AND phase NOT IN ('placed', 'not_placed')`. Without `fence_on_epoch` the
    /// old statement: `WHERE lease_owner = owner` only. Returns whether a row was updated.
    pub fn write(&mut self, fence_on_epoch: bool, owner: u8, epoch: u8, saga: &Saga) -> bool {
        let allowed = if fence_on_epoch {
            self.owner == owner && self.epoch == epoch && !self.saga.phase.is_terminal()
        } else {
            self.owner == owner
        };
        if allowed {
            self.saga = saga.clone();
        }
        allowed
    }

    /// A claim or take-over (`SET lease_owner = owner, lease renewed, epoch = epoch + 1`): the
    /// caller checked its `WHERE` (unfinished; lease run out unless it is an operator's
    /// take-over). Returns the new epoch, which the new driver holds.
    pub fn claim(&mut self, owner: u8) -> u8 {
        self.owner = owner;
        self.epoch = self.epoch.saturating_add(1);
        self.epoch
    }

    /// The customer-visible outcome of the stored row, `None` while pending.
    pub fn answer(&self) -> Option<Answer> {
        Answer::of(self.saga.phase)
    }

    /// Not `placed` nor `not_placed`: recovery, waiting clients and operators may claim it.
    pub fn unfinished(&self) -> bool {
        !self.saga.phase.is_terminal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_superseded_driver_cannot_write_even_under_the_same_name() {
        let mut row = OrderRow::new(0, 7);
        let placed = Saga {
            phase: Phase::Placed,
            ..Saga::new()
        };
        let epoch = row.claim(7);
        assert_eq!(epoch, 2);
        assert!(!row.write(true, 7, 1, &placed), "epoch 1 was superseded");
        assert!(
            row.write(false, 7, 1, &placed),
            "the old name-only fence lets it through"
        );
        assert!(
            !row.write(true, 7, 2, &Saga::new()),
            "a terminal row is final"
        );
    }
}
