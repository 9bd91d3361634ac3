//! The participant reservation engine shared by the store and delivery services.
//!
//! Store and delivery do the same thing to different resources: each owns pools of individually
//! identified units (packets of a food, agents of a zone) and lets the order orchestrator
//! reserve one unit per order with an expiring hold, make it permanent (assign), or give it back
//! (release). This crate is that engine, written once:
//!
//! - [`Engine`]: the protocol over one database, with atomic single-statement claims, expiry
//!   judged by the database clock, per-order idempotency and release tombstones.
//! - [`grpc::ReservationGrpc`]: `reservation.v1.ReservationService` over an engine, with the
//!   status-code contract of the README.
//! - [`sweeper`]: releases expired reservations; any number may run at once.
//!
//! The two services are thin adapters that add their catalogue and admin APIs.

pub mod app;
mod engine;
pub mod grpc;
pub mod sweeper;

pub use sweeper::SweeperConfig;

pub use engine::{
    Engine, EngineConfig, EngineError, MAX_UNITS_PER_CALL, PoolCounts, PoolInfo, Reservation,
    check_unit_count,
};

/// The embedded migrations of a participant database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
