//! A cluster of real service processes on a throwaway PostgreSQL, with a fault proxy on every
//! link: each order instance -> store, -> delivery, -> PostgreSQL; store and delivery ->
//! PostgreSQL. Processes can be killed (`SIGKILL`), paused (`SIGSTOP`/`SIGCONT`), restarted
//! (with or without failpoints), and PostgreSQL stopped and started.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use order_saga_platform::tls::{ClusterCa, KeyPairFiles, MutualTls};
use order_saga_proto::reservation::v1::reservation_service_client::ReservationServiceClient;
use order_saga_proto::{
    delivery::v1::{AddAgentsRequest, delivery_admin_service_client::DeliveryAdminServiceClient},
    order::v1::{
        order_admin_service_client::OrderAdminServiceClient,
        order_service_client::OrderServiceClient,
    },
    store::v1::{
        CreateFoodRequest, RestockRequest, store_admin_service_client::StoreAdminServiceClient,
    },
};
use order_saga_saga::BearerToken;
use tokio::process::{Child, Command};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{
    invariants::{DbUrls, Stock},
    pg::{PgCluster, free_port},
    proxy::{Fault, FaultProxy},
};

/// Where the service binaries are: `$ORDER_SAGA_BIN_DIR`, else the directory of the running
/// executable's parent `target/<profile>` (test binaries live in `target/<profile>/deps`).
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ORDER_SAGA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Is the gRPC server at `url` serving?
pub async fn healthy(url: &str) -> bool {
    let probe = async {
        let channel = Channel::from_shared(url.to_owned())
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?
            .into_inner()
            .status;
        Some(status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// One service process.
#[derive(Debug)]
pub struct Process {
    /// Name used in logs and reports (`store`, `order0`, ...).
    pub name: String,
    bin: PathBuf,
    env: BTreeMap<String, String>,
    log: PathBuf,
    /// URL of its public listener.
    pub url: String,
    /// URL of its admin listener.
    pub admin_url: String,
    /// URL of its internal listener (participants; `https://`, mutual TLS).
    pub internal_url: Option<String>,
    /// Prefix of its environment variables (`STORE`, `ORDER`, ...).
    prefix: String,
    child: Option<Child>,
    paused: bool,
}

impl Process {
    /// A process of `bin` whose listeners get fresh ports, set in its environment
    /// (`<prefix>_LISTEN_ADDR`, `_ADMIN_LISTEN_ADDR`, with `internal` `_INTERNAL_LISTEN_ADDR`).
    fn new(
        name: &str,
        prefix: &str,
        bin: PathBuf,
        mut env: BTreeMap<String, String>,
        log: PathBuf,
        internal: bool,
    ) -> anyhow::Result<Self> {
        let mut listen = |var: &str| -> anyhow::Result<u16> {
            let port = free_port()?;
            env.insert(format!("{prefix}_{var}"), format!("127.0.0.1:{port}"));
            Ok(port)
        };
        let public = listen("LISTEN_ADDR")?;
        let admin = listen("ADMIN_LISTEN_ADDR")?;
        let internal_url = if internal {
            let port = listen("INTERNAL_LISTEN_ADDR")?;
            Some(format!("https://127.0.0.1:{port}"))
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            bin,
            env,
            log,
            url: format!("http://127.0.0.1:{public}"),
            admin_url: format!("http://127.0.0.1:{admin}"),
            internal_url,
            prefix: prefix.to_owned(),
            child: None,
            paused: false,
        })
    }

    /// Another instance of the same service on fresh ports (same database and settings), e.g.
    /// a second store whose sweeper races this one's.
    pub fn sibling(&self, name: &str) -> anyhow::Result<Self> {
        let log = self.log.with_file_name(format!("{name}.log"));
        Self::new(
            name,
            &self.prefix,
            self.bin.clone(),
            self.env.clone(),
            log,
            self.internal_url.is_some(),
        )
    }

    /// Sets one environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_owned(), value.to_owned());
    }

    /// Starts the process; `failpoints` is its `FAILPOINTS` value (none when empty).
    pub async fn start(&mut self, failpoints: &str) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.envs(&self.env)
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if !failpoints.is_empty() {
            cmd.env("FAILPOINTS", failpoints);
        }
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?,
        );
        self.paused = false;
        Ok(())
    }

    /// Waits until the process answers health checks.
    pub async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if healthy(&self.url).await {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                bail!(
                    "{} exited ({status}) before becoming healthy; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} not healthy within {within:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts and waits for health.
    pub async fn start_healthy(&mut self, failpoints: &str) -> anyhow::Result<()> {
        self.start(failpoints).await?;
        self.wait_healthy(Duration::from_secs(60)).await
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process runs (paused counts as running).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// Waits for the process to exit by itself (a failpoint crash), up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        tokio::time::timeout(within, child.wait()).await.ok()?.ok()
    }

    /// `SIGKILL`: a real crash, no shutdown code runs.
    pub async fn kill(&mut self) {
        if self.paused {
            self.resume();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// `SIGSTOP`: the process freezes, its sockets stay open.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    /// `SIGCONT`.
    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `SIGTERM` and wait: a graceful stop.
    pub async fn stop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.signal("-TERM");
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Timing of a process cluster; short defaults so crash scenarios settle in seconds.
#[derive(Debug, Clone)]
pub struct ProcConfig {
    /// Directory of `store`, `delivery`, `order`.
    pub bin_dir: PathBuf,
    /// How many order instances share the order database.
    pub order_instances: usize,
    /// `ORDER_RESERVATION_TTL`.
    pub reservation_ttl: Duration,
    /// `ORDER_LEASE`.
    pub lease: Duration,
    /// `ORDER_RECOVERY_INTERVAL`.
    pub recovery_interval: Duration,
    /// `ORDER_CALL_TIMEOUT`.
    pub call_timeout: Duration,
    /// `*_SWEEP_INTERVAL`.
    pub sweep_interval: Duration,
    /// `ORDER_PLACE_TIMEOUT`.
    pub place_timeout: Duration,
    /// More environment for every process (for example `LOG_FORMAT=json`).
    pub env: Vec<(String, String)>,
}

impl Default for ProcConfig {
    fn default() -> Self {
        Self {
            bin_dir: default_bin_dir(),
            order_instances: 1,
            reservation_ttl: Duration::from_secs(10),
            lease: Duration::from_secs(2),
            recovery_interval: Duration::from_millis(200),
            call_timeout: Duration::from_secs(1),
            sweep_interval: Duration::from_millis(200),
            place_timeout: Duration::from_secs(20),
            env: Vec::new(),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The settings that give service `name` its certificates from `cert_dir` (as
/// [`ClusterCa::write`] lays them out): `<NAME>_INTERNAL_CA`, `_INTERNAL_CERT`, `_INTERNAL_KEY`.
pub fn identity_env(cert_dir: &Path, name: &str) -> [(String, String); 3] {
    let prefix = name.to_uppercase();
    let files = KeyPairFiles::in_dir(cert_dir, name);
    let path = |p: &Path| p.display().to_string();
    [
        (
            format!("{prefix}_INTERNAL_CA"),
            path(&cert_dir.join("ca.pem")),
        ),
        (format!("{prefix}_INTERNAL_CERT"), path(&files.cert)),
        (format!("{prefix}_INTERNAL_KEY"), path(&files.key)),
    ]
}

/// Splits `total` units into calls of at most the engine's per-call limit.
pub fn batches(total: i64) -> impl Iterator<Item = i64> {
    let limit = order_saga_reservation::MAX_UNITS_PER_CALL;
    (0..total.max(0))
        .step_by(limit as usize)
        .map(move |start| (total - start).min(limit))
}

/// A running cluster of real processes.
#[derive(Debug)]
pub struct ProcCluster {
    /// The database server (stop/start it to simulate an outage).
    pub pg: PgCluster,
    /// Store process.
    pub store: Process,
    /// Delivery process.
    pub delivery: Process,
    /// Order instances.
    pub orders: Vec<Process>,
    /// Fault proxies by link name: `store-pg`, `delivery-pg`, `order0-pg`, `order0-store`,
    /// `order0-delivery`, ...
    pub links: BTreeMap<String, FaultProxy>,
    stock: Stock,
    /// Where process logs go.
    pub log_dir: PathBuf,
    /// The operator token every process of this cluster accepts (random per cluster).
    admin: BearerToken,
    /// The orchestrator's identity on the internal API (for tests that act as it).
    orchestrator_tls: MutualTls,
    /// Where the cluster CA's certificates are (`ca.pem`, `<service>.pem`, `<service>.key`).
    pub cert_dir: PathBuf,
}

impl ProcCluster {
    /// Starts PostgreSQL, the proxies and every process, and waits for health.
    pub async fn start(config: &ProcConfig) -> anyhow::Result<Self> {
        for bin in ["store", "delivery", "order"] {
            let path = config.bin_dir.join(bin);
            if !path.exists() {
                bail!(
                    "{} is missing: build the binaries first (cargo build --bins)",
                    path.display()
                );
            }
        }
        let pg = tokio::task::spawn_blocking(PgCluster::start).await??;
        let log_dir = pg.dir().join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let pg_addr: SocketAddr = ([127, 0, 0, 1], pg.port()).into();
        let mut links = BTreeMap::new();
        let cert_dir = pg.dir().join("certs");
        ClusterCa::generate("test cluster CA")?
            .write(&cert_dir, &["order", "store", "delivery"])?;

        let admin_token = format!("op-{}", uuid::Uuid::new_v4().simple());
        let common = |name: &str| {
            let mut env = BTreeMap::from([
                ("RUST_LOG".to_owned(), "info,sqlx=warn".to_owned()),
                ("NO_COLOR".to_owned(), "1".to_owned()),
                ("OTEL_SERVICE_NAME".to_owned(), name.to_owned()),
                (
                    format!("{}_ADMIN_TOKEN", name.to_uppercase()),
                    admin_token.clone(),
                ),
            ]);
            env.extend(identity_env(&cert_dir, name));
            env.extend(config.env.iter().cloned());
            env
        };
        let participant = |name: &str, prefix: &str| {
            let link = format!("{name}-pg");
            let proxy_port = free_port()?;
            let mut env = common(name);
            env.insert(
                format!("{prefix}_DATABASE_URL"),
                pg.url_via(proxy_port, name),
            );
            env.insert(
                format!("{prefix}_SWEEP_INTERVAL"),
                ms(config.sweep_interval),
            );
            env.insert(format!("{prefix}_DB_ACQUIRE_TIMEOUT"), "2s".to_owned());
            // Shorter than any call timeout a scenario uses, so busy answers reach the caller
            // (the order service checks this at start-up); a scenario's own `env` wins.
            env.entry(format!("{prefix}_QUEUE_WAIT"))
                .or_insert_with(|| "300ms".to_owned());
            anyhow::Ok((
                Process::new(
                    name,
                    prefix,
                    config.bin_dir.join(name),
                    env,
                    log_dir.join(format!("{name}.log")),
                    true,
                )?,
                (link, proxy_port),
            ))
        };
        let (mut store, store_link) = participant("store", "STORE")?;
        let (mut delivery, delivery_link) = participant("delivery", "DELIVERY")?;
        let internal_addr = |p: &Process| -> anyhow::Result<SocketAddr> {
            let url = p.internal_url.as_deref().context("no internal listener")?;
            Ok(url.trim_start_matches("https://").parse()?)
        };
        let store_addr = internal_addr(&store)?;
        let delivery_addr = internal_addr(&delivery)?;
        for (link, port) in [store_link, delivery_link] {
            links.insert(link, FaultProxy::start_on(port, pg_addr).await?);
        }

        let mut orders = Vec::new();
        for i in 0..config.order_instances.max(1) {
            let name = format!("order{i}");
            let pg_link = FaultProxy::start(pg_addr).await?;
            let store_link = FaultProxy::start(store_addr).await?;
            let delivery_link = FaultProxy::start(delivery_addr).await?;
            let mut env = common("order");
            env.insert(
                "ORDER_DATABASE_URL".into(),
                pg.url_via(pg_link.addr().port(), "orders"),
            );
            env.insert(
                "ORDER_STORE_URL".into(),
                format!("https://{}", store_link.addr()),
            );
            env.insert(
                "ORDER_DELIVERY_URL".into(),
                format!("https://{}", delivery_link.addr()),
            );
            env.insert("ORDER_RESERVATION_TTL".into(), ms(config.reservation_ttl));
            env.insert("ORDER_LEASE".into(), ms(config.lease));
            env.insert(
                "ORDER_RECOVERY_INTERVAL".into(),
                ms(config.recovery_interval),
            );
            env.insert("ORDER_CALL_TIMEOUT".into(), ms(config.call_timeout));
            env.insert("ORDER_PLACE_TIMEOUT".into(), ms(config.place_timeout));
            env.insert("ORDER_DB_ACQUIRE_TIMEOUT".into(), "2s".into());
            env.insert("ORDER_INSTANCE_ID".into(), name.clone());
            links.insert(format!("{name}-pg"), pg_link);
            links.insert(format!("{name}-store"), store_link);
            links.insert(format!("{name}-delivery"), delivery_link);
            orders.push(Process::new(
                &name,
                "ORDER",
                config.bin_dir.join("order"),
                env,
                log_dir.join(format!("{name}.log")),
                false,
            )?);
        }

        store.start_healthy("").await?;
        delivery.start_healthy("").await?;
        for order in &mut orders {
            order.start_healthy("").await?;
        }
        Ok(Self {
            pg,
            store,
            delivery,
            orders,
            links,
            stock: Stock::new(),
            log_dir,
            admin: BearerToken::new(Some(&admin_token)).map_err(anyhow::Error::msg)?,
            orchestrator_tls: MutualTls::load(
                &cert_dir.join("ca.pem"),
                &KeyPairFiles::in_dir(&cert_dir, "order"),
            )?,
            cert_dir,
        })
    }

    /// A reservation client of the participant `p` (store or delivery) holding the
    /// orchestrator's certificate, straight to its internal listener: a test acting as the
    /// orchestrator.
    pub async fn reservation_client(
        &self,
        p: &Process,
    ) -> anyhow::Result<ReservationServiceClient<Channel>> {
        let url = p.internal_url.clone().context("not a participant")?;
        let channel = self
            .orchestrator_tls
            .connect(url, &p.prefix.to_lowercase())
            .await?;
        Ok(ReservationServiceClient::new(channel))
    }

    /// Database URLs, connecting directly (not through the proxies).
    pub fn db_urls(&self) -> DbUrls {
        DbUrls {
            order: self.pg.url("orders"),
            store: self.pg.url("store"),
            delivery: self.pg.url("delivery"),
        }
    }

    /// Units added so far, for the conservation invariant.
    pub fn stock(&self) -> &Stock {
        &self.stock
    }

    fn order_channel(&self, i: usize) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.orders[i].url.clone())?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy())
    }

    fn order_admin_channel(&self, i: usize) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.orders[i].admin_url.clone())?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy())
    }

    /// A client of order instance `i`.
    pub async fn order_client(&self, i: usize) -> anyhow::Result<OrderServiceClient<Channel>> {
        Ok(OrderServiceClient::new(self.order_channel(i)?))
    }

    /// An operator's client of order instance `i`.
    pub async fn order_admin_client(
        &self,
        i: usize,
    ) -> anyhow::Result<OrderAdminServiceClient<InterceptedService<Channel, BearerToken>>> {
        Ok(OrderAdminServiceClient::with_interceptor(
            self.order_admin_channel(i)?,
            self.admin.clone(),
        ))
    }

    /// The operator's credential for this cluster's admin services.
    pub fn admin_credential(&self) -> BearerToken {
        self.admin.clone()
    }

    /// Restarts order instance `i` (a crash, `SIGKILL`) configured with `instance_id` as its
    /// lease-owner name: another instance's name makes two live processes share one id.
    pub async fn restart_order_as(&mut self, i: usize, instance_id: &str) -> anyhow::Result<()> {
        let p = &mut self.orders[i];
        p.kill().await;
        p.set_env("ORDER_INSTANCE_ID", instance_id);
        p.start_healthy("").await
    }

    /// Creates a food with `packets` packets (straight to the store, not through a proxy).
    pub async fn add_food(&mut self, food: &str, packets: i64) -> anyhow::Result<()> {
        let channel = Channel::from_shared(self.store.admin_url.clone())?
            .connect()
            .await?;
        let mut admin = StoreAdminServiceClient::with_interceptor(channel, self.admin.clone());
        admin
            .create_food(CreateFoodRequest {
                food_id: food.into(),
                name: food.into(),
            })
            .await?;
        self.stock.insert(("store", food.to_owned()), 0);
        self.restock(food, packets).await
    }

    /// Adds packets to a food, in calls of at most the engine's limit.
    pub async fn restock(&mut self, food: &str, packets: i64) -> anyhow::Result<()> {
        let channel = Channel::from_shared(self.store.admin_url.clone())?
            .connect()
            .await?;
        let mut admin = StoreAdminServiceClient::with_interceptor(channel, self.admin.clone());
        for count in batches(packets) {
            let request = RestockRequest {
                food_id: food.into(),
                count,
            };
            admin.restock(request).await?;
            *self.stock.entry(("store", food.to_owned())).or_default() += count;
        }
        Ok(())
    }

    /// Adds agents to a zone, in calls of at most the engine's limit.
    pub async fn add_agents(&mut self, zone: &str, agents: i64) -> anyhow::Result<()> {
        let channel = Channel::from_shared(self.delivery.admin_url.clone())?
            .connect()
            .await?;
        let mut admin = DeliveryAdminServiceClient::with_interceptor(channel, self.admin.clone());
        for count in batches(agents) {
            let request = AddAgentsRequest {
                zone: zone.into(),
                count,
            };
            admin.add_agents(request).await?;
            *self.stock.entry(("delivery", zone.to_owned())).or_default() += count;
        }
        Ok(())
    }

    /// The proxy on a link; panics on an unknown name (a test bug).
    pub fn link(&self, name: &str) -> &FaultProxy {
        self.links
            .get(name)
            .unwrap_or_else(|| panic!("no link {name}"))
    }

    /// Every process, mutable, by name.
    pub fn processes_mut(&mut self) -> Vec<&mut Process> {
        let mut all = vec![&mut self.store, &mut self.delivery];
        all.extend(self.orders.iter_mut());
        all
    }

    /// Ends every fault: links healed, processes resumed or restarted (without failpoints),
    /// PostgreSQL running; waits for health.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for proxy in self.links.values() {
            proxy.set(Fault::None);
        }
        if !crate::pg_accepts(self.pg.port()).await {
            let pg = &self.pg;
            // Started again only if it was stopped; an error here means it is already up.
            let _ = tokio::task::block_in_place(|| pg.start_server());
        }
        for p in self.processes_mut() {
            if p.is_paused() {
                p.resume();
            }
            if !p.is_running() {
                p.start("").await?;
            }
        }
        for p in self.processes_mut() {
            p.wait_healthy(Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// Stops every process gracefully.
    pub async fn shutdown(&mut self) {
        for p in self.processes_mut() {
            p.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::batches;

    #[test]
    fn units_are_added_in_calls_within_the_limit() {
        assert_eq!(
            batches(25_000).collect::<Vec<_>>(),
            vec![10_000, 10_000, 5_000]
        );
        assert_eq!(batches(7).collect::<Vec<_>>(), vec![7]);
        assert_eq!(batches(0).count(), 0);
    }
}
