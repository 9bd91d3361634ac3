//! Checks that foods and zones exist before an order is created, so that a typo is answered
//! `NOT_FOUND` naming the field instead of becoming a not-placed order. Foods and zones are
//! never deleted, so a positive answer is cached.

use std::{collections::HashSet, future::Future, sync::Mutex};

use order_saga_platform::telemetry::TracePropagation;
use order_saga_proto::{
    delivery::v1::{GetZoneRequest, delivery_service_client::DeliveryServiceClient},
    store::v1::{GetFoodRequest, store_service_client::StoreServiceClient},
};
use order_saga_saga::Refusal;
use tonic::{Status, codegen::InterceptedService, transport::Channel};

use crate::placement::PlaceError;

/// Entries kept before the cache is cleared (it only saves a round trip).
const CACHE_MAX: usize = 10_000;

/// The participants' read APIs, with a cache of the foods and zones known to exist.
#[derive(Debug)]
pub struct Catalogue {
    store: StoreServiceClient<InterceptedService<Channel, TracePropagation>>,
    delivery: DeliveryServiceClient<InterceptedService<Channel, TracePropagation>>,
    known: Mutex<HashSet<String>>,
}

impl Catalogue {
    /// A catalogue over the participants' read APIs.
    pub fn new(store: Channel, delivery: Channel) -> Self {
        Self {
            store: StoreServiceClient::with_interceptor(store, TracePropagation),
            delivery: DeliveryServiceClient::with_interceptor(delivery, TracePropagation),
            known: Mutex::new(HashSet::new()),
        }
    }

    fn is_known(&self, key: &str) -> bool {
        self.known.lock().map(|k| k.contains(key)).unwrap_or(false)
    }

    fn remember(&self, key: String) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= CACHE_MAX {
                known.clear();
            }
            known.insert(key);
        }
    }

    /// `Ok` when `key` is known or `lookup` finds it; [`PlaceError::UnknownPool`] when the
    /// participant does not know it; [`PlaceError::ParticipantUnavailable`] when it cannot
    /// answer.
    async fn ensure(
        &self,
        field: &'static str,
        value: &str,
        service: &'static str,
        lookup: impl Future<Output = Result<(), Status>>,
    ) -> Result<(), PlaceError> {
        let key = format!("{field}/{value}");
        if self.is_known(&key) {
            return Ok(());
        }
        match lookup.await {
            Ok(()) => {
                self.remember(key);
                Ok(())
            }
            Err(s) if Refusal::of(&s) == Some(Refusal::UnknownPool) => {
                Err(PlaceError::UnknownPool {
                    field,
                    value: value.to_owned(),
                })
            }
            Err(s) => {
                tracing::warn!(service, code = ?s.code(), message = s.message(), "catalogue check failed");
                Err(PlaceError::ParticipantUnavailable(service))
            }
        }
    }

    /// Checks both the food and the zone, concurrently.
    pub async fn check(&self, food_id: &str, zone: &str) -> Result<(), PlaceError> {
        let mut store = self.store.clone();
        let mut delivery = self.delivery.clone();
        let food = self.ensure("food_id", food_id, "store", async move {
            let request = GetFoodRequest {
                food_id: food_id.to_owned(),
            };
            store.get_food(request).await.map(drop)
        });
        let zone_check = self.ensure("zone", zone, "delivery", async move {
            let request = GetZoneRequest {
                zone: zone.to_owned(),
            };
            delivery.get_zone(request).await.map(drop)
        });
        let (f, z) = tokio::join!(food, zone_check);
        f.and(z)
    }
}
