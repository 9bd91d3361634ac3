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
//! - [`recovery`]: claims unfinished sagas whose lease ran out (a crashed or stopped instance)
//!   and finishes them. Any number of instances may share one database.

pub mod catalogue;
pub mod config;
pub mod convert;
pub mod grpc;
pub mod orchestrator;
pub mod placement;
pub mod recovery;
pub mod repo;
pub mod stats;

use std::{future::Future, net::SocketAddr};

use order_saga_platform::{
    db::Db,
    server::{base_routes, serve_with_task},
    telemetry::TracePropagation,
};
use order_saga_proto::{
    order::v1::{
        order_admin_service_server::OrderAdminServiceServer,
        order_service_server::OrderServiceServer,
    },
    reservation::v1::reservation_service_client::ReservationServiceClient,
};
use tokio::net::TcpListener;
use tonic::{service::RoutesBuilder, transport::Endpoint};

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
    listener: TcpListener,
    routes: RoutesBuilder,
    orchestrator: Orchestrator,
    settings: OrderSettings,
}

fn channel(url: &str, settings: &OrderSettings) -> anyhow::Result<tonic::transport::Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(settings.call_timeout)
        .timeout(settings.call_timeout)
        .tcp_nodelay(true)
        // Lazy: the order service starts, and answers UNAVAILABLE, while a participant is down.
        .connect_lazy())
}

impl OrderApp {
    /// Connects and migrates the database, prepares participant clients and registers the
    /// gRPC services on `listener`.
    pub async fn build(listener: TcpListener, settings: OrderSettings) -> anyhow::Result<Self> {
        let db = Db::connect(&settings.database_url, &settings.db, &MIGRATOR).await?;
        let store = channel(&settings.store_url, &settings)?;
        let delivery = channel(&settings.delivery_url, &settings)?;
        let orchestrator = Orchestrator::new(
            OrderRepo::new(db),
            ReservationServiceClient::with_interceptor(store.clone(), TracePropagation),
            ReservationServiceClient::with_interceptor(delivery.clone(), TracePropagation),
            settings.saga.clone(),
            settings.instance_id.clone(),
        );
        let api = OrderApi::new(Placement::new(
            orchestrator.clone(),
            Catalogue::new(store, delivery),
            settings.place_timeout,
            BusyPolicy {
                slot_wait: settings.limits.admission.queue_wait,
                retry_after: settings.limits.admission.retry_after,
            },
        ));
        let (mut routes, health) = base_routes()?;
        routes
            .add_service(OrderServiceServer::new(api.clone()))
            .add_service(OrderAdminServiceServer::new(api));
        health.set_serving::<OrderServiceServer<OrderApi>>().await;
        health
            .set_serving::<OrderAdminServiceServer<OrderApi>>()
            .await;
        Ok(Self {
            listener,
            routes,
            orchestrator,
            settings,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs the server and the recovery loop until `shutdown` completes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(
            addr = %self.listener.local_addr()?,
            instance = %self.settings.instance_id,
            "serving"
        );
        let (orchestrator, config) = (self.orchestrator.clone(), self.settings.recovery.clone());
        let served = serve_with_task(
            self.listener,
            self.routes,
            &self.settings.limits,
            shutdown,
            |stopping| recovery::run(orchestrator, config, stopping.wait()),
        )
        .await;
        self.orchestrator.repo().db().close().await;
        served?;
        Ok(())
    }
}
