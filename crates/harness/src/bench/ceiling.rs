//! The machine's ceiling for comparison: the single-statement claim every reservation is built
//! on, `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`, with nothing around it.
//!
//! On PostgreSQL it runs through `pgbench` at the benchmark's client count (capped below
//! `max_connections`), on a fresh database with the participants' `units` shape, one durable
//! commit per claim. On SQLite it is the same claim in a loop on one connection (SQLite has one
//! writer), with the services' pragmas (`WAL`, `synchronous = FULL`).
//!
//! Then the **batched ceiling**: the same claim [`BATCH`] times in one transaction, so one
//! durable commit serves many claims, which is what a group commit can reach at best. Each
//! claim of a batch picks one of [`BATCH_POOLS`] pools at random, as a batch of the uniform
//! workload does: on one pool, every claim's `SKIP LOCKED` scan would step over the rows the
//! other open batches hold, thousands of them, and measure that instead of the commit. It runs
//! with at most [`BATCH_CLIENTS`] clients: a group commit keeps few transactions open, and
//! here 64 open batches reach less than half of what 8 do (4,900 against 12,400 claims/s).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, bail};
use sqlx::{AnyConnection, Connection, Executor};

/// What the ceiling run measured.
#[derive(Debug, Clone)]
pub struct CeilingResult {
    /// How it was measured.
    pub method: String,
    /// Concurrent clients used.
    pub clients: u32,
    /// Claims per second.
    pub claims_per_s: f64,
    /// Claims per second with [`BATCH`] claims per transaction.
    pub batched_claims_per_s: f64,
}

/// Claims per transaction in the batched ceiling.
pub const BATCH: usize = 32;
/// Pools the batched ceiling's claims spread over (the uniform workload's 16 foods).
const BATCH_POOLS: u64 = 16;
/// Clients of the batched ceiling at most.
const BATCH_CLIENTS: u32 = 8;

/// Units to stock for a ceiling of `duration`: both runs together must never run out, or the
/// claims that find nothing would count as fast claims (a batched claim runs up to about
/// 25,000/s here).
fn units_for(duration: Duration) -> u64 {
    (duration.as_secs() * 60_000).max(400_000)
}

/// The claim, as pgbench runs it.
const PG_CLAIM: &str = "UPDATE units SET status = 'reserved', \
    order_id = 'o' || :client_id || '-' || random(), expires_at = 1, updated_at = 1 \
    WHERE unit_id = (SELECT unit_id FROM units WHERE pool = 'p' AND status = 'available' \
    LIMIT 1 FOR UPDATE SKIP LOCKED);\n";

const SCHEMA: &str = "CREATE TABLE units (
    unit_id TEXT PRIMARY KEY, pool TEXT NOT NULL, status TEXT NOT NULL,
    order_id TEXT, expires_at BIGINT, updated_at BIGINT NOT NULL)";
const INDEX: &str = "CREATE INDEX units_by_pool_status ON units (pool, status)";

/// Runs the claim through pgbench for `duration` with `clients` clients, on a fresh database
/// next to `pg_url`'s.
pub async fn postgres(
    pg_url: &str,
    clients: u32,
    duration: Duration,
    dir: &Path,
) -> anyhow::Result<CeilingResult> {
    let clients = clients.clamp(1, 64);
    let (server, _) = pg_url.rsplit_once('/').context("DATABASE_URL has no /db")?;
    let db = format!(
        "bench_ceiling_{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S")
    );
    let url = format!("{server}/{db}");
    {
        let mut admin = AnyConnection::connect(pg_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .await?;
    }
    let rows = units_for(duration);
    {
        let mut c = AnyConnection::connect(&url).await?;
        c.execute(SCHEMA).await?;
        c.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO units SELECT 'u' || g, 'p', 'available', NULL, NULL, 0 \
             FROM generate_series(1, {rows}) g"
        )))
        .await?;
        // The batched ceiling's pools, as many units again.
        c.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO units SELECT 'v' || g, 'b' || (g % {BATCH_POOLS} + 1), 'available', \
             NULL, NULL, 0 FROM generate_series(1, {rows}) g"
        )))
        .await?;
        c.execute(INDEX).await?;
        c.execute("VACUUM ANALYZE units").await?;
    }
    let single = pgbench(&url, PG_CLAIM, clients, duration, dir, "ceiling");
    let spread = format!(
        "\\set p random(1, {BATCH_POOLS})\n{}",
        PG_CLAIM.replace("pool = 'p'", "pool = 'b' || :p")
    );
    let batch = format!("BEGIN;\n{}COMMIT;\n", spread.repeat(BATCH));
    let batch_clients = clients.min(BATCH_CLIENTS);
    let batched = pgbench(
        &url,
        &batch,
        batch_clients,
        duration,
        dir,
        "ceiling-batched",
    );
    {
        let mut admin = AnyConnection::connect(pg_url).await?;
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .await;
    }
    Ok(CeilingResult {
        method: format!(
            "pgbench: UPDATE units ... WHERE unit_id = (SELECT ... FOR UPDATE SKIP LOCKED), \
             one durable commit per claim (batched: {BATCH} claims per commit, each in one of \
             {BATCH_POOLS} pools, {batch_clients} clients)"
        ),
        clients,
        claims_per_s: single?,
        batched_claims_per_s: batched? * BATCH as f64,
    })
}

/// Runs `script` through pgbench against `url`: transactions per second. Its output is kept
/// as `<name>.pgbench.txt` in `dir`.
fn pgbench(
    url: &str,
    script: &str,
    clients: u32,
    duration: Duration,
    dir: &Path,
    name: &str,
) -> anyhow::Result<f64> {
    let file = dir.join(format!("{name}.sql"));
    std::fs::write(&file, script)?;
    let pgbench = order_saga_testkit::pg::find_bin()?.join("pgbench");
    let out = Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-j", "2"])
        .args(["-c", &clients.to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(&file)
        .arg(url)
        .output()
        .context("running pgbench (installed with PostgreSQL)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::write(dir.join(format!("{name}.pgbench.txt")), &text)?;
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok());
    match tps {
        Some(tps) => Ok(tps),
        None => bail!(
            "pgbench printed no tps: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Runs the claim in a loop on one SQLite connection for `duration`.
pub async fn sqlite(dir: &Path, duration: Duration) -> anyhow::Result<CeilingResult> {
    let path = dir.join("ceiling.db");
    let _ = std::fs::remove_file(&path);
    let mut c = AnyConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    c.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .await?;
    c.execute(SCHEMA).await?;
    c.execute(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {}) \
         INSERT INTO units SELECT 'u' || n, 'p', 'available', NULL, NULL, 0 FROM g",
        units_for(duration)
    )))
    .await?;
    c.execute(INDEX).await?;
    let single = sqlite_claims(&mut c, duration, 1).await?;
    let batched = sqlite_claims(&mut c, duration, BATCH).await?;
    // Closing checkpoints the WAL; the files go either way (a report directory keeps only
    // what the report needs).
    let _ = c.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(CeilingResult {
        method: format!(
            "SQLite: the same claim statement in a loop on one connection (one writer), \
             WAL, synchronous = FULL, one commit per claim (batched: {BATCH} claims per commit)"
        ),
        clients: 1,
        claims_per_s: single,
        batched_claims_per_s: batched,
    })
}

/// Claims per second on `c` for `duration`, `per_commit` claims in each transaction.
async fn sqlite_claims(
    c: &mut AnyConnection,
    duration: Duration,
    per_commit: usize,
) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let mut claims = 0u64;
    while started.elapsed() < duration {
        let mut tx = c.begin().await?;
        for _ in 0..per_commit {
            let claimed = sqlx::query(
                "UPDATE units SET status = 'reserved', order_id = ?, expires_at = 1, \
                 updated_at = 1 WHERE unit_id = (SELECT unit_id FROM units WHERE pool = 'p' \
                 AND status = 'available' LIMIT 1)",
            )
            .bind(format!("o{claims}"))
            .execute(&mut *tx)
            .await?;
            claims += claimed.rows_affected();
        }
        tx.commit().await?;
    }
    Ok(claims as f64 / started.elapsed().as_secs_f64().max(1e-9))
}
