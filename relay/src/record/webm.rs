//! A WebM writer for one VP8 video track and one Opus audio track, sans-IO and streaming: the
//! header comes first, then clusters as blocks arrive, each piece handed out as bytes the caller
//! stores at once.
//!
//! The Segment and every Cluster have unknown size (EBML's all-ones size), so nothing written is
//! ever patched: a file cut anywhere after a complete block plays up to that block
//! ([`playable_len`] finds the cut). The header is its own piece ([`WebmWriter::header`]) and
//! can be written again with the duration once the recording ends, in front of the same
//! clusters.
//!
//! Timestamps are milliseconds (TimestampScale 1,000,000 ns), strictly rising within a track. A cluster starts at the first
//! block, at every video keyframe, and before a block's offset from the cluster would leave the
//! 16-bit range; blocks never go back in time, within a track or before their cluster (a late
//! one is clamped).

/// EBML element ids (Matroska).
mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
    pub const DURATION: u32 = 0x4489;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const CODEC_ID: u32 = 0x86;
    pub const DEFAULT_DURATION: u32 = 0x23_E383;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const CODEC_DELAY: u32 = 0x56AA;
    pub const SEEK_PRE_ROLL: u32 = 0x56BB;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMESTAMP: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
}

/// The track numbers.
pub const VIDEO_TRACK: u8 = 1;
pub const AUDIO_TRACK: u8 = 2;

/// The least time between two video blocks, and the video's declared default duration.
///
/// ffmpeg lays a variable-rate stream's frames on a grid of its frame rate, and two frames on
/// one point of it are an error ("non monotonically increasing dts"). A default duration of
/// 5 ms is a declared rate of 200 frames a second, which its Matroska reader takes as the
/// stream's rate (it takes a declared rate only below 1000); with every video block at least
/// that far from the one before, no two share a point. (A 1 ms default, a rate of 1000, left
/// the rate to be guessed from the first frames, about 30 a second, and frames that came in a
/// burst fell on one point of that grid.) Camera and screen frames come 33 ms or more apart,
/// so only a burst is spread, by a few milliseconds.
const VIDEO_SPACING_MS: u64 = 5;
const VIDEO_DEFAULT_DURATION_NS: u64 = VIDEO_SPACING_MS * 1_000_000;

/// Opus's seek pre-roll, 80 ms (RFC 7845's recommendation, in ns).
const SEEK_PRE_ROLL_NS: u64 = 80_000_000;

/// The largest offset a block may have from its cluster's timestamp.
const MAX_OFFSET_MS: u64 = i16::MAX as u64;

/// What the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracks {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    /// Samples (48 kHz) the Opus decoder drops at the start.
    pub pre_skip: u16,
}

fn put_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
    out.extend_from_slice(&bytes[skip..]);
}

/// An EBML variable-size integer of the fewest bytes (all-ones values are reserved).
fn put_size(out: &mut Vec<u8>, n: u64) {
    let mut len = 1;
    while len < 8 && n >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = n | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

/// EBML's "unknown size" (eight bytes, all value bits set).
fn put_unknown_size(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
}

fn put_bytes(out: &mut Vec<u8>, id: u32, body: &[u8]) {
    put_id(out, id);
    put_size(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn put_uint(out: &mut Vec<u8>, id: u32, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    put_bytes(out, id, &bytes[skip..]);
}

fn put_float(out: &mut Vec<u8>, id: u32, v: f64) {
    put_bytes(out, id, &v.to_be_bytes());
}

fn master(id: u32, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::new();
    fill(&mut body);
    let mut out = Vec::with_capacity(body.len() + 12);
    put_bytes(&mut out, id, &body);
    out
}

/// The Opus identification header (RFC 7845, 5.1), the Opus track's CodecPrivate.
pub fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(channels);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

/// Writes a WebM file piece by piece.
#[derive(Debug)]
pub struct WebmWriter {
    out: Vec<u8>,
    cluster_ms: Option<u64>,
    last_ms: [Option<u64>; 2],
    blocks: u64,
}

impl WebmWriter {
    /// A writer whose first piece is the header without a duration.
    pub fn new(tracks: Tracks) -> WebmWriter {
        WebmWriter {
            out: Self::header(tracks, None),
            cluster_ms: None,
            last_ms: [None; 2],
            blocks: 0,
        }
    }

    /// The EBML header, the Segment's start (unknown size), Info (with the duration in ms, when
    /// known) and Tracks.
    pub fn header(tracks: Tracks, duration_ms: Option<f64>) -> Vec<u8> {
        let mut out = master(id::EBML, |b| {
            put_uint(b, id::EBML_VERSION, 1);
            put_uint(b, id::EBML_READ_VERSION, 1);
            put_uint(b, id::EBML_MAX_ID_LENGTH, 4);
            put_uint(b, id::EBML_MAX_SIZE_LENGTH, 8);
            put_bytes(b, id::DOC_TYPE, b"webm");
            put_uint(b, id::DOC_TYPE_VERSION, 4);
            put_uint(b, id::DOC_TYPE_READ_VERSION, 2);
        });
        put_id(&mut out, id::SEGMENT);
        put_unknown_size(&mut out);
        out.extend(master(id::INFO, |b| {
            put_uint(b, id::TIMESTAMP_SCALE, 1_000_000);
            put_bytes(b, id::MUXING_APP, b"relay");
            put_bytes(b, id::WRITING_APP, b"relay");
            if let Some(d) = duration_ms {
                put_float(b, id::DURATION, d);
            }
        }));
        let pre_skip_ns = u64::from(tracks.pre_skip) * 1_000_000_000 / 48_000;
        out.extend(master(id::TRACKS, |b| {
            b.extend(master(id::TRACK_ENTRY, |t| {
                put_uint(t, id::TRACK_NUMBER, u64::from(VIDEO_TRACK));
                put_uint(t, id::TRACK_UID, u64::from(VIDEO_TRACK));
                put_uint(t, id::TRACK_TYPE, 1);
                put_bytes(t, id::CODEC_ID, b"V_VP8");
                // The video's frame rate varies (it follows speakers and screen shares): see
                // VIDEO_SPACING_MS for why it declares this one.
                put_uint(t, id::DEFAULT_DURATION, VIDEO_DEFAULT_DURATION_NS);
                t.extend(master(id::VIDEO, |v| {
                    put_uint(v, id::PIXEL_WIDTH, u64::from(tracks.width));
                    put_uint(v, id::PIXEL_HEIGHT, u64::from(tracks.height));
                }));
            }));
            b.extend(master(id::TRACK_ENTRY, |t| {
                put_uint(t, id::TRACK_NUMBER, u64::from(AUDIO_TRACK));
                put_uint(t, id::TRACK_UID, u64::from(AUDIO_TRACK));
                put_uint(t, id::TRACK_TYPE, 2);
                put_bytes(t, id::CODEC_ID, b"A_OPUS");
                put_bytes(
                    t,
                    id::CODEC_PRIVATE,
                    &opus_head(tracks.channels, tracks.pre_skip),
                );
                put_uint(t, id::CODEC_DELAY, pre_skip_ns);
                put_uint(t, id::SEEK_PRE_ROLL, SEEK_PRE_ROLL_NS);
                t.extend(master(id::AUDIO, |a| {
                    put_float(a, id::SAMPLING_FREQUENCY, 48_000.0);
                    put_uint(a, id::CHANNELS, u64::from(tracks.channels));
                }));
            }));
        }));
        out
    }

    /// A VP8 frame at `ms`.
    pub fn video(&mut self, ms: u64, keyframe: bool, frame: &[u8]) {
        self.block(VIDEO_TRACK, ms, keyframe, frame);
    }

    /// An Opus packet at `ms`.
    pub fn audio(&mut self, ms: u64, packet: &[u8]) {
        self.block(AUDIO_TRACK, ms, true, packet);
    }

    /// The time a video frame of time `ms` is written at now (see [`WebmWriter::block`]).
    pub fn video_ms(&self, ms: u64) -> u64 {
        self.placed(VIDEO_TRACK, ms)
    }

    /// Always forward within the track (a player refuses two blocks of one time), and never
    /// before the cluster (a block of one track that arrives after the other track started a
    /// cluster is clamped to it).
    fn placed(&self, track: u8, ms: u64) -> u64 {
        let slot = usize::from(track == AUDIO_TRACK);
        let spacing = if track == VIDEO_TRACK {
            VIDEO_SPACING_MS
        } else {
            1
        };
        match self.last_ms[slot] {
            Some(last) => ms.max(last + spacing),
            None => ms,
        }
        .max(self.cluster_ms.unwrap_or(0))
    }

    fn block(&mut self, track: u8, ms: u64, keyframe: bool, data: &[u8]) {
        let slot = usize::from(track == AUDIO_TRACK);
        let ms = self.placed(track, ms);
        self.last_ms[slot] = Some(ms);
        let start_new = match self.cluster_ms {
            None => true,
            Some(c) => (track == VIDEO_TRACK && keyframe && ms > c) || ms - c > MAX_OFFSET_MS,
        };
        if start_new {
            put_id(&mut self.out, id::CLUSTER);
            put_unknown_size(&mut self.out);
            put_uint(&mut self.out, id::TIMESTAMP, ms);
            self.cluster_ms = Some(ms);
        }
        let offset = ms - self.cluster_ms.unwrap_or(ms);
        put_id(&mut self.out, id::SIMPLE_BLOCK);
        put_size(&mut self.out, data.len() as u64 + 4);
        self.out.push(0x80 | track);
        self.out.extend_from_slice(&(offset as i16).to_be_bytes());
        self.out.push(if keyframe { 0x80 } else { 0 });
        self.out.extend_from_slice(data);
        self.blocks += 1;
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Blocks written.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
}

/// `header` (as [`WebmWriter::header`] made it, or a copy read back from the store) with the
/// duration set to `ms`: what closes a recording cut short, whose tracks are known only from
/// its header. `None` if `header` is not such a header.
pub fn with_duration(header: &[u8], ms: f64) -> Option<Vec<u8>> {
    let (id::EBML, il) = read_id(header, 0)? else {
        return None;
    };
    let (Some(n), sl) = read_size(header, il)? else {
        return None;
    };
    let mut at = il + sl + usize::try_from(n).ok()?;
    let (id::SEGMENT, l) = read_id(header, at)? else {
        return None;
    };
    let (None, sl) = read_size(header, at + l)? else {
        return None;
    };
    at += l + sl;
    let (id::INFO, il) = read_id(header, at)? else {
        return None;
    };
    let (Some(n), sl) = read_size(header, at + il)? else {
        return None;
    };
    let body_at = at + il + sl;
    let end = body_at.checked_add(usize::try_from(n).ok()?)?;
    let body = header.get(body_at..end)?;
    let mut kept = Vec::with_capacity(body.len() + 11);
    let mut c = 0;
    while c < body.len() {
        let (cid, cl) = read_id(body, c)?;
        let (Some(cn), csl) = read_size(body, c + cl)? else {
            return None;
        };
        let cend = (c + cl + csl).checked_add(usize::try_from(cn).ok()?)?;
        if cid != id::DURATION {
            kept.extend_from_slice(body.get(c..cend)?);
        }
        c = cend;
    }
    put_float(&mut kept, id::DURATION, ms);
    let mut out = header[..at].to_vec();
    put_bytes(&mut out, id::INFO, &kept);
    out.extend_from_slice(&header[end..]);
    Some(out)
}

/// Reads an EBML id at `at`: (id, its length).
fn read_id(b: &[u8], at: usize) -> Option<(u32, usize)> {
    let first = *b.get(at)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return None;
    }
    let bytes = b.get(at..at + len)?;
    Some((
        bytes.iter().fold(0u32, |a, x| (a << 8) | u32::from(*x)),
        len,
    ))
}

/// Reads an EBML size at `at`: (size, its length); `None` size for "unknown".
fn read_size(b: &[u8], at: usize) -> Option<(Option<u64>, usize)> {
    let first = *b.get(at)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let bytes = b.get(at..at + len)?;
    let mut v = u64::from(first) & ((1u64 << (8 - len)) - 1);
    for x in &bytes[1..] {
        v = (v << 8) | u64::from(*x);
    }
    let all_ones = (1u64 << (7 * len)) - 1;
    Some(((v != all_ones).then_some(v), len))
}

/// What of a WebM file this writer made is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Whole {
    /// Bytes up to the end of the last complete element at the Segment's and the Clusters'
    /// level: a file cut there plays to its last complete block; 0 if not even the header is
    /// whole.
    pub len: usize,
    /// Where the header ends (Tracks included).
    pub header_len: usize,
    /// The timestamp of the last complete block, in ms.
    pub last_ms: Option<u64>,
}

/// How much of a WebM file is whole; see [`Whole`].
pub fn playable_len(b: &[u8]) -> usize {
    scan(b).len
}

/// Reads a file this writer made (or what is left of one) and says what of it is whole.
pub fn scan(b: &[u8]) -> Whole {
    walk(b, |_, _| {})
}

/// What [`scan`] does, telling `each_block` every whole block's track and time (ms) in order.
pub(crate) fn walk(b: &[u8], mut each_block: impl FnMut(u8, u64)) -> Whole {
    let mut w = Whole::default();
    // The EBML header.
    let Some((id::EBML, il)) = read_id(b, 0) else {
        return w;
    };
    let Some((Some(n), sl)) = read_size(b, il) else {
        return w;
    };
    let mut at = il + sl + n as usize;
    // The Segment: its children follow, and a Cluster's children follow it in turn.
    match read_id(b, at) {
        Some((id::SEGMENT, l)) => match read_size(b, at + l) {
            Some((None, sl)) => at += l + sl,
            _ => return w,
        },
        _ => return w,
    }
    let mut cluster_ms = 0u64;
    while let Some((eid, il)) = read_id(b, at) {
        let Some((size, sl)) = read_size(b, at + il) else {
            break;
        };
        match (eid, size) {
            // Entering a Cluster of unknown size: its Timestamp and blocks come next.
            (id::CLUSTER, None) => at += il + sl,
            (_, Some(n)) => {
                let body = at + il + sl;
                let Some(end) = body.checked_add(n as usize).filter(|e| *e <= b.len()) else {
                    break;
                };
                let data = &b[body..end];
                match eid {
                    id::TRACKS => w.header_len = end,
                    id::TIMESTAMP => {
                        cluster_ms = data.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
                    }
                    id::SIMPLE_BLOCK => {
                        // Track number (a one-byte vint here), then the 16-bit offset.
                        if let (Some(track), Some(off)) = (data.first(), data.get(1..3)) {
                            let off = i16::from_be_bytes([off[0], off[1]]);
                            let ms = cluster_ms.saturating_add_signed(i64::from(off));
                            w.last_ms = Some(ms);
                            each_block(track & 0x7F, ms);
                        }
                    }
                    _ => {}
                }
                at = end;
                if w.header_len > 0 {
                    w.len = at;
                }
            }
            _ => break,
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Tracks = Tracks {
        width: 320,
        height: 240,
        channels: 2,
        pre_skip: 312,
    };

    #[test]
    fn a_duration_is_set_in_a_header_read_back() {
        let plain = WebmWriter::header(T, None);
        let timed = WebmWriter::header(T, Some(1234.0));
        assert_eq!(with_duration(&plain, 1234.0), Some(timed.clone()));
        assert_eq!(
            with_duration(&timed, 99.0),
            Some(WebmWriter::header(T, Some(99.0)))
        );
        // Cut inside Info.
        assert_eq!(with_duration(&plain[..56], 1.0), None);
        assert_eq!(with_duration(b"not a header", 1.0), None);
    }

    #[test]
    fn video_in_a_burst_is_spread_to_the_declared_rate_and_audio_only_rises() {
        let mut w = WebmWriter::new(T);
        let header = w.take();
        for (i, ms) in [100, 100, 101, 200].into_iter().enumerate() {
            w.video(ms, i == 0, b"v");
        }
        w.audio(300, b"a");
        w.audio(300, b"b");
        let body = w.take();
        // Each SimpleBlock (0xA3, a one-byte size, the track, a 16-bit offset from the
        // cluster at 100): video 0, 5, 10, 100; audio 200, 201.
        let offsets: Vec<i16> = body
            .windows(3)
            .enumerate()
            .filter(|(_, x)| x[0] == 0xA3 && x[2] & 0x80 != 0)
            .map(|(i, _)| i16::from_be_bytes([body[i + 3], body[i + 4]]))
            .collect();
        assert_eq!(offsets, [0, 5, 10, 100, 200, 201]);
        let mut file = header;
        file.extend(body);
        assert_eq!(scan(&file).last_ms, Some(301));
    }

    #[test]
    fn sizes_take_the_fewest_bytes_and_avoid_all_ones() {
        let enc = |n| {
            let mut v = Vec::new();
            put_size(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0x80]);
        assert_eq!(enc(126), [0xFE]);
        assert_eq!(enc(127), [0x40, 0x7F], "0xFF would read as unknown");
        assert_eq!(enc(300), [0x41, 0x2C]);
        for n in [0, 1, 126, 127, 128, 16_382, 16_383, 1 << 30, 1 << 50] {
            assert_eq!(read_size(&enc(n), 0), Some((Some(n), enc(n).len())));
        }
        let mut u = Vec::new();
        put_unknown_size(&mut u);
        assert_eq!(read_size(&u, 0), Some((None, 8)));
    }

    #[test]
    fn clusters_start_at_keyframes_and_before_the_offset_overflows() {
        let mut w = WebmWriter::new(T);
        let header = w.take();
        assert_eq!(playable_len(&header), header.len());
        w.video(0, true, b"key");
        w.audio(10, b"a");
        w.video(33, false, b"delta");
        w.video(40_000, false, b"late");
        w.video(40_033, true, b"key2");
        let body = w.take();
        let count = |needle: &[u8]| body.windows(needle.len()).filter(|x| *x == needle).count();
        assert_eq!(count(&[0x1F, 0x43, 0xB6, 0x75]), 3, "three clusters");
        assert_eq!(w.blocks(), 5);
        let mut file = header.clone();
        file.extend_from_slice(&body);
        assert_eq!(playable_len(&file), file.len());
        // Cut inside the last block: the file is whole up to the block before it.
        let cut = &file[..file.len() - 2];
        let whole = playable_len(cut);
        assert!(whole < cut.len() && whole > header.len());
        assert_eq!(playable_len(&file[..whole]), whole);
        let s = scan(&file);
        assert_eq!((s.header_len, s.last_ms), (header.len(), Some(40_033)));
        assert_eq!(scan(&file[..whole]).last_ms, Some(40_000));
    }

    #[test]
    fn a_late_block_is_clamped_not_sent_back_in_time() {
        let mut w = WebmWriter::new(T);
        w.take();
        w.audio(100, b"a");
        w.audio(90, b"b");
        let body = w.take();
        // Both blocks in the one cluster, the late one a millisecond after the first: a track
        // never has two blocks of one time.
        let blocks: Vec<usize> = body
            .windows(2)
            .enumerate()
            .filter(|(_, x)| x == &[0xA3, 0x85])
            .map(|(i, _)| i)
            .collect();
        assert_eq!(blocks.len(), 2);
        assert_eq!(&body[blocks[0] + 3..blocks[0] + 5], &[0, 0]);
        assert_eq!(&body[blocks[1] + 3..blocks[1] + 5], &[0, 1]);
    }

    #[test]
    fn damaged_input_never_reads_as_whole() {
        assert_eq!(playable_len(b""), 0);
        assert_eq!(playable_len(b"\x1A\x45\xDF\xA3\xFF"), 0);
        let h = WebmWriter::header(T, Some(1500.0));
        assert_eq!(playable_len(&h[..h.len() - 1]), 0);
    }
}
