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

mod reflection {
    use tonic::transport::Channel;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    /// One reflection call: its answer, or the status that refused the stream.
    pub async fn ask(
        channel: Channel,
        token: Option<&str>,
        request: MessageRequest,
    ) -> Result<MessageResponse, tonic::Status> {
        let token = order_saga_saga::BearerToken::new(token).expect("token");
        let mut client = ServerReflectionClient::with_interceptor(channel, token);
        let mut answers = client
            .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            }]))
            .await?
            .into_inner();
        let answer = answers.message().await?.expect("an answer");
        Ok(answer.message_response.expect("a response"))
    }

    /// The services a listener lists.
    pub async fn services(
        channel: Channel,
        token: Option<&str>,
    ) -> Result<Vec<String>, tonic::Status> {
        match ask(channel, token, MessageRequest::ListServices(String::new())).await? {
            MessageResponse::ListServicesResponse(list) => {
                Ok(list.service.into_iter().map(|s| s.name).collect())
            }
            other => panic!("not a list: {other:?}"),
        }
    }

    /// Whether the listener describes `symbol` (answers its file).
    pub async fn describes(channel: Channel, token: Option<&str>, symbol: &str) -> bool {
        matches!(
            ask(
                channel,
                token,
                MessageRequest::FileContainingSymbol(symbol.to_owned())
            )
            .await,
            Ok(MessageResponse::FileDescriptorResponse(_))
        )
    }
}

/// Each listener's reflection lists and describes only the services it serves: an anonymous
/// caller of the public listener learns nothing of the admin or internal APIs, and the admin
/// listener's reflection needs a token. (On main every listener described every API, the
/// admin and internal ones included, to anyone.)
#[tokio::test]
async fn reflection_describes_only_each_listeners_own_services() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    let order = cluster.order_addrs;
    let store = cluster.store_addrs;

    let public = reflection::services(channel(order.public).await, None)
        .await
        .expect("public reflection");
    assert!(
        public.contains(&"order.v1.OrderService".to_owned()),
        "{public:?}"
    );
    assert!(
        !public
            .iter()
            .any(|s| s.contains("Admin") || s.contains("Reservation")),
        "{public:?}"
    );
    for hidden in [
        "order.v1.OrderAdminService",
        "order.v1.ListOrdersRequest",
        "reservation.v1.ReservationService",
        "store.v1.StoreAdminService",
    ] {
        assert!(
            !reflection::describes(channel(order.public).await, None, hidden).await,
            "the public listener describes {hidden}"
        );
    }
    assert!(reflection::describes(channel(order.public).await, None, "order.v1.Order").await);

    let store_public = reflection::services(channel(store.public).await, None)
        .await
        .expect("store public reflection");
    assert!(store_public.contains(&"store.v1.StoreService".to_owned()));
    assert!(
        !reflection::describes(
            channel(store.public).await,
            None,
            "reservation.v1.ReservationService"
        )
        .await
    );
    assert!(
        !reflection::describes(
            channel(store.public).await,
            None,
            "store.v1.StoreAdminService"
        )
        .await
    );

    // The admin listener: a token first, then its own services only.
    let refused = reflection::services(channel(order.admin).await, None)
        .await
        .expect_err("anonymous reflection on the admin listener");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let admin = reflection::services(channel(order.admin).await, Some(OPERATOR_TOKEN))
        .await
        .expect("admin reflection");
    assert!(
        admin.contains(&"order.v1.OrderAdminService".to_owned()),
        "{admin:?}"
    );
    assert!(
        !admin.contains(&"order.v1.OrderService".to_owned()),
        "{admin:?}"
    );

    // The internal listener (the orchestrator's certificate) describes the reservation API.
    let internal = internal_channel(
        store.internal.expect("internal"),
        &cluster.certs.order,
        "store",
    )
    .await
    .expect("connect");
    let listed = reflection::services(internal, None)
        .await
        .expect("internal reflection");
    assert!(
        listed.contains(&"reservation.v1.ReservationService".to_owned()),
        "{listed:?}"
    );
    assert!(
        !listed.contains(&"store.v1.StoreAdminService".to_owned()),
        "{listed:?}"
    );
    cluster.stop().await;
}

/// Health `Watch` streams never end on their own and skip admission: each listener holds a
/// bounded number open, answers one more busy, and frees a place when one closes. (On main
/// there was no bound on watches, connections or streams.)
#[tokio::test]
async fn health_watches_are_bounded_per_listener() {
    use order_saga_platform::server::ConnectionLimits;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let options = ClusterOptions {
        connections: ConnectionLimits {
            max_health_watches: 3,
            ..ConnectionLimits::default()
        },
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(TestBackend::Sqlite, options).await;
    let mut health = HealthClient::new(channel(cluster.order_addrs.public).await);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            health
                .watch(HealthCheckRequest::default())
                .await
                .expect("a watch within the bound")
                .into_inner(),
        );
    }
    let refused = health
        .watch(HealthCheckRequest::default())
        .await
        .expect_err("one watch too many");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(order_saga_saga::retry_hint(&refused).is_some());
    // Checks are not watches: still answered.
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("check");
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match health.watch(HealthCheckRequest::default()).await {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed watch frees its place"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Watches still open do not hold the graceful shutdown: they end, UNAVAILABLE.
    tokio::time::timeout(Duration::from_secs(20), cluster.stop())
        .await
        .expect("the cluster stops with watches open");
    let mut watch = open.pop().expect("an open watch");
    loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without a status"),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                break;
            }
        }
    }
}

/// The order service refuses to start with settings that cannot work with its participants,
/// and says why: a reservation TTL outside their bounds (every reserve would be refused), a
/// call timeout no longer than their queue wait (their busy answers could never arrive), a
/// participant URL that reaches something that is not a participant. (Main started with each
/// of them; the first made every order NOT_PLACED.)
#[tokio::test]
async fn settings_that_cannot_work_with_the_participants_are_refused_at_start_up() {
    let cluster = Cluster::start(TestBackend::Sqlite, ClusterOptions::default()).await;
    let internal = |addrs: &ListenAddrs| format!("https://{}", addrs.internal.expect("internal"));
    let (delivery, identity) = (
        internal(&cluster.delivery_addrs),
        cluster.certs.order.clone(),
    );
    let settings = |store: String| {
        let (delivery, identity) = (delivery.clone(), identity.clone());
        async move {
            order_service::OrderSettings::new(
                fresh_database_url(TestBackend::Sqlite, "order_b").await,
                store,
                delivery,
                identity,
            )
        }
    };
    let build = |s: order_service::OrderSettings| async move {
        let listeners = Listeners::bind(ListenAddrs::ephemeral(false))
            .await
            .expect("bind");
        order_service::OrderApp::build(listeners, s)
            .await
            .err()
            .map(|e| e.to_string())
    };

    let mut s = settings(internal(&cluster.store_addrs)).await;
    s.saga.reservation_ttl = Duration::from_secs(7200);
    let err = build(s).await.expect("a TTL of two hours is refused");
    assert!(err.contains("outside") && err.contains("bounds"), "{err}");

    let mut s = settings(internal(&cluster.store_addrs)).await;
    s.call_timeout = Duration::from_millis(900);
    let err = build(s)
        .await
        .expect("a call timeout within the queue wait is refused");
    assert!(err.contains("queue wait"), "{err}");

    let mut s = settings(internal(&cluster.store_addrs)).await;
    s.saga.lease = Duration::from_secs(29);
    let err = build(s)
        .await
        .expect("a lease as long as the TTL is refused");
    assert!(err.contains("ORDER_LEASE"), "{err}");

    // Something that speaks TLS with the store's name but is not a participant.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_, health) = tonic_health::server::health_reporter();
    let tls = cluster.certs.store.server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("tls")
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let err = build(settings(format!("https://{addr}")).await)
        .await
        .expect("a URL that is not a participant's internal listener is refused");
    assert!(err.contains("does not serve reservation.v1"), "{err}");

    // The defaults fit.
    assert_eq!(
        build(settings(internal(&cluster.store_addrs)).await).await,
        None
    );
    cluster.stop().await;
}
