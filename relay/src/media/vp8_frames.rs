//! VP8 frames from RTP packets (RFC 7741), for a recording: the packets of one frame share a
//! timestamp, the first has S set on partition 0, the last carries the marker; the frame is the
//! payloads after their descriptors, in sequence order.
//!
//! Packets may come late or twice (a retransmission after a NACK), so a frame waits here for
//! its missing packets while up to [`PENDING`] later frames arrive (about 100 ms at 30 frames a
//! second), and the frames after it wait behind it. A frame that cannot be made whole is dropped, and since every later
//! delta frame refers to it, nothing more comes out until the next keyframe:
//! [`Vp8Frames::wants_keyframe`] says when to ask the publisher for one.

use crate::media::keyframe::vp8_descriptor;

/// Frames that wait for their missing packets at most.
const PENDING: usize = 3;

/// Packets one frame may have (a 4K keyframe is a few hundred).
const MAX_PACKETS: usize = 2048;

/// The size a VP8 keyframe (the frame's bytes, RFC 6386 9.1) announces; `None` for an
/// interframe or a frame cut short.
pub fn keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.first()? & 1 != 0 || frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([*frame.get(6)?, *frame.get(7)?]) & 0x3fff;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    (w > 0 && h > 0).then_some((u32::from(w), u32::from(h)))
}

/// A whole VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The RTP timestamp (90 kHz).
    pub ts: u32,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    ts: u32,
    /// (extended sequence number, starts the frame, ends it, the VP8 bytes).
    packets: Vec<(u64, bool, bool, Vec<u8>)>,
}

impl Pending {
    /// The frame, if its packets run from a start to the marker without a gap.
    fn whole(&self) -> Option<Frame> {
        let first = self.packets.iter().position(|p| p.1)?;
        let last = self.packets.iter().position(|p| p.2)?;
        if last < first {
            return None;
        }
        let run = &self.packets[first..=last];
        if run.windows(2).any(|w| w[1].0 != w[0].0 + 1) {
            return None;
        }
        let data: Vec<u8> = run.iter().flat_map(|p| p.3.iter().copied()).collect();
        Some(Frame {
            ts: self.ts,
            keyframe: data.first().is_some_and(|b| b & 0x01 == 0) && run[0].1,
            data,
        })
    }
}

/// Assembles the VP8 frames of one stream.
#[derive(Debug)]
pub struct Vp8Frames {
    pending: Vec<Pending>,
    /// The highest extended sequence number seen.
    top: Option<u64>,
    /// The timestamp of the last frame handed out (older packets are late).
    last_out: Option<u32>,
    need_key: bool,
    dropped: u64,
}

impl Default for Vp8Frames {
    fn default() -> Self {
        Vp8Frames {
            pending: Vec::new(),
            top: None,
            last_out: None,
            need_key: true,
            dropped: 0,
        }
    }
}

/// Is RTP timestamp `a` after `b` (modulo 2^32)?
fn after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

impl Vp8Frames {
    /// Takes one RTP packet; returns the frames it made whole, oldest first.
    pub fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<Frame> {
        let Some((head, starts)) = vp8_descriptor(payload) else {
            return Vec::new();
        };
        if self.last_out.is_some_and(|l| !after(ts, l)) {
            return Vec::new(); // late: its frame is out or given up
        }
        let ext = self.extend(seq);
        let at = match self.pending.iter().position(|p| p.ts == ts) {
            Some(i) => i,
            None => {
                self.pending.push(Pending {
                    ts,
                    packets: Vec::new(),
                });
                self.pending.sort_by(|a, b| {
                    if after(a.ts, b.ts) {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Less
                    }
                });
                self.pending
                    .iter()
                    .position(|p| p.ts == ts)
                    .unwrap_or_default()
            }
        };
        let p = &mut self.pending[at];
        let i = p.packets.partition_point(|x| x.0 < ext);
        let twice = p.packets.get(i).is_some_and(|x| x.0 == ext);
        if p.packets.len() < MAX_PACKETS && !twice {
            p.packets
                .insert(i, (ext, starts, marker, payload[head..].to_vec()));
        }
        self.release()
    }

    /// Hands out the oldest frames that are whole; gives up the oldest when too many wait.
    fn release(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(oldest) = self.pending.first() {
            if let Some(frame) = oldest.whole() {
                self.pending.remove(0);
                self.last_out = Some(frame.ts);
                if frame.keyframe {
                    self.need_key = false;
                }
                if !self.need_key {
                    out.push(frame);
                }
                continue;
            }
            // The oldest waits for a retransmission while a few frames come after it.
            if self.pending.len() > PENDING {
                let gone = self.pending.remove(0);
                self.last_out = Some(gone.ts);
                self.dropped += 1;
                self.need_key = true;
                continue;
            }
            break;
        }
        out
    }

    fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.top {
            None => u64::from(seq) + (1 << 16),
            Some(top) => {
                let base = top & !0xffff;
                let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
                candidates
                    .iter()
                    .map(|b| b + u64::from(seq))
                    .min_by_key(|c| c.abs_diff(top))
                    .unwrap_or(top)
            }
        };
        self.top = Some(self.top.map_or(ext, |t| t.max(ext)));
        ext
    }

    /// True while frames are held back for want of a keyframe (at the start, after a loss).
    pub fn wants_keyframe(&self) -> bool {
        self.need_key
    }

    /// Frames given up for a missing packet.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet's payload: the descriptor's first byte (S for a frame's first), then `body`.
    fn pkt(first: bool, body: &[u8]) -> Vec<u8> {
        let mut p = vec![if first { 0x10 } else { 0x00 }];
        p.extend_from_slice(body);
        p
    }

    /// A keyframe's first VP8 byte has P = 0; a delta frame's has P = 1.
    const KEY: u8 = 0x00;
    const DELTA: u8 = 0x01;

    #[test]
    fn a_frame_is_its_packets_in_order_from_start_to_marker() {
        let mut f = Vp8Frames::default();
        assert!(f.wants_keyframe());
        assert!(f.push(10, 900, false, &pkt(true, &[KEY, 1])).is_empty());
        assert!(f.push(11, 900, false, &pkt(false, &[2])).is_empty());
        let out = f.push(12, 900, true, &pkt(false, &[3]));
        assert_eq!(
            out,
            [Frame {
                ts: 900,
                keyframe: true,
                data: vec![KEY, 1, 2, 3]
            }]
        );
        assert!(!f.wants_keyframe());
        // Reordered and duplicated packets of the next frame.
        assert!(f.push(14, 3900, true, &pkt(false, &[5])).is_empty());
        assert!(f.push(14, 3900, true, &pkt(false, &[5])).is_empty());
        let out = f.push(13, 3900, false, &pkt(true, &[DELTA, 4]));
        assert_eq!(out[0].data, [DELTA, 4, 5]);
        assert!(!out[0].keyframe);
    }

    #[test]
    fn a_retransmission_in_time_repairs_the_frame() {
        let mut f = Vp8Frames::default();
        assert_eq!(f.push(1, 0, true, &pkt(true, &[KEY])).len(), 1);
        // The frame at 3000 misses its packet 3; the frame at 6000 is whole and waits behind.
        assert!(f.push(2, 3000, false, &pkt(true, &[DELTA])).is_empty());
        assert!(f.push(4, 6000, true, &pkt(true, &[DELTA])).is_empty());
        let out = f.push(3, 3000, true, &pkt(false, &[9]));
        assert_eq!(out.iter().map(|x| x.ts).collect::<Vec<_>>(), [3000, 6000]);
        assert_eq!(f.dropped(), 0);
    }

    #[test]
    fn a_lost_packet_holds_everything_back_until_the_next_keyframe() {
        let mut f = Vp8Frames::default();
        assert_eq!(f.push(1, 0, true, &pkt(true, &[KEY])).len(), 1);
        // The frame at 3000 loses its packet 3 for good.
        assert!(f.push(2, 3000, false, &pkt(true, &[DELTA])).is_empty());
        for (seq, ts) in [(4, 6000), (5, 9000), (6, 12_000)] {
            assert!(f.push(seq, ts, true, &pkt(true, &[DELTA])).is_empty());
        }
        assert_eq!(f.dropped(), 1);
        assert!(
            f.wants_keyframe(),
            "a delta frame after a lost one is not shown"
        );
        // Too late now.
        assert!(f.push(3, 3000, true, &pkt(false, &[9])).is_empty());
        let out = f.push(7, 15_000, true, &pkt(true, &[KEY]));
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe && !f.wants_keyframe());
    }

    #[test]
    fn sequence_numbers_and_timestamps_wrap() {
        let mut f = Vp8Frames::default();
        assert_eq!(
            f.push(65_535, u32::MAX - 100, true, &pkt(true, &[KEY]))
                .len(),
            1
        );
        assert!(f.push(0, 2000, false, &pkt(true, &[DELTA, 1])).is_empty());
        let out = f.push(1, 2000, true, &pkt(false, &[2]));
        assert_eq!(out.len(), 1, "across both wraps");
    }

    #[test]
    fn garbage_makes_no_frame() {
        let mut f = Vp8Frames::default();
        assert!(f.push(1, 0, true, &[]).is_empty());
        assert!(
            f.push(2, 0, true, &[0x80]).is_empty(),
            "descriptor cut short"
        );
        assert!(
            f.push(3, 0, true, &pkt(false, &[KEY])).is_empty(),
            "no start"
        );
    }
}
