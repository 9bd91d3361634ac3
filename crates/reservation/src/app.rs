//! What both participant services run: configuration, database, the reservation gRPC service
//! on the internal listener (callable by the orchestrator only), the sweeper, all on the shared
//! application shell ([`order_saga_platform::app`]). A participant service adds its own
//! catalogue and admin services through [`Participant::app_mut`] and runs it.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};
use order_saga_platform::{
    admission::AdmissionConfig,
    app::{Audience, ListenAddrs, ListenerTls, Listeners, ServiceApp},
    auth::AdminTokens,
    db::{Db, DbOptions},
    parse_duration,
    server::{ConnectionLimits, ServerLimits},
    tls::{KeyPairFiles, MutualTls, ORCHESTRATOR, RequirePeer, ServerTls},
};
use order_saga_proto::reservation::v1::reservation_service_server::ReservationServiceServer;

use crate::{Engine, EngineConfig, MIGRATOR, SweeperConfig, grpc::ReservationGrpc, sweeper};
use order_saga_platform::group_commit::GroupCommitConfig;

/// Configuration of a participant, from flags or environment variables named
/// `<PREFIX>_<FLAG>` (for the store: `STORE_LISTEN_ADDR`, `STORE_DATABASE_URL`, ...).
#[derive(Debug, Clone, Parser)]
pub struct ParticipantArgs {
    /// Address of the public listener (catalogue and availability reads).
    #[arg(long)]
    pub listen_addr: SocketAddr,
    /// Address of the internal listener (the reservation API, mutual TLS, orchestrator only).
    #[arg(long)]
    pub internal_listen_addr: SocketAddr,
    /// Address of the admin listener (the admin API, bearer tokens).
    #[arg(long)]
    pub admin_listen_addr: SocketAddr,
    /// The cluster CA's certificate: the internal listener accepts only callers it issued a
    /// certificate to.
    #[arg(long)]
    pub internal_ca: PathBuf,
    /// This service's certificate on the internal listener (issued by the cluster CA for the
    /// service's name).
    #[arg(long)]
    pub internal_cert: PathBuf,
    /// The key of `internal_cert`.
    #[arg(long)]
    pub internal_key: PathBuf,
    /// A certificate to serve TLS on the public and admin listeners (plaintext without one).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A certificate for the admin listener alone (wins over `tls_cert` there), so operator
    /// tokens never cross the network in the clear even where the public listener stays
    /// plaintext behind a proxy.
    #[arg(long, requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The key of `admin_tls_cert`.
    #[arg(long, requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// `sqlite:path` (embedded default) or `postgres://user@host:port/db` (created if missing).
    #[arg(long)]
    pub database_url: String,
    /// Connections in the PostgreSQL pool of the orchestrator's calls and the sweeper.
    #[arg(long, default_value_t = 16)]
    pub db_max_connections: u32,
    /// Connections of the public catalogue's own read pool (PostgreSQL connections, or SQLite
    /// read-only WAL connections), so public reads never take a connection a reserve needs.
    #[arg(long, default_value_t = 4)]
    pub public_db_max_connections: u32,
    /// Wait for a pooled connection before answering UNAVAILABLE.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
    /// Pause between sweeps of expired reservations.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// How long the record of an order's claim and release is kept; at least the max TTL.
    #[arg(long, default_value = "7days", value_parser = parse_duration)]
    pub claim_retention: Duration,
    /// Assigned units older than this are retired: removed, and counted as `retired` in their
    /// pool (the store's delivered packets). `0s` keeps them forever (delivery's agents, whom
    /// a completed delivery frees instead).
    #[arg(long, value_parser = parse_duration)]
    pub assigned_retention: Duration,
    /// Longest reservation TTL a caller may ask for.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// Most reserves, assigns and releases one transaction carries. `1` (the default): a
    /// transaction of its own for each, as many at once as the pool has connections. More:
    /// group commit, one writer running what queued up while its last transaction was in
    /// flight, in arrival order, with one commit per batch (fewer commits per order; see
    /// docs/design.md, "Group commit", for why it is not the default yet).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub write_batch: u16,
    /// Longest time a request may run.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Requests the server runs at once, across all connections.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Requests waiting for admission; beyond, the answer is UNAVAILABLE with a retry hint.
    #[arg(long, default_value_t = 4096)]
    pub max_queued: usize,
    /// Longest a request waits for admission before it is answered busy (never longer than
    /// the caller's own deadline allows). The orchestrator's call timeout must be longer.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub queue_wait: Duration,
    /// Public catalogue requests the server runs at once: a small share, so no volume of
    /// public reads delays the orchestrator's calls (which have their own listener and queue).
    #[arg(long, default_value_t = 16)]
    pub public_max_in_flight: usize,
    /// Public catalogue requests waiting for admission; beyond, the answer is busy.
    #[arg(long, default_value_t = 1024)]
    pub public_max_queued: usize,
    /// Public catalogue requests admitted per second at most (the rest wait their turn, then
    /// are answered busy): callers that never wait for an answer cannot take the CPU the
    /// orchestrator's calls need. Sized for two cores running the dev build `make run` uses
    /// (each read costs about a millisecond of CPU there, client included): halved from 100
    /// when ordering got cheaper, because the same reads then took a larger share of what
    /// ordering could use (the flood test measured 74-80% of quiet ordering at 100/s); raise
    /// it with the hardware.
    #[arg(long, default_value_t = 50)]
    pub public_max_per_second: u32,
    /// Connections each listener holds open at once; more wait in the accept queue.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = 1024)]
    pub max_streams_per_connection: u32,
    /// Open health `Watch` streams per listener.
    #[arg(long, default_value_t = 64)]
    pub max_health_watches: usize,
    /// The retry delay a busy answer's RetryInfo asks for.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub retry_after: Duration,
    /// Bearer token of the operator role on the admin API (at least 16 characters). Without
    /// any token the admin API refuses every call.
    #[arg(long, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token of the viewer role: the admin API's read-only methods only.
    #[arg(long, hide_env_values = true)]
    pub viewer_token: Option<String>,
}

impl ParticipantArgs {
    /// Parses the process arguments, with environment variables `<prefix>_<FLAG>` and the
    /// given defaults for the addresses (public, internal, admin) and database. Certificates
    /// default to `data/certs/ca.pem`, `data/certs/<name>.pem` and `data/certs/<name>.key`
    /// (what `sagactl certs --dir data/certs` writes).
    pub fn parse_with_env_prefix(
        name: &'static str,
        prefix: &'static str,
        default_addrs: [&'static str; 3],
        default_db: &'static str,
        default_assigned_retention: &'static str,
    ) -> Self {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let command = Self::command()
            .name(name)
            .mut_args(|arg| {
                let var = format!("{prefix}_{}", arg.get_id().as_str().to_uppercase());
                // Leaked once at start-up: clap keeps &'static names.
                arg.env(&*Box::leak(var.into_boxed_str()))
            })
            .mut_arg("listen_addr", |a| {
                a.default_value(default_addrs[0]).required(false)
            })
            .mut_arg("internal_listen_addr", |a| {
                a.default_value(default_addrs[1]).required(false)
            })
            .mut_arg("admin_listen_addr", |a| {
                a.default_value(default_addrs[2]).required(false)
            })
            .mut_arg("internal_ca", |a| {
                a.default_value("data/certs/ca.pem").required(false)
            })
            .mut_arg("internal_cert", |a| {
                a.default_value(leak(format!("data/certs/{name}.pem")))
                    .required(false)
            })
            .mut_arg("internal_key", |a| {
                a.default_value(leak(format!("data/certs/{name}.key")))
                    .required(false)
            })
            .mut_arg("database_url", |a| {
                a.default_value(default_db).required(false)
            })
            .mut_arg("assigned_retention", |a| {
                a.default_value(default_assigned_retention).required(false)
            });
        let matches = command.get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The listener addresses.
    pub fn listen_addrs(&self) -> ListenAddrs {
        ListenAddrs {
            public: self.listen_addr,
            internal: Some(self.internal_listen_addr),
            admin: self.admin_listen_addr,
        }
    }

    /// Settings for [`Participant::build`]; fails on a token too weak to accept or a
    /// certificate that cannot be read.
    pub fn settings(&self) -> anyhow::Result<ParticipantSettings> {
        let (server_tls, admin_tls) = ServerTls::for_listeners(
            (self.tls_cert.as_ref(), self.tls_key.as_ref()),
            (self.admin_tls_cert.as_ref(), self.admin_tls_key.as_ref()),
        )?;
        let tls = ListenerTls {
            internal: Some(MutualTls::load(
                &self.internal_ca,
                &KeyPairFiles {
                    cert: self.internal_cert.clone(),
                    key: self.internal_key.clone(),
                },
            )?),
            public: server_tls,
            admin: admin_tls,
        };
        let admission = AdmissionConfig {
            max_in_flight: self.max_in_flight,
            max_queued: self.max_queued,
            queue_wait: self.queue_wait,
            retry_after: self.retry_after,
            max_per_second: None,
        };
        Ok(ParticipantSettings {
            tls,
            database_url: self.database_url.clone(),
            db: DbOptions {
                max_connections: self.db_max_connections,
                acquire_timeout: self.db_acquire_timeout,
                ..DbOptions::default()
            },
            public_db: DbOptions {
                max_connections: self.public_db_max_connections,
                acquire_timeout: self.db_acquire_timeout,
                ..DbOptions::default()
            },
            sweeper: SweeperConfig {
                interval: self.sweep_interval,
                // A shorter retention could forget a tombstone while a reserve may still come.
                claim_retention: self.claim_retention.max(self.max_ttl),
                assigned_retention: (!self.assigned_retention.is_zero())
                    .then_some(self.assigned_retention),
                ..SweeperConfig::default()
            },
            limits: ServerLimits {
                request_timeout: self.request_timeout,
                public_admission: Some(AdmissionConfig {
                    max_in_flight: self.public_max_in_flight,
                    max_queued: self.public_max_queued,
                    max_per_second: Some(self.public_max_per_second),
                    ..admission.clone()
                }),
                admission,
                admin_tokens: AdminTokens::new(
                    self.admin_token.as_deref(),
                    self.viewer_token.as_deref(),
                )
                .map_err(anyhow::Error::msg)?,
                connections: ConnectionLimits {
                    max_connections: self.max_connections,
                    max_streams_per_connection: self.max_streams_per_connection,
                    max_health_watches: self.max_health_watches,
                },
            },
            max_ttl: self.max_ttl,
            write_batch: usize::from(self.write_batch),
        })
    }
}

/// Everything a participant needs besides its listeners (tests build this directly).
#[derive(Debug, Clone)]
pub struct ParticipantSettings {
    /// TLS of each listener (the internal one is required).
    pub tls: ListenerTls,
    /// Database URL.
    pub database_url: String,
    /// Pool settings.
    pub db: DbOptions,
    /// The public catalogue's read pool.
    pub public_db: DbOptions,
    /// Sweeper settings.
    pub sweeper: SweeperConfig,
    /// Server limits.
    pub limits: ServerLimits,
    /// Longest TTL a caller may ask for.
    pub max_ttl: Duration,
    /// Most writes per transaction (1: a transaction per write).
    pub write_batch: usize,
}

impl ParticipantSettings {
    /// Defaults for a database URL and the internal listener's mutual TLS (used by tests and
    /// tools).
    pub fn for_database(database_url: impl Into<String>, internal: MutualTls) -> Self {
        Self {
            tls: ListenerTls {
                internal: Some(internal),
                ..ListenerTls::default()
            },
            database_url: database_url.into(),
            db: DbOptions::default(),
            public_db: DbOptions {
                max_connections: 4,
                ..DbOptions::default()
            },
            sweeper: SweeperConfig::default(),
            limits: ServerLimits {
                admission: AdmissionConfig {
                    queue_wait: Duration::from_secs(1),
                    ..AdmissionConfig::default()
                },
                public_admission: Some(AdmissionConfig {
                    max_in_flight: 16,
                    max_queued: 1024,
                    queue_wait: Duration::from_secs(1),
                    max_per_second: Some(50),
                    ..AdmissionConfig::default()
                }),
                ..ServerLimits::default()
            },
            max_ttl: Duration::from_secs(3600),
            write_batch: 1,
        }
    }
}

/// A participant application, built and ready to run.
pub struct Participant {
    engine: Engine,
    public_engine: Engine,
    app: ServiceApp,
    settings: ParticipantSettings,
}

impl Participant {
    /// Connects and migrates the database and serves the reservation API on the internal
    /// listener, to the orchestrator only.
    pub async fn build(
        name: &'static str,
        listeners: Listeners,
        settings: ParticipantSettings,
        unit_prefix: &'static str,
    ) -> anyhow::Result<Self> {
        let mut app = ServiceApp::new(
            name,
            listeners,
            settings.tls.clone(),
            settings.limits.clone(),
        )?;
        let db = Db::connect(&settings.database_url, &settings.db, &MIGRATOR).await?;
        let reads = Db::connect_reader(&settings.database_url, &settings.public_db).await?;
        // One writer when batched: the claims of two writers could skip each other's
        // locked units and answer sold out while stock is left (docs/design.md, "Group commit").
        let group_commit = GroupCommitConfig::for_write_batch(
            settings.write_batch,
            settings.db.max_connections,
            1,
        );
        let config = EngineConfig {
            max_ttl: settings.max_ttl,
            group_commit,
            ..EngineConfig::new(unit_prefix)
        };
        if config.max_ttl < config.min_ttl {
            anyhow::bail!(
                "the max TTL ({:?}) is shorter than the min TTL ({:?})",
                config.max_ttl,
                config.min_ttl
            );
        }
        let engine = Engine::new(db, config);
        let public_engine = engine.reading_from(reads);
        let queue_wait = settings.limits.admission.queue_wait;
        app.add(
            Audience::Internal,
            ReservationServiceServer::with_interceptor(
                ReservationGrpc::new(engine.clone(), queue_wait),
                RequirePeer::new(ORCHESTRATOR),
            ),
        )
        .await;
        Ok(Self {
            engine,
            public_engine,
            app,
            settings,
        })
    }

    /// The engine, for the orchestrator's reads (internal listener) and the admin API.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine whose counts reads go to the public read pool, for the public listener.
    pub fn public_engine(&self) -> &Engine {
        &self.public_engine
    }

    /// The application shell, to serve the service's own gRPC services
    /// ([`ServiceApp::add`]).
    pub fn app_mut(&mut self) -> &mut ServiceApp {
        &mut self.app
    }

    /// The bound addresses (useful with port 0).
    pub fn local_addrs(&self) -> ListenAddrs {
        self.app.local_addrs()
    }

    /// Runs the sweeper and the listeners until `shutdown` completes, then drains and closes
    /// the database pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (engine, config) = (self.engine.clone(), self.settings.sweeper.clone());
        let served = self
            .app
            .run(shutdown, |stopping| async move {
                tokio::join!(
                    sweeper::run(engine.clone(), config, stopping.clone().wait()),
                    sweeper::report_units(engine, stopping.wait()),
                );
            })
            .await;
        self.engine.db().close().await;
        self.public_engine.read_db().close().await;
        served
    }
}

#[cfg(test)]
mod tests {
    use order_saga_platform::tls::ClusterCa;

    use super::*;

    /// The arguments a participant needs, with its certificates in `dir`, plus `extra`.
    fn args(dir: &std::path::Path, extra: &[&str]) -> ParticipantArgs {
        let path = |f: &str| dir.join(f).display().to_string();
        let mut argv: Vec<String> = [
            "store",
            "--listen-addr",
            "127.0.0.1:0",
            "--internal-listen-addr",
            "127.0.0.1:0",
            "--admin-listen-addr",
            "127.0.0.1:0",
            "--database-url",
            "sqlite::memory:",
            "--assigned-retention",
            "0s",
        ]
        .map(str::to_owned)
        .into();
        for (flag, file) in [
            ("--internal-ca", "ca.pem"),
            ("--internal-cert", "store.pem"),
            ("--internal-key", "store.key"),
        ] {
            argv.extend([flag.to_owned(), path(file)]);
        }
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        ParticipantArgs::try_parse_from(argv).expect("arguments")
    }

    /// Compose serves TLS on the admin listener alone: operator tokens are encrypted while the
    /// public reads may stay plaintext behind a proxy. `--tls-cert` still covers both.
    #[test]
    fn an_admin_certificate_serves_tls_on_the_admin_listener_alone() {
        let dir = std::env::temp_dir().join(format!(
            "participant-args-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        ClusterCa::generate("args test CA")
            .expect("ca")
            .write(&dir, &["store"])
            .expect("write");
        let (cert, key) = (
            dir.join("store.pem").display().to_string(),
            dir.join("store.key").display().to_string(),
        );

        let plain = args(&dir, &[]).settings().expect("settings");
        assert!(plain.tls.public.is_none() && plain.tls.admin.is_none());

        let admin_only = args(&dir, &["--admin-tls-cert", &cert, "--admin-tls-key", &key])
            .settings()
            .expect("settings");
        assert!(
            admin_only.tls.public.is_none(),
            "the public listener stays plaintext"
        );
        assert!(
            admin_only.tls.admin.is_some(),
            "the admin listener serves TLS"
        );

        let both = args(&dir, &["--tls-cert", &cert, "--tls-key", &key])
            .settings()
            .expect("settings");
        assert!(both.tls.public.is_some() && both.tls.admin.is_some());

        let half = ParticipantArgs::try_parse_from(["store", "--admin-tls-cert", cert.as_str()]);
        assert!(half.is_err(), "a certificate without its key is refused");
        let _ = std::fs::remove_dir_all(dir);
    }
}
