//! The six invariants of docs/design.md, checked by reading all three databases directly.

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
    /// Invariant number in docs/design.md (1 to 6).
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
pub const TITLES: [&str; 6] = [
    "no unit held by two orders",
    "placed orders hold one packet and one agent, both sides agree",
    "quiet: nothing held for unplaced orders, every order terminal",
    "units conserved per pool, counts maintained",
    "one idempotency key (per customer), one order",
    "only a placed order's delivery is completed",
];

async fn connect(url: &str, migrator: &'static sqlx::migrate::Migrator) -> anyhow::Result<Db> {
    let options = DbOptions {
        max_connections: 1,
        ..DbOptions::default()
    };
    Ok(Db::connect(url, &options, migrator).await?)
}

type UnitRow = (String, String, String, Option<String>, String);
/// A pool's maintained counts: (pool, available, reserved, assigned, retired).
type CountsRow = (String, i64, i64, i64, i64);

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
    let dup_keys: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT customer_id, idempotency_key, COUNT(*) FROM orders \
         GROUP BY customer_id, idempotency_key HAVING COUNT(*) > 1",
    )
    .fetch_all(order_db.pool())
    .await?;
    order_db.close().await;

    let phases: HashMap<&str, &str> = orders
        .iter()
        .map(|o| (o.0.as_str(), o.1.as_str()))
        .collect();
    let mut v = Vec::new();
    let mut push = |invariant: u8, detail: String| v.push(Violation { invariant, detail });
    // Orders whose delivery was completed (delivery's claims), whose agents are free again.
    let mut delivered: HashSet<String> = HashSet::new();
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
        let counts: Vec<CountsRow> =
            sqlx::query_as("SELECT pool, available, reserved, assigned, retired FROM pools")
                .fetch_all(db.pool())
                .await?;
        let completed: Vec<String> =
            sqlx::query_scalar("SELECT order_id FROM claims WHERE completed_at IS NOT NULL")
                .fetch_all(db.pool())
                .await?;
        db.close().await;
        // 6. A completion frees a unit only for an order stored PLACED (`completed_at` is
        // set only when a completion freed one; the orchestrator's certificate may complete
        // any id, which frees nothing unless that order holds an assignment).
        for order in &completed {
            match phases.get(order.as_str()) {
                Some(&"placed") => {}
                phase => push(
                    6,
                    format!("{service} completed order {order}, which is {phase:?}, not placed"),
                ),
            }
        }
        if side == 1 {
            delivered.extend(completed);
        }

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
            if side == 1 && delivered.contains(*order) {
                // Its delivery is done: the agent was freed and may serve another order.
                continue;
            }
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
        // 4. Units are conserved per pool (retired units are counted, not kept), and the
        //    maintained counts agree with the units.
        let mut counted: HashMap<&str, [i64; 3]> = HashMap::new();
        for u in &units {
            let c = counted.entry(u.1.as_str()).or_default();
            match u.2.as_str() {
                "available" => c[0] += 1,
                "reserved" => c[1] += 1,
                _ => c[2] += 1,
            }
        }
        let retired: HashMap<&str, i64> = counts.iter().map(|c| (c.0.as_str(), c.4)).collect();
        for ((svc, pool), added) in stock {
            let c = counted.get(pool.as_str()).copied().unwrap_or_default();
            let have = c.iter().sum::<i64>() + retired.get(pool.as_str()).copied().unwrap_or(0);
            if *svc == service && have != *added {
                push(
                    4,
                    format!("{service} pool {pool}: {have} units, {added} added"),
                );
            }
        }
        for (pool, available, reserved, assigned, _) in &counts {
            let c = counted.get(pool.as_str()).copied().unwrap_or_default();
            if [*available, *reserved, *assigned] != c {
                push(
                    4,
                    format!(
                        "{service} pool {pool}: counts say {available}/{reserved}/{assigned} \
                         available/reserved/assigned, the units {}/{}/{}",
                        c[0], c[1], c[2]
                    ),
                );
            }
        }
    }
    // 1 (across orders): no packet or agent on two placed orders (an agent whose delivery was
    // completed serves the next order).
    for (side, name) in [(0, "packet"), (1, "agent")] {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (order, ids) in &placed {
            if side == 1 && delivered.contains(*order) {
                continue;
            }
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
    // 5. One idempotency key of one customer, one order.
    for (customer, key, n) in dup_keys {
        push(
            5,
            format!("idempotency key {key} of {customer} has {n} orders"),
        );
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
