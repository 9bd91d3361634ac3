//! Database access for both backends through sqlx's `Any` driver.
//!
//! Every service keeps one schema written in the SQL that PostgreSQL and SQLite share, and one
//! set of queries. The few places where the dialects must differ (the database clock, row locks
//! with `SKIP LOCKED`) are the methods of [`Backend`], so they cannot drift apart unnoticed.
//! Timestamps are stored as `BIGINT` milliseconds since the Unix epoch, taken from the
//! **database** clock ([`Backend::now_ms`]); the application clock is never compared with them.

use std::{str::FromStr, sync::Once, time::Duration};

use sqlx::{
    AnyPool, ConnectOptions, Connection, Executor,
    any::AnyPoolOptions,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection},
};

/// SQLite's `synchronous` setting: `FULL`, so a commit in WAL mode is on disk before it is
/// acknowledged (`NORMAL` can lose the last commits on power loss: a `PLACED` answer, or an
/// assignment, so that a packet is handed out twice).
pub const SQLITE_SYNCHRONOUS: &str = "FULL";

/// What every SQLite connection runs first. `analysis_limit` bounds `ANALYZE` (which the
/// participants run after adding units) to a sample of each index, as PostgreSQL's does;
/// otherwise it reads every row, and each restock would cost time in proportion to the table.
static SQLITE_PRAGMAS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {SQLITE_SYNCHRONOUS}; \
         PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA analysis_limit = 1000;"
    )
});

/// What every PostgreSQL connection runs first. No JIT: every statement here touches a
/// handful of rows, but the generic plan of a set statement (`reservation::engine::set`) is
/// costed for the whole table its join could reach, above `jit_above_cost`, so PostgreSQL
/// compiled it on every execution: 50 ms of a 53 ms claim of three units, with 400,000 units
/// per participant.
const POSTGRES_SETTINGS: &str = "SET jit = off";

/// Which database engine a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: the production backend.
    Postgres,
    /// SQLite: the embedded default; one writer at a time.
    Sqlite,
}

impl Backend {
    /// Detects the backend from a database URL.
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }

    /// SQL expression for the database clock in Unix milliseconds.
    ///
    /// PostgreSQL uses `clock_timestamp()` rather than `now()` so that a statement which waited
    /// for a row lock judges expiry at the moment it runs, not when its transaction began.
    pub fn now_ms(self) -> &'static str {
        match self {
            Self::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// Suffix for a `SELECT` that picks a row to claim: skip rows other claimants have locked.
    /// SQLite serialises writers, so it needs no row lock.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Self::Postgres => "FOR UPDATE SKIP LOCKED",
            Self::Sqlite => "",
        }
    }

    /// Suffix for a `SELECT` that locks the rows it reads until the transaction ends, to
    /// serialise with other writers of the same row. SQLite serialises writers already.
    pub fn for_update(self) -> &'static str {
        match self {
            Self::Postgres => "FOR UPDATE",
            Self::Sqlite => "",
        }
    }

    /// Substitutes `{now}`, `{now_once}`, `{skip_locked}` and `{for_update}` in a query
    /// template.
    ///
    /// `{now_once}` is the same clock read once per statement (a scalar subquery, an InitPlan on
    /// PostgreSQL). `clock_timestamp()` is volatile: in a `WHERE` it is evaluated row by row
    /// and can never bound an index scan, so `updated_at <= {now} - $1` reads the whole index
    /// (95 ms on 200,000 assigned units, growing with the table) where `{now_once}` reads none
    /// (0.04 ms). Background sweeps and recovery use it: judged against the moment their
    /// statement started, they only ever take less.
    pub fn sql(self, template: &str) -> String {
        template
            .replace("{now_once}", &format!("(SELECT {})", self.now_ms()))
            .replace("{now}", self.now_ms())
            .replace("{skip_locked}", self.skip_locked())
            .replace("{for_update}", self.for_update())
    }
}

/// Runs a transaction's `work` on a task of its own, so that it completes even when the
/// caller's future is dropped.
///
/// A request's future is dropped whenever its client cancels or its deadline passes, at any
/// `.await`. Dropped while `begin()` waits for the server's answer, sqlx (0.9) returns the
/// connection to the pool with the server still **inside** the transaction: its rollback guard
/// does nothing until the begin has completed. The next caller's autocommit writes on that
/// connection then join the orphan transaction: acknowledged, invisible to every other
/// connection, and lost when the connection closes (an assign the orchestrator was told
/// succeeded, for instance). Every transaction that a request starts therefore runs detached
/// from the request; the request only waits for its result. A panic in `work` is re-raised
/// here; a task cancelled by a shutting-down runtime reports [`sqlx::Error::PoolClosed`].
pub async fn detached<T, E>(
    work: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    use tracing::Instrument;
    match tokio::spawn(work.instrument(tracing::Span::current())).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(sqlx::Error::PoolClosed.into()),
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Connections in the pool (SQLite always uses one: it has a single writer).
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing `UNAVAILABLE`.
    pub acquire_timeout: Duration,
    /// How long start-up keeps retrying when the database is not reachable yet.
    pub connect_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(60),
        }
    }
}

/// Errors from connecting and migrating.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL scheme is neither `postgres://` nor `sqlite:`.
    #[error("unsupported database URL: use postgres://... or sqlite:path")]
    UnsupportedUrl,
    /// The database name in a PostgreSQL URL cannot be created safely.
    #[error("invalid database name {0:?}: use letters, digits and '_'")]
    InvalidName(String),
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// Running the embedded migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A connection pool and the backend it speaks.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

static DRIVERS: Once = Once::new();

impl Db {
    /// Connects to `url`, creating the database if it is missing, and runs `migrator`.
    ///
    /// Retries for up to [`DbOptions::connect_timeout`] while the server is unreachable, so a
    /// service started alongside its database (compose, `make run`) waits for it.
    pub async fn connect(
        url: &str,
        options: &DbOptions,
        migrator: &'static Migrator,
    ) -> Result<Self, DbError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::from_url(url)?;
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut delay = Duration::from_millis(100);
        let db = loop {
            match Self::try_connect(url, backend, options).await {
                Ok(db) => break db,
                Err(DbError::Connect(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "database not reachable yet, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        };
        migrator.run(&db.pool).await?;
        Ok(db)
    }

    /// A second pool on the database at `url` (already created and migrated by
    /// [`Db::connect`]) for reads that must not compete with the writes for connections: the
    /// participants' public catalogue. On PostgreSQL, `options.max_connections` connections of
    /// its own; on SQLite, that many read-only connections, which in WAL mode never wait for
    /// the writer nor make it wait.
    pub async fn connect_reader(url: &str, options: &DbOptions) -> Result<Self, DbError> {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Postgres => url.to_owned(),
            Backend::Sqlite => {
                let normalised = sqlite_url(url).map_err(DbError::Connect)?;
                normalised.replace("mode=rwc", "mode=ro")
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            // No liveness ping on every acquire (a round trip each): a connection that died
            // fails its next statement, which is classified retryable like any outage.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            conn.execute("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
                                .await?
                        }
                        Backend::Postgres => conn.execute(POSTGRES_SETTINGS).await?,
                    };
                    Ok(())
                })
            })
            .connect_lazy(&url)
            .map_err(DbError::Connect)?;
        Ok(Self { pool, backend })
    }

    async fn try_connect(
        url: &str,
        backend: Backend,
        options: &DbOptions,
    ) -> Result<Self, DbError> {
        let url = match backend {
            Backend::Postgres => {
                ensure_postgres_database(url).await?;
                url.to_owned()
            }
            Backend::Sqlite => sqlite_url(url).map_err(DbError::Connect)?,
        };
        let max = match backend {
            Backend::Postgres => options.max_connections,
            Backend::Sqlite => 1,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(options.acquire_timeout)
            // No liveness ping on every acquire (a round trip each): a connection that died
            // fails its next statement, which is classified retryable like any outage.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => conn.execute(SQLITE_PRAGMAS.as_str()).await?,
                        Backend::Postgres => conn.execute(POSTGRES_SETTINGS).await?,
                    };
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(DbError::Connect)?;
        Ok(Self { pool, backend })
    }

    /// The pool; pass `db.pool()` (or a transaction from it) to repository functions.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend this pool speaks.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Shorthand for [`Backend::sql`].
    pub fn sql(&self, template: &str) -> String {
        self.backend.sql(template)
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Normalises a SQLite URL: creates the parent directory and asks for create-if-missing mode.
fn sqlite_url(url: &str) -> Result<String, sqlx::Error> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    if !params.iter().any(|p| p.starts_with("mode=")) {
        params.push("mode=rwc");
    }
    Ok(format!("sqlite://{path}?{}", params.join("&")))
}

/// Creates the database named in a PostgreSQL URL when it does not exist yet.
async fn ensure_postgres_database(url: &str) -> Result<(), DbError> {
    let options = PgConnectOptions::from_str(url).map_err(DbError::Connect)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::InvalidName(name));
    }
    // Try the target first: the common case is that it exists.
    if let Ok(conn) = options.connect().await {
        let _ = conn.close().await;
        return Ok(());
    }
    let mut admin: PgConnection = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(DbError::Connect)?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await
        .map_err(DbError::Connect)?;
    if exists.is_none() {
        // The name was checked above, so quoting it is enough.
        let create = format!("CREATE DATABASE \"{name}\"");
        match admin.execute(sqlx::AssertSqlSafe(create)).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // 42P04 duplicate_database: another instance created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
            Err(e) => return Err(DbError::Connect(e)),
        }
    }
    let _ = admin.close().await;
    Ok(())
}

/// True when `err` is a unique-constraint violation (a second claimant, a replayed key).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// True when `err` means the database is unreachable or overloaded rather than that the request
/// was wrong: callers answer `UNAVAILABLE`, which clients may retry.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(e) => {
            let code = e.code().unwrap_or_default();
            // PostgreSQL SQLSTATEs (always five characters): 08 connection exception; 57P0x
            // admin/crash shutdown, cannot connect now; 53 insufficient resources; 40001/40P01
            // serialization failure/deadlock (retryable).
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
                || sqlite_busy(&code)
        }
        _ => false,
    }
}

/// True for SQLite's `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6), including their extended codes
/// (`SQLITE_BUSY_RECOVERY` 261, `SQLITE_BUSY_SNAPSHOT` 517, `SQLITE_BUSY_TIMEOUT` 773,
/// `SQLITE_LOCKED_SHAREDCACHE` 262, ...): sqlx reports the extended code, whose low byte is
/// the primary one. SQLite codes are decimal numbers of at most four digits, so no
/// PostgreSQL SQLSTATE (five characters) is read as one.
fn sqlite_busy(code: &str) -> bool {
    code.len() < 5 && code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Turns an unexpected database error into a status without leaking SQL or driver text:
/// `UNAVAILABLE` when the database is unreachable, otherwise `INTERNAL`. The error is logged.
pub fn status_from_db_error(err: &sqlx::Error, context: &str) -> tonic::Status {
    if is_unavailable(err) {
        tracing::warn!(error = %err, context, "database unavailable");
        tonic::Status::unavailable("database unavailable, retry later")
    } else {
        tracing::error!(error = %err, context, "database error");
        tonic::Status::internal("internal error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_busy_and_locked_are_recognised_with_their_extended_codes() {
        for code in ["5", "6", "261", "517", "773", "262", "518"] {
            assert!(sqlite_busy(code), "{code}");
        }
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_IOERR_WRITE, SQLITE_FULL, and PostgreSQL SQLSTATEs.
        for code in ["2067", "778", "13", "00005", "23505", "40001", "P0001", ""] {
            assert!(!sqlite_busy(code), "{code}");
        }
    }

    #[test]
    fn backend_is_detected_from_url() {
        assert_eq!(
            Backend::from_url("postgres://x/y").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("sqlite://data/a.db").ok(),
            Some(Backend::Sqlite)
        );
        assert!(Backend::from_url("mysql://x").is_err());
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = std::env::temp_dir().join(format!("os-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}/a.db", dir.display());
        let normalised = sqlite_url(&url).expect("url");
        assert!(normalised.ends_with("a.db?mode=rwc"), "{normalised}");
        assert!(dir.exists());
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!(
            sqlite_url("sqlite::memory:?mode=ro").expect("url"),
            "sqlite://:memory:?mode=ro"
        );
    }

    #[test]
    fn templates_get_the_dialect() {
        let sql = Backend::Sqlite.sql("SELECT {now} {skip_locked}");
        assert!(sql.contains("julianday") && !sql.contains("SKIP"));
        let sql = Backend::Postgres.sql("SELECT {now} {skip_locked}");
        assert!(sql.contains("clock_timestamp") && sql.contains("SKIP LOCKED"));
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let sql = backend.sql("WHERE a <= {now_once} - $1");
            assert_eq!(
                sql,
                format!("WHERE a <= (SELECT {}) - $1", backend.now_ms())
            );
        }
    }
}
