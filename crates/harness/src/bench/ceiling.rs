//! The machine's ceiling for comparison: the single-statement claim every reservation is built
//! on, `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`, with nothing around it.
//!
//! On PostgreSQL it runs through `pgbench` at the benchmark's client count (capped below
//! `max_connections`), on a fresh database with the participants' `units` shape, one durable
//! commit per claim. On SQLite it is the same claim in a loop on one connection (SQLite has one
//! writer), with the services' pragmas (`WAL`, `synchronous = FULL`).

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
}

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
    let rows = 400_000;
    {
        let mut c = AnyConnection::connect(&url).await?;
        c.execute(SCHEMA).await?;
        c.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO units SELECT 'u' || g, 'p', 'available', NULL, NULL, 0 \
             FROM generate_series(1, {rows}) g"
        )))
        .await?;
        c.execute(INDEX).await?;
        c.execute("VACUUM ANALYZE units").await?;
    }
    let script = dir.join("ceiling.sql");
    std::fs::write(
        &script,
        "UPDATE units SET status = 'reserved', order_id = 'o' || :client_id || '-' || random(), \
         expires_at = 1, updated_at = 1 WHERE unit_id = (SELECT unit_id FROM units \
         WHERE pool = 'p' AND status = 'available' LIMIT 1 FOR UPDATE SKIP LOCKED);\n",
    )?;
    let pgbench = order_saga_testkit::pg::find_bin()?.join("pgbench");
    let out = Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-j", "2"])
        .args(["-c", &clients.to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(&script)
        .arg(&url)
        .output()
        .context("running pgbench (installed with PostgreSQL)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::write(dir.join("ceiling.pgbench.txt"), &text)?;
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok());
    {
        let mut admin = AnyConnection::connect(pg_url).await?;
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
            )))
            .await;
    }
    let Some(tps) = tps else {
        bail!(
            "pgbench printed no tps: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(CeilingResult {
        method: "pgbench: UPDATE units ... WHERE unit_id = (SELECT ... FOR UPDATE SKIP LOCKED), \
                 one durable commit per claim"
            .into(),
        clients,
        claims_per_s: tps,
    })
}

/// Runs the claim in a loop on one SQLite connection for `duration`.
pub async fn sqlite(dir: &Path, duration: Duration) -> anyhow::Result<CeilingResult> {
    let path = dir.join("ceiling.db");
    let _ = std::fs::remove_file(&path);
    let mut c = AnyConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    c.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
        .await?;
    c.execute(SCHEMA).await?;
    c.execute(
        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200000) \
         INSERT INTO units SELECT 'u' || n, 'p', 'available', NULL, NULL, 0 FROM g",
    )
    .await?;
    c.execute(INDEX).await?;
    let started = std::time::Instant::now();
    let mut claims = 0u64;
    while started.elapsed() < duration {
        let claimed = sqlx::query(
            "UPDATE units SET status = 'reserved', order_id = ?, expires_at = 1, updated_at = 1 \
             WHERE unit_id = (SELECT unit_id FROM units WHERE pool = 'p' \
             AND status = 'available' LIMIT 1)",
        )
        .bind(format!("o{claims}"))
        .execute(&mut c)
        .await?;
        claims += claimed.rows_affected();
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(c);
    let _ = std::fs::remove_file(&path);
    Ok(CeilingResult {
        method: "SQLite: the same claim statement in a loop on one connection (one writer), \
                 WAL, synchronous = FULL, one commit per claim"
            .into(),
        clients: 1,
        claims_per_s: claims as f64 / elapsed.max(1e-9),
    })
}
