//! A short fuzz run in `make test` (`make fuzz` sends 100,000 requests per RPC and port): every
//! RPC of a live cluster on the dev binaries gets hostile requests; every answer must be a
//! documented code, no service may exit or panic, and the invariants must hold afterwards.

use std::time::Duration;

use clap::Parser;
use order_saga_harness::fuzz::{FuzzArgs, GUESSER, IMPOSTOR, run};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: FuzzArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_documented_codes_and_break_nothing() {
    let out = std::env::temp_dir().join(format!("fuzz-smoke-{}", std::process::id()));
    let bin_dir = order_saga_testkit::procs::default_bin_dir();
    let cli = Cli::parse_from([
        "fuzz",
        "--backend",
        "sqlite",
        "--requests",
        "300",
        "--concurrency",
        "16",
        "--bin-dir",
        bin_dir.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    let report = tokio::time::timeout(Duration::from_secs(300), run(&cli.args))
        .await
        .expect("fuzz finishes")
        .expect("fuzz runs");
    assert_eq!(
        report.counts.len(),
        26,
        "every RPC on every port that serves it"
    );
    for c in &report.counts {
        assert_eq!(c.total(), 300, "{} {}", c.service, c.rpc);
        assert!(
            c.garbage > 0,
            "{} {}: some bodies are not messages",
            c.service,
            c.rpc
        );
        assert!(
            c.bad.is_empty(),
            "seed {}: {} {}: {:?}",
            report.seed,
            c.service,
            c.rpc,
            c.bad
        );
    }
    // Fuzzed admin calls carry the operator's token most of the time: some get through.
    let restock = report
        .counts
        .iter()
        .find(|c| c.rpc.ends_with("/Restock"))
        .expect("Restock fuzzed");
    assert!(restock.codes.contains_key("Ok"), "{:?}", restock.codes);
    assert!(
        restock
            .codes
            .contains_key(&format!("Unauthenticated{GUESSER}")),
        "{:?}",
        restock.codes
    );
    // Calls without the operator's token come from an address of their own: the wrong-token
    // throttle may lock that address out (RESOURCE_EXHAUSTED), never the operator's calls,
    // whose answers are the methods' own. (With one address for both, an unlucky run of
    // wrong tokens locked the operator out and the later admin RPCs went unfuzzed.)
    for c in report
        .counts
        .iter()
        .filter(|c| c.rpc.contains("AdminService"))
    {
        assert!(
            !c.codes.contains_key("ResourceExhausted"),
            "{} {}: the operator's own calls were throttled: {:?}",
            c.service,
            c.rpc,
            c.codes
        );
    }
    // Internal calls made with another service's certificate are all refused, and some of
    // those made with the orchestrator's get through.
    for c in report
        .counts
        .iter()
        .filter(|c| c.rpc.contains("ReservationService"))
    {
        let impostor = format!("PermissionDenied{IMPOSTOR}");
        assert!(
            c.codes.contains_key(&impostor),
            "{} {}: {:?}",
            c.service,
            c.rpc,
            c.codes
        );
        assert!(c.codes.contains_key("Ok") || c.codes.contains_key("InvalidArgument"));
    }
    assert!(report.exited.is_empty(), "{:?}", report.exited);
    assert!(report.panics.is_empty(), "{:?}", report.panics);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let _ = std::fs::remove_dir_all(&out);
}
