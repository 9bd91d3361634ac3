//! The operator console in a real browser: headless Chromium, driven over WebDriver, logs in,
//! finds an order, opens its timeline, force-fails a stuck saga and bulk-redrives two more,
//! saving a screenshot of each page under `target/console-screenshots/`. Then the refusals,
//! over plain HTTP: no cookie, a viewer's action, a cross-site post.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use order_saga_e2e::{
    Cluster, ClusterOptions, OPERATOR_TOKEN, VIEWER_TOKEN, http, webdriver::Browser,
};
use order_saga_platform::testing::TestBackend;
use order_saga_proto::order::v1::{GetOrderRequest, OrderState};

const SETTLE: Duration = Duration::from_secs(30);
/// A lease that does not run out during the test: these sagas stay stuck until an operator acts.
const LEASE: Duration = Duration::from_secs(3600);

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots")
}

/// Milliseconds since the Unix epoch, the orders table's time unit.
fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Plants a saga whose driver died mid-reserve while its lease is still held.
async fn stuck(cluster: &Cluster, id: &str) {
    cluster
        .insert_abandoned_order(
            id,
            "pizza",
            "north",
            "reserving",
            ("unknown", "unknown"),
            (None, None),
            unix_ms(SystemTime::now() + LEASE),
        )
        .await;
}

async fn state_of(cluster: &Cluster, id: &str) -> i32 {
    cluster
        .orders()
        .await
        .get_order(GetOrderRequest {
            order_id: id.to_owned(),
        })
        .await
        .expect("get")
        .into_inner()
        .state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_finds_an_order_reads_its_timeline_and_fails_a_stuck_saga() {
    // On the heap: the scenario's future is too large for the test thread's stack in debug.
    Box::pin(scenario()).await;
}

async fn scenario() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    cluster.add_food("pizza", 4).await;
    cluster.add_agents("north", 10).await;
    let mut placed = Vec::new();
    for i in 0..2 {
        let order = cluster
            .place(&format!("console-{i}"), "pizza", "north")
            .await
            .expect("place");
        assert_eq!(order.state, OrderState::Placed as i32);
        placed.push(order.order_id);
    }
    stuck(&cluster, "ord-console-stuck").await;
    let base = format!("http://{}", cluster.order_addrs.admin);
    let dir = shots();

    let browser = Browser::start().await;
    // Anonymous: sent to the login page.
    browser.goto(&format!("{base}/console/orders")).await;
    assert!(
        browser.url().await.ends_with("/console/login"),
        "{}",
        browser.url().await
    );
    let token = browser.find("#token").await;
    browser.type_into(&token, OPERATOR_TOKEN).await;
    browser.screenshot(&dir.join("01-login.png")).await;
    browser.click(&browser.find("#login").await).await;

    // The orders list, then a search by order id.
    let table = browser.wait_text("table.orders", &placed[0]).await;
    assert!(placed.iter().all(|id| table.contains(id)), "{table}");
    assert!(table.contains("ord-console-stuck"), "{table}");
    browser.screenshot(&dir.join("02-orders.png")).await;
    browser
        .type_into(&browser.find("#search").await, &placed[1])
        .await;
    browser.click(&browser.find("#filter").await).await;
    browser.wait_text("#search", "").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while browser
        .text("table.orders tbody")
        .await
        .contains(&placed[0])
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the search did not narrow the list"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = browser.text("table.orders tbody").await;
    assert!(found.contains(&placed[1]), "{found}");

    // Its timeline: created, both reserves, both assigns.
    browser.click(&browser.find("a.order-link").await).await;
    browser.wait_text("#order-id", &placed[1]).await;
    assert_eq!(browser.text("#order-state").await, "PLACED");
    let timeline = browser.text("#timeline").await;
    for want in [
        "created",
        "store reserve Ok",
        "delivery reserve Ok",
        "store assign Ok",
        "reserving → assigning",
        "assigning → placed",
    ] {
        assert!(timeline.contains(want), "{want:?} not in {timeline}");
    }
    browser.screenshot(&dir.join("03-timeline.png")).await;

    // The stuck saga: listed as unfinished, then force-failed from its page.
    browser.goto(&format!("{base}/console/unfinished")).await;
    browser.wait_text("#bulk", "ord-console-stuck").await;
    browser.screenshot(&dir.join("04-unfinished.png")).await;
    browser
        .goto(&format!("{base}/console/orders/ord-console-stuck"))
        .await;
    assert_eq!(browser.text("#order-state").await, "PENDING");
    browser.click(&browser.find("#force-fail").await).await;
    browser.accept_alert().await;
    browser
        .wait_text("#notice", "force-failed: now NOT_PLACED")
        .await;
    assert_eq!(browser.text("#order-state").await, "NOT_PLACED");
    assert!(browser.text("#timeline").await.contains("force_failed"));
    browser.screenshot(&dir.join("05-force-failed.png")).await;
    assert_eq!(
        state_of(&cluster, "ord-console-stuck").await,
        OrderState::NotPlaced as i32
    );

    // Two more stuck sagas, redriven together.
    stuck(&cluster, "ord-console-bulk-1").await;
    stuck(&cluster, "ord-console-bulk-2").await;
    browser.goto(&format!("{base}/console/unfinished")).await;
    browser.click(&browser.find("#select-all").await).await;
    browser.click(&browser.find("#bulk-redrive").await).await;
    let notices = browser
        .wait_text("main", "ord-console-bulk-2 redriven")
        .await;
    for id in ["ord-console-bulk-1", "ord-console-bulk-2"] {
        assert!(
            notices.contains(&format!("{id} redriven: now PLACED")),
            "{notices}"
        );
        assert_eq!(state_of(&cluster, id).await, OrderState::Placed as i32);
    }
    browser.screenshot(&dir.join("06-bulk-redrive.png")).await;

    // Stock and agents; throughput and outcomes.
    browser.goto(&format!("{base}/console/stock")).await;
    let foods = browser.wait_text("#foods", "pizza").await;
    assert!(foods.contains("pizza"), "{foods}");
    browser.screenshot(&dir.join("07-stock.png")).await;
    browser.goto(&format!("{base}/console/activity")).await;
    browser.wait_text("h1", "Activity").await;
    let total: i64 = browser
        .text("#finished-total")
        .await
        .parse()
        .expect("a count");
    assert!(total >= 5, "2 placed, 1 force-failed, 2 redriven: {total}");
    browser.screenshot(&dir.join("08-activity.png")).await;
    browser.quit().await;

    // The refusals, over plain HTTP.
    let admin = cluster.order_addrs.admin;
    let anonymous = http(admin, "GET", "/console/orders", &[], None).await;
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.header("location"), Some("/console/login"));
    stuck(&cluster, "ord-console-viewer").await;
    let viewer = format!("saga_admin_token={VIEWER_TOKEN}");
    let look = http(
        admin,
        "GET",
        "/console/unfinished",
        &[("cookie", &viewer)],
        None,
    )
    .await;
    assert_eq!(look.status, 200);
    assert!(look.body.contains("ord-console-viewer") && !look.body.contains("bulk-redrive"));
    let act = http(
        admin,
        "POST",
        "/console/orders/ord-console-viewer/force-fail",
        &[("cookie", &viewer)],
        Some(""),
    )
    .await;
    assert_eq!(act.status, 403, "a viewer may not act: {act:?}");
    let operator = format!("saga_admin_token={OPERATOR_TOKEN}");
    let cross_site = http(
        admin,
        "POST",
        "/console/orders/ord-console-viewer/force-fail",
        &[("cookie", &operator), ("origin", "http://evil.example")],
        Some(""),
    )
    .await;
    assert_eq!(cross_site.status, 403, "{cross_site:?}");
    let bad_login = http(
        admin,
        "POST",
        "/console/login",
        &[],
        Some("token=wrong-token-guess"),
    )
    .await;
    assert_eq!(bad_login.header("location"), Some("/console/login?failed"));
    assert!(bad_login.header("set-cookie").is_none());
    assert_eq!(
        state_of(&cluster, "ord-console-viewer").await,
        OrderState::Pending as i32,
        "nothing the refused calls asked for happened"
    );
    cluster.assert_invariants_now().await;
    let _ = SETTLE;
    cluster.stop().await;
}
