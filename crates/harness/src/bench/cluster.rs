//! The cluster a benchmark runs against: its own release binaries on fresh databases, or a
//! running cluster given by URL.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use order_saga_testkit::{invariants::DbUrls, pg::free_port, procs::healthy};
use tokio::process::{Child, Command};

/// Which database the services use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// PostgreSQL at `$DATABASE_URL` (found or started by `tests/with-postgres.sh`).
    Postgres,
    /// SQLite files under the results directory (the embedded default).
    Sqlite,
}

impl Backend {
    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// One service process.
#[derive(Debug)]
pub struct Service {
    /// `order`, `store` or `delivery`.
    pub name: &'static str,
    /// Its gRPC URL.
    pub url: String,
    child: Child,
}

impl Service {
    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A running cluster started by the benchmark.
#[derive(Debug)]
pub struct BenchCluster {
    /// The three services, order first.
    pub services: Vec<Service>,
    /// Their databases.
    pub urls: DbUrls,
    /// The operator token the three services accept (random per run).
    pub admin_token: String,
}

/// Sizes of the three connection pools (PostgreSQL's `max_connections` is 100 by default;
/// the checker and the ceiling run while these are idle).
const POOLS: [(&str, u32); 3] = [("order", 32), ("store", 24), ("delivery", 24)];

impl BenchCluster {
    /// Starts store, delivery and order from `bin_dir` on fresh databases, logging to `dir`.
    pub async fn start(
        bin_dir: &Path,
        backend: Backend,
        pg_url: Option<&str>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        for bin in ["store", "delivery", "order"] {
            if !bin_dir.join(bin).exists() {
                bail!(
                    "{} is missing: build the release binaries first (make bench does)",
                    bin_dir.join(bin).display()
                );
            }
        }
        let tag = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
        let url = |name: &str| -> anyhow::Result<String> {
            match backend {
                Backend::Sqlite => Ok(format!("sqlite://{}/{name}.db", dir.display())),
                Backend::Postgres => {
                    let base = pg_url.context("PostgreSQL needs DATABASE_URL")?;
                    let (server, _db) = base.rsplit_once('/').context("DATABASE_URL has no /db")?;
                    Ok(format!("{server}/bench_{tag}_{name}"))
                }
            }
        };
        let urls = DbUrls {
            order: url("order")?,
            store: url("store")?,
            delivery: url("delivery")?,
        };
        let ports = [free_port()?, free_port()?, free_port()?];
        let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let pool = |name: &str| {
            POOLS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(16, |(_, size)| *size)
                .to_string()
        };
        let admin_token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let common = BTreeMap::from([
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
            ("ORDER_ADMIN_TOKEN".to_owned(), admin_token.clone()),
            ("STORE_ADMIN_TOKEN".to_owned(), admin_token.clone()),
            ("DELIVERY_ADMIN_TOKEN".to_owned(), admin_token.clone()),
        ]);
        let mut specs: Vec<(&'static str, BTreeMap<String, String>, String)> = Vec::new();
        for (i, (name, prefix, db)) in [
            ("store", "STORE", &urls.store),
            ("delivery", "DELIVERY", &urls.delivery),
        ]
        .into_iter()
        .enumerate()
        {
            let mut env = common.clone();
            env.insert(format!("{prefix}_LISTEN_ADDR"), addr(i));
            env.insert(format!("{prefix}_DATABASE_URL"), db.clone());
            env.insert(format!("{prefix}_DB_MAX_CONNECTIONS"), pool(name));
            specs.push((name, env, format!("http://{}", addr(i))));
        }
        let mut env = common.clone();
        env.insert("ORDER_LISTEN_ADDR".into(), addr(2));
        env.insert("ORDER_DATABASE_URL".into(), urls.order.clone());
        env.insert("ORDER_DB_MAX_CONNECTIONS".into(), pool("order"));
        env.insert("ORDER_STORE_URL".into(), format!("http://{}", addr(0)));
        env.insert("ORDER_DELIVERY_URL".into(), format!("http://{}", addr(1)));
        env.insert("ORDER_INSTANCE_ID".into(), "bench".into());
        specs.push(("order", env, format!("http://{}", addr(2))));

        let mut services = Vec::new();
        for (name, env, url) in specs {
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let child = Command::new(bin_dir.join(name))
                .envs(env)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {name}"))?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !healthy(&url).await {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "{name} did not become healthy; see {}/{name}.log",
                        dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            services.push(Service { name, url, child });
        }
        services.rotate_right(1); // order first
        Ok(Self {
            services,
            urls,
            admin_token,
        })
    }

    /// The URL of service `name`.
    pub fn url(&self, name: &str) -> String {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.url.clone())
            .unwrap_or_default()
    }

    /// The services whose process has exited.
    pub fn exited(&mut self) -> Vec<String> {
        self.services
            .iter_mut()
            .filter_map(|s| match s.child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(format!("{} exited: {status}", s.name)),
                Err(e) => Some(format!("{}: cannot tell whether it runs: {e}", s.name)),
            })
            .collect()
    }

    /// Stops every service (SIGTERM, then waits).
    pub async fn stop(mut self) {
        for s in &mut self.services {
            if let Some(pid) = s.pid() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), s.child.wait()).await;
        }
    }
}

/// Where release binaries are: `target/release` of this workspace.
pub fn default_bin_dir() -> PathBuf {
    PathBuf::from("target/release")
}
