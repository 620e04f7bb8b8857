//! The admin routes: registry changes, token minting, audit checks, each for the bearer's own
//! organisation and within its clearance and room limit.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ApiResult, bearer, json_body};
use super::state::AppState;
use crate::control::admin::{AdminChange, Change};
use crate::control::model::DeviceKind;
use crate::control::policy::Principal;
use crate::control::{MintRequest, audit};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/admin/orgs", post(admin_org_add))
        .route("/api/admin/users", post(admin_user_add))
        .route(
            "/api/admin/users/{name}",
            axum::routing::delete(admin_user_remove).patch(admin_user_set),
        )
        .route("/api/admin/devices", post(admin_device_add))
        .route("/api/admin/devices/{id}/revoke", post(admin_device_revoke))
        .route("/api/admin/rooms", post(admin_room_add))
        .route("/api/admin/tokens", post(admin_token))
        .route("/api/admin/tokens/{id}/revoke", post(admin_token_revoke))
        .route(
            "/api/admin/audit/verify",
            axum::routing::get(admin_audit_verify),
        )
}

/// Authenticates an admin request of the token's own organisation.
fn admin(
    s: &AppState,
    headers: &HeaderMap,
    action: &'static str,
    target: &str,
) -> ApiResult<Principal> {
    let p = s.control.authenticate(bearer(headers), action, target)?;
    s.control.admin(action, &p, &p.org, target)?;
    Ok(p)
}

/// Applies an admin change for the bearer, to its own organisation (or, for a new organisation,
/// to `org`), within its clearance and room limit.
fn apply(
    s: &AppState,
    headers: &HeaderMap,
    org: Option<String>,
    change: Change,
    status: StatusCode,
) -> ApiResult<Response> {
    let target = change.target(org.as_deref().unwrap_or(""));
    let p = s
        .control
        .authenticate(bearer(headers), change.action(), &target)?;
    let change = AdminChange::new(org.unwrap_or_else(|| p.org.clone()), change);
    let made = s.control.apply(&change, Some(&p))?;
    Ok((status, axum::Json(made)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgAdd {
    name: String,
    #[serde(default)]
    quota_bytes: Option<u64>,
}

async fn admin_org_add(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    // An organisation's admin token reaches its own organisation only, which exists; new
    // organisations are made on the appliance itself.
    let req: OrgAdd = json_body(&body)?;
    let change = Change::AddOrg {
        quota_bytes: req.quota_bytes,
    };
    apply(&s, &headers, Some(req.name), change, StatusCode::CREATED)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserAdd {
    name: String,
    clearance: u8,
}

async fn admin_user_add(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: UserAdd = json_body(&body)?;
    let change = Change::AddUser {
        name: req.name,
        clearance: req.clearance,
    };
    apply(&s, &headers, None, change, StatusCode::CREATED)
}

async fn admin_user_remove(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    apply(
        &s,
        &headers,
        None,
        Change::RemoveUser { name },
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSet {
    clearance: u8,
}

async fn admin_user_set(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: UserSet = json_body(&body)?;
    let change = Change::SetClearance {
        name,
        clearance: req.clearance,
    };
    apply(&s, &headers, None, change, StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceAdd {
    id: String,
    #[serde(default = "default_kind")]
    kind: DeviceKind,
    #[serde(default)]
    max_clearance: Option<u8>,
}

fn default_kind() -> DeviceKind {
    DeviceKind::Browser
}

async fn admin_device_add(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: DeviceAdd = json_body(&body)?;
    let change = Change::AddDevice {
        id: req.id,
        kind: req.kind,
        max_clearance: req.max_clearance,
    };
    apply(&s, &headers, None, change, StatusCode::CREATED)
}

async fn admin_device_revoke(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    apply(
        &s,
        &headers,
        None,
        Change::RevokeDevice { id },
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomAdd {
    name: String,
    #[serde(default)]
    classification: u8,
    #[serde(default)]
    secure_view: bool,
}

async fn admin_room_add(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RoomAdd = json_body(&body)?;
    let change = Change::AddRoom {
        name: req.name,
        classification: req.classification,
        secure_view: req.secure_view,
    };
    apply(&s, &headers, None, change, StatusCode::CREATED)
}

async fn admin_token(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: MintRequest = json_body(&body)?;
    let target = format!("token:{}/{}/{}", req.org, req.user, req.device);
    let p = s
        .control
        .authenticate(bearer(&headers), "token.mint", &target)?;
    s.control.admin("token.mint", &p, &req.org, &target)?;
    let minted = s.control.mint(&req, Some(&p))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"token": minted.token, "id": minted.id})),
    )
        .into_response())
}

async fn admin_token_revoke(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    apply(
        &s,
        &headers,
        None,
        Change::RevokeToken { id },
        StatusCode::OK,
    )
}

async fn admin_audit_verify(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = admin(&s, &headers, "admin.audit.verify", "audit")?;
    let head = s.control.registry().audit_head()?;
    let path = s.audit_path.clone();
    let org = p.org.clone();
    let result = tokio::task::spawn_blocking(move || audit::verify(&path, head, Some(&org)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match result {
        Ok(v) => {
            s.control.allow("admin.audit.verify", &p, "audit");
            // An organisation's admin learns of its own lines only, not of the whole appliance.
            Ok(axum::Json(json!({"ok": true, "lines": v.org_lines})).into_response())
        }
        Err(audit::AuditError::Broken { line, why }) => Ok((
            StatusCode::CONFLICT,
            axum::Json(json!({"error": "audit_broken", "message": why, "line": line})),
        )
            .into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}
