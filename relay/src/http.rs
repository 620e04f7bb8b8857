//! The HTTP shell: routes, JSON errors, and the bearer-token extraction every route shares.
//!
//! Handlers stay thin: parse, ask [`Control`], answer. Every error is the contract's JSON
//! `{"error": code, "message": text}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::control::admin::{AdminChange, Change};
use crate::control::policy::{Denial, Principal};
use crate::control::registry::{DeviceKind, RegistryError};
use crate::control::{Control, ControlError, MintRequest, audit};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (503, 429).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
        ApiError::new(status, d.code(), d.to_string())
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(m) => ApiError::bad_request(m),
            RegistryError::NotFound(_) => ApiError::not_found(e.to_string()),
            RegistryError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "exists", e.to_string())
            }
            RegistryError::Db(_) | RegistryError::Corrupt(_) => {
                tracing::error!(error = %e, "registry failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the registry failed",
                )
            }
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Denied(d) => d.into(),
            ControlError::Registry(r) => r.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The bearer token of a request: `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Parses a JSON body into `T`, answering 400 with serde's reason when it does not fit.
pub fn json_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// Which planes are up; `/readyz` answers 200 only when all are.
#[derive(Debug, Default)]
pub struct Readiness {
    planes: std::sync::Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
}

impl Readiness {
    /// Adds a plane, not ready yet; set the returned flag when it is.
    pub fn plane(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.planes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, flag.clone()));
        flag
    }

    /// The planes not ready yet.
    pub fn waiting(&self) -> Vec<&'static str> {
        let planes = self.planes.lock().unwrap_or_else(|p| p.into_inner());
        planes
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// What `/api/info` tells clients.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub version: &'static str,
    /// The file plane's QUIC address, once it runs.
    pub quic: Option<String>,
    pub cert_sha256: String,
    pub media_workers: usize,
}

/// Shared state of every route.
#[derive(Debug)]
pub struct AppState {
    pub control: Arc<Control>,
    pub readiness: Readiness,
    pub info: Info,
    pub audit_path: std::path::PathBuf,
    /// The media plane, when it runs.
    pub media: Option<crate::media_http::MediaRoutes>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/info", get(info))
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
        .route("/api/admin/audit/verify", get(admin_audit_verify))
        .merge(crate::media_http::routes())
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

/// The web client: publish and watch a meeting from a browser (WHIP/WHEP).
async fn web_client() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("web/index.html"),
    )
        .into_response()
}
