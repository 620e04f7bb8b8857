//! The audio of a recording: every publisher's Opus decoded (libopus), mixed into one mono
//! stream at 48 kHz, and encoded again in 20 ms frames.
//!
//! Each voice is placed on the recording's timeline by its RTP timestamps, anchored at the
//! arrival of its first packet (and anchored again when its timestamps and the clock part by
//! more than [`REANCHOR_MS`]: a publisher that paused, or restarted). A gap of up to
//! [`CONCEAL_MS`] in a voice is concealed by the decoder; a longer one stays silent. A packet
//! for a stretch already mixed, or older than what the voice's decoder has passed, is dropped:
//! the timeline only runs forward, and the output is one frame every 20 ms from the start,
//! silent where nobody spoke.
//!
//! The caller decides how far behind the newest arrival to mix ([`Mixer::mix_until`]), which
//! is the jitter a voice may have without losing packets.

use std::collections::{HashMap, VecDeque};

use opus::{Application, Bitrate, Channels, Decoder, Encoder};

/// Samples per second of everything here.
pub const RATE: u64 = 48_000;
/// Samples per output frame (20 ms).
pub const FRAME: usize = 960;
/// A voice whose timestamps and arrival part by more than this is anchored again.
pub const REANCHOR_MS: u64 = 1_000;
/// The longest gap in a voice the decoder conceals; beyond it, silence.
pub const CONCEAL_MS: u64 = 120;
/// The most one packet may carry (120 ms, Opus's longest).
const MAX_PACKET_SAMPLES: usize = 5_760;
/// How far ahead of the last mixed frame a voice may write: ten seconds.
const MAX_AHEAD: usize = 10 * RATE as usize;
/// A voice silent this long (its publisher left) gives up its decoder.
const FORGET_AFTER: u64 = 10 * RATE;
/// The mix's bitrate.
const BITRATE: i32 = 48_000;

#[derive(Debug, thiserror::Error)]
#[error("opus: {0}")]
pub struct MixError(#[from] opus::Error);

struct Voice {
    decoder: Decoder,
    /// An RTP timestamp and its sample position on the timeline.
    anchor: Option<(u32, u64)>,
    /// The sample position after the last one decoded.
    next: u64,
}

/// A recording's audio mix; see the module documentation.
pub struct Mixer {
    encoder: Encoder,
    pre_skip: u16,
    voices: HashMap<u64, Voice>,
    /// Mixed samples not yet encoded; `pending[0]` is at sample position `base`.
    pending: VecDeque<f32>,
    base: u64,
    scratch: Vec<f32>,
    dropped: u64,
}

impl std::fmt::Debug for Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mixer")
            .field("voices", &self.voices.len())
            .field("base", &self.base)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Mixer {
    pub fn new() -> Result<Mixer, MixError> {
        let mut encoder = Encoder::new(RATE as u32, Channels::Mono, Application::Audio)?;
        encoder.set_bitrate(Bitrate::Bits(BITRATE))?;
        let pre_skip = u16::try_from(encoder.get_lookahead()?).unwrap_or(0);
        Ok(Mixer {
            encoder,
            pre_skip,
            voices: HashMap::new(),
            pending: VecDeque::new(),
            base: 0,
            scratch: vec![0.0; MAX_PACKET_SAMPLES],
            dropped: 0,
        })
    }

    /// Samples (48 kHz) a player drops at the start: the encoder's look-ahead.
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Packets dropped so far (late, reordered, undecodable).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Voices with a decoder now.
    pub fn voices(&self) -> usize {
        self.voices.len()
    }

    /// The stretch mixed and encoded so far, in ms.
    pub fn mixed_ms(&self) -> u64 {
        self.base * 1_000 / RATE
    }

    /// A packet of voice `voice` (any id that stays the same for one publisher's track), which
    /// arrived `arrival_ms` into the recording.
    pub fn push(&mut self, voice: u64, arrival_ms: u64, rtp_ts: u32, payload: &[u8]) {
        let arrival = arrival_ms * RATE / 1_000;
        let v = match self.voices.entry(voice) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Ok(decoder) = Decoder::new(RATE as u32, Channels::Mono) else {
                    self.dropped += 1;
                    return;
                };
                e.insert(Voice {
                    decoder,
                    anchor: None,
                    next: 0,
                })
            }
        };
        let mut pos = match v.anchor {
            Some((ts, at)) => {
                let delta = i64::from(rtp_ts.wrapping_sub(ts) as i32);
                at.saturating_add_signed(delta)
            }
            None => arrival,
        };
        if v.anchor.is_none() || pos.abs_diff(arrival) > REANCHOR_MS * RATE / 1_000 {
            pos = arrival;
            v.anchor = Some((rtp_ts, arrival));
            v.next = v.next.min(arrival);
        }
        if v.next > 0 && pos < v.next {
            // A duplicate or a packet overtaken by a later one: its decoder has moved on.
            self.dropped += 1;
            return;
        }
        // A short gap since the voice's last packet: let the decoder conceal it.
        let gap = (pos - v.next) as usize;
        if v.next > 0 && gap >= FRAME / 2 && gap as u64 <= CONCEAL_MS * RATE / 1_000 {
            // Opus conceals in steps of 2.5 ms.
            let n = gap / 120 * 120;
            match v.decoder.decode_float(&[], &mut self.scratch[..n], false) {
                Ok(n) => {
                    add(&mut self.pending, self.base, v.next, &self.scratch[..n]);
                }
                Err(_) => self.dropped += 1,
            }
        }
        match v.decoder.decode_float(payload, &mut self.scratch, false) {
            Ok(n) => {
                v.next = pos + n as u64;
                if !add(&mut self.pending, self.base, pos, &self.scratch[..n]) {
                    self.dropped += 1;
                }
            }
            Err(_) => self.dropped += 1,
        }
    }

    /// Encodes every 20 ms frame that ends by `until_ms`: (its start in ms, the Opus packet).
    pub fn mix_until(&mut self, until_ms: u64) -> Vec<(u64, Vec<u8>)> {
        let until = until_ms * RATE / 1_000;
        let mut out = Vec::new();
        let mut frame = [0f32; FRAME];
        let mut packet = [0u8; 1_500];
        let base = self.base;
        self.voices
            .retain(|_, v| v.next.saturating_add(FORGET_AFTER) > base);
        while self.base + FRAME as u64 <= until {
            for (i, s) in frame.iter_mut().enumerate() {
                *s = self.pending.get(i).copied().unwrap_or(0.0).clamp(-1.0, 1.0);
            }
            let take = self.pending.len().min(FRAME);
            self.pending.drain(..take);
            let ms = self.base * 1_000 / RATE;
            self.base += FRAME as u64;
            match self.encoder.encode_float(&frame, &mut packet) {
                Ok(n) => out.push((ms, packet[..n].to_vec())),
                Err(_) => self.dropped += 1,
            }
        }
        out
    }
}

/// Adds `samples` at position `at` into the mix that starts at `base`; what falls before
/// `base` is gone (false when nothing could be added).
fn add(pending: &mut VecDeque<f32>, base: u64, at: u64, samples: &[f32]) -> bool {
    let skip = base.saturating_sub(at) as usize;
    if skip >= samples.len() {
        return false;
    }
    let start = (at.max(base) - base) as usize;
    let end = start + samples.len() - skip;
    if end > MAX_AHEAD {
        return false;
    }
    if pending.len() < end {
        pending.resize(end, 0.0);
    }
    for (i, s) in samples[skip..].iter().enumerate() {
        pending[start + i] += s;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, frames: usize, start: usize) -> Vec<Vec<u8>> {
        let mut enc = Encoder::new(48_000, Channels::Mono, Application::Voip).unwrap();
        (0..frames)
            .map(|f| {
                let pcm: Vec<f32> = (0..FRAME)
                    .map(|i| {
                        let t = ((start + f) * FRAME + i) as f32 / 48_000.0;
                        0.3 * (2.0 * std::f32::consts::PI * freq * t).sin()
                    })
                    .collect();
                enc.encode_vec_float(&pcm, 1_500).unwrap()
            })
            .collect()
    }

    /// The decoded mix: (rms of each 20 ms frame).
    fn levels(packets: &[(u64, Vec<u8>)]) -> Vec<f32> {
        let mut dec = Decoder::new(48_000, Channels::Mono).unwrap();
        let mut pcm = vec![0f32; FRAME];
        packets
            .iter()
            .map(|(_, p)| {
                let n = dec.decode_float(p, &mut pcm, false).unwrap();
                (pcm[..n].iter().map(|s| s * s).sum::<f32>() / n as f32).sqrt()
            })
            .collect()
    }

    #[test]
    fn two_voices_mix_into_one_frame_every_20_ms_silent_where_nobody_speaks() {
        let mut m = Mixer::new().unwrap();
        assert!(m.pre_skip() > 0);
        // Voice 1 speaks for the first second, voice 2 from 0.5 s to 1.5 s, with unrelated
        // RTP timestamps and 0 to 7 ms of jitter.
        for (i, p) in tone(440.0, 50, 0).iter().enumerate() {
            m.push(1, i as u64 * 20 + (i as u64 % 8), 1_000 + i as u32 * 960, p);
        }
        for (i, p) in tone(660.0, 50, 0).iter().enumerate() {
            m.push(
                2,
                500 + i as u64 * 20 + (i as u64 * 3 % 5),
                (u32::MAX - 5_000).wrapping_add(i as u32 * 960),
                p,
            );
        }
        let out = m.mix_until(2_000);
        assert_eq!(out.len(), 100);
        assert!(out.windows(2).all(|w| w[1].0 == w[0].0 + 20));
        let lv = levels(&out);
        // Speech in both halves of the first 1.5 s, silence in the last 0.4 s.
        assert!(lv[5..45].iter().all(|l| *l > 0.1), "{lv:?}");
        assert!(lv[30..70].iter().all(|l| *l > 0.1), "{lv:?}");
        assert!(lv[80..].iter().all(|l| *l < 0.01), "{lv:?}");
        assert_eq!(m.dropped(), 0);
        assert_eq!(m.mixed_ms(), 2_000);
    }

    #[test]
    fn late_duplicate_and_broken_packets_are_dropped_and_the_timeline_runs_on() {
        let mut m = Mixer::new().unwrap();
        let p = tone(440.0, 60, 0);
        for (i, pk) in p.iter().enumerate().take(20) {
            m.push(1, i as u64 * 20, i as u32 * 960, pk);
        }
        // A duplicate, then garbage.
        m.push(1, 390, 19 * 960, &p[19]);
        m.push(1, 400, 20 * 960, &[0xff; 3]);
        let first = m.mix_until(400);
        assert_eq!(first.len(), 20);
        // A packet for a stretch already mixed is dropped.
        m.push(1, 410, 5 * 960, &p[5]);
        // After a 2 s pause the voice comes back with its timestamps as if never paused:
        // the clock wins, the voice is anchored again.
        for (i, pk) in p.iter().enumerate().skip(21).take(20) {
            m.push(1, 2_000 + i as u64 * 20, i as u32 * 960, pk);
        }
        let rest = m.mix_until(3_000);
        assert_eq!(rest.len(), 130);
        let lv = levels(&rest);
        // Silent in the pause, speech again from 2.42 s (frame 101 of these).
        assert!(lv[5..100].iter().all(|l| *l < 0.01), "{lv:?}");
        assert!(lv[102..118].iter().all(|l| *l > 0.1), "{lv:?}");
        assert!(m.dropped() >= 3);
        // Ten seconds after its last packet, a voice's decoder goes.
        assert_eq!(m.voices(), 1);
        m.mix_until(14_000);
        m.mix_until(14_100);
        assert_eq!(m.voices(), 0);
    }

    #[test]
    fn a_short_gap_is_concealed() {
        let mut m = Mixer::new().unwrap();
        let p = tone(440.0, 30, 0);
        for (i, pk) in p.iter().enumerate() {
            if i == 10 || i == 11 {
                continue;
            }
            m.push(1, i as u64 * 20, i as u32 * 960, pk);
        }
        let lv = levels(&m.mix_until(600));
        // The 40 ms hole is filled, not silent.
        assert!(lv[10] > 0.02 && lv[11] > 0.02, "{lv:?}");
    }
}
