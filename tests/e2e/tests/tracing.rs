//! One order is one trace across the three services: the W3C trace context crosses every gRPC
//! call (injected by the orchestrator's clients, extracted by every server).
//!
//! Its own test binary, because it installs the process-wide tracing subscriber.

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use order_saga_e2e::{Cluster, ClusterOptions};
use order_saga_platform::testing::{CollectedSpans, TestBackend};
use order_saga_proto::order::v1::OrderState;
use tracing_subscriber::layer::SubscriberExt;

fn path_of(span: &SpanData) -> Option<String> {
    span.attributes
        .iter()
        .find(|KeyValue { key, .. }| key.as_str() == "rpc.path")
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_is_one_trace_across_the_three_services() {
    let exporter = CollectedSpans::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("e2e")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber here");

    // Batched: each saga's calls travel as items of `Batch` calls and must still continue the
    // order's trace (the unary path is the same server span without the batch around it).
    let batched = ClusterOptions {
        batched: true,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(TestBackend::Sqlite, batched).await;
    cluster.add_food("pizza", 1).await;
    cluster.add_agents("north", 1).await;
    let order = cluster
        .place("traced", "pizza", "north")
        .await
        .expect("place");
    assert_eq!(order.state, OrderState::Placed as i32);
    cluster.stop().await;
    provider.force_flush().expect("flush");

    let spans = exporter.spans();
    let place = spans
        .iter()
        .find(|s| path_of(s).as_deref() == Some("/order.v1.OrderService/PlaceOrder"))
        .expect("the order server's span");
    let trace = place.span_context.trace_id();
    for path in [
        "/store.v1.StoreService/GetFood",
        "/delivery.v1.DeliveryService/GetZone",
        "/reservation.v1.ReservationService/Reserve",
        "/reservation.v1.ReservationService/Assign",
    ] {
        let in_trace: Vec<&SpanData> = spans
            .iter()
            .filter(|s| path_of(s).as_deref() == Some(path))
            .collect();
        assert!(!in_trace.is_empty(), "no server span for {path}");
        for s in &in_trace {
            assert_eq!(
                s.span_context.trace_id(),
                trace,
                "{path} is in another trace"
            );
            // Its parent came over the wire, in the request's traceparent header.
            assert!(s.parent_span_is_remote, "{path} has no remote parent");
        }
    }
    let reserves = spans
        .iter()
        .filter(|s| path_of(s).as_deref() == Some("/reservation.v1.ReservationService/Reserve"))
        .count();
    assert_eq!(reserves, 2, "store and delivery each served one Reserve");
}
