//! `store`: the store participant service. Configuration: `store --help`.

use order_saga_platform::{
    app::Listeners,
    server::shutdown_signal,
    telemetry::{TelemetryConfig, init_telemetry},
};
use order_saga_reservation::app::ParticipantArgs;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _failpoints = order_saga_platform::failpoints::init();
    let args = ParticipantArgs::parse_with_env_prefix(
        "store",
        "STORE",
        ["127.0.0.1:50052", "127.0.0.1:50152", "127.0.0.1:50252"],
        "sqlite://data/store.db",
        // Delivered packets are retired after 30 days.
        "30days",
    );
    let _telemetry = init_telemetry("store", &TelemetryConfig::from_env()?)?;
    let settings = args.settings()?;
    let listeners = Listeners::bind(args.listen_addrs()).await?;
    let app = store_service::build(listeners, settings).await?;
    app.run_until_stopped(shutdown_signal()).await
}
