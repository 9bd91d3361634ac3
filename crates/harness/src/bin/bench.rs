//! `bench`: the order-saga benchmark behind `make bench`. Run `bench --help`.

use clap::Parser;
use order_saga_harness::bench::{BenchArgs, run};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "Benchmark of order-saga: throughput, latency, ceiling"
)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = run(&cli.args).await?;
    if !report.invariants.violations.is_empty() {
        anyhow::bail!("the invariants do not hold after the run");
    }
    if report.totals.errors > 0 {
        anyhow::bail!("{} order(s) failed", report.totals.errors);
    }
    Ok(())
}
