//! End-to-end test support: a whole order-saga cluster in one test process, each service on
//! port 0 with its own fresh database, and the invariant checker of docs/design.md that reads all
//! three databases directly.

use std::{net::SocketAddr, sync::Mutex, time::Duration};

use order_saga_platform::{
    admission::AdmissionConfig,
    app::{ListenAddrs, Listeners},
    auth::AdminTokens,
    db::{Db, DbOptions},
    server::ConnectionLimits,
    testing::{TestBackend, fresh_database_url},
    tls::{ClusterCa, MutualTls},
};
use order_saga_proto::{
    delivery::v1::{AddAgentsRequest, delivery_admin_service_client::DeliveryAdminServiceClient},
    order::v1::{
        Order, PlaceOrderRequest, order_admin_service_client::OrderAdminServiceClient,
        order_service_client::OrderServiceClient,
    },
    reservation::v1::reservation_service_client::ReservationServiceClient,
    store::v1::{
        CreateFoodRequest, RestockRequest, store_admin_service_client::StoreAdminServiceClient,
        store_service_client::StoreServiceClient,
    },
};
use order_saga_reservation::app::ParticipantSettings;
use order_saga_saga::BearerToken;
pub use order_saga_testkit::invariants::DbUrls;
use order_saga_testkit::invariants::{self, Stock};
use order_service::OrderSettings;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{codegen::InterceptedService, transport::Channel};

pub use order_saga_platform::testing::TestBackend as Backend;

pub mod webdriver;

/// The operator token every test cluster accepts on its admin services (a test fixture, not a
/// secret: test clusters listen on 127.0.0.1 only and live as long as one test).
pub const OPERATOR_TOKEN: &str = "e2e-operator-token-0123456789";
/// The viewer token every test cluster accepts.
pub const VIEWER_TOKEN: &str = "e2e-viewer-token-0123456789";

/// A channel that sends the operator's bearer token.
pub type AdminChannel = InterceptedService<Channel, BearerToken>;

fn admin_tokens() -> AdminTokens {
    AdminTokens::new(Some(OPERATOR_TOKEN), Some(VIEWER_TOKEN)).expect("test tokens")
}

/// The operator's credential.
pub fn operator() -> BearerToken {
    BearerToken::new(Some(OPERATOR_TOKEN)).expect("test token")
}

/// Pool size of each service in a test cluster: tests run in parallel against one PostgreSQL
/// server, whose default limit is 100 connections.
const TEST_POOL_SIZE: u32 = 4;

/// Timing of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Reservation TTL the orchestrator asks for.
    pub reservation_ttl: Duration,
    /// Sweeper interval of both participants.
    pub sweep_interval: Duration,
    /// Recovery interval of the order service.
    pub recovery_interval: Duration,
    /// Saga lease.
    pub lease: Duration,
    /// Admission control of the order service.
    pub order_admission: AdmissionConfig,
    /// Admission control of each participant.
    pub participant_admission: AdmissionConfig,
    /// Sagas the order service drives at once.
    pub max_sagas: usize,
    /// Connections, streams and health watches every listener holds open at most.
    pub connections: ConnectionLimits,
    /// The batched engine: group commit at the participants and the order database
    /// (`<SERVICE>_WRITE_BATCH=128`) and `Batch` calls (`ORDER_BATCH_CALLS=true`).
    pub batched: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            reservation_ttl: Duration::from_secs(30),
            sweep_interval: Duration::from_millis(100),
            recovery_interval: Duration::from_millis(100),
            lease: Duration::from_secs(15),
            order_admission: AdmissionConfig::default(),
            participant_admission: AdmissionConfig::default(),
            max_sagas: order_service::orchestrator::SagaConfig::default().max_sagas,
            connections: ConnectionLimits::default(),
            batched: false,
        }
    }
}

/// The certificates of one test cluster, issued by a CA made for it.
pub struct TestCerts {
    /// The CA every service of the cluster trusts.
    pub ca: ClusterCa,
    /// The orchestrator's identity.
    pub order: MutualTls,
    /// The store's identity.
    pub store: MutualTls,
    /// Delivery's identity.
    pub delivery: MutualTls,
}

impl TestCerts {
    /// A fresh CA and a certificate for each service.
    pub fn generate() -> Self {
        let ca = ClusterCa::generate("e2e cluster CA").expect("ca");
        let id = |name: &str| ca_identity(&ca, name);
        Self {
            order: id("order"),
            store: id("store"),
            delivery: id("delivery"),
            ca,
        }
    }
}

/// The identity `name` as issued by `ca` (with the CA as the trust root).
pub fn ca_identity(ca: &ClusterCa, name: &str) -> MutualTls {
    let issued = ca.issue(name, &[]).expect("issue");
    MutualTls::from_pem(ca.cert_pem(), &issued.cert, &issued.key)
}

/// A running cluster.
pub struct Cluster {
    /// Backend of all three databases.
    pub backend: TestBackend,
    /// Order service listeners (public, admin).
    pub order_addrs: ListenAddrs,
    /// Store listeners (public, internal, admin).
    pub store_addrs: ListenAddrs,
    /// Delivery listeners (public, internal, admin).
    pub delivery_addrs: ListenAddrs,
    /// The cluster's certificates.
    pub certs: TestCerts,
    /// Database URLs.
    pub urls: DbUrls,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Units added per pool, for the conservation invariant: (service, pool) -> count.
    stock: Mutex<Stock>,
}

fn checker_pool() -> DbOptions {
    DbOptions {
        max_connections: 1,
        ..DbOptions::default()
    }
}

fn stop_signal() -> (
    oneshot::Sender<()>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

async fn bind(internal: bool) -> Listeners {
    Listeners::bind(ListenAddrs::ephemeral(internal))
        .await
        .expect("bind port 0")
}

/// A plaintext channel to a public or admin listener at `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// A channel to an internal listener at `addr`, holding `identity`, expecting the server's
/// certificate to name `peer`.
pub async fn internal_channel(
    addr: SocketAddr,
    identity: &MutualTls,
    peer: &str,
) -> Result<Channel, tonic::transport::Error> {
    identity.connect(format!("https://{addr}"), peer).await
}

fn internal(addrs: &ListenAddrs) -> SocketAddr {
    addrs
        .internal
        .expect("a participant has an internal listener")
}

impl Cluster {
    /// Starts store, delivery and order on fresh databases of `backend`.
    pub async fn start(backend: TestBackend, options: ClusterOptions) -> Self {
        order_saga_platform::telemetry::init_test_logging();
        let urls = DbUrls {
            order: fresh_database_url(backend, "order").await,
            store: fresh_database_url(backend, "store").await,
            delivery: fresh_database_url(backend, "delivery").await,
        };
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        let certs = TestCerts::generate();

        let participant = |url: &str, identity: &MutualTls| {
            let mut s = ParticipantSettings::for_database(url, identity.clone());
            s.sweeper.interval = options.sweep_interval;
            s.db.max_connections = TEST_POOL_SIZE;
            s.limits.admission = options.participant_admission.clone();
            s.limits.admin_tokens = admin_tokens();
            s.limits.connections = options.connections.clone();
            if options.batched {
                s.write_batch = 128;
            }
            s
        };
        let store = store_service::build(bind(true).await, participant(&urls.store, &certs.store))
            .await
            .expect("build store");
        let store_addrs = store.local_addrs();
        let (tx, stop) = stop_signal();
        stops.push(tx);
        tasks.push(tokio::spawn(store.run_until_stopped(stop)));

        let delivery = delivery_service::build(
            bind(true).await,
            participant(&urls.delivery, &certs.delivery),
        )
        .await
        .expect("build delivery");
        let delivery_addrs = delivery.local_addrs();
        let (tx, stop) = stop_signal();
        stops.push(tx);
        tasks.push(tokio::spawn(delivery.run_until_stopped(stop)));

        let mut settings = OrderSettings::new(
            &urls.order,
            format!("https://{}", internal(&store_addrs)),
            format!("https://{}", internal(&delivery_addrs)),
            certs.order.clone(),
        );
        settings.saga.reservation_ttl = options.reservation_ttl;
        settings.saga.lease = options.lease;
        settings.saga.max_sagas = options.max_sagas;
        settings.limits.admission = options.order_admission.clone();
        settings.limits.admin_tokens = admin_tokens();
        settings.limits.connections = options.connections.clone();
        settings.recovery.interval = options.recovery_interval;
        settings.db.max_connections = TEST_POOL_SIZE;
        settings.read_db.max_connections = TEST_POOL_SIZE / 2;
        if options.batched {
            settings.write_batch = 128;
            settings.saga.batch_calls = true;
        }
        let order = order_service::OrderApp::build(bind(false).await, settings)
            .await
            .expect("build order");
        let order_addrs = order.local_addrs();
        let (tx, stop) = stop_signal();
        stops.push(tx);
        tasks.push(tokio::spawn(order.run_until_stopped(stop)));

        Self {
            backend,
            order_addrs,
            store_addrs,
            delivery_addrs,
            certs,
            urls,
            stops,
            tasks,
            stock: Mutex::new(Stock::new()),
        }
    }

    /// Stops every service gracefully and checks they shut down cleanly.
    pub async fn stop(mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            task.await
                .expect("service task")
                .expect("service stopped cleanly");
        }
    }

    /// An order client.
    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(channel(self.order_addrs.public).await)
    }

    /// An order admin client with the operator's token.
    pub async fn order_admin(&self) -> OrderAdminServiceClient<AdminChannel> {
        OrderAdminServiceClient::with_interceptor(channel(self.order_addrs.admin).await, operator())
    }

    /// A store admin client with the operator's token.
    pub async fn store_admin(&self) -> StoreAdminServiceClient<AdminChannel> {
        StoreAdminServiceClient::with_interceptor(channel(self.store_addrs.admin).await, operator())
    }

    /// A delivery admin client with the operator's token.
    pub async fn delivery_admin(&self) -> DeliveryAdminServiceClient<AdminChannel> {
        DeliveryAdminServiceClient::with_interceptor(
            channel(self.delivery_addrs.admin).await,
            operator(),
        )
    }

    /// A store catalogue client.
    pub async fn store(&self) -> StoreServiceClient<Channel> {
        StoreServiceClient::new(channel(self.store_addrs.public).await)
    }

    /// The store's participant client, holding the orchestrator's certificate (as the
    /// orchestrator uses it).
    pub async fn store_reservations(&self) -> ReservationServiceClient<Channel> {
        let channel = internal_channel(internal(&self.store_addrs), &self.certs.order, "store");
        ReservationServiceClient::new(channel.await.expect("connect"))
    }

    /// Delivery's participant client, holding the orchestrator's certificate.
    pub async fn delivery_reservations(&self) -> ReservationServiceClient<Channel> {
        let channel = internal_channel(
            internal(&self.delivery_addrs),
            &self.certs.order,
            "delivery",
        );
        ReservationServiceClient::new(channel.await.expect("connect"))
    }

    /// Creates a food with `packets` packets.
    pub async fn add_food(&self, food_id: &str, packets: i64) {
        let mut admin = self.store_admin().await;
        admin
            .create_food(CreateFoodRequest {
                food_id: food_id.into(),
                name: food_id.into(),
            })
            .await
            .expect("create food");
        if packets > 0 {
            admin
                .restock(RestockRequest {
                    food_id: food_id.into(),
                    count: packets,
                })
                .await
                .expect("restock");
        }
        self.stock
            .lock()
            .expect("stock")
            .insert(("store", food_id.into()), packets);
    }

    /// Adds `agents` agents to a zone.
    pub async fn add_agents(&self, zone: &str, agents: i64) {
        let mut admin = self.delivery_admin().await;
        admin
            .add_agents(AddAgentsRequest {
                zone: zone.into(),
                count: agents,
            })
            .await
            .expect("add agents");
        *self
            .stock
            .lock()
            .expect("stock")
            .entry(("delivery", zone.into()))
            .or_default() += agents;
    }

    /// Places one order.
    pub async fn place(&self, key: &str, food: &str, zone: &str) -> Result<Order, tonic::Status> {
        let mut client = self.orders().await;
        client
            .place_order(PlaceOrderRequest {
                idempotency_key: key.into(),
                customer_id: "tester".into(),
                food_id: food.into(),
                zone: zone.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Opens the order database (already migrated by the service).
    pub async fn order_db(&self) -> Db {
        Db::connect(&self.urls.order, &checker_pool(), &order_service::MIGRATOR)
            .await
            .expect("connect order db")
    }

    /// Every violated invariant of docs/design.md, read from the three databases; with `quiet`,
    /// invariant 3 too.
    pub async fn violations(&self, quiet: bool) -> Vec<String> {
        let stock = self.stock.lock().expect("stock").clone();
        invariants::violations(&self.urls, &stock, quiet)
            .await
            .expect("read the databases")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Waits until the system is quiet and invariants 1-5 hold, or panics with the violations.
    pub async fn assert_invariants_when_quiet(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.violations(true).await;
            if v.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("invariants violated after {within:?}:\n{}", v.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts invariants 1, 2, 4 and 5, which hold at every instant.
    pub async fn assert_invariants_now(&self) {
        let v = self.violations(false).await;
        assert!(v.is_empty(), "invariants violated:\n{}", v.join("\n"));
    }

    /// Polls `GetOrder` until the order is no longer pending.
    pub async fn wait_terminal(&self, order_id: &str, within: Duration) -> Order {
        let mut client = self.orders().await;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let order = client
                .get_order(order_saga_proto::order::v1::GetOrderRequest {
                    order_id: order_id.into(),
                })
                .await
                .expect("get order")
                .into_inner();
            if order.state != order_saga_proto::order::v1::OrderState::Pending as i32 {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} still pending"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes an order row as a crashed instance would have left it: `phase` with the given
    /// units, leased to `dead-instance` until `lease_expires_at` (Unix ms; 0 = already expired),
    /// created and last updated at the database's current time.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_abandoned_order(
        &self,
        order_id: &str,
        food: &str,
        zone: &str,
        phase: &str,
        legs: (&str, &str),
        units: (Option<&str>, Option<&str>),
        lease_expires_at: i64,
    ) {
        let db = self.order_db().await;
        let now = db.backend().now_ms();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO orders (order_id, idempotency_key, customer_id, food_id, zone, state, phase, \
               store_leg, delivery_leg, packet_id, agent_id, attempts, lease_owner, lease_expires_at, \
               created_at, updated_at) \
             VALUES ($1, $2, 'tester', $3, $4, 'pending', $5, $6, $7, $8, $9, 0, 'dead-instance', $10, \
               {now}, {now})"
        )))
        .bind(order_id)
        .bind(format!("key-{order_id}"))
        .bind(food)
        .bind(zone)
        .bind(phase)
        .bind(legs.0)
        .bind(legs.1)
        .bind(units.0)
        .bind(units.1)
        .bind(lease_expires_at)
        .execute(db.pool())
        .await
        .expect("insert abandoned order");
        db.close().await;
    }
}

/// Converts a duration to the protobuf type.
pub fn pb_duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

pub use order_saga_testkit::http::{HttpAnswer, http, metric};
