//! Order service configuration: flags, or environment variables `ORDER_<FLAG>`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use order_saga_platform::{
    admission::AdmissionConfig,
    app::{ListenAddrs, ListenerTls},
    auth::AdminTokens,
    db::DbOptions,
    parse_duration,
    server::{ConnectionLimits, ServerLimits},
    tls::{KeyPairFiles, MutualTls, ServerTls},
};

use crate::{orchestrator::SagaConfig, recovery::RecoveryConfig};

/// Flags and environment variables of the `order` binary.
#[derive(Debug, Clone, Parser)]
#[command(name = "order", about = "The order-saga orchestrator service", version)]
pub struct OrderArgs {
    /// Address of the public listener (the order API).
    #[arg(long, env = "ORDER_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,
    /// Address of the admin listener (the admin API, bearer tokens).
    #[arg(
        long,
        env = "ORDER_ADMIN_LISTEN_ADDR",
        default_value = "127.0.0.1:50251"
    )]
    pub admin_listen_addr: SocketAddr,
    /// `sqlite:path` (embedded default) or `postgres://user@host:port/db` (created if missing).
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "sqlite://data/order.db"
    )]
    pub database_url: String,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "ORDER_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Connections of the read pool (PostgreSQL connections, or SQLite read-only WAL
    /// connections): order lookups, listings and history never wait for the saga writes'
    /// connections.
    #[arg(long, env = "ORDER_READ_DB_MAX_CONNECTIONS", default_value_t = 4)]
    pub read_db_max_connections: u32,
    /// Wait for a pooled connection before answering UNAVAILABLE.
    #[arg(long, env = "ORDER_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,
    /// The store's internal listener (`https://`: mutual TLS).
    #[arg(
        long,
        env = "ORDER_STORE_URL",
        default_value = "https://127.0.0.1:50152"
    )]
    pub store_url: String,
    /// Delivery's internal listener (`https://`: mutual TLS).
    #[arg(
        long,
        env = "ORDER_DELIVERY_URL",
        default_value = "https://127.0.0.1:50153"
    )]
    pub delivery_url: String,
    /// The cluster CA's certificate: participants must present a certificate it issued for
    /// their name (`store`, `delivery`).
    #[arg(long, env = "ORDER_INTERNAL_CA", default_value = "data/certs/ca.pem")]
    pub internal_ca: PathBuf,
    /// This service's client certificate, issued by the cluster CA for the name `order`.
    #[arg(
        long,
        env = "ORDER_INTERNAL_CERT",
        default_value = "data/certs/order.pem"
    )]
    pub internal_cert: PathBuf,
    /// The key of `internal_cert`.
    #[arg(
        long,
        env = "ORDER_INTERNAL_KEY",
        default_value = "data/certs/order.key"
    )]
    pub internal_key: PathBuf,
    /// A certificate to serve TLS on the public and admin listeners (plaintext without one).
    #[arg(long, env = "ORDER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert`.
    #[arg(long, env = "ORDER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A certificate for the admin listener alone (wins over `tls_cert` there), so operator
    /// tokens and the console's cookie never cross the network in the clear.
    #[arg(long, env = "ORDER_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The key of `admin_tls_cert`.
    #[arg(long, env = "ORDER_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// How long reservations are held; also how long transient assign failures are retried.
    #[arg(long, env = "ORDER_RESERVATION_TTL", default_value = "30s", value_parser = parse_duration)]
    pub reservation_ttl: Duration,
    /// How long an instance owns a saga between writes before another may take it over. With
    /// the recovery interval and a call timeout it must fit inside the reservation TTL, so a
    /// saga abandoned by a crash is taken over while its reservations still hold.
    #[arg(long, env = "ORDER_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Timeout of one call to a participant: longer than the participants' queue wait, so
    /// their busy answers (with a retry hint) arrive before it (checked at start-up).
    #[arg(long, env = "ORDER_CALL_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub call_timeout: Duration,
    /// How long start-up waits for the participants to tell their limits (the TTL bounds, the
    /// queue wait), which the settings are checked against. A participant that stays silent
    /// is checked in the background once it answers; a mismatch stops the service.
    #[arg(long, env = "ORDER_PARTICIPANT_CHECK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub participant_check_wait: Duration,
    /// Longest PlaceOrder waits for its saga (a shorter client deadline wins).
    #[arg(long, env = "ORDER_PLACE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub place_timeout: Duration,
    /// Pause between recovery claims of abandoned sagas.
    #[arg(long, env = "ORDER_RECOVERY_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub recovery_interval: Duration,
    /// How long saga history events (GetOrderHistory, `sagactl history`) are kept.
    #[arg(long, env = "ORDER_HISTORY_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub history_retention: Duration,
    /// Name of this instance in saga leases (default: host name, pid and a random suffix).
    #[arg(long, env = "ORDER_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Longest time a request may run.
    #[arg(long, env = "ORDER_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Requests the server runs at once, across all connections.
    #[arg(long, env = "ORDER_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Requests waiting for admission; beyond, the answer is UNAVAILABLE with a retry hint.
    #[arg(long, env = "ORDER_MAX_QUEUED", default_value_t = 4096)]
    pub max_queued: usize,
    /// Longest a request waits for admission, or for a saga slot, before it is answered busy.
    #[arg(long, env = "ORDER_QUEUE_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub queue_wait: Duration,
    /// The retry delay a busy answer's RetryInfo asks for.
    #[arg(long, env = "ORDER_RETRY_AFTER", default_value = "200ms", value_parser = parse_duration)]
    pub retry_after: Duration,
    /// Sagas this instance drives at once (requests, operator actions and recovery).
    #[arg(long, env = "ORDER_MAX_SAGAS", default_value_t = 256)]
    pub max_sagas: usize,
    /// Send the saga steps bound for one participant together, in `Batch` calls, one in flight
    /// per participant (`false`, the default: one unary call per step). See docs/design.md,
    /// "Group commit", for why batching is not the default yet.
    #[arg(long, env = "ORDER_BATCH_CALLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub batch_calls: bool,
    /// Most saga writes (creations, persists) one transaction carries. `1` (the default): a
    /// transaction of its own for each. More: group commit, four writers each running what
    /// queued up while their last transaction was in flight, one commit per batch.
    #[arg(long, env = "ORDER_WRITE_BATCH", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub write_batch: u16,
    /// Connections each listener holds open at once; more wait in the accept queue.
    #[arg(long, env = "ORDER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "ORDER_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024)]
    pub max_streams_per_connection: u32,
    /// Open health `Watch` streams per listener.
    #[arg(long, env = "ORDER_MAX_HEALTH_WATCHES", default_value_t = 64)]
    pub max_health_watches: usize,
    /// Bearer token of the operator role on the admin API (at least 16 characters). Without
    /// any token the admin API refuses every call.
    #[arg(long, env = "ORDER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token of the viewer role: the admin API's read-only methods only.
    #[arg(long, env = "ORDER_VIEWER_TOKEN", hide_env_values = true)]
    pub viewer_token: Option<String>,
}

/// Everything the order service needs besides its listeners (tests build this directly).
#[derive(Debug, Clone)]
pub struct OrderSettings {
    /// The client side of the internal API's mutual TLS.
    pub internal: MutualTls,
    /// TLS of the public and admin listeners.
    pub tls: ListenerTls,
    /// Database URL.
    pub database_url: String,
    /// Pool settings of the saga writes (and the claims of recovery and operators).
    pub db: DbOptions,
    /// Pool settings of the reads (lookups, listings, history).
    pub read_db: DbOptions,
    /// Store URL.
    pub store_url: String,
    /// Delivery URL.
    pub delivery_url: String,
    /// Saga timing.
    pub saga: SagaConfig,
    /// Most saga writes per transaction (1: a transaction per write).
    pub write_batch: usize,
    /// Timeout of one participant call.
    pub call_timeout: Duration,
    /// How long start-up waits for the participants' limits.
    pub participant_check_wait: Duration,
    /// Longest PlaceOrder waits.
    pub place_timeout: Duration,
    /// Recovery loop.
    pub recovery: RecoveryConfig,
    /// Lease owner name.
    pub instance_id: String,
    /// Server limits.
    pub limits: ServerLimits,
}

/// A unique default instance name.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "order".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

impl OrderSettings {
    /// Defaults for the given database, participants (`https://` URLs of their internal
    /// listeners) and client identity (used by tests and tools).
    pub fn new(
        database_url: impl Into<String>,
        store_url: impl Into<String>,
        delivery_url: impl Into<String>,
        internal: MutualTls,
    ) -> Self {
        Self {
            internal,
            tls: ListenerTls::default(),
            database_url: database_url.into(),
            db: DbOptions::default(),
            read_db: DbOptions {
                max_connections: 4,
                ..DbOptions::default()
            },
            store_url: store_url.into(),
            delivery_url: delivery_url.into(),
            saga: SagaConfig::default(),
            write_batch: 1,
            call_timeout: Duration::from_secs(2),
            participant_check_wait: Duration::from_secs(30),
            place_timeout: Duration::from_secs(30),
            recovery: RecoveryConfig::default(),
            instance_id: default_instance_id(),
            limits: ServerLimits::default(),
        }
    }
}

impl OrderArgs {
    /// The listener addresses (the order service has no internal API).
    pub fn listen_addrs(&self) -> ListenAddrs {
        ListenAddrs {
            public: self.listen_addr,
            internal: None,
            admin: self.admin_listen_addr,
        }
    }

    /// The settings these flags describe; fails on a token too weak to accept or a certificate
    /// that cannot be read.
    pub fn settings(&self) -> anyhow::Result<OrderSettings> {
        let internal = MutualTls::load(
            &self.internal_ca,
            &KeyPairFiles {
                cert: self.internal_cert.clone(),
                key: self.internal_key.clone(),
            },
        )?;
        let mut s = OrderSettings::new(
            &self.database_url,
            &self.store_url,
            &self.delivery_url,
            internal,
        );
        (s.tls.public, s.tls.admin) = ServerTls::for_listeners(
            (self.tls_cert.as_ref(), self.tls_key.as_ref()),
            (self.admin_tls_cert.as_ref(), self.admin_tls_key.as_ref()),
        )?;
        s.db.max_connections = self.db_max_connections;
        s.db.acquire_timeout = self.db_acquire_timeout;
        s.read_db.max_connections = self.read_db_max_connections;
        s.read_db.acquire_timeout = self.db_acquire_timeout;
        s.saga.reservation_ttl = self.reservation_ttl;
        s.saga.lease = self.lease;
        s.saga.max_sagas = self.max_sagas;
        s.saga.batch_calls = self.batch_calls;
        s.write_batch = usize::from(self.write_batch);
        s.call_timeout = self.call_timeout;
        s.participant_check_wait = self.participant_check_wait;
        s.place_timeout = self.place_timeout;
        s.recovery.interval = self.recovery_interval;
        s.recovery.history_retention = self.history_retention;
        if let Some(id) = &self.instance_id {
            s.instance_id = id.clone();
        }
        s.limits = ServerLimits {
            request_timeout: self.request_timeout,
            admission: AdmissionConfig {
                max_in_flight: self.max_in_flight,
                max_queued: self.max_queued,
                queue_wait: self.queue_wait,
                retry_after: self.retry_after,
                max_per_second: None,
            },
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
            ..ServerLimits::default()
        };
        s.validate().map_err(anyhow::Error::msg)?;
        Ok(s)
    }
}

impl OrderSettings {
    /// Checks that the timings fit together; the error names the settings and says why. (What
    /// depends on the participants' limits is checked against them at start-up, see
    /// [`OrderSettings::check_participant`].)
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.saga;
        if self.call_timeout >= s.reservation_ttl {
            return Err(format!(
                "ORDER_CALL_TIMEOUT ({:?}) must be shorter than ORDER_RESERVATION_TTL ({:?})",
                self.call_timeout, s.reservation_ttl
            ));
        }
        let recovered_by = s.lease + self.recovery.interval + self.call_timeout;
        if recovered_by >= s.reservation_ttl {
            return Err(format!(
                "ORDER_LEASE ({:?}) + ORDER_RECOVERY_INTERVAL ({:?}) + ORDER_CALL_TIMEOUT ({:?}) \
                 must be shorter than ORDER_RESERVATION_TTL ({:?}): a saga abandoned by a crash \
                 must be taken over while its reservations still hold",
                s.lease, self.recovery.interval, self.call_timeout, s.reservation_ttl
            ));
        }
        if self.place_timeout >= self.limits.request_timeout {
            return Err(format!(
                "ORDER_PLACE_TIMEOUT ({:?}) must be shorter than ORDER_REQUEST_TIMEOUT ({:?}): \
                 PlaceOrder answers before the server cuts the request off",
                self.place_timeout, self.limits.request_timeout
            ));
        }
        self.limits.validate()
    }

    /// Checks these settings against a participant's limits (`GetLimits`): the reservation TTL
    /// must lie within its bounds (else every reserve is refused and every order fails), and a
    /// call must outlast its queue wait (else its busy answers never arrive).
    pub fn check_participant(
        &self,
        name: &str,
        min_ttl: Duration,
        max_ttl: Duration,
        queue_wait: Duration,
    ) -> Result<(), String> {
        let ttl = self.saga.reservation_ttl;
        if ttl < min_ttl || ttl > max_ttl {
            return Err(format!(
                "ORDER_RESERVATION_TTL ({ttl:?}) is outside the {name} service's bounds \
                 ({min_ttl:?} to {max_ttl:?}): every reserve would be refused"
            ));
        }
        if self.call_timeout <= queue_wait {
            return Err(format!(
                "ORDER_CALL_TIMEOUT ({:?}) must be longer than the {name} service's queue wait \
                 ({queue_wait:?}), or its busy answers never arrive",
                self.call_timeout
            ));
        }
        Ok(())
    }
}
