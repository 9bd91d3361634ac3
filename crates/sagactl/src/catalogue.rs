//! The catalogue and the fleet: foods, packets, agents, availability, and the demo seed.

use order_saga_proto::{
    delivery::v1::{
        AddAgentsRequest, ListZonesRequest, Zone,
        delivery_admin_service_client::DeliveryAdminServiceClient,
        delivery_service_client::DeliveryServiceClient,
    },
    store::v1::{
        CreateFoodRequest, Food, ListFoodsRequest, RestockRequest,
        store_admin_service_client::StoreAdminServiceClient,
        store_service_client::StoreServiceClient,
    },
};

use tonic::transport::Channel;

use crate::client::{AdminApi, Urls, status_error, table};

/// Adds a food to the catalogue.
pub async fn create_food(urls: &Urls, food_id: String, name: String) -> anyhow::Result<()> {
    let mut client = StoreAdminServiceClient::new(urls.admin(AdminApi::Store).await?);
    let food = client
        .create_food(CreateFoodRequest { food_id, name })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("created food {} ({})", food.food_id, food.name);
    Ok(())
}

/// Adds packets to a food.
pub async fn restock(urls: &Urls, food_id: String, count: i64) -> anyhow::Result<()> {
    let mut client = StoreAdminServiceClient::new(urls.admin(AdminApi::Store).await?);
    let f = client
        .restock(RestockRequest { food_id, count })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{}: {} available, {} reserved, {} assigned",
        f.food_id, f.available, f.reserved, f.assigned
    );
    Ok(())
}

/// Adds agents to a zone (created if new).
pub async fn add_agents(urls: &Urls, zone: String, count: i64) -> anyhow::Result<()> {
    let mut client = DeliveryAdminServiceClient::new(urls.admin(AdminApi::Delivery).await?);
    let z = client
        .add_agents(AddAgentsRequest { zone, count })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "{}: {} available, {} reserved, {} assigned",
        z.zone, z.available, z.reserved, z.assigned
    );
    Ok(())
}

/// Every food with its packet counts, following the page tokens.
pub async fn list_foods(store: &mut StoreServiceClient<Channel>) -> anyhow::Result<Vec<Food>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = store
            .list_foods(ListFoodsRequest {
                page_size: 500,
                page_token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        out.extend(page.foods);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every zone with its agent counts, following the page tokens.
pub async fn list_zones(
    delivery: &mut DeliveryServiceClient<Channel>,
) -> anyhow::Result<Vec<Zone>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = delivery
            .list_zones(ListZonesRequest {
                page_size: 500,
                page_token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        out.extend(page.zones);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Packets per food, and with `zones_too` agents per zone, by state.
pub async fn show_availability(urls: &Urls, zones_too: bool) -> anyhow::Result<()> {
    let mut store = StoreServiceClient::new(urls.connect(&urls.store).await?);
    let foods = list_foods(&mut store).await?;
    let mut t = table(&["food", "name", "available", "reserved", "assigned"]);
    for f in &foods {
        t.add_row(vec![
            f.food_id.clone(),
            f.name.clone(),
            f.available.to_string(),
            f.reserved.to_string(),
            f.assigned.to_string(),
        ]);
    }
    println!("{t}");
    if zones_too {
        let mut delivery = DeliveryServiceClient::new(urls.connect(&urls.delivery).await?);
        let zones = list_zones(&mut delivery).await?;
        let mut t = table(&["zone", "available", "reserved", "assigned"]);
        for z in &zones {
            t.add_row(vec![
                z.zone.clone(),
                z.available.to_string(),
                z.reserved.to_string(),
                z.assigned.to_string(),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}

/// The demo catalogue `make run` seeds.
const DEMO_FOODS: &[(&str, &str, i64)] = &[
    ("margherita", "Pizza Margherita", 20),
    ("pad-thai", "Pad Thai", 10),
    ("ramen", "Tonkotsu Ramen", 5),
];
const DEMO_ZONES: &[(&str, i64)] = &[("north", 5), ("south", 3)];

/// Creates the demo catalogue and fleet if the store has no food yet.
pub async fn seed(urls: &Urls) -> anyhow::Result<()> {
    let foods = StoreServiceClient::new(urls.connect(&urls.store).await?)
        .list_foods(ListFoodsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .foods;
    if !foods.is_empty() {
        println!("store already has foods; not seeding");
        return Ok(());
    }
    let mut admin = StoreAdminServiceClient::new(urls.admin(AdminApi::Store).await?);
    for (id, name, count) in DEMO_FOODS {
        admin
            .create_food(CreateFoodRequest {
                food_id: (*id).into(),
                name: (*name).into(),
            })
            .await
            .map_err(status_error)?;
        admin
            .restock(RestockRequest {
                food_id: (*id).into(),
                count: *count,
            })
            .await
            .map_err(status_error)?;
    }
    let mut delivery = DeliveryAdminServiceClient::new(urls.admin(AdminApi::Delivery).await?);
    for (zone, count) in DEMO_ZONES {
        delivery
            .add_agents(AddAgentsRequest {
                zone: (*zone).into(),
                count: *count,
            })
            .await
            .map_err(status_error)?;
    }
    println!(
        "seeded {} foods and {} zones",
        DEMO_FOODS.len(),
        DEMO_ZONES.len()
    );
    Ok(())
}
