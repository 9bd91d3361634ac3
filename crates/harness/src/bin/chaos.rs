//! `chaos`: the randomized chaos campaign on a local PostgreSQL cluster (`make chaos`).
//!
//! Clients place orders while a nemesis kills, pauses and restarts processes, cuts links and
//! takes sagas over as an operator would; then the invariants are checked. The service
//! binaries come from `--bin-dir` (default: next to this binary, or `$ORDER_SAGA_BIN_DIR`).

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use clap::Parser;
use order_saga_testkit::campaign::{CampaignConfig, run};

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    version,
    about = "Randomized chaos campaign of order-saga"
)]
struct Args {
    /// How long clients run while faults are injected.
    #[arg(long, default_value = "10m", value_parser = order_saga_platform::parse_duration)]
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
    /// Directory of the service binaries.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut config = CampaignConfig::new(args.duration, args.clients, seed);
    config.order_instances = args.order_instances.max(1);
    if let Some(stock) = args.stock {
        config.stock = stock.max(1);
    }
    if let Some(dir) = args.bin_dir {
        config.bin_dir = dir;
    }
    let report = run(&config, |line| println!("{line}")).await?;
    println!("{}", report.render());
    if !report.passed() {
        bail!("chaos campaign found violations; rerun with --seed {seed}");
    }
    Ok(())
}
