//! The application shell both participant services run: configuration, database, the
//! reservation gRPC service, the sweeper task, and the server. A participant service adds its
//! own catalogue/admin services to [`Participant::routes_mut`] and runs it.

use std::{future::Future, net::SocketAddr, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};
use order_saga_platform::{
    admission::AdmissionConfig,
    auth::AdminTokens,
    db::{Db, DbOptions},
    parse_duration,
    server::{ServerLimits, base_routes, serve_with_task},
};
use order_saga_proto::reservation::v1::reservation_service_server::ReservationServiceServer;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic_health::server::HealthReporter;

use crate::{Engine, EngineConfig, MIGRATOR, SweeperConfig, grpc::ReservationGrpc, sweeper};

/// Configuration of a participant, from flags or environment variables named
/// `<PREFIX>_<FLAG>` (for the store: `STORE_LISTEN_ADDR`, `STORE_DATABASE_URL`, ...).
#[derive(Debug, Clone, Parser)]
pub struct ParticipantArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen_addr: SocketAddr,
    /// `sqlite:path` (embedded default) or `postgres://user@host:port/db` (created if missing).
    #[arg(long)]
    pub database_url: String,
    /// Connections in the PostgreSQL pool.
    #[arg(long, default_value_t = 16)]
    pub db_max_connections: u32,
    /// Wait for a pooled connection before answering UNAVAILABLE.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
    /// Pause between sweeps of expired reservations.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sweep_interval: Duration,
    /// How long the record of an order's claim and release is kept; at least the max TTL.
    #[arg(long, default_value = "7days", value_parser = parse_duration)]
    pub claim_retention: Duration,
    /// Longest reservation TTL a caller may ask for.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub max_ttl: Duration,
    /// Longest time a request may run.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Requests the server runs at once, across all connections.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Requests waiting for admission; beyond, the answer is UNAVAILABLE with a retry hint.
    #[arg(long, default_value_t = 4096)]
    pub max_queued: usize,
    /// Longest a request waits for admission before it is answered busy.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub queue_wait: Duration,
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
    /// given defaults for the address and database.
    pub fn parse_with_env_prefix(
        name: &'static str,
        prefix: &'static str,
        default_addr: &'static str,
        default_db: &'static str,
    ) -> Self {
        let command = Self::command()
            .name(name)
            .mut_args(|arg| {
                let var = format!("{prefix}_{}", arg.get_id().as_str().to_uppercase());
                // Leaked once at start-up: clap keeps &'static names.
                arg.env(&*Box::leak(var.into_boxed_str()))
            })
            .mut_arg("listen_addr", |a| a.default_value(default_addr))
            .mut_arg("database_url", |a| a.default_value(default_db));
        let matches = command.get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Settings for [`Participant::build`], keeping the address; fails on a token too weak to
    /// accept.
    pub fn settings(&self) -> anyhow::Result<ParticipantSettings> {
        Ok(ParticipantSettings {
            database_url: self.database_url.clone(),
            db: DbOptions {
                max_connections: self.db_max_connections,
                acquire_timeout: self.db_acquire_timeout,
                ..DbOptions::default()
            },
            sweeper: SweeperConfig {
                interval: self.sweep_interval,
                // A shorter retention could forget a tombstone while a reserve may still come.
                claim_retention: self.claim_retention.max(self.max_ttl),
                ..SweeperConfig::default()
            },
            limits: ServerLimits {
                request_timeout: self.request_timeout,
                admission: AdmissionConfig {
                    max_in_flight: self.max_in_flight,
                    max_queued: self.max_queued,
                    queue_wait: self.queue_wait,
                    retry_after: self.retry_after,
                },
                admin_tokens: AdminTokens::new(
                    self.admin_token.as_deref(),
                    self.viewer_token.as_deref(),
                )
                .map_err(anyhow::Error::msg)?,
            },
            max_ttl: self.max_ttl,
        })
    }
}

/// Everything a participant needs besides its listener (tests build this directly).
#[derive(Debug, Clone)]
pub struct ParticipantSettings {
    /// Database URL.
    pub database_url: String,
    /// Pool settings.
    pub db: DbOptions,
    /// Sweeper settings.
    pub sweeper: SweeperConfig,
    /// Server limits.
    pub limits: ServerLimits,
    /// Longest TTL a caller may ask for.
    pub max_ttl: Duration,
}

impl ParticipantSettings {
    /// Defaults for a database URL (used by tests and tools).
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            db: DbOptions::default(),
            sweeper: SweeperConfig::default(),
            limits: ServerLimits::default(),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// A participant application, built and ready to run.
pub struct Participant {
    engine: Engine,
    listener: TcpListener,
    routes: RoutesBuilder,
    health: HealthReporter,
    settings: ParticipantSettings,
}

impl Participant {
    /// Connects and migrates the database, binds `listener`, and registers health, reflection
    /// and the reservation service.
    pub async fn build(
        listener: TcpListener,
        settings: ParticipantSettings,
        unit_prefix: &'static str,
    ) -> anyhow::Result<Self> {
        let db = Db::connect(&settings.database_url, &settings.db, &MIGRATOR).await?;
        let config = EngineConfig {
            max_ttl: settings.max_ttl,
            ..EngineConfig::new(unit_prefix)
        };
        let engine = Engine::new(db, config);
        let (mut routes, health) = base_routes()?;
        routes.add_service(ReservationServiceServer::new(ReservationGrpc::new(
            engine.clone(),
        )));
        health
            .set_serving::<ReservationServiceServer<ReservationGrpc>>()
            .await;
        Ok(Self {
            engine,
            listener,
            routes,
            health,
            settings,
        })
    }

    /// The engine, for the service's own APIs.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Routes, to add the service's own gRPC services.
    pub fn routes_mut(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// The health reporter, to mark the service's own gRPC services serving.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the sweeper and the server until `shutdown` completes, then drains and closes the
    /// database pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "serving");
        let (engine, config) = (self.engine.clone(), self.settings.sweeper.clone());
        let served = serve_with_task(
            self.listener,
            self.routes,
            &self.settings.limits,
            shutdown,
            |stopping| sweeper::run(engine, config, stopping.wait()),
        )
        .await;
        self.engine.db().close().await;
        served?;
        Ok(())
    }
}
