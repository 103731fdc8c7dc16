//! The web chat UI and `unbroken.js`, embedded in the binary (no CDN, no build step).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../../../web/index.html");
const APP_JS: &str = include_str!("../../../../web/app.js");
const STYLE_CSS: &str = include_str!("../../../../web/style.css");
const SDK: &str = include_str!("../../../../web/unbroken.js");
const SDK_SSE: &str = include_str!("../../../../web/sse.js");

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET /`: the chat page.
pub async fn index() -> impl IntoResponse {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /app.js`: the page's script.
pub async fn app_js() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /style.css`.
pub async fn style_css() -> impl IntoResponse {
    file("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /sdk/unbroken.js`: the browser client as an ES module.
pub async fn sdk() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", SDK)
}

/// `GET /sdk/sse.js`: the SSE parser `unbroken.js` imports.
pub async fn sdk_sse() -> impl IntoResponse {
    file("text/javascript; charset=utf-8", SDK_SSE)
}
