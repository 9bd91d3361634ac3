//! `sagactl`: the command-line client of order-saga.
//!
//! Places and inspects orders, manages foods and agents, shows availability, operates stuck
//! sagas, generates load, verifies the system's invariants through the public APIs, and probes
//! gRPC health (used as the container healthcheck). Run `sagactl --help`.
//!
//! Every command that places orders honours the servers' backpressure: an `UNAVAILABLE` answer
//! with a `google.rpc.RetryInfo` hint is retried, with the same idempotency key, after the
//! hinted delay. The chaos campaign and the benchmark are test tools and live in the
//! `order-saga-harness` crate, not here.

mod catalogue;
mod client;
mod load;
mod orders;
mod verify;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use client::Urls;

#[derive(Debug, Parser)]
#[command(name = "sagactl", version, about = "Command-line client of order-saga")]
struct Cli {
    #[command(flatten)]
    urls: Urls,
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
        /// Keep retrying (same key) while the answer is busy or not final, for this long.
        #[arg(long, default_value = "30s", value_parser = client::humantime_duration)]
        retry_for: Duration,
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
    /// Agents: add to a zone.
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
    /// How one order's saga got where it is: every write, with its calls, codes and instance.
    History {
        /// The order id.
        order_id: String,
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
    /// Mark a placed order's delivery done: its agent is freed for the next order (refused for
    /// an order that is not placed).
    CompleteDelivery {
        /// The order id.
        order_id: String,
    },
    /// Create a small demo catalogue and fleet if the store has no food yet.
    Seed,
    /// Place many orders concurrently and count the outcomes.
    PlaceMany(load::Load),
    /// Check the invariants through the public APIs once the system is quiet.
    Verify {
        /// How long to wait for pending orders and reservations to settle.
        #[arg(long, default_value = "60s", value_parser = client::humantime_duration)]
        wait: Duration,
    },
    /// Exit 0 when the gRPC server at URL reports SERVING.
    Health {
        /// Server URL, e.g. http://127.0.0.1:50052.
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = client::humantime_duration)]
        timeout: Duration,
    },
    /// Create a throwaway cluster CA and a certificate for each service (`ca.pem`,
    /// `order.pem`/`.key`, `store.pem`/`.key`, `delivery.pem`/`.key`) for the internal API's
    /// mutual TLS. The CA's key is not kept.
    Certs {
        /// Where to write them.
        #[arg(long, default_value = "data/certs")]
        dir: std::path::PathBuf,
        /// Replace certificates that are already there.
        #[arg(long)]
        force: bool,
    },
}

/// The services a cluster's CA issues certificates to.
const SERVICES: [&str; 3] = ["order", "store", "delivery"];

fn certs(dir: &std::path::Path, force: bool) -> anyhow::Result<()> {
    use order_saga_platform::tls::ClusterCa;
    if dir.join("ca.pem").exists() && !force {
        anyhow::bail!(
            "{} already holds a CA; pass --force to replace it and every certificate",
            dir.display()
        );
    }
    ClusterCa::generate("order-saga cluster CA")?.write(dir, &SERVICES)?;
    println!(
        "wrote a new CA and certificates for {} to {}",
        SERVICES.join(", "),
        dir.display()
    );
    Ok(())
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
    let urls = &cli.urls;
    match cli.command {
        Cmd::Place {
            food,
            zone,
            customer,
            key,
            retry_for,
        } => orders::place(urls, food, zone, customer, key, retry_for).await,
        Cmd::Get { order_id } => orders::get(urls, order_id).await,
        Cmd::List { state, limit } => orders::list(urls, state.map(StateArg::state), limit).await,
        Cmd::Food(FoodCmd::Create { food_id, name }) => {
            catalogue::create_food(urls, food_id, name).await
        }
        Cmd::Food(FoodCmd::List) => catalogue::show_availability(urls, false).await,
        Cmd::Availability => catalogue::show_availability(urls, true).await,
        Cmd::Restock { food, count } => catalogue::restock(urls, food, count).await,
        Cmd::Agents(AgentCmd::Add { zone, count }) => {
            catalogue::add_agents(urls, zone, count).await
        }
        Cmd::Stuck { limit } => orders::stuck(urls, limit).await,
        Cmd::History { order_id } => orders::history(urls, order_id).await,
        Cmd::Redrive { order_id } => orders::redrive(urls, order_id).await,
        Cmd::ForceFail { order_id } => orders::force_fail(urls, order_id).await,
        Cmd::CompleteDelivery { order_id } => orders::complete_delivery(urls, order_id).await,
        Cmd::Seed => catalogue::seed(urls).await,
        Cmd::PlaceMany(load) => load::run(urls, load).await,
        Cmd::Verify { wait } => verify::verify(urls, wait).await,
        Cmd::Health { url, timeout } => client::health(urls, &url, timeout).await,
        Cmd::Certs { dir, force } => certs(&dir, force),
    }
}

impl StateArg {
    fn state(self) -> order_saga_proto::order::v1::OrderState {
        use order_saga_proto::order::v1::OrderState;
        match self {
            StateArg::Pending => OrderState::Pending,
            StateArg::Placed => OrderState::Placed,
            StateArg::NotPlaced => OrderState::NotPlaced,
        }
    }
}
