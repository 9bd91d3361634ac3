//! `fuzz`: the input fuzzer behind `make fuzz`. Run `fuzz --help`.

use clap::Parser;
use order_saga_harness::fuzz::{FuzzArgs, run};

#[derive(Debug, Parser)]
#[command(
    name = "fuzz",
    version,
    about = "Hostile requests to every RPC of a live order-saga cluster; every answer must be a documented code"
)]
struct Cli {
    #[command(flatten)]
    args: FuzzArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = run(&cli.args).await?;
    let total: u64 = report.counts.iter().map(|c| c.total()).sum();
    println!(
        "fuzz: seed {}, {total} requests over {} RPC/port pairs",
        report.seed,
        report.counts.len()
    );
    for c in &report.counts {
        for bad in &c.bad {
            println!("BAD {} {}: {bad}", c.service, c.rpc);
        }
    }
    for line in report
        .exited
        .iter()
        .chain(&report.panics)
        .chain(&report.violations)
    {
        println!("BAD {line}");
    }
    if !report.passed() {
        anyhow::bail!(
            "{} answer(s) outside the contract, {} exit(s), {} panic(s), {} invariant violation(s)",
            report.bad_answers(),
            report.exited.len(),
            report.panics.len(),
            report.violations.len()
        );
    }
    println!("fuzz: every answer was a documented code; no crash; invariants hold");
    Ok(())
}
