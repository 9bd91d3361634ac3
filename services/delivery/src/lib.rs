//! The delivery participant: zones (pools) and their agents (units).
//!
//! A thin adapter over the shared reservation engine: it serves
//! `reservation.v1.ReservationService` (from the engine crate) plus delivery's own availability
//! (`delivery.v1.DeliveryService`) and fleet administration (`delivery.v1.DeliveryAdminService`).
//! A delivery is completed through the order service (`OrderAdminService/CompleteDelivery`),
//! which frees an agent only for an order it has stored PLACED: delivery's own admin API has no
//! way to free an assigned agent.

use order_saga_platform::{
    app::{Audience, Listeners},
    validate_id,
};
use order_saga_proto::delivery::v1::{
    AddAgentsRequest, GetZoneRequest, ListZonesRequest, ListZonesResponse, Zone,
    delivery_admin_service_server::{DeliveryAdminService, DeliveryAdminServiceServer},
    delivery_service_server::{DeliveryService, DeliveryServiceServer},
};
use order_saga_reservation::{
    Engine, EngineError, PoolInfo,
    app::{Participant, ParticipantSettings},
    check_unit_count,
    grpc::{MAX_ID_LEN, list_page},
};
use order_saga_saga::Refusal;
use tonic::{Request, Response, Status};

/// Prefix of agent ids.
pub const AGENT_PREFIX: &str = "agent";

/// Builds the delivery service: the reservation API on the internal listener, the
/// availability reads on the public one (and on the internal one, for the orchestrator's existence
/// check), administration on the admin listener.
pub async fn build(
    listeners: Listeners,
    settings: ParticipantSettings,
) -> anyhow::Result<Participant> {
    let mut app = Participant::build("delivery", listeners, settings, AGENT_PREFIX).await?;
    let api = DeliveryApi {
        engine: app.engine().clone(),
    };
    // Public reads count from their own pool, so they never hold a connection a reserve needs.
    let public = DeliveryApi {
        engine: app.public_engine().clone(),
    };
    app.app_mut()
        .add(Audience::Public, DeliveryServiceServer::new(public))
        .await
        .add(Audience::Internal, DeliveryServiceServer::new(api.clone()))
        .await
        .add(Audience::Admin, DeliveryAdminServiceServer::new(api))
        .await;
    Ok(app)
}

/// Delivery's availability and admin APIs.
#[derive(Debug, Clone)]
pub struct DeliveryApi {
    engine: Engine,
}

fn zone(info: PoolInfo) -> Zone {
    Zone {
        zone: info.pool,
        available: info.counts.available,
        reserved: info.counts.reserved,
        assigned: info.counts.assigned,
    }
}

/// Engine errors in delivery's words: a pool is a zone, a unit an agent.
fn status(err: EngineError) -> Status {
    match err {
        EngineError::UnknownPool(id) => {
            Refusal::UnknownPool.status(format!("zone {id:?} not found"))
        }
        other => other.into(),
    }
}

fn check(field: &str, value: &str) -> Result<(), Status> {
    validate_id(field, value, MAX_ID_LEN).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl DeliveryService for DeliveryApi {
    async fn get_zone(&self, request: Request<GetZoneRequest>) -> Result<Response<Zone>, Status> {
        let req = request.into_inner();
        check("zone", &req.zone)?;
        let info = self.engine.pool_info(&req.zone).await.map_err(status)?;
        Ok(Response::new(zone(info)))
    }

    async fn list_zones(
        &self,
        request: Request<ListZonesRequest>,
    ) -> Result<Response<ListZonesResponse>, Status> {
        let req = request.into_inner();
        let (pools, next_page_token) =
            list_page(&self.engine, req.page_size, &req.page_token).await?;
        Ok(Response::new(ListZonesResponse {
            zones: pools.into_iter().map(zone).collect(),
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl DeliveryAdminService for DeliveryApi {
    async fn add_agents(
        &self,
        request: Request<AddAgentsRequest>,
    ) -> Result<Response<Zone>, Status> {
        let req = request.into_inner();
        check("zone", &req.zone)?;
        // Validate the count before creating the zone, so a refused call leaves nothing behind.
        check_unit_count(req.count).map_err(status)?;
        self.engine
            .ensure_pool(&req.zone, &req.zone)
            .await
            .map_err(status)?;
        let info = self
            .engine
            .add_units(&req.zone, req.count)
            .await
            .map_err(status)?;
        Ok(Response::new(zone(info)))
    }
}
