//! Connecting, printing, and retrying: what every command shares.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use order_saga_proto::order::v1::{NotPlacedReason, Order, OrderState};
use order_saga_saga::{BearerToken, ClientRetry, client_retry};
use tokio::time::Instant;
use tonic::{
    Status,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig},
};

/// A channel that sends the admin credential.
pub type AdminChannel = InterceptedService<Channel, BearerToken>;

/// Where the services' public and admin listeners are (`https://` URLs are verified against
/// `--tls-ca`).
#[derive(Debug, Clone, clap::Args)]
pub struct Urls {
    /// The order service's public listener.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_ORDER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub order: String,
    /// The store's public listener.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_STORE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub store: String,
    /// Delivery's public listener.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_DELIVERY_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub delivery: String,
    /// The order service's admin listener.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_ORDER_ADMIN_URL",
        default_value = "http://127.0.0.1:50251"
    )]
    pub order_admin: String,
    /// The store's admin listener.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_STORE_ADMIN_URL",
        default_value = "http://127.0.0.1:50252"
    )]
    pub store_admin: String,
    /// Delivery's admin listener.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_DELIVERY_ADMIN_URL",
        default_value = "http://127.0.0.1:50253"
    )]
    pub delivery_admin: String,
    /// The CA certificate that `https://` servers must present a certificate from.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_TLS_CA",
        default_value = "data/certs/ca.pem"
    )]
    pub tls_ca: PathBuf,
    /// Bearer token for the admin commands of every service (default: the contents of
    /// `data/admin.token`, which `make run` writes). A per-service token below wins.
    #[arg(
        long,
        global = true,
        env = "SAGACTL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The order service's admin token, where each service has its own (compose).
    #[arg(
        long,
        global = true,
        env = "SAGACTL_ORDER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub order_admin_token: Option<String>,
    /// The store's admin token, where each service has its own (compose).
    #[arg(
        long,
        global = true,
        env = "SAGACTL_STORE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub store_admin_token: Option<String>,
    /// Delivery's admin token, where each service has its own (compose).
    #[arg(
        long,
        global = true,
        env = "SAGACTL_DELIVERY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub delivery_admin_token: Option<String>,
}

/// Which service's admin API a command calls: each may have a token of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminApi {
    Order,
    Store,
    Delivery,
}

/// Where `make run` leaves the admin token of the local cluster.
const LOCAL_TOKEN_FILE: &str = "data/admin.token";

impl Urls {
    /// `api`'s admin URL and its own token, if one was given.
    fn admin_api(&self, api: AdminApi) -> (&str, Option<&String>) {
        let (url, token) = match api {
            AdminApi::Order => (&self.order_admin, &self.order_admin_token),
            AdminApi::Store => (&self.store_admin, &self.store_admin_token),
            AdminApi::Delivery => (&self.delivery_admin, &self.delivery_admin_token),
        };
        (url, token.as_ref())
    }

    /// The credential sent to `api`: its own `--<service>-admin-token`, else `--admin-token`,
    /// else `data/admin.token` if it exists, else none (the server answers `UNAUTHENTICATED`).
    pub fn admin_credential(&self, api: AdminApi) -> anyhow::Result<BearerToken> {
        let (_, own) = self.admin_api(api);
        let token = match own.or(self.admin_token.as_ref()) {
            Some(t) => Some(t.trim().to_owned()),
            None => std::fs::read_to_string(LOCAL_TOKEN_FILE)
                .ok()
                .map(|t| t.trim().to_owned()),
        };
        BearerToken::new(token.as_deref()).map_err(anyhow::Error::msg)
    }

    /// A channel to `url`: TLS verified against `--tls-ca` when it is `https://`.
    pub async fn connect(&self, url: &str) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(url.to_owned())
            .with_context(|| format!("invalid URL {url}"))?
            .connect_timeout(Duration::from_secs(3));
        if url.starts_with("https://") {
            let ca = std::fs::read(&self.tls_ca)
                .with_context(|| format!("read the CA {} (--tls-ca)", self.tls_ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))
    }

    /// A channel to `api`'s admin listener that sends its admin credential.
    pub async fn admin(&self, api: AdminApi) -> anyhow::Result<AdminChannel> {
        let (url, _) = self.admin_api(api);
        Ok(InterceptedService::new(
            self.connect(url).await?,
            self.admin_credential(api)?,
        ))
    }
}

pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

pub fn state_name(state: i32) -> &'static str {
    match OrderState::try_from(state) {
        Ok(OrderState::Pending) => "PENDING",
        Ok(OrderState::Placed) => "PLACED",
        Ok(OrderState::NotPlaced) => "NOT_PLACED",
        _ => "?",
    }
}

pub fn reason_name(reason: i32) -> String {
    match NotPlacedReason::try_from(reason) {
        Ok(NotPlacedReason::Unspecified) | Err(_) => String::new(),
        Ok(r) => r
            .as_str_name()
            .trim_start_matches("NOT_PLACED_REASON_")
            .to_owned(),
    }
}

pub fn print_orders(orders: &[Order]) {
    let mut t = table(&[
        "order", "state", "food", "zone", "packet", "agent", "reason",
    ]);
    for o in orders {
        t.add_row(vec![
            o.order_id.clone(),
            state_name(o.state).to_owned(),
            o.food_id.clone(),
            o.zone.clone(),
            o.packet_id.clone(),
            o.agent_id.clone(),
            reason_name(o.not_placed_reason),
        ]);
    }
    println!("{t}");
}

/// A failed call as an error naming its code.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// The contract's retry decision for a client still allowed to retry until `give_up`. A busy
/// answer is always retried after its hint, whatever `give_up` says: the request was not
/// taken, and the hint is the server's backpressure.
pub fn retry_after_error(status: &Status, give_up: Instant) -> ClientRetry {
    match client_retry(status) {
        ClientRetry::Backoff if Instant::now() >= give_up => ClientRetry::Stop,
        decision => decision,
    }
}

/// Exit 0 when the gRPC server at `url` reports SERVING within `timeout`.
pub async fn health(urls: &Urls, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let probe = async {
        let channel = urls.connect(url).await?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .status;
        anyhow::Ok(status)
    };
    let status = tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {url} within {timeout:?}"))??;
    if status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        bail!("{url} is not serving (status {status})");
    }
    println!("SERVING");
    Ok(())
}
