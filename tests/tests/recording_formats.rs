//! The recording formats judged by Debian's ffmpeg: VP8 frames and Opus packets that ffmpeg
//! encoded itself are written with the relay's WebM and Ogg Opus writers, and `ffprobe` and
//! `ffmpeg` must read the files back whole, with the right streams and duration, without a
//! single error; a file cut short is trimmed to what plays.
#![allow(clippy::unwrap_used)] // Tests stop at the first unexpected failure.

use std::path::PathBuf;

use relay::record::ogg::{self, OggOpusWriter};
use relay::record::webm::{self, Tracks, WebmWriter};
use relay_tests::judge::{decode_errors, ffmpeg, mean_volume, probe};

const SECONDS: f64 = 3.0;

/// VP8 frames of an IVF file: (frame index, keyframe, data).
fn ivf_frames(b: &[u8]) -> Vec<(u64, bool, Vec<u8>)> {
    assert_eq!(&b[..4], b"DKIF");
    let header = usize::from(u16::from_le_bytes([b[6], b[7]]));
    let mut at = header;
    let mut frames = Vec::new();
    while at + 12 <= b.len() {
        let size = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let pts = u64::from_le_bytes(b[at + 4..at + 12].try_into().unwrap());
        let data = b[at + 12..at + 12 + size].to_vec();
        frames.push((pts, data[0] & 1 == 0, data));
        at += 12 + size;
    }
    frames
}

/// Packets of an Ogg stream (a packet continues while its lacing values are 255).
fn ogg_packets(b: &[u8]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut partial = Vec::new();
    let mut at = 0;
    while at + 27 <= b.len() {
        assert_eq!(&b[at..at + 4], b"OggS");
        let n = usize::from(b[at + 26]);
        let lacing = &b[at + 27..at + 27 + n];
        let mut body = at + 27 + n;
        for &l in lacing {
            partial.extend_from_slice(&b[body..body + usize::from(l)]);
            body += usize::from(l);
            if l < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        at = body;
    }
    packets
}

struct Media {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    video: Vec<(u64, bool, Vec<u8>)>,
    audio: Vec<Vec<u8>>,
    pre_skip: u16,
}

/// Three seconds of VP8 (320x240 at 30 frames a second) and of stereo Opus (a 440 Hz tone),
/// encoded by ffmpeg.
fn media() -> Media {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let ivf = dir.join("v.ivf");
    let opus = dir.join("a.ogg");
    let t = SECONDS.to_string();
    let (ok, err) = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        "-t",
        &t,
        "-c:v",
        "libvpx",
        "-g",
        "30",
        "-f",
        "ivf",
        &ivf.to_string_lossy(),
    ]);
    assert!(ok, "{err}");
    let (ok, err) = ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &t,
        "-ac",
        "2",
        "-c:a",
        "libopus",
        "-f",
        "ogg",
        &opus.to_string_lossy(),
    ]);
    assert!(ok, "{err}");
    let video = ivf_frames(&std::fs::read(&ivf).unwrap());
    let mut audio = ogg_packets(&std::fs::read(&opus).unwrap());
    let head = audio.remove(0);
    assert!(head.starts_with(b"OpusHead"));
    audio.remove(0); // OpusTags
    Media {
        _dir: tmp,
        dir,
        video,
        audio,
        pre_skip: u16::from_le_bytes([head[10], head[11]]),
    }
}

/// The two tracks, interleaved by time, into a WebM writer; the bytes after the header.
fn mux(m: &Media, w: &mut WebmWriter) -> Vec<u8> {
    let mut audio_ms = 0.0;
    let mut a = m.audio.iter().peekable();
    let mut out = Vec::new();
    for (pts, key, frame) in &m.video {
        let video_ms = *pts as f64 * 1000.0 / 30.0;
        while let Some(p) = a.peek() {
            if audio_ms > video_ms {
                break;
            }
            w.audio(audio_ms as u64, p);
            audio_ms += f64::from(ogg::opus_samples(p).unwrap()) / 48.0;
            a.next();
        }
        w.video(video_ms as u64, *key, frame);
        out.extend(w.take());
    }
    for p in a {
        w.audio(audio_ms as u64, p);
        audio_ms += f64::from(ogg::opus_samples(p).unwrap()) / 48.0;
    }
    out.extend(w.take());
    out
}

#[test]
fn a_webm_of_vp8_and_opus_plays_whole_and_a_cut_one_plays_to_the_cut() {
    let m = media();
    assert!(m.video.len() >= 85, "{} frames", m.video.len());
    let tracks = Tracks {
        width: 320,
        height: 240,
        channels: 2,
        pre_skip: m.pre_skip,
    };
    let mut w = WebmWriter::new(tracks);
    let header = w.take();
    let body = mux(&m, &mut w);

    // As streamed (no duration in the header: a live file), and closed with the header
    // written again with the duration in front of the same clusters.
    let file = [header.as_slice(), &body].concat();
    let path = m.dir.join("streamed.webm");
    std::fs::write(&path, &file).unwrap();
    assert_eq!(probe(&path).0, ["vp8", "opus"]);
    assert_eq!(decode_errors(&path), "");
    let scanned = webm::scan(&file);
    assert_eq!(
        (scanned.len, scanned.header_len),
        (file.len(), header.len())
    );
    let last_ms = scanned.last_ms.expect("blocks") as f64;
    assert!((last_ms / 1000.0 - SECONDS).abs() < 0.1, "{last_ms} ms");
    let path = m.dir.join("closed.webm");
    let closed = WebmWriter::header(tracks, Some(last_ms + 20.0));
    std::fs::write(&path, [closed.as_slice(), &body].concat()).unwrap();
    let (codecs, duration) = probe(&path);
    assert_eq!(codecs, ["vp8", "opus"]);
    assert!((duration - SECONDS).abs() < 0.5, "{duration} s");
    assert_eq!(decode_errors(&path), "");

    // Cut in the middle of a block, as a relay killed mid-recording leaves it: trimmed to the
    // last whole block and closed with its duration, it plays without an error to about where
    // it was cut.
    let cut = &file[..file.len() * 3 / 5 + 7];
    let whole = webm::scan(cut);
    assert!(whole.len > header.len() && whole.len < cut.len());
    let cut_ms = whole.last_ms.expect("blocks before the cut") as f64;
    assert!((1000.0..2500.0).contains(&cut_ms), "cut at {cut_ms} ms");
    let path = m.dir.join("cut.webm");
    let closed = WebmWriter::header(tracks, Some(cut_ms + 20.0));
    let kept = &cut[whole.header_len..whole.len];
    std::fs::write(&path, [closed.as_slice(), kept].concat()).unwrap();
    assert_eq!(decode_errors(&path), "");
    let (_, duration) = probe(&path);
    assert!(
        (duration - cut_ms / 1000.0).abs() < 0.5,
        "{duration} s, cut at {cut_ms} ms"
    );
}

#[test]
fn an_ogg_opus_stream_plays_whole_and_is_not_silent() {
    let m = media();
    let mut w = OggOpusWriter::new(0x5EED, 2, m.pre_skip);
    let mut file = w.take();
    for p in &m.audio {
        assert!(w.packet(p));
        file.extend(w.take());
    }
    w.finish();
    file.extend(w.take());
    assert_eq!(ogg::playable_len(&file), file.len());
    let path = m.dir.join("call.ogg");
    std::fs::write(&path, &file).unwrap();
    let (codecs, duration) = probe(&path);
    assert_eq!(codecs, ["opus"]);
    assert!((duration - SECONDS).abs() < 0.5, "{duration} s");
    assert_eq!(decode_errors(&path), "");
    let mean = mean_volume(&path);
    assert!(mean > -40.0, "mean volume {mean} dB");
    // A stream cut mid-page plays up to the page before.
    let cut = &file[..file.len() - 10];
    let whole = ogg::playable_len(cut);
    assert!(whole < cut.len());
    let path = m.dir.join("cut.ogg");
    std::fs::write(&path, &cut[..whole]).unwrap();
    assert_eq!(decode_errors(&path), "");
}
