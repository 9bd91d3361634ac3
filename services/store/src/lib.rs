//! The store participant: foods (pools) and their packets (units).
//!
//! A thin adapter over the shared reservation engine: it serves
//! `reservation.v1.ReservationService` (from the engine crate) plus the store's own catalogue
//! (`store.v1.StoreService`) and administration (`store.v1.StoreAdminService`).

use order_saga_platform::{
    app::{Audience, Listeners},
    validate_id, validate_name,
};
use order_saga_proto::store::v1::{
    CreateFoodRequest, Food, GetFoodRequest, ListFoodsRequest, ListFoodsResponse, RestockRequest,
    store_admin_service_server::{StoreAdminService, StoreAdminServiceServer},
    store_service_server::{StoreService, StoreServiceServer},
};
use order_saga_reservation::{
    Engine, EngineError, PoolInfo,
    app::{Participant, ParticipantSettings},
    grpc::{MAX_ID_LEN, list_page, timestamp_from_ms},
};
use order_saga_saga::Refusal;
use tonic::{Request, Response, Status};

/// Prefix of packet ids.
pub const PACKET_PREFIX: &str = "pkt";

/// Longest food name.
const MAX_NAME_LEN: usize = 200;

/// Builds the store service: the reservation API on the internal listener, the
/// catalogue on the public one (and on the internal one, for the orchestrator's existence
/// check), administration on the admin listener.
pub async fn build(
    listeners: Listeners,
    settings: ParticipantSettings,
) -> anyhow::Result<Participant> {
    let mut app = Participant::build("store", listeners, settings, PACKET_PREFIX).await?;
    let api = StoreApi {
        engine: app.engine().clone(),
    };
    // Public reads count from their own pool, so they never hold a connection a reserve needs.
    let public = StoreApi {
        engine: app.public_engine().clone(),
    };
    app.app_mut()
        .add(Audience::Public, StoreServiceServer::new(public))
        .await
        .add(Audience::Internal, StoreServiceServer::new(api.clone()))
        .await
        .add(Audience::Admin, StoreAdminServiceServer::new(api))
        .await;
    Ok(app)
}

/// The store's catalogue and admin APIs.
#[derive(Debug, Clone)]
pub struct StoreApi {
    engine: Engine,
}

fn food(info: PoolInfo) -> Food {
    Food {
        food_id: info.pool,
        name: info.name,
        available: info.counts.available,
        reserved: info.counts.reserved,
        assigned: info.counts.assigned,
        created_at: Some(timestamp_from_ms(info.created_at_ms)),
        retired: info.counts.retired,
    }
}

/// Engine errors in the store's words: a pool is a food.
fn status(err: EngineError) -> Status {
    match err {
        EngineError::UnknownPool(id) => {
            Refusal::UnknownPool.status(format!("food_id {id:?} not found"))
        }
        EngineError::PoolExists(id) => {
            Status::already_exists(format!("food_id {id:?} already exists"))
        }
        other => other.into(),
    }
}

fn check_food_id(id: &str) -> Result<(), Status> {
    validate_id("food_id", id, MAX_ID_LEN).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl StoreService for StoreApi {
    async fn get_food(&self, request: Request<GetFoodRequest>) -> Result<Response<Food>, Status> {
        let req = request.into_inner();
        check_food_id(&req.food_id)?;
        let info = self.engine.pool_info(&req.food_id).await.map_err(status)?;
        Ok(Response::new(food(info)))
    }

    async fn list_foods(
        &self,
        request: Request<ListFoodsRequest>,
    ) -> Result<Response<ListFoodsResponse>, Status> {
        let req = request.into_inner();
        let (pools, next_page_token) =
            list_page(&self.engine, req.page_size, &req.page_token).await?;
        Ok(Response::new(ListFoodsResponse {
            foods: pools.into_iter().map(food).collect(),
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl StoreAdminService for StoreApi {
    async fn create_food(
        &self,
        request: Request<CreateFoodRequest>,
    ) -> Result<Response<Food>, Status> {
        let req = request.into_inner();
        check_food_id(&req.food_id)?;
        let name =
            validate_name("name", &req.name, MAX_NAME_LEN).map_err(Status::invalid_argument)?;
        let info = self
            .engine
            .create_pool(&req.food_id, name)
            .await
            .map_err(status)?;
        Ok(Response::new(food(info)))
    }

    async fn restock(&self, request: Request<RestockRequest>) -> Result<Response<Food>, Status> {
        let req = request.into_inner();
        check_food_id(&req.food_id)?;
        let info = self
            .engine
            .add_units(&req.food_id, req.count)
            .await
            .map_err(status)?;
        Ok(Response::new(food(info)))
    }
}
