//! Urgent notices: sent by an admin (`POST /api/admin/notices`, or `relay admin notice send`),
//! stored in the registry, listed (`GET /api/notices`) and pushed to every open page of the
//! organisation or room (`GET /api/notices/live`, Server-Sent Events).
//!
//! One path delivers them: whatever wrote a notice (this process or `relay admin --data` on the
//! same database) moved the registry's generation, and the watcher that holds live sessions to
//! the registry then calls [`super::notice_hub::NoticeHub::catch_up`], which reads the notices it has not seen and
//! broadcasts them, and hands them to the media plane for the pages in a meeting, which hear
//! them on their chat channel. Asking for a room's notices takes what watching the room takes
//! (clearance, room limit). A page's stream is held to its token: a notice is delivered only while the
//! token would still be let in, and never across organisations.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::error::{ApiResult, bearer, json_body};
use super::notice_hub::BATCH;
use super::state::AppState;
use crate::control::Control;
use crate::control::admin::{AdminChange, Change};
use crate::control::model::Notice;
use crate::control::policy::{Denial, Principal, RoomRole};
use crate::control::token::Claims;

/// Notices a page is shown when it opens, and `GET /api/notices` lists.
pub const RECENT: usize = 20;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/admin/notices", post(send))
        .route("/api/notices", get(list))
        .route("/api/notices/live", get(live))
}

/// Is `n` for a page of `org` that is in `room` (or in none)?
fn reaches(n: &Notice, org: &str, room: Option<&str>) -> bool {
    n.org == org && n.room.as_deref().is_none_or(|r| Some(r) == room)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    text: String,
    #[serde(default)]
    room: Option<String>,
}

async fn send(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: SendBody = json_body(&body)?;
    let target = match &req.room {
        Some(r) => format!("room:{r}"),
        None => "notices".to_string(),
    };
    let p = s
        .control
        .authenticate(bearer(&headers), "admin.notice.send", &target)?;
    let change = AdminChange::new(
        p.org.clone(),
        Change::SendNotice {
            room: req.room,
            text: req.text,
            from: p.user.clone(),
        },
    );
    let made = s.control.apply(&change, Some(&p))?;
    // Deliver at once rather than at the next look at the registry.
    s.notices
        .catch_up(&s.control, s.media.as_ref().map(|m| &m.plane));
    Ok((StatusCode::CREATED, axum::Json(made)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomQuery {
    #[serde(default)]
    room: Option<String>,
}

/// The room a page hears notices of: a room-limited token's own, else the one it names.
fn room_of(limit: Option<String>, asked: Option<String>) -> Option<String> {
    limit.or(asked)
}

/// May the bearer of `claims` hear the notices of `room` (or of none): may it watch that room
/// now, by the registry as it is? A room notice speaks to those cleared for the room.
fn may_hear(control: &Control, claims: &Claims, room: Option<&str>) -> Result<(), Denial> {
    match room {
        Some(r) => control.recheck(claims, RoomRole::Subscribe, r),
        None => control.standing(claims).map(|_| ()),
    }
}

/// The bearer of a notice request, its claims and the room it hears: authenticated, and
/// allowed that room's notices (denials audited under `action`).
fn listener(
    s: &AppState,
    headers: &HeaderMap,
    q: RoomQuery,
    action: &'static str,
) -> ApiResult<(Principal, Claims, Option<String>)> {
    let (p, claims) = s
        .control
        .authenticate_claims(bearer(headers), action, "notices")?;
    let room = room_of(p.room.clone(), q.room);
    // The token's standing was just checked; a room asks for more.
    if room.is_some()
        && let Err(d) = may_hear(&s.control, &claims, room.as_deref())
    {
        s.control.deny(action, Some(&p), "notices", d);
        return Err(d.into());
    }
    Ok((p, claims, room))
}

async fn list(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<RoomQuery>,
) -> ApiResult<Response> {
    let (p, _, room) = listener(&s, &headers, q, "notices.list")?;
    let all = s.control.registry().notices(&p.org, BATCH)?;
    let mut shown: Vec<Notice> = all
        .into_iter()
        .filter(|n| reaches(n, &p.org, room.as_deref()))
        .collect();
    let skip = shown.len().saturating_sub(RECENT);
    shown.drain(..skip);
    Ok(axum::Json(serde_json::json!({"notices": shown})).into_response())
}

async fn live(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<RoomQuery>,
) -> ApiResult<Response> {
    let (p, claims, room) = listener(&s, &headers, q, "notices.live")?;
    let org = p.org.clone();
    let rx = s.notices.subscribe();
    let state = s.clone();
    let stream = futures_util::stream::unfold(
        (rx, state, claims),
        move |(mut rx, state, claims): (_, Arc<AppState>, Claims)| {
            let org = org.clone();
            let room = room.clone();
            async move {
                loop {
                    let n = match rx.recv().await {
                        Ok(n) => n,
                        // A page that fell behind by a whole channel lists what it missed.
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let e = SseEvent::default().event("lagged").data("{}");
                            return Some((Ok::<_, Infallible>(e), (rx, state, claims)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    if !reaches(&n, &org, room.as_deref()) {
                        continue;
                    }
                    // The stream lasts while its token would still be let in (to its room).
                    if may_hear(&state.control, &claims, room.as_deref()).is_err() {
                        return None;
                    }
                    let data = serde_json::to_string(n.as_ref()).unwrap_or_default();
                    let e = SseEvent::default().event("notice").data(data);
                    return Some((Ok(e), (rx, state, claims)));
                }
            }
        },
    );
    s.control.allow("notices.live", &p, "notices");
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(org: &str, room: Option<&str>) -> Notice {
        Notice {
            id: 1,
            org: org.into(),
            room: room.map(Into::into),
            text: "t".into(),
            from: "ann".into(),
            sent_at: 0,
        }
    }

    #[test]
    fn a_notice_reaches_its_organisation_and_room_only() {
        assert!(reaches(&notice("acme", None), "acme", None));
        assert!(reaches(&notice("acme", None), "acme", Some("ops")));
        assert!(reaches(&notice("acme", Some("ops")), "acme", Some("ops")));
        assert!(!reaches(&notice("acme", Some("ops")), "acme", Some("hall")));
        assert!(!reaches(&notice("acme", Some("ops")), "acme", None));
        assert!(!reaches(&notice("acme", None), "other", None));
        assert_eq!(
            room_of(Some("a".into()), Some("b".into())),
            Some("a".into())
        );
        assert_eq!(room_of(None, Some("b".into())), Some("b".into()));
    }
}
