//! The gRPC server stack every order-saga service runs.
//!
//! Each listener of a service ([`crate::app`]) builds its routes on top of [`base_routes`] (gRPC
//! health and server reflection) and hands them to [`serve`] with a listener, its TLS and a
//! shutdown future.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    service::{Routes, RoutesBuilder},
    transport::ServerTlsConfig,
};
use tonic_health::server::HealthReporter;

use crate::{
    admission::{AdmissionConfig, AdmissionLayer},
    auth::{AdminAuthLayer, AdminTokens},
};

/// What every request must get past: a run-time limit, the admission queue, and, for the
/// admin services, a token.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Longest a request may run before it is answered `CANCELLED`/`DEADLINE_EXCEEDED`; a
    /// shorter `grpc-timeout` sent by the client wins.
    pub request_timeout: Duration,
    /// How many requests the server runs and queues across all its connections.
    pub admission: AdmissionConfig,
    /// The tokens the admin services accept (none: every admin call is refused).
    pub admin_tokens: AdminTokens,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            admission: AdmissionConfig::default(),
            admin_tokens: AdminTokens::default(),
        }
    }
}

/// Routes with gRPC health and reflection (v1 and v1alpha) already registered, and the reporter
/// the service uses to mark its own gRPC services as serving.
pub fn base_routes() -> anyhow::Result<(RoutesBuilder, HealthReporter)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(order_saga_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok((routes, reporter))
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
}

/// Serves `routes` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    served: Served,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder().accept_http1(served.http1);
    if let Some(tls) = served.tls {
        builder = builder.tls_config(tls)?;
    }
    let admission = AdmissionLayer::new(limits.admission.clone());
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
        // Admin calls without a valid token are refused before they take an admission slot.
        .layer(AdminAuthLayer::new(limits.admin_tokens.clone()))
        // Innermost: one admission queue for the whole server (not per connection), answering
        // UNAVAILABLE with a retry hint when it is full.
        .layer(admission)
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
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
