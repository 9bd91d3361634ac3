//! `sagactl`: the command-line client of order-saga.
//!
//! Places and inspects orders, manages foods and agents, shows availability, operates stuck
//! sagas, generates load, verifies the system's invariants through the public APIs, and probes
//! gRPC health (used as the container healthcheck). Run `sagactl --help`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use order_saga_proto::{
    delivery::v1::{
        AddAgentsRequest, CompleteDeliveryRequest, ListZonesRequest,
        delivery_admin_service_client::DeliveryAdminServiceClient,
        delivery_service_client::DeliveryServiceClient,
    },
    order::v1::{
        ForceFailOrderRequest, GetOrderRequest, ListOrdersRequest, ListStuckOrdersRequest,
        NotPlacedReason, Order, OrderState, PlaceOrderRequest, RedriveOrderRequest,
        order_admin_service_client::OrderAdminServiceClient,
        order_service_client::OrderServiceClient,
    },
    store::v1::{
        CreateFoodRequest, ListFoodsRequest, RestockRequest,
        store_admin_service_client::StoreAdminServiceClient,
        store_service_client::StoreServiceClient,
    },
};
use order_saga_saga::client_may_retry;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "sagactl", version, about = "Command-line client of order-saga")]
struct Cli {
    /// Order service URL.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_ORDER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    order: String,
    /// Store service URL.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_STORE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    store: String,
    /// Delivery service URL.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_DELIVERY_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    delivery: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    Pending,
    Placed,
    NotPlaced,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Place one order and wait for its outcome.
    Place {
        /// Food to order.
        #[arg(long)]
        food: String,
        /// Delivery zone.
        #[arg(long)]
        zone: String,
        /// Customer id.
        #[arg(long, default_value = "cli")]
        customer: String,
        /// Idempotency key (default: a fresh one). Repeat it to get the same order back.
        #[arg(long)]
        key: Option<String>,
    },
    /// Show one order.
    Get {
        /// The order id.
        order_id: String,
    },
    /// List orders, newest first.
    List {
        /// Only orders in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Foods: create or list.
    #[command(subcommand)]
    Food(FoodCmd),
    /// Add packets to a food.
    Restock {
        /// The food.
        food: String,
        /// How many packets.
        count: i64,
    },
    /// Agents: add to a zone, or complete a delivery.
    #[command(subcommand)]
    Agents(AgentCmd),
    /// Packets per food and agents per zone, by state.
    Availability,
    /// Unfinished sagas with their step, attempts, last error and lease.
    Stuck {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// Drive one unfinished saga now.
    Redrive {
        /// The order id.
        order_id: String,
    },
    /// Give up on one unfinished order: NOT_PLACED, both sides released.
    ForceFail {
        /// The order id.
        order_id: String,
    },
    /// Create a small demo catalogue and fleet if the store has no food yet.
    Seed,
    /// Place many orders concurrently and count the outcomes.
    PlaceMany {
        /// How many orders.
        #[arg(long)]
        count: usize,
        /// How many in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Food to order.
        #[arg(long)]
        food: String,
        /// Delivery zone.
        #[arg(long)]
        zone: String,
        /// Prefix of the idempotency keys (`<prefix>-<n>`); default a fresh one.
        #[arg(long)]
        key_prefix: Option<String>,
        /// Keep retrying a failed request (same key) for this long.
        #[arg(long, default_value = "0s", value_parser = humantime_duration)]
        retry_for: Duration,
        /// Exit 0 even when some requests failed.
        #[arg(long)]
        allow_errors: bool,
    },
    /// Check the invariants through the public APIs once the system is quiet.
    Verify {
        /// How long to wait for pending orders and reservations to settle.
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        wait: Duration,
    },
    /// Randomized chaos campaign on a local PostgreSQL cluster: clients place orders while a
    /// nemesis kills, pauses and restarts processes and cuts links; then checks the invariants.
    Chaos {
        /// How long clients run while faults are injected.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        duration: Duration,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Seed of every random choice (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
        /// Order instances sharing one database.
        #[arg(long, default_value_t = 2)]
        order_instances: usize,
        /// Packets (and agents) of the plentiful food and zone (default: scales with duration).
        #[arg(long)]
        stock: Option<i64>,
        /// Directory of the service binaries (default: next to sagactl).
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
    },
    /// Exit 0 when the gRPC server at URL reports SERVING.
    Health {
        /// Server URL, e.g. http://127.0.0.1:50052.
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum FoodCmd {
    /// Add a food to the catalogue.
    Create {
        /// Food id, e.g. margherita.
        food_id: String,
        /// Display name.
        name: String,
    },
    /// List foods.
    List,
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// Add agents to a zone (created if new).
    Add {
        /// Zone.
        zone: String,
        /// How many agents.
        count: i64,
    },
    /// Mark an agent's delivery done: it becomes available again.
    Complete {
        /// The agent id.
        agent_id: String,
    },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(url.to_owned())
        .with_context(|| format!("invalid URL {url}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

fn state_name(state: i32) -> &'static str {
    match OrderState::try_from(state) {
        Ok(OrderState::Pending) => "PENDING",
        Ok(OrderState::Placed) => "PLACED",
        Ok(OrderState::NotPlaced) => "NOT_PLACED",
        _ => "?",
    }
}

fn reason_name(reason: i32) -> String {
    match NotPlacedReason::try_from(reason) {
        Ok(NotPlacedReason::Unspecified) | Err(_) => String::new(),
        Ok(r) => r
            .as_str_name()
            .trim_start_matches("NOT_PLACED_REASON_")
            .to_owned(),
    }
}

fn print_orders(orders: &[Order]) {
    let mut t = table(&[
        "order", "state", "food", "zone", "packet", "agent", "reason",
    ]);
    for o in orders {
        t.add_row(vec![
            o.order_id.clone(),
            state_name(o.state).to_owned(),
            o.food_id.clone(),
            o.zone.clone(),
            o.packet_id.clone(),
            o.agent_id.clone(),
            reason_name(o.not_placed_reason),
        ]);
    }
    println!("{t}");
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Place {
            food,
            zone,
            customer,
            key,
        } => {
            let mut client = OrderServiceClient::new(connect(&cli.order).await?);
            let key = key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
            let order = client
                .place_order(PlaceOrderRequest {
                    idempotency_key: key.clone(),
                    customer_id: customer,
                    food_id: food,
                    zone,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_orders(std::slice::from_ref(&order));
            if !order.detail.is_empty() {
                println!("detail: {}", order.detail);
            }
            println!("idempotency key: {key}");
        }
        Cmd::Get { order_id } => {
            let mut client = OrderServiceClient::new(connect(&cli.order).await?);
            let order = client
                .get_order(GetOrderRequest { order_id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_orders(std::slice::from_ref(&order));
            if !order.detail.is_empty() {
                println!("detail: {}", order.detail);
            }
        }
        Cmd::List { state, limit } => {
            let mut client = OrderServiceClient::new(connect(&cli.order).await?);
            let state = state.map(|s| match s {
                StateArg::Pending => OrderState::Pending,
                StateArg::Placed => OrderState::Placed,
                StateArg::NotPlaced => OrderState::NotPlaced,
            });
            let orders = list_orders(&mut client, state, limit).await?;
            print_orders(&orders);
        }
        Cmd::Food(FoodCmd::Create { food_id, name }) => {
            let mut client = StoreAdminServiceClient::new(connect(&cli.store).await?);
            let food = client
                .create_food(CreateFoodRequest { food_id, name })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("created food {} ({})", food.food_id, food.name);
        }
        Cmd::Food(FoodCmd::List) | Cmd::Availability => {
            show_availability(&cli, matches!(cli.command, Cmd::Availability)).await?;
        }
        Cmd::Restock { food, count } => {
            let mut client = StoreAdminServiceClient::new(connect(&cli.store).await?);
            let f = client
                .restock(RestockRequest {
                    food_id: food,
                    count,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}: {} available, {} reserved, {} assigned",
                f.food_id, f.available, f.reserved, f.assigned
            );
        }
        Cmd::Agents(AgentCmd::Add { zone, count }) => {
            let mut client = DeliveryAdminServiceClient::new(connect(&cli.delivery).await?);
            let z = client
                .add_agents(AddAgentsRequest { zone, count })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{}: {} available, {} reserved, {} assigned",
                z.zone, z.available, z.reserved, z.assigned
            );
        }
        Cmd::Agents(AgentCmd::Complete { agent_id }) => {
            let mut client = DeliveryAdminServiceClient::new(connect(&cli.delivery).await?);
            let done = client
                .complete_delivery(CompleteDeliveryRequest { agent_id })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "agent {} delivered order {} and is available again",
                done.agent_id, done.order_id
            );
        }
        Cmd::Stuck { limit } => {
            let mut client = OrderAdminServiceClient::new(connect(&cli.order).await?);
            let sagas = client
                .list_stuck_orders(ListStuckOrdersRequest { limit })
                .await
                .map_err(status_error)?
                .into_inner()
                .sagas;
            let mut t = table(&[
                "order",
                "step",
                "attempts",
                "last error",
                "lease owner",
                "epoch",
            ]);
            for s in &sagas {
                t.add_row(vec![
                    s.order
                        .as_ref()
                        .map(|o| o.order_id.clone())
                        .unwrap_or_default(),
                    s.step.clone(),
                    s.attempts.to_string(),
                    s.last_error.clone(),
                    s.lease_owner.clone(),
                    s.epoch.to_string(),
                ]);
            }
            println!("{t}");
            println!("{} unfinished saga(s)", sagas.len());
        }
        Cmd::Redrive { order_id } => {
            let mut client = OrderAdminServiceClient::new(connect(&cli.order).await?);
            let order = client
                .redrive_order(RedriveOrderRequest { order_id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_orders(std::slice::from_ref(&order));
        }
        Cmd::ForceFail { order_id } => {
            let mut client = OrderAdminServiceClient::new(connect(&cli.order).await?);
            let order = client
                .force_fail_order(ForceFailOrderRequest { order_id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_orders(std::slice::from_ref(&order));
        }
        Cmd::Seed => seed(&cli).await?,
        Cmd::PlaceMany {
            count,
            concurrency,
            food,
            zone,
            key_prefix,
            retry_for,
            allow_errors,
        } => {
            let prefix = key_prefix.unwrap_or_else(|| {
                format!("load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
            });
            let client = OrderServiceClient::new(connect(&cli.order).await?);
            let outcome =
                place_many(client, count, concurrency, &food, &zone, &prefix, retry_for).await;
            if let Some(e) = &outcome.first_error {
                eprintln!("first error: {e}");
            }
            println!(
                "elapsed={:.2}s throughput={:.1}/s",
                outcome.elapsed.as_secs_f64(),
                count as f64 / outcome.elapsed.as_secs_f64().max(1e-9)
            );
            println!(
                "attempted={count} placed={} not_placed={} errors={}",
                outcome.placed, outcome.not_placed, outcome.errors
            );
            if outcome.errors > 0 && !allow_errors {
                bail!("{} request(s) failed", outcome.errors);
            }
        }
        Cmd::Verify { wait } => verify(&cli, wait).await?,
        Cmd::Chaos {
            duration,
            clients,
            seed,
            order_instances,
            stock,
            bin_dir,
        } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            let mut config =
                order_saga_testkit::campaign::CampaignConfig::new(duration, clients, seed);
            config.order_instances = order_instances.max(1);
            if let Some(stock) = stock {
                config.stock = stock.max(1);
            }
            if let Some(dir) = bin_dir {
                config.bin_dir = dir;
            }
            let report =
                order_saga_testkit::campaign::run(&config, |line| println!("{line}")).await?;
            println!("{}", report.render());
            if !report.passed() {
                bail!("chaos campaign found violations; rerun with --seed {seed}");
            }
        }
        Cmd::Health { url, timeout } => {
            let probe = async {
                let channel = connect(&url).await?;
                let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
                let status = client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .status;
                anyhow::Ok(status)
            };
            let status = tokio::time::timeout(timeout, probe)
                .await
                .map_err(|_| anyhow::anyhow!("no answer from {url} within {timeout:?}"))??;
            if status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                bail!("{url} is not serving (status {status})");
            }
            println!("SERVING");
        }
    }
    Ok(())
}

async fn list_orders(
    client: &mut OrderServiceClient<Channel>,
    state: Option<OrderState>,
    limit: usize,
) -> anyhow::Result<Vec<Order>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_orders(ListOrdersRequest {
                page_size: 1000,
                page_token: token,
                state: state.map_or(0, |s| s as i32),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() || out.len() >= limit {
            out.truncate(limit);
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

async fn show_availability(cli: &Cli, zones_too: bool) -> anyhow::Result<()> {
    let mut store = StoreServiceClient::new(connect(&cli.store).await?);
    let foods = store
        .list_foods(ListFoodsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .foods;
    let mut t = table(&["food", "name", "available", "reserved", "assigned"]);
    for f in &foods {
        t.add_row(vec![
            f.food_id.clone(),
            f.name.clone(),
            f.available.to_string(),
            f.reserved.to_string(),
            f.assigned.to_string(),
        ]);
    }
    println!("{t}");
    if zones_too {
        let mut delivery = DeliveryServiceClient::new(connect(&cli.delivery).await?);
        let zones = delivery
            .list_zones(ListZonesRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .zones;
        let mut t = table(&["zone", "available", "reserved", "assigned"]);
        for z in &zones {
            t.add_row(vec![
                z.zone.clone(),
                z.available.to_string(),
                z.reserved.to_string(),
                z.assigned.to_string(),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}

/// The demo catalogue `make run` seeds.
const DEMO_FOODS: &[(&str, &str, i64)] = &[
    ("margherita", "Pizza Margherita", 20),
    ("pad-thai", "Pad Thai", 10),
    ("ramen", "Tonkotsu Ramen", 5),
];
const DEMO_ZONES: &[(&str, i64)] = &[("north", 5), ("south", 3)];

async fn seed(cli: &Cli) -> anyhow::Result<()> {
    let channel = connect(&cli.store).await?;
    let foods = StoreServiceClient::new(channel.clone())
        .list_foods(ListFoodsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .foods;
    if !foods.is_empty() {
        println!("store already has {} food(s); not seeding", foods.len());
        return Ok(());
    }
    let mut admin = StoreAdminServiceClient::new(channel);
    for (id, name, count) in DEMO_FOODS {
        admin
            .create_food(CreateFoodRequest {
                food_id: (*id).into(),
                name: (*name).into(),
            })
            .await
            .map_err(status_error)?;
        admin
            .restock(RestockRequest {
                food_id: (*id).into(),
                count: *count,
            })
            .await
            .map_err(status_error)?;
    }
    let mut delivery = DeliveryAdminServiceClient::new(connect(&cli.delivery).await?);
    for (zone, count) in DEMO_ZONES {
        delivery
            .add_agents(AddAgentsRequest {
                zone: (*zone).into(),
                count: *count,
            })
            .await
            .map_err(status_error)?;
    }
    println!(
        "seeded {} foods and {} zones",
        DEMO_FOODS.len(),
        DEMO_ZONES.len()
    );
    Ok(())
}

#[derive(Debug, Default)]
struct LoadOutcome {
    placed: usize,
    not_placed: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

async fn place_many(
    client: OrderServiceClient<Channel>,
    count: usize,
    concurrency: usize,
    food: &str,
    zone: &str,
    prefix: &str,
    retry_for: Duration,
) -> LoadOutcome {
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = permits.clone();
        let mut client = client.clone();
        let request = PlaceOrderRequest {
            idempotency_key: format!("{prefix}-{i}"),
            customer_id: "load".into(),
            food_id: food.into(),
            zone: zone.into(),
        };
        tasks.spawn(async move {
            let _permit = permit.acquire_owned().await;
            let give_up = Instant::now() + retry_for;
            let mut delay = Duration::from_millis(100);
            loop {
                match client.place_order(request.clone()).await {
                    Ok(order) => return Ok(order.into_inner().state),
                    Err(s) if client_may_retry(s.code()) && Instant::now() < give_up => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(s) => return Err(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        });
    }
    let mut outcome = LoadOutcome::default();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(state)) if state == OrderState::Placed as i32 => outcome.placed += 1,
            Ok(Ok(state)) if state == OrderState::NotPlaced as i32 => outcome.not_placed += 1,
            Ok(Ok(state)) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert(format!("unexpected state {}", state_name(state)));
            }
            Ok(Err(e)) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(e);
            }
            Err(e) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(e.to_string());
            }
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Checks invariants 1-3 of docs/design.md as far as the public APIs show them.
async fn verify(cli: &Cli, wait: Duration) -> anyhow::Result<()> {
    let mut orders_client = OrderServiceClient::new(connect(&cli.order).await?);
    let mut store = StoreServiceClient::new(connect(&cli.store).await?);
    let mut delivery = DeliveryServiceClient::new(connect(&cli.delivery).await?);
    let give_up = Instant::now() + wait;
    // Wait for quiet: no pending order and no live reservation.
    let (orders, foods, zones) = loop {
        let orders = list_orders(&mut orders_client, None, usize::MAX).await?;
        let foods = store
            .list_foods(ListFoodsRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .foods;
        let zones = delivery
            .list_zones(ListZonesRequest {})
            .await
            .map_err(status_error)?
            .into_inner()
            .zones;
        let pending = orders.iter().any(|o| o.state == OrderState::Pending as i32);
        let reserved = foods.iter().any(|f| f.reserved > 0) || zones.iter().any(|z| z.reserved > 0);
        if (!pending && !reserved) || Instant::now() >= give_up {
            break (orders, foods, zones);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let placed: Vec<&Order> = orders
        .iter()
        .filter(|o| o.state == OrderState::Placed as i32)
        .collect();
    let mut checks: Vec<(&str, bool, String)> = Vec::new();
    let pending = orders
        .iter()
        .filter(|o| o.state == OrderState::Pending as i32)
        .count();
    checks.push((
        "every order is terminal",
        pending == 0,
        format!("{pending} pending of {}", orders.len()),
    ));
    let incomplete = placed
        .iter()
        .filter(|o| o.packet_id.is_empty() || o.agent_id.is_empty())
        .count();
    checks.push((
        "placed orders have a packet and an agent",
        incomplete == 0,
        format!("{incomplete} incomplete"),
    ));
    let distinct =
        |f: fn(&Order) -> &str| placed.iter().map(|o| f(o)).collect::<HashSet<_>>().len();
    let packets = distinct(|o| &o.packet_id);
    checks.push((
        "no packet on two placed orders",
        packets == placed.len(),
        format!("{packets} distinct for {} placed", placed.len()),
    ));
    let agents = distinct(|o| &o.agent_id);
    checks.push((
        "no agent on two placed orders",
        agents == placed.len(),
        format!("{agents} distinct for {} placed", placed.len()),
    ));
    let reserved: i64 = foods.iter().map(|f| f.reserved).sum::<i64>()
        + zones.iter().map(|z| z.reserved).sum::<i64>();
    checks.push((
        "nothing left reserved",
        reserved == 0,
        format!("{reserved} unit(s) reserved"),
    ));
    let mut per_food: HashMap<&str, i64> = HashMap::new();
    for o in &placed {
        *per_food.entry(o.food_id.as_str()).or_default() += 1;
    }
    let mismatched: Vec<String> = foods
        .iter()
        .filter(|f| f.assigned != per_food.get(f.food_id.as_str()).copied().unwrap_or(0))
        .map(|f| {
            format!(
                "{}: {} assigned vs {} placed",
                f.food_id,
                f.assigned,
                per_food.get(f.food_id.as_str()).copied().unwrap_or(0)
            )
        })
        .collect();
    let detail = if mismatched.is_empty() {
        format!("{} food(s) checked", foods.len())
    } else {
        mismatched.join("; ")
    };
    checks.push((
        "assigned packets match placed orders",
        mismatched.is_empty(),
        detail,
    ));

    let mut failed = 0;
    for (name, ok, detail) in &checks {
        println!("{} {name}: {detail}", if *ok { "PASS" } else { "FAIL" });
        failed += usize::from(!ok);
    }
    println!(
        "orders={} placed={} not_placed={}",
        orders.len(),
        placed.len(),
        orders.len() - placed.len() - pending
    );
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}
