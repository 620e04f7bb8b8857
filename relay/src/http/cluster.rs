//! The cluster, as the HTTP shell sees it: requests for a room homed on another node answer
//! `307 Temporary Redirect` there (RFC 9725 allows it for WHIP, and WHEP follows WHIP), and
//! `GET /api/cluster` shows the nodes and the rooms' homes to an admin.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::error::{ApiError, ApiResult, bearer};
use super::sessions::room_key;
use super::state::AppState;
use crate::cluster::{ClusterError, Route};
use crate::control::model::shown;
use crate::control::policy::RoomRole;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/rooms/{room}/home", get(home).options(home_preflight))
}

fn unavailable(e: ClusterError) -> ApiError {
    tracing::warn!(error = %e, "the room directory did not answer");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster_unavailable",
        format!("the cluster cannot place the room now: {e}"),
    )
    .retry_after(1)
}

/// `None` when the request for `room` (`org/room`) is served here; else the answer that sends
/// it to the room's home node: the same path and query on the home's public URL.
pub async fn elsewhere(s: &AppState, room: String, uri: &Uri) -> ApiResult<Option<Response>> {
    let Some(cluster) = s.cluster.clone() else {
        return Ok(None);
    };
    let route = tokio::task::spawn_blocking(move || cluster.route(&room))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(unavailable)?;
    let Route::Elsewhere(home) = route else {
        return Ok(None);
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let location = format!("{home}{path}");
    let mut r = (
        StatusCode::TEMPORARY_REDIRECT,
        Json(json!({ "error": "elsewhere", "message": "the room is served by another node", "location": location })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(Some(r))
}

/// The `Origin` of a request when it is a live node of the cluster: a page served by another
/// node may ask this one where a room lives (the page of a node that died does, to move on).
fn node_origin(s: &AppState, headers: &HeaderMap) -> Option<HeaderValue> {
    let cluster = s.cluster.as_ref()?;
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    cluster.is_node_url(o).then(|| origin.clone())
}

/// Lets the pages of the cluster's other nodes ask `GET /api/rooms/{room}/home` with a token.
fn allow_origin(r: &mut Response, origin: Option<HeaderValue>, preflight: bool) {
    let h = r.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    let Some(origin) = origin else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
}

async fn home_preflight(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    allow_origin(&mut r, node_origin(&s, &headers), true);
    r
}

/// `GET /api/rooms/{room}/home`: where the room's sessions are served, for a client that
/// cannot follow a redirect with its token (a page's `fetch` drops it across origins): `url` is
/// the home node's public URL (`null` on a relay that is no cluster), `nodes` the live nodes'.
async fn home(
    State(s): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    let origin = node_origin(&s, &headers);
    let mut r = home_of(&s, &room, &headers)
        .await
        .map_or_else(IntoResponse::into_response, IntoResponse::into_response);
    allow_origin(&mut r, origin, false);
    r
}

async fn home_of(
    s: &AppState,
    room: &str,
    headers: &HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let target = format!("room:{room}");
    let p = s
        .control
        .authenticate(bearer(headers), "room.inspect", &target)?;
    s.control
        .join("room.inspect", &p, RoomRole::Inspect, room)?
        .ok_or_else(|| ApiError::not_found(format!("room {} is not registered", shown(room))))?;
    let Some(cluster) = s.cluster.clone() else {
        return Ok(Json(json!({ "url": null, "nodes": [] })));
    };
    let key = room_key(&p.org, room);
    let (url, nodes) = tokio::task::spawn_blocking(move || {
        cluster.home_url(&key).map(|u| (u, cluster.node_urls()))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(unavailable)?;
    Ok(Json(json!({ "url": url, "nodes": nodes })))
}

async fn cluster(State(s): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Response> {
    let p = s
        .control
        .authenticate(bearer(&headers), "cluster.inspect", "cluster")?;
    s.control.admin("cluster.inspect", &p, &p.org, "cluster")?;
    let Some(cluster) = s.cluster.clone() else {
        return Ok(Json(json!({ "node": null, "nodes": [], "rooms": [] })).into_response());
    };
    let me = cluster.node_id().to_string();
    let (nodes, rooms) = tokio::task::spawn_blocking(move || cluster.view())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(unavailable)?;
    // Rooms are named org/room: an admin sees its own organisation's.
    let prefix = format!("{}/", p.org);
    let rooms: Vec<_> = rooms
        .into_iter()
        .filter_map(|mut r| {
            r.room = r.room.strip_prefix(&prefix)?.to_string();
            Some(r)
        })
        .collect();
    Ok(Json(json!({ "node": me, "nodes": nodes, "rooms": rooms })).into_response())
}
