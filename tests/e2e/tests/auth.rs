//! The admin APIs are closed to callers without the right token, end to end on a live cluster:
//! no token and a wrong token are `UNAUTHENTICATED`, a viewer's token on a method that changes
//! something is `PERMISSION_DENIED`, and the public APIs need no token. Authentication does not
//! touch the databases, so one backend (SQLite) is enough here.

use order_saga_e2e::{Cluster, ClusterOptions, OPERATOR_TOKEN, VIEWER_TOKEN, channel};
use order_saga_platform::testing::TestBackend;
use order_saga_proto::{
    delivery::v1::{
        AddAgentsRequest, ListZonesRequest,
        delivery_admin_service_client::DeliveryAdminServiceClient,
        delivery_service_client::DeliveryServiceClient,
    },
    order::v1::{
        CompleteDeliveryRequest, ForceFailOrderRequest, GetSagaStatsRequest, ListOrdersRequest,
        ListStuckOrdersRequest, RedriveOrderRequest,
        order_admin_service_client::OrderAdminServiceClient,
    },
    store::v1::{
        CreateFoodRequest, ListFoodsRequest, RestockRequest,
        store_admin_service_client::StoreAdminServiceClient,
        store_service_client::StoreServiceClient,
    },
};
use order_saga_saga::BearerToken;
use tonic::{Code, Status, codegen::InterceptedService, transport::Channel};

type Creds = InterceptedService<Channel, BearerToken>;

fn creds(token: Option<&str>) -> BearerToken {
    BearerToken::new(token).expect("token")
}

/// The credentials every refusal test tries, with the code each must get on a method that
/// changes something, and on a read-only one.
const CALLERS: [(&str, Option<&str>, Code, Code); 4] = [
    (
        "no token",
        None,
        Code::Unauthenticated,
        Code::Unauthenticated,
    ),
    (
        "a wrong token",
        Some("not-the-token-of-this-cluster"),
        Code::Unauthenticated,
        Code::Unauthenticated,
    ),
    (
        "the viewer",
        Some(VIEWER_TOKEN),
        Code::PermissionDenied,
        Code::Ok,
    ),
    ("the operator", Some(OPERATOR_TOKEN), Code::Ok, Code::Ok),
];

/// The code of an answer, `Ok` for a success; "allowed" answers past authentication may still
/// be refused by the method itself (an unknown order is `NOT_FOUND`), which counts as let in.
fn code<T>(r: Result<T, Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn let_in(code: Code) -> bool {
    !matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

fn check(who: &str, call: &str, got: Code, want: Code) {
    if want == Code::Ok {
        assert!(let_in(got), "{who} on {call}: refused with {got:?}");
    } else {
        assert_eq!(got, want, "{who} on {call}");
    }
}

#[tokio::test]
async fn admin_apis_refuse_callers_without_the_right_token() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    cluster.add_food("pizza", 2).await;
    cluster.add_agents("north", 2).await;
    let (order, store, delivery) = (
        channel(cluster.order_addrs.admin).await,
        channel(cluster.store_addrs.admin).await,
        channel(cluster.delivery_addrs.admin).await,
    );
    for (who, token, write, read) in CALLERS {
        let mut admin: OrderAdminServiceClient<Creds> =
            OrderAdminServiceClient::with_interceptor(order.clone(), creds(token));
        let got = code(
            admin
                .force_fail_order(ForceFailOrderRequest {
                    order_id: "ord-none".into(),
                })
                .await,
        );
        check(who, "ForceFailOrder", got, write);
        let got = code(
            admin
                .redrive_order(RedriveOrderRequest {
                    order_id: "ord-none".into(),
                })
                .await,
        );
        check(who, "RedriveOrder", got, write);
        let got = code(
            admin
                .list_stuck_orders(ListStuckOrdersRequest { limit: 5 })
                .await,
        );
        check(who, "ListStuckOrders", got, read);
        let got = code(admin.get_saga_stats(GetSagaStatsRequest {}).await);
        check(who, "GetSagaStats", got, read);
        let got = code(admin.list_orders(ListOrdersRequest::default()).await);
        check(who, "ListOrders", got, read);
        let got = code(
            admin
                .complete_delivery(CompleteDeliveryRequest {
                    order_id: "ord-none".into(),
                })
                .await,
        );
        check(who, "CompleteDelivery", got, write);

        let mut store_admin =
            StoreAdminServiceClient::with_interceptor(store.clone(), creds(token));
        let got = code(
            store_admin
                .restock(RestockRequest {
                    food_id: "pizza".into(),
                    count: 1,
                })
                .await,
        );
        check(who, "Restock", got, write);
        let got = code(
            store_admin
                .create_food(CreateFoodRequest {
                    food_id: format!("f-{}", who.replace(' ', "-")),
                    name: "F".into(),
                })
                .await,
        );
        check(who, "CreateFood", got, write);

        let mut delivery_admin =
            DeliveryAdminServiceClient::with_interceptor(delivery.clone(), creds(token));
        let got = code(
            delivery_admin
                .add_agents(AddAgentsRequest {
                    zone: "north".into(),
                    count: 1,
                })
                .await,
        );
        check(who, "AddAgents", got, write);
    }
    // Only the operator changed anything: one restock and one agent added, one food created.
    let foods = StoreServiceClient::new(channel(cluster.store_addrs.public).await)
        .list_foods(ListFoodsRequest::default())
        .await
        .expect("public read without a token")
        .into_inner()
        .foods;
    let pizza = foods.iter().find(|f| f.food_id == "pizza").expect("pizza");
    assert_eq!(
        pizza.available, 3,
        "only the operator's restock went through"
    );
    assert_eq!(foods.len(), 2, "only the operator's food was created");
    let zones = DeliveryServiceClient::new(channel(cluster.delivery_addrs.public).await)
        .list_zones(ListZonesRequest::default())
        .await
        .expect("public read without a token")
        .into_inner()
        .zones;
    assert_eq!(zones[0].available, 3, "only the operator's agent was added");
    // The public API needs no token.
    let placed = cluster.place("k-1", "pizza", "north").await.expect("place");
    assert_eq!(
        placed.state,
        order_saga_proto::order::v1::OrderState::Placed as i32
    );
    cluster.stop().await;
}

/// A peer that keeps presenting wrong tokens is refused for the rest of the window, even with
/// the right one: guessing costs a minute per ten tries. (Main answered the eleventh call, with
/// the operator's token, `OK`.)
#[tokio::test]
async fn a_peer_guessing_tokens_is_throttled() {
    use order_saga_platform::auth::MAX_FAILURES;
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    let order = channel(cluster.order_addrs.admin).await;
    let mut guesser: OrderAdminServiceClient<Creds> = OrderAdminServiceClient::with_interceptor(
        order.clone(),
        creds(Some("guess-0123456789abcdef")),
    );
    for _ in 0..MAX_FAILURES {
        let got = code(guesser.list_orders(ListOrdersRequest::default()).await);
        assert_eq!(got, Code::Unauthenticated);
    }
    let mut operator: OrderAdminServiceClient<Creds> =
        OrderAdminServiceClient::with_interceptor(order, creds(Some(OPERATOR_TOKEN)));
    let refused = operator
        .list_orders(ListOrdersRequest::default())
        .await
        .expect_err("the address is throttled");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        order_saga_saga::retry_hint(&refused).is_some(),
        "it says when to come back"
    );
    // Another server of the cluster keeps its own count.
    let mut store_admin = StoreAdminServiceClient::with_interceptor(
        channel(cluster.store_addrs.admin).await,
        creds(Some(OPERATOR_TOKEN)),
    );
    assert!(
        store_admin
            .restock(RestockRequest {
                food_id: "nothing".into(),
                count: 1,
            })
            .await
            .is_err_and(|s| s.code() == Code::NotFound)
    );
    cluster.stop().await;
}

/// A console action on a crafted id is refused before anything echoes the id: `%0A` decodes
/// to a newline, which must never reach the redirect's `Location` header (on main the handler
/// built that header from it, and the `Redirect` panicked on the invalid value). And a wrong
/// token at the console's login counts against the address like any other.
#[tokio::test]
async fn console_actions_refuse_crafted_ids_and_the_login_is_throttled() {
    use order_saga_e2e::http;
    use order_saga_platform::auth::MAX_FAILURES;
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    let admin = cluster.order_addrs.admin;
    // The helper sends `Host: <addr>`; the console's actions check the origin against it.
    let origin = format!("http://{admin}");
    let cookie = format!("saga_admin_token={OPERATOR_TOKEN}");
    let headers = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
    for id in ["ord-1%0AX-Injected:%20yes", "%0D%0A", "ord%00x"] {
        let path = format!("/console/orders/{id}/redrive");
        let answer = http(admin, "POST", &path, &headers, Some("")).await;
        assert_eq!(answer.status, 400, "{id}: {answer:?}");
        assert!(answer.header("x-injected").is_none());
    }
    // The server is still there, and a well-formed id is acted on.
    let answer = http(
        admin,
        "POST",
        "/console/orders/ord-none/redrive",
        &headers,
        Some(""),
    )
    .await;
    assert_eq!(answer.status, 303, "{answer:?}");

    let form = [
        ("origin", origin.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    for _ in 0..MAX_FAILURES {
        let answer = http(
            admin,
            "POST",
            "/console/login",
            &form,
            Some("token=not-the-right-token"),
        )
        .await;
        assert_eq!(answer.status, 303, "{answer:?}");
        assert!(
            answer
                .header("location")
                .is_some_and(|l| l.contains("failed"))
        );
    }
    let body = format!("token={OPERATOR_TOKEN}");
    let answer = http(admin, "POST", "/console/login", &form, Some(&body)).await;
    assert_eq!(
        answer.status, 429,
        "the address guessed too often: {answer:?}"
    );
    cluster.stop().await;
}
