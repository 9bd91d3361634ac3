//! Test-only tools that drive a whole order-saga cluster from outside: the randomized chaos
//! campaign (`chaos` binary, `make chaos`), the benchmark (`bench` binary, `make bench`) and
//! the input fuzzer (`fuzz` binary, `make fuzz`).
//! They live apart from `sagactl` so the CLI shipped with the services stays small.

pub mod bench;
pub mod fuzz;
pub mod report;
