//! Test support: a fresh database per test on either backend.
//!
//! PostgreSQL is found through `DATABASE_URL` (any database on the server; the admin connection
//! uses it to create throwaway databases), else `postgres://postgres@127.0.0.1:5432/postgres`.
//! `make test` starts a throwaway cluster when neither answers. A missing PostgreSQL is a test
//! failure with a clear message, never a silent skip.

use std::str::FromStr;

use sqlx::{ConnectOptions, Connection, Executor, postgres::PgConnectOptions};

/// How long an idle PostgreSQL backend may keep its statistics before publishing them: it
/// flushes them when it goes idle, but at most once a second (`PGSTAT_MIN_INTERVAL`), so
/// counts read sooner can miss the transactions a test just ran.
const STATS_PUBLISHED_WITHIN: std::time::Duration = std::time::Duration::from_millis(1500);

/// One of the server's statistics about `db`, once every backend has published what it did
/// (`sql` returns one `BIGINT`; `arg`, if any, is its `$1`).
async fn published_stat(db: &crate::db::Db, sql: &'static str, arg: Option<&str>) -> i64 {
    tokio::time::sleep(STATS_PUBLISHED_WITHIN).await;
    let mut conn = db.pool().acquire().await.expect("connection");
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await
        .expect("clear snapshot");
    let query = sqlx::query_scalar(sql);
    let query = match arg {
        Some(arg) => query.bind(arg),
        None => query,
    };
    query.fetch_one(&mut *conn).await.expect("statistics")
}

/// Transactions committed in `db` so far (`None` on SQLite): how a test sees that writes
/// queued together shared commits. Each call waits for the counts to be published (about 1.5
/// s), and itself commits two read transactions that a later call counts.
pub async fn commits(db: &crate::db::Db) -> Option<i64> {
    if db.backend() != crate::db::Backend::Postgres {
        return None;
    }
    let sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    Some(published_stat(db, sql, None).await)
}

/// Whole-table scans of `table` in PostgreSQL database `db` so far: how a test sees that a
/// statement found its rows through an index.
pub async fn seq_scans(db: &crate::db::Db, table: &str) -> i64 {
    let sql = "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1";
    published_stat(db, sql, Some(table)).await
}

/// The backends every database test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// A SQLite file in a fresh temporary directory.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// Prefix of every database the tests create (`tests/with-postgres.sh` drops them afterwards).
pub const TEST_DB_PREFIX: &str = "ostest_";

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates a fresh, empty database and returns its URL. `label` makes names readable in
/// `\l` when debugging (letters, digits and `_`).
pub async fn fresh_database_url(backend: TestBackend, label: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("{TEST_DB_PREFIX}{label}_{}", &id[..12]);
    match backend {
        TestBackend::Sqlite => {
            let dir = std::env::temp_dir().join("order-saga-tests");
            format!("sqlite://{}/{name}.db", dir.display())
        }
        TestBackend::Postgres => {
            let admin_url = postgres_admin_url();
            let options = PgConnectOptions::from_str(&admin_url).unwrap_or_else(|e| {
                panic!("DATABASE_URL {admin_url:?} is not a PostgreSQL URL: {e}")
            });
            let mut conn = options.clone().connect().await.unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is required for the test suite and is not reachable at \
                     {admin_url:?}: {e}. Run the tests with `make test` (which starts a \
                     throwaway cluster) or set DATABASE_URL."
                )
            });
            conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .await
                .expect("create test database");
            let _ = conn.close().await;
            let url = options.database(&name).to_url_lossy();
            url.to_string()
        }
    }
}

/// Declares one `#[tokio::test]` per backend that calls `$body(backend)`.
///
/// ```ignore
/// both_backends!(reserve_is_idempotent, |backend| async move { ... });
/// ```
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                ($body)($crate::testing::TestBackend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                ($body)($crate::testing::TestBackend::Postgres).await
            }
        }
    };
}

/// A span exporter that keeps every exported span in memory, for tests of what is traced.
#[derive(Debug, Clone, Default)]
pub struct CollectedSpans(
    std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>,
);

impl CollectedSpans {
    /// Every span exported so far.
    pub fn spans(&self) -> Vec<opentelemetry_sdk::trace::SpanData> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl opentelemetry_sdk::trace::SpanExporter for CollectedSpans {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(batch);
        Ok(())
    }
}
