//! `GET /`: the dashboard, one self-contained page (inline CSS and JavaScript, no external
//! assets) embedded in the binary. It subscribes to `/api/events/stream` and renders every
//! snapshot it receives.

use actix_web::http::header;
use actix_web::HttpResponse;

/// The page.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

pub(crate) async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}
