//! The saga writes (creation and fenced persists), alone or many in one transaction.
//!
//! Each saga still writes its state before it makes the calls that state asks for, and
//! answers only from what it stored; the writes of sagas that reach that point together share
//! one transaction and one commit ([`GroupCommit`]). A fenced update that returns no row is
//! a lost lease for that saga alone; a database error fails the batch, which is then run again
//! one write at a time. Both writes may run twice: creation is an insert that does nothing on
//! a taken idempotency key (and then answers the stored order), and a persist that already
//! committed is refused by nothing but its own fence, which it still holds.

use std::time::Duration;

use order_saga_platform::group_commit::Committer;
use sqlx::AssertSqlSafe;

use super::{Created, NewOrder, OrderRecord, Queries, RepoError, decode, ms};
use crate::history::{EventKind, Transition};

/// One write of the orders table.
#[derive(Debug, Clone)]
pub(super) enum SagaWrite {
    /// Insert a new order leased to `owner`, or find the order its key already names.
    Create {
        order_id: String,
        order: NewOrder,
        owner: String,
        lease: Duration,
    },
    /// Write the state of the driver holding `record`, fenced on its owner and epoch.
    Persist {
        record: Box<OrderRecord>,
        owner: String,
        lease: Duration,
        transition: Transition,
    },
}

/// Whether `writes` may run as sets: every write names a different order.
fn distinct_orders(writes: &[SagaWrite]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(writes.len());
    writes.iter().all(|w| seen.insert(w.order_id()))
}

impl SagaWrite {
    fn order_id(&self) -> &str {
        match self {
            Self::Create { order_id, .. } => order_id,
            Self::Persist { record, .. } => &record.order_id,
        }
    }
}

/// The answer to a [`SagaWrite`].
#[derive(Debug)]
pub(super) enum SagaWritten {
    /// The new order, or the one its key named.
    Created(Created),
    /// The row as written.
    Persisted(OrderRecord),
}

/// Runs [`SagaWrite`]s against the order database.
#[derive(Debug, Clone)]
pub(super) struct SagaWriter {
    pub(super) db: order_saga_platform::db::Db,
    pub(super) sql: std::sync::Arc<Queries>,
}

impl Committer for SagaWriter {
    type Item = SagaWrite;
    type Output = SagaWritten;
    type Error = RepoError;

    async fn run_one(&self, write: &SagaWrite) -> Result<SagaWritten, RepoError> {
        let mut tx = self.db.pool().begin().await?;
        let written = self.write_in(&mut tx, write).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn run_batch(
        &self,
        writes: &[SagaWrite],
    ) -> Result<Vec<Result<SagaWritten, RepoError>>, sqlx::Error> {
        // Rows are locked in order-id order, so two batches never wait for each other in a
        // cycle over the rows they both write.
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_by(|&a, &b| writes[a].order_id().cmp(writes[b].order_id()));
        let mut answers: Vec<Option<Result<SagaWritten, RepoError>>> =
            (0..writes.len()).map(|_| None).collect();
        let mut tx = self.db.pool().begin().await?;
        if let Some(set) = &self.sql.set
            && distinct_orders(writes)
        {
            let answers = self.run_set(&mut tx, set, writes).await?;
            tx.commit().await?;
            return Ok(answers);
        }
        for i in order {
            match self.write_in(&mut tx, &writes[i]).await {
                Err(RepoError::Db(e)) => return Err(e),
                answer => answers[i] = Some(answer),
            }
        }
        tx.commit().await?;
        Ok(answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| Err(RepoError::Corrupt(String::new(), "unanswered".into())))
            })
            .collect())
    }
}

impl SagaWriter {
    async fn write_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        write: &SagaWrite,
    ) -> Result<SagaWritten, RepoError> {
        match write {
            SagaWrite::Create {
                order_id,
                order,
                owner,
                lease,
            } => Ok(SagaWritten::Created(
                self.create_in(conn, order_id, order, owner, *lease).await?,
            )),
            SagaWrite::Persist {
                record,
                owner,
                lease,
                transition,
            } => Ok(SagaWritten::Persisted(
                self.persist_in(conn, record, owner, *lease, transition)
                    .await?,
            )),
        }
    }

    /// Inserts the order, or, when its customer's idempotency key is taken, reads the order
    /// that took it (in the same transaction: a concurrent insert of the key has committed
    /// by the time the conflict is reported).
    async fn create_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        order_id: &str,
        order: &NewOrder,
        owner: &str,
        lease: Duration,
    ) -> Result<Created, RepoError> {
        let inserted = sqlx::query(AssertSqlSafe(self.sql.insert.as_str()))
            .bind(order_id)
            .bind(&order.idempotency_key)
            .bind(&order.customer_id)
            .bind(&order.food_id)
            .bind(&order.zone)
            .bind(owner)
            .bind(ms(lease))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = inserted {
            let created = decode(&row)?;
            let transition = Transition::claim(EventKind::Created, None);
            self.sql.append(conn, &created, &transition).await?;
            return Ok(Created::New(created));
        }
        self.existing(conn, order_id, order).await
    }

    /// The order that took `order`'s idempotency key, read after an insert of `order_id`
    /// conflicted.
    pub(super) async fn existing(
        &self,
        conn: &mut sqlx::AnyConnection,
        order_id: &str,
        order: &NewOrder,
    ) -> Result<Created, RepoError> {
        let existing = sqlx::query(AssertSqlSafe(self.sql.by_key.as_str()))
            .bind(&order.customer_id)
            .bind(&order.idempotency_key)
            .fetch_optional(&mut *conn)
            .await?;
        match existing {
            Some(row) => Ok(Created::Existing(decode(&row)?)),
            // Only the order id can have conflicted, and ids are fresh UUIDs: a bug.
            None => Err(RepoError::Corrupt(
                order_id.to_owned(),
                "the insert conflicted, but not on the idempotency key".into(),
            )),
        }
    }

    /// The fenced update of one saga and its history event; [`RepoError::LostLease`] when the
    /// fence refused it.
    async fn persist_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        record: &OrderRecord,
        owner: &str,
        lease: Duration,
        transition: &Transition,
    ) -> Result<OrderRecord, RepoError> {
        let saga = &record.saga;
        let lease_ms = (!saga.phase.is_terminal()).then(|| ms(lease));
        let row = sqlx::query(AssertSqlSafe(self.sql.persist.as_str()))
            .bind(&record.order_id)
            .bind(owner)
            .bind(record.state().as_str())
            .bind(saga.phase.as_str())
            .bind(saga.store.state.as_str())
            .bind(saga.delivery.state.as_str())
            .bind(saga.store.unit.clone())
            .bind(saga.delivery.unit.clone())
            .bind(saga.reason.map(|r| r.as_str()))
            .bind(record.detail.clone())
            .bind(saga.last_transient.map(|s| s.as_str()))
            .bind(record.attempts)
            .bind(record.last_error.clone())
            .bind(lease_ms)
            .bind(record.epoch)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else {
            return Err(RepoError::LostLease(record.order_id.clone()));
        };
        let persisted = decode(&row)?;
        self.sql.append(conn, &persisted, transition).await?;
        Ok(persisted)
    }
}
