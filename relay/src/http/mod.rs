//! The HTTP shell: the router, health, readiness, metrics and the web client; the admin routes
//! ([`admin`]), WHIP and WHEP ([`media`]) and the sessions they own ([`sessions`]), urgent
//! notices ([`notices`]), guests of the demo organisation ([`demo`]), the JSON errors
//! and the request parts every route reads alike ([`error`]).
//!
//! Handlers stay thin: parse, ask [`Control`], answer. Every error is the contract's JSON
//! `{"error": code, "message": text}`.

pub mod admin;
pub mod cluster;
pub mod demo;
pub mod error;
pub mod media;
pub mod notice_hub;
pub mod notices;
pub mod recordings;
pub mod sessions;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use error::{ApiError, ApiResult, bearer, json_body};
pub use state::{AppState, Info, Readiness};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/info", get(info))
        .merge(admin::routes())
        .merge(cluster::routes())
        .merge(media::routes())
        .merge(notices::routes())
        .merge(recordings::routes())
        .merge(demo::routes())
        .route("/", get(web_client))
        .fallback(|| async { ApiError::not_found("no such resource") })
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let waiting = s.readiness.waiting();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            format!("waiting for: {}", waiting.join(", ")),
        )
        .retry_after(1)
        .into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.control.metrics().render(),
    )
        .into_response()
}

async fn info(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<axum::Json<Info>> {
    let p = s.control.authenticate(bearer(&headers), "info", "info")?;
    s.control.allow("info", &p, "info");
    Ok(axum::Json(s.info.clone()))
}

/// The web client: publish and watch a meeting from a browser (WHIP/WHEP).
async fn web_client() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("../web/index.html"),
    )
        .into_response()
}
