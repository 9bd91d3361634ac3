//! The load: closed loop (C clients, each sending its next order when the last is answered)
//! or open loop (orders sent on a fixed schedule whatever the answers, each latency measured
//! from its **scheduled** send time, so queueing is not hidden). Busy answers (`UNAVAILABLE`
//! with a retry hint) are retried with the same key after the hint, inside the measured
//! latency.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use hdrhistogram::Histogram;
use order_saga_proto::order::v1::{
    OrderState, PlaceOrderRequest, order_service_client::OrderServiceClient,
};
use order_saga_saga::{ClientRetry, client_retry};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Which orders are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Uniform over N foods x M zones, stock plentiful.
    Uniform,
    /// One hot food and one hot zone.
    Hot,
    /// Uniform, but stock for only a fraction of the orders: NOT_PLACED exercised.
    Scarce,
}

impl Workload {
    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Uniform => "uniform",
            Workload::Hot => "hot",
            Workload::Scarce => "scarce",
        }
    }

    /// The foods and zones orders pick from.
    pub fn pools(self, foods: u32, zones: u32) -> (Vec<String>, Vec<String>) {
        match self {
            Workload::Hot => (vec!["hot".into()], vec!["hot".into()]),
            Workload::Uniform | Workload::Scarce => (
                (0..foods.max(1)).map(|i| format!("food-{i}")).collect(),
                (0..zones.max(1)).map(|i| format!("zone-{i}")).collect(),
            ),
        }
    }
}

/// The outcome of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Placed,
    NotPlaced,
    Error,
}

/// Per-second counts and latencies.
#[derive(Debug, Clone)]
pub struct Second {
    /// Orders answered PLACED.
    pub placed: u64,
    /// Orders answered NOT_PLACED.
    pub not_placed: u64,
    /// Busy answers retried.
    pub busy: u64,
    /// Failed orders.
    pub errors: u64,
    /// End-to-end latency, microseconds.
    pub latency: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self {
            placed: 0,
            not_placed: 0,
            busy: 0,
            errors: 0,
            latency: new_histogram(),
        }
    }
}

/// A histogram of 1 µs to 1 h at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// What the load generator saw, second by second from the start of measurement.
#[derive(Debug)]
pub struct Recorder {
    measure_from: Instant,
    measure_until: Instant,
    seconds: Mutex<Vec<Second>>,
    /// First error text, for the report.
    pub first_error: Mutex<Option<String>>,
}

impl Recorder {
    /// Records answers completing between `measure_from` and `measure_until`.
    pub fn new(measure_from: Instant, measure_until: Instant) -> Self {
        let secs = (measure_until - measure_from).as_secs() as usize + 1;
        Self {
            measure_from,
            measure_until,
            seconds: Mutex::new((0..secs).map(|_| Second::new()).collect()),
            first_error: Mutex::new(None),
        }
    }

    fn record(&self, done: Instant, latency: Duration, outcome: Outcome, busy: u64) {
        if done < self.measure_from || done >= self.measure_until {
            return;
        }
        let i = (done - self.measure_from).as_secs() as usize;
        let Ok(mut seconds) = self.seconds.lock() else {
            return;
        };
        let Some(s) = seconds.get_mut(i) else {
            return;
        };
        s.busy += busy;
        match outcome {
            Outcome::Placed => s.placed += 1,
            Outcome::NotPlaced => s.not_placed += 1,
            Outcome::Error => s.errors += 1,
        }
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        s.latency.saturating_record(micros);
    }

    /// The seconds recorded so far (the last one may be partial).
    pub fn seconds(&self) -> Vec<Second> {
        self.seconds.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Index of the second now being recorded.
    pub fn current_second(&self) -> usize {
        Instant::now()
            .saturating_duration_since(self.measure_from)
            .as_secs() as usize
    }
}

/// Sends one order until it has a final answer; returns its outcome and busy retries.
async fn place(
    client: &mut OrderServiceClient<Channel>,
    request: PlaceOrderRequest,
    recorder: &Recorder,
) -> (Outcome, u64) {
    let mut busy = 0;
    let mut backoff = Duration::from_millis(20);
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        match client.place_order(request.clone()).await {
            Ok(order) => {
                let order = order.into_inner();
                let outcome = match order.state() {
                    OrderState::Placed => Outcome::Placed,
                    OrderState::NotPlaced => Outcome::NotPlaced,
                    _ => Outcome::Error,
                };
                return (outcome, busy);
            }
            Err(status) => match client_retry(&status) {
                ClientRetry::Busy(delay) => {
                    busy += 1;
                    tokio::time::sleep(delay).await;
                }
                ClientRetry::Backoff if Instant::now() < give_up => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                ClientRetry::Backoff | ClientRetry::Stop => {
                    if let Ok(mut first) = recorder.first_error.lock() {
                        first.get_or_insert_with(|| {
                            format!("{:?}: {}", status.code(), status.message())
                        });
                    }
                    return (Outcome::Error, busy);
                }
            },
        }
    }
}

/// A source of order requests with unique idempotency keys.
#[derive(Debug, Clone)]
pub struct Orders {
    foods: Arc<Vec<String>>,
    zones: Arc<Vec<String>>,
    run: String,
}

impl Orders {
    /// Orders over `foods` x `zones`.
    pub fn new(foods: Vec<String>, zones: Vec<String>) -> Self {
        Self {
            foods: Arc::new(foods),
            zones: Arc::new(zones),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        }
    }

    fn request(&self, rng: &mut StdRng, client: usize, n: u64) -> PlaceOrderRequest {
        PlaceOrderRequest {
            idempotency_key: format!("bench-{}-{client}-{n}", self.run),
            customer_id: format!("bench-{client}"),
            food_id: self.foods[rng.random_range(0..self.foods.len())].clone(),
            zone: self.zones[rng.random_range(0..self.zones.len())].clone(),
        }
    }
}

/// Closed loop: `clients` tasks, each over one of `channels`, until `stop`.
pub async fn closed_loop(
    channels: &[Channel],
    clients: usize,
    orders: Orders,
    recorder: Arc<Recorder>,
    stop: Instant,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients.max(1) {
        let mut client = OrderServiceClient::new(channels[c % channels.len()].clone());
        let (orders, recorder) = (orders.clone(), recorder.clone());
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut n = 0;
            while Instant::now() < stop {
                n += 1;
                let request = orders.request(&mut rng, c, n);
                let sent = Instant::now();
                let (outcome, busy) = place(&mut client, request, &recorder).await;
                let done = Instant::now();
                recorder.record(done, done - sent, outcome, busy);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Open loop: one order every `1/rate` seconds until `stop`, each on its own task; latency is
/// measured from the scheduled send time. Waits for the orders in flight at the end.
pub async fn open_loop(
    channels: &[Channel],
    rate: f64,
    orders: Orders,
    recorder: Arc<Recorder>,
    stop: Instant,
) {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut rng = StdRng::seed_from_u64(7);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    loop {
        let scheduled = started + interval.mul_f64(n as f64);
        if scheduled >= stop {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let mut client = OrderServiceClient::new(channels[n as usize % channels.len()].clone());
        let request = orders.request(&mut rng, 0, n);
        let recorder = recorder.clone();
        tasks.spawn(async move {
            let (outcome, busy) = place(&mut client, request, &recorder).await;
            let done = Instant::now();
            recorder.record(done, done - scheduled, outcome, busy);
        });
        n += 1;
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
