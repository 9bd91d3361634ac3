//! `sagactl verify`: the invariants as far as the public APIs show them.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::bail;
use order_saga_proto::{
    delivery::v1::delivery_service_client::DeliveryServiceClient,
    order::v1::{Order, OrderState, order_admin_service_client::OrderAdminServiceClient},
    store::v1::store_service_client::StoreServiceClient,
};

use crate::{
    catalogue::{list_foods, list_zones},
    client::{AdminApi, Urls},
    orders::list_orders,
};

/// Checks invariants 1-3 of docs/design.md as far as the public APIs show them.
pub async fn verify(urls: &Urls, wait: Duration) -> anyhow::Result<()> {
    let mut orders_client = OrderAdminServiceClient::new(urls.admin(AdminApi::Order).await?);
    let mut store = StoreServiceClient::new(urls.connect(&urls.store).await?);
    let mut delivery = DeliveryServiceClient::new(urls.connect(&urls.delivery).await?);
    let give_up = Instant::now() + wait;
    // Wait for quiet: no pending order and no live reservation.
    let (orders, foods, zones) = loop {
        let orders = list_orders(&mut orders_client, None, usize::MAX).await?;
        let foods = list_foods(&mut store).await?;
        let zones = list_zones(&mut delivery).await?;
        let pending = orders.iter().any(|o| o.state == OrderState::Pending as i32);
        let reserved = foods.iter().any(|f| f.reserved > 0) || zones.iter().any(|z| z.reserved > 0);
        if (!pending && !reserved) || Instant::now() >= give_up {
            break (orders, foods, zones);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let placed: Vec<&Order> = orders
        .iter()
        .filter(|o| o.state == OrderState::Placed as i32)
        .collect();
    let mut checks: Vec<(&str, bool, String)> = Vec::new();
    let pending = orders
        .iter()
        .filter(|o| o.state == OrderState::Pending as i32)
        .count();
    checks.push((
        "every order is terminal",
        pending == 0,
        format!("{pending} pending of {}", orders.len()),
    ));
    let incomplete = placed
        .iter()
        .filter(|o| o.packet_id.is_empty() || o.agent_id.is_empty())
        .count();
    checks.push((
        "placed orders have a packet and an agent",
        incomplete == 0,
        format!("{incomplete} incomplete"),
    ));
    let distinct =
        |f: fn(&Order) -> &str| placed.iter().map(|o| f(o)).collect::<HashSet<_>>().len();
    let packets = distinct(|o| &o.packet_id);
    checks.push((
        "no packet on two placed orders",
        packets == placed.len(),
        format!("{packets} distinct for {} placed", placed.len()),
    ));
    let agents = distinct(|o| &o.agent_id);
    checks.push((
        "no agent on two placed orders",
        agents == placed.len(),
        format!("{agents} distinct for {} placed", placed.len()),
    ));
    let reserved: i64 = foods.iter().map(|f| f.reserved).sum::<i64>()
        + zones.iter().map(|z| z.reserved).sum::<i64>();
    checks.push((
        "nothing left reserved",
        reserved == 0,
        format!("{reserved} unit(s) reserved"),
    ));
    let mut per_food: HashMap<&str, i64> = HashMap::new();
    for o in &placed {
        *per_food.entry(o.food_id.as_str()).or_default() += 1;
    }
    let mismatched: Vec<String> = foods
        .iter()
        .filter(|f| f.assigned != per_food.get(f.food_id.as_str()).copied().unwrap_or(0))
        .map(|f| {
            format!(
                "{}: {} assigned vs {} placed",
                f.food_id,
                f.assigned,
                per_food.get(f.food_id.as_str()).copied().unwrap_or(0)
            )
        })
        .collect();
    let detail = if mismatched.is_empty() {
        format!("{} food(s) checked", foods.len())
    } else {
        mismatched.join("; ")
    };
    checks.push((
        "assigned packets match placed orders",
        mismatched.is_empty(),
        detail,
    ));

    let mut failed = 0;
    for (name, ok, detail) in &checks {
        println!("{} {name}: {detail}", if *ok { "PASS" } else { "FAIL" });
        failed += usize::from(!ok);
    }
    println!(
        "orders={} placed={} not_placed={}",
        orders.len(),
        placed.len(),
        orders.len() - placed.len() - pending
    );
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}
