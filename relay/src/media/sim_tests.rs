//! In-memory tests of the SFU core against str0m client peers on a simulated clock.
//!
//! Publishers send three VP8 simulcast layers (and Opus audio) through str0m's direct RTP API;
//! every payload carries a label (publisher number, layer number) at a fixed offset, so the
//! subscribers' side can tell which publisher and layer reached which slot. Nothing touches a
//! socket: datagrams move through a queue, time moves in 1 ms steps.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};

use super::counters::{MediaCounters, WorkerCounters};
use super::sfu::{Core, CoreConfig, PLI_THROTTLE, Wire};
use super::types::{Layout, MediaError, SessionAnswer, SessionId, Source};

const RIDS: [&str; 3] = ["l", "m", "h"];
const HEIGHTS: [u16; 3] = [180, 360, 720];
/// Offsets of the label bytes in every test payload.
const LABEL_PUB: usize = 11;
const LABEL_LAYER: usize = 12;
/// How long the test encoder takes to answer a keyframe request.
const KEY_DELAY: Duration = Duration::from_millis(150);

/// Datagrams in flight: (from, to, bytes).
#[derive(Default)]
pub(super) struct Net {
    pub(super) queue: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
}

struct CoreWire<'a> {
    from: SocketAddr,
    net: &'a mut Net,
}

impl Wire for CoreWire<'_> {
    fn send(&mut self, to: SocketAddr, data: &[u8]) {
        self.net.queue.push_back((self.from, to, data.to_vec()));
    }
}

/// A received packet on a subscriber: (mid, publisher label, layer label, keyframe, seq, ts).
#[derive(Debug, Clone, Copy)]
pub(super) struct Got {
    pub(super) mid: Mid,
    pub(super) publisher: u8,
    pub(super) layer: u8,
    pub(super) keyframe: bool,
    pub(super) seq: u64,
    pub(super) ts: u32,
    pub(super) at: Instant,
}

pub(super) struct Client {
    pub(super) rtc: Rtc,
    pub(super) addr: SocketAddr,
    pub(super) session: Option<SessionId>,
    pub(super) pending: Option<SdpPendingOffer>,
    /// Publisher: video mid, audio mid, label, per-layer seq, keyframe wanted per layer.
    pub(super) video_mid: Option<Mid>,
    pub(super) audio_mid: Option<Mid>,
    pub(super) label: u8,
    pub(super) seq: [u64; 3],
    pub(super) audio_seq: u64,
    /// When each layer's next keyframe is due (an encoder answers a PLI some frames later).
    pub(super) key_at: [Option<Instant>; 3],
    /// Keyframe requests that reached this publisher, per layer.
    pub(super) key_requests: [u32; 3],
    pub(super) sending: bool,
    pub(super) audio_level: i8,
    /// Subscriber: what arrived.
    pub(super) got: Vec<Got>,
    pub(super) got_audio: Vec<(Mid, u8)>,
    pub(super) next_timeout: Instant,
    /// The simulated time of the last input.
    pub(super) last: Instant,
    /// Unplugged: the simulated network drops everything from and to this peer.
    pub(super) cut: bool,
    /// Bottleneck on the link towards this peer, bits per second.
    pub(super) link_bps: Option<u64>,
    /// RTP datagrams from and to this peer lost at random, per thousand.
    pub(super) loss_permille: u64,
    /// RTP datagrams the simulated network lost on this peer's links.
    pub(super) lost: u64,
    /// When the bottleneck is free again.
    busy_until: Instant,
    /// Datagrams waiting in the bottleneck: (release time, from, bytes).
    delayed: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

impl Client {
    pub(super) fn new(port: u16, now: Instant) -> Client {
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

    pub(super) fn publisher_offer(&mut self, label: u8) -> String {
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

    pub(super) fn subscriber_offer(&mut self, video_slots: usize, audio_lines: usize) -> String {
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

    pub(super) fn accept(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("answer parses");
        let pending = self.pending.take().expect("pending offer");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
    }

    pub(super) fn drain(&mut self, net: &mut Net) {
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
    pub(super) fn send_frame(&mut self, frame: u32, now: Instant) {
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

    pub(super) fn send_audio(&mut self, n: u32, now: Instant) {
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

struct Sim {
    now: Instant,
    start: Instant,
    core: Core,
    core_addr: SocketAddr,
    counters: Arc<WorkerCounters>,
    net: Net,
    clients: Vec<Client>,
    frame: u32,
    /// The network's loss generator (xorshift, fixed seed: the run is repeatable).
    rng: u64,
}

impl Sim {
    fn new() -> Sim {
        let now = Instant::now();
        let core_addr: SocketAddr = ([127, 0, 0, 1], 40_000).into();
        let counters = Arc::new(WorkerCounters::default());
        let core = Core::new(
            CoreConfig {
                local: core_addr,
                max_sessions_per_room: 16,
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
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    fn add_publisher(&mut self, user: &str, label: u8, source: Source) -> usize {
        let mut c = Client::new(5000 + self.clients.len() as u16, self.now);
        let offer = c.publisher_offer(label);
        self.connect(c, |core, now, wire| {
            core.publish("org/room", user, source, &offer, now, wire)
        })
    }

    fn add_subscriber(&mut self, user: &str, slots: usize, audio: usize, layout: Layout) -> usize {
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
    fn run(&mut self, d: Duration) {
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
                    self.core.handle_datagram(from, &data, now, &mut wire);
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
                self.core.handle_timeout(now, &mut wire);
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

    fn counters(&self) -> MediaCounters {
        MediaCounters::sum([&*self.counters])
    }
}

/// Packets a subscriber got since `since`, per mid: (publisher, layer) of the last one.
fn last_by_mid(c: &Client, since: Instant) -> Vec<(Mid, u8, u8)> {
    let mut out: Vec<(Mid, u8, u8)> = Vec::new();
    for g in c.got.iter().filter(|g| g.at >= since) {
        match out.iter_mut().find(|o| o.0 == g.mid) {
            Some(o) => *o = (g.mid, g.publisher, g.layer),
            None => out.push((g.mid, g.publisher, g.layer)),
        }
    }
    out.sort_by_key(|o| o.1);
    out
}

/// Within each mid, sequence numbers go up by exactly one and timestamps never step back,
/// and the first packet of every (publisher, layer) run is a keyframe.
fn assert_continuous(c: &Client) {
    let mut mids: Vec<Mid> = c.got.iter().map(|g| g.mid).collect();
    mids.sort();
    mids.dedup();
    for mid in mids {
        let pkts: Vec<&Got> = c.got.iter().filter(|g| g.mid == mid).collect();
        assert!(pkts[0].keyframe, "slot {mid} starts on a keyframe");
        for w in pkts.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1, "slot {mid}: sequence continues");
            let dt = w[1].ts.wrapping_sub(w[0].ts);
            assert!(
                dt < 90_000 * 5,
                "slot {mid}: timestamp moves forward ({} -> {})",
                w[0].ts,
                w[1].ts
            );
            if (w[1].publisher, w[1].layer) != (w[0].publisher, w[0].layer) {
                assert!(
                    w[1].keyframe,
                    "slot {mid}: switch from {:?} to {:?} on a keyframe",
                    (w[0].publisher, w[0].layer),
                    (w[1].publisher, w[1].layer)
                );
            }
        }
    }
}

/// With loss and retransmission: in sequence-number order, every change of (publisher,
/// layer) within a slot lands on a keyframe, and each sequence number carries one source.
fn assert_switches_on_keyframes(c: &Client) {
    let mut mids: Vec<Mid> = c.got.iter().map(|g| g.mid).collect();
    mids.sort();
    mids.dedup();
    for mid in mids {
        let mut pkts: Vec<&Got> = c.got.iter().filter(|g| g.mid == mid).collect();
        pkts.sort_by_key(|g| g.seq);
        for w in pkts.windows(2) {
            if w[0].seq == w[1].seq {
                assert_eq!((w[0].publisher, w[0].layer), (w[1].publisher, w[1].layer));
                continue;
            }
            if (w[1].publisher, w[1].layer) != (w[0].publisher, w[0].layer) {
                assert!(
                    w[1].keyframe,
                    "slot {mid}: switch at seq {} on a keyframe",
                    w[1].seq
                );
            }
        }
    }
}

#[test]
fn slots_layers_layout_switch_and_departure() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let b = sim.add_publisher("bob", 2, Source::Camera);
    let s = sim.add_subscriber("carol", 2, 1, Layout::Grid);
    // Alice's own subscriber: must never see alice.
    let sa = sim.add_subscriber("alice", 2, 1, Layout::Grid);
    sim.run(Duration::from_secs(3));

    // Two tiles: both publishers at the middle layer, one per slot.
    let t = sim.now - Duration::from_millis(500);
    let got = last_by_mid(&sim.clients[s], t);
    assert_eq!(got.len(), 2, "both slots fed: {got:?}");
    assert_eq!((got[0].1, got[0].2), (1, 1), "alice at middle layer");
    assert_eq!((got[1].1, got[1].2), (2, 1), "bob at middle layer");
    assert_ne!(got[0].0, got[1].0, "distinct slots");
    // Alice sees only bob, alone in the grid: highest layer.
    let own = last_by_mid(&sim.clients[sa], t);
    assert_eq!(
        own.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(2, 2)]
    );
    assert!(
        sim.clients[sa].got.iter().all(|g| g.publisher != 1),
        "nobody gets their own video"
    );
    assert!(
        sim.clients[sa].got_audio.iter().all(|g| g.1 != 1),
        "nobody gets their own audio"
    );
    assert!(!sim.clients[s].got_audio.is_empty(), "audio line fed");

    // Layout change: cap at 180 lines -> lowest layer, switched only on a keyframe.
    let sid = sim.clients[s].session.clone().expect("session");
    let before = sim.counters();
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    sim.core
        .set_layout(&sid, Layout::Grid, Some(180), now, &mut wire)
        .expect("layout");
    sim.run(Duration::from_secs(2));
    let got = last_by_mid(&sim.clients[s], sim.now - Duration::from_millis(300));
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(1, 0), (2, 0)]
    );
    let after = sim.counters();
    assert!(
        after.layer_switches >= before.layer_switches + 2,
        "two layer switches counted"
    );
    assert!(
        after.keyframe_requests > before.keyframe_requests,
        "keyframes requested"
    );
    assert_continuous(&sim.clients[s]);

    // Room view names the slots' publishers and layers.
    let info = sim.core.room_info("org/room").expect("room");
    assert_eq!(info.publishers.len(), 2);
    let carol = info
        .subscribers
        .iter()
        .find(|x| x.user == "carol")
        .expect("carol");
    assert!(
        carol
            .slots
            .iter()
            .all(|sl| sl.layer.as_deref() == Some("l")),
        "{carol:?}"
    );

    // Alice leaves: her slot is freed within a second, bob goes on.
    let aid = sim.clients[a].session.clone().expect("session");
    sim.clients[a].sending = false;
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    sim.core.end(&aid, now, &mut wire).expect("end");
    let left = sim.now;
    sim.run(Duration::from_secs(1));
    assert!(
        sim.clients[s]
            .got
            .iter()
            .filter(|g| g.at > left)
            .all(|g| g.publisher != 1),
        "no alice after she left"
    );
    let got = last_by_mid(&sim.clients[s], sim.now - Duration::from_millis(300));
    assert_eq!(
        got.iter().map(|o| o.1).collect::<Vec<_>>(),
        vec![2],
        "bob still flowing"
    );
    let info = sim.core.room_info("org/room").expect("room");
    assert_eq!(info.publishers.len(), 1);
    assert!(sim.counters().packets_forwarded > 100);
    assert_continuous(&sim.clients[s]);
    let _ = b;
}

#[test]
fn silent_publisher_frees_slot_and_empty_room_disappears() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let s = sim.add_subscriber("carol", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(2));
    assert!(sim.clients[s].got.iter().any(|g| g.publisher == 1));
    // Alice stops sending (still connected): the slot empties within a second.
    sim.clients[a].sending = false;
    sim.run(Duration::from_secs(1));
    let info = sim.core.room_info("org/room").expect("room");
    assert_eq!(info.subscribers[0].slots[0].publisher, None, "{info:?}");
    // Everyone leaves: the room disappears.
    for c in [a, s] {
        let id = sim.clients[c].session.clone().expect("session");
        let now = sim.now;
        let mut wire = CoreWire {
            from: sim.core_addr,
            net: &mut sim.net,
        };
        sim.core.end(&id, now, &mut wire).expect("end");
    }
    assert!(sim.core.room_info("org/room").is_none());
    assert_eq!(sim.core.session_count(), 0);
    assert_eq!(sim.counters().rooms, 0);
}

#[test]
fn unplugged_peers_are_removed_after_the_silence_timeout() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let s = sim.add_subscriber("carol", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.core.session_count(), 2);
    sim.clients[s].cut = true;
    sim.run(super::sfu::SILENCE_TIMEOUT - Duration::from_millis(500));
    assert_eq!(sim.core.session_count(), 2, "not before the timeout");
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.core.session_count(), 1, "carol removed");
    let info = sim.core.room_info("org/room").expect("room");
    assert!(info.subscribers.is_empty());
    let (gone, _) = sim.core.take_gone();
    assert_eq!(gone, vec![sim.clients[s].session.clone().expect("id")]);
    sim.clients[a].cut = true;
    sim.run(super::sfu::SILENCE_TIMEOUT + Duration::from_millis(200));
    assert_eq!(sim.core.session_count(), 0);
    assert!(sim.core.room_info("org/room").is_none(), "empty room gone");
    let (_, rooms) = sim.core.take_gone();
    assert_eq!(rooms, vec!["org/room".to_owned()]);
}

#[test]
fn screen_layout_and_loudest_speaker() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let b = sim.add_publisher("bob", 2, Source::Camera);
    // Dave shares his screen from a second WHIP session.
    let d = sim.add_publisher("dave", 3, Source::Screen);
    sim.clients[a].audio_level = -60;
    sim.clients[b].audio_level = -20;
    sim.clients[d].audio_level = -127;
    let s = sim.add_subscriber("carol", 3, 1, Layout::Screen);
    let g = sim.add_subscriber("erin", 1, 1, Layout::Grid);
    sim.run(Duration::from_secs(3));

    // Screen layout: the share at its highest layer, cameras at their lowest, the most recent
    // speaker (bob) first.
    let sid = sim.clients[s].session.clone().expect("id");
    let info = sim.core.room_info("org/room").expect("room");
    let carol = info
        .subscribers
        .iter()
        .find(|x| x.session == sid)
        .expect("carol");
    let share = sim.clients[d].session.clone().expect("id");
    assert_eq!(carol.slots[0].publisher, Some(share), "{carol:?}");
    assert_eq!(carol.slots[0].layer.as_deref(), Some("h"));
    assert_eq!(carol.slots[1].publisher, sim.clients[b].session.clone());
    assert_eq!(carol.slots[2].publisher, sim.clients[a].session.clone());
    assert!(
        carol.slots[1..]
            .iter()
            .all(|x| x.layer.as_deref() == Some("l"))
    );
    let recent = sim.now - Duration::from_millis(300);
    let got = last_by_mid(&sim.clients[s], recent);
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(1, 0), (2, 0), (3, 2)]
    );

    // One audio line: the loudest (bob).
    let tail: Vec<u8> = sim.clients[s]
        .got_audio
        .iter()
        .rev()
        .take(10)
        .map(|x| x.1)
        .collect();
    assert!(
        tail.iter().all(|&l| l == 2),
        "loudest on the line: {tail:?}"
    );

    // Grid with one slot: the most recent speaker (bob) at the highest layer.
    let got = last_by_mid(&sim.clients[g], recent);
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(2, 2)]
    );

    // Alice starts talking loudly, bob falls silent: she takes the one-slot grid and the
    // audio line, switching on a keyframe.
    sim.clients[a].audio_level = -10;
    sim.clients[b].audio_level = -127;
    sim.run(Duration::from_secs(3));
    let recent = sim.now - Duration::from_millis(300);
    let got = last_by_mid(&sim.clients[g], recent);
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(1, 2)]
    );
    let tail: Vec<u8> = sim.clients[g]
        .got_audio
        .iter()
        .rev()
        .take(10)
        .map(|x| x.1)
        .collect();
    assert!(
        tail.iter().all(|&l| l == 1),
        "alice on the line now: {tail:?}"
    );
    assert_continuous(&sim.clients[g]);
    assert_continuous(&sim.clients[s]);
}

#[test]
fn bandwidth_estimate_lowers_layers_and_raises_them_again() {
    let mut sim = Sim::new();
    sim.add_publisher("alice", 1, Source::Camera);
    sim.add_publisher("bob", 2, Source::Camera);
    let s = sim.add_subscriber("carol", 2, 0, Layout::Grid);
    sim.run(Duration::from_secs(3));
    let layers = |sim: &Sim| {
        let recent = sim.now - Duration::from_millis(500);
        last_by_mid(&sim.clients[s], recent)
            .iter()
            .map(|o| o.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        layers(&sim),
        vec![1, 1],
        "middle layers with plenty of bandwidth"
    );

    // About 235 kbit/s needed for two middle layers, 140 for two lowest: squeeze to 160.
    sim.clients[s].link_bps = Some(160_000);
    sim.run(Duration::from_secs(10));
    assert_eq!(
        layers(&sim),
        vec![0, 0],
        "lowest layers under the bottleneck"
    );

    sim.clients[s].link_bps = None;
    sim.run(Duration::from_secs(20));
    assert_eq!(
        layers(&sim),
        vec![1, 1],
        "middle layers again once the estimate recovers"
    );
    assert_switches_on_keyframes(&sim.clients[s]);
}

#[test]
fn loss_on_both_links_is_repaired_by_nack() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let b = sim.add_subscriber("bob", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(2));
    // 5% loss from the publisher to the relay and from the relay to the subscriber.
    sim.clients[a].loss_permille = 50;
    sim.clients[b].loss_permille = 50;
    let from = sim.now;
    sim.run(Duration::from_secs(4));
    let until = sim.now;
    sim.clients[a].loss_permille = 0;
    sim.clients[b].loss_permille = 0;
    // Time for the last repairs to land.
    sim.run(Duration::from_secs(1));
    let lost = sim.clients[a].lost + sim.clients[b].lost;
    assert!(lost > 20, "the network lost only {lost} packets");

    let c = &sim.clients[b];
    let mut all: Vec<u64> = c.got.iter().map(|g| g.seq).collect();
    all.sort_unstable();
    all.dedup();
    let window: Vec<u64> = c
        .got
        .iter()
        .filter(|g| g.at >= from && g.at < until)
        .map(|g| g.seq)
        .collect();
    let (Some(&first), Some(&last)) = (window.iter().min(), window.iter().max()) else {
        panic!("nothing arrived while the links were lossy");
    };
    let missing: Vec<u64> = (first..=last)
        .filter(|s| all.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} sequence numbers never arrived after {lost} losses: {missing:?}",
        missing.len(),
        last - first + 1
    );
    assert_switches_on_keyframes(c);
}

#[test]
fn a_subscribers_keyframe_request_reaches_the_feeding_layer_throttled() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let s = sim.add_subscriber("carol", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(2));
    // One tile: the highest layer feeds carol's slot.
    let got = last_by_mid(&sim.clients[s], sim.now - Duration::from_millis(300));
    assert_eq!(
        got.iter().map(|g| (g.1, g.2)).collect::<Vec<_>>(),
        vec![(1, 2)]
    );
    let mid = got[0].0;
    // Past the allocator's own requests' throttle window.
    sim.run(Duration::from_secs(1));
    let before = sim.clients[a].key_requests;
    let counted = sim.counters().keyframe_requests;

    let pli = |sim: &mut Sim| {
        let c = &mut sim.clients[s];
        c.rtc
            .direct_api()
            .stream_rx_by_mid(mid, None)
            .expect("slot stream")
            .request_keyframe(KeyframeRequestKind::Pli);
        let now = sim.now;
        c.rtc.handle_input(Input::Timeout(now)).expect("timeout");
        c.drain(&mut sim.net);
    };
    pli(&mut sim);
    sim.run(Duration::from_millis(50));
    let after = sim.clients[a].key_requests;
    assert_eq!(after[2], before[2] + 1, "the feeding layer was asked once");
    assert_eq!(
        (after[0], after[1]),
        (before[0], before[1]),
        "no other layer"
    );
    assert_eq!(sim.counters().keyframe_requests, counted + 1);

    // A second request within the throttle window is absorbed; one after it goes through.
    pli(&mut sim);
    sim.run(Duration::from_millis(100));
    assert_eq!(sim.clients[a].key_requests[2], after[2], "throttled");
    sim.run(PLI_THROTTLE);
    pli(&mut sim);
    sim.run(Duration::from_millis(50));
    assert_eq!(
        sim.clients[a].key_requests[2],
        after[2] + 1,
        "after the window"
    );
}
