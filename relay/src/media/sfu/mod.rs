//! The SFU core of one worker: sessions, rooms and RTP forwarding, sans-IO.
//!
//! Job: own one `str0m::Rtc` per WHIP/WHEP session (ICE-lite, RTP mode), route incoming
//! datagrams to the session they belong to, forward publishers' RTP into subscribers' slots
//! through the [`switch`](super::switch) gates and [`rewrite`](super::rewrite) rewriters, route
//! keyframe requests to the right publisher layer, and re-run the [`allocate`] and
//! [`audio`](super::audio) decisions when the room changes and on a periodic tick.
//!
//! Sans-IO: time comes in as a parameter and datagrams leave through a [`Wire`]; the worker
//! shell owns the socket and the clock, tests drive it with a simulated clock.
//!
//! Here: the core's state, datagram and timeout input, and the drain of each session's output.
//! [`sessions`]: opening, changing and removing sessions; [`forward`]: a packet's copies;
//! [`allocation`]: the tick and the slot decisions; [`chat_relay`]: the room's chat channel;
//! [`recorder`]: the room's recording, a slot of the relay's own.
//!
//! Invariants:
//! - after every input to an `Rtc` (datagram, timeout, keyframe request, SDP) its
//!   `poll_output` is drained until `Timeout`; events are queued and handled afterwards, so
//!   forwarding into other sessions never happens while one is half-drained;
//! - a forwarded write is the exception: it only marks its session due, because str0m learns
//!   of written packets on the session's next timeout; subscribers' sessions have no pacer
//!   (their estimate is the receiver's, [`super::estimate`]), so that one timeout releases
//!   every copy written since; the worker calls [`Core::handle_timeout`] after each batch it
//!   reads, before it reads the next;
//! - a datagram reaches its session by a map lookup (remote address, or the STUN USERNAME's
//!   ufrag for a new address), never by scanning sessions;
//! - forwarding allocates nothing of its own: the payload is str0m's shared buffer, the event
//!   queue is reused;
//! - removing a session clears every reference to its tracks from the room's subscribers
//!   before anything else runs, and track ids are never reused, so no stale feed survives;
//! - nothing here panics on network input.

mod allocation;
mod chat_relay;
mod forward;
mod recorder;
mod sessions;

use recorder::Recorder;
pub use recorder::{Recorded, RecordedAudio, RecordedFrame};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::change::SdpOffer;
use str0m::channel::{ChannelData, ChannelId};
use str0m::format::{Codec, CodecConfig};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Rids};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{
    Extension, ExtensionMap, ExtensionValues, RtpPacket, RtpWrite, Ssrc, Vp8Descriptor, Vp8Patch,
};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use super::allocate::{self, Feed, LayerInfo, ParticipantId, SlotRequest, TrackId, VideoTrack};
use super::audio::{AudioCandidate, Loudness, select_audio};
use super::chat::{ChatSent, History, Limiter};
use super::counters::{DropReason, WorkerCounters, bump, set};
use super::delay::{Book, Pending, rtp_ssrc};
use super::estimate::Estimate;
use super::keyframe::{VideoCodec, is_keyframe, vp8_keyframe_height};
use super::picture::{NewIds, PictureIds};
use super::rewrite::Rewriter;
use super::stun;
use super::switch::{SlotGate, Verdict};
use super::types::{
    Layout, MediaError, ParticipantKey, PublisherInfo, RoomInfo, RoomKey, SessionAnswer, SessionId,
    SlotInfo, Source, SubscriberInfo,
};

/// Where the core's datagrams go. The worker shell sends on its socket (at once or with its
/// next batch, counting what the socket refuses); tests queue them.
pub trait Wire {
    /// Send `data` to `to`.
    fn send(&mut self, to: SocketAddr, data: &[u8]);
}

/// A layer (or audio track) that sent nothing for this long no longer feeds anyone: a
/// publisher that stops sending frees its slots within a second, with the tick.
pub const STALE_AFTER: Duration = Duration::from_millis(800);

/// Period of the allocation tick (speakers, bandwidth, staleness, keyframe retries).
pub const TICK: Duration = Duration::from_millis(100);

/// A slot already shown is emptied for lack of bandwidth only after the budget has been short
/// of even its lowest layer for this long.
pub const EMPTY_AFTER: Duration = Duration::from_secs(1);

/// Weight of the latest tick in a layer's smoothed bitrate (a time constant of about 1 s).
const RATE_SMOOTHING: f64 = 0.1;

/// A connected session silent (no datagram at all) for this long is removed.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// A session that never received a datagram is removed after this long.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// At most one keyframe request per publisher layer in this interval.
pub const PLI_THROTTLE: Duration = Duration::from_millis(300);

/// Remote addresses one session may use (ICE may try a few; bounded against abuse).
const MAX_ADDRS: usize = 8;

/// Video slots (and audio lines) fed per subscriber; further m-lines stay empty. Bounds the
/// per-packet fan-out work one WHEP offer can ask for.
pub const MAX_LINES: usize = 32;

/// Settings of one worker's core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The worker socket's address: the host candidate offered to peers.
    pub local: SocketAddr,
    pub max_sessions_per_room: usize,
    pub max_rooms: usize,
}

/// One worker's SFU state.
pub struct Core {
    cfg: CoreConfig,
    sessions: Vec<Option<Session>>,
    free: Vec<usize>,
    by_id: HashMap<SessionId, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    by_ufrag: HashMap<String, usize>,
    rooms: HashMap<RoomKey, Room>,
    counters: Arc<WorkerCounters>,
    /// Events drained from sessions, handled after the drain: `(session index, generation)`.
    events: VecDeque<(usize, u32, Event)>,
    next_gen: u32,
    next_tick: Instant,
    /// Sessions and rooms removed since the shell last asked ([`Core::take_gone`]).
    gone_sessions: Vec<SessionId>,
    gone_rooms: Vec<RoomKey>,
    /// Some session was marked dead since the last reaping.
    reap: bool,
    /// Which forwarded datagrams still have copies queued in str0m.
    book: Book,
    /// Copies written since the last timeout pass released them.
    written: usize,
    /// Chat messages relayed since the shell last asked ([`Core::take_chat_sent`]).
    chat_sent: Vec<ChatSent>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("local", &self.cfg.local)
            .field("sessions", &self.by_id.len())
            .field("rooms", &self.rooms.len())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Room {
    /// Participant ids by token subject, with the number of sessions holding each.
    participants: HashMap<ParticipantKey, (ParticipantId, usize)>,
    next_participant: ParticipantId,
    /// Session indices, publishers and subscribers.
    members: Vec<usize>,
    /// Join order for tracks (ties in "most recent speaker first").
    next_order: u64,
    /// The room's last chat messages, for late joiners.
    chat: History,
    /// The room's recording, while one runs.
    recorder: Option<Box<Recorder>>,
}

/// A live video track while allocating: id, participant, is screen, last spoke, join order,
/// live layers lowest first.
type LiveTrack = (
    TrackId,
    ParticipantId,
    bool,
    Option<Instant>,
    u64,
    Vec<LayerInfo>,
);

/// One m-line of an accepted offer, from our side.
struct MediaSection {
    mid: Mid,
    kind: MediaKind,
    direction: Direction,
    rids: Vec<Rid>,
}

struct Session {
    id: SessionId,
    generation: u32,
    rtc: Rtc,
    room: RoomKey,
    user: ParticipantKey,
    participant: ParticipantId,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    created: Instant,
    last_rx: Option<Instant>,
    next_timeout: Instant,
    dead: bool,
    role: Role,
}

enum Role {
    Publisher(Publisher),
    Subscriber(Subscriber),
}

struct Publisher {
    source: Source,
    tracks: Vec<Track>,
    /// Payload types of this session: codec and clock rate.
    codecs: Vec<(Pt, Codec, u32)>,
    last_spoke: Option<Instant>,
}

struct Track {
    id: TrackId,
    mid: Mid,
    kind: MediaKind,
    order: u64,
    layers: Vec<Layer>,
    loudness: Loudness,
}

struct Layer {
    rid: Option<Rid>,
    ssrc: Option<Ssrc>,
    height: Option<u32>,
    window_bytes: u64,
    bitrate_bps: u64,
    last_rx: Option<Instant>,
    last_pli: Option<Instant>,
}

struct Subscriber {
    layout: Layout,
    max_height: Option<u32>,
    /// The budget from the receiver's reports.
    estimate: Estimate,
    /// What the current choice of feeds sends, bits per second.
    sending_bps: u64,
    /// Since when the choice has not fit the budget with every shown slot kept.
    over_since: Option<Instant>,
    video: Vec<VideoSlot>,
    audio: Vec<AudioLine>,
    prev: Vec<Option<Feed>>,
    /// The `chat` data channel, once the page opened it.
    chat: Option<Box<ChatLine>>,
}

/// A subscriber's open `chat` data channel (one per session).
struct ChatLine {
    id: ChannelId,
    /// The last view of the room sent on it.
    view_sent: Vec<u8>,
    /// Messages the session may send (kept for the session's life).
    limit: Limiter,
}

impl Subscriber {
    fn new() -> Subscriber {
        Subscriber {
            chat: None,
            layout: Layout::Grid,
            max_height: None,
            estimate: Estimate::default(),
            sending_bps: 0,
            over_since: None,
            video: Vec::new(),
            audio: Vec::new(),
            prev: Vec::new(),
        }
    }
}

struct VideoSlot {
    mid: Mid,
    ssrc: Ssrc,
    pts: Vec<(Codec, Pt)>,
    gate: SlotGate,
    rw: Rewriter,
    pics: PictureIds,
    pending: Pending,
}

struct AudioLine {
    ssrc: Ssrc,
    pts: Vec<(Codec, Pt)>,
    track: Option<TrackId>,
    rw: Rewriter,
    pending: Pending,
}

/// Track ids carry their session's index and generation, so a feed finds its publisher
/// without a search, and a stale id (session gone, index reused) finds nothing.
fn track_id(idx: usize, generation: u32, track_no: usize) -> TrackId {
    (u64::from(generation) << 32) | ((idx as u64 & 0xff_ffff) << 8) | (track_no as u64 & 0xff)
}

fn track_parts(id: TrackId) -> (usize, u32, usize) {
    (
        ((id >> 8) & 0xff_ffff) as usize,
        (id >> 32) as u32,
        (id & 0xff) as usize,
    )
}

/// The publishing session among `members` that spoke last, if any has.
fn last_speaker<'a>(sessions: &'a [Option<Session>], members: &[usize]) -> Option<&'a Session> {
    members
        .iter()
        .rev()
        .filter_map(|&m| sessions.get(m)?.as_ref())
        .filter_map(|s| match &s.role {
            Role::Publisher(p) => Some((p.last_spoke?, s)),
            Role::Subscriber(_) => None,
        })
        // On a tie the first member: `max_by_key` keeps the last of equals, so members go
        // in reverse.
        .max_by_key(|(t, _)| *t)
        .map(|(_, s)| s)
}

/// Drain one session's output until `Timeout`. Free function so the caller can hold other
/// parts of the core borrowed.
fn drain(
    idx: usize,
    s: &mut Session,
    wire: &mut dyn Wire,
    events: &mut VecDeque<(usize, u32, Event)>,
    book: &mut Book,
) {
    loop {
        match s.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                s.next_timeout = t;
                return;
            }
            Ok(Output::Transmit(t)) => {
                if let (Role::Subscriber(sub), Some(ssrc)) = (&mut s.role, rtp_ssrc(&t.contents)) {
                    sub.copy_left(ssrc, book);
                }
                wire.send(t.destination, &t.contents);
            }
            Ok(Output::Event(e)) => events.push_back((idx, s.generation, e)),
            Err(e) => {
                tracing::debug!(session = %s.id, "rtc failed: {e}");
                s.dead = true;
                return;
            }
        }
    }
}

impl Core {
    pub fn new(cfg: CoreConfig, counters: Arc<WorkerCounters>, now: Instant) -> Core {
        str0m::crypto::from_feature_flags().install_process_default();
        Core {
            cfg,
            sessions: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            rooms: HashMap::new(),
            counters,
            events: VecDeque::new(),
            next_gen: 1,
            next_tick: now + TICK,
            gone_sessions: Vec::new(),
            gone_rooms: Vec::new(),
            reap: false,
            book: Book::default(),
            written: 0,
            chat_sent: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.cfg.local
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn session_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn has_session(&self, id: &SessionId) -> bool {
        self.by_id.contains_key(id)
    }

    /// True if anything was removed since the last [`Core::take_gone`].
    pub fn has_gone(&self) -> bool {
        !self.gone_sessions.is_empty() || !self.gone_rooms.is_empty()
    }

    /// Hand over the ids of sessions and rooms removed since the last call.
    pub fn take_gone(&mut self) -> (Vec<SessionId>, Vec<RoomKey>) {
        (
            std::mem::take(&mut self.gone_sessions),
            std::mem::take(&mut self.gone_rooms),
        )
    }

    /// Read times (the `now` of the datagram's [`Core::handle_datagram`]) of the forwarded
    /// datagrams whose copies have all been transmitted since the last call: the shell records
    /// the forward delay once it has sent them.
    pub fn take_left(&mut self) -> std::vec::Drain<'_, Instant> {
        self.book.take_left()
    }

    /// Forwarded datagrams with copies still queued in str0m.
    pub fn forwarding(&self) -> usize {
        self.book.open_tickets()
    }

    /// Chat messages relayed since the last call, for the audit log.
    pub fn take_chat_sent(&mut self) -> Vec<ChatSent> {
        std::mem::take(&mut self.chat_sent)
    }

    /// Copies written since the last [`Core::handle_timeout`], which releases them all.
    pub fn written(&self) -> usize {
        self.written
    }

    /// When [`Core::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Instant {
        self.sessions
            .iter()
            .flatten()
            .map(|s| s.next_timeout)
            .fold(self.next_tick, Instant::min)
    }

    /// One datagram from `src`.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        data: &[u8],
        now: Instant,
        wire: &mut dyn Wire,
    ) {
        let known = self.by_addr.get(&src).copied();
        let idx = match known {
            Some(i) => i,
            None => match stun::local_ufrag(data).and_then(|u| self.by_ufrag.get(u)) {
                Some(&i) => i,
                None => {
                    self.counters.dropped(DropReason::UnknownSource);
                    return;
                }
            },
        };
        let Ok(recv) = Receive::new(Protocol::Udp, src, self.cfg.local, data) else {
            self.counters.dropped(DropReason::Malformed);
            return;
        };
        let input = Input::Receive(now, recv);
        let Some(s) = self.sessions[idx].as_mut() else {
            self.counters.dropped(DropReason::UnknownSource);
            return;
        };
        if known.is_none() {
            if !s.rtc.accepts(&input) || s.addrs.len() >= MAX_ADDRS {
                self.counters.dropped(DropReason::UnknownSource);
                return;
            }
            s.addrs.push(src);
            self.by_addr.insert(src, idx);
        }
        s.last_rx = Some(now);
        if let Err(e) = s.rtc.handle_input(input) {
            tracing::trace!(session = %s.id, "input rejected: {e}");
            self.counters.dropped(DropReason::Malformed);
        }
        drain(idx, s, wire, &mut self.events, &mut self.book);
        self.pump(now, wire);
    }

    /// Advance time: sessions' timers, and the allocation tick.
    pub fn handle_timeout(&mut self, now: Instant, wire: &mut dyn Wire) {
        self.written = 0;
        for idx in 0..self.sessions.len() {
            let Some(s) = self.sessions[idx].as_mut() else {
                continue;
            };
            if s.next_timeout > now {
                continue;
            }
            if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(session = %s.id, "timeout input failed: {e}");
                s.dead = true;
                self.reap = true;
            }
            drain(idx, s, wire, &mut self.events, &mut self.book);
        }
        self.pump(now, wire);
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.tick(now, wire);
            self.pump(now, wire);
        }
    }

    /// Handle queued events until none are left, then remove dead sessions.
    fn pump(&mut self, now: Instant, wire: &mut dyn Wire) {
        loop {
            while let Some((idx, generation, ev)) = self.events.pop_front() {
                let alive = self
                    .sessions
                    .get(idx)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.generation == generation);
                if alive {
                    self.on_event(idx, ev, now, wire);
                }
            }
            // Only scan for dead sessions when something died: this runs per datagram.
            if !std::mem::take(&mut self.reap) {
                return;
            }
            let dead: Vec<usize> = self
                .sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| s.as_ref().is_some_and(|s| s.dead))
                .map(|(i, _)| i)
                .collect();
            for idx in dead {
                self.remove(idx, now, wire);
            }
            // Removing re-allocates, which may have queued more (keyframe requests).
            if self.events.is_empty() {
                return;
            }
        }
    }

    fn on_event(&mut self, idx: usize, ev: Event, now: Instant, wire: &mut dyn Wire) {
        match ev {
            Event::RtpPacket(p) => self.on_rtp(idx, p, now),
            Event::KeyframeRequest(k) => {
                let feed = match self.sessions[idx].as_ref().map(|s| &s.role) {
                    Some(Role::Subscriber(sub)) => sub
                        .video
                        .iter()
                        .find(|v| v.mid == k.mid)
                        .and_then(|v| v.gate.current()),
                    _ => None,
                };
                if let Some(f) = feed {
                    self.request_keyframe(f, now, wire, false);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. }) => {
                if let Some(Session {
                    role: Role::Subscriber(sub),
                    ..
                }) = self.sessions[idx].as_mut()
                {
                    bump(&self.counters.bandwidth_reports, 1);
                    tracing::debug!(
                        bps = estimate.as_u64(),
                        sending = sub.sending_bps,
                        "bandwidth report"
                    );
                    sub.estimate.on_report(estimate.as_u64(), sub.sending_bps);
                }
            }
            Event::MediaEgressStats(stats) => {
                if let Some(Session {
                    role: Role::Subscriber(sub),
                    ..
                }) = self.sessions[idx].as_mut()
                    && let Some(loss) = stats.loss
                {
                    sub.estimate.on_loss(loss);
                }
            }
            Event::ChannelOpen(id, label) => self.on_chat_open(idx, id, &label, wire),
            Event::ChannelData(d) => self.on_chat(idx, d, now, wire),
            Event::ChannelClose(id) => {
                if let Some(Session {
                    role: Role::Subscriber(sub),
                    ..
                }) = self.sessions[idx].as_mut()
                    && sub.chat.as_ref().is_some_and(|c| c.id == id)
                {
                    sub.chat = None;
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) | Event::Closed => {
                if let Some(s) = self.sessions[idx].as_mut() {
                    s.dead = true;
                    self.reap = true;
                }
            }
            _ => {}
        }
    }
}

impl Layer {
    fn new(rid: Option<Rid>) -> Layer {
        Layer {
            rid,
            ssrc: None,
            height: None,
            window_bytes: 0,
            bitrate_bps: 0,
            last_rx: None,
            last_pli: None,
        }
    }
}
