//! The credential an admin client sends: `authorization: Bearer <token>` on every call. The
//! servers check it (`order_saga_platform::auth`); a missing or unknown token is answered
//! `UNAUTHENTICATED`, a viewer's token on a method that changes something `PERMISSION_DENIED`.

use tonic::{Status, service::Interceptor};

/// A client interceptor that sends `authorization: Bearer <token>` with every call.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// Sends `token`; `None` (or an empty token) sends no header.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token.filter(|t| !t.is_empty()) {
            None => Ok(Self(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| "the admin token may contain only printable ASCII".to_owned()),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
