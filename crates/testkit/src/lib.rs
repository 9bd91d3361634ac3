//! Fault-injection kit for order-saga's end-to-end and chaos tests.
//!
//! - [`pg`]: a throwaway PostgreSQL cluster the tests control (stop it, start it again).
//! - [`proxy`]: a TCP fault proxy for every link: latency, stall, reset, dropped responses, cut.
//! - [`procs`]: the three services as real processes (so `SIGKILL` is a real crash), each link
//!   through a proxy, with per-process failpoints through the `FAILPOINTS` variable.
//! - [`invariants`]: docs/design.md's five invariants, checked by reading all three databases.
//! - [`http`]: a tiny HTTP/1.1 client (metrics scrapes, the console, WebDriver).
//! - [`campaign`]: the randomized chaos campaign behind `make chaos` (the `chaos` binary of `crates/harness`).

pub mod campaign;
pub mod http;
pub mod invariants;
pub mod pg;
pub mod procs;
pub mod proxy;

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub async fn pg_accepts(port: u16) -> bool {
    tokio::time::timeout(
        std::time::Duration::from_secs(1),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false)
}
