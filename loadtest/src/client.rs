//! One simulated WebRTC participant's peer connection: a str0m `Rtc` in RTP mode on its own UDP
//! socket, either publishing synthetic simulcast VP8 and Opus-like audio, or receiving slots.
//!
//! Every payload carries a stamp after its codec header (publisher, layer, sequence id, send
//! time on the run's common clock), so a subscriber in the same process can measure one-way
//! delay without trusting anything the relay rewrites. Payload sizes and rates follow a real
//! camera encoder: three layers at about 150 kbit/s, 500 kbit/s and 1.5 Mbit/s at 30 frames per
//! second, frames cut into packets of at most 1100 bytes, keyframes four times the size of a
//! delta frame.
//!
//! The peer does no I/O of its own: [`Peer::drain`] hands datagrams to its socket and events to
//! a [`Ctx`] owned by the driving thread.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Output, Rtc};

/// Simulcast layers, lowest first, as the relay expects them.
pub const RIDS: [&str; 3] = ["l", "m", "h"];
const HEIGHTS: [u16; 3] = [180, 360, 720];
/// Target bitrate of each layer, bits per second.
pub const LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_500_000];
pub const FPS: u32 = 30;
pub const FRAME: Duration = Duration::from_nanos(1_000_000_000 / FPS as u64);
pub const AUDIO_PACKET: Duration = Duration::from_millis(20);
/// Largest RTP payload, so that SRTP datagrams stay under a 1200-byte path MTU.
const MAX_PAYLOAD: usize = 1100;
const KEYFRAME_SCALE: usize = 4;
/// Keyframes come on their own this often (and on every keyframe request).
const KEYFRAME_INTERVAL: Duration = Duration::from_secs(4);
/// Opus at about 40 kbit/s.
const AUDIO_PAYLOAD: usize = 100;
/// How long each publisher of a room talks before the next one does.
const SPEAKER_TURN: Duration = Duration::from_secs(5);

/// The stamp sits past the VP8 payload descriptor (1 byte) and a keyframe's 10-byte header, so
/// it never overlaps anything the relay reads.
const STAMP_AT: usize = 12;
const MAGIC: [u8; 2] = *b"LT";
const STAMP_LEN: usize = 2 + 4 + 1 + 8 + 8;

/// What one peer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// Counters of one driving thread; a window is the difference of two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub video_packets_sent: u64,
    pub audio_packets_sent: u64,
    pub video_packets_received: u64,
    pub audio_packets_received: u64,
    pub bytes_received: u64,
    pub keyframes_sent: u64,
    pub keyframe_requests_received: u64,
    pub send_errors: u64,
}

impl Totals {
    pub fn minus(&self, o: &Totals) -> Totals {
        Totals {
            video_packets_sent: self.video_packets_sent - o.video_packets_sent,
            audio_packets_sent: self.audio_packets_sent - o.audio_packets_sent,
            video_packets_received: self.video_packets_received - o.video_packets_received,
            audio_packets_received: self.audio_packets_received - o.audio_packets_received,
            bytes_received: self.bytes_received - o.bytes_received,
            keyframes_sent: self.keyframes_sent - o.keyframes_sent,
            keyframe_requests_received: self.keyframe_requests_received
                - o.keyframe_requests_received,
            send_errors: self.send_errors - o.send_errors,
        }
    }

    pub fn add(&mut self, o: &Totals) {
        self.video_packets_sent += o.video_packets_sent;
        self.audio_packets_sent += o.audio_packets_sent;
        self.video_packets_received += o.video_packets_received;
        self.audio_packets_received += o.audio_packets_received;
        self.bytes_received += o.bytes_received;
        self.keyframes_sent += o.keyframes_sent;
        self.keyframe_requests_received += o.keyframe_requests_received;
        self.send_errors += o.send_errors;
    }

    pub fn sent(&self) -> u64 {
        self.video_packets_sent + self.audio_packets_sent
    }

    pub fn received(&self) -> u64 {
        self.video_packets_received + self.audio_packets_received
    }
}

/// Most one-way delay samples kept per thread (a 10-minute run at full rate stays in memory).
const MAX_DELAY_SAMPLES: usize = 4_000_000;

/// The driving thread's side of every peer's events.
#[derive(Debug)]
pub struct Ctx {
    /// The run's common clock: stamps are nanoseconds since it.
    pub epoch: Instant,
    pub totals: Totals,
    /// Record delays and sequence gaps (the measured window is open).
    pub measuring: bool,
    /// One-way delays in the window, microseconds.
    pub delays_us: Vec<u32>,
    /// Join times of peers that joined, seconds.
    pub joins: Vec<f64>,
}

impl Ctx {
    pub fn new(epoch: Instant) -> Ctx {
        Ctx {
            epoch,
            totals: Totals::default(),
            measuring: false,
            delays_us: Vec::new(),
            joins: Vec::new(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// Loss on one received stream, from its (rewritten, continuous) sequence numbers: the relay
/// makes each slot one stream, so a gap is a packet that never arrived.
#[derive(Debug, Clone)]
struct SeqTrack {
    mid: Mid,
    first: Option<u64>,
    highest: u64,
    unique: u64,
    /// The last 1024 sequence numbers seen, to tell a retransmission from a first arrival.
    seen: Box<[u64; 1024]>,
}

impl SeqTrack {
    fn new(mid: Mid) -> SeqTrack {
        SeqTrack {
            mid,
            first: None,
            highest: 0,
            unique: 0,
            seen: Box::new([u64::MAX; 1024]),
        }
    }

    fn reset(&mut self) {
        self.first = None;
        self.highest = 0;
        self.unique = 0;
        self.seen.fill(u64::MAX);
    }

    fn on(&mut self, seq: u64) {
        let slot = (seq % 1024) as usize;
        match self.first {
            None => {
                self.first = Some(seq);
                self.highest = seq;
            }
            // Before the window opened: not counted either way.
            Some(f) if seq < f => return,
            Some(_) => {}
        }
        if self.seen[slot] == seq {
            return;
        }
        self.seen[slot] = seq;
        self.unique += 1;
        self.highest = self.highest.max(seq);
    }

    /// (expected, received) in the window.
    fn figures(&self) -> (u64, u64) {
        match self.first {
            Some(f) => {
                let expected = self.highest - f + 1;
                (expected, self.unique.min(expected))
            }
            None => (0, 0),
        }
    }
}

/// A peer connection and its media state.
#[derive(Debug)]
pub struct Peer {
    pub rtc: Rtc,
    pub socket: mio::net::UdpSocket,
    pub local: SocketAddr,
    pub role: Role,
    /// Publisher number within the run; carried in every stamp.
    pub id: u32,
    /// Position in its room's speaking order, and how many publishers take turns.
    pub turn: (u32, u32),
    pending: Option<SdpPendingOffer>,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    seq: [u64; 3],
    audio_seq: u64,
    frame: u32,
    audio_n: u32,
    key_wanted: [bool; 3],
    last_key: Instant,
    pub next_frame: Instant,
    pub next_audio: Instant,
    pub next_timeout: Instant,
    /// When signalling for this peer began; join time runs from here.
    pub started: Instant,
    pub joined: bool,
    pub dead: bool,
    tracks: Vec<SeqTrack>,
}

impl Peer {
    /// A peer on `socket`, which must be bound to a loopback address.
    pub fn new(
        socket: mio::net::UdpSocket,
        role: Role,
        id: u32,
        now: Instant,
    ) -> Result<Peer, String> {
        let local = socket
            .local_addr()
            .map_err(|e| format!("client socket address: {e}"))?;
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| format!("client candidate: {e}"))?;
        rtc.add_local_candidate(candidate);
        Ok(Peer {
            rtc,
            socket,
            local,
            role,
            id,
            turn: (0, 1),
            pending: None,
            video_mid: None,
            audio_mid: None,
            seq: [1_000, 20_000, 40_000],
            audio_seq: 500,
            frame: 0,
            audio_n: 0,
            key_wanted: [true; 3],
            last_key: now,
            next_frame: now,
            next_audio: now,
            next_timeout: now,
            started: now,
            joined: false,
            dead: false,
            tracks: Vec::new(),
        })
    }

    /// A sendonly offer: one video m-line with three simulcast layers, one audio m-line.
    pub fn publisher_offer(&mut self) -> Result<String, String> {
        let mut api = self.rtc.sdp_api();
        let mut sc = Simulcast::new();
        for r in RIDS {
            sc.add_send_layer(SimulcastLayer::new(r));
        }
        self.video_mid =
            Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sc)));
        self.audio_mid =
            Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        let (offer, pending) = api.apply().ok_or_else(|| "no offer to make".to_string())?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// A recvonly offer: `slots` video m-lines and one audio m-line.
    pub fn subscriber_offer(&mut self, slots: usize) -> Result<String, String> {
        let mut api = self.rtc.sdp_api();
        for _ in 0..slots {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        }
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().ok_or_else(|| "no offer to make".to_string())?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    pub fn accept(&mut self, answer: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| format!("answer does not parse: {e}"))?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| "no pending offer".to_string())?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("answer refused: {e}"))
    }

    /// Answers a server's offer (a peer that sends its subscribers the offer, as Janus does):
    /// every media line it offers is received.
    pub fn answer_offer(&mut self, offer: &str) -> Result<String, String> {
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| format!("offer does not parse: {e}"))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("offer refused: {e}"))?;
        Ok(answer.to_sdp_string())
    }

    /// Starts counting loss afresh on every received stream.
    pub fn open_window(&mut self) {
        for t in &mut self.tracks {
            t.reset();
        }
    }

    /// (expected, received) packets over every received stream in the window.
    pub fn loss_figures(&self) -> (u64, u64) {
        self.tracks.iter().fold((0, 0), |(e, r), t| {
            let (te, tr) = t.figures();
            (e + te, r + tr)
        })
    }

    /// Runs str0m until it waits for time or input; sends what it queued.
    pub fn drain(&mut self, ctx: &mut Ctx, now: Instant) {
        // Bounded: str0m ends every drain with a timeout; the cap only guards a broken peer.
        for _ in 0..100_000 {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if self.socket.send_to(&t.contents, t.destination).is_err() {
                        ctx.totals.send_errors += 1;
                    }
                }
                Ok(Output::Event(e)) => self.on_event(e, ctx, now),
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.dead = true;
    }

    fn on_event(&mut self, e: Event, ctx: &mut Ctx, now: Instant) {
        match e {
            Event::Connected if self.role == Role::Publisher && !self.joined => {
                self.joined = true;
                ctx.joins
                    .push(now.saturating_duration_since(self.started).as_secs_f64());
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.dead = true;
            }
            Event::KeyframeRequest(k) => {
                ctx.totals.keyframe_requests_received += 1;
                match k
                    .rid
                    .and_then(|rid| RIDS.iter().position(|r| Rid::from(*r) == rid))
                {
                    Some(i) => self.key_wanted[i] = true,
                    None => self.key_wanted = [true; 3],
                }
            }
            Event::RtpPacket(p) => {
                let mid = {
                    let mut api = self.rtc.direct_api();
                    api.stream_rx(&p.header.ssrc).map(|s| s.mid())
                };
                let Some(mid) = mid else { return };
                let audio = self.rtc.media(mid).map(|m| m.kind()) == Some(MediaKind::Audio);
                if audio {
                    ctx.totals.audio_packets_received += 1;
                } else {
                    ctx.totals.video_packets_received += 1;
                    if !self.joined {
                        self.joined = true;
                        ctx.joins
                            .push(now.saturating_duration_since(self.started).as_secs_f64());
                    }
                }
                ctx.totals.bytes_received += p.payload.len() as u64;
                if !ctx.measuring {
                    return;
                }
                let at = if audio { 1 } else { STAMP_AT };
                if let Some(stamp) = p.payload.get(at..at + STAMP_LEN)
                    && stamp[..2] == MAGIC
                    && ctx.delays_us.len() < MAX_DELAY_SAMPLES
                {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&stamp[15..23]);
                    let sent = u64::from_be_bytes(sent);
                    let delay = ctx.nanos(now).saturating_sub(sent) / 1_000;
                    ctx.delays_us.push(delay.min(u32::MAX as u64) as u32);
                }
                let i = match self.tracks.iter().position(|t| t.mid == mid) {
                    Some(i) => i,
                    None => {
                        self.tracks.push(SeqTrack::new(mid));
                        self.tracks.len() - 1
                    }
                };
                self.tracks[i].on(*p.seq_no);
            }
            _ => {}
        }
    }

    fn pt(&self, codec: Codec) -> Option<Pt> {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    fn stamp(&self, buf: &mut [u8], at: usize, layer: u8, seq: u64, sent: u64) {
        let s = &mut buf[at..at + STAMP_LEN];
        s[..2].copy_from_slice(&MAGIC);
        s[2..6].copy_from_slice(&self.id.to_be_bytes());
        s[6] = layer;
        s[7..15].copy_from_slice(&seq.to_be_bytes());
        s[15..23].copy_from_slice(&sent.to_be_bytes());
    }

    /// One video frame on every layer: a keyframe where one is due or was asked for.
    pub fn send_frame(&mut self, ctx: &mut Ctx, now: Instant) {
        let (Some(mid), Some(pt)) = (self.video_mid, self.pt(Codec::Vp8)) else {
            return;
        };
        self.frame = self.frame.wrapping_add(1);
        if now.saturating_duration_since(self.last_key) >= KEYFRAME_INTERVAL {
            self.key_wanted = [true; 3];
        }
        let sent = ctx.nanos(now);
        for (i, rid) in RIDS.iter().enumerate() {
            let key = std::mem::take(&mut self.key_wanted[i]);
            if key {
                ctx.totals.keyframes_sent += 1;
                self.last_key = now;
            }
            let frame_bytes =
                (LAYER_BPS[i] / 8 / FPS as u64) as usize * if key { KEYFRAME_SCALE } else { 1 };
            let packets = frame_bytes.div_ceil(MAX_PAYLOAD).max(1);
            let size = (frame_bytes / packets).max(STAMP_AT + STAMP_LEN);
            for n in 0..packets {
                let mut payload = vec![0u8; size];
                if n == 0 {
                    // Descriptor: S=1, partition 0; then the VP8 frame tag, P bit clear on a
                    // keyframe, which is what the relay gates layer switches on.
                    payload[0] = 0x10;
                    if key {
                        payload[1] = 0x00;
                        payload[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                        payload[7..9].copy_from_slice(&(HEIGHTS[i] * 16 / 9).to_le_bytes());
                        payload[9..11].copy_from_slice(&HEIGHTS[i].to_le_bytes());
                    } else {
                        payload[1] = 0x01;
                    }
                }
                let seq = self.seq[i];
                self.seq[i] += 1;
                self.stamp(&mut payload, STAMP_AT, i as u8, seq, sent);
                let mut api = self.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, Some(Rid::from(*rid))) else {
                    return;
                };
                tx.write_rtp(
                    RtpWrite::new(
                        pt,
                        seq.into(),
                        self.frame.wrapping_mul(90_000 / FPS),
                        now,
                        payload,
                    )
                    .marker(n + 1 == packets)
                    .nackable(true),
                );
                ctx.totals.video_packets_sent += 1;
            }
        }
    }

    /// One 20 ms audio packet with its RFC 6464 level: loud on this publisher's turn, quiet
    /// otherwise, so the relay's speaker choice moves around the room.
    pub fn send_audio(&mut self, ctx: &mut Ctx, now: Instant) {
        let (Some(mid), Some(pt)) = (self.audio_mid, self.pt(Codec::Opus)) else {
            return;
        };
        self.audio_n = self.audio_n.wrapping_add(1);
        let elapsed = now.saturating_duration_since(ctx.epoch);
        let turn = (elapsed.as_secs() / SPEAKER_TURN.as_secs()) as u32 % self.turn.1.max(1);
        let level = if turn == self.turn.0 { -25 } else { -70 };
        let ext = ExtensionValues {
            audio_level: Some(level),
            voice_activity: Some(level > -50),
            ..Default::default()
        };
        let seq = self.audio_seq;
        self.audio_seq += 1;
        let mut payload = vec![0u8; AUDIO_PAYLOAD];
        // An Opus TOC byte (SILK wideband, 20 ms, one frame), then the stamp.
        payload[0] = 0x48;
        self.stamp(&mut payload, 1, 255, seq, ctx.nanos(now));
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), self.audio_n.wrapping_mul(960), now, payload)
                .ext_vals(ext),
        );
        ctx.totals.audio_packets_sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_as_loss_and_repeats_do_not() {
        let mut t = SeqTrack::new(Mid::from("0"));
        for s in [10, 11, 13, 13, 14, 12, 9] {
            t.on(s);
        }
        // 10..=14 expected; 9 came before the window, 13 twice.
        assert_eq!(t.figures(), (5, 5));
        t.reset();
        for s in [100, 102, 105] {
            t.on(s);
        }
        assert_eq!(t.figures(), (6, 3));
    }
}
