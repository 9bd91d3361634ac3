//! The cost model of a run: what one completed order cost in commits, WAL flushes, statements,
//! write transactions, participant calls and RPCs, from counters read before and after the
//! measured window (PostgreSQL's `pg_stat_database` and `pg_stat_wal` and, where the server
//! preloads it, `pg_stat_statements`; and the services' own metrics).

use std::collections::BTreeMap;

use order_saga_testkit::invariants::DbUrls;
use sqlx::{AnyConnection, Connection};

use crate::report::{Batching, Cost, PerOrder};

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Counters {
    /// `xact_commit` of each database (PostgreSQL only), by service.
    commits: BTreeMap<String, i64>,
    /// Statements run in each database (PostgreSQL with `pg_stat_statements` preloaded), by
    /// service; `Err` says why they were not counted.
    statements: Result<BTreeMap<String, i64>, String>,
    /// Each service's metrics scrape.
    scrapes: BTreeMap<String, String>,
    /// The server's WAL flushes so far (`pg_stat_wal.wal_sync`, PostgreSQL only).
    wal_syncs: Option<i64>,
}

/// Reads the counters: the commits of the three databases when `pg_url` is the server they
/// live on, and the scrapes of `services` (name, admin URL).
pub async fn read(
    pg_url: Option<&str>,
    urls: Option<&DbUrls>,
    token: Option<&str>,
    services: [(&str, &String); 3],
) -> Counters {
    let mut counters = Counters {
        commits: BTreeMap::new(),
        statements: Err("PostgreSQL only".into()),
        scrapes: BTreeMap::new(),
        wal_syncs: None,
    };
    if let (Some(pg_url), Some(urls)) = (pg_url, urls)
        && let Ok(mut conn) = AnyConnection::connect(pg_url).await
    {
        counters.statements = statement_counts(&mut conn, urls).await;
        counters.wal_syncs = sqlx::query_scalar("SELECT wal_sync FROM pg_stat_wal")
            .fetch_optional(&mut conn)
            .await
            .ok()
            .flatten();
        for (name, db) in databases(urls) {
            let commits: Option<i64> =
                sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                    .bind(db)
                    .fetch_optional(&mut conn)
                    .await
                    .ok()
                    .flatten();
            if let Some(c) = commits {
                counters.commits.insert(name.to_owned(), c);
            }
        }
    }
    for (name, url) in services {
        if let Some(body) = super::scrape(url, token).await {
            counters.scrapes.insert(name.to_owned(), body);
        }
    }
    counters
}

/// Statements run so far in each service's database, from `pg_stat_statements` (every call
/// of every statement, `BEGIN` and `COMMIT` included), or why they cannot be counted.
async fn statement_counts(
    conn: &mut AnyConnection,
    urls: &DbUrls,
) -> Result<BTreeMap<String, i64>, String> {
    let preloaded: String =
        sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
    if !preloaded.contains("pg_stat_statements") {
        return Err("the server does not preload pg_stat_statements".into());
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut *conn)
        .await
        .map_err(|e| format!("CREATE EXTENSION pg_stat_statements: {e}"))?;
    let mut counts = BTreeMap::new();
    for (name, db) in databases(urls) {
        let calls: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(s.calls), 0) AS BIGINT) FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
        )
        .bind(db)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
        counts.insert(name.to_owned(), calls);
    }
    Ok(counts)
}

/// Each service with the name of its database.
fn databases(urls: &DbUrls) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("order", &urls.order),
        ("store", &urls.store),
        ("delivery", &urls.delivery),
    ]
    .into_iter()
    .filter_map(|(name, url)| Some((name, database_name(url)?)))
}

/// The database name at the end of a PostgreSQL URL.
fn database_name(url: &str) -> Option<&str> {
    let (_, rest) = url.rsplit_once('/')?;
    Some(rest.split('?').next().unwrap_or(rest)).filter(|db| !db.is_empty())
}

/// Sum of the samples of `metric` in a Prometheus text scrape whose labels include every
/// `name="value"` of `labels`.
pub fn sample_sum(scrape: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, rest) = match series.split_once('{') {
                Some((name, rest)) => (name, rest),
                None => (series, ""),
            };
            (name == metric
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// Per-database differences between two readings of a counter, per order, and `all` summed.
fn per_database(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
    orders: u64,
) -> Vec<PerOrder> {
    let per = |x: f64| x / orders.max(1) as f64;
    let mut rows = Vec::new();
    let mut all = 0;
    for (name, a) in after {
        if let Some(b) = before.get(name) {
            let total = a - b;
            all += total;
            rows.push(PerOrder {
                name: name.clone(),
                total: total as f64,
                per_order: per(total as f64),
            });
        }
    }
    if !rows.is_empty() {
        rows.push(PerOrder {
            name: "all".into(),
            total: all as f64,
            per_order: per(all as f64),
        });
    }
    rows
}

/// The bucket bounds of a histogram in a scrape (`le` labels, in order of appearance).
fn bucket_bounds(scrape: &str, metric: &str) -> Vec<String> {
    let prefix = format!("{metric}_bucket{{");
    let mut bounds: Vec<String> = Vec::new();
    for line in scrape.lines().filter(|l| l.starts_with(&prefix)) {
        if let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next())
            && !bounds.iter().any(|b| b == le)
        {
            bounds.push(le.to_owned());
        }
    }
    bounds
}

/// The cost model between two readings, for `orders` completed orders.
pub fn between(before: &Counters, after: &Counters, orders: u64) -> Cost {
    let per = |x: f64| x / orders.max(1) as f64;
    let commits = per_database(&before.commits, &after.commits, orders);
    let (statements, statements_unmeasured) = match (&before.statements, &after.statements) {
        (Ok(b), Ok(a)) => (per_database(b, a, orders), None),
        (Err(why), _) | (_, Err(why)) => (Vec::new(), Some(why.clone())),
    };
    let delta = |service: &str, metric: &str, labels: &[(&str, &str)]| -> f64 {
        let of = |c: &Counters| {
            c.scrapes
                .get(service)
                .map_or(0.0, |s| sample_sum(s, metric, labels))
        };
        of(after) - of(before)
    };
    let mut batches = Vec::new();
    let queues = [
        (
            "order",
            "saga_write_batch_size",
            ("queue", "orders"),
            "order database writes",
        ),
        (
            "store",
            "saga_write_batch_size",
            ("queue", "participant"),
            "store database writes",
        ),
        (
            "delivery",
            "saga_write_batch_size",
            ("queue", "participant"),
            "delivery database writes",
        ),
        (
            "order",
            "saga_call_batch_size",
            ("side", "store"),
            "calls to the store",
        ),
        (
            "order",
            "saga_call_batch_size",
            ("side", "delivery"),
            "calls to delivery",
        ),
    ];
    for (service, metric, label, what) in queues {
        let count = delta(service, &format!("{metric}_count"), &[label]);
        let items = delta(service, &format!("{metric}_sum"), &[label]);
        let bounds = after
            .scrapes
            .get(service)
            .map(|s| bucket_bounds(s, metric))
            .unwrap_or_default();
        let mut histogram = Vec::new();
        let mut below = 0.0;
        for le in bounds {
            let cumulative = delta(service, &format!("{metric}_bucket"), &[label, ("le", &le)]);
            histogram.push((le, (cumulative - below).max(0.0) as u64));
            below = cumulative;
        }
        batches.push(Batching {
            what: what.to_owned(),
            batches_per_order: per(count),
            items_per_order: per(items),
            mean_batch: if count > 0.0 { items / count } else { 0.0 },
            histogram,
        });
    }
    let calls = delta("order", "saga_participant_calls_total", &[]);
    let wal_flushes_per_order = match (before.wal_syncs, after.wal_syncs) {
        (Some(b), Some(a)) => Some(per((a - b) as f64)),
        _ => None,
    };
    Cost {
        commits,
        wal_flushes_per_order,
        statements,
        statements_unmeasured,
        batches,
        participant_calls_per_order: per(calls),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_name_and_labels() {
        let scrape = "# TYPE x counter\n\
            saga_write_batch_size_count{service=\"order\",queue=\"orders\"} 10\n\
            saga_write_batch_size_count{service=\"order\",queue=\"other\"} 5\n\
            saga_write_batch_size_sum{service=\"order\",queue=\"orders\"} 40\n\
            saga_write_batch_size_bucket{service=\"order\",queue=\"orders\",le=\"1\"} 2\n\
            saga_write_batch_size_bucket{service=\"order\",queue=\"orders\",le=\"+Inf\"} 10\n\
            plain 3\n";
        let c = |m| sample_sum(scrape, m, &[("queue", "orders")]);
        assert_eq!(c("saga_write_batch_size_count"), 10.0);
        assert_eq!(c("saga_write_batch_size_sum"), 40.0);
        assert_eq!(sample_sum(scrape, "saga_write_batch_size_count", &[]), 15.0);
        assert_eq!(sample_sum(scrape, "plain", &[]), 3.0);
        assert_eq!(
            bucket_bounds(scrape, "saga_write_batch_size"),
            ["1", "+Inf"]
        );
        assert_eq!(
            database_name("postgres://u@h:5432/bench_order?x=1"),
            Some("bench_order")
        );
    }

    #[test]
    fn the_cost_is_the_difference_per_order() {
        let reading = |commits: i64, count: f64, sum: f64| Counters {
            commits: [("order".to_owned(), commits)].into(),
            statements: Ok([("order".to_owned(), commits * 10)].into()),
            scrapes: [(
                "order".to_owned(),
                format!(
                    "saga_write_batch_size_count{{queue=\"orders\"}} {count}\n\
                     saga_write_batch_size_sum{{queue=\"orders\"}} {sum}\n"
                ),
            )]
            .into(),
            wal_syncs: Some(commits * 2),
        };
        let cost = between(&reading(100, 5.0, 10.0), &reading(150, 15.0, 210.0), 100);
        assert_eq!(cost.commits[0].per_order, 0.5);
        assert_eq!(cost.wal_flushes_per_order, Some(1.0));
        assert_eq!(cost.commits.last().map(|c| c.name.as_str()), Some("all"));
        assert_eq!(cost.statements[0].per_order, 5.0);
        assert_eq!(cost.statements_unmeasured, None);
        let unpreloaded = Counters {
            statements: Err("not preloaded".into()),
            ..reading(150, 15.0, 210.0)
        };
        let cost = between(&reading(100, 5.0, 10.0), &unpreloaded, 100);
        assert!(cost.statements.is_empty());
        assert_eq!(cost.statements_unmeasured.as_deref(), Some("not preloaded"));
        let orders = &cost.batches[0];
        assert_eq!(orders.batches_per_order, 0.1);
        assert_eq!(orders.items_per_order, 2.0);
        assert_eq!(orders.mean_batch, 20.0);
    }
}
