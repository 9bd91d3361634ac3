//! Service identity and listener separation, end to end on a live cluster: the internal
//! reservation API answers only the orchestrator's certificate from the cluster's CA; no
//! certificate, another CA's, another service's and a plaintext caller are all refused, and
//! none of them reserves anything. Each listener serves only its audience, and the orchestrator
//! refuses a participant whose certificate names another service. TLS does not touch the
//! databases, so one backend (SQLite) is enough here.

use std::time::Duration;

use order_saga_e2e::{
    Cluster, ClusterOptions, OPERATOR_TOKEN, ca_identity, channel, internal_channel, operator,
};
use order_saga_platform::{
    app::{ListenAddrs, Listeners},
    testing::{TestBackend, fresh_database_url},
    tls::{ClusterCa, MutualTls},
};
use order_saga_proto::{
    order::v1::{
        OrderState, PlaceOrderRequest, order_admin_service_client::OrderAdminServiceClient,
        order_service_client::OrderServiceClient,
    },
    reservation::v1::{ReserveRequest, reservation_service_client::ReservationServiceClient},
    store::v1::{
        GetFoodRequest, RestockRequest, store_admin_service_client::StoreAdminServiceClient,
    },
};
use order_saga_saga::BearerToken;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig},
};

fn reserve(order_id: &str) -> ReserveRequest {
    ReserveRequest {
        order_id: order_id.into(),
        pool: "pizza".into(),
        ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    }
}

/// A Reserve through `channel` (or the error that kept it from connecting): `Ok` when the
/// store reserved, otherwise what refused it.
async fn try_reserve(
    channel: Result<Channel, tonic::transport::Error>,
    order_id: &str,
) -> Result<(), String> {
    let channel = channel.map_err(|e| format!("connect: {e:?}"))?;
    ReservationServiceClient::new(channel)
        .reserve(reserve(order_id))
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn reserved(cluster: &Cluster) -> i64 {
    cluster
        .store()
        .await
        .get_food(GetFoodRequest {
            food_id: "pizza".into(),
        })
        .await
        .expect("get food")
        .into_inner()
        .reserved
}

#[tokio::test]
async fn internal_api_takes_only_the_orchestrators_certificate() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    cluster.add_food("pizza", 10).await;
    let internal = cluster.store_addrs.internal.expect("internal listener");
    let certs = &cluster.certs;

    // The orchestrator's certificate is let in.
    let ok = try_reserve(
        internal_channel(internal, &certs.order, "store").await,
        "by-order",
    )
    .await;
    assert_eq!(ok, Ok(()), "the orchestrator was refused");

    // No client certificate: the handshake is refused.
    let ca_only = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(certs.ca.cert_pem()))
        .domain_name("store");
    let no_cert = Channel::from_shared(format!("https://{internal}"))
        .expect("url")
        .tls_config(ca_only)
        .expect("tls")
        .connect()
        .await;
    let got = try_reserve(no_cert, "no-cert").await;
    assert!(got.is_err(), "a caller without a certificate reserved");

    // A certificate for "order" from another CA: the handshake is refused.
    let other_ca = ClusterCa::generate("someone else's CA").expect("ca");
    let forged = ca_identity(&other_ca, "order");
    // It trusts our CA for the server, so only the client side is foreign.
    let issued = other_ca.issue("order", &[]).expect("issue");
    let forged_with_our_root = MutualTls::from_pem(certs.ca.cert_pem(), &issued.cert, &issued.key);
    let got = try_reserve(
        internal_channel(internal, &forged_with_our_root, "store").await,
        "other-ca",
    )
    .await;
    assert!(got.is_err(), "another CA's certificate reserved");
    // And a client trusting only the other CA will not talk to our store at all.
    let got = try_reserve(
        internal_channel(internal, &forged, "store").await,
        "other-ca-2",
    )
    .await;
    assert!(got.is_err(), "connected to a server of another CA");

    // Our CA, but issued to delivery or to the store itself: PERMISSION_DENIED.
    for (who, identity) in [("delivery", &certs.delivery), ("store", &certs.store)] {
        let got = try_reserve(
            internal_channel(internal, identity, "store").await,
            &format!("as-{who}"),
        )
        .await;
        let err = got.expect_err(who);
        assert!(
            err.starts_with("PermissionDenied"),
            "{who}'s certificate: {err}"
        );
    }

    // A plaintext caller on the internal port gets no answer from the reservation API.
    let got = try_reserve(
        Channel::from_shared(format!("http://{internal}"))
            .expect("url")
            .connect()
            .await,
        "plaintext",
    )
    .await;
    assert!(got.is_err(), "a plaintext caller reserved");

    // Of all those, only the orchestrator's reservation exists.
    assert_eq!(reserved(&cluster).await, 1);
    cluster.stop().await;
}

#[tokio::test]
async fn each_listener_serves_only_its_audience() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    cluster.add_food("pizza", 10).await;
    let store = cluster.store_addrs;
    let restock = || RestockRequest {
        food_id: "pizza".into(),
        count: 1,
    };

    // A public caller on the admin port: no token, UNAUTHENTICATED.
    let err = StoreAdminServiceClient::new(channel(store.admin).await)
        .restock(restock())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = OrderAdminServiceClient::new(channel(cluster.order_addrs.admin).await)
        .list_orders(order_saga_proto::order::v1::ListOrdersRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Admin services are not on the public port, even with the operator's token.
    let err = StoreAdminServiceClient::with_interceptor(channel(store.public).await, operator())
        .restock(restock())
        .await
        .expect_err("admin on the public port");
    assert_eq!(err.code(), Code::Unimplemented);
    let err =
        OrderAdminServiceClient::with_interceptor(channel(cluster.order_addrs.public).await, {
            BearerToken::new(Some(OPERATOR_TOKEN)).expect("token")
        })
        .list_stuck_orders(order_saga_proto::order::v1::ListStuckOrdersRequest { limit: 1 })
        .await
        .expect_err("admin on the public port");
    assert_eq!(err.code(), Code::Unimplemented);

    // The reservation API is on neither the public nor the admin port.
    for addr in [store.public, store.admin] {
        let err = ReservationServiceClient::new(channel(addr).await)
            .reserve(reserve("wrong-port"))
            .await
            .expect_err("reservation API outside the internal listener");
        assert_eq!(err.code(), Code::Unimplemented, "{addr}");
    }
    // And the order API is not on the admin port.
    let err = OrderServiceClient::new(channel(cluster.order_addrs.admin).await)
        .place_order(PlaceOrderRequest::default())
        .await
        .expect_err("order API on the admin port");
    assert_eq!(err.code(), Code::Unimplemented);

    // Health answers on every listener.
    let internal = internal_channel(
        store.internal.expect("internal"),
        &cluster.certs.order,
        "store",
    )
    .await
    .expect("connect");
    for channel in [
        channel(store.public).await,
        channel(store.admin).await,
        internal,
    ] {
        let status = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    assert_eq!(reserved(&cluster).await, 0);
    cluster.stop().await;
}

#[tokio::test]
async fn orchestrator_refuses_a_participant_with_another_services_certificate() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    cluster.add_food("pizza", 10).await;
    cluster.add_agents("north", 10).await;
    // An order service whose "store" is really delivery's internal listener: that server's
    // certificate names delivery, so the orchestrator must not talk to it.
    let delivery = cluster.delivery_addrs.internal.expect("internal");
    let mut settings = order_service::OrderSettings::new(
        fresh_database_url(TestBackend::Sqlite, "order_b").await,
        format!("https://{delivery}"),
        format!("https://{delivery}"),
        cluster.certs.order.clone(),
    );
    settings.call_timeout = Duration::from_millis(1500);
    settings.place_timeout = Duration::from_secs(3);
    // The impostor never completes a handshake, so it never tells its limits: check briefly.
    settings.participant_check_wait = Duration::from_millis(300);
    let listeners = Listeners::bind(ListenAddrs::ephemeral(false))
        .await
        .expect("bind");
    let order = order_service::OrderApp::build(listeners, settings)
        .await
        .expect("build");
    let public = order.local_addrs().public;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(order.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let answer = OrderServiceClient::new(channel(public).await)
        .place_order(PlaceOrderRequest {
            idempotency_key: "k-impostor".into(),
            customer_id: "c".into(),
            food_id: "pizza".into(),
            zone: "north".into(),
        })
        .await;
    match answer {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(order) => assert_ne!(
            order.into_inner().state,
            OrderState::Placed as i32,
            "placed through a participant with the wrong certificate"
        ),
    }
    // Nothing was reserved anywhere.
    assert_eq!(reserved(&cluster).await, 0);
    let zone = order_saga_proto::delivery::v1::delivery_service_client::DeliveryServiceClient::new(
        channel(cluster.delivery_addrs.public).await,
    )
    .get_zone(order_saga_proto::delivery::v1::GetZoneRequest {
        zone: "north".into(),
    })
    .await
    .expect("zone")
    .into_inner();
    assert_eq!(zone.reserved, 0);
    let _ = stop.send(());
    task.await.expect("task").expect("order stopped cleanly");
    // Sanity: the real orchestrator, whose participants hold the right certificates, places.
    let placed = cluster
        .place("k-real", "pizza", "north")
        .await
        .expect("place");
    assert_eq!(placed.state, OrderState::Placed as i32);
    cluster.stop().await;
}

#[tokio::test]
async fn public_listener_serves_tls_when_given_a_certificate() {
    use order_saga_platform::tls::{KeyPairFiles, ServerTls};
    let dir = std::env::temp_dir().join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
    let ca = ClusterCa::generate("public test CA").expect("ca");
    ca.write(&dir, &["store"]).expect("write");
    let tls = ServerTls::load(&KeyPairFiles::in_dir(&dir, "store")).expect("load");
    let mut settings = order_saga_reservation::app::ParticipantSettings::for_database(
        fresh_database_url(TestBackend::Sqlite, "store_tls").await,
        ca_identity(&ca, "store"),
    );
    settings.tls.public = Some(tls.clone());
    settings.tls.admin = Some(tls);
    let listeners = Listeners::bind(ListenAddrs::ephemeral(true))
        .await
        .expect("bind");
    let store = store_service::build(listeners, settings)
        .await
        .expect("build");
    let public = store.local_addrs().public;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(store.run_until_stopped(async {
        let _ = stopped.await;
    }));

    // Over TLS, verified against the CA and the name in the certificate (`localhost`), it
    // answers; the food does not exist, which is the store's answer, not the transport's.
    let verified = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{public}"))
        .expect("url")
        .tls_config(verified)
        .expect("tls")
        .connect()
        .await
        .expect("TLS connect");
    let err = order_saga_proto::store::v1::store_service_client::StoreServiceClient::new(channel)
        .get_food(GetFoodRequest {
            food_id: "nothing".into(),
        })
        .await
        .expect_err("no such food");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // In the clear, the same port gives no gRPC answer.
    let plaintext = Channel::from_shared(format!("http://{public}"))
        .expect("url")
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let got =
            order_saga_proto::store::v1::store_service_client::StoreServiceClient::new(channel)
                .get_food(GetFoodRequest {
                    food_id: "nothing".into(),
                })
                .await;
        let code = got.expect_err("plaintext on a TLS port").code();
        assert_ne!(code, Code::NotFound, "a plaintext call reached the store");
    }
    let _ = stop.send(());
    task.await.expect("task").expect("store stopped cleanly");
    let _ = std::fs::remove_dir_all(dir);
}
