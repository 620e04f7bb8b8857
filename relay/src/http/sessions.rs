//! The media sessions opened over WHIP and WHEP, and who opened each: the token a session is
//! held to while it lasts.
//!
//! A live session is held to the token that opened it: when the registry changes (a user removed
//! or lowered, a device or the token revoked), [`MediaRoutes::enforce`] ends every session whose
//! token would no longer be let in.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::control::Control;
use crate::control::audit::{Decision, Event};
use crate::control::policy::{Principal, RoomRole};
use crate::control::token::Claims;
use crate::media::{MediaPlane, SessionId};

/// Who opened a session, to check PATCH, DELETE and layout requests against.
#[derive(Debug, Clone)]
struct Owner {
    /// The token that opened the session: the session lasts while it would still be let in.
    claims: Claims,
    room: String,
    whep: bool,
    opened: Instant,
}

impl Owner {
    fn role(&self) -> RoomRole {
        if self.whep {
            RoomRole::Subscribe
        } else {
            RoomRole::Publish
        }
    }
}

/// The media plane and the owners of its sessions.
#[derive(Debug)]
pub struct MediaRoutes {
    pub plane: MediaPlane,
    owners: Mutex<HashMap<SessionId, Owner>>,
}

impl MediaRoutes {
    pub fn new(plane: MediaPlane) -> MediaRoutes {
        MediaRoutes {
            plane,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// Records who opened the session `id`.
    pub fn opened(&self, id: SessionId, claims: Claims, room: &str, whep: bool) {
        self.owners().insert(
            id,
            Owner {
                claims,
                room: room.to_string(),
                whep,
                opened: Instant::now(),
            },
        );
    }

    /// The role of the session `id` (WHIP or WHEP in `room`), if `p`'s participant opened it.
    pub fn role_of(
        &self,
        id: &SessionId,
        p: &Principal,
        room: &str,
        whep: bool,
    ) -> Option<RoomRole> {
        let owners = self.owners();
        let o = owners.get(id)?;
        let theirs = o.claims.org == p.org && o.claims.sub == p.user;
        (theirs && o.room == room && o.whep == whep).then(|| o.role())
    }

    /// Forgets the session `id`, ended.
    pub fn forget(&self, id: &SessionId) {
        self.owners().remove(id);
    }

    fn owners(&self) -> MutexGuard<'_, HashMap<SessionId, Owner>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends every session whose token would no longer be let into its room, and audits each end.
    pub async fn enforce(&self, control: &Control) {
        let owners: Vec<(SessionId, Owner)> = self
            .owners()
            .iter()
            .map(|(id, o)| (id.clone(), o.clone()))
            .collect();
        for (id, o) in owners {
            let Err(d) = control.recheck(&o.claims, o.role(), &o.room) else {
                continue;
            };
            let c = &o.claims;
            control.record(
                Event::new("session.end", Decision::Deny)
                    .reason(d.reason())
                    .who(&c.org, &c.sub, &c.device)
                    .target(&format!("room:{}", o.room)),
            );
            // A session already gone on its own is no error here.
            let _ = self.plane.end(&id).await;
            self.owners().remove(&id);
        }
    }

    /// Forgets owners of sessions the media plane has dropped on its own (ICE timeout), so the
    /// map stays as large as the live sessions.
    pub async fn sweep(&self) {
        let rooms: Vec<String> = {
            let owners = self.owners();
            let mut r: Vec<String> = owners
                .values()
                .map(|o| room_key(&o.claims.org, &o.room))
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        };
        for room in rooms {
            let live: Vec<SessionId> = match self.plane.room_info(&room).await {
                Some(info) => info
                    .publishers
                    .into_iter()
                    .map(|p| p.session)
                    .chain(info.subscribers.into_iter().map(|s| s.session))
                    .collect(),
                None => Vec::new(),
            };
            self.owners().retain(|id, o| {
                room_key(&o.claims.org, &o.room) != room
                    || live.contains(id)
                    || o.opened.elapsed() < Duration::from_secs(30)
            });
        }
    }
}

/// The media plane's name for a room: rooms are per organisation.
pub fn room_key(org: &str, room: &str) -> String {
    format!("{org}/{room}")
}
