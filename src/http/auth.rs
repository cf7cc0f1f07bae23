//! Bearer-token check of mutating requests (POST, PUT, PATCH, DELETE) when `api.token` is set.
//! The token is compared in constant time and never logged.
//!
//! The header is read strictly ([`bearer_token`]): the scheme `Bearer` (in any case, RFC 7235),
//! one space, and a token of RFC 6750's `b64token` characters, with nothing before, between or
//! after: `Bearer  TOKEN` (two spaces) or a trailing space are refused, not trimmed. A refused
//! request is answered 401 before its body is read, and its connection is closed
//! (`limits.rs`).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;

/// Middleware: answers 401 to a mutating request without the right `Authorization: Bearer`.
pub(crate) async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let mutating = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if mutating {
        let expected = req
            .app_data::<web::Data<AppState>>()
            .map(|state| state.settings.token.expose().to_owned())
            .unwrap_or_default();
        if !expected.is_empty() {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes()))
                .unwrap_or("");
            if !token_matches(given, &expected) {
                tracing::warn!(
                    method = %req.method(),
                    path = req.path(),
                    "refused a request without a valid bearer token"
                );
                let response = HttpResponse::Unauthorized()
                    .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                    .json(json!({
                        "error": "this endpoint needs Authorization: Bearer TOKEN (api.token)",
                        "field": null,
                    }));
                return Ok(req.into_response(response));
            }
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The token of an `Authorization` header value `Bearer TOKEN` (RFC 6750 §2.1:
/// `"Bearer" SP b64token`, the scheme case-insensitive), or `None` when the value is anything
/// else: another scheme, no token, more than one space, a space or any character after the
/// token that `b64token` does not allow.
pub(crate) fn bearer_token(value: &[u8]) -> Option<&str> {
    const SCHEME: &[u8] = b"Bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = &value[SCHEME.len()..];
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let b64 = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(b);
    if body == 0 || !token[..body].iter().all(b64) {
        return None;
    }
    // Only ASCII bytes passed: this cannot fail.
    std::str::from_utf8(token).ok()
}

/// Constant-time comparison (the length of the expected token is the only thing a timing can
/// reveal).
fn token_matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, token_matches};

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer_token(b"Bearer s3cret"), Some("s3cret"));
        assert_eq!(
            bearer_token(b"bearer a-b.c_d~e+f/g=="),
            Some("a-b.c_d~e+f/g==")
        );
        for bad in [
            &b"Bearer  s3cret"[..],
            b"Bearer s3cret ",
            b"Bearer s3cret\t",
            b" Bearer s3cret",
            b"Bearer ",
            b"Bearer",
            b"Bearer ==",
            b"Bearer s3=cret",
            b"Bearer s3 cret",
            b"Basic czNjcmV0",
            b"Bearers3cret",
            b"Bearer s3cr\xc3\xa9t",
        ] {
            assert_eq!(
                bearer_token(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3creT", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}
