//! Test-only tools that drive a whole order-saga cluster from outside: the randomized chaos
//! campaign (`chaos` binary, `make chaos`) and the benchmark (`bench` binary, `make bench`).
//! They live apart from `sagactl` so the CLI shipped with the services stays small.

pub mod bench;
pub mod report;
