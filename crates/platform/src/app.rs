//! The application shell all three services run: a listener per audience, each with its own
//! routes, TLS and admission queue, one health reporter for all of them, a background loop (the
//! sweeper, the recovery loop), and graceful shutdown of everything together.
//!
//! | audience | serves | who may call |
//! |---|---|---|
//! | public | the order API, catalogue and availability reads | anyone (TLS optional) |
//! | internal | `ReservationService` (participants only) | the orchestrator, by mutual TLS |
//! | admin | the `*AdminService`s | operators and viewers, by bearer token (TLS optional) |
//!
//! Health is on every listener; reflection on each describes only the services it serves
//! (and on the admin listener needs a token).

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::{server::NamedService, service::RoutesBuilder, transport::ServerTlsConfig};
use tonic_health::server::HealthReporter;

use crate::{
    server::{Served, ServerLimits, base_routes, serve},
    tls::{MutualTls, ServerTls},
};

/// Who a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Customers and anything in front of them.
    Public,
    /// Other services of the cluster, identified by certificate.
    Internal,
    /// Operators, identified by bearer token.
    Admin,
}

impl Audience {
    fn as_str(self) -> &'static str {
        match self {
            Audience::Public => "public",
            Audience::Internal => "internal",
            Audience::Admin => "admin",
        }
    }
}

/// The addresses a service listens on. The order service has no internal API, so no internal
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    /// The public listener.
    pub public: SocketAddr,
    /// The internal listener (participants only).
    pub internal: Option<SocketAddr>,
    /// The admin listener.
    pub admin: SocketAddr,
}

impl ListenAddrs {
    /// Port 0 on 127.0.0.1 for each listener (tests), with an internal one when asked.
    pub fn ephemeral(internal: bool) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            public: any,
            internal: internal.then_some(any),
            admin: any,
        }
    }
}

/// Bound sockets, one per audience.
#[derive(Debug)]
pub struct Listeners {
    public: TcpListener,
    internal: Option<TcpListener>,
    admin: TcpListener,
}

impl Listeners {
    /// Binds every address; the error names the listener that could not bind.
    pub async fn bind(addrs: ListenAddrs) -> anyhow::Result<Self> {
        async fn one(audience: Audience, addr: SocketAddr) -> anyhow::Result<TcpListener> {
            TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} ({} listener)", audience.as_str())
            })
        }
        Ok(Self {
            public: one(Audience::Public, addrs.public).await?,
            internal: match addrs.internal {
                Some(addr) => Some(one(Audience::Internal, addr).await?),
                None => None,
            },
            admin: one(Audience::Admin, addrs.admin).await?,
        })
    }

    /// The bound addresses (the ports chosen for port 0).
    pub fn local_addrs(&self) -> std::io::Result<ListenAddrs> {
        Ok(ListenAddrs {
            public: self.public.local_addr()?,
            internal: self
                .internal
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
            admin: self.admin.local_addr()?,
        })
    }
}

/// TLS of each listener. The internal listener always runs mutual TLS; the others serve TLS
/// when given a certificate.
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    /// Mutual TLS of the internal listener (required when there is one).
    pub internal: Option<MutualTls>,
    /// TLS of the public listener.
    pub public: Option<ServerTls>,
    /// TLS of the admin listener.
    pub admin: Option<ServerTls>,
}

struct Endpoint {
    audience: Audience,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    routes: RoutesBuilder,
    /// Full names of the gRPC services added, for this listener's reflection.
    services: Vec<&'static str>,
    /// Plain HTTP routes beside the gRPC ones (the metrics scrape, the console).
    http: Option<axum::Router>,
}

/// A service being assembled: add its gRPC services per audience, then [`ServiceApp::run`].
pub struct ServiceApp {
    name: &'static str,
    endpoints: Vec<Endpoint>,
    health: HealthReporter,
    limits: ServerLimits,
}

impl ServiceApp {
    /// Health and reflection on every listener. Fails when the internal listener has no mutual
    /// TLS (the internal API is never served in the clear), or when the limits do not fit
    /// together.
    pub fn new(
        name: &'static str,
        listeners: Listeners,
        tls: ListenerTls,
        limits: ServerLimits,
    ) -> anyhow::Result<Self> {
        limits.validate().map_err(anyhow::Error::msg)?;
        let (routes, health) = base_routes();
        let mut endpoints = vec![Endpoint {
            audience: Audience::Public,
            listener: listeners.public,
            tls: tls.public.as_ref().map(ServerTls::config),
            routes: routes.clone(),
            services: Vec::new(),
            http: None,
        }];
        if let Some(listener) = listeners.internal {
            let mtls = tls
                .internal
                .context("the internal listener needs mutual TLS (a CA, a certificate, a key)")?;
            endpoints.push(Endpoint {
                audience: Audience::Internal,
                listener,
                tls: Some(mtls.server()),
                routes: routes.clone(),
                services: Vec::new(),
                http: None,
            });
        }
        endpoints.push(Endpoint {
            audience: Audience::Admin,
            listener: listeners.admin,
            tls: tls.admin.as_ref().map(ServerTls::config),
            routes,
            services: Vec::new(),
            http: Some(crate::metrics::routes(crate::metrics::install(name))),
        });
        Ok(Self {
            name,
            endpoints,
            health,
            limits,
        })
    }

    /// Serves `service` to `audience` and marks it serving in health.
    ///
    /// # Panics
    /// When the service has no listener for `audience` (a programming error).
    pub async fn add<S>(&mut self, audience: Audience, service: S) -> &mut Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        let Some(endpoint) = self.endpoints.iter_mut().find(|e| e.audience == audience) else {
            panic!("{} has no {} listener", self.name, audience.as_str());
        };
        endpoint.routes.add_service(service);
        if !endpoint.services.contains(&S::NAME) {
            endpoint.services.push(S::NAME);
        }
        self.health.set_serving::<S>().await;
        self
    }

    /// Serves plain HTTP `routes` (browsers, scrapers) on the `audience` listener beside its gRPC
    /// services. The admin listener already serves `GET /metrics`; paths under
    /// [`crate::auth::HTTP_PATHS`] need an admin token there.
    ///
    /// # Panics
    /// When the service has no listener for `audience` (a programming error).
    pub fn add_http(&mut self, audience: Audience, routes: axum::Router) -> &mut Self {
        let Some(endpoint) = self.endpoints.iter_mut().find(|e| e.audience == audience) else {
            panic!("{} has no {} listener", self.name, audience.as_str());
        };
        endpoint.http = Some(match endpoint.http.take() {
            Some(http) => http.merge(routes),
            None => routes,
        });
        self
    }

    /// The address of the listener for `audience`, if the service has one.
    pub fn local_addr(&self, audience: Audience) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .find(|e| e.audience == audience)
            .and_then(|e| e.listener.local_addr().ok())
    }

    /// Every listener's address.
    pub fn local_addrs(&self) -> ListenAddrs {
        let addr = |a| self.local_addr(a).expect("public and admin always exist");
        ListenAddrs {
            public: addr(Audience::Public),
            internal: self.local_addr(Audience::Internal),
            admin: addr(Audience::Admin),
        }
    }

    /// Serves every listener and runs `background` alongside until `shutdown` completes; then
    /// every listener drains its requests, and `background` is stopped and awaited.
    pub async fn run<F, Fut>(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        background: F,
    ) -> anyhow::Result<()>
    where
        F: FnOnce(Stopping) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(background(Stopping(stopping.clone())));
        let mut servers = tokio::task::JoinSet::new();
        for mut endpoint in self.endpoints {
            let addr = endpoint.listener.local_addr()?;
            crate::server::reflection(&mut endpoint.routes, &endpoint.services)?;
            tracing::info!(
                service = self.name,
                listener = endpoint.audience.as_str(),
                %addr,
                tls = endpoint.tls.is_some(),
                "serving"
            );
            let limits = self.limits.clone();
            let stopped = Stopping(stopping.clone());
            let routes = endpoint.routes.routes();
            let http1 = endpoint.http.is_some();
            let routes = match endpoint.http {
                Some(http) => tonic::service::Routes::from(routes.into_axum_router().merge(http)),
                None => routes,
            };
            let listener_name = endpoint.audience.as_str();
            let admission = match endpoint.audience {
                Audience::Public => limits.public_admission.clone(),
                _ => None,
            }
            .unwrap_or_else(|| limits.admission.clone());
            let guard_reflection = endpoint.audience == Audience::Admin;
            servers.spawn(async move {
                serve(
                    endpoint.listener,
                    routes,
                    Served {
                        listener: listener_name,
                        tls: endpoint.tls,
                        http1,
                        admission,
                        guard_reflection,
                        stopping: stopped.clone(),
                    },
                    &limits,
                    stopped.wait(),
                )
                .await
                .with_context(|| format!("{} listener on {addr}", endpoint.audience.as_str()))
            });
        }
        // The first of: the shutdown signal, or a listener failing (then stop the others).
        let mut failed = None;
        tokio::select! {
            () = shutdown => {},
            Some(done) = servers.join_next() => failed = Some(done),
        }
        let _ = stop.send(true);
        let mut result = match failed {
            Some(done) => done.context("listener task").and_then(|r| r),
            None => Ok(()),
        };
        while let Some(done) = servers.join_next().await {
            if let Err(e) = done.context("listener task").and_then(|r| r) {
                result = result.and(Err(e));
            }
        }
        let _ = task.await;
        result
    }
}

/// Resolves when the service it was handed to starts shutting down.
#[derive(Debug, Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    /// Waits for the shutdown.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// The skeleton of every background loop: runs `round` every `interval` (a late round delays
/// the next rather than bunching them) until `shutdown` completes; a round under way finishes first. A round logs and absorbs
/// its own errors; the next tick is its retry.
pub async fn every<F, Fut>(interval: Duration, shutdown: impl Future<Output = ()>, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        round().await;
    }
}
