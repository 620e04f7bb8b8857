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
//! Invariants:
//! - after every input to an `Rtc` (datagram, timeout, keyframe request, SDP) its
//!   `poll_output` is drained until `Timeout`; events are queued and handled afterwards, so
//!   forwarding into other sessions never happens while one is half-drained;
//! - a forwarded write is the exception: it only marks its session due, because str0m's pacer
//!   learns of written packets on the session's next timeout and releases one packet per
//!   timeout; [`Core::handle_timeout`] runs that timeout before the worker next waits;
//! - a datagram reaches its session by a map lookup (remote address, or the STUN USERNAME's
//!   ufrag for a new address), never by scanning sessions;
//! - forwarding allocates nothing of its own: the payload is str0m's shared buffer, the event
//!   queue is reused;
//! - removing a session clears every reference to its tracks from the room's subscribers
//!   before anything else runs, and track ids are never reused, so no stale feed survives;
//! - nothing here panics on network input.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Rids};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc, Vp8Descriptor, Vp8Patch};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use super::allocate::{self, Feed, LayerInfo, ParticipantId, SlotRequest, TrackId, VideoTrack};
use super::audio::{AudioCandidate, Loudness, select_audio};
use super::counters::{DropReason, WorkerCounters, bump, set};
use super::delay::{Book, Pending, rtp_ssrc};
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

/// Initial send-side estimate towards a subscriber.
const INITIAL_BWE_BPS: u64 = 1_000_000;

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
    bwe_bps: Option<u64>,
    desired_bps: u64,
    video: Vec<VideoSlot>,
    audio: Vec<AudioLine>,
    prev: Vec<Option<Feed>>,
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

fn video_codec(c: Codec) -> Option<VideoCodec> {
    match c {
        Codec::Vp8 => Some(VideoCodec::Vp8),
        Codec::Vp9 => Some(VideoCodec::Vp9),
        Codec::H264 => Some(VideoCodec::H264),
        _ => None,
    }
}

/// An SDP error as the client is told it: the parser's reasons, without the position it gives
/// as a memory address (`Parse error at PointerOffset(0x7f...)`) or anything else in hex.
fn bad_sdp(e: impl std::fmt::Display) -> MediaError {
    let text = e.to_string();
    let reasons: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Parse error at"))
        .collect();
    let clean: Vec<String> = reasons
        .join("; ")
        .split(' ')
        .filter(|w| !w.contains("0x"))
        .map(String::from)
        .collect();
    let clean = clean.join(" ");
    MediaError::BadSdp(if clean.is_empty() {
        "the offer does not parse".into()
    } else {
        clean
    })
}

/// Build a session's `Rtc`: ICE-lite server in RTP mode, with only codecs whose keyframes we
/// can recognise (a switch must wait for one), and no RED (audio is forwarded as is).
fn new_rtc(bwe: bool, now: Instant) -> Rtc {
    let cfg = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .enable_vp9(true);
    let cfg = if bwe {
        cfg.enable_bwe(Some(Bitrate::bps(INITIAL_BWE_BPS)))
    } else {
        cfg
    };
    cfg.build(now)
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

    /// When [`Core::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Instant {
        self.sessions
            .iter()
            .flatten()
            .map(|s| s.next_timeout)
            .fold(self.next_tick, Instant::min)
    }

    /// Accept a WHIP offer.
    pub fn publish(
        &mut self,
        room: &str,
        user: &str,
        source: Source,
        offer_sdp: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<SessionAnswer, MediaError> {
        self.open(room, user, Some(source), offer_sdp, now, wire)
    }

    /// Accept a WHEP offer.
    pub fn subscribe(
        &mut self,
        room: &str,
        user: &str,
        layout: Layout,
        offer_sdp: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<SessionAnswer, MediaError> {
        let answer = self.open(room, user, None, offer_sdp, now, wire)?;
        if let Some(idx) = self.by_id.get(&answer.session).copied()
            && let Some(Session {
                role: Role::Subscriber(sub),
                ..
            }) = self.sessions[idx].as_mut()
        {
            sub.layout = layout;
        }
        self.reallocate(room, now, wire);
        self.pump(now, wire);
        Ok(answer)
    }

    fn open(
        &mut self,
        room: &str,
        user: &str,
        publish: Option<Source>,
        offer_sdp: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<SessionAnswer, MediaError> {
        match self.rooms.get(room) {
            Some(r) if r.members.len() >= self.cfg.max_sessions_per_room => {
                return Err(MediaError::RoomFull);
            }
            None if self.rooms.len() >= self.cfg.max_rooms => return Err(MediaError::WorkerBusy),
            _ => {}
        }
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(bad_sdp)?;
        let mut rtc = new_rtc(publish.is_none(), now);
        let candidate = Candidate::host(self.cfg.local, "udp")
            .map_err(|e| MediaError::Config(format!("host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc.sdp_api().accept_offer(offer).map_err(bad_sdp)?;
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let id = SessionId::random()?;
        let generation = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.sessions.push(None);
            self.sessions.len() - 1
        });

        // The answer's media sections. (str0m's MediaAdded events only come once connected;
        // the slots must exist before that.)
        let added: Vec<MediaSection> = answer
            .media_lines
            .iter()
            .filter_map(|line| {
                let m = rtc.media(line.mid())?;
                let rids = match m.rids_rx() {
                    Rids::Specific(r) => r.clone(),
                    _ => Vec::new(),
                };
                Some(MediaSection {
                    mid: m.mid(),
                    kind: m.kind(),
                    direction: m.direction(),
                    rids,
                })
            })
            .collect();
        let mut s = Session {
            id: id.clone(),
            generation,
            rtc,
            room: room.to_owned(),
            user: user.to_owned(),
            participant: 0,
            ufrag: ufrag.clone(),
            addrs: Vec::new(),
            created: now,
            last_rx: None,
            next_timeout: now,
            dead: false,
            role: Role::Subscriber(Subscriber {
                layout: Layout::Grid,
                max_height: None,
                bwe_bps: None,
                desired_bps: 0,
                video: Vec::new(),
                audio: Vec::new(),
                prev: Vec::new(),
            }),
        };

        let r = self.rooms.entry(room.to_owned()).or_default();
        let participant = match r.participants.get_mut(user) {
            Some((p, refs)) => {
                *refs += 1;
                *p
            }
            None => {
                let p = r.next_participant;
                r.next_participant += 1;
                r.participants.insert(user.to_owned(), (p, 1));
                p
            }
        };
        s.participant = participant;
        s.role = match publish {
            Some(source) => {
                let codecs = s
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .map(|p| (p.pt(), p.spec().codec, p.spec().clock_rate.get()))
                    .collect();
                let mut tracks = Vec::new();
                for m in added.iter().filter(|m| m.direction.is_receiving()) {
                    let layers = if m.rids.is_empty() {
                        vec![Layer::new(None)]
                    } else {
                        m.rids.iter().map(|r| Layer::new(Some(*r))).collect()
                    };
                    let order = r.next_order;
                    r.next_order += 1;
                    tracks.push(Track {
                        id: track_id(idx, generation, tracks.len()),
                        mid: m.mid,
                        kind: m.kind,
                        order,
                        layers,
                        loudness: Loudness::default(),
                    });
                }
                Role::Publisher(Publisher {
                    source,
                    tracks,
                    codecs,
                    last_spoke: None,
                })
            }
            None => {
                let mut sub = Subscriber {
                    layout: Layout::Grid,
                    max_height: None,
                    bwe_bps: None,
                    desired_bps: 0,
                    video: Vec::new(),
                    audio: Vec::new(),
                    prev: Vec::new(),
                };
                for m in added.iter().filter(|m| m.direction.is_sending()) {
                    let full = match m.kind {
                        MediaKind::Video => sub.video.len() >= MAX_LINES,
                        MediaKind::Audio => sub.audio.len() >= MAX_LINES,
                    };
                    if full {
                        continue;
                    }
                    let Some(ssrc) = tx_ssrc(&mut s.rtc, m.mid) else {
                        continue;
                    };
                    let pts = line_pts(&s.rtc, m.mid);
                    // Start numbering somewhere the SSRC picks, below 2^15 so no rollover
                    // counter needs signalling for a long while.
                    let rw = Rewriter::new((*ssrc & 0x7fff) as u16, (*ssrc).rotate_left(7));
                    match m.kind {
                        MediaKind::Video => sub.video.push(VideoSlot {
                            mid: m.mid,
                            ssrc,
                            pts,
                            gate: SlotGate::default(),
                            rw,
                            pics: PictureIds::default(),
                            pending: Pending::default(),
                        }),
                        MediaKind::Audio => sub.audio.push(AudioLine {
                            ssrc,
                            pts,
                            track: None,
                            rw,
                            pending: Pending::default(),
                        }),
                    }
                }
                sub.prev = vec![None; sub.video.len()];
                Role::Subscriber(sub)
            }
        };
        // Declaring streams is an input too: drain again.
        drain(idx, &mut s, wire, &mut self.events, &mut self.book);
        r.members.push(idx);
        self.by_id.insert(id.clone(), idx);
        self.by_ufrag.insert(ufrag, idx);
        self.sessions[idx] = Some(s);
        self.update_gauges();
        Ok(SessionAnswer {
            session: id,
            answer_sdp: answer.to_sdp_string(),
        })
    }

    /// Add trickled remote candidates (`application/trickle-ice-sdpfrag`).
    pub fn trickle(
        &mut self,
        id: &SessionId,
        frag: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let idx = *self.by_id.get(id).ok_or(MediaError::NotFound)?;
        let Some(s) = self.sessions[idx].as_mut() else {
            return Err(MediaError::NotFound);
        };
        for line in frag.lines() {
            let line = line.trim();
            let Some(c) = line.strip_prefix("a=") else {
                continue;
            };
            if !c.starts_with("candidate:") {
                continue;
            }
            let cand = Candidate::from_sdp_string(c).map_err(bad_sdp)?;
            s.rtc.add_remote_candidate(cand);
        }
        drain(idx, s, wire, &mut self.events, &mut self.book);
        self.pump(now, wire);
        Ok(())
    }

    /// End a session now, freeing everything it holds.
    pub fn end(
        &mut self,
        id: &SessionId,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let idx = *self.by_id.get(id).ok_or(MediaError::NotFound)?;
        self.remove(idx, now, wire);
        self.pump(now, wire);
        Ok(())
    }

    /// Change a subscriber's layout and height cap.
    pub fn set_layout(
        &mut self,
        id: &SessionId,
        layout: Layout,
        max_height: Option<u32>,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let idx = *self.by_id.get(id).ok_or(MediaError::NotFound)?;
        let Some(Session {
            role: Role::Subscriber(sub),
            room,
            ..
        }) = self.sessions[idx].as_mut()
        else {
            return Err(MediaError::NotFound);
        };
        sub.layout = layout;
        sub.max_height = max_height;
        let room = room.clone();
        self.reallocate(&room, now, wire);
        self.pump(now, wire);
        Ok(())
    }

    /// The room's publishers and subscribers, as `GET /api/rooms/{room}` shows them.
    pub fn room_info(&self, room: &str) -> Option<RoomInfo> {
        let r = self.rooms.get(room)?;
        let mut info = RoomInfo {
            room: room.to_owned(),
            publishers: Vec::new(),
            subscribers: Vec::new(),
        };
        for &idx in &r.members {
            let Some(s) = self.sessions[idx].as_ref() else {
                continue;
            };
            match &s.role {
                Role::Publisher(p) => info.publishers.push(PublisherInfo {
                    session: s.id.clone(),
                    user: s.user.clone(),
                    source: p.source,
                    layers: p
                        .tracks
                        .iter()
                        .filter(|t| t.kind == MediaKind::Video)
                        .flat_map(|t| t.layers.iter())
                        .map(|l| l.rid.map(|r| r.to_string()).unwrap_or_default())
                        .collect(),
                }),
                Role::Subscriber(sub) => info.subscribers.push(SubscriberInfo {
                    session: s.id.clone(),
                    user: s.user.clone(),
                    layout: sub.layout,
                    slots: sub
                        .video
                        .iter()
                        .map(|v| {
                            let feed = v.gate.current();
                            let layer = feed.and_then(|f| self.layer_of(f));
                            SlotInfo {
                                mid: v.mid.to_string(),
                                publisher: layer.as_ref().map(|(id, _)| id.clone()),
                                layer: layer.map(|(_, rid)| rid),
                            }
                        })
                        .collect(),
                }),
            }
        }
        Some(info)
    }

    /// The publishing session and the rid of a feed.
    fn layer_of(&self, f: Feed) -> Option<(SessionId, String)> {
        let (idx, generation, no) = track_parts(f.track);
        let s = self
            .sessions
            .get(idx)?
            .as_ref()
            .filter(|s| s.generation == generation)?;
        let Role::Publisher(p) = &s.role else {
            return None;
        };
        let l = p.tracks.get(no)?.layers.get(usize::from(f.layer))?;
        Some((
            s.id.clone(),
            l.rid.map(|r| r.to_string()).unwrap_or_default(),
        ))
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
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(Session {
                    role: Role::Subscriber(sub),
                    ..
                }) = self.sessions[idx].as_mut()
                {
                    sub.bwe_bps = Some(estimate.as_u64());
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

    /// A publisher's packet: account it, then offer it to every subscriber slot in the room.
    fn on_rtp(&mut self, idx: usize, pkt: RtpPacket, now: Instant) {
        bump(&self.counters.packets_received, 1);
        let Core {
            sessions,
            rooms,
            counters,
            book,
            ..
        } = self;
        let Some(s) = sessions[idx].as_mut() else {
            return;
        };
        let Role::Publisher(p) = &mut s.role else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let Some((ti, li)) = locate(p, &mut s.rtc, ssrc) else {
            counters.dropped(DropReason::Malformed);
            return;
        };
        let Some(&(_, codec, clock)) = p.codecs.iter().find(|c| c.0 == pkt.header.payload_type)
        else {
            counters.dropped(DropReason::CodecMismatch);
            return;
        };
        let track = &mut p.tracks[ti];
        let layer = &mut track.layers[li];
        layer.window_bytes += pkt.payload.len() as u64;
        layer.last_rx = Some(now);
        let mut keyframe = false;
        if let Some(vc) = video_codec(codec) {
            keyframe = is_keyframe(vc, &pkt.payload);
            if keyframe && vc == VideoCodec::Vp8 {
                layer.height = vp8_keyframe_height(&pkt.payload).or(layer.height);
            }
        }
        let mut ext = ExtensionValues::default();
        if track.kind == MediaKind::Audio
            && let Some(level) = pkt.header.ext_vals.audio_level
        {
            track.loudness.update(level);
            if track.loudness.speaking() {
                p.last_spoke = Some(now);
            }
            ext.audio_level = Some(level);
            ext.voice_activity = pkt.header.ext_vals.voice_activity;
        }
        let feed = Feed {
            track: track.id,
            layer: li as u8,
        };
        let kind = track.kind;
        let participant = s.participant;
        let Some(room) = rooms.get(&s.room) else {
            return;
        };
        let ticket = book.open(now);
        for &sidx in &room.members {
            if sidx == idx {
                continue;
            }
            let Some(sub_s) = sessions[sidx].as_mut() else {
                continue;
            };
            if sub_s.participant == participant {
                continue;
            }
            let Role::Subscriber(sub) = &mut sub_s.role else {
                continue;
            };
            let mut wrote = false;
            if kind == MediaKind::Video {
                for slot in &mut sub.video {
                    let verdict = slot.gate.on_packet(feed, keyframe);
                    if verdict == Verdict::Drop {
                        continue;
                    }
                    if verdict == Verdict::ForwardSwitched {
                        bump(&counters.layer_switches, 1);
                    }
                    let copied = write(
                        &mut sub_s.rtc,
                        slot.ssrc,
                        &slot.pts,
                        &mut slot.rw,
                        Some(&mut slot.pics),
                        codec,
                        clock,
                        &pkt,
                        ExtensionValues::default(),
                        now,
                        counters,
                    );
                    if copied {
                        book.wrote(ticket, &mut slot.pending);
                    }
                    wrote |= copied;
                }
            } else {
                for line in sub.audio.iter_mut().filter(|l| l.track == Some(feed.track)) {
                    let copied = write(
                        &mut sub_s.rtc,
                        line.ssrc,
                        &line.pts,
                        &mut line.rw,
                        None,
                        codec,
                        clock,
                        &pkt,
                        ext.clone(),
                        now,
                        counters,
                    );
                    if copied {
                        book.wrote(ticket, &mut line.pending);
                    }
                    wrote |= copied;
                }
            }
            // A written packet leaves on the session's next timeout (str0m's pacer learns of
            // it there), which the caller runs before it next waits: draining now would only
            // compute that timeout.
            if wrote {
                sub_s.next_timeout = now;
            }
        }
        book.sealed(ticket);
    }

    /// Ask the publisher of `feed` for a keyframe on that layer, at most once per
    /// [`PLI_THROTTLE`] (`force` for a switch, which must not wait for a subscriber's PLI).
    fn request_keyframe(&mut self, feed: Feed, now: Instant, wire: &mut dyn Wire, force: bool) {
        let (idx, generation, no) = track_parts(feed.track);
        let Some(s) = self.sessions.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if s.generation != generation {
            return;
        }
        let Role::Publisher(p) = &mut s.role else {
            return;
        };
        let Some(layer) = p
            .tracks
            .get_mut(no)
            .and_then(|t| t.layers.get_mut(usize::from(feed.layer)))
        else {
            return;
        };
        let Some(ssrc) = layer.ssrc else {
            return;
        };
        let recent = layer
            .last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < PLI_THROTTLE);
        if recent && !force {
            return;
        }
        layer.last_pli = Some(now);
        {
            let mut api = s.rtc.direct_api();
            if let Some(rx) = api.stream_rx(&ssrc) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                bump(&self.counters.keyframe_requests, 1);
            }
        }
        drain(idx, s, wire, &mut self.events, &mut self.book);
    }

    /// The periodic tick: layer bitrates, liveness, allocation of every room.
    fn tick(&mut self, now: Instant, wire: &mut dyn Wire) {
        // Also picks up sessions whose Rtc failed while draining.
        self.reap = true;
        let secs = TICK.as_secs_f64();
        for s in self.sessions.iter_mut().flatten() {
            let silent_for = now.saturating_duration_since(s.last_rx.unwrap_or(s.created));
            let limit = if s.last_rx.is_some() {
                SILENCE_TIMEOUT
            } else {
                SETUP_TIMEOUT
            };
            if silent_for > limit {
                s.dead = true;
            }
            if let Role::Publisher(p) = &mut s.role {
                for l in p.tracks.iter_mut().flat_map(|t| t.layers.iter_mut()) {
                    let rate = (l.window_bytes * 8) as f64 / secs;
                    // About one second of memory: a keyframe's burst must not read as the
                    // layer's rate, or every switch would push the allocator back down.
                    l.bitrate_bps = if l.bitrate_bps == 0 {
                        rate as u64
                    } else {
                        ((1.0 - RATE_SMOOTHING) * l.bitrate_bps as f64 + RATE_SMOOTHING * rate)
                            as u64
                    };
                    l.window_bytes = 0;
                }
            }
        }
        let rooms: Vec<RoomKey> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.reallocate(&room, now, wire);
        }
    }

    /// Re-run the allocation and audio selection for every subscriber of `room`, and ask for
    /// the keyframes the new choices need.
    fn reallocate(&mut self, room: &str, now: Instant, wire: &mut dyn Wire) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        // Live video tracks with their layers ranked lowest first, and live audio tracks.
        let mut layer_sets: Vec<LiveTrack> = Vec::new();
        let mut audio = Vec::new();
        for &idx in &r.members {
            let Some(s) = self.sessions[idx].as_ref() else {
                continue;
            };
            let Role::Publisher(p) = &s.role else {
                continue;
            };
            for t in &p.tracks {
                let live = |l: &&Layer| {
                    l.last_rx
                        .is_some_and(|at| now.saturating_duration_since(at) < STALE_AFTER)
                };
                if t.kind == MediaKind::Audio {
                    if t.layers.iter().any(|l| live(&l)) {
                        audio.push(AudioCandidate {
                            track: t.id,
                            participant: s.participant,
                            db: t.loudness.db(),
                        });
                    }
                    continue;
                }
                let mut layers: Vec<(usize, &Layer)> = t
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| live(l))
                    .collect();
                layers.sort_by_key(|(_, l)| (l.height.unwrap_or(0), l.bitrate_bps));
                let n = layers.len();
                let infos = layers
                    .iter()
                    .enumerate()
                    .map(|(rank, (i, l))| LayerInfo {
                        layer: *i as u8,
                        // Unknown heights: assume the usual halving per simulcast step.
                        height: l.height.unwrap_or(720 >> (n - 1 - rank).min(4)),
                        bitrate_bps: l.bitrate_bps.max(1),
                    })
                    .collect();
                layer_sets.push((
                    t.id,
                    s.participant,
                    p.source == Source::Screen,
                    p.last_spoke,
                    t.order,
                    infos,
                ));
            }
        }
        let tracks: Vec<VideoTrack<'_>> = layer_sets
            .iter()
            .map(
                |(id, participant, screen, last_spoke, order, layers)| VideoTrack {
                    id: *id,
                    participant: *participant,
                    screen: *screen,
                    layers,
                    last_spoke: *last_spoke,
                    order: *order,
                },
            )
            .collect();
        let members = r.members.clone();
        let mut requests = Vec::new();
        for idx in members {
            let Some(s) = self.sessions[idx].as_mut() else {
                continue;
            };
            let participant = s.participant;
            let Role::Subscriber(sub) = &mut s.role else {
                continue;
            };
            let req = SlotRequest {
                participant,
                layout: sub.layout,
                max_height: sub.max_height,
                bwe_bps: sub.bwe_bps,
            };
            let mut out = vec![None; sub.video.len()];
            allocate::allocate(&tracks, &req, &sub.prev, &mut out);
            for (slot, want) in sub.video.iter_mut().zip(&out) {
                if let Some(f) = slot.gate.set_target(*want, now) {
                    requests.push(f);
                }
                if let Some(f) = slot.gate.retry(now) {
                    requests.push(f);
                }
            }
            sub.prev = out;

            // What the subscriber would get without a bandwidth limit: the rate BWE should
            // probe for.
            let mut ideal = vec![None; sub.video.len()];
            allocate::allocate(
                &tracks,
                &SlotRequest {
                    bwe_bps: None,
                    ..req
                },
                &[],
                &mut ideal,
            );
            let desired: u64 = ideal
                .iter()
                .flatten()
                .filter_map(|f| {
                    let t = tracks.iter().find(|t| t.id == f.track)?;
                    t.layers
                        .iter()
                        .find(|l| l.layer == f.layer)
                        .map(|l| l.bitrate_bps)
                })
                .sum();
            if desired != sub.desired_bps && desired > 0 {
                sub.desired_bps = desired;
                s.rtc.bwe().set_bitrate(
                    Bitrate::bps(desired / 2),
                    Bitrate::bps(desired + desired / 4),
                );
            }

            let mut lines: Vec<Option<TrackId>> = sub.audio.iter().map(|l| l.track).collect();
            select_audio(&audio, participant, &mut lines);
            for (line, t) in sub.audio.iter_mut().zip(lines) {
                line.track = t;
            }
            drain(idx, s, wire, &mut self.events, &mut self.book);
        }
        for f in requests {
            self.request_keyframe(f, now, wire, true);
        }
    }

    /// Remove a session and every reference to it.
    fn remove(&mut self, idx: usize, now: Instant, wire: &mut dyn Wire) {
        let Some(mut s) = self.sessions[idx].take() else {
            return;
        };
        self.free.push(idx);
        self.by_id.remove(&s.id);
        self.by_ufrag.remove(&s.ufrag);
        for a in &s.addrs {
            self.by_addr.remove(a);
        }
        s.rtc.disconnect();
        if let Role::Subscriber(sub) = &mut s.role {
            for v in &mut sub.video {
                self.book.dropped(&mut v.pending);
            }
            for a in &mut sub.audio {
                self.book.dropped(&mut a.pending);
            }
        }
        let mut empty = false;
        if let Some(r) = self.rooms.get_mut(&s.room) {
            r.members.retain(|&m| m != idx);
            if let Some((_, refs)) = r.participants.get_mut(&s.user) {
                *refs -= 1;
                if *refs == 0 {
                    r.participants.remove(&s.user);
                }
            }
            if let Role::Publisher(p) = &s.role {
                for &m in &r.members {
                    let Some(Session {
                        role: Role::Subscriber(sub),
                        ..
                    }) = self.sessions[m].as_mut()
                    else {
                        continue;
                    };
                    for t in &p.tracks {
                        for v in &mut sub.video {
                            v.gate.forget_track(t.id);
                        }
                        for l in &mut sub.audio {
                            if l.track == Some(t.id) {
                                l.track = None;
                            }
                        }
                        for f in sub.prev.iter_mut() {
                            if f.is_some_and(|f| f.track == t.id) {
                                *f = None;
                            }
                        }
                    }
                }
            }
            empty = r.members.is_empty();
        }
        self.gone_sessions.push(s.id.clone());
        if empty {
            self.rooms.remove(&s.room);
            self.gone_rooms.push(s.room.clone());
        } else {
            self.reallocate(&s.room, now, wire);
        }
        self.update_gauges();
    }

    /// End every session (shutdown).
    pub fn close_all(&mut self, now: Instant, wire: &mut dyn Wire) {
        for idx in 0..self.sessions.len() {
            self.remove(idx, now, wire);
        }
        self.events.clear();
    }

    fn update_gauges(&self) {
        let mut pubs = 0;
        let mut subs = 0;
        for s in self.sessions.iter().flatten() {
            match s.role {
                Role::Publisher(_) => pubs += 1,
                Role::Subscriber(_) => subs += 1,
            }
        }
        set(&self.counters.rooms, self.rooms.len() as u64);
        set(&self.counters.publishers, pubs);
        set(&self.counters.subscribers, subs);
    }
}

impl Subscriber {
    /// The line sending as `ssrc` transmitted an RTP packet: its oldest queued copy left.
    /// Retransmissions and padding go out under the RTX SSRC and match no line; a peer that
    /// negotiated no RTX gets resends under the line's own SSRC, and each then releases a
    /// queued copy early (that datagram's delay is understated, only under loss).
    fn copy_left(&mut self, ssrc: u32, book: &mut Book) {
        let line = self
            .video
            .iter_mut()
            .find(|v| *v.ssrc == ssrc)
            .map(|v| &mut v.pending)
            .or_else(|| {
                self.audio
                    .iter_mut()
                    .find(|a| *a.ssrc == ssrc)
                    .map(|a| &mut a.pending)
            });
        if let Some(line) = line {
            book.transmitted(line);
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

/// Find the track and layer an incoming SSRC belongs to; the first packet of an SSRC binds it
/// by the mid and rid str0m mapped it to.
fn locate(p: &mut Publisher, rtc: &mut Rtc, ssrc: Ssrc) -> Option<(usize, usize)> {
    for (ti, t) in p.tracks.iter().enumerate() {
        if let Some(li) = t.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
            return Some((ti, li));
        }
    }
    let (mid, rid) = {
        let mut api = rtc.direct_api();
        let rx = api.stream_rx(&ssrc)?;
        (rx.mid(), rx.rid())
    };
    let ti = p.tracks.iter().position(|t| t.mid == mid)?;
    let t = &mut p.tracks[ti];
    let li = match t
        .layers
        .iter()
        .position(|l| l.rid == rid && l.ssrc.is_none())
    {
        Some(li) => li,
        // A rid the offer did not list, or a new SSRC for a layer (encoder restart): rebind.
        None => match t.layers.iter().position(|l| l.rid == rid) {
            Some(li) => li,
            None if t.layers.len() < 8 => {
                t.layers.push(Layer::new(rid));
                t.layers.len() - 1
            }
            None => return None,
        },
    };
    t.layers[li].ssrc = Some(ssrc);
    Some((ti, li))
}

/// The SSRC of the stream we send on `mid`: the one str0m declared while answering, or a new one.
fn tx_ssrc(rtc: &mut Rtc, mid: Mid) -> Option<Ssrc> {
    let mut api = rtc.direct_api();
    if let Some(tx) = api.stream_tx_by_mid(mid, None) {
        return Some(tx.ssrc());
    }
    let ssrc = api.new_ssrc();
    let rtx = api.new_ssrc();
    Some(api.declare_stream_tx(ssrc, Some(rtx), mid, None).ssrc())
}

/// The payload types negotiated on `mid`, by codec.
fn line_pts(rtc: &Rtc, mid: Mid) -> Vec<(Codec, Pt)> {
    let Some(media) = rtc.media(mid) else {
        return Vec::new();
    };
    let remote = media.remote_pts();
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| remote.is_empty() || remote.contains(&p.pt()))
        .map(|p| (p.spec().codec, p.pt()))
        .collect()
}

/// str0m's VP8 descriptor patch for `new`, or `None` if it refuses the descriptor.
fn vp8_patch(payload: &[u8], new: &NewIds) -> Option<Vp8Patch> {
    let mut b = Vp8Descriptor::parse(payload).ok()?.patch();
    if let (Some((_, wide)), Some(v)) = (new.fields.picture_id, new.picture_id) {
        b = b.picture_id(if wide { v & 0x7fff } else { v & 0x7f });
    }
    if let Some(v) = new.tl0picidx {
        b = b.tl0_pic_idx(v);
    }
    b.build().ok()
}

/// Rewrite and hand one packet to a subscriber's stream. True if written.
#[allow(clippy::too_many_arguments)]
fn write(
    rtc: &mut Rtc,
    ssrc: Ssrc,
    pts: &[(Codec, Pt)],
    rw: &mut Rewriter,
    pics: Option<&mut PictureIds>,
    codec: Codec,
    clock: u32,
    pkt: &RtpPacket,
    ext: ExtensionValues,
    now: Instant,
    counters: &WorkerCounters,
) -> bool {
    let Some(&(_, pt)) = pts.iter().find(|(c, _)| *c == codec) else {
        counters.dropped(DropReason::CodecMismatch);
        return false;
    };
    let Some(out) = rw.rewrite(
        *pkt.header.ssrc,
        *pkt.seq_no,
        pkt.header.timestamp,
        clock,
        now,
    ) else {
        counters.dropped(DropReason::Stale);
        return false;
    };
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx(&ssrc) else {
        return false;
    };
    // The payload is shared by every copy; renumbered pictures need their own bytes.
    let new_ids = match (pics, video_codec(codec)) {
        (Some(pics), Some(vc)) => pics
            .rewrite(vc, &pkt.payload, out.switched)
            .map(|n| (vc, n)),
        _ => None,
    };
    let mut w = RtpWrite::new(pt, out.seq.into(), out.ts, now, pkt.payload.clone());
    match new_ids {
        // str0m patches VP8 descriptors while serialising: no copy.
        Some((VideoCodec::Vp8, new)) => {
            if let Some(patch) = vp8_patch(&pkt.payload, &new) {
                w = w.vp8_patch(patch);
            }
        }
        Some((_, new)) => {
            let mut own = pkt.payload.to_vec();
            new.apply(&mut own);
            w = RtpWrite::new(pt, out.seq.into(), out.ts, now, own);
        }
        None => {}
    }
    tx.write_rtp(w.marker(pkt.header.marker).nackable(true).ext_vals(ext));
    bump(&counters.packets_forwarded, 1);
    bump(&counters.bytes_forwarded, pkt.payload.len() as u64);
    true
}
