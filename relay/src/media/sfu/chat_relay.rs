//! The room's chat: a subscriber's `chat` data channel opens (and is shown the room's last
//! messages), a message arrives, is checked and stamped, and goes to every open channel of the
//! room, the sender's too. Nothing here is written anywhere but to the channels.
//!
//! The same channel tells the page what it is shown, when that changes (checked on the
//! allocation tick): `{"type": "view", "speaker": USER|null, "publishers": [{"user",
//! "source"}], "slots": [{"mid", "user"|null, "source"|null}]}`, so tiles carry names and the
//! page follows a screen share without asking; and urgent notices reach the pages in a meeting
//! on it, as `{"type": "notice", "notice": {...}}`.

use serde::Serialize;

use super::super::chat::{self, ChatSent, Refusal};
use super::*;

#[derive(Serialize)]
struct View<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    speaker: Option<&'a str>,
    publishers: &'a [Shown<'a>],
    slots: Vec<SlotView<'a>>,
}

#[derive(Serialize)]
struct Shown<'a> {
    user: &'a str,
    source: Source,
}

#[derive(Serialize)]
struct SlotView<'a> {
    mid: String,
    user: Option<&'a str>,
    source: Option<Source>,
}

impl Core {
    pub(super) fn on_chat_open(
        &mut self,
        idx: usize,
        id: ChannelId,
        label: &str,
        wire: &mut dyn Wire,
    ) {
        let Some(s) = self.sessions[idx].as_mut() else {
            return;
        };
        let Role::Subscriber(sub) = &mut s.role else {
            return;
        };
        // One chat channel per session: a second would start with a fresh allowance.
        if label != chat::LABEL || sub.chat.is_some() {
            return;
        }
        sub.chat = Some(Box::new(ChatLine {
            id,
            view_sent: Vec::new(),
            limit: Limiter::default(),
        }));
        if let Some(room) = self.rooms.get(&s.room)
            && let Some(mut c) = s.rtc.channel(id)
        {
            for m in room.chat.iter() {
                // A full send buffer takes no more: the rest of the history would come out of
                // order, so it stops there.
                if !matches!(c.write(false, m), Ok(true)) {
                    tracing::debug!(session = %s.id, "chat history cut short");
                    break;
                }
            }
        }
        drain(idx, s, wire, &mut self.events, &mut self.book);
    }

    pub(super) fn on_chat(
        &mut self,
        idx: usize,
        d: ChannelData,
        now: Instant,
        wire: &mut dyn Wire,
    ) {
        let Some(s) = self.sessions[idx].as_mut() else {
            return;
        };
        let Role::Subscriber(sub) = &mut s.role else {
            return;
        };
        let Some(line) = sub.chat.as_mut().filter(|c| c.id == d.id) else {
            return;
        };
        let verdict = chat::parse(&d.data, d.binary).and_then(|text| {
            if line.limit.allow(now) {
                Ok(text)
            } else {
                Err(Refusal::Rate)
            }
        });
        let text = match verdict {
            Ok(t) => t,
            Err(r) => {
                tracing::debug!(session = %s.id, refusal = r.code(), "chat message refused");
                if let Some(mut c) = s.rtc.channel(d.id) {
                    let _ = c.write(false, &r.answer());
                }
                drain(idx, s, wire, &mut self.events, &mut self.book);
                return;
            }
        };
        let stamped = chat::stamp(&s.user, chat::wall_ms(), &text);
        let room_key = s.room.clone();
        self.chat_sent.push(ChatSent {
            session: s.id.clone(),
            room: room_key.clone(),
            user: s.user.clone(),
            bytes: text.len(),
        });
        let Core {
            rooms,
            sessions,
            events,
            book,
            ..
        } = self;
        let Some(room) = rooms.get_mut(&room_key) else {
            return;
        };
        room.chat.push(&stamped);
        write_to(&room.members, sessions, events, book, wire, &stamped);
    }

    /// Tells every page of `room` with its chat channel open what it is shown, if that changed
    /// since it was last told.
    pub(super) fn push_view(&mut self, room: &str, wire: &mut dyn Wire) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let sessions = &self.sessions;
        let publisher = |track: TrackId| -> Option<(&str, Source)> {
            let (idx, generation, _) = track_parts(track);
            let s = sessions.get(idx)?.as_ref()?;
            match &s.role {
                Role::Publisher(p) if s.generation == generation => {
                    Some((s.user.as_str(), p.source))
                }
                _ => None,
            }
        };
        let speaker = last_speaker(sessions, &r.members).map(|s| s.user.as_str());
        let publishers: Vec<Shown<'_>> = r
            .members
            .iter()
            .filter_map(|&m| match sessions[m].as_ref() {
                Some(Session {
                    user,
                    role: Role::Publisher(p),
                    ..
                }) => Some(Shown {
                    user,
                    source: p.source,
                }),
                _ => None,
            })
            .collect();
        let mut updates: Vec<(usize, Vec<u8>)> = Vec::new();
        for &m in &r.members {
            let Some(Session {
                role: Role::Subscriber(sub),
                ..
            }) = sessions[m].as_ref()
            else {
                continue;
            };
            let Some(line) = &sub.chat else {
                continue;
            };
            let slots = sub
                .video
                .iter()
                .map(|v| {
                    let fed = v.gate.current().and_then(|f| publisher(f.track));
                    SlotView {
                        mid: v.mid.to_string(),
                        user: fed.map(|(u, _)| u),
                        source: fed.map(|(_, s)| s),
                    }
                })
                .collect();
            let view = View {
                kind: "view",
                speaker,
                publishers: &publishers,
                slots,
            };
            let bytes = serde_json::to_vec(&view).unwrap_or_default();
            if bytes != line.view_sent {
                updates.push((m, bytes));
            }
        }
        for (m, bytes) in updates {
            let Some(s) = self.sessions[m].as_mut() else {
                continue;
            };
            let Role::Subscriber(Subscriber {
                chat: Some(line), ..
            }) = &mut s.role
            else {
                continue;
            };
            // Remembered only once written: a refused view goes again at the next tick.
            if let Some(mut c) = s.rtc.channel(line.id)
                && matches!(c.write(false, &bytes), Ok(true))
            {
                line.view_sent = bytes;
            }
            drain(m, s, wire, &mut self.events, &mut self.book);
        }
    }

    /// Writes `message` on every open chat channel in the rooms of `org` (or in its room
    /// `room`).
    pub fn notice(&mut self, org: &str, room: Option<&str>, message: &[u8], wire: &mut dyn Wire) {
        let Core {
            rooms,
            sessions,
            events,
            book,
            ..
        } = self;
        for (key, r) in rooms.iter() {
            let Some((o, name)) = key.split_once('/') else {
                continue;
            };
            if o == org && room.is_none_or(|want| want == name) {
                write_to(&r.members, sessions, events, book, wire, message);
            }
        }
    }
}

/// Writes `message` on the open chat channel of each of `members`, and sends what that makes.
fn write_to(
    members: &[usize],
    sessions: &mut [Option<Session>],
    events: &mut VecDeque<(usize, u32, Event)>,
    book: &mut Book,
    wire: &mut dyn Wire,
    message: &[u8],
) {
    for &m in members {
        let Some(s) = sessions[m].as_mut() else {
            continue;
        };
        let Role::Subscriber(Subscriber {
            chat: Some(line), ..
        }) = &s.role
        else {
            continue;
        };
        match s.rtc.channel(line.id).map(|mut c| c.write(false, message)) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => tracing::debug!(session = %s.id, "chat channel full: dropped"),
            Some(Err(e)) => tracing::debug!(session = %s.id, "chat channel write failed: {e}"),
            None => {}
        }
        drain(m, s, wire, events, book);
    }
}
