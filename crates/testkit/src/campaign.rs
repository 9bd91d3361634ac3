//! The randomized chaos campaign: concurrent clients place orders for a fixed time while a
//! nemesis kills, pauses and restarts random processes, cuts or degrades random links,
//! restarts PostgreSQL, acts as an operator (force-fail or redrive of sagas in flight, and
//! completing deliveries of orders both placed and still in flight, sent to any instance,
//! sometimes while a participant link is slow) and starts an order instance
//! under another live instance's id. Then every fault is healed, the system is left quiet, and the
//! invariants are checked, together with every answer the clients were given.
//!
//! Everything random comes from one seed, printed at the start, so a failing run can be
//! replayed (`chaos --seed N`, `make chaos SEED=N`); the timing of a real cluster still varies.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use order_saga_proto::order::v1::{
    CompleteDeliveryRequest, ForceFailOrderRequest, ListOrdersRequest, ListStuckOrdersRequest,
    OrderState, PlaceOrderRequest, RedriveOrderRequest, order_service_client::OrderServiceClient,
};
use order_saga_saga::{client_may_retry, retry_hint};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use tonic::transport::Channel;

use crate::{
    invariants::{self, TITLES, Violation},
    procs::{ProcCluster, ProcConfig, default_bin_dir},
    proxy::Fault,
};

/// Campaign settings.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// How long clients place orders while the nemesis runs.
    pub duration: Duration,
    /// Concurrent clients.
    pub clients: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Directory of the service binaries.
    pub bin_dir: PathBuf,
    /// Order instances sharing the order database.
    pub order_instances: usize,
    /// Packets of the plentiful food (the scarce one has 1/20 of it, at least 20).
    pub stock: i64,
    /// Print progress this often.
    pub progress_every: Duration,
}

impl CampaignConfig {
    /// Defaults for a run of `duration` with `clients`.
    pub fn new(duration: Duration, clients: usize, seed: u64) -> Self {
        let stock = (duration.as_secs() as i64 * 150).clamp(2_000, 200_000);
        Self {
            duration,
            clients,
            seed,
            bin_dir: default_bin_dir(),
            order_instances: 2,
            stock,
            progress_every: Duration::from_secs(10),
        }
    }
}

/// What a client was told for one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    order_id: String,
    state: i32,
}

#[derive(Debug, Default)]
struct Counters {
    attempted: AtomicU64,
    placed: AtomicU64,
    not_placed: AtomicU64,
    retries: AtomicU64,
    unanswered: AtomicU64,
    conflicting: AtomicU64,
}

/// The outcome of a campaign.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Time clients ran.
    pub duration: Duration,
    /// Orders attempted (distinct idempotency keys).
    pub attempted: u64,
    /// Answered PLACED.
    pub placed: u64,
    /// Answered NOT_PLACED.
    pub not_placed: u64,
    /// Requests retried after a transient error (same key).
    pub retries: u64,
    /// Keys whose client gave up without an answer (their orders must still settle).
    pub unanswered: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Broken invariants, by database.
    pub violations: Vec<Violation>,
    /// Client answers that disagree with each other or with the database.
    pub answer_mismatches: Vec<String>,
}

impl Report {
    /// True when every invariant held and every answer matched.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.answer_mismatches.is_empty()
    }

    /// The verdict table.
    pub fn render(&self) -> String {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(vec!["", "verdict"]);
        t.add_row(vec!["seed".to_owned(), self.seed.to_string()]);
        t.add_row(vec![
            "duration".to_owned(),
            format!("{:.0?}", self.duration),
        ]);
        t.add_row(vec![
            "orders attempted".to_owned(),
            self.attempted.to_string(),
        ]);
        t.add_row(vec!["placed".to_owned(), self.placed.to_string()]);
        t.add_row(vec!["not placed".to_owned(), self.not_placed.to_string()]);
        t.add_row(vec![
            "retried requests (same key)".to_owned(),
            self.retries.to_string(),
        ]);
        t.add_row(vec![
            "client gave up (settled later)".to_owned(),
            self.unanswered.to_string(),
        ]);
        let total: u64 = self.faults.values().sum();
        t.add_row(vec!["faults injected".to_owned(), total.to_string()]);
        for (kind, n) in &self.faults {
            t.add_row(vec![format!("  {kind}"), n.to_string()]);
        }
        for (i, title) in TITLES.iter().enumerate() {
            let n = u8::try_from(i + 1).unwrap_or(u8::MAX);
            let rows: Vec<String> = self
                .violations
                .iter()
                .filter(|v| v.invariant == n)
                .take(10)
                .map(|v| v.detail.clone())
                .collect();
            let verdict = if rows.is_empty() {
                "PASS".to_owned()
            } else {
                let all = self.violations.iter().filter(|v| v.invariant == n).count();
                format!("FAIL ({all}):\n{}", rows.join("\n"))
            };
            t.add_row(vec![format!("invariant {n}: {title}"), verdict]);
        }
        let answers = if self.answer_mismatches.is_empty() {
            "PASS".to_owned()
        } else {
            let shown: Vec<&str> = self
                .answer_mismatches
                .iter()
                .take(10)
                .map(String::as_str)
                .collect();
            format!(
                "FAIL ({}):\n{}",
                self.answer_mismatches.len(),
                shown.join("\n")
            )
        };
        t.add_row(vec!["every answer final and as stored".to_owned(), answers]);
        t.add_row(vec![
            "VERDICT".to_owned(),
            if self.passed() {
                "PASS".to_owned()
            } else {
                "FAIL".to_owned()
            },
        ]);
        t.to_string()
    }
}

const FOODS: [&str; 2] = ["plenty-food", "scarce-food"];
const ZONES: [&str; 2] = ["plenty-zone", "scarce-zone"];

/// One client: places orders with fresh keys until `stop`, retrying each key (on any order
/// instance) until it gets a final answer or 60 s pass.
async fn client(
    id: usize,
    seed: u64,
    instances: Vec<OrderServiceClient<Channel>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let request = PlaceOrderRequest {
            idempotency_key: format!("c{id}-{n}"),
            customer_id: format!("client-{id}"),
            food_id: (*FOODS.choose(&mut rng).unwrap_or(&FOODS[0])).to_owned(),
            zone: (*ZONES.choose(&mut rng).unwrap_or(&ZONES[0])).to_owned(),
        };
        counters.attempted.fetch_add(1, Ordering::Relaxed);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut answered = None;
        let mut attempt = 0u32;
        let mut hint = None;
        while tokio::time::Instant::now() < give_up {
            let mut client = instances[rng.random_range(0..instances.len())].clone();
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(Duration::from_secs(10));
            match client.place_order(req).await {
                Ok(order) => {
                    let order = order.into_inner();
                    if order.state != OrderState::Pending as i32 {
                        answered = Some(Answer {
                            order_id: order.order_id,
                            state: order.state,
                        });
                        break;
                    }
                }
                Err(status) if client_may_retry(status.code()) => hint = retry_hint(&status),
                Err(status) => {
                    tracing::error!(key = %request.idempotency_key, ?status, "unexpected refusal");
                    break;
                }
            }
            attempt += 1;
            counters.retries.fetch_add(1, Ordering::Relaxed);
            // A busy server says when to come back; otherwise back off linearly.
            let backoff = hint
                .take()
                .unwrap_or(Duration::from_millis(50 * u64::from(attempt.min(10))));
            tokio::time::sleep(backoff).await;
        }
        match answered {
            Some(a) => {
                if a.state == OrderState::Placed as i32 {
                    counters.placed.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.not_placed.fetch_add(1, Ordering::Relaxed);
                }
                let mut map = answers.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(previous) = map.insert(request.idempotency_key.clone(), a.clone())
                    && previous != a
                {
                    counters.conflicting.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                counters.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A random process of the cluster (store, delivery or an order instance).
fn pick_process<'a>(
    cluster: &'a mut ProcCluster,
    rng: &mut StdRng,
) -> &'a mut crate::procs::Process {
    let mut all = cluster.processes_mut();
    let i = rng.random_range(0..all.len());
    all.swap_remove(i)
}

/// One nemesis step: inject a random fault, hold it, heal it. Returns the fault's kind.
async fn strike(cluster: &mut ProcCluster, rng: &mut StdRng) -> anyhow::Result<&'static str> {
    let roll = rng.random_range(0..100);
    if roll < 25 {
        let hold = Duration::from_millis(rng.random_range(200..3000));
        let process = pick_process(cluster, rng);
        tracing::info!(process = %process.name, ?hold, "nemesis: kill -9");
        process.kill().await;
        tokio::time::sleep(hold).await;
        process.start("").await?;
        Ok("kill")
    } else if roll < 40 {
        let hold = Duration::from_millis(rng.random_range(500..4000));
        let process = pick_process(cluster, rng);
        tracing::info!(process = %process.name, ?hold, "nemesis: SIGSTOP");
        process.pause();
        tokio::time::sleep(hold).await;
        process.resume();
        Ok("pause")
    } else if roll < 78 {
        let names: Vec<String> = cluster.links.keys().cloned().collect();
        let link = names.choose(rng).cloned().unwrap_or_default();
        let fault = match rng.random_range(0..5) {
            0 => Fault::Cut,
            1 => Fault::Stall,
            2 => Fault::Reset,
            3 => Fault::DropResponses,
            _ => Fault::Latency(Duration::from_millis(rng.random_range(20..400))),
        };
        let hold = Duration::from_millis(rng.random_range(300..5000));
        tracing::info!(%link, ?fault, ?hold, "nemesis: link fault");
        cluster.link(&link).set(fault);
        tokio::time::sleep(hold).await;
        cluster.link(&link).set(Fault::None);
        Ok(fault.kind())
    } else if roll < 90 || cluster.orders.len() < 2 {
        operator_strike(cluster, rng).await
    } else if roll < 95 {
        duplicate_instance_id(cluster, rng).await
    } else {
        let hold = Duration::from_millis(rng.random_range(1000..6000));
        tracing::info!(?hold, "nemesis: PostgreSQL down");
        let pg = &cluster.pg;
        tokio::task::block_in_place(|| pg.stop_server())?;
        tokio::time::sleep(hold).await;
        tokio::task::block_in_place(|| pg.start_server())?;
        Ok("postgres-restart")
    }
}

/// What an operator does in one strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperatorAction {
    ForceFail,
    Redrive,
    /// `CompleteDelivery` of orders in flight (it must change nothing) and of placed ones (it
    /// frees their agents for the next orders).
    CompleteDelivery,
}

/// An operator at work: force-fails or redrives up to three sagas in flight, or completes the
/// deliveries of orders in flight and placed, each sent to a random instance (often not the one
/// driving it). Half the time a participant link of a random instance is slowed meanwhile, so
/// that drivers are mid-call when they are taken over (or their agents asked for).
async fn operator_strike(
    cluster: &mut ProcCluster,
    rng: &mut StdRng,
) -> anyhow::Result<&'static str> {
    let slowed = if rng.random_bool(0.5) {
        let i = rng.random_range(0..cluster.orders.len());
        let side = *["store", "delivery"].choose(rng).unwrap_or(&"store");
        let link = format!("order{i}-{side}");
        let delay = Duration::from_millis(rng.random_range(200..1500));
        cluster.link(&link).set(Fault::Latency(delay));
        Some(link)
    } else {
        None
    };
    let action = *[
        OperatorAction::ForceFail,
        OperatorAction::Redrive,
        OperatorAction::CompleteDelivery,
    ]
    .choose(rng)
    .unwrap_or(&OperatorAction::Redrive);
    let hold = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(500..3000));
    let mut acted = 0;
    while tokio::time::Instant::now() < hold {
        acted += match action {
            OperatorAction::CompleteDelivery => complete_round(cluster, rng).await,
            _ => operator_round(cluster, rng, action == OperatorAction::ForceFail).await,
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    if let Some(link) = slowed {
        cluster.link(&link).set(Fault::None);
    }
    tracing::info!(?action, acted, "nemesis: operator actions");
    Ok(match action {
        OperatorAction::ForceFail => "operator-force-fail",
        OperatorAction::Redrive => "operator-redrive",
        OperatorAction::CompleteDelivery => "operator-complete-delivery",
    })
}

/// Completes the deliveries of up to three orders in flight (listed unfinished; each must be
/// refused unless it got placed meanwhile) and up to three of the newest placed ones, each on a
/// random instance, concurrently. Returns how many calls it made. Whether any completion made a
/// PLACED answer false is for the invariant checker (invariants 1, 2 and 6) to say.
async fn complete_round(cluster: &ProcCluster, rng: &mut StdRng) -> usize {
    let n = cluster.orders.len();
    let Ok(mut lister) = cluster.order_admin_client(rng.random_range(0..n)).await else {
        return 0;
    };
    let mut request = tonic::Request::new(ListStuckOrdersRequest { limit: 50 });
    request.set_timeout(Duration::from_secs(2));
    let in_flight: Vec<String> = match lister.list_stuck_orders(request).await {
        Ok(stuck) => stuck
            .into_inner()
            .sagas
            .into_iter()
            .filter_map(|s| s.order.map(|o| o.order_id))
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut request = tonic::Request::new(ListOrdersRequest {
        page_size: 50,
        state: OrderState::Placed as i32,
        ..ListOrdersRequest::default()
    });
    request.set_timeout(Duration::from_secs(2));
    let placed: Vec<String> = match lister.list_orders(request).await {
        Ok(page) => page
            .into_inner()
            .orders
            .into_iter()
            .map(|o| o.order_id)
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut calls = tokio::task::JoinSet::new();
    let chosen = in_flight
        .choose_multiple(rng, 3)
        .chain(placed.choose_multiple(rng, 3));
    for order_id in chosen {
        let Ok(mut admin) = cluster.order_admin_client(rng.random_range(0..n)).await else {
            continue;
        };
        let order_id = order_id.clone();
        calls.spawn(async move {
            let mut r = tonic::Request::new(CompleteDeliveryRequest {
                order_id: order_id.clone(),
            });
            r.set_timeout(Duration::from_secs(5));
            match admin.complete_delivery(r).await {
                Ok(done) => tracing::info!(%order_id, agent = %done.into_inner().agent_id, "delivery completed"),
                Err(status) => tracing::info!(%order_id, ?status, "completion refused"),
            }
        });
    }
    let acted = calls.len();
    while calls.join_next().await.is_some() {}
    acted
}

/// Lists unfinished sagas on a random instance and force-fails (or redrives) up to three of
/// them, each on a random instance, concurrently. Returns how many were acted on. Refusals
/// (an order placed meanwhile, an instance that is down) are expected and only logged.
async fn operator_round(cluster: &ProcCluster, rng: &mut StdRng, force: bool) -> usize {
    let n = cluster.orders.len();
    let Ok(mut lister) = cluster.order_admin_client(rng.random_range(0..n)).await else {
        return 0;
    };
    let mut request = tonic::Request::new(ListStuckOrdersRequest { limit: 50 });
    request.set_timeout(Duration::from_secs(2));
    let Ok(stuck) = lister.list_stuck_orders(request).await else {
        return 0;
    };
    let ids: Vec<String> = stuck
        .into_inner()
        .sagas
        .into_iter()
        .filter_map(|s| s.order.map(|o| o.order_id))
        .collect();
    let mut calls = tokio::task::JoinSet::new();
    for order_id in ids.choose_multiple(rng, 3) {
        let Ok(mut admin) = cluster.order_admin_client(rng.random_range(0..n)).await else {
            continue;
        };
        let order_id = order_id.clone();
        calls.spawn(async move {
            let result = if force {
                let mut r = tonic::Request::new(ForceFailOrderRequest {
                    order_id: order_id.clone(),
                });
                r.set_timeout(Duration::from_secs(10));
                admin.force_fail_order(r).await.map(drop)
            } else {
                let mut r = tonic::Request::new(RedriveOrderRequest {
                    order_id: order_id.clone(),
                });
                r.set_timeout(Duration::from_secs(10));
                admin.redrive_order(r).await.map(drop)
            };
            if let Err(status) = result {
                tracing::info!(%order_id, ?status, "operator action refused");
            }
        });
    }
    let acted = calls.len();
    while calls.join_next().await.is_some() {}
    acted
}

/// Restarts one order instance under another live instance's id, so two processes share one
/// lease-owner name, while an operator redrives and force-fails sagas; then restores its id.
async fn duplicate_instance_id(
    cluster: &mut ProcCluster,
    rng: &mut StdRng,
) -> anyhow::Result<&'static str> {
    let n = cluster.orders.len();
    let twin = rng.random_range(0..n);
    let original = (twin + rng.random_range(1..n)) % n;
    let (twin_name, name) = (
        cluster.orders[twin].name.clone(),
        cluster.orders[original].name.clone(),
    );
    tracing::info!(process = %twin_name, id = %name, "nemesis: duplicate instance id");
    cluster.restart_order_as(twin, &name).await?;
    let hold = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(1000..5000));
    while tokio::time::Instant::now() < hold {
        let force = rng.random_bool(0.5);
        operator_round(cluster, rng, force).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.restart_order_as(twin, &twin_name).await?;
    Ok("duplicate-instance-id")
}

/// Runs a campaign, reporting progress lines to `progress`.
pub async fn run(
    config: &CampaignConfig,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Report> {
    progress(&format!(
        "chaos: seed {} | {} clients for {:?} | {} order instances",
        config.seed, config.clients, config.duration, config.order_instances
    ));
    let proc_config = ProcConfig {
        bin_dir: config.bin_dir.clone(),
        order_instances: config.order_instances,
        ..ProcConfig::default()
    };
    let mut cluster = ProcCluster::start(&proc_config).await?;
    progress(&format!(
        "chaos: cluster up, logs in {}",
        cluster.log_dir.display()
    ));
    let scarce = (config.stock / 20).max(20);
    cluster.add_food(FOODS[0], config.stock).await?;
    cluster.add_agents(ZONES[0], config.stock).await?;
    cluster.add_food(FOODS[1], scarce).await?;
    cluster.add_agents(ZONES[1], scarce).await?;

    let mut instances = Vec::new();
    for i in 0..cluster.orders.len() {
        instances.push(cluster.order_client(i).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let answers = Arc::new(Mutex::new(HashMap::new()));
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..config.clients {
        clients.spawn(client(
            id,
            config.seed,
            instances.clone(),
            stop.clone(),
            counters.clone(),
            answers.clone(),
        ));
    }

    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let started = tokio::time::Instant::now();
    let deadline = started + config.duration;
    let mut next_progress = started + config.progress_every;
    while tokio::time::Instant::now() < deadline {
        let pause = Duration::from_millis(rng.random_range(500..3000));
        tokio::time::sleep(
            pause.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let kind = strike(&mut cluster, &mut rng).await?;
        *faults.entry(kind).or_default() += 1;
        if tokio::time::Instant::now() >= next_progress {
            next_progress += config.progress_every;
            progress(&progress_line(
                started.elapsed(),
                config.duration,
                &counters,
                &faults,
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    progress("chaos: time is up; healing every fault and letting in-flight orders finish");
    cluster.heal().await?;
    while clients.join_next().await.is_some() {}
    progress(&progress_line(
        started.elapsed(),
        config.duration,
        &counters,
        &faults,
    ));

    // Quiet: recovery finishes every saga, reservations expire and are swept.
    let settle = proc_config.reservation_ttl + proc_config.lease * 4 + Duration::from_secs(30);
    progress(&format!(
        "chaos: waiting up to {settle:?} for the system to settle"
    ));
    let urls = cluster.db_urls();
    let violations = invariants::wait_until_holds(&urls, cluster.stock(), settle).await?;
    let answer_mismatches = compare_answers(&urls.order, &answers, &counters).await?;
    cluster.shutdown().await;
    if !violations.is_empty() || !answer_mismatches.is_empty() {
        // The cluster's directory goes away with it: keep the logs of a failed run.
        let kept = std::env::temp_dir().join(format!("order-saga-chaos-{}", config.seed));
        match copy_dir(&cluster.log_dir, &kept) {
            Ok(()) => progress(&format!(
                "chaos: FAILED; service logs kept in {}",
                kept.display()
            )),
            Err(e) => progress(&format!("chaos: FAILED; could not keep the logs: {e}")),
        }
    }

    Ok(Report {
        seed: config.seed,
        duration: config.duration,
        attempted: counters.attempted.load(Ordering::Relaxed),
        placed: counters.placed.load(Ordering::Relaxed),
        not_placed: counters.not_placed.load(Ordering::Relaxed),
        retries: counters.retries.load(Ordering::Relaxed),
        unanswered: counters.unanswered.load(Ordering::Relaxed),
        faults,
        violations,
        answer_mismatches,
    })
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

fn progress_line(
    elapsed: Duration,
    total: Duration,
    c: &Counters,
    faults: &BTreeMap<&'static str, u64>,
) -> String {
    let faults: Vec<String> = faults.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    format!(
        "[{:>4}s/{}s] attempted={} placed={} not_placed={} retries={} gave_up={} faults {}",
        elapsed.as_secs(),
        total.as_secs(),
        c.attempted.load(Ordering::Relaxed),
        c.placed.load(Ordering::Relaxed),
        c.not_placed.load(Ordering::Relaxed),
        c.retries.load(Ordering::Relaxed),
        c.unanswered.load(Ordering::Relaxed),
        faults.join(" ")
    )
}

/// Every answer a client got must be final: the database holds the same order, in the same
/// outcome. A key answered twice must have been answered the same way.
async fn compare_answers(
    order_url: &str,
    answers: &Mutex<HashMap<String, Answer>>,
    counters: &Counters,
) -> anyhow::Result<Vec<String>> {
    let db = order_saga_platform::db::Db::connect(
        order_url,
        &order_saga_platform::db::DbOptions {
            max_connections: 1,
            ..Default::default()
        },
        &order_service::MIGRATOR,
    )
    .await?;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT idempotency_key, order_id, state FROM orders")
            .fetch_all(db.pool())
            .await?;
    db.close().await;
    let stored: HashMap<String, (String, String)> = rows
        .into_iter()
        .map(|(k, id, state)| (k, (id, state)))
        .collect();
    let mut mismatches = Vec::new();
    let conflicting = counters.conflicting.load(Ordering::Relaxed);
    if conflicting > 0 {
        mismatches.push(format!("{conflicting} key(s) got two different answers"));
    }
    let answers = answers.lock().unwrap_or_else(|e| e.into_inner());
    for (key, answer) in answers.iter() {
        let told = if answer.state == OrderState::Placed as i32 {
            "placed"
        } else {
            "not_placed"
        };
        match stored.get(key) {
            None => mismatches.push(format!("key {key}: told {told}, but no order is stored")),
            Some((id, _)) if *id != answer.order_id => mismatches.push(format!(
                "key {key}: told order {}, stored order {id}",
                answer.order_id
            )),
            Some((_, state)) if state != told => {
                mismatches.push(format!("key {key}: told {told}, stored {state}"))
            }
            Some(_) => {}
        }
    }
    mismatches.sort();
    Ok(mismatches)
}
