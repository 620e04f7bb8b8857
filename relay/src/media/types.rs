//! The media plane's public vocabulary: identifiers, requests, answers, room views, errors.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use super::allocate::Layout;

/// A room, as the control plane names it: `"org/room"`.
pub type RoomKey = String;

/// A participant: the token's subject. One participant's WHIP and WHEP sessions in a room
/// are one participant (nobody receives their own media).
pub type ParticipantKey = String;

/// An unguessable session identifier: 128 random bits, lowercase hex (32 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// A fresh random identifier from the operating system's generator.
    pub fn random() -> Result<SessionId, MediaError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| MediaError::Io(format!("random: {e}")))?;
        Ok(SessionId(hex::encode(b)))
    }

    /// Parse an identifier from a URL path segment; `None` unless it is 32 lowercase hex
    /// characters (so a malformed one is a 404 without any lookup).
    pub fn parse(s: &str) -> Option<SessionId> {
        let ok = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| SessionId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a WHIP session publishes (`?source=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Camera,
    Screen,
    Audio,
}

/// The answer to a WHIP or WHEP offer.
#[derive(Debug, Clone)]
pub struct SessionAnswer {
    pub session: SessionId,
    pub answer_sdp: String,
}

/// The media part of `GET /api/rooms/{room}`; the control plane adds `classification` and
/// `secure_view`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomInfo {
    pub room: RoomKey,
    pub publishers: Vec<PublisherInfo>,
    pub subscribers: Vec<SubscriberInfo>,
    /// The publishing session that spoke last (RFC 6464 level above the speech threshold), if
    /// anyone has; a muted microphone never speaks.
    pub speaker: Option<SessionId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublisherInfo {
    pub session: SessionId,
    pub user: ParticipantKey,
    pub source: Source,
    /// The video layers (rids) the publisher offered, in offer order; `""` for a video track
    /// without simulcast.
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriberInfo {
    pub session: SessionId,
    pub user: ParticipantKey,
    pub layout: Layout,
    pub slots: Vec<SlotInfo>,
}

/// One video slot of a subscriber: what feeds it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    pub mid: String,
    /// The publishing session, or `null` while the slot is empty.
    pub publisher: Option<SessionId>,
    /// The layer's rid (`""` without simulcast), or `null` while empty.
    pub layer: Option<String>,
}

/// Errors of the media plane's API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The SDP offer or trickle fragment is unusable (HTTP 400).
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// No such session (HTTP 404).
    #[error("no such media session")]
    NotFound,
    /// The room has reached `max_sessions_per_room` (HTTP 503).
    #[error("the room is full")]
    RoomFull,
    /// Every worker is at `max_rooms_per_worker`, or the worker did not answer (HTTP 503).
    #[error("no media worker can take this room now")]
    WorkerBusy,
    /// The media plane is shut down (HTTP 503).
    #[error("the media plane is shutting down")]
    ShuttingDown,
    /// Unusable configuration (start-up only).
    #[error("media configuration: {0}")]
    Config(String),
    /// An operating-system error (socket, thread, random source).
    #[error("media I/O: {0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        let a = SessionId::random().expect("random");
        let b = SessionId::random().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(SessionId::parse(a.as_str()), Some(a.clone()));
        assert_eq!(SessionId::parse("xyz"), None);
        assert_eq!(SessionId::parse(&a.as_str().to_uppercase()), None);
        assert_eq!(SessionId::parse(&"0".repeat(33)), None);
    }
}
