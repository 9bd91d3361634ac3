//! Orders: place, show, list, and the operator's view of unfinished sagas.

use std::time::Duration;

use order_saga_proto::order::v1::{
    CompleteDeliveryRequest, ForceFailOrderRequest, GetOrderHistoryRequest, GetOrderRequest,
    ListOrdersRequest, ListStuckOrdersRequest, Order, OrderState, PlaceOrderRequest,
    RedriveOrderRequest, order_admin_service_client::OrderAdminServiceClient,
    order_service_client::OrderServiceClient,
};
use tokio::time::Instant;

use order_saga_saga::ClientRetry;

use crate::client::{
    AdminApi, AdminChannel, Urls, print_orders, retry_after_error, status_error, table,
};

/// Places one order and waits for its outcome, retrying busy and not-final answers with the
/// same key for up to `retry_for`.
pub async fn place(
    urls: &Urls,
    food: String,
    zone: String,
    customer: String,
    key: Option<String>,
    retry_for: Duration,
) -> anyhow::Result<()> {
    let mut client = OrderServiceClient::new(urls.connect(&urls.order).await?);
    let key = key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
    let request = PlaceOrderRequest {
        idempotency_key: key.clone(),
        customer_id: customer,
        food_id: food,
        zone,
    };
    let give_up = Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(100);
    let order = loop {
        match client.place_order(request.clone()).await {
            Ok(order) => break order.into_inner(),
            Err(status) => match retry_after_error(&status, give_up) {
                ClientRetry::Busy(delay) => {
                    eprintln!("busy; retrying in {delay:?} (key {key})");
                    tokio::time::sleep(delay).await;
                }
                ClientRetry::Backoff => {
                    eprintln!(
                        "{:?}: {}; retrying (key {key})",
                        status.code(),
                        status.message()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                ClientRetry::Stop => {
                    return Err(status_error(status).context(format!("idempotency key {key}")));
                }
            },
        }
    };
    print_orders(std::slice::from_ref(&order));
    if !order.detail.is_empty() {
        println!("detail: {}", order.detail);
    }
    println!("idempotency key: {key}");
    Ok(())
}

/// Shows one order.
pub async fn get(urls: &Urls, order_id: String) -> anyhow::Result<()> {
    let mut client = OrderServiceClient::new(urls.connect(&urls.order).await?);
    let order = client
        .get_order(GetOrderRequest { order_id })
        .await
        .map_err(status_error)?
        .into_inner();
    print_orders(std::slice::from_ref(&order));
    if !order.detail.is_empty() {
        println!("detail: {}", order.detail);
    }
    Ok(())
}

/// Lists orders, newest first.
pub async fn list(urls: &Urls, state: Option<OrderState>, limit: usize) -> anyhow::Result<()> {
    let mut client = OrderAdminServiceClient::new(urls.admin(AdminApi::Order).await?);
    let orders = list_orders(&mut client, state, limit).await?;
    print_orders(&orders);
    Ok(())
}

/// Up to `limit` orders (in `state`), following the page tokens.
pub async fn list_orders(
    client: &mut OrderAdminServiceClient<AdminChannel>,
    state: Option<OrderState>,
    limit: usize,
) -> anyhow::Result<Vec<Order>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_orders(ListOrdersRequest {
                page_size: 1000,
                page_token: token,
                state: state.map_or(0, |s| s as i32),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        out.extend(page.orders);
        if page.next_page_token.is_empty() || out.len() >= limit {
            out.truncate(limit);
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Unfinished sagas with their step, attempts, last error, lease and epoch.
pub async fn stuck(urls: &Urls, limit: i32) -> anyhow::Result<()> {
    let mut client = OrderAdminServiceClient::new(urls.admin(AdminApi::Order).await?);
    let sagas = client
        .list_stuck_orders(ListStuckOrdersRequest { limit })
        .await
        .map_err(status_error)?
        .into_inner()
        .sagas;
    let mut t = table(&[
        "order",
        "step",
        "attempts",
        "last error",
        "lease owner",
        "epoch",
    ]);
    for s in &sagas {
        t.add_row(vec![
            s.order
                .as_ref()
                .map(|o| o.order_id.clone())
                .unwrap_or_default(),
            s.step.clone(),
            s.attempts.to_string(),
            s.last_error.clone(),
            s.lease_owner.clone(),
            s.epoch.to_string(),
        ]);
    }
    println!("{t}");
    println!("{} unfinished saga(s)", sagas.len());
    Ok(())
}

/// Prints one order's saga history: every write, oldest first, with the time since the
/// previous one, its calls and their codes.
pub async fn history(urls: &Urls, order_id: String) -> anyhow::Result<()> {
    let mut client = OrderAdminServiceClient::new(urls.admin(AdminApi::Order).await?);
    let events = client
        .get_order_history(GetOrderHistoryRequest {
            order_id: order_id.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .events;
    let mut t = table(&[
        "#", "time", "+ms", "epoch", "instance", "kind", "phase", "calls", "packet", "agent",
        "error",
    ]);
    let mut previous = None;
    for e in &events {
        let at =
            e.at.as_ref()
                .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
                .unwrap_or_default();
        let time = chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.format("%H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        let since = previous
            .map(|p: i64| (at - p).to_string())
            .unwrap_or_default();
        previous = Some(at);
        let phase = if e.phase_from.is_empty() || e.phase_from == e.phase_to {
            e.phase_to.clone()
        } else {
            format!("{} -> {}", e.phase_from, e.phase_to)
        };
        let calls = e
            .calls
            .iter()
            .map(|c| {
                let ms = c
                    .latency
                    .map(|d| d.seconds * 1000 + i64::from(d.nanos / 1_000_000))
                    .unwrap_or_default();
                format!("{} {} {} {ms}ms", c.side, c.call, c.code)
            })
            .collect::<Vec<_>>()
            .join("\n");
        t.add_row(vec![
            e.seq.to_string(),
            time,
            since,
            e.epoch.to_string(),
            e.instance.clone(),
            e.kind.clone(),
            phase,
            calls,
            e.packet_id.clone(),
            e.agent_id.clone(),
            e.error.clone(),
        ]);
    }
    println!("{t}");
    println!("{} event(s) for {order_id} (times UTC)", events.len());
    Ok(())
}

/// Drives one unfinished saga now.
pub async fn redrive(urls: &Urls, order_id: String) -> anyhow::Result<()> {
    let mut client = OrderAdminServiceClient::new(urls.admin(AdminApi::Order).await?);
    let order = client
        .redrive_order(RedriveOrderRequest { order_id })
        .await
        .map_err(status_error)?
        .into_inner();
    print_orders(std::slice::from_ref(&order));
    Ok(())
}

/// Gives up on one unfinished order: NOT_PLACED, both sides released.
pub async fn force_fail(urls: &Urls, order_id: String) -> anyhow::Result<()> {
    let mut client = OrderAdminServiceClient::new(urls.admin(AdminApi::Order).await?);
    let order = client
        .force_fail_order(ForceFailOrderRequest { order_id })
        .await
        .map_err(status_error)?
        .into_inner();
    print_orders(std::slice::from_ref(&order));
    Ok(())
}

/// Marks a placed order's delivery done: its agent is freed for the next order.
pub async fn complete_delivery(urls: &Urls, order_id: String) -> anyhow::Result<()> {
    let mut client = OrderAdminServiceClient::new(urls.admin(AdminApi::Order).await?);
    let done = client
        .complete_delivery(CompleteDeliveryRequest { order_id })
        .await
        .map_err(status_error)?
        .into_inner();
    if done.agent_id.is_empty() {
        println!(
            "order {}: the delivery was completed already",
            done.order_id
        );
    } else {
        println!(
            "order {}: delivered; agent {} is available again",
            done.order_id, done.agent_id
        );
    }
    Ok(())
}
