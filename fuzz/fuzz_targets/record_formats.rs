//! What a recording's recovery reads back from disk after a crash: a WebM or Ogg file cut
//! anywhere, or damaged. The scans never panic, never claim more than they were given, and a
//! prefix they call whole scans whole again; Opus packet durations stay within 120 ms. And
//! RTP packets of any content make VP8 frames without a panic, none before a keyframe. A header
//! read back takes a duration or is refused; any bytes as Opus packets, at any timestamps, mix
//! into one 20 ms frame after another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::media::vp8_frames as vp8;
use relay::record::{mix, ogg, webm};

fuzz_target!(|data: &[u8]| {
    let w = webm::scan(data);
    assert!(w.len <= data.len() && w.header_len <= data.len());
    assert_eq!(webm::scan(&data[..w.len]).len, w.len);
    let o = ogg::playable_len(data);
    assert!(o <= data.len());
    assert_eq!(ogg::playable_len(&data[..o]), o);
    if let Some(n) = ogg::opus_samples(data) {
        assert!(n <= 5760);
    }
    // Fed to the writers, the same bytes make streams that scan whole.
    let mut ow = ogg::OggOpusWriter::new(1, 2, 312);
    let mut stream = ow.take();
    for chunk in data.chunks(97) {
        ow.packet(chunk);
        stream.extend(ow.take());
    }
    ow.finish();
    stream.extend(ow.take());
    assert_eq!(ogg::playable_len(&stream), stream.len());
    let tracks = webm::Tracks {
        width: 64,
        height: 48,
        channels: 2,
        pre_skip: 312,
    };
    let mut ww = webm::WebmWriter::new(tracks);
    for (i, chunk) in data.chunks(61).enumerate() {
        let ms = u64::from(chunk.first().copied().unwrap_or(0)) * 40;
        if i % 2 == 0 {
            ww.video(ms, chunk.len() % 3 == 0, chunk);
        } else {
            ww.audio(ms, chunk);
        }
    }
    let file = ww.take();
    assert_eq!(webm::scan(&file).len, file.len());
    if let Some(h) = webm::with_duration(data, 1234.0) {
        assert_eq!(webm::with_duration(&h, 1234.0).as_deref(), Some(&h[..]));
    }
    if let Some((w, h)) = vp8::keyframe_size(data) {
        assert!(w > 0 && w < 16_384 && h > 0 && h < 16_384);
    }
    let mut m = mix::Mixer::new().expect("libopus");
    let mut last = None;
    for chunk in data.chunks(41) {
        let [v, a, b, c, rest @ ..] = chunk else {
            continue;
        };
        // Up to a second in: the mix encodes every frame up to it.
        let arrival = u64::from(*a) * 4 + u64::from(*b % 4);
        m.push(u64::from(*v % 4), arrival, u32::from(*c) * 960, rest);
        for (ms, p) in m.mix_until(arrival) {
            assert!(last.is_none_or(|l| ms == l + 20), "{last:?} then {ms}");
            assert!(!p.is_empty());
            last = Some(ms);
        }
    }
    let mut frames = vp8::Vp8Frames::default();
    let mut keyed = false;
    for chunk in data.chunks(23) {
        let [a, b, c, rest @ ..] = chunk else {
            continue;
        };
        let seq = u16::from_be_bytes([*a, *b]);
        let ts = u32::from(*c) * 3000;
        for f in frames.push(seq, ts, c & 1 == 1, rest) {
            keyed |= f.keyframe;
            assert!(keyed, "a frame before any keyframe");
        }
    }
});
