//! `GET /`: the dashboard, one self-contained page (inline CSS and JavaScript, no external
//! assets, under 100 KB: a unit test holds it there) embedded in the binary. It subscribes to
//! `/api/events/stream` and renders every snapshot it receives; draws the last fifteen
//! minutes from `/api/dashboard/history` as inline SVG charts (each series with its own dash
//! pattern and a text label, so colour is never the only cue); says at the top, in an
//! `aria-live` banner, when Redis is unreachable, since when, and how the outbox drains after;
//! and offers the common actions as `<button>`s (retry, delete and promote tasks, start and stop
//! the bot session, send an admin message) with the API token kept in the tab's
//! `sessionStorage`, and detail views of a task, a session's events, the locks held and the
//! peers.

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The most the page may weigh: it loads at once over a slow link.
    const MAX_PAGE_BYTES: usize = 100 * 1024;

    #[test]
    fn the_page_stays_small_and_self_contained() {
        assert!(PAGE.len() < MAX_PAGE_BYTES, "{} bytes", PAGE.len());
        assert!(!PAGE.contains("<script src") && !PAGE.contains("<link"));
    }
}
