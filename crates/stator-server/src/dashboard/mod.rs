//! The web dashboard: a page, a script and a style sheet compiled into the binary.
//!
//! The assets are public and hold no data; the script reads everything through the
//! `/v1` API with the bearer token the user typed into the login form or `stator up`
//! put in the URL fragment (`/ui/#token=...`: a fragment never reaches a server, a log
//! or a `Referer`). The script keeps the token in the tab's `sessionStorage` and takes
//! it out of the address bar. The event feed is `/v1/events` read with `fetch` (an
//! `EventSource` cannot send the token). Read-only unless the user turns actions on;
//! drain and delete then ask for confirmation.
//!
//! No build step: plain JavaScript, no library, no CDN.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Where the dashboard lives.
pub const DASHBOARD_PATH: &str = "/ui/";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Only this origin's scripts, styles and API; no framing (clickjacking of the drain
/// button), no referrer.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's URL on a server at `base_url`, with the token in the fragment.
pub fn url_with_token(base_url: &str, token: &str) -> String {
    format!(
        "{}{DASHBOARD_PATH}#token={token}",
        base_url.trim_end_matches('/')
    )
}

/// The dashboard's routes (no token needed: the assets hold no data).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        // A redirect keeps the fragment: `http://api/#token=..` lands on the page too.
        .route("/", get(|| async { Redirect::temporary(DASHBOARD_PATH) }))
        .route("/ui", get(|| async { Redirect::temporary(DASHBOARD_PATH) }))
        .route(
            DASHBOARD_PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Assets change with the binary; revalidating costs one request per load.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_in_the_fragment_never_the_query() {
        let url = url_with_token("http://127.0.0.1:7070/", "abc");
        assert_eq!(url, "http://127.0.0.1:7070/ui/#token=abc");
        assert!(!url.contains('?'));
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("src=\"app.js\""));
        assert!(INDEX_HTML.contains("href=\"app.css\""));
        for asset in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
    }
}
