//! The media plane's decisions and per-packet work: the slot and layer decision for a busy
//! room, the per-slot RTP rewrite of one packet, keyframe detection, and the whole core
//! forwarding a publisher's packets to N subscribers (a simulated room, clients not counted).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use relay::media::allocate::{Feed, LayerInfo, Layout, SlotRequest, VideoTrack, allocate};
use relay::media::keyframe::{VideoCodec, is_keyframe};
use relay::media::rewrite::Rewriter;
use relay::media::sim::Sim;
use relay::media::types::{Layout as RoomLayout, Source};

const LAYERS: [LayerInfo; 3] = [
    LayerInfo {
        layer: 2,
        height: 180,
        bitrate_bps: 150_000,
    },
    LayerInfo {
        layer: 1,
        height: 360,
        bitrate_bps: 500_000,
    },
    LayerInfo {
        layer: 0,
        height: 720,
        bitrate_bps: 1_500_000,
    },
];

fn bench(c: &mut Criterion) {
    // A 25-person meeting: 24 other cameras, 9 tiles, a bandwidth estimate that forces layers
    // down; the previous decision is the steady state, as on a periodic tick.
    let t0 = Instant::now();
    let tracks: Vec<VideoTrack<'_>> = (0..25u64)
        .map(|i| VideoTrack {
            id: i,
            participant: i,
            screen: false,
            layers: &LAYERS,
            last_spoke: Some(t0 + Duration::from_millis(i * 37 % 500)),
            order: i,
        })
        .collect();
    let req = SlotRequest {
        participant: 0,
        layout: Layout::Grid,
        max_height: None,
        bwe_bps: Some(2_500_000),
        keep_slots: true,
    };
    let mut prev = vec![None; 9];
    allocate(&tracks, &req, &[], &mut prev);
    let mut out: Vec<Option<Feed>> = vec![None; 9];
    c.bench_function("allocate_25_cameras_9_slots_bwe", |b| {
        b.iter(|| allocate(black_box(&tracks), black_box(&req), &prev, &mut out))
    });

    let mut rw = Rewriter::new(1000, 90_000);
    let mut seq = 5_000u64;
    let now = Instant::now();
    c.bench_function("rewrite_one_packet", |b| {
        b.iter(|| {
            seq += 1;
            rw.rewrite(
                black_box(0x1234_5678),
                seq,
                (seq as u32) * 3000,
                90_000,
                now,
            )
        })
    });

    let mut vp8 = vec![0u8; 1100];
    vp8[0] = 0x90; // X and S bits, partition 0
    vp8[1] = 0x80; // I: picture id present
    c.bench_function("vp8_keyframe_detect", |b| {
        b.iter(|| is_keyframe(VideoCodec::Vp8, black_box(&vp8)))
    });
}

/// A room of one publisher (three simulcast layers and audio) and `n` subscribers with one video
/// slot and one audio line each, settled for three simulated seconds.
fn room(n: usize) -> Sim {
    let mut sim = Sim::with_room_size(n + 1);
    sim.add_publisher("p", 1, Source::Camera);
    for i in 0..n {
        sim.add_subscriber(&format!("s{i}"), 1, 1, RoomLayout::Grid);
    }
    sim.run(Duration::from_secs(3));
    sim
}

/// Core time per forwarded copy: the simulation runs until `iters` more copies were forwarded,
/// and only the time inside the core's calls counts (its timers, RTCP and STUN included).
fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_forward_per_copy");
    g.sample_size(10);
    for n in [10usize, 50] {
        let mut sim = room(n);
        g.bench_function(format!("{n}_subscribers"), |b| {
            b.iter_custom(|iters| {
                let copies0 = sim.counters().packets_forwarded;
                let time0 = sim.core_time;
                let mut copies = 0;
                // Bounded: at least one copy per simulated frame once the room is settled.
                for _ in 0..iters.saturating_mul(33) + 1_000 {
                    sim.run(Duration::from_millis(1));
                    copies = sim.counters().packets_forwarded - copies0;
                    if copies >= iters {
                        break;
                    }
                }
                let spent = sim.core_time - time0;
                spent.mul_f64(iters as f64 / copies.max(1) as f64)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, forward);
criterion_main!(benches);
