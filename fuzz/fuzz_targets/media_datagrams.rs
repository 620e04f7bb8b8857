//! Arbitrary datagrams at a media worker's core that holds a live publisher and subscriber
//! (real Chromium offers): from a known peer address or a stranger, any bytes. Nothing may
//! panic, and the core must keep running its timers afterwards.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay::media::counters::WorkerCounters;
use relay::media::sfu::{Core, CoreConfig, Wire};
use relay::media::{Layout, Source};

const WHIP: &str = include_str!("../../tests/testdata/chromium-whip-offer.sdp");
const WHEP: &str = include_str!("../../tests/testdata/chromium-whep-offer.sdp");

struct Sink;

impl Wire for Sink {
    fn send(&mut self, _to: SocketAddr, _data: &[u8]) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&port, payload)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let local: SocketAddr = ([127, 0, 0, 1], 40_000).into();
    let cfg = CoreConfig {
        local,
        max_sessions_per_room: 4,
        max_rooms: 2,
    };
    let mut core = Core::new(cfg, Arc::new(WorkerCounters::default()), now);
    let mut wire = Sink;
    let _ = core.publish("org/room", "alice", Source::Camera, WHIP, now, &mut wire);
    let _ = core.subscribe("org/room", "bob", Layout::Grid, WHEP, now, &mut wire);
    // Port 0..=255 above 50000: some collide with the offers' candidates, most are strangers.
    let from: SocketAddr = ([127, 0, 0, 1], 50_000 + u16::from(port)).into();
    for chunk in payload.split(|b| *b == 0xff).take(16) {
        core.handle_datagram(from, chunk, now, &mut wire);
    }
    core.handle_timeout(now + Duration::from_millis(100), &mut wire);
});
