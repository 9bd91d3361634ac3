//! `delivery`: the delivery participant service. Configuration: `delivery --help`.

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
        "delivery",
        "DELIVERY",
        ["127.0.0.1:50053", "127.0.0.1:50153", "127.0.0.1:50253"],
        "sqlite://data/delivery.db",
        // Agents are freed by completed deliveries, never retired.
        "0s",
    );
    let _telemetry = init_telemetry("delivery", &TelemetryConfig::from_env()?)?;
    let settings = args.settings()?;
    let listeners = Listeners::bind(args.listen_addrs()).await?;
    let app = delivery_service::build(listeners, settings).await?;
    app.run_until_stopped(shutdown_signal()).await
}
