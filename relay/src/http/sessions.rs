//! Who opened each media session over WHIP and WHEP: the token a session is held to while it
//! lasts. The media plane keeps it, as the session's [`SessionTag`], and drops it with the
//! session; nothing here keeps a map of its own.
//!
//! A live session is held to the token that opened it: when the registry changes (a user removed
//! or lowered, a device or the token revoked), [`MediaRoutes::enforce`] ends every session whose
//! token would no longer be let in.

use std::sync::Arc;

use crate::control::Control;
use crate::control::audit::{Decision, Event};
use crate::control::policy::{Principal, RoomRole};
use crate::control::token::Claims;
use crate::media::{MediaPlane, SessionId, SessionTag};

/// Who opened a session, to check PATCH, DELETE and layout requests and revocations against.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The token that opened the session: the session lasts while it would still be let in.
    claims: Claims,
    room: String,
    whep: bool,
}

impl Owner {
    pub fn new(claims: Claims, room: &str, whep: bool) -> Owner {
        Owner {
            claims,
            room: room.to_string(),
            whep,
        }
    }

    /// The tag the media plane keeps with the session.
    pub fn tag(self) -> SessionTag {
        Arc::new(self)
    }

    fn role(&self) -> RoomRole {
        if self.whep {
            RoomRole::Subscribe
        } else {
            RoomRole::Publish
        }
    }
}

/// The media plane, as the HTTP shell drives it.
#[derive(Debug)]
pub struct MediaRoutes {
    pub plane: MediaPlane,
}

impl MediaRoutes {
    pub fn new(plane: MediaPlane) -> MediaRoutes {
        MediaRoutes { plane }
    }

    fn owner(&self, id: &SessionId) -> Option<Arc<Owner>> {
        self.plane.tag(id)?.downcast::<Owner>().ok()
    }

    /// The role of the session `id` (WHIP or WHEP in `room`), if `p`'s participant opened it.
    pub fn role_of(
        &self,
        id: &SessionId,
        p: &Principal,
        room: &str,
        whep: bool,
    ) -> Option<RoomRole> {
        let o = self.owner(id)?;
        let theirs = o.claims.org == p.org && o.claims.sub == p.user;
        (theirs && o.room == room && o.whep == whep).then(|| o.role())
    }

    /// Ends every session whose token would no longer be let into its room, and audits each end.
    pub async fn enforce(&self, control: &Control) {
        for (id, tag) in self.plane.tags() {
            let Ok(o) = tag.downcast::<Owner>() else {
                continue;
            };
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
        }
    }
}

impl MediaRoutes {
    /// Audits each chat message the media plane relayed: who sent it, in which room, how many
    /// bytes; never its text. Runs until the plane stops.
    pub async fn audit_chat(&self, control: &Control) {
        let Some(mut log) = self.plane.take_chat_log() else {
            return;
        };
        while let Some(c) = log.recv().await {
            let room = c.room.split_once('/').map_or(c.room.as_str(), |(_, r)| r);
            let mut e = Event::new("chat.send", Decision::Allow)
                .target(&format!("room:{room}"))
                .bytes(c.bytes as u64);
            match self.owner(&c.session) {
                Some(o) => e = e.who(&o.claims.org, &o.claims.sub, &o.claims.device),
                // The session ended before its message was audited: its room and user say who.
                None => {
                    let org = c.room.split_once('/').map_or("", |(o, _)| o);
                    e = e.org(org).subject(&c.user);
                }
            }
            control.record(e);
        }
    }
}

/// The media plane's name for a room: rooms are per organisation.
pub fn room_key(org: &str, room: &str) -> String {
    format!("{org}/{room}")
}
