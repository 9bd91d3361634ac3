//! Admin authentication: bearer tokens, each with a role, checked by one tower layer in front of
//! every admin service of a server.
//!
//! A request to a service whose name ends in `AdminService` must carry
//! `authorization: Bearer <token>`:
//! - no token, a malformed header, or a token the server does not know: `UNAUTHENTICATED`;
//! - a **viewer** token on a method that changes something: `PERMISSION_DENIED`. Viewers may call
//!   the read-only methods (`List*`, `Get*`); **operators** may call every admin method.
//!
//! The same tokens guard the admin listener's HTTP pages ([`HTTP_PATHS`]: the metrics scrape
//! and the operator console): `GET` needs either role, anything else the operator's. Browsers
//! may send the token in the `saga_admin_token` cookie the console's login sets. Refusals are
//! HTTP 401/403 there (a console page redirects to its login instead).
//!
//! A server configured with no token refuses every admin call: there is no default credential.
//! Tokens are kept only as SHA-256 digests, compared in constant time against every configured
//! digest. A peer that presents [`MAX_FAILURES`] wrong tokens within [`FAILURE_WINDOW`] is
//! refused (`RESOURCE_EXHAUSTED`, HTTP 429) for the rest of the window, valid token or not. On
//! the admin listener, reflection needs a token too (it describes the admin API); elsewhere the
//! public APIs, health and reflection pass through untouched. Clients send their token with
//! [`order_saga_saga::BearerToken`].

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use tonic::Status;
use tower::{Layer, Service};

/// Shortest token a server accepts in its configuration: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do on the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every admin method.
    Operator,
    /// Only the read-only admin methods (`List*`, `Get*`).
    Viewer,
}

/// Wrong tokens one peer (an IP address) may present per [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window [`MAX_FAILURES`] counts in; a peer over the limit is refused until it ends.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Peers remembered at most; beyond, the oldest windows are forgotten first.
const MAX_PEERS: usize = 10_000;

/// Failed authentications per peer, shared by every clone of one server's [`AdminTokens`].
#[derive(Debug, Default)]
struct Throttle {
    peers: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Throttle {
    /// How long `peer` is still refused, if it used up its failures.
    fn locked(&self, peer: IpAddr) -> Option<Duration> {
        let peers = self.peers.lock().ok()?;
        let (since, failures) = peers.get(&peer)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*failures >= MAX_FAILURES).then_some(left)
    }

    fn failed(&self, peer: IpAddr) {
        let Ok(mut peers) = self.peers.lock() else {
            return;
        };
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
            if peers.len() >= MAX_PEERS
                && let Some(oldest) = peers.iter().min_by_key(|(_, (since, _))| *since)
            {
                let oldest = *oldest.0;
                peers.remove(&oldest);
            }
        }
        let entry = peers.entry(peer).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    fn succeeded(&self, peer: IpAddr) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.remove(&peer);
        }
    }
}

/// The admin tokens a server accepts, and the failed attempts of its peers.
#[derive(Clone, Default)]
pub struct AdminTokens {
    digests: Arc<Vec<([u8; 32], Role)>>,
    throttle: Arc<Throttle>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a credential, not even its digest.
        f.debug_struct("AdminTokens")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The peer address tonic records on a request (plaintext or TLS).
pub fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
        .map(|addr| addr.ip())
}

impl AdminTokens {
    /// Tokens for the operator and viewer roles; either may be absent. Refuses a token shorter
    /// than [`MIN_TOKEN_LEN`] or with characters a header cannot carry.
    pub fn new(operator: Option<&str>, viewer: Option<&str>) -> Result<Self, String> {
        let mut digests = Vec::new();
        for (token, role, name) in [
            (operator, Role::Operator, "admin token"),
            (viewer, Role::Viewer, "viewer token"),
        ] {
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                continue;
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "the {name} must be at least {MIN_TOKEN_LEN} characters"
                ));
            }
            if !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "the {name} may contain only printable ASCII without spaces"
                ));
            }
            digests.push((digest(token), role));
        }
        Ok(Self {
            digests: Arc::new(digests),
            throttle: Arc::default(),
        })
    }

    /// True when no token is configured: every admin call is refused.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The role of the token in `authorization` (`Bearer <token>`), if the server knows it.
    pub fn role(&self, authorization: Option<&str>) -> Option<Role> {
        let token = authorization?
            .strip_prefix("Bearer ")
            .or_else(|| authorization?.strip_prefix("bearer "))?
            .trim();
        self.role_of(token)
    }

    /// Compares the presented token's digest with every configured one, without stopping at
    /// a match, so the answer's timing tells nothing about the tokens.
    fn role_of(&self, token: &str) -> Option<Role> {
        let presented = digest(token);
        self.digests.iter().fold(None, |found, (d, role)| {
            if ct_eq(d, &presented) {
                Some(*role)
            } else {
                found
            }
        })
    }

    /// [`AdminTokens::authorize`] for a request from `peer`: a peer that presented
    /// [`MAX_FAILURES`] wrong tokens in the current window is refused `RESOURCE_EXHAUSTED`
    /// (with a retry hint) until the window ends; each wrong token counts, a right one clears
    /// the count.
    pub fn authorize_peer(
        &self,
        peer: Option<IpAddr>,
        what: &str,
        read_only: bool,
        authorization: Option<&str>,
    ) -> Result<(), Status> {
        if let Some(left) = peer.and_then(|p| self.throttle.locked(p)) {
            return Err(throttled(left));
        }
        let verdict = self.authorize(what, read_only, authorization);
        if let Some(peer) = peer {
            match &verdict {
                // A token was presented and it is not one of ours: a guess.
                Err(s) if s.code() == tonic::Code::Unauthenticated && authorization.is_some() => {
                    self.throttle.failed(peer);
                }
                Ok(()) => self.throttle.succeeded(peer),
                Err(_) => {}
            }
        }
        verdict
    }

    /// The role of the token in `authorization` presented by `peer`, counting a wrong token
    /// against the peer as [`AdminTokens::authorize_peer`] does (the console's login).
    pub fn role_for_peer(
        &self,
        peer: Option<IpAddr>,
        authorization: Option<&str>,
    ) -> Result<Role, Status> {
        if let Some(left) = peer.and_then(|p| self.throttle.locked(p)) {
            return Err(throttled(left));
        }
        match self.role(authorization) {
            Some(role) => {
                if let Some(peer) = peer {
                    self.throttle.succeeded(peer);
                }
                Ok(role)
            }
            None => {
                if let Some(peer) = peer {
                    self.throttle.failed(peer);
                }
                Err(Status::unauthenticated("invalid admin token"))
            }
        }
    }

    /// The verdict on a request to `path` with this `authorization` header value.
    pub fn check(&self, path: &str, authorization: Option<&str>) -> Result<(), Status> {
        let Some(method) = admin_method(path) else {
            return Ok(());
        };
        self.authorize(method, is_read_only(method), authorization)
    }

    /// The verdict on `what` (a method or page, named in refusals), which changes nothing when
    /// `read_only`, for this `authorization` header value (`Bearer <token>`).
    pub fn authorize(
        &self,
        what: &str,
        read_only: bool,
        authorization: Option<&str>,
    ) -> Result<(), Status> {
        let method = what;
        if self.is_empty() {
            return Err(Status::unauthenticated(
                "the admin API is closed: this server has no admin token configured",
            ));
        }
        let Some(header) = authorization else {
            return Err(Status::unauthenticated(
                "admin methods need an `authorization: Bearer <token>` header",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not `Bearer <token>`")
            })?;
        match self.role_of(token) {
            None => Err(Status::unauthenticated("invalid admin token")),
            Some(Role::Operator) => Ok(()),
            Some(Role::Viewer) if read_only => Ok(()),
            Some(Role::Viewer) => Err(Status::permission_denied(format!(
                "{method} needs the operator role; this token is a viewer's"
            ))),
        }
    }
}

/// The refusal of a peer that guessed too often: `RESOURCE_EXHAUSTED` (its own quota, not a
/// busy server) with a retry hint for when its window ends.
fn throttled(left: Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let retry = left.max(Duration::from_secs(1));
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!(
            "too many wrong admin tokens from this address; retry in {}s",
            retry.as_secs()
        ),
        ErrorDetails::with_retry_info(Some(retry)),
    )
}

/// The method name when `path` (`/<package>.<Service>/<Method>`) is an admin service's.
fn admin_method(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    service.ends_with("AdminService").then_some(method)
}

fn is_read_only(method: &str) -> bool {
    method.starts_with("List") || method.starts_with("Get")
}

/// HTTP paths on the admin listener that need a token (prefixes).
pub const HTTP_PATHS: [&str; 2] = ["/metrics", "/console"];
/// The console's login page, open to all (it sets the cookie).
pub const LOGIN_PATH: &str = "/console/login";
/// The cookie a browser sends its admin token in.
pub const TOKEN_COOKIE: &str = "saga_admin_token";

fn is_http_admin(path: &str) -> bool {
    HTTP_PATHS.iter().any(|p| path.starts_with(p)) && path != LOGIN_PATH
}

/// The bearer token of an HTTP request: the `authorization` header, else the console cookie,
/// as an `authorization` header value.
pub fn http_credentials(headers: &http::HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        return Some(v.to_str().unwrap_or_default().to_owned());
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, token)| format!("Bearer {token}"))
}

/// The HTTP answer to a refused page: a console page sends browsers to the login, anything else
/// gets 401 (with `WWW-Authenticate`) or 403.
fn http_refusal(path: &str, status: &Status) -> http::Response<tonic::body::Body> {
    let mut builder = http::Response::builder();
    let code = match status.code() {
        tonic::Code::PermissionDenied => http::StatusCode::FORBIDDEN,
        tonic::Code::ResourceExhausted => {
            builder = builder.header(http::header::RETRY_AFTER, FAILURE_WINDOW.as_secs());
            http::StatusCode::TOO_MANY_REQUESTS
        }
        _ if path.starts_with("/console") => {
            builder = builder.header(http::header::LOCATION, LOGIN_PATH);
            http::StatusCode::SEE_OTHER
        }
        _ => {
            builder = builder.header(http::header::WWW_AUTHENTICATE, "Bearer");
            http::StatusCode::UNAUTHORIZED
        }
    };
    builder
        .status(code)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(tonic::body::Body::new(axum::body::Body::from(format!(
            "{}\n",
            status.message()
        ))))
        .expect("a valid response")
}

/// Checks admin tokens in front of a server's routes.
#[derive(Debug, Clone)]
pub struct AdminAuthLayer {
    tokens: AdminTokens,
    guard_reflection: bool,
}

impl AdminAuthLayer {
    /// A layer accepting `tokens`.
    pub fn new(tokens: AdminTokens) -> Self {
        Self {
            tokens,
            guard_reflection: false,
        }
    }

    /// Also require a token (either role) for server reflection: on the admin listener it
    /// describes the admin API, which anonymous callers need not learn.
    pub fn guard_reflection(mut self, guard: bool) -> Self {
        self.guard_reflection = guard;
        self
    }
}

impl<S> Layer<S> for AdminAuthLayer {
    type Service = AdminAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdminAuth {
            inner,
            tokens: self.tokens.clone(),
            guard_reflection: self.guard_reflection,
        }
    }
}

/// The service [`AdminAuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AdminAuth<S> {
    inner: S,
    tokens: AdminTokens,
    guard_reflection: bool,
}

/// What a gRPC path needs from the admin layer: `(what, read_only)` when a token is required.
fn grpc_requirement(path: &str, guard_reflection: bool) -> Option<(&str, bool)> {
    if let Some(method) = admin_method(path) {
        return Some((method, is_read_only(method)));
    }
    (guard_reflection && path.starts_with("/grpc.reflection.")).then_some(("reflection", true))
}

impl<S, B> Service<http::Request<B>> for AdminAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let peer = peer_ip(request.extensions());
        if is_http_admin(path) {
            let read_only = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
            let credentials = http_credentials(request.headers());
            return match self
                .tokens
                .authorize_peer(peer, path, read_only, credentials.as_deref())
            {
                Ok(()) => Box::pin(self.inner.call(request)),
                Err(status) => {
                    let response = http_refusal(path, &status);
                    Box::pin(async move { Ok(response) })
                }
            };
        }
        let Some((what, read_only)) = grpc_requirement(path, self.guard_reflection) else {
            return Box::pin(self.inner.call(request));
        };
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or_default());
        match self
            .tokens
            .authorize_peer(peer, what, read_only, authorization)
        {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => {
                // Debug, not warn: anyone who reaches the port can send these, and a log line
                // per refusal would let them flood the logs. The caller gets the status.
                tracing::debug!(
                    path = request.uri().path(),
                    code = ?status.code(),
                    "admin call refused"
                );
                Box::pin(async move { Ok(crate::refusal::refuse(request, status).await) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    const OPERATOR: &str = "operator-token-0123456789";
    const VIEWER: &str = "viewer-token-0123456789";

    fn tokens() -> AdminTokens {
        AdminTokens::new(Some(OPERATOR), Some(VIEWER)).expect("tokens")
    }

    fn code(r: Result<(), Status>) -> Option<Code> {
        r.err().map(|s| s.code())
    }

    #[test]
    fn public_health_and_reflection_need_no_token() {
        let t = AdminTokens::default();
        for path in [
            "/order.v1.OrderService/PlaceOrder",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/reservation.v1.ReservationService/Reserve",
        ] {
            assert_eq!(code(t.check(path, None)), None, "{path}");
        }
    }

    #[test]
    fn admin_calls_need_a_known_token_and_the_right_role() {
        let t = tokens();
        let force = "/order.v1.OrderAdminService/ForceFailOrder";
        let list = "/order.v1.OrderAdminService/ListOrders";
        let bearer = |s: &str| format!("Bearer {s}");
        assert_eq!(code(t.check(force, None)), Some(Code::Unauthenticated));
        assert_eq!(
            code(t.check(force, Some(OPERATOR))),
            Some(Code::Unauthenticated)
        );
        assert_eq!(
            code(t.check(force, Some(&bearer("operator-token-wrong-guess")))),
            Some(Code::Unauthenticated)
        );
        assert_eq!(code(t.check(force, Some(&bearer(OPERATOR)))), None);
        assert_eq!(code(t.check(list, Some(&bearer(VIEWER)))), None);
        assert_eq!(
            code(t.check(force, Some(&bearer(VIEWER)))),
            Some(Code::PermissionDenied)
        );
        assert_eq!(
            code(t.check("/store.v1.StoreAdminService/Restock", Some(&bearer(VIEWER)))),
            Some(Code::PermissionDenied)
        );
    }

    #[test]
    fn a_server_without_tokens_refuses_every_admin_call() {
        let t = AdminTokens::new(None, Some("")).expect("no tokens");
        assert!(t.is_empty());
        let refused = t
            .check(
                "/order.v1.OrderAdminService/ListOrders",
                Some("Bearer anything-at-all-here"),
            )
            .expect_err("closed");
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(refused.message().contains("no admin token"));
    }

    #[test]
    fn pages_take_the_header_or_the_console_cookie_and_gets_are_reads() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(http_credentials(&headers), None);
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_str(&format!("theme=dark; {TOKEN_COOKIE}={VIEWER}"))
                .expect("header"),
        );
        let from_cookie = http_credentials(&headers);
        assert_eq!(from_cookie, Some(format!("Bearer {VIEWER}")));
        let t = tokens();
        assert_eq!(
            code(t.authorize("/console", true, from_cookie.as_deref())),
            None
        );
        assert_eq!(
            code(t.authorize("/console/orders/x/redrive", false, from_cookie.as_deref())),
            Some(Code::PermissionDenied)
        );
        assert!(is_http_admin("/metrics") && is_http_admin("/console/orders"));
        assert!(!is_http_admin(LOGIN_PATH) && !is_http_admin("/order.v1.OrderService/GetOrder"));
        assert_eq!(
            http_refusal("/console", &Status::unauthenticated("no")).status(),
            http::StatusCode::SEE_OTHER
        );
        assert_eq!(
            http_refusal("/metrics", &Status::unauthenticated("no")).status(),
            http::StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn weak_or_unprintable_tokens_are_refused_in_configuration() {
        assert!(AdminTokens::new(Some("short"), None).is_err());
        assert!(AdminTokens::new(Some("has a space in it, sadly"), None).is_err());
        assert!(AdminTokens::new(None, Some("tab\tinside-the-token")).is_err());
    }

    #[test]
    fn the_interceptor_sends_the_header_the_layer_reads() {
        use tonic::service::Interceptor;
        let mut interceptor = order_saga_saga::BearerToken::new(Some(OPERATOR)).expect("token");
        let request = interceptor
            .call(tonic::Request::new(()))
            .expect("intercept");
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            code(tokens().check(
                "/order.v1.OrderAdminService/RedriveOrder",
                header.as_deref()
            )),
            None
        );
        let debug = format!("{interceptor:?} {:?}", tokens());
        assert!(
            !debug.contains(OPERATOR) && !debug.contains(VIEWER),
            "{debug}"
        );
    }
}
