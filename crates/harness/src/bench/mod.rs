//! `make bench`: places orders against a whole cluster and reports throughput, latency (end to
//! end and per saga step), the machine's claim ceiling measured in the same run, CPU and memory
//! of each service, the durability settings in force, and the invariants afterwards.
//!
//! Results go to `bench-results/<timestamp>/` as `report.json` and a self-contained
//! `report.html` (see [`crate::report`]).

pub mod ceiling;
pub mod cluster;
pub mod cost;
pub mod load;
pub mod usage;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use hdrhistogram::{Histogram, serialization::Deserializer};
use indicatif::{ProgressBar, ProgressStyle};
use order_saga_proto::{
    delivery::v1::{AddAgentsRequest, delivery_admin_service_client::DeliveryAdminServiceClient},
    order::v1::{GetSagaStatsRequest, order_admin_service_client::OrderAdminServiceClient},
    store::v1::{
        CreateFoodRequest, RestockRequest, store_admin_service_client::StoreAdminServiceClient,
    },
};
use order_saga_saga::BearerToken;
use order_saga_testkit::{
    invariants::{self, DbUrls, Stock},
    procs::batches,
};
use sqlx::{AnyConnection, Connection, Row};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::report::{
    Ceiling, Decay, Interval, Invariants, Percentiles, Report, RunConfig, ServiceUsage, Setting,
    StepLatency, Totals,
};
use cluster::{Backend, BenchCluster};
use load::{Orders, Recorder, Workload, new_histogram};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Database of the cluster the benchmark starts.
    #[arg(long, value_enum, default_value = "postgres")]
    pub backend: Backend,
    /// Which orders.
    #[arg(long, value_enum, default_value = "uniform")]
    pub workload: Workload,
    /// Foods of the uniform and scarce workloads.
    #[arg(long, default_value_t = 16)]
    pub foods: u32,
    /// Zones of the uniform and scarce workloads.
    #[arg(long, default_value_t = 16)]
    pub zones: u32,
    /// Closed loop: this many clients, each sending its next order when the last is answered.
    #[arg(long, default_value_t = 32)]
    pub clients: u32,
    /// Open loop instead: offer this many orders per second whatever the answers.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured time (after the warm-up), e.g. 30s or 5m.
    #[arg(long, default_value = "30s", value_parser = order_saga_platform::parse_duration)]
    pub duration: Duration,
    /// Load before measuring starts.
    #[arg(long, default_value = "5s", value_parser = order_saga_platform::parse_duration)]
    pub warmup: Duration,
    /// Orders per second the stock is sized for (uniform and hot: plentiful for this rate).
    #[arg(long, default_value_t = 1000.0)]
    pub expect_rate: f64,
    /// How long the ceiling's claim loop runs (0s: skip it).
    #[arg(long, default_value = "10s", value_parser = order_saga_platform::parse_duration)]
    pub ceiling_duration: Duration,
    /// Directory of the release binaries.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Where results go (a `<timestamp>` directory is created inside).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Target a running cluster instead: its order service's public URL (the admin listeners
    /// with --order-admin-url, --store-admin-url, --delivery-admin-url; no CPU figures or
    /// database checks then).
    #[arg(long)]
    pub target: Option<String>,
    /// The order service's admin listener in a running cluster (with --target).
    #[arg(long, default_value = "http://127.0.0.1:50251")]
    pub order_admin_url: String,
    /// The store's admin listener in a running cluster (with --target).
    #[arg(long, default_value = "http://127.0.0.1:50252")]
    pub store_admin_url: String,
    /// Delivery's admin listener in a running cluster (with --target).
    #[arg(long, default_value = "http://127.0.0.1:50253")]
    pub delivery_admin_url: String,
    /// The operator token of the running cluster (with --target; the admin API refuses the
    /// bench's stocking and statistics calls without it).
    #[arg(long, env = "SAGACTL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Render report.html to report.png with headless Chromium.
    #[arg(long)]
    pub screenshot: bool,
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Units per pool for the run.
fn stock_per_pool(args: &BenchArgs, pools: usize) -> i64 {
    let expected =
        args.rate.unwrap_or(args.expect_rate) * (args.duration + args.warmup).as_secs_f64() * 1.3;
    let per_pool = (expected / pools.max(1) as f64).ceil() as i64;
    match args.workload {
        // A third of what the run would need: most orders end NOT_PLACED.
        Workload::Scarce => (per_pool / 3).max(1),
        Workload::Uniform | Workload::Hot => per_pool.max(100),
    }
}

/// Creates the foods and zones with `per_pool` units each (the fuzzer seeds its cluster so too).
pub(crate) async fn stock(
    admin: &BearerToken,
    store_url: &str,
    delivery_url: &str,
    foods: &[String],
    zones: &[String],
    per_pool: i64,
) -> anyhow::Result<Stock> {
    let mut store =
        StoreAdminServiceClient::with_interceptor(channel(store_url).await?, admin.clone());
    let mut delivery =
        DeliveryAdminServiceClient::with_interceptor(channel(delivery_url).await?, admin.clone());
    let mut stock = Stock::new();
    for food in foods {
        let created = store
            .create_food(CreateFoodRequest {
                food_id: food.clone(),
                name: food.clone(),
            })
            .await;
        if let Err(e) = created
            && e.code() != tonic::Code::AlreadyExists
        {
            return Err(anyhow::anyhow!("create food {food}: {e}"));
        }
        for count in batches(per_pool) {
            store
                .restock(RestockRequest {
                    food_id: food.clone(),
                    count,
                })
                .await?;
        }
        stock.insert(("store", food.clone()), per_pool);
    }
    for zone in zones {
        for count in batches(per_pool) {
            delivery
                .add_agents(AddAgentsRequest {
                    zone: zone.clone(),
                    count,
                })
                .await?;
        }
        stock.insert(("delivery", zone.clone()), per_pool);
    }
    Ok(stock)
}

/// Every step's histogram on the order service now.
async fn step_histograms(
    admin: &BearerToken,
    order_url: &str,
) -> anyhow::Result<Vec<(String, Histogram<u64>)>> {
    let mut admin =
        OrderAdminServiceClient::with_interceptor(channel(order_url).await?, admin.clone());
    let steps = admin
        .get_saga_stats(GetSagaStatsRequest {})
        .await?
        .into_inner()
        .steps;
    let mut out = Vec::new();
    for s in steps {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut s.histogram.as_slice())
            .map_err(|e| anyhow::anyhow!("step {} histogram: {e:?}", s.step))?;
        out.push((s.step, h));
    }
    Ok(out)
}

/// The durability settings in force, and whether the server vacuums and analyzes by itself
/// (a server without autovacuum lets dead rows and stale statistics pile up as a run goes on).
async fn durability(backend: Backend, pg_url: Option<&str>) -> Vec<Setting> {
    let setting = |name: &str, value: String| Setting {
        name: name.into(),
        value,
    };
    match backend {
        Backend::Sqlite => vec![
            setting("sqlite journal_mode", "WAL".into()),
            setting(
                "sqlite synchronous",
                order_saga_platform::db::SQLITE_SYNCHRONOUS.into(),
            ),
        ],
        Backend::Postgres => {
            let mut out = Vec::new();
            let Some(url) = pg_url else { return out };
            let Ok(mut c) = AnyConnection::connect(url).await else {
                return out;
            };
            for name in [
                "synchronous_commit",
                "fsync",
                "full_page_writes",
                "wal_sync_method",
                "autovacuum",
            ] {
                let value = sqlx::query(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                    .fetch_one(&mut c)
                    .await
                    .ok()
                    .and_then(|r| r.try_get::<String, _>(0).ok())
                    .unwrap_or_else(|| "?".into());
                out.push(setting(&format!("postgres {name}"), value));
            }
            out
        }
    }
}

fn durable(settings: &[Setting]) -> bool {
    settings.iter().all(|s| {
        !matches!(
            (s.name.as_str(), s.value.as_str()),
            ("postgres synchronous_commit", "off")
                | ("postgres fsync", "off")
                | ("sqlite synchronous", "OFF" | "NORMAL")
        )
    })
}

/// Runs one benchmark and writes its report; returns the report.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    sqlx::any::install_default_drivers();
    let started_at = chrono::Utc::now();
    let dir = args
        .out
        .join(started_at.format("%Y-%m-%dT%H-%M-%SZ").to_string());
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let pg_url = std::env::var("DATABASE_URL").ok();
    let own = args.target.is_none();
    if own && args.backend == Backend::Postgres && pg_url.is_none() {
        anyhow::bail!("--backend postgres needs DATABASE_URL (make bench finds or starts one)");
    }

    // The ceiling first, while no service holds database connections.
    let ceiling = if args.ceiling_duration.is_zero() || !own {
        None
    } else {
        eprintln!(
            "bench: measuring the claim ceiling for {:?}",
            args.ceiling_duration
        );
        Some(match args.backend {
            Backend::Postgres => {
                let url = pg_url.as_deref().unwrap_or_default();
                ceiling::postgres(url, args.clients, args.ceiling_duration, &dir).await?
            }
            Backend::Sqlite => ceiling::sqlite(&dir, args.ceiling_duration).await?,
        })
    };

    let cluster = if own {
        eprintln!(
            "bench: starting store, delivery and order from {}",
            args.bin_dir.display()
        );
        Some(BenchCluster::start(&args.bin_dir, args.backend, pg_url.as_deref(), &dir).await?)
    } else {
        None
    };
    let (order_url, order_admin_url, store_url, delivery_url) = match &cluster {
        Some(c) => (
            c.url("order"),
            c.admin_url("order"),
            c.admin_url("store"),
            c.admin_url("delivery"),
        ),
        None => (
            args.target.clone().unwrap_or_default(),
            args.order_admin_url.clone(),
            args.store_admin_url.clone(),
            args.delivery_admin_url.clone(),
        ),
    };
    let (foods, zones) = args.workload.pools(args.foods, args.zones);
    let per_pool = stock_per_pool(args, foods.len().min(zones.len()));
    eprintln!(
        "bench: stocking {} food(s) and {} zone(s) with {per_pool} units each",
        foods.len(),
        zones.len()
    );
    let admin_token = match &cluster {
        Some(c) => Some(c.admin_token.clone()),
        None => args.admin_token.clone(),
    };
    let admin = BearerToken::new(admin_token.as_deref()).map_err(anyhow::Error::msg)?;
    let stock = stock(&admin, &store_url, &delivery_url, &foods, &zones, per_pool).await?;

    let connections = (args.clients as usize).clamp(1, 16);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(channel(&order_url).await?);
    }
    let now = Instant::now();
    let measure_from = now + args.warmup;
    let measure_until = measure_from + args.duration;
    let recorder = Arc::new(Recorder::new(measure_from, measure_until));
    let orders = Orders::new(foods.clone(), zones.clone());

    let load = {
        let (channels, recorder, orders) = (channels.clone(), recorder.clone(), orders.clone());
        let (rate, clients) = (args.rate, args.clients as usize);
        tokio::spawn(async move {
            match rate {
                Some(rate) => {
                    load::open_loop(&channels, rate, orders, recorder, measure_until).await
                }
                None => {
                    load::closed_loop(&channels, clients, orders, recorder, measure_until).await
                }
            }
        })
    };

    // Warm-up, then the baseline of CPU and step histograms.
    tokio::time::sleep_until(measure_from).await;
    let pids: Vec<(String, Option<u32>)> = cluster
        .as_ref()
        .map(|c| {
            c.services
                .iter()
                .map(|s| (s.name.to_owned(), s.pid()))
                .collect()
        })
        .unwrap_or_default();
    let cpu = |pids: &[(String, Option<u32>)]| -> Vec<f64> {
        pids.iter()
            .map(|(_, pid)| pid.and_then(usage::cpu_seconds).unwrap_or(0.0))
            .collect()
    };
    let cpu_before = cpu(&pids);
    let pg_cpu_before = usage::cpu_seconds_of_all("postgres");
    let me_before = usage::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let steps_before = step_histograms(&admin, &order_admin_url).await?;
    let scraped = [
        ("order", &order_admin_url),
        // The stocking URLs are the participants' admin listeners.
        ("store", &store_url),
        ("delivery", &delivery_url),
    ];
    let db_urls = cluster.as_ref().map(|c| &c.urls);
    let pg_server = pg_url
        .as_deref()
        .filter(|_| args.backend == Backend::Postgres);
    let counters_before = cost::read(pg_server, db_urls, admin_token.as_deref(), scraped).await;

    let bar = ProgressBar::new(args.duration.as_secs());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while Instant::now() < measure_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seconds = recorder.seconds();
        let i = recorder.current_second().min(seconds.len());
        if let Some(last) = i.checked_sub(1).and_then(|i| seconds.get(i)) {
            bar.set_message(format!(
                "{} placed/s, {} not placed/s, p99 {:.1} ms, busy {}",
                last.placed,
                last.not_placed,
                last.latency.value_at_quantile(0.99) as f64 / 1000.0,
                last.busy
            ));
        }
        bar.set_position(i as u64);
    }
    bar.finish();
    let cpu_after = cpu(&pids);
    let pg_cpu = usage::cpu_seconds_of_all("postgres") - pg_cpu_before;
    let me_cpu = usage::cpu_seconds(std::process::id()).unwrap_or(0.0) - me_before;
    let steps_after = step_histograms(&admin, &order_admin_url).await?;
    let counters_after = cost::read(pg_server, db_urls, admin_token.as_deref(), scraped).await;
    eprintln!("bench: waiting for the orders in flight");
    load.await?;
    save_scrapes(&dir, admin_token.as_deref(), scraped).await;

    // Figures.
    let seconds = recorder.seconds();
    let mut total = new_histogram();
    let (mut placed, mut not_placed, mut busy, mut errors) = (0, 0, 0, 0);
    let mut timeline = Vec::new();
    for (i, s) in seconds
        .iter()
        .enumerate()
        .take(args.duration.as_secs() as usize)
    {
        total.add(&s.latency).ok();
        placed += s.placed;
        not_placed += s.not_placed;
        busy += s.busy;
        errors += s.errors;
        timeline.push(Interval {
            t_s: (i + 1) as f64,
            placed: s.placed,
            not_placed: s.not_placed,
            busy: s.busy,
            p50_ms: s.latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: s.latency.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: s.latency.max() as f64 / 1000.0,
        });
    }
    let secs = args.duration.as_secs_f64();
    let completed = placed + not_placed;
    let cost = cost::between(&counters_before, &counters_after, completed);
    let mut steps = Vec::new();
    for (name, after) in &steps_after {
        let mut h = after.clone();
        if let Some((_, before)) = steps_before.iter().find(|(n, _)| n == name) {
            h.subtract(before).ok();
        }
        steps.push(StepLatency {
            name: name.clone(),
            latency: Percentiles::from_histogram(&h),
        });
    }
    let mut services: Vec<ServiceUsage> = pids
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((name, pid), (before, after))| ServiceUsage {
            name: name.clone(),
            cpu_s: after - before,
            cpu_ms_per_order: (after - before) * 1000.0 / completed.max(1) as f64,
            peak_rss_mib: pid.and_then(usage::peak_rss_mib).unwrap_or(0.0),
        })
        .collect();
    if own && args.backend == Backend::Postgres {
        services.push(ServiceUsage {
            name: "postgres (all backends)".into(),
            cpu_s: pg_cpu,
            cpu_ms_per_order: pg_cpu * 1000.0 / completed.max(1) as f64,
            peak_rss_mib: 0.0,
        });
    }
    services.push(ServiceUsage {
        name: "load generator".into(),
        cpu_s: me_cpu,
        cpu_ms_per_order: me_cpu * 1000.0 / completed.max(1) as f64,
        peak_rss_mib: usage::peak_rss_mib(std::process::id()).unwrap_or(0.0),
    });
    let per_s = |n: u64| n as f64 / secs.max(1e-9);
    let decay = (timeline.len() >= 120).then(|| {
        let minute = |slice: &[Interval]| {
            slice.iter().map(|i| i.placed + i.not_placed).sum::<u64>() as f64 / 60.0
        };
        let first = minute(&timeline[..60]);
        let last = minute(&timeline[timeline.len() - 60..]);
        Decay {
            first_minute_per_s: first,
            last_minute_per_s: last,
            ratio: last / first.max(1e-9),
        }
    });

    // Invariants, once the cluster is quiet.
    let invariants = match &cluster {
        Some(c) => {
            eprintln!("bench: checking the invariants");
            let v = check_invariants(&c.urls, &stock).await?;
            Invariants {
                checked: true,
                violations: v,
            }
        }
        None => Invariants {
            checked: false,
            violations: Vec::new(),
        },
    };
    let durability = if own {
        durability(args.backend, pg_url.as_deref()).await
    } else {
        Vec::new()
    };
    let target = if own {
        format!(
            "own cluster (release binaries from {})",
            args.bin_dir.display()
        )
    } else {
        order_url.clone()
    };
    let report = Report {
        started_at: started_at.to_rfc3339(),
        config: RunConfig {
            // A running cluster's backend is not known from outside.
            backend: if own {
                args.backend.as_str().into()
            } else {
                "as configured (running cluster)".into()
            },
            workload: args.workload.as_str().into(),
            foods: foods.len() as u32,
            zones: zones.len() as u32,
            mode: if args.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            clients: args.clients,
            rate: args.rate,
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: secs,
            target,
        },
        durability,
        totals: Totals {
            placed,
            not_placed,
            busy_retries: busy,
            errors,
            orders_per_s: per_s(completed),
            placed_per_s: per_s(placed),
        },
        latency: Percentiles::from_histogram(&total),
        steps,
        timeline,
        ceiling: ceiling.map(|c| Ceiling {
            ratio: per_s(completed) / c.claims_per_s.max(1e-9),
            method: c.method,
            clients: c.clients,
            claims_per_s: c.claims_per_s,
            batched_ratio: per_s(completed) / c.batched_claims_per_s.max(1e-9),
            batched_claims_per_s: c.batched_claims_per_s,
        }),
        services,
        decay,
        invariants,
        cost: Some(cost),
    };
    if let Some(c) = cluster {
        let urls = c.urls.clone();
        c.stop().await;
        if args.backend == Backend::Postgres {
            drop_databases(pg_url.as_deref().unwrap_or_default(), &urls).await;
        }
    }
    if !durable(&report.durability) {
        eprintln!("bench: WARNING: the database is not configured durably; see the report");
    }
    if report
        .durability
        .iter()
        .any(|s| s.name == "postgres autovacuum" && s.value == "off")
    {
        eprintln!(
            "bench: note: the server runs without autovacuum: dead rows and statistics are \
             never cleaned up during the run, as they would be in production"
        );
    }
    if let Ok(first) = recorder.first_error.lock()
        && let Some(e) = first.as_ref()
    {
        eprintln!("bench: first error: {e}");
    }
    let html = crate::report::write(&dir, &report)?;
    crate::report::print_summary(&report);
    println!("report: {}", html.display());
    if args.screenshot {
        let png = dir.join("report.png");
        crate::report::screenshot(&html, &png)?;
        println!("screenshot: {}", png.display());
    }
    Ok(report)
}

/// One service's metrics scrape from its admin listener at `url` (`http://host:port`), or
/// `None` (reported) when it cannot be had.
pub(crate) async fn scrape(url: &str, token: Option<&str>) -> Option<String> {
    let bearer = format!("Bearer {}", token.unwrap_or_default());
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse::<std::net::SocketAddr>();
    let Ok(addr) = addr else {
        eprintln!("bench: no metrics from {url}: not http://host:port");
        return None;
    };
    let answer = order_saga_testkit::http::http(
        addr,
        "GET",
        "/metrics",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    if answer.status != 200 {
        eprintln!("bench: metrics of {url}: HTTP {}", answer.status);
        return None;
    }
    Some(answer.body)
}

/// Saves each service's metrics scrape after the run as `metrics-<service>.txt` beside the
/// report, and prints the order outcomes it counted. A scrape that fails is reported, not fatal:
/// the figures come from the bench's own measurements.
async fn save_scrapes(dir: &Path, token: Option<&str>, services: [(&str, &String); 3]) {
    for (name, url) in services {
        let Some(body) = scrape(url, token).await else {
            continue;
        };
        let path = dir.join(format!("metrics-{name}.txt"));
        if let Err(e) = std::fs::write(&path, &body) {
            eprintln!("bench: cannot write {}: {e}", path.display());
        }
        if name == "order" {
            for line in body.lines().filter(|l| l.starts_with("saga_orders_total")) {
                println!("metrics: {line}");
            }
        }
    }
}

async fn check_invariants(urls: &DbUrls, stock: &Stock) -> anyhow::Result<Vec<String>> {
    // Unplaced orders release at once; anything still reserved expires within the TTL (30 s).
    let v = invariants::wait_until_holds(urls, stock, Duration::from_secs(60)).await?;
    Ok(v.iter().map(ToString::to_string).collect())
}

/// Drops the run's PostgreSQL databases.
async fn drop_databases(pg_url: &str, urls: &DbUrls) {
    let Ok(mut admin) = AnyConnection::connect(pg_url).await else {
        return;
    };
    for url in [&urls.order, &urls.store, &urls.delivery] {
        if let Some((_, db)) = url.rsplit_once('/') {
            let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut admin)
                .await;
        }
    }
}
