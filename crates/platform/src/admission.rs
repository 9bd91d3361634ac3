//! Admission control for a whole server: backpressure instead of refusals.
//!
//! At most [`AdmissionConfig::max_in_flight`] requests run at once across **all** connections of
//! a server. The next [`AdmissionConfig::max_queued`] wait, first come first served, for up to
//! [`AdmissionConfig::queue_wait`]. A request that finds the queue full, or waits too long, is
//! answered `UNAVAILABLE` with a `google.rpc.RetryInfo` detail ([`order_saga_saga::busy`]): a
//! code no saga and no client reads as final, and a hint of when to come back.
//!
//! This replaces tower's per-connection `ConcurrencyLimit` + `LoadShed`, which answered
//! `RESOURCE_EXHAUSTED` (read by the saga as "sold out") as soon as one connection, such as the
//! orchestrator's single HTTP/2 connection to a participant, had 256 requests in flight.
//!
//! A request waits no longer than its own deadline allows (the caller's `grpc-timeout`, less a
//! margin), so a busy answer always arrives before the caller gives up: a caller whose timeout
//! is shorter than the queue wait would otherwise see only its own `DEADLINE_EXCEEDED`, never
//! the retry hint.
//!
//! Health checks and reflection are never queued: a busy server is still alive.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// How many requests a server runs and queues.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Requests running at once across all connections.
    pub max_in_flight: usize,
    /// Requests waiting for a slot; one more is answered busy at once.
    pub max_queued: usize,
    /// Longest a request waits for a slot before it is answered busy.
    pub queue_wait: Duration,
    /// The delay the busy answer's `RetryInfo` asks the client to wait.
    pub retry_after: Duration,
    /// Requests admitted per second at most (`None`: no rate limit). A request over the rate
    /// waits in the queue for its turn (within the queue wait), so callers that do not wait
    /// for their answers cannot make the server spend more than this on them.
    pub max_per_second: Option<u32>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            max_queued: 4096,
            queue_wait: Duration::from_secs(1),
            retry_after: Duration::from_millis(200),
            max_per_second: None,
        }
    }
}

/// The rate limit of one server: a generic cell rate algorithm. Each admitted request moves
/// the theoretical arrival time (`tat`) on by one interval; a request may start once `tat`
/// is less than `burst` intervals ahead of now.
#[derive(Debug)]
struct Rate {
    interval: Duration,
    burst: Duration,
    tat: std::sync::Mutex<tokio::time::Instant>,
}

impl Rate {
    fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        // A tenth of a second's worth may arrive at once.
        let burst = interval * (per_second / 10).max(1);
        Self {
            interval,
            burst,
            tat: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Books this request's turn: how long it must wait for it, or `None` (nothing booked)
    /// when that is longer than `patience`.
    fn book(&self, patience: Duration) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        let mut tat = self
            .tat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = (*tat).max(now) + self.interval;
        let wait = next.saturating_duration_since(now + self.burst);
        if wait > patience {
            return None;
        }
        *tat = next;
        Some(wait)
    }
}

/// Counters of one server's admission, shared by every connection.
#[derive(Debug)]
struct Shared {
    config: AdmissionConfig,
    rate: Option<Rate>,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    /// The listener's name in metrics, once [`AdmissionLayer::report_metrics`] set it.
    listener: std::sync::OnceLock<&'static str>,
}

/// The [`Layer`] that puts one server's requests through one admission queue. Clones share it.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    shared: Arc<Shared>,
}

impl AdmissionLayer {
    /// A queue with `config`'s limits.
    pub fn new(config: AdmissionConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Self {
            shared: Arc::new(Shared {
                rate: config.max_per_second.map(Rate::new),
                config,
                slots,
                queued: AtomicUsize::new(0),
                listener: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Reports this queue in the metrics as `listener`: the gauges `admission_queued` and
    /// `admission_in_flight` (set at each scrape, while the server lives) and the counter
    /// `admission_refused_total`.
    pub fn report_metrics(&self, listener: &'static str) {
        let _ = self.shared.listener.set(listener);
        let shared = Arc::downgrade(&self.shared);
        crate::metrics::on_scrape(move || {
            let Some(shared) = shared.upgrade() else {
                return false;
            };
            let layer = AdmissionLayer { shared };
            metrics::gauge!("admission_queued", "listener" => listener).set(layer.queued() as f64);
            metrics::gauge!("admission_in_flight", "listener" => listener)
                .set(layer.in_flight() as f64);
            true
        });
    }

    /// Requests running now.
    pub fn in_flight(&self) -> usize {
        self.shared.config.max_in_flight.max(1) - self.shared.slots.available_permits()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Health, reflection and the metrics scrape bypass the queue.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.")
        || path.starts_with("/grpc.reflection.")
        // An overloaded server is exactly when its metrics matter.
        || path == "/metrics"
}

/// Decrements the queue length when a waiting request stops waiting, however it stops.
struct InQueue<'a>(&'a AtomicUsize);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a waiting request keeps of its caller's deadline to send the busy answer back in.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`, gRPC over HTTP/2).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Shared {
    /// How long a request whose caller allows `timeout` may wait for a slot: the queue wait,
    /// or less when the caller's deadline comes first (keeping [`ANSWER_MARGIN`] for the answer).
    fn wait_for(&self, timeout: Option<Duration>) -> Duration {
        match timeout {
            Some(t) => self
                .config
                .queue_wait
                .min(t.saturating_sub(ANSWER_MARGIN.min(t / 2))),
            None => self.config.queue_wait,
        }
    }

    /// A slot, or the busy status to answer with.
    async fn admit(
        &self,
        timeout: Option<Duration>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, tonic::Status> {
        if self.rate.is_none()
            && let Ok(permit) = self.slots.clone().try_acquire_owned()
        {
            return Ok(permit);
        }
        let busy = |why: &str| {
            if let Some(listener) = self.listener.get() {
                metrics::counter!("admission_refused_total", "listener" => *listener).increment(1);
            }
            order_saga_saga::busy(
                format!("server busy ({why}); retry after the RetryInfo delay"),
                self.config.retry_after,
            )
        };
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.config.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(busy("admission queue full"));
        }
        let _waiting = InQueue(&self.queued);
        let patience = self.wait_for(timeout);
        let started = tokio::time::Instant::now();
        if let Some(rate) = &self.rate {
            match rate.book(patience) {
                Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                Some(_) => {}
                None => {
                    // No turn within its patience: it is answered busy, but only once that
                    // patience is spent, so a caller that never waits for a retry hint still
                    // sends one request per queue wait instead of spinning on refusals.
                    tokio::time::sleep(patience).await;
                    return Err(busy("over the request rate"));
                }
            }
        }
        let left = patience.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(busy("shutting down")),
            Err(_elapsed) => Err(busy("waited too long for a slot")),
        }
    }
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
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
        // Take the service that was driven ready and leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if exempt(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let shared = self.shared.clone();
        let timeout = grpc_timeout(request.headers());
        Box::pin(async move {
            match shared.admit(timeout).await {
                Ok(permit) => {
                    let response = inner.call(request).await;
                    drop(permit);
                    response
                }
                // Read the rest of the body first: an early answer resets the stream.
                Err(status) => Ok(crate::refusal::refuse(request, status).await),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A route that holds every request until `release` is notified.
    #[derive(Clone)]
    struct Hold(Arc<tokio::sync::Notify>);

    impl Service<http::Request<tonic::body::Body>> for Hold {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            let release = self.0.clone();
            Box::pin(async move {
                release.notified().await;
                Ok(http::Response::new(tonic::body::Body::empty()))
            })
        }
    }

    /// A route that answers at once.
    #[derive(Clone)]
    struct AtOnce;

    impl Service<http::Request<tonic::body::Body>> for AtOnce {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async { Ok(http::Response::new(tonic::body::Body::empty())) })
        }
    }

    fn request(path: &str) -> http::Request<tonic::body::Body> {
        http::Request::builder()
            .uri(path)
            .body(tonic::body::Body::empty())
            .expect("request")
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<tonic::Status> {
        tonic::Status::from_header_map(response.headers())
    }

    #[tokio::test]
    async fn beyond_the_queue_the_answer_is_unavailable_with_a_retry_hint() {
        let release = Arc::new(tokio::sync::Notify::new());
        let layer = AdmissionLayer::new(AdmissionConfig {
            max_in_flight: 2,
            max_queued: 3,
            queue_wait: Duration::from_secs(30),
            retry_after: Duration::from_millis(150),
            max_per_second: None,
        });
        // Two connections, one admission: the limits are per server.
        let a = layer.layer(Hold(release.clone()));
        let b = layer.layer(Hold(release.clone()));
        let mut held = Vec::new();
        for i in 0..5 {
            let mut svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            held.push(tokio::spawn(
                async move { svc.call(request("/x.S/M")).await },
            ));
        }
        while layer.queued() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(layer.in_flight(), 2);
        // The sixth finds the queue full.
        let refused = a.clone().call(request("/x.S/M")).await.expect("infallible");
        let status = grpc_status(&refused).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            order_saga_saga::retry_hint(&status),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            order_saga_saga::classify(order_saga_saga::Call::Reserve, &status),
            order_saga_saga::Verdict::Transient
        );
        // Health is not queued behind the load: it goes straight to the route.
        let mut probe = b.clone();
        held.push(tokio::spawn(async move {
            probe.call(request("/grpc.health.v1.Health/Check")).await
        }));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!((layer.queued(), layer.in_flight()), (3, 2));
        // Everyone admitted or queued completes as slots free up.
        for h in held {
            loop {
                release.notify_waiters();
                if h.is_finished() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let response = h.await.expect("task").expect("infallible");
            assert!(
                grpc_status(&response).is_none(),
                "admitted requests are served"
            );
        }
        assert_eq!(layer.queued(), 0);
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_busy_answer_waits_for_the_rest_of_the_request_body() {
        let release = Arc::new(tokio::sync::Notify::new());
        let layer = AdmissionLayer::new(AdmissionConfig {
            max_in_flight: 1,
            max_queued: 0,
            ..AdmissionConfig::default()
        });
        let svc = layer.layer(Hold(release.clone()));
        let mut first = svc.clone();
        let _running = tokio::spawn(async move { first.call(request("/x.S/M")).await });
        while layer.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        // Headers first, the message a moment later, as HTTP/2 may deliver them.
        let (body, send, ended) = crate::refusal::tests::LateBody::new();
        let late = request("/x.S/M").map(|_| tonic::body::Body::new(body));
        let mut refused = svc.clone();
        let answer = tokio::spawn(async move { refused.call(late).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !answer.is_finished(),
            "a refusal sent before the body arrives resets the stream"
        );
        send.send(bytes::Bytes::from_static(b"\0\0\0\0\0"))
            .expect("the refusal reads the body");
        let response = answer.await.expect("task").expect("infallible");
        assert!(ended.load(Ordering::SeqCst));
        assert_eq!(
            grpc_status(&response).map(|s| s.code()),
            Some(tonic::Code::Unavailable)
        );
        release.notify_waiters();
    }

    #[tokio::test]
    async fn a_waiting_request_is_answered_busy_before_its_callers_deadline() {
        let release = Arc::new(tokio::sync::Notify::new());
        let layer = AdmissionLayer::new(AdmissionConfig {
            max_in_flight: 1,
            max_queued: 10,
            queue_wait: Duration::from_secs(5),
            retry_after: Duration::from_millis(100),
            max_per_second: None,
        });
        let mut svc = layer.layer(Hold(release.clone()));
        let mut first = svc.clone();
        let running = tokio::spawn(async move { first.call(request("/x.S/M")).await });
        while layer.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        // The caller allows 300 ms, far less than the 5 s queue wait: its busy answer must come
        // within its deadline, or it never sees the retry hint.
        let mut late = request("/x.S/M");
        late.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("300m"));
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_millis(300), svc.call(late))
            .await
            .expect("answered within the caller's deadline")
            .expect("infallible");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "it waited for a slot first"
        );
        let status = grpc_status(&answer).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(order_saga_saga::retry_hint(&status).is_some());
        running.abort();
    }

    #[tokio::test]
    async fn requests_over_the_rate_wait_their_turn_or_are_answered_busy() {
        let layer = AdmissionLayer::new(AdmissionConfig {
            max_in_flight: 1000,
            max_queued: 1000,
            queue_wait: Duration::from_secs(1),
            retry_after: Duration::from_millis(100),
            max_per_second: Some(100),
        });
        // Callers that never wait for their answers: 300 at once, for a second.
        let started = tokio::time::Instant::now();
        let mut calls = Vec::new();
        for _ in 0..300 {
            let mut svc = layer.layer(AtOnce);
            calls.push(tokio::spawn(
                async move { svc.call(request("/x.S/M")).await },
            ));
        }
        let mut served = 0;
        let mut busy = 0;
        for call in calls {
            let response = call.await.expect("task").expect("infallible");
            match grpc_status(&response) {
                None => served += 1,
                Some(s) => {
                    assert_eq!(s.code(), tonic::Code::Unavailable);
                    busy += 1;
                }
            }
        }
        // A tenth of a second's burst, then 100 per second for the one second of patience.
        assert!((100..=115).contains(&served), "served {served}");
        assert_eq!(served + busy, 300);
        // Refusals come only once the patience is spent: a caller that retries at once still
        // sends one request a second.
        let elapsed = started.elapsed();
        assert!(
            (Duration::from_millis(950)..=Duration::from_millis(1500)).contains(&elapsed),
            "{elapsed:?}"
        );
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let of = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", http::HeaderValue::from_static(v));
            grpc_timeout(&h)
        };
        assert_eq!(of("2S"), Some(Duration::from_secs(2)));
        assert_eq!(of("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(of("10u"), Some(Duration::from_micros(10)));
        assert_eq!(of("S"), None);
        assert_eq!(of("123456789S"), None, "at most eight digits");
        assert_eq!(of("5x"), None);
    }

    #[tokio::test]
    async fn a_request_that_waits_too_long_is_answered_busy() {
        let release = Arc::new(tokio::sync::Notify::new());
        let layer = AdmissionLayer::new(AdmissionConfig {
            max_in_flight: 1,
            max_queued: 10,
            queue_wait: Duration::from_millis(20),
            retry_after: Duration::from_millis(100),
            max_per_second: None,
        });
        let mut svc = layer.layer(Hold(release.clone()));
        let mut first = svc.clone();
        let running = tokio::spawn(async move { first.call(request("/x.S/M")).await });
        while layer.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        let late = svc.call(request("/x.S/M")).await.expect("infallible");
        let status = grpc_status(&late).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(order_saga_saga::retry_hint(&status).is_some());
        assert_eq!(layer.queued(), 0, "a timed-out waiter leaves the queue");
        running.abort();
    }
}
