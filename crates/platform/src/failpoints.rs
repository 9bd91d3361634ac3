//! Failpoints for fault-injection tests ([fail-rs](https://docs.rs/fail)).
//!
//! Compiled in only with the `failpoints` cargo feature (the dev build of `make run` and
//! `make test`; never release images). Each process reads its failpoints from the
//! `FAILPOINTS` environment variable at start-up, e.g.
//! `FAILPOINTS='order-after-persist-assigning=panic(exit)'`:
//!
//! - `panic`: the current task panics (the request or the saga task dies, the process lives);
//! - `panic(exit)`: the **process** aborts on the spot, like `kill -9`;
//! - `sleep(ms)`, `pause`, `N*action`, `P%action`: as fail-rs documents.
//!
//! The points are listed in the README ("Failpoints").

/// Panic message that turns a failpoint panic into a process abort.
pub const EXIT: &str = "exit";

/// Keeps the failpoint configuration alive; hold it for the life of `main`.
#[must_use = "failpoints are cleared when the guard is dropped"]
pub struct FailpointGuard {
    #[cfg(feature = "failpoints")]
    _scenario: fail::FailScenario<'static>,
}

/// Configures the failpoints named in `FAILPOINTS`. Panics on a malformed `FAILPOINTS`, so a
/// test cannot run with a typo unnoticed. A build without the `failpoints` feature exits (code 2)
/// on any `FAILPOINTS` at all: a fault test pointed at release binaries (or at `make image-bins`
/// output) then fails at start-up with the reason, instead of running a scenario whose fault
/// never fires.
pub fn init() -> FailpointGuard {
    #[cfg(feature = "failpoints")]
    {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if message == Some(EXIT) {
                eprintln!("failpoint: aborting the process at {:?}", info.location());
                std::process::abort();
            }
            previous(info);
        }));
        if let Ok(spec) = std::env::var("FAILPOINTS") {
            tracing::warn!(failpoints = %spec, "failpoints configured");
        }
        FailpointGuard {
            _scenario: fail::FailScenario::setup(),
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        if std::env::var_os("FAILPOINTS").is_some_and(|spec| !spec.is_empty()) {
            eprintln!(
                "error: FAILPOINTS is set, but this binary was built without the failpoints \
                 feature (`make build` builds the services with it; release builds never have it)"
            );
            std::process::exit(2);
        }
        FailpointGuard {}
    }
}
