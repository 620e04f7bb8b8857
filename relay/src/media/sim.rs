//! A simulated room for tests and benchmarks: the SFU core against str0m client peers on a
//! simulated clock (feature `sim`, and always in tests).
//!
//! Publishers send three VP8 simulcast layers (and Opus audio) through str0m's direct RTP API;
//! every payload carries a label (publisher number, layer number) at a fixed offset, so the
//! subscribers' side can tell which publisher and layer reached which slot. Nothing touches a
//! socket: datagrams move through a queue, time moves in 1 ms steps. The core's own work (its
//! datagram and timeout calls) is timed apart from the clients' ([`Sim::core_time`]) and runs in
//! [`core_datagram`] and [`core_timeout`], which instruction counters can select by name.
//!
//! A harness, not the product: it panics on anything unexpected, as a test should.
#![allow(clippy::unwrap_used, missing_debug_implementations)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::counters::{MediaCounters, WorkerCounters};
use super::sfu::{Core, CoreConfig, Wire};
use super::types::{Layout, MediaError, SessionAnswer, SessionId, Source};

pub const RIDS: [&str; 3] = ["l", "m", "h"];
pub const HEIGHTS: [u16; 3] = [180, 360, 720];
/// Offsets of the label bytes in every test payload.
pub const LABEL_PUB: usize = 11;
pub const LABEL_LAYER: usize = 12;
/// How long the test encoder takes to answer a keyframe request.
pub const KEY_DELAY: Duration = Duration::from_millis(150);

/// Datagrams in flight: (from, to, bytes).
#[derive(Default)]
pub struct Net {
    pub queue: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
}

pub struct CoreWire<'a> {
    pub from: SocketAddr,
    pub net: &'a mut Net,
}

impl Wire for CoreWire<'_> {
    fn send(&mut self, to: SocketAddr, data: &[u8]) {
        self.net.queue.push_back((self.from, to, data.to_vec()));
    }
}

/// A received packet on a subscriber: (mid, publisher label, layer label, keyframe, seq, ts).
#[derive(Debug, Clone, Copy)]
pub struct Got {
    pub mid: Mid,
    pub publisher: u8,
    pub layer: u8,
    pub keyframe: bool,
    pub seq: u64,
    pub ts: u32,
    pub at: Instant,
}

pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub session: Option<SessionId>,
    pub pending: Option<SdpPendingOffer>,
    /// Publisher: video mid, audio mid, label, per-layer seq, keyframe wanted per layer.
    pub video_mid: Option<Mid>,
    pub audio_mid: Option<Mid>,
    pub label: u8,
    pub seq: [u64; 3],
    pub audio_seq: u64,
    /// When each layer's next keyframe is due (an encoder answers a PLI some frames later).
    pub key_at: [Option<Instant>; 3],
    /// Keyframe requests that reached this publisher, per layer.
    pub key_requests: [u32; 3],
    pub sending: bool,
    pub audio_level: i8,
    /// Subscriber: what arrived.
    pub got: Vec<Got>,
    pub got_audio: Vec<(Mid, u8)>,
    pub next_timeout: Instant,
    /// The simulated time of the last input.
    pub last: Instant,
    /// Unplugged: the simulated network drops everything from and to this peer.
    pub cut: bool,
    /// Bottleneck on the link towards this peer, bits per second.
    pub link_bps: Option<u64>,
    /// RTP datagrams from and to this peer lost at random, per thousand.
    pub loss_permille: u64,
    /// RTP datagrams the simulated network lost on this peer's links.
    pub lost: u64,
    /// When the bottleneck is free again.
    busy_until: Instant,
    /// Datagrams waiting in the bottleneck: (release time, from, bytes).
    delayed: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

impl Client {
    pub fn new(port: u16, now: Instant) -> Client {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        Client {
            rtc,
            addr,
            session: None,
            pending: None,
            video_mid: None,
            audio_mid: None,
            label: 0,
            seq: [100, 20_000, 40_000],
            audio_seq: 500,
            key_at: [Some(now); 3],
            key_requests: [0; 3],
            sending: true,
            audio_level: -30,
            got: Vec::new(),
            got_audio: Vec::new(),
            next_timeout: now,
            last: now,
            cut: false,
            link_bps: None,
            loss_permille: 0,
            lost: 0,
            busy_until: now,
            delayed: VecDeque::new(),
        }
    }

    pub fn publisher_offer(&mut self, label: u8) -> String {
        self.label = label;
        let mut api = self.rtc.sdp_api();
        let mut sc = Simulcast::new();
        for r in RIDS {
            sc.add_send_layer(SimulcastLayer::new(r));
        }
        self.video_mid =
            Some(api.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sc)));
        self.audio_mid =
            Some(api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        let (offer, pending) = api.apply().expect("offer");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    pub fn subscriber_offer(&mut self, video_slots: usize, audio_lines: usize) -> String {
        let mut api = self.rtc.sdp_api();
        for _ in 0..video_slots {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        }
        for _ in 0..audio_lines {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply().expect("offer");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    pub fn accept(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("answer parses");
        let pending = self.pending.take().expect("pending offer");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
    }

    pub fn drain(&mut self, net: &mut Net) {
        loop {
            match self.rtc.poll_output().expect("client poll") {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    net.queue
                        .push_back((self.addr, t.destination, t.contents.to_vec()))
                }
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::KeyframeRequest(k) => {
                if let Some(rid) = k.rid
                    && let Some(i) = RIDS.iter().position(|r| Rid::from(*r) == rid)
                {
                    self.key_requests[i] += 1;
                    if self.key_at[i].is_none() {
                        self.key_at[i] = Some(self.last + KEY_DELAY);
                    }
                }
            }
            Event::RtpPacket(p) => {
                let mid = {
                    let mut api = self.rtc.direct_api();
                    api.stream_rx(&p.header.ssrc).map(|s| s.mid())
                };
                let Some(mid) = mid else { return };
                let kind = self.rtc.media(mid).map(|m| m.kind());
                if kind == Some(MediaKind::Audio) {
                    if let Some(&label) = p.payload.first() {
                        self.got_audio.push((mid, label));
                    }
                    return;
                }
                if p.payload.len() > LABEL_LAYER {
                    self.got.push(Got {
                        mid,
                        publisher: p.payload[LABEL_PUB],
                        layer: p.payload[LABEL_LAYER],
                        keyframe: p.payload[1] & 0x01 == 0,
                        seq: *p.seq_no,
                        ts: p.header.timestamp,
                        at: p.timestamp,
                    });
                }
            }
            _ => {}
        }
    }

    fn pt(&self, codec: Codec) -> Pt {
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
            .expect("codec negotiated")
    }

    /// One video frame on every layer (one packet each), keyframes where asked for.
    pub fn send_frame(&mut self, frame: u32, now: Instant) {
        let Some(mid) = self.video_mid else { return };
        let pt = self.pt(Codec::Vp8);
        for (i, rid) in RIDS.iter().enumerate() {
            let key = self.key_at[i].is_some_and(|at| at <= now);
            if key {
                self.key_at[i] = None;
            }
            let mut payload = vec![0u8; 40];
            payload[0] = 0x10; // S=1, partition 0
            if key {
                payload[1] = 0x00; // P=0: keyframe
                payload[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                payload[7..9].copy_from_slice(&(HEIGHTS[i] * 16 / 9).to_le_bytes());
                payload[9..11].copy_from_slice(&HEIGHTS[i].to_le_bytes());
            } else {
                payload[1] = 0x01;
            }
            payload[LABEL_PUB] = self.label;
            payload[LABEL_LAYER] = i as u8;
            // Bigger layers, bigger packets, so measured bitrates rank the layers too.
            payload.resize(40 + 200 * (i + 1), 0xaa);
            let seq = self.seq[i];
            self.seq[i] += 1;
            let mut api = self.rtc.direct_api();
            let tx = api
                .stream_tx_by_mid(mid, Some(Rid::from(*rid)))
                .expect("layer stream");
            tx.write_rtp(
                RtpWrite::new(pt, seq.into(), frame.wrapping_mul(3000), now, payload)
                    .marker(true)
                    .nackable(true),
            );
        }
    }

    /// One RTP packet of any content on a video layer (`layer` 0..3), its sequence number moved
    /// by `jump` from the layer's own (gaps, repeats and steps back, as a network delivers
    /// them). For fuzzing what a publisher may send.
    pub fn send_raw_video(
        &mut self,
        layer: usize,
        jump: i8,
        ts: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(mid) = self.video_mid else { return };
        let layer = layer % RIDS.len();
        let pt = self.pt(Codec::Vp8);
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

    pub fn send_audio(&mut self, n: u32, now: Instant) {
        let Some(mid) = self.audio_mid else { return };
        let pt = self.pt(Codec::Opus);
        let seq = self.audio_seq;
        self.audio_seq += 1;
        let ext = ExtensionValues {
            audio_level: Some(self.audio_level),
            voice_activity: Some(true),
            ..Default::default()
        };
        let label = self.label;
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("audio stream");
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), n.wrapping_mul(960), now, vec![label; 30]).ext_vals(ext),
        );
    }
}

pub struct Sim {
    pub now: Instant,
    pub start: Instant,
    pub core: Core,
    pub core_addr: SocketAddr,
    pub counters: Arc<WorkerCounters>,
    pub net: Net,
    pub clients: Vec<Client>,
    pub frame: u32,
    /// Wall time spent inside the core's calls by [`Sim::run`].
    pub core_time: Duration,
    /// The network's loss generator (xorshift, fixed seed: the run is repeatable).
    rng: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    /// A core with room for 16 sessions in a room.
    pub fn new() -> Sim {
        Sim::with_room_size(16)
    }

    /// A core with room for `sessions` sessions in a room.
    pub fn with_room_size(sessions: usize) -> Sim {
        let now = Instant::now();
        let core_addr: SocketAddr = ([127, 0, 0, 1], 40_000).into();
        let counters = Arc::new(WorkerCounters::default());
        let core = Core::new(
            CoreConfig {
                local: core_addr,
                max_sessions_per_room: sessions,
                max_rooms: 4,
            },
            counters.clone(),
            now,
        );
        Sim {
            now,
            start: now,
            core,
            core_addr,
            counters,
            net: Net::default(),
            clients: Vec::new(),
            frame: 0,
            core_time: Duration::ZERO,
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    pub fn add_publisher(&mut self, user: &str, label: u8, source: Source) -> usize {
        let mut c = Client::new(5000 + self.clients.len() as u16, self.now);
        let offer = c.publisher_offer(label);
        self.connect(c, |core, now, wire| {
            core.publish("org/room", user, source, &offer, now, wire)
        })
    }

    pub fn add_subscriber(
        &mut self,
        user: &str,
        slots: usize,
        audio: usize,
        layout: Layout,
    ) -> usize {
        let mut c = Client::new(5000 + self.clients.len() as u16, self.now);
        let offer = c.subscriber_offer(slots, audio);
        self.connect(c, |core, now, wire| {
            core.subscribe("org/room", user, layout, &offer, now, wire)
        })
    }

    /// Opens `c`'s session with `open` (publish or subscribe), applies the answer and adds the
    /// client. Returns its index.
    fn connect(
        &mut self,
        mut c: Client,
        open: impl FnOnce(&mut Core, Instant, &mut CoreWire<'_>) -> Result<SessionAnswer, MediaError>,
    ) -> usize {
        let mut wire = CoreWire {
            from: self.core_addr,
            net: &mut self.net,
        };
        let ans = open(&mut self.core, self.now, &mut wire).expect("open session");
        c.accept(&ans.answer_sdp);
        c.session = Some(ans.session);
        c.drain(&mut self.net);
        self.clients.push(c);
        self.clients.len() - 1
    }

    /// Advance the simulation by `d` in 1 ms steps, publishers sending 30 fps video and 50 pps
    /// audio.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(1);
            let now = self.now;
            let ms = (now - self.start).as_millis();
            if ms.is_multiple_of(33) {
                self.frame += 1;
                for c in self.clients.iter_mut().filter(|c| c.sending) {
                    c.send_frame(self.frame, now);
                    c.drain(&mut self.net);
                }
            }
            if ms.is_multiple_of(20) {
                for c in self.clients.iter_mut().filter(|c| c.sending) {
                    c.send_audio((ms / 20) as u32, now);
                    c.drain(&mut self.net);
                }
            }
            // Deliver everything in flight (zero latency); deliveries may queue more.
            let mut budget = 100_000;
            while let Some((from, to, data)) = self.net.queue.pop_front() {
                budget -= 1;
                assert!(budget > 0, "datagram storm");
                if self
                    .clients
                    .iter()
                    .any(|c| c.cut && (c.addr == from || c.addr == to))
                {
                    continue;
                }
                // Random loss of media (RTP, not RTCP, DTLS or STUN) on lossy links.
                let rtp = data.len() > 12
                    && (128..192).contains(&data[0])
                    && !(192..224).contains(&data[1]);
                if rtp
                    && let Some(c) = self
                        .clients
                        .iter_mut()
                        .find(|c| c.loss_permille > 0 && (c.addr == from || c.addr == to))
                {
                    self.rng ^= self.rng << 13;
                    self.rng ^= self.rng >> 7;
                    self.rng ^= self.rng << 17;
                    if self.rng % 1000 < c.loss_permille {
                        c.lost += 1;
                        continue;
                    }
                }
                if to == self.core_addr {
                    let mut wire = CoreWire {
                        from: self.core_addr,
                        net: &mut self.net,
                    };
                    let t0 = Instant::now();
                    core_datagram(&mut self.core, from, &data, now, &mut wire);
                    self.core_time += t0.elapsed();
                } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == to) {
                    if let Some(bps) = c.link_bps {
                        // A bottleneck with a 300 ms queue: serialise, delay, or drop.
                        let start = c.busy_until.max(now);
                        let release =
                            start + Duration::from_micros(data.len() as u64 * 8 * 1_000_000 / bps);
                        if release - now <= Duration::from_millis(300) {
                            c.busy_until = release;
                            c.delayed.push_back((release, from, data));
                        }
                        continue;
                    }
                    let recv = Receive::new(Protocol::Udp, from, to, &data).expect("parse");
                    let input = Input::Receive(now, recv);
                    if c.rtc.accepts(&input) {
                        c.last = now;
                        c.rtc.handle_input(input).expect("client input");
                        c.drain(&mut self.net);
                    }
                }
            }
            for c in &mut self.clients {
                while c.delayed.front().is_some_and(|d| d.0 <= now) {
                    let Some((_, from, data)) = c.delayed.pop_front() else {
                        break;
                    };
                    let recv = Receive::new(Protocol::Udp, from, c.addr, &data).expect("parse");
                    let input = Input::Receive(now, recv);
                    if c.rtc.accepts(&input) {
                        c.last = now;
                        c.rtc.handle_input(input).expect("client input");
                        c.drain(&mut self.net);
                    }
                }
            }
            if self.core.poll_timeout() <= now {
                let mut wire = CoreWire {
                    from: self.core_addr,
                    net: &mut self.net,
                };
                let t0 = Instant::now();
                core_timeout(&mut self.core, now, &mut wire);
                self.core_time += t0.elapsed();
            }
            for c in &mut self.clients {
                if c.next_timeout <= now {
                    c.last = now;
                    c.rtc
                        .handle_input(Input::Timeout(now))
                        .expect("client timeout");
                    c.drain(&mut self.net);
                }
            }
        }
    }

    pub fn counters(&self) -> MediaCounters {
        MediaCounters::sum([&*self.counters])
    }
}

/// The core's datagram call, out of line so an instruction counter can select it by name.
#[inline(never)]
pub fn core_datagram(
    core: &mut Core,
    from: SocketAddr,
    data: &[u8],
    now: Instant,
    wire: &mut dyn Wire,
) {
    core.handle_datagram(from, data, now, wire);
}

/// The core's timeout call, out of line so an instruction counter can select it by name.
#[inline(never)]
pub fn core_timeout(core: &mut Core, now: Instant, wire: &mut dyn Wire) {
    core.handle_timeout(now, wire);
}
