//! Group commit: requests that arrive while a transaction is in flight share the next one.
//!
//! A durable commit costs the same whether it carries one change or a hundred (one WAL flush,
//! one fsync), and on a small machine the commit is what runs out first. A [`GroupCommit`]
//! queues each submitted item with the channel its answer goes back on; a few writer tasks each
//! drain what is queued ([`tokio::sync::mpsc::Receiver::recv_many`]: no timer, so a lone request
//! is not held back waiting for company), run the whole batch in one transaction through
//! [`Committer::run_batch`], and answer every item with its own result.
//!
//! A batch that fails as a whole (a database error, a deadlock, an unknown commit outcome) is
//! rolled back and its items are run again one by one through [`Committer::run_one`], each in
//! a transaction of its own, so one bad item never fails its neighbours. Running an item twice
//! must therefore be harmless: every item this module carries is idempotent.
//!
//! The anchors: Restate's bifrost `BackgroundAppender` (drain the queue, one batched append,
//! answer every sender) and Temporal's matching `db_task_writer` (each append is a future that
//! one batched write completes).
//!
//! Each batch runs on a task of its own, detached from the callers (see [`crate::db::detached`]
//! for why a transaction must not be dropped halfway); a caller that stops waiting leaves its
//! item in the batch. A batch that panics answers its callers [`sqlx::Error::WorkerCrashed`]
//! (retryable) and the writer goes on with the next one.

use std::{future::Future, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

/// One answer per item of a batch, in the items' order.
pub type Answers<C> = Vec<Result<<C as Committer>::Output, <C as Committer>::Error>>;

/// The work a [`GroupCommit`] batches: how to run one item alone, and many in one transaction.
pub trait Committer: Clone + Send + Sync + 'static {
    /// One request.
    type Item: Send + Sync + 'static;
    /// Its answer.
    type Output: Send + 'static;
    /// Its refusal; a database error converts into it.
    type Error: From<sqlx::Error> + Send + 'static;

    /// Runs `item` alone, in a transaction of its own.
    fn run_one(
        &self,
        item: &Self::Item,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// Runs `items` in one transaction and commits it, returning one answer per item in the
    /// same order (a refusal is an answer). Fails only when the transaction as a whole failed
    /// or its commit outcome is unknown: nothing is answered then, and each item is run again
    /// alone.
    fn run_batch(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<Answers<Self>, sqlx::Error>> + Send;
}

/// Group-commit settings.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Writer tasks, each with at most one transaction in flight.
    pub writers: usize,
    /// Most items one transaction carries.
    pub max_batch: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            writers: 2,
            max_batch: 128,
        }
    }
}

impl GroupCommitConfig {
    /// What a `*_WRITE_BATCH` setting asks for. `1` (or `0`): a transaction per write, as many
    /// at once as the pool has `connections`. More: `batched_writers` writers, each carrying up
    /// to `write_batch` writes per transaction.
    pub fn for_write_batch(write_batch: usize, connections: u32, batched_writers: usize) -> Self {
        match write_batch {
            0 | 1 => Self {
                writers: usize::try_from(connections).unwrap_or(16),
                max_batch: 1,
            },
            n => Self {
                writers: batched_writers,
                max_batch: n,
            },
        }
    }

    /// These settings for a database `backend`: SQLite has one writer connection, so a
    /// second writer task would only wait for it.
    pub fn for_backend(self, backend: crate::db::Backend) -> Self {
        match backend {
            crate::db::Backend::Postgres => self,
            crate::db::Backend::Sqlite => Self { writers: 1, ..self },
        }
    }
}

type Answer<C> = Result<<C as Committer>::Output, <C as Committer>::Error>;

struct Job<C: Committer> {
    item: C::Item,
    answer: oneshot::Sender<Answer<C>>,
}

/// A queue in front of a [`Committer`]; cloning shares the queue.
pub struct GroupCommit<C: Committer> {
    queue: mpsc::UnboundedSender<Job<C>>,
}

impl<C: Committer> Clone for GroupCommit<C> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<C: Committer> std::fmt::Debug for GroupCommit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<C: Committer> GroupCommit<C> {
    /// Starts `config.writers` writer tasks over `committer`; `name` labels the batch-size
    /// metric (`saga_write_batch_size{queue=name}`). The writers stop when every clone of the
    /// returned handle is dropped and the queue is empty.
    pub fn start(name: &'static str, committer: C, config: GroupCommitConfig) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel::<Job<C>>();
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..config.writers.max(1) {
            let (jobs, committer) = (jobs.clone(), committer.clone());
            let max = config.max_batch.max(1);
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(max);
                loop {
                    // One writer drains at a time; the others wait here, each taking what
                    // queued up while the last batches were in flight.
                    if jobs.lock().await.recv_many(&mut batch, max).await == 0 {
                        return;
                    }
                    let jobs = std::mem::replace(&mut batch, Vec::with_capacity(max));
                    metrics::histogram!("saga_write_batch_size", "queue" => name)
                        .record(jobs.len() as f64);
                    // A panic drops the batch's answer channels: its callers are told
                    // `WorkerCrashed`, and this writer takes the next batch.
                    let _ = tokio::spawn(run(name, committer.clone(), jobs)).await;
                }
            });
        }
        Self { queue }
    }

    /// Queues `item` for the next transaction and waits for its answer.
    pub async fn submit(&self, item: C::Item) -> Result<C::Output, C::Error> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Job { item, answer })
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answered
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::WorkerCrashed.into()))
    }
}

/// Runs one batch and answers each of its jobs.
async fn run<C: Committer>(name: &'static str, committer: C, jobs: Vec<Job<C>>) {
    let (items, answers): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.item, j.answer)).unzip();
    if items.len() > 1 {
        match committer.run_batch(&items).await {
            Ok(results) if results.len() == items.len() => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
                return;
            }
            Ok(results) => tracing::error!(
                items = items.len(),
                answers = results.len(),
                "a batch answered the wrong number of items; running them one by one"
            ),
            Err(e) => tracing::debug!(
                error = %e,
                items = items.len(),
                "batch failed as a whole; running its items one by one"
            ),
        }
        metrics::counter!("saga_write_batch_fallbacks_total", "queue" => name).increment(1);
    }
    for (item, answer) in items.iter().zip(answers) {
        let _ = answer.send(committer.run_one(item).await);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Doubles numbers; a batch holding 13 fails as a whole, an item 7 panics.
    #[derive(Clone, Default)]
    struct Doubler {
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
        alone: Arc<AtomicUsize>,
    }

    impl Committer for Doubler {
        type Item = u32;
        type Output = u32;
        type Error = sqlx::Error;

        async fn run_one(&self, item: &u32) -> Result<u32, sqlx::Error> {
            self.alone.fetch_add(1, Ordering::SeqCst);
            assert_ne!(*item, 7, "seven panics");
            if *item == 13 {
                return Err(sqlx::Error::RowNotFound);
            }
            Ok(item * 2)
        }

        async fn run_batch(
            &self,
            items: &[u32],
        ) -> Result<Vec<Result<u32, sqlx::Error>>, sqlx::Error> {
            assert!(!items.contains(&7), "seven panics");
            // Let the queue fill while this "transaction" is in flight.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.batches.lock().expect("lock").push(items.len());
            if items.contains(&13) {
                return Err(sqlx::Error::Protocol("the batch failed".into()));
            }
            Ok(items.iter().map(|i| Ok(i * 2)).collect())
        }
    }

    fn one_writer() -> GroupCommitConfig {
        GroupCommitConfig {
            writers: 1,
            max_batch: 64,
        }
    }

    #[test]
    fn a_write_batch_of_one_is_a_transaction_per_write_on_every_connection() {
        let one = GroupCommitConfig::for_write_batch(1, 12, 4);
        assert_eq!((one.writers, one.max_batch), (12, 1));
        let batched = GroupCommitConfig::for_write_batch(128, 12, 4);
        assert_eq!((batched.writers, batched.max_batch), (4, 128));
        let sqlite = batched.for_backend(crate::db::Backend::Sqlite);
        assert_eq!((sqlite.writers, sqlite.max_batch), (1, 128));
    }

    #[tokio::test]
    async fn requests_queued_behind_a_transaction_share_the_next_one() {
        let doubler = Doubler::default();
        let gc = GroupCommit::start("test", doubler.clone(), one_writer());
        let answers = futures::future::join_all((100..150).map(|i| gc.submit(i))).await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.expect("answer"), 2 * (100 + i as u32));
        }
        let batches = doubler.batches.lock().expect("lock").clone();
        assert_eq!(batches.iter().sum::<usize>(), 50, "{batches:?}");
        assert!(
            batches.len() <= 2,
            "50 requests queued at once took {batches:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_runs_its_items_alone_and_only_the_bad_one_fails() {
        let doubler = Doubler::default();
        let gc = GroupCommit::start("test", doubler.clone(), one_writer());
        let answers = futures::future::join_all([12, 13, 14].map(|i| gc.submit(i))).await;
        assert_eq!(answers[0].as_ref().expect("12"), &24);
        assert!(
            matches!(answers[1], Err(sqlx::Error::RowNotFound)),
            "{:?}",
            answers[1]
        );
        assert_eq!(answers[2].as_ref().expect("14"), &28);
        assert!(doubler.alone.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_worker_crashed_and_the_writer_goes_on() {
        let gc = GroupCommit::start("test", Doubler::default(), one_writer());
        let crashed = gc.submit(7).await;
        assert!(
            matches!(crashed, Err(sqlx::Error::WorkerCrashed)),
            "{crashed:?}"
        );
        assert_eq!(gc.submit(4).await.expect("after the panic"), 8);
    }
}
