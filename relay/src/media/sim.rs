//! A simulated room for tests and benchmarks: the SFU core against str0m client peers
//! ([`relay_kit::peer::Peer`], the load tester's peers) on a simulated clock (feature `sim`, and
//! always in tests).
//!
//! Publishers send three VP8 simulcast layers (and Opus audio) in [`Shape::SMALL`]; every
//! payload carries the kit's stamp (publisher label, layer), so the subscribers' side can tell
//! which publisher and layer reached which slot. Nothing touches a socket: datagrams move
//! through a queue, time moves in 1 ms steps. The core's own work (its datagram and timeout
//! calls) is timed apart from the clients' ([`Sim::core_time`]) and runs in [`core_datagram`]
//! and [`core_timeout`], which instruction counters can select by name.
//!
//! A harness, not the product: it panics on anything unexpected, as a test should.
#![allow(clippy::unwrap_used, missing_debug_implementations)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_kit::peer::{Note, Peer};
use str0m::media::Mid;

use super::counters::{MediaCounters, WorkerCounters};
use super::sfu::{Core, CoreConfig, Wire};
use super::types::{Layout, MediaError, SessionAnswer, SessionId, Source};

pub use relay_kit::peer::{RIDS, Shape};

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

/// A video packet a subscriber received: its slot, the stamp's publisher label and layer.
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

/// A peer and the simulated link it sits behind.
pub struct Client {
    pub peer: Peer,
    pub addr: SocketAddr,
    pub session: Option<SessionId>,
    /// Publisher: sends media while set.
    pub sending: bool,
    /// Keyframe requests that reached this publisher, per layer.
    pub key_requests: [u32; 3],
    /// Subscriber: what arrived (video, and audio as (mid, publisher label)).
    pub got: Vec<Got>,
    pub got_audio: Vec<(Mid, u8)>,
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
    /// A client on 127.0.0.1:`port` sending in [`Shape::SMALL`]; `epoch` is the run's clock
    /// for stamps.
    pub fn new(port: u16, now: Instant, epoch: Instant) -> Client {
        Client::with_shape(port, Shape::SMALL, now, epoch)
    }

    pub fn with_shape(port: u16, shape: Shape, now: Instant, epoch: Instant) -> Client {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Client {
            peer: Peer::new(addr, 0, shape, now, epoch).expect("peer"),
            addr,
            session: None,
            sending: true,
            key_requests: [0; 3],
            got: Vec::new(),
            got_audio: Vec::new(),
            cut: false,
            link_bps: None,
            loss_permille: 0,
            lost: 0,
            busy_until: now,
            delayed: VecDeque::new(),
        }
    }

    pub fn publisher_offer(&mut self, label: u8) -> String {
        self.peer.label = u32::from(label);
        self.peer.publisher_offer().expect("offer")
    }

    pub fn subscriber_offer(&mut self, video_slots: usize, audio_lines: usize) -> String {
        self.peer
            .subscriber_offer(video_slots, audio_lines)
            .expect("offer")
    }

    pub fn accept(&mut self, answer: &str) {
        self.peer.accept(answer).expect("answer accepted");
    }

    /// What the peer says, into the network queue and this client's records.
    fn noter<'a>(
        addr: SocketAddr,
        net: &'a mut Net,
        got: &'a mut Vec<Got>,
        got_audio: &'a mut Vec<(Mid, u8)>,
        key_requests: &'a mut [u32; 3],
    ) -> impl FnMut(Note<'_>) + 'a {
        move |note| match note {
            Note::Transmit { to, data } => net.queue.push_back((addr, to, data.to_vec())),
            Note::KeyframeRequest { layer } => {
                for (i, n) in key_requests.iter_mut().enumerate() {
                    if layer.is_none_or(|l| l == i) {
                        *n += 1;
                    }
                }
            }
            Note::Got(g) => {
                let Some(stamp) = g.stamp else { return };
                let publisher = stamp.publisher as u8;
                if g.audio {
                    got_audio.push((g.mid, publisher));
                } else {
                    got.push(Got {
                        mid: g.mid,
                        publisher,
                        layer: stamp.layer,
                        keyframe: g.keyframe,
                        seq: g.seq,
                        ts: g.ts,
                        at: g.at,
                    });
                }
            }
            Note::Connected | Note::Disconnected => {}
        }
    }

    /// Runs the peer until it waits: `step` feeds it (an input, a frame), then it is drained.
    fn with_notes(
        &mut self,
        net: &mut Net,
        step: impl FnOnce(&mut Peer, &mut dyn FnMut(Note<'_>)),
    ) {
        let Client {
            peer,
            addr,
            got,
            got_audio,
            key_requests,
            ..
        } = self;
        let mut on = Client::noter(*addr, net, got, got_audio, key_requests);
        step(peer, &mut on);
    }

    /// Drains what the peer has to say after something was written to it.
    pub fn drain(&mut self, net: &mut Net, now: Instant) {
        self.with_notes(net, |peer, on| peer.drain(now, on));
    }

    /// A datagram from `from` arrives.
    pub fn receive(&mut self, net: &mut Net, now: Instant, from: SocketAddr, data: &[u8]) {
        self.with_notes(net, |peer, on| peer.receive(now, from, data, on));
    }

    /// The peer's timers, when due.
    pub fn tick(&mut self, net: &mut Net, now: Instant) {
        self.with_notes(net, |peer, on| peer.tick(now, on));
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
    /// What the publishers added from now on send.
    pub shape: Shape,
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
            shape: Shape::SMALL,
            core_time: Duration::ZERO,
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    pub fn add_publisher(&mut self, user: &str, label: u8, source: Source) -> usize {
        let port = 5000 + self.clients.len() as u16;
        let mut c = Client::with_shape(port, self.shape, self.now, self.start);
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
        let mut c = Client::new(5000 + self.clients.len() as u16, self.now, self.start);
        let offer = c.subscriber_offer(slots, audio);
        self.connect(c, |core, now, wire| {
            core.subscribe("org/room", user, layout, true, &offer, now, wire)
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
        c.drain(&mut self.net, self.now);
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
                for c in self.clients.iter_mut().filter(|c| c.sending) {
                    c.peer.send_frame(now);
                    c.drain(&mut self.net, now);
                }
            }
            if ms.is_multiple_of(20) {
                for c in self.clients.iter_mut().filter(|c| c.sending) {
                    c.peer.send_audio(now);
                    c.drain(&mut self.net, now);
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
                    c.receive(&mut self.net, now, from, &data);
                }
            }
            for c in &mut self.clients {
                while c.delayed.front().is_some_and(|d| d.0 <= now) {
                    let Some((_, from, data)) = c.delayed.pop_front() else {
                        break;
                    };
                    c.receive(&mut self.net, now, from, &data);
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
                c.tick(&mut self.net, now);
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
