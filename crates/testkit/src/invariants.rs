//! The five invariants of docs/design.md, checked by reading all three databases directly.

use std::collections::{HashMap, HashSet};

use order_saga_platform::db::{Db, DbOptions};

/// Database URLs of a cluster.
#[derive(Debug, Clone)]
pub struct DbUrls {
    /// Order database.
    pub order: String,
    /// Store database.
    pub store: String,
    /// Delivery database.
    pub delivery: String,
}

/// Units added per pool: `("store" | "delivery", pool) -> count`.
pub type Stock = HashMap<(&'static str, String), i64>;

/// One broken invariant and the rows that break it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Invariant number in docs/design.md (1 to 5).
    pub invariant: u8,
    /// The offending rows, in words.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inv{}: {}", self.invariant, self.detail)
    }
}

/// Short titles of the invariants, for reports.
pub const TITLES: [&str; 5] = [
    "no unit held by two orders",
    "placed orders hold one packet and one agent, both sides agree",
    "quiet: nothing held for unplaced orders, every order terminal",
    "units conserved per pool",
    "one idempotency key, one order",
];

async fn connect(url: &str, migrator: &'static sqlx::migrate::Migrator) -> anyhow::Result<Db> {
    let options = DbOptions {
        max_connections: 1,
        ..DbOptions::default()
    };
    Ok(Db::connect(url, &options, migrator).await?)
}

type UnitRow = (String, String, String, Option<String>, String);

/// Every violated invariant. Invariants 1, 2, 4 and 5 hold at every instant; with `quiet`
/// (no requests, recovery and sweeper done, TTL passed) invariant 3 is checked too.
pub async fn violations(
    urls: &DbUrls,
    stock: &Stock,
    quiet: bool,
) -> anyhow::Result<Vec<Violation>> {
    let order_db = connect(&urls.order, &order_service::MIGRATOR).await?;
    let orders: Vec<(String, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT order_id, phase, packet_id, agent_id FROM orders")
            .fetch_all(order_db.pool())
            .await?;
    let dup_keys: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, COUNT(*) FROM orders GROUP BY idempotency_key HAVING COUNT(*) > 1",
    )
    .fetch_all(order_db.pool())
    .await?;
    order_db.close().await;

    let mut v = Vec::new();
    let mut push = |invariant: u8, detail: String| v.push(Violation { invariant, detail });
    let placed: HashMap<&str, (&str, &str)> = orders
        .iter()
        .filter(|o| o.1 == "placed")
        .map(|o| {
            (
                o.0.as_str(),
                (o.2.as_deref().unwrap_or(""), o.3.as_deref().unwrap_or("")),
            )
        })
        .collect();

    for (service, url, side) in [("store", &urls.store, 0), ("delivery", &urls.delivery, 1)] {
        let db = connect(url, &order_saga_reservation::MIGRATOR).await?;
        let sql = db.sql(
            "SELECT unit_id, pool, status, order_id, \
               CASE WHEN status = 'reserved' AND expires_at <= {now} THEN 'expired' ELSE 'live' END \
             FROM units",
        );
        let units: Vec<UnitRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(db.pool())
            .await?;
        db.close().await;

        // 1. A unit has one holder by schema; an order holds at most one unit per side.
        let mut holders = HashSet::new();
        for u in &units {
            if let Some(order) = &u.3
                && !holders.insert(order.clone())
            {
                push(1, format!("order {order} holds two {service} units"));
            }
        }
        // 2. Every placed order's unit is assigned to it on this side.
        let by_id: HashMap<&str, &UnitRow> = units.iter().map(|u| (u.0.as_str(), u)).collect();
        let held: HashMap<&str, &UnitRow> = units
            .iter()
            .filter_map(|u| u.3.as_deref().map(|o| (o, u)))
            .collect();
        for (order, ids) in &placed {
            let unit = if side == 0 { ids.0 } else { ids.1 };
            match by_id.get(unit) {
                Some(u) if u.2 == "assigned" && u.3.as_deref() == Some(order) => {}
                Some(u) => push(
                    2,
                    format!(
                        "placed order {order}: {service} unit {unit} is {} for {:?} (the \
                         order holds {:?})",
                        u.2,
                        u.3,
                        held.get(order).map(|h| (&h.0, &h.2))
                    ),
                ),
                None => push(
                    2,
                    format!("placed order {order}: no {service} unit {unit:?}"),
                ),
            }
        }
        // 3. Once quiet, nothing is held for an order that is not placed.
        if quiet {
            for u in &units {
                if let Some(order) = &u.3 {
                    let live_reservation = u.2 == "reserved" && u.4 == "live";
                    if !placed.contains_key(order.as_str())
                        && (u.2 == "assigned" || live_reservation)
                    {
                        push(
                            3,
                            format!(
                                "{service} unit {} is {} for unplaced order {order}",
                                u.0, u.2
                            ),
                        );
                    }
                }
            }
        }
        // 4. Units are conserved per pool.
        let mut counted: HashMap<&str, i64> = HashMap::new();
        for u in &units {
            *counted.entry(u.1.as_str()).or_default() += 1;
        }
        for ((svc, pool), added) in stock {
            let have = counted.get(pool.as_str()).copied().unwrap_or(0);
            if *svc == service && have != *added {
                push(
                    4,
                    format!("{service} pool {pool}: {have} units, {added} added"),
                );
            }
        }
    }
    // 1 (across orders): no packet or agent on two placed orders.
    for (side, name) in [(0, "packet"), (1, "agent")] {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (order, ids) in &placed {
            let unit = if side == 0 { ids.0 } else { ids.1 };
            if let Some(other) = seen.insert(unit, order) {
                push(
                    1,
                    format!("{name} {unit} is on placed orders {other} and {order}"),
                );
            }
        }
    }
    if quiet {
        for o in &orders {
            if !matches!(o.1.as_str(), "placed" | "not_placed") {
                push(3, format!("order {} is still {}", o.0, o.1));
            }
        }
    }
    // 5. One idempotency key, one order.
    for (key, n) in dup_keys {
        push(5, format!("idempotency key {key} has {n} orders"));
    }
    Ok(v)
}

/// Polls until no invariant is violated (with `quiet`), or returns the last violations.
pub async fn wait_until_holds(
    urls: &DbUrls,
    stock: &Stock,
    within: std::time::Duration,
) -> anyhow::Result<Vec<Violation>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = violations(urls, stock, true).await?;
        if v.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(v);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
