//! Per-slot RTP rewriting: one continuous outgoing stream out of many incoming ones.
//!
//! Job: a subscriber's slot is fed by different publishers and layers over time, each with its
//! own SSRC, sequence-number space and timestamp base. The slot's outgoing stream has one fixed
//! SSRC (owned by the subscriber's `Rtc`), so sequence numbers and timestamps must continue
//! across a switch as if one encoder had produced everything.
//!
//! Invariants:
//! - outgoing sequence numbers of one source are the incoming ones plus a fixed offset, so
//!   reordering and gaps pass through unchanged (the receiver's NACKs still line up);
//! - after a switch the new source continues just after the highest sequence number sent so
//!   far, and its timestamps continue from the last sent timestamp plus the wall-clock time that
//!   passed, so the receiver's jitter buffer sees neither a jump nor a step back;
//! - packets of the current source older than its first forwarded packet are dropped: their
//!   rewritten numbers would collide with the previous source's.
//!
//! Sequence numbers are extended (64-bit, no wrap) as str0m gives and takes them.

use std::time::Instant;

/// What feeds the slot now: the incoming stream's SSRC.
type SourceSsrc = u32;

/// Rewrites one slot's packets. Plain data, no allocation.
#[derive(Debug, Clone)]
pub struct Rewriter {
    /// The incoming stream currently mapped, if any packet was forwarded yet.
    source: Option<SourceSsrc>,
    /// Added to an incoming extended sequence number to get the outgoing one.
    seq_offset: i64,
    /// Added (wrapping) to an incoming timestamp to get the outgoing one.
    ts_offset: u32,
    /// Incoming sequence number of the current source's first forwarded packet.
    first_in_seq: u64,
    /// Highest outgoing sequence number so far (`next_seq - 1`).
    max_out_seq: u64,
    /// The outgoing timestamp of the packet with `max_out_seq`, and when it was sent.
    last_out_ts: u32,
    last_out_at: Option<Instant>,
}

/// A rewritten packet's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended outgoing sequence number.
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub ts: u32,
    /// True if this packet is the first of a new source (the slot just switched).
    pub switched: bool,
}

impl Rewriter {
    /// A rewriter whose first packet goes out with sequence number `first_seq` (below 65 536,
    /// so no rollover counter needs signalling) and timestamp `first_ts`.
    pub fn new(first_seq: u16, first_ts: u32) -> Rewriter {
        Rewriter {
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            first_in_seq: 0,
            // The first packet goes out as max_out_seq + 1.
            max_out_seq: u64::from(first_seq).wrapping_sub(1),
            last_out_ts: first_ts,
            last_out_at: None,
        }
    }

    /// The SSRC of the incoming stream currently mapped.
    pub fn source(&self) -> Option<u32> {
        self.source
    }

    /// Rewrite one incoming packet of `source` (`seq` extended, `ts` as on the wire, the
    /// codec's `clock_rate` in Hz). A packet of another source than the current one switches
    /// the slot to it. `None` means drop: the packet predates its source's switch point.
    pub fn rewrite(
        &mut self,
        source: u32,
        seq: u64,
        ts: u32,
        clock_rate: u32,
        now: Instant,
    ) -> Option<Rewritten> {
        let mut switched = false;
        if self.source != Some(source) {
            switched = true;
            let next_seq = self.max_out_seq.wrapping_add(1);
            // Sequence numbers fit in i64 by far: extended numbers grow by one per packet.
            self.seq_offset = next_seq as i64 - seq as i64;
            let gap = match self.last_out_at {
                // At least one tick, so the new source's first frame is a new frame.
                Some(at) => {
                    let ticks = now.saturating_duration_since(at).as_micros()
                        * u128::from(clock_rate)
                        / 1_000_000;
                    u32::try_from(ticks).unwrap_or(u32::MAX).max(1)
                }
                None => 0,
            };
            let start_ts = self.last_out_ts.wrapping_add(gap);
            self.ts_offset = start_ts.wrapping_sub(ts);
            self.first_in_seq = seq;
            self.source = Some(source);
        } else if seq < self.first_in_seq {
            return None;
        }
        let out_seq = (seq as i64 + self.seq_offset) as u64;
        let out_ts = ts.wrapping_add(self.ts_offset);
        if switched || out_seq > self.max_out_seq {
            self.max_out_seq = out_seq;
            self.last_out_ts = out_ts;
            self.last_out_at = Some(now);
        }
        Some(Rewritten {
            seq: out_seq,
            ts: out_ts,
            switched,
        })
    }

    /// Forget the current source: the next packet of any source starts a new segment.
    pub fn release(&mut self) {
        self.source = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn continuous_across_switches() {
        let t0 = Instant::now();
        let mut rw = Rewriter::new(1000, 5000);
        // Source A: seq 40_000.., ts step 3000 per frame (one packet per frame, 30 fps).
        let mut out = Vec::new();
        for i in 0..5u64 {
            let at = t0 + Duration::from_millis(33 * i);
            out.push(rw.rewrite(0xa, 40_000 + i, 100 + 3000 * i as u32, 90_000, at));
        }
        let first = out[0].expect("first packet forwarded");
        assert_eq!(first.seq, 1000);
        assert_eq!(first.ts, 5000);
        assert!(first.switched);
        for (i, r) in out.iter().enumerate() {
            let r = r.expect("forwarded");
            assert_eq!(r.seq, 1000 + i as u64);
            assert_eq!(r.ts, 5000 + 3000 * i as u32);
        }
        // Switch to B, whose numbers are unrelated (timestamp near wrap), 40 ms later.
        let at = t0 + Duration::from_millis(33 * 4 + 40);
        let b0 = rw
            .rewrite(0xb, 7, u32::MAX - 10, 90_000, at)
            .expect("forwarded");
        assert!(b0.switched);
        assert_eq!(b0.seq, 1005, "continues right after the last sent");
        assert_eq!(
            b0.ts,
            5000 + 3000 * 4 + 40 * 90,
            "last ts plus elapsed time"
        );
        // B's following packets keep their own spacing, across its timestamp wrap.
        let b1 = rw
            .rewrite(0xb, 8, (u32::MAX - 10).wrapping_add(3000), 90_000, at)
            .expect("forwarded");
        assert!(!b1.switched);
        assert_eq!(b1.seq, 1006);
        assert_eq!(b1.ts, b0.ts + 3000);
        // A reordered B packet passes through with its own offset.
        let b_late = rw.rewrite(0xb, 6, 1, 90_000, at);
        assert_eq!(b_late, None, "predates B's switch point");
        let b3 = rw.rewrite(0xb, 10, 2, 90_000, at).expect("forwarded");
        assert_eq!(b3.seq, 1008, "gap preserved");
        let b2 = rw.rewrite(0xb, 9, 1, 90_000, at).expect("forwarded");
        assert_eq!(b2.seq, 1007, "reordering preserved");
        // Back to A: continues after 1008, not after 1007.
        let a = rw
            .rewrite(0xa, 40_005, 100, 90_000, at + Duration::from_millis(1))
            .expect("forwarded");
        assert_eq!(a.seq, 1009);
        assert!(a.ts.wrapping_sub(b3.ts) >= 1, "timestamps move forward");
    }

    #[test]
    fn switch_at_same_instant_still_advances_timestamp() {
        let t0 = Instant::now();
        let mut rw = Rewriter::new(0, 0);
        let a = rw.rewrite(1, 10, 10, 48_000, t0).expect("forwarded");
        let b = rw.rewrite(2, 99, 77, 48_000, t0).expect("forwarded");
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.ts, a.ts + 1);
    }
}
