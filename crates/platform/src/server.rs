//! The gRPC server stack every order-saga service runs.
//!
//! Each listener of a service ([`crate::app`]) builds its routes on top of [`base_routes`] (gRPC
//! health), adds [`reflection`] for exactly the services it serves, and hands them to [`serve`]
//! with a listener, its TLS and a shutdown future.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prost::Message;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tonic::{
    service::{Routes, RoutesBuilder},
    transport::{
        ServerTlsConfig,
        server::{Connected, TcpConnectInfo},
    },
};
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};

use crate::{
    admission::{AdmissionConfig, AdmissionLayer},
    auth::{AdminAuthLayer, AdminTokens},
};

/// What every request must get past: a run-time limit, the admission queue, and, for the
/// admin services, a token; and what one listener holds open at most.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Longest a request may run before it is answered `CANCELLED`/`DEADLINE_EXCEEDED`; a
    /// shorter `grpc-timeout` sent by the client wins.
    pub request_timeout: Duration,
    /// How many requests each listener runs and queues across all its connections.
    pub admission: AdmissionConfig,
    /// The public listener's own admission budget, when it differs (a participant keeps its
    /// public catalogue reads to a small share, so no volume of them delays a reserve).
    pub public_admission: Option<AdmissionConfig>,
    /// The tokens the admin services accept (none: every admin call is refused).
    pub admin_tokens: AdminTokens,
    /// Connections, streams and health watches one listener holds open at most.
    pub connections: ConnectionLimits,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            admission: AdmissionConfig::default(),
            public_admission: None,
            admin_tokens: AdminTokens::default(),
            connections: ConnectionLimits::default(),
        }
    }
}

impl ServerLimits {
    /// Checks that the limits fit together; the error names the settings.
    pub fn validate(&self) -> Result<(), String> {
        for (name, a) in [
            ("", Some(&self.admission)),
            ("public ", self.public_admission.as_ref()),
        ] {
            let Some(a) = a else { continue };
            if a.queue_wait >= self.request_timeout {
                return Err(format!(
                    "the {name}queue wait ({:?}) must be shorter than the request timeout ({:?}): \
                     a request would time out in the queue instead of being answered busy",
                    a.queue_wait, self.request_timeout
                ));
            }
            if a.max_in_flight == 0 {
                return Err(format!("the {name}max in flight must be at least 1"));
            }
        }
        let c = &self.connections;
        if c.max_connections == 0 || c.max_streams_per_connection == 0 || c.max_health_watches == 0
        {
            return Err("connection, stream and health-watch limits must be at least 1".into());
        }
        Ok(())
    }
}

/// What one listener holds open at most.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (a client beyond it waits for a stream).
    pub max_streams_per_connection: u32,
    /// Open `grpc.health.v1.Health/Watch` streams, which never end on their own; one more is
    /// answered busy.
    pub max_health_watches: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_streams_per_connection: 1024,
            max_health_watches: 64,
        }
    }
}

/// Routes with gRPC health registered, and the reporter the service uses to mark its own gRPC
/// services as serving. Reflection is added per listener ([`reflection`]).
pub fn base_routes() -> (RoutesBuilder, HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut routes = RoutesBuilder::default();
    routes.add_service(health);
    (routes, reporter)
}

/// The files of `set` that define `services` (full names such as `order.v1.OrderService`),
/// with everything they import: what a listener serving exactly those services may describe.
pub fn files_for(
    set: prost_types::FileDescriptorSet,
    services: &[&str],
) -> prost_types::FileDescriptorSet {
    let by_name: HashMap<String, prost_types::FileDescriptorProto> = set
        .file
        .into_iter()
        .map(|f| (f.name().to_owned(), f))
        .collect();
    let mut wanted: Vec<String> = by_name
        .values()
        .filter(|f| {
            f.service.iter().any(|s| {
                let full = format!("{}.{}", f.package(), s.name());
                services.contains(&full.as_str())
            })
        })
        .map(|f| f.name().to_owned())
        .collect();
    let mut keep = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if keep.insert(name.clone())
            && let Some(f) = by_name.get(&name)
        {
            wanted.extend(f.dependency.iter().cloned());
        }
    }
    prost_types::FileDescriptorSet {
        file: keep
            .iter()
            .filter_map(|name| by_name.get(name).cloned())
            .collect(),
    }
}

/// Server reflection (v1 and v1alpha) that lists and describes only `services` and health:
/// the public listener never describes the admin or internal APIs.
pub fn reflection(routes: &mut RoutesBuilder, services: &[&str]) -> anyhow::Result<()> {
    let set = prost_types::FileDescriptorSet::decode(order_saga_proto::FILE_DESCRIPTOR_SET)?;
    let files = files_for(set, services);
    let build = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(files.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection");
        for name in services {
            b = b.with_service_name(*name);
        }
        b
    };
    routes
        .add_service(build().build_v1()?)
        .add_service(build().build_v1alpha()?);
    Ok(())
}

/// How one listener serves.
#[derive(Debug, Clone)]
pub struct Served {
    /// The listener's name in logs and metrics (`public`, `internal`, `admin`).
    pub listener: &'static str,
    /// TLS (mutual on the internal listener); plaintext when `None`.
    pub tls: Option<ServerTlsConfig>,
    /// Also accept HTTP/1.1 (for the listener's plain HTTP routes: browsers, scrapers).
    pub http1: bool,
    /// The admission budget of this listener.
    pub admission: AdmissionConfig,
    /// Require a token for reflection (the admin listener).
    pub guard_reflection: bool,
    /// Resolves when the service shuts down: open health watches then end, so they do not
    /// hold the graceful shutdown (which waits for every stream) forever.
    pub stopping: crate::app::Stopping,
}

/// Streams one connection may make the server reset for its errors before it is closed
/// (`GOAWAY(ENHANCE_YOUR_CALM)`): h2's default, which tonic would otherwise leave unlimited.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Serves `routes` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    served: Served,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let c = &limits.connections;
    let mut builder = tonic::transport::Server::builder()
        .accept_http1(served.http1)
        .max_concurrent_streams(c.max_streams_per_connection)
        // h2's own bound on the streams a peer makes us reset ("MadeYouReset"); tonic turns it
        // off unless asked. Refusals never reset a stream (`refusal`), so only a misbehaving
        // peer reaches it, and loses its connection.
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    if let Some(tls) = served.tls {
        builder = builder.tls_config(tls)?;
    }
    let admission = AdmissionLayer::new(served.admission.clone());
    admission.report_metrics(served.listener);
    builder
        // Outermost: one span per request, continuing the caller's trace context.
        .trace_fn(crate::telemetry::grpc_server_span)
        // Bound every request's run time; the client's grpc-timeout wins when it is shorter.
        .timeout(limits.request_timeout)
        // A body that is not a valid message is the caller's error, not ours.
        .layer(tower::util::MapResponseLayer::new(
            undecodable_is_invalid_argument,
        ))
        // Admin calls without a valid token are refused before they take an admission slot
        // (on the admin listener, reflection too).
        .layer(
            AdminAuthLayer::new(limits.admin_tokens.clone())
                .guard_reflection(served.guard_reflection),
        )
        // Health watches are long-lived and skip admission: bounded on their own.
        .layer(WatchLimitLayer::new(
            c.max_health_watches,
            served.admission.retry_after,
            served.stopping.clone(),
        ))
        // Innermost: one admission queue for the whole listener (not per connection),
        // answering UNAVAILABLE with a retry hint when it is full.
        .layer(admission)
        .add_routes(routes)
        .serve_with_incoming_shutdown(capped_incoming(listener, c.max_connections), shutdown)
        .await
}

/// An accepted connection holding one of its listener's connection slots until it closes.
pub struct CappedConn {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for CappedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CappedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connections of `listener`, at most `max` open at once: the next is accepted only when
/// one closes (the rest wait in the kernel's backlog). Accept errors (out of file descriptors,
/// a connection reset before it was accepted) are logged and skipped, never the end of serving.
fn capped_incoming(
    listener: TcpListener,
    max: usize,
) -> impl futures::Stream<Item = std::io::Result<CappedConn>> + Send {
    let slots = Arc::new(Semaphore::new(max.max(1)));
    futures::stream::unfold((listener, slots), |(listener, slots)| async move {
        let slot = slots.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = CappedConn {
                        inner: stream,
                        _slot: slot,
                    };
                    return Some((Ok(conn), (listener, slots)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
}

const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// Bounds the open health `Watch` streams of a listener: each holds a slot until its response
/// body is dropped; one more is answered busy. At shutdown every watch ends (`UNAVAILABLE`).
#[derive(Debug, Clone)]
struct WatchLimitLayer {
    slots: Arc<Semaphore>,
    retry_after: Duration,
    stopping: crate::app::Stopping,
}

impl WatchLimitLayer {
    fn new(max: usize, retry_after: Duration, stopping: crate::app::Stopping) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
            retry_after,
            stopping,
        }
    }
}

impl<S> Layer<S> for WatchLimitLayer {
    type Service = WatchLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WatchLimit {
            inner,
            limit: self.clone(),
        }
    }
}

/// The service [`WatchLimitLayer`] wraps around a listener's routes.
#[derive(Debug, Clone)]
struct WatchLimit<S> {
    inner: S,
    limit: WatchLimitLayer,
}

impl<S, B> Service<http::Request<B>> for WatchLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != WATCH_PATH {
            return Box::pin(self.inner.call(request));
        }
        let Ok(slot) = self.limit.slots.clone().try_acquire_owned() else {
            let status = order_saga_saga::busy(
                "too many open health watches on this listener",
                self.limit.retry_after,
            );
            return Box::pin(async move { Ok(crate::refusal::refuse(request, status).await) });
        };
        let response = self.inner.call(request);
        let stopping = Box::pin(self.limit.stopping.clone().wait());
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(HoldingBody {
                    body,
                    _slot: slot,
                    stopping: Some(stopping),
                })
            }))
        })
    }
}

/// A watch's response body: keeps its slot until it is dropped, and ends with `UNAVAILABLE`
/// when the service shuts down.
struct HoldingBody {
    body: tonic::body::Body,
    _slot: OwnedSemaphorePermit,
    /// Until the service stops; `None` once the closing trailers went out.
    stopping: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl http_body::Body for HoldingBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let Some(stopping) = self.stopping.as_mut() else {
            return Poll::Ready(None);
        };
        if stopping.as_mut().poll(cx).is_ready() {
            self.stopping = None;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static("server%20shutting%20down"),
            );
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.stopping.is_none() || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Rewrites tonic's answer to a request body that does not decode from `INTERNAL` (what
/// tonic-prost sends, following gRPC's table for servers) to `INVALID_ARGUMENT`: the request
/// was malformed, nothing failed inside, and a client must not retry it as it may an internal
/// error. Such answers are trailers-only, so the status is in the response headers.
#[allow(dead_code)]
fn undecodable_is_invalid_argument(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let internal = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"13");
    let undecodable = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.starts_with("failed%20to%20decode%20Protobuf")
                || m.starts_with("failed to decode Protobuf")
        });
    if internal && undecodable {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static("3"), // INVALID_ARGUMENT
        );
    }
    response
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM, for graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received, draining requests");
}
