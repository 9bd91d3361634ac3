//! The cluster a benchmark runs against: its own release binaries on fresh databases, or a
//! running cluster given by URL.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use order_saga_platform::tls::{ClusterCa, KeyPairFiles, MutualTls};
use order_saga_testkit::{
    invariants::DbUrls,
    pg::free_port,
    procs::{healthy, identity_env},
};
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
    /// Its public listener.
    pub url: String,
    /// Its admin listener.
    pub admin_url: String,
    /// Its internal listener (participants: `https://`, mutual TLS).
    pub internal_url: Option<String>,
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
    /// The cluster CA's certificates (`ca.pem`, `<service>.pem`, `<service>.key`).
    pub cert_dir: PathBuf,
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
        let pool = |name: &str| {
            POOLS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(16, |(_, size)| *size)
                .to_string()
        };
        let cert_dir = dir.join("certs");
        ClusterCa::generate("bench cluster CA")?
            .write(&cert_dir, &["order", "store", "delivery"])?;
        let admin_token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let mut common = BTreeMap::from([
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ]);
        for name in ["order", "store", "delivery"] {
            common.insert(
                format!("{}_ADMIN_TOKEN", name.to_uppercase()),
                admin_token.clone(),
            );
            common.extend(identity_env(&cert_dir, name));
        }
        // Public, admin and (participants) internal addresses of each service.
        let mut specs = Vec::new();
        let mut internal: BTreeMap<&str, String> = BTreeMap::new();
        for (name, prefix, db) in [
            ("store", "STORE", &urls.store),
            ("delivery", "DELIVERY", &urls.delivery),
            ("order", "ORDER", &urls.order),
        ] {
            let mut env = common.clone();
            let mut listen = |var: &str| -> anyhow::Result<String> {
                let addr = format!("127.0.0.1:{}", free_port()?);
                env.insert(format!("{prefix}_{var}"), addr.clone());
                Ok(addr)
            };
            let public = listen("LISTEN_ADDR")?;
            let admin = listen("ADMIN_LISTEN_ADDR")?;
            let internal_url = if name == "order" {
                env.insert("ORDER_STORE_URL".into(), internal["store"].clone());
                env.insert("ORDER_DELIVERY_URL".into(), internal["delivery"].clone());
                env.insert("ORDER_INSTANCE_ID".into(), "bench".into());
                None
            } else {
                let url = format!("https://{}", listen("INTERNAL_LISTEN_ADDR")?);
                internal.insert(name, url.clone());
                Some(url)
            };
            env.insert(format!("{prefix}_DATABASE_URL"), db.clone());
            env.insert(format!("{prefix}_DB_MAX_CONNECTIONS"), pool(name));
            if name != "order" {
                // The harness measures ordering (bench) and input handling (fuzz), not the
                // public read budget (tests/e2e/tests/flood.rs does): at its default of 100/s
                // the fuzzer's public pairs alone would take minutes each.
                env.insert(format!("{prefix}_PUBLIC_MAX_PER_SECOND"), "100000".into());
            }
            specs.push((
                name,
                env,
                format!("http://{public}"),
                format!("http://{admin}"),
                internal_url,
            ));
        }

        let mut services = Vec::new();
        for (name, env, url, admin_url, internal_url) in specs {
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
            services.push(Service {
                name,
                url,
                admin_url,
                internal_url,
                child,
            });
        }
        services.rotate_right(1); // order first
        Ok(Self {
            services,
            urls,
            admin_token,
            cert_dir,
        })
    }

    fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The public URL of service `name`.
    pub fn url(&self, name: &str) -> String {
        self.service(name)
            .map(|s| s.url.clone())
            .unwrap_or_default()
    }

    /// The admin URL of service `name`.
    pub fn admin_url(&self, name: &str) -> String {
        self.service(name)
            .map(|s| s.admin_url.clone())
            .unwrap_or_default()
    }

    /// The internal URL of participant `name`.
    pub fn internal_url(&self, name: &str) -> Option<String> {
        self.service(name).and_then(|s| s.internal_url.clone())
    }

    /// The identity `name` (`order`, `store`, `delivery`) as a client of the internal API.
    pub fn identity(&self, name: &str) -> anyhow::Result<MutualTls> {
        MutualTls::load(
            &self.cert_dir.join("ca.pem"),
            &KeyPairFiles::in_dir(&self.cert_dir, name),
        )
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
