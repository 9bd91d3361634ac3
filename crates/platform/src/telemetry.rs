//! Logging, tracing and trace-context propagation.
//!
//! [`init_telemetry`] installs a `tracing` subscriber that logs to stderr (text, or one JSON
//! object per line with `LOG_FORMAT=json`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
//! exports spans over OTLP/gRPC. `RUST_LOG` filters the log output only; what is traced has
//! its own filter (`OTEL_TRACES_FILTER`, default `info`), so quieting the logs never drops a
//! trace. Traces are exported under `OTEL_SERVICE_NAME` when it is set. Each request's span
//! carries `trace_id` (when trace context is on: OTLP export or JSON logs) and, once known,
//! `order_id`; JSON lines list the fields of every span they are in, so every line of a request
//! names its trace and its order. The returned guard flushes the exporter when dropped. W3C
//! trace context (`traceparent`) is injected into every outgoing
//! gRPC request by [`TracePropagation`] and extracted by [`grpc_server_span`] on the way in, so
//! an order's spans in the order, store and delivery services form one trace.

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt, util::SubscriberInitExt};

/// Telemetry settings, normally read from the environment by [`TelemetryConfig::from_env`].
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`); no export when unset.
    pub otlp_endpoint: Option<String>,
    /// Log filter directives (`RUST_LOG`); `info` when unset. It gates the log output only:
    /// quieting the logs must not silently drop the traces.
    pub log_filter: Option<String>,
    /// Filter directives for the spans that are traced (`OTEL_TRACES_FILTER`); `info` when
    /// unset.
    pub trace_filter: Option<String>,
    /// The service name traces are exported under (`OTEL_SERVICE_NAME`); the binary's own
    /// name when unset.
    pub service_name: Option<String>,
    /// One JSON object per log line (`LOG_FORMAT=json`) instead of text.
    pub json_logs: bool,
}

impl TelemetryConfig {
    /// Reads `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_FILTER`,
    /// `RUST_LOG` and `LOG_FORMAT` (`text`, the default, or `json`).
    pub fn from_env() -> anyhow::Result<Self> {
        let json_logs = match std::env::var("LOG_FORMAT").as_deref() {
            Err(_) | Ok("") | Ok("text") => false,
            Ok("json") => true,
            Ok(other) => anyhow::bail!("LOG_FORMAT must be `text` or `json`, not {other:?}"),
        };
        Ok(Self {
            otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            log_filter: std::env::var("RUST_LOG").ok(),
            trace_filter: std::env::var("OTEL_TRACES_FILTER").ok(),
            service_name: std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            json_logs,
        })
    }
}

/// Flushes and shuts down the span exporter when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("failed to flush traces: {e}");
        }
    }
}

/// Installs logging and, if configured, OTLP trace export for `service_name` (or the
/// configured `OTEL_SERVICE_NAME`).
pub fn init_telemetry(
    service_name: &'static str,
    config: &TelemetryConfig,
) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = || {
        Resource::builder()
            .with_service_name(
                config
                    .service_name
                    .clone()
                    .unwrap_or_else(|| service_name.to_owned()),
            )
            .build()
    };
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build();
            global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        // JSON logs carry trace ids: trace context on, nothing exported.
        None if config.json_logs => Some(
            SdkTracerProvider::builder()
                .with_resource(resource())
                .build(),
        ),
        None => None,
    };
    subscriber(config, provider.as_ref(), service_name)?.try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The subscriber [`init_telemetry`] installs: the log output behind the log filter, and the
/// trace layer behind a filter of its own, so `RUST_LOG=warn` quiets the logs without
/// dropping a single span from the traces.
fn subscriber(
    config: &TelemetryConfig,
    provider: Option<&SdkTracerProvider>,
    service_name: &'static str,
) -> anyhow::Result<impl tracing::Subscriber + Send + Sync + 'static> {
    let log_filter = || EnvFilter::try_new(config.log_filter.as_deref().unwrap_or("info"));
    let (text, json) = if config.json_logs {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .with_filter(log_filter()?);
        (None, Some(json))
    } else {
        let text = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter()?);
        (Some(text), None)
    };
    let trace_filter = EnvFilter::try_new(config.trace_filter.as_deref().unwrap_or("info"))?;
    let otel = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name))
            .with_filter(trace_filter)
    });
    Ok(tracing_subscriber::registry()
        .with(otel)
        .with(text)
        .with(json))
}

/// Quiet logging for tests: prints only when `TEST_LOG` is set. Safe to call many times.
pub fn init_test_logging() {
    global::set_text_map_propagator(TraceContextPropagator::new());
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ))
            .with_test_writer()
            .try_init();
    }
}

/// Writes trace context into gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Reads trace context from HTTP headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A client interceptor that propagates the current span's trace context (W3C `traceparent`).
///
/// Use with `SomeClient::with_interceptor(channel, TracePropagation)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracePropagation;

impl tonic::service::Interceptor for TracePropagation {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let context = tracing::Span::current().context();
        global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        });
        Ok(request)
    }
}

/// The span each server opens per request, continuing the caller's trace when it sent one.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let span = tracing::info_span!(
        "grpc.request",
        otel.kind = "server",
        rpc.path = %request.uri().path(),
        trace_id = tracing::field::Empty,
        order_id = tracing::field::Empty,
    );
    continue_trace(span, parent)
}

/// The current span's trace context as a W3C carrier (`traceparent`, `tracestate`), for a
/// call that travels inside another (an item of a `Batch` call); empty when not tracing.
pub fn trace_carrier() -> std::collections::HashMap<String, String> {
    let context = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier
}

/// The span a server opens for one call carried inside another (an item of a `Batch` call),
/// as if it had arrived alone at `path`: a root in this process (not inside the carrying
/// request's span, which belongs to another order's trace) continuing the trace in `carrier`.
pub fn carried_call_span(
    path: &str,
    carrier: &std::collections::HashMap<String, String>,
) -> tracing::Span {
    let parent = global::get_text_map_propagator(|p| p.extract(carrier));
    let span = tracing::info_span!(
        parent: None,
        "grpc.request",
        otel.kind = "server",
        rpc.path = %path,
        trace_id = tracing::field::Empty,
        order_id = tracing::field::Empty,
    );
    continue_trace(span, parent)
}

/// Makes `span` continue the trace of `parent` and records its trace id.
fn continue_trace(span: tracing::Span, parent: opentelemetry::Context) -> tracing::Span {
    // Fails only when the span is disabled by the filter; nothing to propagate then.
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// Names the order the current request is about on its `grpc.request` span, so every later
/// log line of the request carries it.
pub fn record_order_id(order_id: &str) {
    tracing::Span::current().record("order_id", order_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CollectedSpans;

    fn traced(config: &TelemetryConfig) -> Vec<String> {
        let collected = CollectedSpans::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .build();
        let subscriber = subscriber(config, Some(&provider), "test").expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            let _request = tracing::info_span!("place_order").entered();
            let _debug = tracing::debug_span!("sql").entered();
        });
        provider.force_flush().expect("flush");
        collected
            .spans()
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }

    /// A user quieting the logs with `RUST_LOG=warn` still gets every trace: one global
    /// filter used to gate the trace layer too, and dropped every `info` span. (Fails with the
    /// log filter applied to the whole subscriber: no span is exported.)
    #[test]
    fn spans_are_traced_whatever_the_log_filter_says() {
        let quiet = TelemetryConfig {
            log_filter: Some("warn".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(traced(&quiet), ["place_order"]);
        let deep = TelemetryConfig {
            log_filter: Some("off".into()),
            trace_filter: Some("debug".into()),
            ..TelemetryConfig::default()
        };
        let mut names = traced(&deep);
        names.sort();
        assert_eq!(names, ["place_order", "sql"]);
    }
}
