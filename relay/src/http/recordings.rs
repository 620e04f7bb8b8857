//! A room's recording over HTTP: `POST /api/rooms/{room}/recordings` starts it,
//! `DELETE /api/rooms/{room}/recordings/{id}` stops it and answers with the stored file. Both
//! take the `record` grant and what watching the room takes, never in a `secure_view` room;
//! both are audited (by the control plane's join check, and the recording's end).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::cluster;
use super::error::{ApiError, ApiResult, bearer, json_body};
use super::sessions::room_key;
use super::state::AppState;
use crate::control::model::{Room, shown};
use crate::control::policy::{Principal, RoomRole};
use crate::record::muxer::Kind;
use crate::recordings::{RecordingError, Recordings, Start};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/rooms/{room}/recordings", post(start))
        .route("/api/rooms/{room}/recordings/{id}", delete(stop))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    kind: String,
}

fn recordings(s: &AppState) -> ApiResult<&Arc<Recordings>> {
    s.recordings.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "recording is not running",
        )
        .retry_after(5)
    })
}

/// The bearer, allowed to record `room` (audited under `action`).
fn allowed(
    s: &AppState,
    headers: &HeaderMap,
    action: &'static str,
    room: &str,
) -> ApiResult<(Principal, Room)> {
    let target = format!("room:{room}");
    let p = s.control.authenticate(bearer(headers), action, &target)?;
    let registered = s
        .control
        .join(action, &p, RoomRole::Record, room)?
        .ok_or_else(|| ApiError::not_found(format!("room {} is not registered", shown(room))))?;
    Ok((p, registered))
}

impl From<RecordingError> for ApiError {
    fn from(e: RecordingError) -> ApiError {
        if let RecordingError::Failed(detail) = &e {
            // The detail (paths, the database's words) stays in the log.
            tracing::error!(error = %detail, "a recording failed");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the recording could not be made; the relay's log says why",
            );
        }
        let (status, code) = match &e {
            RecordingError::Running => (StatusCode::CONFLICT, "recording"),
            RecordingError::Empty => (StatusCode::CONFLICT, "room_empty"),
            RecordingError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RecordingError::Quota(_) => (StatusCode::FORBIDDEN, "quota"),
            RecordingError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

async fn start(
    State(s): State<Arc<AppState>>,
    Path(room): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: StartBody = json_body(&body)?;
    let kind = Kind::parse(&req.kind)
        .ok_or_else(|| ApiError::bad_request("kind is \"meeting\" or \"audio\""))?;
    let (p, registered) = allowed(&s, &headers, "recording.start", &room)?;
    let key = room_key(&p.org, &room);
    // A room is recorded where its sessions are: on its home node.
    if let Some(r) = cluster::elsewhere(&s, key.clone(), &uri).await? {
        return Ok(r);
    }
    let id = recordings(&s)?
        .start(Start {
            org: &p.org,
            room: &room,
            room_key: &key,
            owner: &p.user,
            device: &p.device,
            classification: registered.classification,
            kind,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn stop(
    State(s): State<Arc<AppState>>,
    Path((room, id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (p, _) = allowed(&s, &headers, "recording.stop", &room)?;
    let key = room_key(&p.org, &room);
    if let Some(r) = cluster::elsewhere(&s, key.clone(), &uri).await? {
        return Ok(r);
    }
    let out = recordings(&s)?.stop(&key, &id).await?;
    Ok(Json(json!({
        "file": out.file.id,
        "name": out.file.name,
        "size": out.file.size,
        "duration_s": out.duration_ms as f64 / 1000.0,
    }))
    .into_response())
}
