//! Guests of the demo organisation: the start-up link carries a token of the `demo` user, and
//! everyone who opens it would be that one participant. `POST /api/demo/guest` turns it into a
//! person of their own: it registers a user in `demo` (clearance 1, the name asked for when
//! free, else with a suffix) and mints them a token on the demo device that reaches no further
//! than the one that asked: its clearance, its room limit, its publish and subscribe grants, and
//! no later expiry (an hour at most). Only the `demo` user's token may ask, and only while the
//! organisation exists; at most [`MAX_GUESTS`] guests are made per run; the registration and
//! the token are audited like any other.

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

/// Guests one run of the relay registers at most (each is a user of the demo organisation).
pub const MAX_GUESTS: u64 = 1000;

static GUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
    let (p, claims) = s
        .control
        .authenticate_claims(bearer(&headers), "demo.guest", "org:demo")?;
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
    let grants: Vec<Grant> = [Grant::Publish, Grant::Subscribe]
        .into_iter()
        .filter(|g| p.has(*g))
        .collect();
    let left = claims.exp.saturating_sub(crate::control::unix_now());
    let ttl = GUEST_TTL.min(std::time::Duration::from_secs(left));
    if grants.is_empty() || ttl.is_zero() {
        let d = crate::control::policy::Denial::Grant;
        s.control.deny("demo.guest", Some(&p), "org:demo", d);
        return Err(d.into());
    }
    if GUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_GUESTS {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_guests",
            format!("this relay has made {MAX_GUESTS} guests since it started"),
        )
        .retry_after(3600));
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
                clearance: Some(p.clearance),
                room: p.room.clone(),
                grants: Some(grants.clone()),
                ttl: Some(ttl),
                // Not past the link's end, even if a second turned since `left` was read.
                not_after: Some(claims.exp),
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
