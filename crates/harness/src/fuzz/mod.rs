//! The input fuzzer behind `make fuzz`: hostile requests to every RPC of a live cluster, on the
//! listener of each service that serves it, with and without credentials: public RPCs on the
//! public listener, admin RPCs on the admin listener with good, wrong or no tokens, internal
//! RPCs on the internal listener with the orchestrator's certificate or another service's.
//!
//! Each request is a typed request whose fields come from [`inputs`] or, one time in eight,
//! bytes that are not a valid message. The answer must be a documented code ([`ALLOWED`]):
//! never `INTERNAL`, `UNKNOWN`, `DATA_LOSS`, `UNIMPLEMENTED` or `CANCELLED`. Afterwards no
//! process may have exited or logged a panic, and the invariants that hold at every instant
//! (docs/design.md §8: 1, 2, 4 and 5) must hold.

pub mod inputs;
mod raw;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use order_saga_proto::{
    delivery::v1::AddAgentsRequest,
    order::v1::PlaceOrderRequest,
    store::v1::{CreateFoodRequest, RestockRequest},
};
use order_saga_saga::BearerToken;
use order_saga_testkit::invariants::{self, Stock};
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Code, metadata::MetadataValue, transport::Channel};

use crate::bench::cluster::{Backend, BenchCluster};
use inputs::Known;

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// Requests sent to each RPC on each port that serves it.
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seed of the generator (default: random, printed so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Database of the cluster.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Directory of the service binaries.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Only the RPCs whose path contains this (e.g. `OrderAdminService`, `/Reserve`).
    #[arg(long)]
    pub rpc: Option<String>,
    /// Where logs and the summary go (a `fuzz-<timestamp>` directory is created inside).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
}

/// Who an RPC is for, which decides the credentials the fuzzer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    Public,
    Internal,
    Admin,
}

/// Every RPC, with the service (port) that serves it.
const TARGETS: &[(&str, &str, Audience)] = &[
    (
        "order",
        "/order.v1.OrderService/PlaceOrder",
        Audience::Public,
    ),
    ("order", "/order.v1.OrderService/GetOrder", Audience::Public),
    (
        "order",
        "/order.v1.OrderAdminService/ListOrders",
        Audience::Admin,
    ),
    (
        "order",
        "/order.v1.OrderAdminService/ListStuckOrders",
        Audience::Admin,
    ),
    (
        "order",
        "/order.v1.OrderAdminService/RedriveOrder",
        Audience::Admin,
    ),
    (
        "order",
        "/order.v1.OrderAdminService/ForceFailOrder",
        Audience::Admin,
    ),
    (
        "order",
        "/order.v1.OrderAdminService/GetSagaStats",
        Audience::Admin,
    ),
    (
        "order",
        "/order.v1.OrderAdminService/GetOrderHistory",
        Audience::Admin,
    ),
    (
        "order",
        "/order.v1.OrderAdminService/CompleteDelivery",
        Audience::Admin,
    ),
    ("store", "/store.v1.StoreService/GetFood", Audience::Public),
    (
        "store",
        "/store.v1.StoreService/ListFoods",
        Audience::Public,
    ),
    (
        "store",
        "/store.v1.StoreAdminService/CreateFood",
        Audience::Admin,
    ),
    (
        "store",
        "/store.v1.StoreAdminService/Restock",
        Audience::Admin,
    ),
    (
        "store",
        "/reservation.v1.ReservationService/Reserve",
        Audience::Internal,
    ),
    (
        "store",
        "/reservation.v1.ReservationService/Assign",
        Audience::Internal,
    ),
    (
        "store",
        "/reservation.v1.ReservationService/Release",
        Audience::Internal,
    ),
    (
        "store",
        "/reservation.v1.ReservationService/Complete",
        Audience::Internal,
    ),
    (
        "store",
        "/reservation.v1.ReservationService/GetLimits",
        Audience::Internal,
    ),
    (
        "delivery",
        "/delivery.v1.DeliveryService/GetZone",
        Audience::Public,
    ),
    (
        "delivery",
        "/delivery.v1.DeliveryService/ListZones",
        Audience::Public,
    ),
    (
        "delivery",
        "/delivery.v1.DeliveryAdminService/AddAgents",
        Audience::Admin,
    ),
    (
        "delivery",
        "/reservation.v1.ReservationService/Reserve",
        Audience::Internal,
    ),
    (
        "delivery",
        "/reservation.v1.ReservationService/Assign",
        Audience::Internal,
    ),
    (
        "delivery",
        "/reservation.v1.ReservationService/Release",
        Audience::Internal,
    ),
    (
        "delivery",
        "/reservation.v1.ReservationService/Complete",
        Audience::Internal,
    ),
    (
        "delivery",
        "/reservation.v1.ReservationService/GetLimits",
        Audience::Internal,
    ),
];

/// The codes a fuzzed request may be answered with (README: status-code contract).
pub const ALLOWED: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::Unavailable,
    Code::DeadlineExceeded,
];

/// Marks the answers to internal calls made with another service's certificate, which must all
/// be `PERMISSION_DENIED`.
pub const IMPOSTOR: &str = " (other service's certificate)";
/// Marks the answers to admin calls sent without the operator's token. They come from
/// loopback addresses of their own, so the wrong-token throttle (which refuses a guessing peer
/// everything for a minute) locks out those addresses and never the operator's calls.
pub const GUESSER: &str = " (no or wrong token)";
/// Loopback addresses per admin RPC that the calls without the operator's token rotate over:
/// each is locked out after `auth::MAX_FAILURES` guesses, so every RPC sees that many
/// refusals by the token check itself before the throttle answers for them.
const GUESSERS: u8 = 8;

/// The answers one RPC got on one port.
#[derive(Debug, Clone, Default)]
pub struct RpcCounts {
    /// `order`, `store` or `delivery`.
    pub service: String,
    /// `/package.Service/Method`.
    pub rpc: String,
    /// Answers by code name.
    pub codes: BTreeMap<String, u64>,
    /// Requests that were not a valid message.
    pub garbage: u64,
    /// Up to five answers with a code outside [`ALLOWED`]: code, message, request bytes (hex).
    pub bad: Vec<String>,
}

impl RpcCounts {
    /// Requests sent.
    pub fn total(&self) -> u64 {
        self.codes.values().sum()
    }
}

/// What a fuzz run found.
#[derive(Debug, Clone, Default)]
pub struct FuzzReport {
    /// The generator's seed.
    pub seed: u64,
    /// Answers per RPC and port.
    pub counts: Vec<RpcCounts>,
    /// Services that exited during the run.
    pub exited: Vec<String>,
    /// Panics found in the service logs.
    pub panics: Vec<String>,
    /// Invariants (1, 2, 4, 5) violated afterwards.
    pub violations: Vec<String>,
}

impl FuzzReport {
    /// True when every answer was allowed, nothing crashed and the invariants hold.
    pub fn passed(&self) -> bool {
        self.counts.iter().all(|c| c.bad.is_empty())
            && self.exited.is_empty()
            && self.panics.is_empty()
            && self.violations.is_empty()
    }

    /// Answers with a code outside [`ALLOWED`].
    pub fn bad_answers(&self) -> u64 {
        self.counts
            .iter()
            .flat_map(|c| c.codes.iter())
            .filter(|(code, _)| match code.strip_suffix(IMPOSTOR) {
                Some(code) => code != "PermissionDenied",
                None => {
                    let code = code.strip_suffix(GUESSER).unwrap_or(code);
                    !code.starts_with("no answer")
                        && !ALLOWED.iter().any(|a| format!("{a:?}") == *code)
                }
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// Runs the fuzzer against a cluster of its own.
pub async fn run(args: &FuzzArgs) -> anyhow::Result<FuzzReport> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = args.out.join(format!(
        "fuzz-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::create_dir_all(&dir)?;
    let pg_url = std::env::var("DATABASE_URL").ok();
    eprintln!("fuzz: seed {seed}; logs in {}", dir.display());
    let mut cluster = BenchCluster::start(&args.bin_dir, args.backend, pg_url.as_deref(), &dir)
        .await
        .context("starting the cluster")?;
    let operator = format!("Bearer {}", cluster.admin_token);
    let (known, stock) = seed_cluster(&cluster).await?;
    let stock = Arc::new(Mutex::new(stock));

    // Internal RPCs go to the internal listener with the orchestrator's certificate (7 in 10)
    // or the other participant's (which must be refused `PERMISSION_DENIED`). Holding the
    // orchestrator's certificate is the orchestrator's authority: a Release naming a placed
    // order would rightly free its packet. So they get invented order and unit ids only
    // (pools may exist).
    let internal = Known {
        pools: known.pools.clone(),
        ..Known::default()
    };
    let mut counts = Vec::new();
    let chosen = TARGETS
        .iter()
        .enumerate()
        .filter(|(_, (_, rpc, _))| args.rpc.as_ref().is_none_or(|f| rpc.contains(f.as_str())));
    for (i, (service, rpc, audience)) in chosen {
        let (channel, foreign) = match audience {
            Audience::Public => (plain(&cluster.url(service)).await?, Vec::new()),
            Audience::Admin => {
                let url = cluster.admin_url(service);
                let mut guessers = Vec::new();
                for g in 1..=GUESSERS {
                    let octet = u8::try_from(i % 250 + 1).unwrap_or(1);
                    let from = std::net::Ipv4Addr::new(127, 0, octet, g);
                    guessers.push(
                        Channel::from_shared(url.clone())?
                            .local_address(Some(from.into()))
                            .connect()
                            .await?,
                    );
                }
                (plain(&url).await?, guessers)
            }
            Audience::Internal => {
                let url = cluster
                    .internal_url(service)
                    .context("no internal listener")?;
                let other = if *service == "store" {
                    "delivery"
                } else {
                    "store"
                };
                (
                    cluster
                        .identity("order")?
                        .connect(url.clone(), service)
                        .await?,
                    vec![cluster.identity(other)?.connect(url, service).await?],
                )
            }
        };
        let c = fuzz_rpc(
            Fuzzed {
                channel,
                foreign,
                service,
                rpc,
                audience: *audience,
                operator: &operator,
                known: if *audience == Audience::Internal {
                    &internal
                } else {
                    &known
                },
                stock: &stock,
            },
            args.requests,
            args.concurrency,
            seed.wrapping_add(i as u64),
        )
        .await;
        eprintln!(
            "fuzz: {service:>8} {rpc:<52} {} requests, {}",
            c.total(),
            summary(&c.codes)
        );
        counts.push(c);
    }

    let exited = cluster.exited();
    let panics = panics_in_logs(&dir);
    let stock = stock.lock().map(|s| s.clone()).unwrap_or_default();
    let violations = invariants::violations(&cluster.urls, &stock, false)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    cluster.stop().await;
    Ok(FuzzReport {
        seed,
        counts,
        exited,
        panics,
        violations,
    })
}

async fn plain(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())?.connect().await?)
}

/// One RPC on one port, and what it needs to build and send requests.
struct Fuzzed<'a> {
    channel: Channel,
    /// For internal RPCs: a channel holding another service's certificate. For admin RPCs:
    /// the channels, each from a loopback address of its own, that calls without the
    /// operator's token rotate over.
    foreign: Vec<Channel>,
    service: &'a str,
    rpc: &'a str,
    audience: Audience,
    operator: &'a str,
    known: &'a Known,
    stock: &'a Mutex<Stock>,
}

async fn fuzz_rpc(target: Fuzzed<'_>, requests: u64, concurrency: usize, seed: u64) -> RpcCounts {
    let counts = Mutex::new(RpcCounts {
        service: target.service.to_owned(),
        rpc: target.rpc.to_owned(),
        ..RpcCounts::default()
    });
    let rng = Mutex::new(StdRng::seed_from_u64(seed));
    futures::stream::iter(0..requests)
        .for_each_concurrent(concurrency.max(1), |_| async {
            let (body, is_garbage, authorization, foreign) = {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                let valid = inputs::request(target.rpc, &mut rng, target.known);
                let is_garbage = rng.random_range(0..8) == 0;
                let body = if is_garbage {
                    inputs::garbage(&valid, &mut rng)
                } else {
                    valid
                };
                let authorization = credential(&target, &mut rng);
                let foreign = match target.audience {
                    Audience::Admin
                        if authorization.as_ref().and_then(|a| a.to_str().ok())
                            != Some(target.operator) =>
                    {
                        let n = target.foreign.len().max(1);
                        target.foreign.get(rng.random_range(0..n))
                    }
                    Audience::Admin => None,
                    _ => target
                        .foreign
                        .first()
                        .filter(|_| rng.random_range(0..10) >= 7),
                };
                (body, is_garbage, authorization, foreign.cloned())
            };
            let sent = body.clone();
            let guessing = foreign.is_some() && target.audience == Audience::Admin;
            let impostor = foreign.is_some() && !guessing;
            let channel = foreign.unwrap_or_else(|| target.channel.clone());
            let answer = raw::call(channel, target.rpc, body, authorization).await;
            let code = match &answer {
                Ok(()) => Code::Ok,
                Err(status) => status.code(),
            };
            // Another service's certificate must be refused, whatever the request.
            let allowed = if impostor {
                code == Code::PermissionDenied
            } else {
                ALLOWED.contains(&code)
            };
            // A mutated body may still decode to a valid request: count what the server saw.
            if code == Code::Ok {
                record_stock(target.rpc, target.service, &sent, target.stock);
            }
            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
            // Calls the server had not answered within our deadline are counted apart: they
            // are allowed (a slow answer is not a wrong one) but reported.
            let no_answer = matches!(&answer, Err(s) if s.message() == raw::NO_ANSWER);
            let key = if no_answer {
                format!("no answer in {} s", CALL_TIMEOUT.as_secs())
            } else if impostor {
                format!("{code:?}{IMPOSTOR}")
            } else if guessing {
                format!("{code:?}{GUESSER}")
            } else {
                format!("{code:?}")
            };
            *c.codes.entry(key).or_default() += 1;
            c.garbage += u64::from(is_garbage);
            if !allowed && c.bad.len() < 5 {
                // The message, and the source of a transport error (which says why).
                let message = answer
                    .err()
                    .map(|s| {
                        let source = std::error::Error::source(&s).map(|e| format!(" ({e:?})"));
                        format!("{}{}", s.message(), source.unwrap_or_default())
                    })
                    .unwrap_or_default();
                let hex: String = sent.iter().take(64).map(|b| format!("{b:02x}")).collect();
                let who = if impostor {
                    " with another service's certificate"
                } else {
                    ""
                };
                let bad = format!("{code:?}{who}: {message:?} for request {hex}");
                eprintln!("fuzz: BAD {} {}: {bad}", target.service, target.rpc);
                c.bad.push(bad);
            }
        })
        .await;
    counts.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The `authorization` header for one request: admin RPCs mostly get the operator's token (so
/// the methods themselves are fuzzed) and otherwise none, a wrong one, or a malformed one.
fn credential(
    target: &Fuzzed<'_>,
    rng: &mut StdRng,
) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    let header = match (target.audience, rng.random_range(0..10)) {
        (Audience::Admin, 0..=6) => target.operator.to_owned(),
        (_, 7) => "Bearer wrong-token-0123456789abcdef".to_owned(),
        (_, 8) => "Basic b3BlcmF0b3I6aHVudGVyMg==".to_owned(),
        (_, 9) => "Bearer".to_owned(),
        _ => return None,
    };
    header.parse().ok()
}

/// Keeps the conservation invariant's stock in step with the units fuzzed admin calls added.
fn record_stock(rpc: &str, service: &str, body: &[u8], stock: &Mutex<Stock>) {
    let added = match rpc.rsplit('/').next() {
        Some("Restock") => RestockRequest::decode(body)
            .ok()
            .map(|r| (r.food_id, r.count)),
        Some("AddAgents") => AddAgentsRequest::decode(body)
            .ok()
            .map(|r| (r.zone, r.count)),
        Some("CreateFood") => CreateFoodRequest::decode(body).ok().map(|r| (r.food_id, 0)),
        _ => None,
    };
    let side = if service == "store" {
        "store"
    } else {
        "delivery"
    };
    if let (Some((pool, count)), Ok(mut stock)) = (added, stock.lock()) {
        *stock.entry((side, pool)).or_default() += count;
    }
}

/// A small catalogue (stocked as the bench stocks) and a few placed orders, so fuzzed ids sometimes exist.
async fn seed_cluster(cluster: &BenchCluster) -> anyhow::Result<(Known, Stock)> {
    let foods: Vec<String> = (0..4).map(|i| format!("food-{i}")).collect();
    let zones: Vec<String> = (0..4).map(|i| format!("zone-{i}")).collect();
    let admin = BearerToken::new(Some(&cluster.admin_token)).map_err(anyhow::Error::msg)?;
    let (store, delivery) = (cluster.admin_url("store"), cluster.admin_url("delivery"));
    let stock = crate::bench::stock(&admin, &store, &delivery, &foods, &zones, 50).await?;
    let mut known = Known {
        pools: foods.into_iter().chain(zones).collect(),
        ..Known::default()
    };
    let order = Channel::from_shared(cluster.url("order"))?
        .connect()
        .await?;
    let mut client =
        order_saga_proto::order::v1::order_service_client::OrderServiceClient::new(order);
    for i in 0..8 {
        let placed = client
            .place_order(PlaceOrderRequest {
                idempotency_key: format!("fuzz-seed-{i}"),
                customer_id: "fuzz".into(),
                food_id: format!("food-{}", i % 4),
                zone: format!("zone-{}", i % 4),
            })
            .await?
            .into_inner();
        known.keys.push(placed.idempotency_key);
        known.orders.push(placed.order_id);
    }
    Ok((known, stock))
}

fn summary(codes: &BTreeMap<String, u64>) -> String {
    codes
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lines of the services' logs that report a panic.
fn panics_in_logs(dir: &std::path::Path) -> Vec<String> {
    ["order", "store", "delivery"]
        .iter()
        .filter_map(|name| {
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).ok()?;
            log.lines()
                .find(|l| l.contains("panicked"))
                .map(|l| format!("{name}: {l}"))
        })
        .collect()
}

/// How long a fuzz call may take before it counts as an answer (`DEADLINE_EXCEEDED`).
/// Long enough for a 10,000-unit restock queued behind SQLite's one writer: a call abandoned
/// earlier would still add its units (transactions outlive their requests) without the
/// fuzzer counting them, and the conservation check would fail on the fuzzer's bookkeeping.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(60);
