//! The threads that drive simulated peers: each owns a group of [`Client`]s and one mio poll over
//! their sockets, sends media when it is due, feeds str0m its timers, and counts.
//!
//! The main thread steers every group through the same phases with one atomic each (warm-up,
//! measuring, measured, stop); a group takes its own snapshots at the phase changes, so no
//! counter is shared on the packet path. Every loop is bounded: reads per readiness, frames of
//! catch-up, and the whole thread by a deadline.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::{AUDIO_PACKET, Client, Ctx, SHAPE, Totals};
use mio::{Events, Interest, Poll, Token};

pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const MEASURED: u8 = 2;
pub const STOP: u8 = 3;

/// Longest sleep between two looks at the phase.
const MAX_WAIT: Duration = Duration::from_millis(10);
/// Datagrams read from one socket before the others get a turn.
const READ_BURST: usize = 256;
/// Frames an encoder sends to catch up after the thread fell behind; beyond that it skips.
const MAX_CATCH_UP: usize = 3;

/// What the main thread sees of a group while it runs.
#[derive(Debug, Default)]
pub struct Shared {
    pub phase: AtomicU8,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub joined: AtomicU64,
    pub dead: AtomicU64,
}

/// What a group measured.
#[derive(Debug, Default)]
pub struct GroupResult {
    /// Counters over the measured window.
    pub window: Totals,
    pub delays_us: Vec<u32>,
    /// Packets expected and received on subscribers' streams in the window.
    pub loss_expected: u64,
    pub loss_received: u64,
    pub joins: Vec<f64>,
    pub peers: usize,
    pub dead: usize,
}

/// A running group.
#[derive(Debug)]
pub struct Group {
    pub tx: mpsc::Sender<Client>,
    pub handle: JoinHandle<Result<GroupResult, String>>,
    pub shared: Arc<Shared>,
}

/// Starts a group thread that runs until told to stop or until `deadline`.
pub fn spawn(index: usize, epoch: Instant, deadline: Instant) -> std::io::Result<Group> {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let s = shared.clone();
    let handle = std::thread::Builder::new()
        .name(format!("clients-{index}"))
        .spawn(move || run(rx, &s, epoch, deadline))?;
    Ok(Group { tx, handle, shared })
}

fn run(
    rx: mpsc::Receiver<Client>,
    shared: &Shared,
    epoch: Instant,
    deadline: Instant,
) -> Result<GroupResult, String> {
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let mut peers: Vec<Client> = Vec::new();
    let mut ctx = Ctx::new(epoch);
    let mut phase = WARMUP;
    let mut base = Totals::default();
    let mut result = GroupResult::default();
    let mut buf = vec![0u8; 2048];
    // Peers whose socket may still hold datagrams (edge-triggered readiness).
    let mut unread: Vec<usize> = Vec::new();
    let frame = SHAPE.frame_interval();

    while Instant::now() < deadline {
        let now = Instant::now();
        while let Ok(mut p) = rx.try_recv() {
            poll.registry()
                .register(&mut p.socket, Token(peers.len()), Interest::READABLE)
                .map_err(|e| format!("register client socket: {e}"))?;
            p.drain(&mut ctx, now);
            unread.push(peers.len());
            peers.push(p);
        }

        let want = shared.phase.load(Ordering::Acquire);
        if want > phase {
            if want >= MEASURE && phase < MEASURE {
                base = ctx.totals;
                ctx.measuring = true;
                for p in &mut peers {
                    p.open_window();
                }
            }
            if want >= MEASURED && phase < MEASURED {
                result.window = ctx.totals.minus(&base);
                ctx.measuring = false;
                for p in &peers {
                    let (e, r) = p.loss_figures();
                    result.loss_expected += e;
                    result.loss_received += r;
                }
            }
            phase = want;
            if phase >= STOP {
                break;
            }
        }

        for p in peers.iter_mut().filter(|p| p.sends_media() && !p.dead()) {
            let mut sent = false;
            for _ in 0..MAX_CATCH_UP {
                if p.next_frame > now {
                    break;
                }
                p.send_frame(&mut ctx, now);
                p.next_frame += frame;
                sent = true;
            }
            if p.next_frame <= now {
                p.next_frame = now + frame;
            }
            for _ in 0..MAX_CATCH_UP {
                if p.next_audio > now {
                    break;
                }
                p.send_audio(&mut ctx, now);
                p.next_audio += AUDIO_PACKET;
                sent = true;
            }
            if p.next_audio <= now {
                p.next_audio = now + AUDIO_PACKET;
            }
            if sent {
                p.drain(&mut ctx, now);
            }
        }

        for p in peers.iter_mut().filter(|p| !p.dead()) {
            p.tick(&mut ctx, now);
        }

        let mut next = now + MAX_WAIT;
        for p in peers.iter().filter(|p| !p.dead()) {
            next = next.min(p.peer.next_timeout);
            if p.sends_media() {
                next = next.min(p.next_frame).min(p.next_audio);
            }
        }
        let wait = if unread.is_empty() {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        unread.extend(events.iter().map(|e| e.token().0));
        unread.sort_unstable();
        unread.dedup();
        for i in std::mem::take(&mut unread) {
            let Some(p) = peers.get_mut(i) else { continue };
            if read(p, &mut ctx, &mut buf) {
                unread.push(i);
            }
        }

        shared.sent.store(ctx.totals.sent(), Ordering::Relaxed);
        shared
            .received
            .store(ctx.totals.received(), Ordering::Relaxed);
        shared
            .joined
            .store(ctx.joins.len() as u64, Ordering::Relaxed);
        shared.dead.store(
            peers.iter().filter(|p| p.dead()).count() as u64,
            Ordering::Relaxed,
        );
    }
    if phase < MEASURED {
        // Stopped by the deadline before the window closed: report what there is.
        result.window = ctx.totals.minus(&base);
    }
    result.delays_us = std::mem::take(&mut ctx.delays_us);
    result.joins = std::mem::take(&mut ctx.joins);
    result.peers = peers.len();
    result.dead = peers.iter().filter(|p| p.dead()).count();
    Ok(result)
}

/// Reads up to a burst of datagrams into the client; true if more may be waiting.
fn read(p: &mut Client, ctx: &mut Ctx, buf: &mut [u8]) -> bool {
    for _ in 0..READ_BURST {
        let (n, from) = match p.socket.recv_from(buf) {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        if !p.dead() {
            p.receive(ctx, Instant::now(), from, &buf[..n]);
        }
    }
    true
}
