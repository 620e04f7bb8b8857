//! One simulated WebRTC participant: a [`relay_kit::peer::Peer`] on its own UDP socket, either
//! publishing simulcast VP8 and Opus-like audio in the kit's camera shape, or receiving slots,
//! and what the load tester measures on it (one-way delay from the peers' stamps, loss from the
//! received sequence numbers, join times).
//!
//! A client does no I/O outside [`Client::drain`] and friends, which hand datagrams to its
//! socket and counts to a [`Ctx`] owned by the driving thread.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_kit::peer::{Note, Peer, Shape};
use str0m::media::Mid;

pub use relay_kit::peer::AUDIO_PACKET;

/// The encoder every publisher runs.
pub const SHAPE: Shape = Shape::CAMERA;
/// How long each publisher of a room talks before the next one does.
const SPEAKER_TURN: Duration = Duration::from_secs(5);

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

/// A peer on its socket, and what is measured on it.
#[derive(Debug)]
pub struct Client {
    pub peer: Peer,
    pub socket: mio::net::UdpSocket,
    pub role: Role,
    /// Position in its room's speaking order, and how many publishers take turns.
    pub turn: (u32, u32),
    pub next_frame: Instant,
    pub next_audio: Instant,
    /// When signalling for this peer began; join time runs from here.
    pub started: Instant,
    pub joined: bool,
    /// A run without media: a publisher sends none, and a subscriber has joined once it is
    /// connected rather than at its first frame.
    pub silent: bool,
    tracks: Vec<SeqTrack>,
}

impl Client {
    /// A client on `socket`, which must be bound to a loopback address; publishers stamp `id`.
    pub fn new(
        socket: mio::net::UdpSocket,
        role: Role,
        id: u32,
        now: Instant,
        epoch: Instant,
    ) -> Result<Client, String> {
        let local = socket
            .local_addr()
            .map_err(|e| format!("client socket address: {e}"))?;
        Ok(Client {
            peer: Peer::new(local, id, SHAPE, now, epoch)?,
            socket,
            role,
            turn: (0, 1),
            next_frame: now,
            next_audio: now,
            started: now,
            joined: false,
            silent: false,
            tracks: Vec::new(),
        })
    }

    pub fn dead(&self) -> bool {
        self.peer.dead
    }

    /// A publisher that has joined and sends media (not a silent one).
    pub fn sends_media(&self) -> bool {
        self.role == Role::Publisher && self.joined && !self.silent
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

    /// Runs the peer with `step` (an input, a drain), sending what it queued and counting what
    /// it received.
    fn run(
        &mut self,
        ctx: &mut Ctx,
        now: Instant,
        step: impl FnOnce(&mut Peer, &mut dyn FnMut(Note<'_>)),
    ) {
        let Client {
            peer,
            socket,
            role,
            started,
            joined,
            silent,
            tracks,
            ..
        } = self;
        let mut join = |ctx: &mut Ctx| {
            if !*joined {
                *joined = true;
                ctx.joins
                    .push(now.saturating_duration_since(*started).as_secs_f64());
            }
        };
        step(peer, &mut |note| match note {
            Note::Transmit { to, data } => {
                if socket.send_to(data, to).is_err() {
                    ctx.totals.send_errors += 1;
                }
            }
            Note::Connected if *role == Role::Publisher || *silent => join(ctx),
            Note::KeyframeRequest { .. } => ctx.totals.keyframe_requests_received += 1,
            Note::Got(g) => {
                if g.audio {
                    ctx.totals.audio_packets_received += 1;
                } else {
                    ctx.totals.video_packets_received += 1;
                    join(ctx);
                }
                ctx.totals.bytes_received += g.payload_len as u64;
                if !ctx.measuring {
                    return;
                }
                if let Some(stamp) = g.stamp
                    && ctx.delays_us.len() < MAX_DELAY_SAMPLES
                {
                    let delay = ctx.nanos(now).saturating_sub(stamp.sent) / 1_000;
                    ctx.delays_us.push(delay.min(u64::from(u32::MAX)) as u32);
                }
                let i = match tracks.iter().position(|t| t.mid == g.mid) {
                    Some(i) => i,
                    None => {
                        tracks.push(SeqTrack::new(g.mid));
                        tracks.len() - 1
                    }
                };
                tracks[i].on(g.seq);
            }
            Note::Connected | Note::Disconnected => {}
        });
    }

    /// Runs str0m until it waits for time or input; sends what it queued.
    pub fn drain(&mut self, ctx: &mut Ctx, now: Instant) {
        self.run(ctx, now, |peer, on| peer.drain(now, on));
    }

    /// A datagram arrived from `from`.
    pub fn receive(&mut self, ctx: &mut Ctx, now: Instant, from: SocketAddr, data: &[u8]) {
        self.run(ctx, now, |peer, on| peer.receive(now, from, data, on));
    }

    /// str0m's timers, when due.
    pub fn tick(&mut self, ctx: &mut Ctx, now: Instant) {
        self.run(ctx, now, |peer, on| peer.tick(now, on));
    }

    /// One video frame on every layer; the caller drains afterwards.
    pub fn send_frame(&mut self, ctx: &mut Ctx, now: Instant) {
        let sent = self.peer.send_frame(now);
        ctx.totals.video_packets_sent += sent.packets;
        ctx.totals.keyframes_sent += sent.keyframes;
    }

    /// One 20 ms audio packet: loud on this publisher's turn, quiet otherwise, so the relay's
    /// speaker choice moves around the room. The caller drains afterwards.
    pub fn send_audio(&mut self, ctx: &mut Ctx, now: Instant) {
        let elapsed = now.saturating_duration_since(ctx.epoch);
        let turn = (elapsed.as_secs() / SPEAKER_TURN.as_secs()) as u32 % self.turn.1.max(1);
        self.peer.audio_level = if turn == self.turn.0 { -25 } else { -70 };
        if self.peer.send_audio(now) {
            ctx.totals.audio_packets_sent += 1;
        }
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
