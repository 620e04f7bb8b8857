//! Guests of the demo organisation: the start-up link carries a token of the `demo` user, and
//! everyone who opens it would be that one participant. `POST /api/demo/guest` turns it into a
//! person of their own: it registers a user in `demo` (clearance 1, the name asked for when
//! free, else with a suffix) and mints them an hour's token on the demo device, with the
//! grants to publish and watch. Only the `demo` user's token may ask, and only while the
//! organisation exists; the registration and the token are audited like any other.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ApiResult, bearer, json_body};
use super::state::AppState;
use crate::control::admin::{AdminChange, Change};
use crate::control::registry::check_name;
use crate::control::token::Grant;
use crate::control::{ControlError, MintRequest};
use crate::datadir::{DEMO_DEVICE, DEMO_ORG, DEMO_USER};

/// How long a guest's token lasts.
const GUEST_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Names tried with a suffix before giving up.
const TRIES: usize = 8;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/demo/guest", post(guest))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestBody {
    #[serde(default)]
    name: Option<String>,
}

async fn guest(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: GuestBody = if body.is_empty() {
        GuestBody { name: None }
    } else {
        json_body(&body)?
    };
    let p = s
        .control
        .authenticate(bearer(&headers), "demo.guest", "org:demo")?;
    if p.org != DEMO_ORG || p.user != DEMO_USER {
        let d = crate::control::policy::Denial::Grant;
        s.control.deny("demo.guest", Some(&p), "org:demo", d);
        return Err(d.into());
    }
    let asked = req
        .name
        .map(|n| {
            n.trim()
                .to_lowercase()
                .replace(' ', "-")
                .chars()
                .take(48)
                .collect::<String>()
        })
        .filter(|n| !n.is_empty());
    if let Some(n) = &asked {
        check_name("name", n)?;
    }
    let base = asked.unwrap_or_else(|| "guest".into());
    for i in 0..TRIES {
        let name = if i == 0 && base != "guest" {
            base.clone()
        } else {
            format!("{base}-{}", suffix()?)
        };
        let add = AdminChange::new(
            DEMO_ORG,
            Change::AddUser {
                name: name.clone(),
                clearance: 1,
            },
        );
        match s.control.apply(&add, None) {
            Ok(_) => {}
            Err(ControlError::Registry(crate::control::registry::RegistryError::Exists(_))) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let minted = s.control.mint(
            &MintRequest {
                org: DEMO_ORG.into(),
                user: name.clone(),
                device: DEMO_DEVICE.into(),
                clearance: None,
                room: p.room.clone(),
                grants: Some(vec![Grant::Publish, Grant::Subscribe]),
                ttl: Some(GUEST_TTL),
            },
            None,
        )?;
        return Ok((
            StatusCode::CREATED,
            axum::Json(json!({"user": name, "token": minted.token})),
        )
            .into_response());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "exists",
        "no free guest name; pick another",
    ))
}

/// Four hex digits.
fn suffix() -> Result<String, ApiError> {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(hex::encode(b))
}
