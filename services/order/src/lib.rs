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

pub mod calls;
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
    /// Participants whose limits were not checked at start-up (they did not answer).
    unchecked: Vec<order_saga_saga::Side>,
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

/// What checking one participant's limits found.
enum Checked {
    /// The settings fit.
    Fits,
    /// The participant did not answer (yet).
    Silent(tonic::Status),
}

/// Checks the settings against the limits of the participant on `side`: an error is fatal
/// (the settings cannot work with it, or the URL does not reach a participant's internal API).
async fn check_participant(
    orchestrator: &Orchestrator,
    settings: &OrderSettings,
    side: order_saga_saga::Side,
) -> anyhow::Result<Checked> {
    let name = side.as_str();
    let limits = match orchestrator.participant_limits(side).await {
        Ok(limits) => limits,
        Err(s) if s.code() == tonic::Code::Unimplemented => anyhow::bail!(
            "the {name} URL does not serve reservation.v1.ReservationService ({}): it must \
             point at the {name} service's internal listener",
            s.message()
        ),
        Err(s) => return Ok(Checked::Silent(s)),
    };
    let duration = |d: Option<prost_types::Duration>| {
        d.and_then(|d| std::time::Duration::try_from(d).ok())
            .unwrap_or_default()
    };
    settings
        .check_participant(
            name,
            duration(limits.min_ttl),
            duration(limits.max_ttl),
            duration(limits.queue_wait),
        )
        .map_err(anyhow::Error::msg)?;
    Ok(Checked::Fits)
}

/// Checks both participants until each has answered or `until` passes; returns the sides
/// still unchecked.
async fn check_participants(
    orchestrator: &Orchestrator,
    settings: &OrderSettings,
    mut pending: Vec<order_saga_saga::Side>,
    until: tokio::time::Instant,
) -> anyhow::Result<Vec<order_saga_saga::Side>> {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let mut silent = Vec::new();
        for side in pending {
            match check_participant(orchestrator, settings, side).await? {
                Checked::Fits => tracing::info!(
                    participant = side.as_str(),
                    "settings fit the participant's limits"
                ),
                Checked::Silent(s) => {
                    tracing::debug!(participant = side.as_str(), code = ?s.code(), "participant did not tell its limits yet");
                    silent.push(side);
                }
            }
        }
        pending = silent;
        if pending.is_empty() || tokio::time::Instant::now() + delay > until {
            return Ok(pending);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(2));
    }
}

impl OrderApp {
    /// Connects and migrates the database, prepares participant clients and serves the order
    /// API on the public listener and its administration on the admin listener. Fails when
    /// the settings do not fit together, or do not fit a participant's limits (checked as
    /// soon as it answers, for up to `participant_check_wait`; a participant still silent
    /// then is checked in the background).
    pub async fn build(listeners: Listeners, settings: OrderSettings) -> anyhow::Result<Self> {
        settings.validate().map_err(anyhow::Error::msg)?;
        let mut app = ServiceApp::new(
            "order",
            listeners,
            settings.tls.clone(),
            settings.limits.clone(),
        )?;
        let store = channel("store", &settings.store_url, &settings)?;
        let delivery = channel("delivery", &settings.delivery_url, &settings)?;
        let db = Db::connect(&settings.database_url, &settings.db, &MIGRATOR).await?;
        let reads = Db::connect_reader(&settings.database_url, &settings.read_db).await?;
        let orchestrator = Orchestrator::new(
            OrderRepo::with_write_batch(db, settings.write_batch).reading_from(reads),
            ReservationServiceClient::with_interceptor(store.clone(), TracePropagation),
            ReservationServiceClient::with_interceptor(delivery.clone(), TracePropagation),
            settings.saga.clone(),
            settings.instance_id.clone(),
        );
        let unchecked = check_participants(
            &orchestrator,
            &settings,
            order_saga_saga::Side::BOTH.to_vec(),
            tokio::time::Instant::now() + settings.participant_check_wait,
        )
        .await?;
        for side in &unchecked {
            tracing::warn!(
                participant = side.as_str(),
                "participant did not answer GetLimits; its limits are checked once it does"
            );
        }
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
            settings.tls.admin.is_some(),
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
            unchecked,
        })
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> ListenAddrs {
        self.app.local_addrs()
    }

    /// Runs the listeners and the recovery loop until `shutdown` completes, or until a
    /// participant checked late turns out not to fit the settings (an error then).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(instance = %self.settings.instance_id, "order service starting");
        let (orchestrator, config) = (self.orchestrator.clone(), self.settings.recovery.clone());
        let (misfit_tx, misfit_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
        if !self.unchecked.is_empty() {
            let (orchestrator, settings, pending) = (
                self.orchestrator.clone(),
                self.settings.clone(),
                self.unchecked,
            );
            tokio::spawn(async move {
                let forever =
                    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
                if let Err(e) = check_participants(&orchestrator, &settings, pending, forever).await
                {
                    let _ = misfit_tx.send(e);
                }
            });
        }
        let misfit = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = misfit.clone();
        let stop = async move {
            tokio::select! {
                () = shutdown => {}
                Ok(e) = misfit_rx => {
                    tracing::error!(error = %e, "a participant does not fit the settings; stopping");
                    if let Ok(mut m) = seen.lock() {
                        *m = Some(e);
                    }
                }
            }
        };
        let served = self
            .app
            .run(stop, |stopping| async move {
                let retention = config.history_retention;
                tokio::join!(
                    recovery::run(orchestrator.clone(), config, stopping.clone().wait()),
                    recovery::prune_history(orchestrator, retention, stopping.wait()),
                );
            })
            .await;
        self.orchestrator.repo().db().close().await;
        self.orchestrator.repo().read_db().close().await;
        if let Some(e) = misfit.lock().ok().and_then(|mut m| m.take()) {
            return Err(e);
        }
        served
    }
}
