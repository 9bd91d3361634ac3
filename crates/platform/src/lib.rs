//! Plumbing shared by every order-saga service, so each service crate holds only its own logic:
//!
//! - [`db`]: one connection entry point for both backends (PostgreSQL in production, SQLite as
//!   the embedded default) over sqlx's `Any` driver, the few SQL fragments that differ between
//!   them, embedded migrations, and classification of database errors by meaning.
//! - [`telemetry`]: `tracing` set-up, optional OpenTelemetry export over OTLP, and W3C trace
//!   context propagation on every gRPC call so one order is one trace across services.
//! - [`app`]: the application shell of every service: a listener per audience (public,
//!   internal, admin), a background loop, graceful shutdown.
//! - [`server`]: the gRPC server stack of each listener (health, reflection, timeouts, TLS,
//!   admission control).
//! - [`group_commit`]: requests that arrive while a transaction is in flight share the next
//!   one (one commit for many), with a one-by-one fallback when a batch fails as a whole.
//! - [`tls`]: service identity: mutual TLS on the internal listener, the cluster CA that
//!   issues the certificates.
//! - [`auth`]: bearer tokens with a role (operator, viewer) for the admin services, checked by
//!   one layer per server, and the client interceptor that sends them.
//! - [`admission`]: one bounded FIFO admission queue per server; overload is answered
//!   `UNAVAILABLE` with a retry hint, never a code a saga reads as final.

pub mod admission;
pub mod app;
pub mod auth;
pub mod db;
pub mod failpoints;
pub mod group_commit;
pub mod metrics;
mod refusal;
pub mod server;
pub mod telemetry;
pub mod testing;
pub mod tls;

use std::time::Duration;

/// Parses a human duration such as `30s`, `250ms` or `2m` (for clap value parsers).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Checks an identifier supplied by a client: 1 to `max` characters of ASCII letters, digits,
/// `-`, `_`, `.` or `:`. Returns a message naming the field on failure, for `INVALID_ARGUMENT`.
pub fn validate_id(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > max {
        return Err(format!("{field} must be at most {max} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(format!(
            "{field} may contain only ASCII letters, digits, '-', '_', '.' and ':'"
        ));
    }
    Ok(())
}

/// Checks a display name supplied by a client and returns it trimmed: 1 to `max` characters
/// after trimming, with no control characters (no newlines, escapes or NULs that would forge
/// log lines or break a terminal). Returns a message naming the field on failure, for
/// `INVALID_ARGUMENT`.
pub fn validate_name<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, String> {
    let name = value.trim();
    if name.is_empty() || name.chars().count() > max {
        return Err(format!("{field} must be 1 to {max} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_free_of_control_characters() {
        assert_eq!(
            validate_name("name", "  Margherita ", 200),
            Ok("Margherita")
        );
        assert_eq!(
            validate_name("name", "Crème brûlée 🍮", 200),
            Ok("Crème brûlée 🍮")
        );
        assert!(validate_name("name", "   ", 200).is_err());
        assert!(validate_name("name", &"é".repeat(201), 200).is_err());
        for bad in ["a\nb", "a\u{1b}[31mb", "a\0b", "a\u{7f}b", "a\u{85}b"] {
            let err = validate_name("name", bad, 200).expect_err(bad);
            assert!(err.contains("control"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn ids_are_checked_by_length_and_alphabet() {
        assert!(validate_id("food_id", "margherita-1", 64).is_ok());
        assert!(
            validate_id("food_id", "", 64)
                .expect_err("empty id")
                .contains("food_id")
        );
        assert!(validate_id("food_id", &"x".repeat(65), 64).is_err());
        assert!(validate_id("food_id", "drop table;", 64).is_err());
    }

    #[test]
    fn durations_parse_humanly() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("soon").is_err());
    }
}
