//! One WebRTC participant's peer connection: a str0m `Rtc` in RTP mode that publishes synthetic
//! simulcast VP8 and Opus-like audio, or receives slots.
//!
//! Every payload carries a [`Stamp`] after its codec header (publisher, layer, sequence number,
//! send time on the run's common clock), so a receiver in the same process can tell which
//! publisher and layer reached which slot and measure one-way delay without trusting anything a
//! relay rewrites. How much an encoder sends is a [`Shape`].
//!
//! A receiving peer reports a bandwidth estimate by REMB, as a browser does when transport-cc is
//! not negotiated ([`Remb`]).
//!
//! The peer does no I/O of its own: its caller hands it datagrams and timeouts, and it answers
//! with [`Note`]s (datagrams to send, packets received, what happened), so the same peer runs on
//! real sockets in the load tester and on a simulated network in the SFU's tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

/// Simulcast layers, lowest first, as the relay expects them.
pub const RIDS: [&str; 3] = ["l", "m", "h"];
/// The picture height each layer's keyframes declare.
pub const HEIGHTS: [u16; 3] = [180, 360, 720];

/// Where the stamp sits in a video payload: past the VP8 payload descriptor (1 byte) and a
/// keyframe's 10-byte header, so it never overlaps anything a relay reads.
pub const VIDEO_STAMP_AT: usize = 12;
/// Where the stamp sits in an audio payload: past the Opus TOC byte.
pub const AUDIO_STAMP_AT: usize = 1;
const MAGIC: [u8; 2] = *b"LT";
const STAMP_LEN: usize = 2 + 4 + 1 + 8 + 8;
/// The layer number audio stamps carry.
pub const AUDIO_LAYER: u8 = 255;

/// How much an encoder sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bits per second of each simulcast layer, lowest first.
    pub layer_bps: [u64; 3],
    pub fps: u32,
    /// Largest RTP payload; a bigger frame is cut into packets of about equal size.
    pub max_payload: usize,
    /// A keyframe's size as a multiple of a delta frame's.
    pub keyframe_scale: usize,
    /// Keyframes come on their own this often, besides when asked for.
    pub keyframe_interval: Option<Duration>,
    /// How long the encoder takes to answer a keyframe request.
    pub key_delay: Duration,
    /// Bytes of one 20 ms audio packet.
    pub audio_payload: usize,
}

impl Shape {
    /// A camera encoder: layers at about 150 kbit/s, 500 kbit/s and 1.5 Mbit/s at 30 frames per
    /// second, frames cut into packets of at most 1100 bytes (so SRTP datagrams stay under a
    /// 1200-byte path MTU), keyframes four times a delta frame, one every 4 s and one at the
    /// next frame when asked for; Opus at about 40 kbit/s.
    pub const CAMERA: Shape = Shape {
        layer_bps: [150_000, 500_000, 1_500_000],
        fps: 30,
        max_payload: 1100,
        keyframe_scale: 4,
        keyframe_interval: Some(Duration::from_secs(4)),
        key_delay: Duration::ZERO,
        audio_payload: 100,
    };

    /// One packet per layer and frame (240, 440 and 640 bytes, so measured bitrates still rank
    /// the layers), keyframes only when asked for and 150 ms later, as an encoder answers a
    /// PLI some frames on: small enough for a simulated room to run minutes of media per test.
    pub const SMALL: Shape = Shape {
        layer_bps: [57_600, 105_600, 153_600],
        fps: 30,
        max_payload: 1100,
        keyframe_scale: 1,
        keyframe_interval: None,
        key_delay: Duration::from_millis(150),
        audio_payload: 30,
    };

    /// The time between two frames.
    pub fn frame_interval(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / u64::from(self.fps.max(1)))
    }
}

/// How often audio packets go out.
pub const AUDIO_PACKET: Duration = Duration::from_millis(20);

/// What a publisher wrote into a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The publishing peer's label.
    pub publisher: u32,
    /// The simulcast layer (0 is the lowest), or [`AUDIO_LAYER`].
    pub layer: u8,
    /// The publisher's own sequence number of the packet.
    pub seq: u64,
    /// When it was sent: nanoseconds since the run's common clock started.
    pub sent: u64,
}

impl Stamp {
    fn write(&self, buf: &mut [u8]) {
        let s = &mut buf[..STAMP_LEN];
        s[..2].copy_from_slice(&MAGIC);
        s[2..6].copy_from_slice(&self.publisher.to_be_bytes());
        s[6] = self.layer;
        s[7..15].copy_from_slice(&self.seq.to_be_bytes());
        s[15..23].copy_from_slice(&self.sent.to_be_bytes());
    }

    /// The stamp at the start of `buf`, if one is there.
    pub fn read(buf: &[u8]) -> Option<Stamp> {
        let s = buf.get(..STAMP_LEN)?;
        if s[..2] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&s[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(Stamp {
            publisher: u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            layer: s[6],
            seq: u64_at(7),
            sent: u64_at(15),
        })
    }
}

/// An RTP packet a peer received.
#[derive(Debug, Clone, Copy)]
pub struct Got {
    pub mid: Mid,
    pub audio: bool,
    /// The first packet of a VP8 keyframe.
    pub keyframe: bool,
    /// The (extended) sequence number and timestamp as they arrived.
    pub seq: u64,
    pub ts: u32,
    pub at: Instant,
    pub payload_len: usize,
    pub stamp: Option<Stamp>,
}

/// What a peer tells its caller.
#[derive(Debug)]
pub enum Note<'a> {
    /// Send `data` to `to`.
    Transmit {
        to: SocketAddr,
        data: &'a [u8],
    },
    /// ICE and DTLS are up.
    Connected,
    /// ICE gave up on the remote side.
    Disconnected,
    /// The remote asked for a keyframe on `layer` (None: every layer); the peer sends one.
    KeyframeRequest {
        layer: Option<usize>,
    },
    Got(Got),
}

/// What one [`Peer::send_frame`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub packets: u64,
    pub keyframes: u64,
}

/// A peer connection and its media state.
#[derive(Debug)]
pub struct Peer {
    pub rtc: Rtc,
    pub local: SocketAddr,
    /// Carried in every stamp this peer writes.
    pub label: u32,
    pub shape: Shape,
    /// The RFC 6464 level of the audio it sends (dBov, 0 loudest, -127 silence).
    pub audio_level: i8,
    pub next_timeout: Instant,
    /// str0m failed or ICE disconnected; the peer is of no further use.
    pub dead: bool,
    epoch: Instant,
    pending: Option<SdpPendingOffer>,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    seq: [u64; 3],
    audio_seq: u64,
    video_ts: Option<u32>,
    audio_ts: Option<u32>,
    /// When each layer's next keyframe is due.
    key_at: [Option<Instant>; 3],
    last_key: Instant,
    /// The time of the last input, from which a keyframe request's answer is timed.
    last: Instant,
    remb: Remb,
}

/// How often a receiver updates its estimate; a fall of 3% or more is reported at once.
pub const REMB_UPDATE: Duration = Duration::from_millis(200);
/// How often it reports an estimate that did not fall, as a browser does.
pub const REMB_INTERVAL: Duration = Duration::from_secs(1);
/// Queueing delay above the lowest seen that counts as overuse.
const OVERUSE_DELAY: Duration = Duration::from_millis(40);
/// The window over which the incoming rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A receive-side estimate in the manner of a browser's (additive-increase, multiplicative-
/// decrease on queueing delay): while the one-way delay of the stamped packets stays within
/// [`OVERUSE_DELAY`] of the lowest seen, the estimate grows by 8% a second, but never past 1.5
/// times the incoming rate plus 10 kbit/s; once the delay grows past it, the estimate falls to
/// 0.85 times the incoming rate. Updated every [`REMB_UPDATE`] and reported on the first video
/// stream every [`REMB_INTERVAL`], or at once when it fell by 3% or more.
#[derive(Debug, Default)]
pub struct Remb {
    /// Arrivals in the rate window: (time, payload bytes, one-way delay).
    arrivals: VecDeque<(Instant, usize, Duration)>,
    bytes: usize,
    base: Option<Duration>,
    estimate: Option<f64>,
    last_update: Option<Instant>,
    /// The last report: when, and what.
    reported: Option<(Instant, f64)>,
    mid: Option<Mid>,
}

impl Remb {
    fn on_packet(&mut self, mid: Mid, video: bool, at: Instant, bytes: usize, delay: Duration) {
        if video && self.mid.is_none() {
            self.mid = Some(mid);
        }
        self.arrivals.push_back((at, bytes, delay));
        self.bytes += bytes;
        self.base = Some(self.base.map_or(delay, |b| b.min(delay)));
        while let Some(&(t, b, _)) = self.arrivals.front() {
            if at.saturating_duration_since(t) <= RATE_WINDOW {
                break;
            }
            self.arrivals.pop_front();
            self.bytes -= b;
        }
    }

    /// The estimate to report at `now`, if a report is due.
    fn due(&mut self, now: Instant) -> Option<(Mid, u64)> {
        let mid = self.mid?;
        let last = *self.last_update.get_or_insert(now);
        let dt = now.saturating_duration_since(last);
        if dt < REMB_UPDATE {
            return None;
        }
        self.last_update = Some(now);
        // Over the window, or what of it has passed since the first arrival.
        let span = self
            .arrivals
            .front()
            .map_or(RATE_WINDOW, |a| now.saturating_duration_since(a.0))
            .clamp(REMB_UPDATE, RATE_WINDOW);
        let incoming = self.bytes as f64 * 8.0 / span.as_secs_f64();
        let recent = self
            .arrivals
            .iter()
            .rev()
            .take_while(|a| now.saturating_duration_since(a.0) <= REMB_UPDATE)
            .map(|a| a.2)
            .min();
        let overuse = match (recent, self.base) {
            (Some(d), Some(base)) => d > base + OVERUSE_DELAY,
            _ => false,
        };
        let cap = 1.5 * incoming + 10_000.0;
        let e = if overuse {
            0.85 * incoming
        } else {
            match self.estimate {
                Some(e) => (e * 1.08f64.powf(dt.as_secs_f64())).min(cap),
                None => cap,
            }
        };
        self.estimate = Some(e);
        let report = match self.reported {
            None => true,
            Some((at, r)) => e <= r * 0.97 || now.saturating_duration_since(at) >= REMB_INTERVAL,
        };
        if !report {
            return None;
        }
        self.reported = Some((now, e));
        Some((mid, e as u64))
    }
}

/// Bounds one drain: str0m ends every drain with a timeout; this only guards a broken peer.
const MAX_OUTPUTS: usize = 100_000;

impl Peer {
    /// A peer whose only candidate is `local`; `epoch` is the run's common clock for stamps.
    pub fn new(
        local: SocketAddr,
        label: u32,
        shape: Shape,
        now: Instant,
        epoch: Instant,
    ) -> Result<Peer, String> {
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| format!("peer candidate: {e}"))?;
        rtc.add_local_candidate(candidate);
        Ok(Peer {
            rtc,
            local,
            label,
            shape,
            audio_level: -30,
            next_timeout: now,
            dead: false,
            epoch,
            pending: None,
            video_mid: None,
            audio_mid: None,
            seq: [1_000, 20_000, 40_000],
            audio_seq: 500,
            video_ts: None,
            audio_ts: None,
            key_at: [Some(now); 3],
            last_key: now,
            last: now,
            remb: Remb::default(),
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

    /// A recvonly offer: `video_slots` video m-lines, then `audio_lines` audio m-lines.
    pub fn subscriber_offer(
        &mut self,
        video_slots: usize,
        audio_lines: usize,
    ) -> Result<String, String> {
        let mut api = self.rtc.sdp_api();
        for _ in 0..video_slots {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        }
        for _ in 0..audio_lines {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().ok_or_else(|| "no offer to make".to_string())?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// Applies the answer to the pending offer.
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

    /// Answers a server's offer (a server that sends its subscribers the offer, as Janus does):
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

    /// A datagram from `from` arrived at `now`: str0m takes it if it is for this peer, then
    /// runs until it waits again.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        on: &mut dyn FnMut(Note<'_>),
    ) {
        let Ok(recv) = Receive::new(Protocol::Udp, from, self.local, data) else {
            return;
        };
        let input = Input::Receive(now, recv);
        if !self.rtc.accepts(&input) {
            return;
        }
        self.last = now;
        if self.rtc.handle_input(input).is_err() {
            self.dead = true;
            return;
        }
        self.drain(now, on);
        if let Some((mid, bps)) = self.remb.due(now) {
            if let Some(rx) = self.rtc.direct_api().stream_rx_by_mid(mid, None) {
                rx.request_remb(Bitrate::bps(bps));
            }
            self.drain(now, on);
        }
    }

    /// Hands str0m the time if its timeout is due, then runs it until it waits again.
    pub fn tick(&mut self, now: Instant, on: &mut dyn FnMut(Note<'_>)) {
        if self.next_timeout > now {
            return;
        }
        self.last = now;
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.dead = true;
            return;
        }
        self.drain(now, on);
    }

    /// Runs str0m until it waits for time or input: datagrams to send, packets and events
    /// received go to `on`.
    pub fn drain(&mut self, now: Instant, on: &mut dyn FnMut(Note<'_>)) {
        for _ in 0..MAX_OUTPUTS {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => on(Note::Transmit {
                    to: t.destination,
                    data: &t.contents,
                }),
                Ok(Output::Event(e)) => self.on_event(e, now, on),
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.dead = true;
    }

    fn on_event(&mut self, e: Event, now: Instant, on: &mut dyn FnMut(Note<'_>)) {
        match e {
            Event::Connected => on(Note::Connected),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.dead = true;
                on(Note::Disconnected);
            }
            Event::KeyframeRequest(k) => {
                let layer = k
                    .rid
                    .and_then(|rid| RIDS.iter().position(|r| Rid::from(*r) == rid));
                let due = self.last.max(now) + self.shape.key_delay;
                for (i, at) in self.key_at.iter_mut().enumerate() {
                    if layer.is_none_or(|l| l == i) && at.is_none() {
                        *at = Some(due);
                    }
                }
                on(Note::KeyframeRequest { layer });
            }
            Event::RtpPacket(p) => {
                let mid = {
                    let mut api = self.rtc.direct_api();
                    api.stream_rx(&p.header.ssrc).map(|s| s.mid())
                };
                let Some(mid) = mid else { return };
                let audio = self.rtc.media(mid).map(|m| m.kind()) == Some(MediaKind::Audio);
                let (keyframe, stamp_at) = if audio {
                    (false, AUDIO_STAMP_AT)
                } else {
                    let start = p.payload.first().is_some_and(|b| b & 0x10 != 0);
                    let key = start && p.payload.get(1).is_some_and(|b| b & 0x01 == 0);
                    (key, VIDEO_STAMP_AT)
                };
                let stamp = p.payload.get(stamp_at..).and_then(Stamp::read);
                if let Some(s) = stamp {
                    let sent = self.epoch + Duration::from_nanos(s.sent);
                    let delay = p.timestamp.saturating_duration_since(sent);
                    self.remb
                        .on_packet(mid, !audio, p.timestamp, p.payload.len(), delay);
                }
                on(Note::Got(Got {
                    mid,
                    audio,
                    keyframe,
                    seq: *p.seq_no,
                    ts: p.header.timestamp,
                    at: p.timestamp,
                    payload_len: p.payload.len(),
                    stamp,
                }));
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

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// An RTP timestamp at `clock_hz` for `now`, one `step` past `last` at least, so frames
    /// sent together still step forward and a pause moves the clock on.
    fn media_ts(&self, last: Option<u32>, clock_hz: u64, step: u32, now: Instant) -> u32 {
        let clock = (u128::from(self.nanos(now)) * u128::from(clock_hz) / 1_000_000_000) as u32;
        match last {
            Some(l) if clock.wrapping_sub(l) as i32 <= step as i32 => l.wrapping_add(step),
            _ => clock,
        }
    }

    /// One video frame on every layer: a keyframe where one is due or was asked for. The
    /// caller drains the peer afterwards.
    pub fn send_frame(&mut self, now: Instant) -> Sent {
        let mut sent = Sent::default();
        let (Some(mid), Some(pt)) = (self.video_mid, self.pt(Codec::Vp8)) else {
            return sent;
        };
        if self
            .shape
            .keyframe_interval
            .is_some_and(|i| now.saturating_duration_since(self.last_key) >= i)
        {
            self.key_at = [Some(now); 3];
        }
        let step = 90_000 / self.shape.fps.max(1);
        let ts = self.media_ts(self.video_ts, 90_000, step, now);
        self.video_ts = Some(ts);
        let sent_at = self.nanos(now);
        for (i, rid) in RIDS.iter().enumerate() {
            let key = self.key_at[i].is_some_and(|at| at <= now);
            if key {
                self.key_at[i] = None;
                self.last_key = now;
                sent.keyframes += 1;
            }
            let scale = if key { self.shape.keyframe_scale } else { 1 };
            let frame_bytes =
                (self.shape.layer_bps[i] / 8 / u64::from(self.shape.fps.max(1))) as usize * scale;
            let packets = frame_bytes.div_ceil(self.shape.max_payload.max(1)).max(1);
            let size = (frame_bytes / packets).max(VIDEO_STAMP_AT + STAMP_LEN);
            for n in 0..packets {
                let mut payload = vec![0u8; size];
                if n == 0 {
                    // Descriptor: S=1, partition 0; then the VP8 frame tag, P bit clear on a
                    // keyframe, which is what a relay gates layer switches on.
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
                Stamp {
                    publisher: self.label,
                    layer: i as u8,
                    seq,
                    sent: sent_at,
                }
                .write(&mut payload[VIDEO_STAMP_AT..]);
                let mut api = self.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, Some(Rid::from(*rid))) else {
                    return sent;
                };
                tx.write_rtp(
                    RtpWrite::new(pt, seq.into(), ts, now, payload)
                        .marker(n + 1 == packets)
                        .nackable(true),
                );
                sent.packets += 1;
            }
        }
        sent
    }

    /// One RTP packet of any content on a video layer (`layer` modulo 3), its sequence number
    /// moved by `jump` from the layer's own (gaps, repeats and steps back, as a network
    /// delivers them): what a fuzzer makes a publisher send.
    pub fn send_raw_video(
        &mut self,
        layer: usize,
        jump: i8,
        ts: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) {
        let (Some(mid), Some(pt)) = (self.video_mid, self.pt(Codec::Vp8)) else {
            return;
        };
        let layer = layer % RIDS.len();
        let seq = self.seq[layer].saturating_add_signed(i64::from(jump));
        self.seq[layer] = self.seq[layer].max(seq) + 1;
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, Some(Rid::from(RIDS[layer]))) else {
            return;
        };
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), ts, now, payload.to_vec())
                .marker(marker)
                .nackable(true),
        );
    }

    /// One 20 ms audio packet at [`Peer::audio_level`] (voice activity above -50 dBov). The
    /// caller drains the peer afterwards. Returns whether it was written.
    pub fn send_audio(&mut self, now: Instant) -> bool {
        let (Some(mid), Some(pt)) = (self.audio_mid, self.pt(Codec::Opus)) else {
            return false;
        };
        let ts = self.media_ts(self.audio_ts, 48_000, 960, now);
        self.audio_ts = Some(ts);
        let ext = ExtensionValues {
            audio_level: Some(self.audio_level),
            voice_activity: Some(self.audio_level > -50),
            ..Default::default()
        };
        let seq = self.audio_seq;
        self.audio_seq += 1;
        let mut payload = vec![0u8; self.shape.audio_payload.max(AUDIO_STAMP_AT + STAMP_LEN)];
        // An Opus TOC byte (SILK wideband, 20 ms, one frame), then the stamp.
        payload[0] = 0x48;
        Stamp {
            publisher: self.label,
            layer: AUDIO_LAYER,
            seq,
            sent: self.nanos(now),
        }
        .write(&mut payload[AUDIO_STAMP_AT..]);
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        tx.write_rtp(RtpWrite::new(pt, seq.into(), ts, now, payload).ext_vals(ext));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_and_others_are_not_stamps() {
        let s = Stamp {
            publisher: 7,
            layer: 2,
            seq: 40_001,
            sent: 123_456_789,
        };
        let mut buf = [0u8; 30];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert_eq!(Stamp::read(&buf[..10]), None);
        buf[0] = b'X';
        assert_eq!(Stamp::read(&buf), None);
    }

    #[test]
    fn timestamps_step_forward_and_follow_the_clock() {
        let now = Instant::now();
        let local: SocketAddr = ([127, 0, 0, 1], 5000).into();
        let p = Peer::new(local, 1, Shape::SMALL, now, now).expect("peer");
        let later = now + Duration::from_secs(1);
        assert_eq!(p.media_ts(None, 90_000, 3000, later), 90_000);
        // Two frames at the same instant still step.
        assert_eq!(p.media_ts(Some(90_000), 90_000, 3000, later), 93_000);
        // After a pause the clock wins.
        assert_eq!(
            p.media_ts(Some(90_000), 90_000, 3000, later + Duration::from_secs(1)),
            180_000
        );
    }
}
