//! WHIP and WHEP over HTTP: the media plane's thin shell. Each request is authenticated and
//! authorised by the control plane, then handed to [`crate::media::MediaPlane`].
//!
//! A session's `Location` is `/whip/{room}/{session}` (or `/whep/...`); the session id is 128
//! random bits. PATCH, DELETE and layout changes are accepted only from the participant who
//! opened the session (anyone else gets 404, as if it did not exist), and only with a token that
//! would be allowed to open it now: the same grant, room limit and clearance.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::cluster;
use super::error::{ApiError, ApiResult, bearer, json_body};
use super::sessions::{MediaRoutes, Owner, room_key};
use super::state::AppState;
use crate::control::model::{Room, shown};
use crate::control::policy::{Principal, RoomRole};
use crate::control::token::Claims;
use crate::media::{Layout, SessionId, Source};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whep/{room}", post(whep))
        .route(
            "/whip/{room}/{session}",
            axum::routing::patch(trickle).delete(end),
        )
        .route(
            "/whep/{room}/{session}",
            axum::routing::patch(trickle).delete(end),
        )
        .route("/whep/{room}/{session}/layout", post(layout))
        .route("/api/rooms/{room}", get(room_info))
}

fn media(s: &AppState) -> ApiResult<&MediaRoutes> {
    s.media.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the media plane is not running",
        )
        .retry_after(5)
    })
}

/// The largest offer accepted. A browser's offer for the most slots and audio lines allowed is a
/// fraction of it.
pub const MAX_OFFER_BYTES: usize = 256 * 1024;

fn sdp_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<String> {
    if body.len() > MAX_OFFER_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("an offer may have at most {MAX_OFFER_BYTES} bytes"),
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err(ApiError::bad_request(
            "the offer must be sent as application/sdp",
        ));
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_sdp", "the offer is not UTF-8"))
}

/// Authenticates and authorises a join of `room`; 404 for a room not registered in the
/// bearer's organisation.
fn join(
    s: &AppState,
    headers: &HeaderMap,
    action: &'static str,
    role: RoomRole,
    room: &str,
) -> ApiResult<(Principal, Claims, Room)> {
    let target = format!("room:{room}");
    let (p, claims) = s
        .control
        .authenticate_claims(bearer(headers), action, &target)?;
    let r = s
        .control
        .join(action, &p, role, room)?
        .ok_or_else(|| ApiError::not_found(format!("room {} is not registered", shown(room))))?;
    Ok((p, claims, r))
}

#[derive(Deserialize)]
struct WhipQuery {
    source: Option<Source>,
}

async fn whip(
    State(s): State<Arc<AppState>>,
    Path(room): Path<String>,
    query: Result<Query<WhipQuery>, axum::extract::rejection::QueryRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let m = media(&s)?;
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!("source must be camera, screen or audio: {e}"))
    })?;
    let (p, claims, _) = join(&s, &headers, "whip", RoomRole::Publish, &room)?;
    if let Some(r) = cluster::elsewhere(&s, room_key(&p.org, &room), &uri).await? {
        return Ok(r);
    }
    let offer = sdp_body(&headers, &body)?;
    let answer = m
        .plane
        .publish(
            room_key(&p.org, &room),
            p.user.clone(),
            q.source.unwrap_or(Source::Camera),
            &offer,
            Owner::new(claims, &room, false).tag(),
        )
        .await?;
    Ok(created(&room, false, answer))
}

#[derive(Deserialize)]
struct WhepQuery {
    layout: Option<Layout>,
}

async fn whep(
    State(s): State<Arc<AppState>>,
    Path(room): Path<String>,
    query: Result<Query<WhepQuery>, axum::extract::rejection::QueryRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let m = media(&s)?;
    let Query(q) =
        query.map_err(|e| ApiError::bad_request(format!("layout must be grid or screen: {e}")))?;
    let (p, claims, registered) = join(&s, &headers, "whep", RoomRole::Subscribe, &room)?;
    if let Some(r) = cluster::elsewhere(&s, room_key(&p.org, &room), &uri).await? {
        return Ok(r);
    }
    let offer = sdp_body(&headers, &body)?;
    let answer = m
        .plane
        .subscribe(
            room_key(&p.org, &room),
            p.user.clone(),
            q.layout.unwrap_or(Layout::Grid),
            // Chat in a secure room is relayed live and kept nowhere.
            !registered.secure_view,
            &offer,
            Owner::new(claims, &room, true).tag(),
        )
        .await?;
    Ok(created(&room, true, answer))
}

fn created(room: &str, whep: bool, answer: crate::media::SessionAnswer) -> Response {
    let kind = if whep { "whep" } else { "whip" };
    let location = format!("/{kind}/{room}/{}", answer.session);
    let mut r = (StatusCode::CREATED, answer.answer_sdp).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    r
}

/// The session named in the path, if the bearer's participant opened it and the bearer's token
/// may take the session's role in its room now (grant, room limit, clearance). Audited under
/// `action`, allowed or denied.
fn owned(
    s: &AppState,
    headers: &HeaderMap,
    room: &str,
    session: &str,
    whep: bool,
    action: &'static str,
) -> ApiResult<SessionId> {
    let target = format!("room:{room}");
    let p = s.control.authenticate(bearer(headers), action, &target)?;
    let id = SessionId::parse(session).ok_or_else(|| ApiError::not_found("no such session"))?;
    let m = media(s)?;
    let role = m
        .role_of(&id, &p, room, whep)
        .ok_or_else(|| ApiError::not_found("no such session"))?;
    s.control
        .join(action, &p, role, room)?
        .ok_or_else(|| ApiError::not_found("no such session"))?;
    Ok(id)
}

fn is_whep(uri: &axum::http::Uri) -> bool {
    uri.path().starts_with("/whep/")
}

/// The audit action of a session request: `whip.end`, `whep.trickle`, ...
fn session_action(whep: bool, what: &str) -> &'static str {
    match (whep, what) {
        (false, "trickle") => "whip.trickle",
        (true, "trickle") => "whep.trickle",
        (false, _) => "whip.end",
        (true, _) => "whep.end",
    }
}

async fn trickle(
    State(s): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let whep = is_whep(&uri);
    let action = session_action(whep, "trickle");
    let id = owned(&s, &headers, &room, &session, whep, action)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .to_ascii_lowercase()
        .starts_with("application/trickle-ice-sdpfrag")
    {
        return Err(ApiError::bad_request(
            "trickle needs application/trickle-ice-sdpfrag",
        ));
    }
    let frag = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the fragment is not UTF-8"))?;
    media(&s)?.plane.trickle(&id, &frag).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn end(
    State(s): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let whep = is_whep(&uri);
    let id = owned(
        &s,
        &headers,
        &room,
        &session,
        whep,
        session_action(whep, "end"),
    )?;
    media(&s)?.plane.end(&id).await?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutBody {
    layout: Layout,
    #[serde(default)]
    max_height: Option<u32>,
}

async fn layout(
    State(s): State<Arc<AppState>>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let id = owned(&s, &headers, &room, &session, true, "whep.layout")?;
    let req: LayoutBody = json_body(&body)?;
    media(&s)?
        .plane
        .set_layout(&id, req.layout, req.max_height)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn room_info(
    State(s): State<Arc<AppState>>,
    Path(room): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let target = format!("room:{room}");
    let p = s
        .control
        .authenticate(bearer(&headers), "room.inspect", &target)?;
    let registered = s
        .control
        .join("room.inspect", &p, RoomRole::Inspect, &room)?
        .ok_or_else(|| ApiError::not_found(format!("room {} is not registered", shown(&room))))?;
    if let Some(r) = cluster::elsewhere(&s, room_key(&p.org, &room), &uri).await? {
        return Ok(r);
    }
    let live = match &s.media {
        Some(m) => m.plane.room_info(&room_key(&p.org, &room)).await,
        None => None,
    };
    let (publishers, subscribers, speaker) = live
        .map(|i| (i.publishers, i.subscribers, i.speaker))
        .unwrap_or_default();
    let recording = s
        .recordings
        .as_ref()
        .and_then(|r| r.running(&room_key(&p.org, &room)));
    Ok(Json(json!({
        "room": room,
        "classification": registered.classification,
        "secure_view": registered.secure_view,
        "publishers": publishers,
        "subscribers": subscribers,
        "speaker": speaker,
        "recording": recording,
    }))
    .into_response())
}
