//! The operator console: server-rendered HTML on the order service's admin listener.
//!
//! Pages (`/console/...`): orders with filters, search and paging; one order with its saga
//! timeline and redrive / force-fail buttons; unfinished sagas with bulk actions; stock per food
//! and agents per zone; throughput and outcomes per minute. A few lines of JavaScript refresh a
//! page's live part every 5 s; there is no build step.
//!
//! Protection is the admin API's: the admin listener's auth layer
//! ([`order_saga_platform::auth`]) lets a page through only with an admin token, sent by the
//! browser in the `saga_admin_token` cookie that the login page sets (`HttpOnly`,
//! `SameSite=Strict`, and `Secure` when the admin listener serves TLS). `GET` needs either role;
//! every action is a `POST` and needs the operator role. Actions also check that the request
//! comes from the console's own origin. Wrong tokens at the login count against the peer's
//! address like any other ([`order_saga_platform::auth::MAX_FAILURES`]).

mod views;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, RawQuery, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use order_saga_platform::auth::{self, AdminTokens, LOGIN_PATH, Role, TOKEN_COOKIE};
use order_saga_proto::{
    delivery::v1::{ListZonesRequest, delivery_service_client::DeliveryServiceClient},
    store::v1::{ListFoodsRequest, store_service_client::StoreServiceClient},
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{
    convert::{page_token, parse_page_token},
    placement::Placement,
    repo::{OrderFilter, OrderState},
};

/// Rows per page of the orders list.
const PAGE_SIZE: i64 = 50;
/// How long one console action may run (a redrive drives the saga to its end).
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pages of 500 pools read for the stock page.
const STOCK_PAGES: usize = 4;

/// What the console pages read and act on.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    placement: Placement,
    store: StoreServiceClient<Channel>,
    delivery: DeliveryServiceClient<Channel>,
    tokens: AdminTokens,
    /// The admin listener serves TLS: the login cookie is `Secure`.
    secure_cookie: bool,
}

impl Console {
    /// A console over the placement use cases, the participants' catalogue reads (`store` and
    /// `delivery`: the internal channels) and the admin tokens that may log in; with
    /// `secure_cookie` (the admin listener serves TLS) the login cookie is `Secure`.
    pub fn new(
        placement: Placement,
        store: Channel,
        delivery: Channel,
        tokens: AdminTokens,
        secure_cookie: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                placement,
                store: StoreServiceClient::new(store),
                delivery: DeliveryServiceClient::new(delivery),
                tokens,
                secure_cookie,
            }),
        }
    }

    /// The console's routes, for the admin listener.
    pub fn routes(self) -> Router {
        Router::new()
            .route(
                "/console",
                get(|| async { Redirect::to("/console/orders") }),
            )
            .route(LOGIN_PATH, get(login_page).post(login))
            .route("/console/orders", get(orders))
            .route("/console/orders/{id}", get(order))
            .route("/console/orders/{id}/{action}", post(act_on_order))
            .route("/console/unfinished", get(unfinished).post(bulk))
            .route("/console/stock", get(stock))
            .route("/console/activity", get(activity))
            .route("/console/assets/console.js", get(script))
            .route("/console/assets/console.css", get(style))
            .with_state(self)
    }

    /// The role of the caller's token (the auth layer already let it through).
    fn role(&self, headers: &HeaderMap) -> Option<Role> {
        self.inner
            .tokens
            .role(auth::http_credentials(headers).as_deref())
    }
}

/// The pairs of a query string or form body.
fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

/// The first non-empty value of `key`.
fn value(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_owned())
}

fn page(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (status, page(views::error(status, message))).into_response()
}

/// Actions must come from the console itself: a cross-site form post carries another `Origin`
/// (and, with `SameSite=Strict`, no cookie either).
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            Some(origin_host) == host
        }
    }
}

async fn login_page(RawQuery(query): RawQuery) -> Response {
    let failed = query.is_some_and(|q| q.contains("failed"));
    page(views::login(failed))
}

/// The attributes of the login cookie: never readable by scripts, never sent cross-site, and
/// only over TLS when the listener serves it.
fn cookie_attributes(secure: bool) -> &'static str {
    if secure {
        "Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/; HttpOnly; SameSite=Strict"
    }
}

/// Checks the token and sets the cookie; or, with `logout`, clears it.
async fn login(State(console): State<Console>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    if !same_origin(headers) {
        return error_page(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return error_page(StatusCode::PAYLOAD_TOO_LARGE, "form too large");
    };
    let form = pairs(&body);
    let attributes = cookie_attributes(console.inner.secure_cookie);
    let clear = format!("{TOKEN_COOKIE}=; {attributes}; Max-Age=0");
    if value(&form, "logout").is_some() {
        return ([(header::SET_COOKIE, clear)], Redirect::to(LOGIN_PATH)).into_response();
    }
    let token = value(&form, "token").unwrap_or_default();
    // The cookie carries the token as is: refuse anything that could break the header.
    let printable = token.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    let authorization = format!("Bearer {token}");
    let peer = auth::peer_ip(&parts.extensions);
    match console
        .inner
        .tokens
        .role_for_peer(peer, printable.then_some(authorization.as_str()))
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
            return error_page(StatusCode::TOO_MANY_REQUESTS, s.message());
        }
        Err(_) => return Redirect::to(&format!("{LOGIN_PATH}?failed")).into_response(),
    }
    let cookie = format!("{TOKEN_COOKIE}={token}; {attributes}");
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/console/orders"),
    )
        .into_response()
}

/// The orders list: filters, search by order id or idempotency key, pages.
async fn orders(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let q = pairs(query.unwrap_or_default().as_bytes());
    let repo = console.inner.placement.orchestrator().repo();
    let state = match value(&q, "state").as_deref() {
        None => None,
        Some("pending") => Some(OrderState::Pending),
        Some("placed") => Some(OrderState::Placed),
        Some("not_placed") => Some(OrderState::NotPlaced),
        Some(other) => {
            return error_page(StatusCode::BAD_REQUEST, &format!("unknown state {other:?}"));
        }
    };
    let since = match value(&q, "since").as_deref() {
        None => None,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => match repo.now_ms().await {
                Ok(now) => Some(now - i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
                Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
            Err(e) => return error_page(StatusCode::BAD_REQUEST, &format!("since: {e}")),
        },
    };
    let filter = OrderFilter {
        state,
        reason: value(&q, "reason"),
        food_id: value(&q, "food"),
        zone: value(&q, "zone"),
        created_since: since,
        id_or_key: value(&q, "q"),
    };
    let after = match parse_page_token(&value(&q, "after").unwrap_or_default()) {
        Ok(after) => after,
        Err(status) => return error_page(StatusCode::BAD_REQUEST, status.message()),
    };
    let mut rows = match repo.search(&filter, after, PAGE_SIZE + 1).await {
        Ok(rows) => rows,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let next = more.then(|| rows.last().map(page_token)).flatten();
    let role = console.role(&headers);
    page(views::orders(role, &q, &rows, next.as_deref()))
}

/// One order: what it holds, its saga, its timeline, and the operator's buttons.
async fn order(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let repo = console.inner.placement.orchestrator().repo();
    let record = match repo.by_id(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no order {id}")),
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let history = match repo.history(&id, 1000).await {
        Ok(history) => history,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let notice = value(&pairs(query.unwrap_or_default().as_bytes()), "notice");
    page(views::order(
        console.role(&headers),
        &record,
        &history,
        notice.as_deref(),
    ))
}

/// What an operator asked for.
#[derive(Debug, Clone, Copy)]
enum Action {
    Redrive,
    ForceFail,
    CompleteDelivery,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "redrive" => Some(Action::Redrive),
            "force-fail" => Some(Action::ForceFail),
            "complete-delivery" => Some(Action::CompleteDelivery),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Action::Redrive => "redriven",
            Action::ForceFail => "force-failed",
            Action::CompleteDelivery => "delivery completed",
        }
    }
}

impl Console {
    /// Runs `action` on one order; a sentence saying what came of it.
    async fn act(&self, action: Action, order_id: &str) -> String {
        if order_saga_platform::validate_id("order_id", order_id, crate::grpc::MAX_ID_LEN).is_err()
        {
            return format!("{order_id:?} is not an order id");
        }
        let placement = &self.inner.placement;
        let deadline = Instant::now() + ACTION_TIMEOUT;
        let done = match action {
            Action::Redrive => placement.redrive(order_id, deadline).await,
            Action::ForceFail => placement.force_fail(order_id, deadline).await,
            Action::CompleteDelivery => match placement.complete_delivery(order_id).await {
                Ok(Some(agent)) => return format!("{order_id}: delivery completed, {agent} freed"),
                Ok(None) => return format!("{order_id}: delivery was completed already"),
                Err(e) => return format!("{order_id}: {e}"),
            },
        };
        match done {
            Ok(record) => format!(
                "{order_id} {}: now {}",
                action.label(),
                record.state().as_str().to_uppercase()
            ),
            Err(e) => format!("{order_id}: {e}"),
        }
    }
}

async fn act_on_order(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    if !same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let Some(action) = Action::parse(&action) else {
        return error_page(StatusCode::NOT_FOUND, "no such action");
    };
    // Checked before anything echoes it: a crafted id (`%0A` decodes to a newline) must not
    // reach the redirect's header.
    if order_saga_platform::validate_id("order_id", &id, crate::grpc::MAX_ID_LEN).is_err() {
        return error_page(StatusCode::BAD_REQUEST, "not an order id");
    }
    let notice = console.act(action, &id).await;
    tracing::info!(order_id = %id, ?action, %notice, "console action");
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("notice", &notice)
        .finish();
    Redirect::to(&format!("/console/orders/{id}?{query}")).into_response()
}

/// Unfinished sagas, oldest first, with checkboxes for bulk actions.
async fn unfinished(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let repo = console.inner.placement.orchestrator().repo();
    let stuck = match repo.stuck(500).await {
        Ok(stuck) => stuck,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let notices: Vec<String> = pairs(query.unwrap_or_default().as_bytes())
        .into_iter()
        .filter(|(k, _)| k == "notice")
        .map(|(_, v)| v)
        .collect();
    page(views::unfinished(console.role(&headers), &stuck, &notices))
}

/// Redrives or force-fails every selected saga, one after the other.
async fn bulk(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let form = pairs(&body);
    let Some(action) = value(&form, "action").as_deref().and_then(Action::parse) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "action must be redrive or force-fail",
        );
    };
    let ids: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "order_id")
        .map(|(_, v)| v.as_str())
        .take(500)
        .collect();
    let mut notices = Vec::with_capacity(ids.len());
    if ids.is_empty() {
        notices.push("nothing selected".to_owned());
    }
    for id in ids {
        let notice = console.act(action, id).await;
        tracing::info!(order_id = %id, ?action, %notice, "console bulk action");
        notices.push(notice);
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for notice in &notices {
        query.append_pair("notice", notice);
    }
    Redirect::to(&format!("/console/unfinished?{}", query.finish())).into_response()
}

/// Packets per food and agents per zone, by state.
async fn stock(State(console): State<Console>, headers: HeaderMap) -> Response {
    let mut foods = Vec::new();
    let mut store = console.inner.store.clone();
    let mut token = String::new();
    for _ in 0..STOCK_PAGES {
        let request = ListFoodsRequest {
            page_size: 500,
            page_token: token.clone(),
        };
        match store.list_foods(request).await {
            Ok(page) => {
                let page = page.into_inner();
                foods.extend(page.foods);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            Err(status) => {
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("store: {}", status.message()),
                );
            }
        }
    }
    let mut zones = Vec::new();
    let mut delivery = console.inner.delivery.clone();
    let mut token = String::new();
    for _ in 0..STOCK_PAGES {
        let request = ListZonesRequest {
            page_size: 500,
            page_token: token.clone(),
        };
        match delivery.list_zones(request).await {
            Ok(page) => {
                let page = page.into_inner();
                zones.extend(page.zones);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            Err(status) => {
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("delivery: {}", status.message()),
                );
            }
        }
    }
    page(views::stock(console.role(&headers), &foods, &zones))
}

/// Orders finished per minute over the last 15 minutes, by outcome and reason.
async fn activity(State(console): State<Console>, headers: HeaderMap) -> Response {
    let repo = console.inner.placement.orchestrator().repo();
    let now = match repo.now_ms().await {
        Ok(now) => now,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let since = (now / 60_000 - 14) * 60_000;
    let rows = match repo.outcomes_since(since).await {
        Ok(rows) => rows,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let unfinished = repo.stuck(1000).await.map(|s| s.len()).unwrap_or_default();
    page(views::activity(
        console.role(&headers),
        since,
        &rows,
        unfinished,
    ))
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), value.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn actions_refuse_another_origin() {
        let host = (header::HOST, "127.0.0.1:50251");
        assert!(same_origin(&headers(std::slice::from_ref(&host))));
        assert!(same_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:50251")
        ])));
        assert!(!same_origin(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[(header::ORIGIN, "null")])));
    }

    #[test]
    fn form_values_are_trimmed_and_empty_ones_ignored() {
        let form = pairs(b"q=+ord-1+&state=&order_id=a&order_id=b");
        assert_eq!(value(&form, "q").as_deref(), Some("ord-1"));
        assert_eq!(value(&form, "state"), None);
        assert_eq!(form.iter().filter(|(k, _)| k == "order_id").count(), 2);
    }
}
