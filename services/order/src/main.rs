//! `order`: the order-saga orchestrator service. Configuration: `order --help`.

use clap::Parser;
use order_saga_platform::{
    app::Listeners,
    server::shutdown_signal,
    telemetry::{TelemetryConfig, init_telemetry},
};
use order_service::{OrderApp, OrderArgs};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _failpoints = order_saga_platform::failpoints::init();
    let args = OrderArgs::parse();
    let _telemetry = init_telemetry("order", &TelemetryConfig::from_env()?)?;
    let settings = args.settings()?;
    let listeners = Listeners::bind(args.listen_addrs()).await?;
    let app = OrderApp::build(listeners, settings).await?;
    app.run_until_stopped(shutdown_signal()).await
}
