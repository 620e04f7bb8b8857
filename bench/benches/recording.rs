//! What a recording costs the writer thread per recorded second: the voices decoded, mixed and
//! encoded again (libopus), and the file made (WebM with 30 frames a second of video, or Ogg).
//! The packets are real Opus (a tone per voice, encoded by libopus here); video frames are
//! bytes of a typical size, since the recording never decodes video.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use opus::{Application, Channels, Encoder};
use relay::media::sfu::{Recorded, RecordedAudio, RecordedFrame};
use relay::record::muxer::{Kind, Muxer};

/// One second of `voices` speaking (50 Opus packets each) and, for a meeting, 30 video frames
/// of 4 KB (about 1 Mbit/s), the first a keyframe.
fn second(voices: u64, video: bool) -> Vec<Recorded> {
    let mut out = Vec::new();
    let mut encoders: Vec<Encoder> = (0..voices)
        .map(|_| Encoder::new(48_000, Channels::Mono, Application::Voip).expect("encoder"))
        .collect();
    for tick in 0..10u64 {
        let mut r = Recorded::default();
        for (v, enc) in encoders.iter_mut().enumerate() {
            for k in 0..5u64 {
                let n = tick * 5 + k;
                let pcm: Vec<f32> = (0..960)
                    .map(|i| {
                        let t = (n * 960 + i) as f32 / 48_000.0;
                        0.2 * (2.0 * std::f32::consts::PI * (300.0 + 110.0 * v as f32) * t).sin()
                    })
                    .collect();
                r.audio.push(RecordedAudio {
                    voice: v as u64,
                    ms: n * 20,
                    ts: (n * 960) as u32,
                    data: enc.encode_vec_float(&pcm, 1_500).expect("encode"),
                });
            }
        }
        if video {
            for k in 0..3u64 {
                let n = tick * 3 + k;
                let mut data = vec![0u8; 4_000];
                data[0] = u8::from(n != 0);
                r.video.push(RecordedFrame {
                    ms: n * 33,
                    keyframe: n == 0,
                    data,
                });
            }
        }
        out.push(r);
    }
    out
}

/// Feeds one second to a new muxer as the writer does (ten hand-offs, each followed by a
/// write), and finishes it.
fn record(kind: Kind, input: &[Recorded]) -> usize {
    let mut m = Muxer::new(kind).expect("libopus");
    let mut bytes = 0;
    for (i, r) in input.iter().enumerate() {
        m.push(r.clone());
        bytes += m.advance(i as u64 * 100 + 100).len();
    }
    bytes + m.finish(1_000).len()
}

fn bench(c: &mut Criterion) {
    for voices in [2u64, 4, 10] {
        let input = second(voices, true);
        c.bench_function(&format!("meeting_second_{voices}_voices"), |b| {
            b.iter(|| black_box(record(Kind::Meeting, &input)))
        });
    }
    let input = second(2, false);
    c.bench_function("audio_second_2_voices", |b| {
        b.iter(|| black_box(record(Kind::Audio, &input)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
