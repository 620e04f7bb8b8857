//! Room chat on the WHEP session's data channel `chat`, sans-IO: what a page may send, how the
//! relay stamps it, how much a session may send, and what a late joiner is shown.
//!
//! A page writes `{"text": "..."}` as a text message. The relay answers nothing to a good
//! message but relays it, to everyone in the room with the channel open (the sender too), as
//! `{"type": "chat", "from": USER, "at": MS, "text": "..."}`: `from` is the token's subject and
//! `at` the relay's clock (milliseconds since the Unix epoch), so no one writes as someone else
//! or at another time. A refused message is answered to its sender only, as
//! `{"type": "error", "error": CODE, "message": TEXT}` with `CODE` one of `too_large`, `rate`,
//! `bad_message`.
//!
//! Messages live in memory only, in the room, for its life: the last [`HISTORY`] are sent to a
//! page when its channel opens, unless the room is `secure_view`, where nothing is kept.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest message text, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Longest message as it arrives (the JSON around the text, escapes).
const MAX_MESSAGE_BYTES: usize = 4 * MAX_TEXT_BYTES;

/// Messages a late joiner is shown.
pub const HISTORY: usize = 50;

/// The data channel's label.
pub const LABEL: &str = "chat";

/// A session may send this many messages at once...
const BURST: f64 = 10.0;
/// ...and this many per second after that.
const PER_SECOND: f64 = 3.0;

/// How long [`Limiter`] takes to give one message back.
#[cfg(test)]
const REFILL: std::time::Duration = std::time::Duration::from_millis((1000.0 / PER_SECOND) as u64);

/// Why a message was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooLarge,
    Rate,
    BadMessage,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Rate => "rate",
            Refusal::BadMessage => "bad_message",
        }
    }

    fn message(self) -> String {
        match self {
            Refusal::TooLarge => format!("a message is at most {MAX_TEXT_BYTES} bytes"),
            Refusal::Rate => "too many messages; wait a moment".into(),
            Refusal::BadMessage => "a message is JSON text: {\"text\": \"...\"}".into(),
        }
    }

    /// What the sender is told.
    pub fn answer(self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "error", "error": self.code(), "message": self.message(),
        }))
        .unwrap_or_default()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    text: String,
}

/// The text of a message a page sent, if it may be relayed.
pub fn parse(data: &[u8], binary: bool) -> Result<String, Refusal> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(Refusal::TooLarge);
    }
    if binary {
        return Err(Refusal::BadMessage);
    }
    let m: Incoming = serde_json::from_slice(data).map_err(|_| Refusal::BadMessage)?;
    if m.text.len() > MAX_TEXT_BYTES {
        return Err(Refusal::TooLarge);
    }
    if m.text.trim().is_empty() {
        return Err(Refusal::BadMessage);
    }
    Ok(m.text)
}

#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    from: &'a str,
    at: u64,
    text: &'a str,
}

/// The message as everyone receives it.
pub fn stamp(from: &str, at_ms: u64, text: &str) -> Vec<u8> {
    serde_json::to_vec(&Stamped {
        kind: "chat",
        from,
        at: at_ms,
        text,
    })
    .unwrap_or_default()
}

/// The relay's clock for stamps: milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A token bucket of messages per session.
#[derive(Debug, Clone)]
pub struct Limiter {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            tokens: BURST,
            last: None,
        }
    }
}

impl Limiter {
    /// May one more message go at `now`?
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last);
            self.tokens = (self.tokens + dt.as_secs_f64() * PER_SECOND).min(BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A room's last messages, stamped, for late joiners; keeps nothing when the room is secure.
#[derive(Debug, Default)]
pub struct History {
    keep: bool,
    last: VecDeque<Vec<u8>>,
}

impl History {
    pub fn new(keep: bool) -> History {
        History {
            keep,
            last: VecDeque::new(),
        }
    }

    /// Keep messages from now on, or (in a `secure_view` room) keep none and forget any held.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
        if !keep {
            self.last.clear();
        }
    }

    pub fn push(&mut self, stamped: &[u8]) {
        if !self.keep {
            return;
        }
        if self.last.len() == HISTORY {
            self.last.pop_front();
        }
        self.last.push_back(stamped.to_vec());
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.last.iter().map(Vec::as_slice)
    }
}

/// A message relayed, for the audit log: who, where, how large (never the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSent {
    pub session: super::SessionId,
    pub room: super::RoomKey,
    /// The sender (the token's subject).
    pub user: super::ParticipantKey,
    pub bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_parsed_and_bounded() {
        assert_eq!(parse(br#"{"text":"hello"}"#, false), Ok("hello".into()));
        assert_eq!(
            parse(br#"{"text":"hello"}"#, true),
            Err(Refusal::BadMessage)
        );
        assert_eq!(parse(b"hello", false), Err(Refusal::BadMessage));
        assert_eq!(parse(br#"{"text":"  "}"#, false), Err(Refusal::BadMessage));
        assert_eq!(
            parse(br#"{"text":"a","from":"mallory"}"#, false),
            Err(Refusal::BadMessage),
            "a page cannot name the sender"
        );
        let just = format!(r#"{{"text":"{}"}}"#, "x".repeat(MAX_TEXT_BYTES));
        assert!(parse(just.as_bytes(), false).is_ok());
        let over = format!(r#"{{"text":"{}"}}"#, "x".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(parse(over.as_bytes(), false), Err(Refusal::TooLarge));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(parse(&huge, false), Err(Refusal::TooLarge));
    }

    #[test]
    fn a_stamp_names_the_sender_and_escapes_the_text() {
        let s = stamp("ann", 1234, "say \"hi\"\n<b>");
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["from"], "ann");
        assert_eq!(v["at"], 1234);
        assert_eq!(v["text"], "say \"hi\"\n<b>");
        let r: serde_json::Value = serde_json::from_slice(&Refusal::Rate.answer()).unwrap();
        assert_eq!(r["error"], "rate");
    }

    #[test]
    fn the_limiter_allows_a_burst_then_a_steady_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        let burst = (0..20).filter(|_| l.allow(t0)).count();
        assert_eq!(burst, BURST as usize);
        assert!(!l.allow(t0 + REFILL / 2));
        assert!(l.allow(t0 + REFILL * 2));
    }

    #[test]
    fn history_keeps_the_last_messages_unless_secure() {
        let mut h = History::new(true);
        for i in 0..HISTORY + 7 {
            h.push(format!("{i}").as_bytes());
        }
        let kept: Vec<&[u8]> = h.iter().collect();
        assert_eq!(kept.len(), HISTORY);
        assert_eq!(kept[0], b"7");
        let mut secure = History::new(false);
        secure.push(b"secret");
        assert_eq!(secure.iter().count(), 0);
        h.set_keep(false);
        assert_eq!(
            h.iter().count(),
            0,
            "a room made secure forgets what it held"
        );
    }
}
