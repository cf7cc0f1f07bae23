//! Bearer-token check of mutating requests (POST, PUT, PATCH, DELETE) when `api.token` is set.
//! The token is compared in constant time and never logged.

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
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !token_matches(given.trim(), &expected) {
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

/// Constant-time comparison (the length of the expected token is the only thing a timing can
/// reveal).
fn token_matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_match_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3creT", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}
