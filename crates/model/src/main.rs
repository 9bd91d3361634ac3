//! `model check` runs the exhaustive check of the saga protocol; `model explore` serves
//! stateright's explorer UI on the same model.

use clap::{Parser, Subcommand};
use order_saga_model::{ModelConfig, SagaModel, check};
use stateright::{Expectation, Model};

#[derive(Parser)]
#[command(about = "Model check of the order saga (stateright)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Explore every state breadth-first and judge every property.
    Check {
        /// The small bound `make test` checks (the default).
        #[arg(long, conflicts_with = "full")]
        small: bool,
        /// The larger bound `make model-check` checks.
        #[arg(long)]
        full: bool,
        /// The smallest world that shows why the epoch fence is needed (one order, one
        /// instance, one operator force-fail); use with `--no-epoch-fence` to see the
        /// counterexample.
        #[arg(long, conflicts_with_all = ["full", "small"])]
        fencing_demo: bool,
        /// Model the old protocol: writes fenced on the owner name only (expected to fail).
        #[arg(long)]
        no_epoch_fence: bool,
        /// Checker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Override one fault budget of the chosen bound, e.g. `--budget crashes=2` (repeat
        /// for several): crashes, lease_expiries, drops, duplicates, late_requests,
        /// reservation_expiries, client_retries, redrives, force_fails.
        #[arg(long, value_parser = parse_budget)]
        budget: Vec<(String, u8)>,
        /// Override the number of clients (one order each) of the chosen bound.
        #[arg(long)]
        clients: Option<u8>,
    },
    /// Serve stateright's explorer UI on the small bound.
    Explore {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: String,
    },
}

fn parse_budget(s: &str) -> Result<(String, u8), String> {
    let (name, n) = s.split_once('=').ok_or("expected NAME=N")?;
    Ok((name.to_owned(), n.parse().map_err(|e| format!("{e}"))?))
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Cmd::Check {
            small: _,
            full,
            fencing_demo,
            no_epoch_fence,
            threads,
            budget,
            clients,
        } => {
            let bounds = if full {
                ModelConfig::full()
            } else if fencing_demo {
                vec![("the fencing demo", ModelConfig::fencing_demo())]
            } else {
                vec![
                    ("two orders, one packet", ModelConfig::small()),
                    ("one order, taken over", ModelConfig::takeovers()),
                ]
            };
            let mut all_hold = true;
            let (mut states, mut depth) = (0, 0);
            let started = std::time::Instant::now();
            for (name, mut config) in bounds {
                if let Some(n) = clients {
                    config.clients = n;
                }
                for (budget, n) in &budget {
                    match config.budget.slot(budget) {
                        Some(slot) => *slot = *n,
                        None => {
                            eprintln!("unknown budget {budget:?}");
                            return std::process::ExitCode::from(2);
                        }
                    }
                }
                let config = config.with_epoch_fence(!no_epoch_fence);
                println!("== {name}\n   {config:?}");
                let report = check(config, threads);
                println!(
                    "   states: {} unique ({} generated), max depth {}, time {:.1?}",
                    report.unique_states, report.total_states, report.max_depth, report.elapsed
                );
                for v in &report.verdicts {
                    let verdict = match (v.holds, &v.expectation) {
                        (true, Expectation::Sometimes) => "example found",
                        (true, _) => "holds",
                        (false, Expectation::Sometimes) => "FAILED: no example",
                        (false, _) => "FAILED: counterexample",
                    };
                    println!("   [{:?}] {}: {verdict}", v.expectation, v.name);
                    if !v.holds {
                        v.trace.iter().for_each(|line| println!("      {line}"));
                    }
                }
                all_hold &= report.all_hold();
                states += report.unique_states;
                depth = depth.max(report.max_depth);
            }
            println!(
                "total: {states} unique states, max depth {depth}, {:.1?}: {}",
                started.elapsed(),
                if all_hold { "PASS" } else { "FAIL" }
            );
            if all_hold {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Cmd::Explore { addr } => {
            println!("explorer on http://{addr}");
            SagaModel::new(ModelConfig::small()).checker().serve(addr);
            std::process::ExitCode::SUCCESS
        }
    }
}
