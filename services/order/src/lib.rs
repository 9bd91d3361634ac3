//! The order service: the orchestrator of the reserve-then-assign saga.
//!
//! - [`repo`]: the orders table, holding each saga's persisted state with a lease.
//! - [`orchestrator`]: drives the pure state machine of `order-saga-saga` against the store and
//!   delivery participants, persisting every transition before the next remote call.
//! - [`placement`]: the use cases behind `PlaceOrder`, `RedriveOrder` and `ForceFailOrder`:
//!   claim a saga (a new fencing epoch), drive it in its own task, answer from stored state.
//! - [`grpc`]: the transport of the public `OrderService` and the operator
//!   `OrderAdminService`, with [`convert`] for prost types and [`catalogue`] for the existence
//!   check of foods and zones.
//! - [`history`]: the saga's events, appended in the same transaction as each write.
//! - [`console`]: the operator console, HTML pages on the admin listener.
//! - [`recovery`]: claims unfinished sagas whose lease ran out (a crashed or stopped instance)
//!   and finishes them. Any number of instances may share one database.

pub mod catalogue;
pub mod config;
pub mod console;
pub mod convert;
pub mod grpc;
pub mod history;
pub mod orchestrator;
pub mod placement;
pub mod recovery;
pub mod repo;
pub mod stats;

use std::future::Future;

use anyhow::Context;
use order_saga_platform::{
    app::{Audience, ListenAddrs, Listeners, ServiceApp},
    db::Db,
    telemetry::TracePropagation,
};
use order_saga_proto::{
    order::v1::{
        order_admin_service_server::OrderAdminServiceServer,
        order_service_server::OrderServiceServer,
    },
    reservation::v1::reservation_service_client::ReservationServiceClient,
};
use tonic::transport::Endpoint;

use catalogue::Catalogue;
pub use config::{OrderArgs, OrderSettings};
use grpc::OrderApi;
use orchestrator::Orchestrator;
use placement::{BusyPolicy, Placement};
use repo::OrderRepo;

/// The embedded migrations of the order database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A built order service, ready to run.
pub struct OrderApp {
    app: ServiceApp,
    orchestrator: Orchestrator,
    settings: OrderSettings,
}

/// A channel to the internal listener of the participant `peer` at `url`: mutual TLS, and the
/// participant's certificate must name `peer`.
fn channel(
    peer: &str,
    url: &str,
    settings: &OrderSettings,
) -> anyhow::Result<tonic::transport::Channel> {
    // tonic speaks plaintext to an http:// URL even with TLS configured; refuse it.
    if !url.starts_with("https://") {
        anyhow::bail!(
            "the {peer} URL {url:?} must start with https://: the internal API is mutual TLS"
        );
    }
    Ok(Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("the {peer} URL {url:?}"))?
        .tls_config(settings.internal.client(peer))?
        .connect_timeout(settings.call_timeout)
        .timeout(settings.call_timeout)
        .tcp_nodelay(true)
        // Lazy: the order service starts, and answers UNAVAILABLE, while a participant is down.
        .connect_lazy())
}

impl OrderApp {
    /// Connects and migrates the database, prepares participant clients and serves the order
    /// API on the public listener and its administration on the admin listener.
    pub async fn build(listeners: Listeners, settings: OrderSettings) -> anyhow::Result<Self> {
        let mut app = ServiceApp::new(
            "order",
            listeners,
            settings.tls.clone(),
            settings.limits.clone(),
        )?;
        let store = channel("store", &settings.store_url, &settings)?;
        let delivery = channel("delivery", &settings.delivery_url, &settings)?;
        let db = Db::connect(&settings.database_url, &settings.db, &MIGRATOR).await?;
        let orchestrator = Orchestrator::new(
            OrderRepo::new(db),
            ReservationServiceClient::with_interceptor(store.clone(), TracePropagation),
            ReservationServiceClient::with_interceptor(delivery.clone(), TracePropagation),
            settings.saga.clone(),
            settings.instance_id.clone(),
        );
        let placement = Placement::new(
            orchestrator.clone(),
            Catalogue::new(store.clone(), delivery.clone()),
            settings.place_timeout,
            BusyPolicy {
                slot_wait: settings.limits.admission.queue_wait,
                retry_after: settings.limits.admission.retry_after,
            },
        );
        let console = console::Console::new(
            placement.clone(),
            store,
            delivery,
            settings.limits.admin_tokens.clone(),
        );
        let api = OrderApi::new(placement);
        app.add(Audience::Public, OrderServiceServer::new(api.clone()))
            .await
            .add(Audience::Admin, OrderAdminServiceServer::new(api))
            .await
            .add_http(Audience::Admin, console.routes());
        Ok(Self {
            app,
            orchestrator,
            settings,
        })
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> ListenAddrs {
        self.app.local_addrs()
    }

    /// Runs the listeners and the recovery loop until `shutdown` completes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(instance = %self.settings.instance_id, "order service starting");
        let (orchestrator, config) = (self.orchestrator.clone(), self.settings.recovery.clone());
        let served = self
            .app
            .run(shutdown, |stopping| async move {
                let retention = config.history_retention;
                tokio::join!(
                    recovery::run(orchestrator.clone(), config, stopping.clone().wait()),
                    recovery::prune_history(orchestrator, retention, stopping.wait()),
                );
            })
            .await;
        self.orchestrator.repo().db().close().await;
        served
    }
}
