//! Switch gating: a slot changes source or layer only on a keyframe of the new one.
//!
//! Job: when the allocator picks a new [`Feed`] for a slot, the slot keeps forwarding its current
//! feed until the first packet of a keyframe of the new feed arrives, then cuts over. Without
//! this the receiver would get inter frames it cannot decode (corrupt picture) or nothing
//! (freeze). The gate tells its owner when to request a keyframe and counts the switch.
//!
//! Invariants: at most one feed is forwarded at any time; a pending feed becomes current only
//! on a packet flagged as a keyframe start; sans-IO (time is a parameter).

use std::time::{Duration, Instant};

use super::allocate::Feed;

/// How long to wait for a requested keyframe before asking again.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(500);

/// One slot's gate.
#[derive(Debug, Clone, Default)]
pub struct SlotGate {
    current: Option<Feed>,
    pending: Option<Feed>,
    /// When the keyframe for `pending` was last requested.
    requested_at: Option<Instant>,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not for this slot (or not yet).
    Drop,
    /// Forward it.
    Forward,
    /// Forward it: it is the keyframe that completes a switch to its feed.
    ForwardSwitched,
}

impl SlotGate {
    /// The feed being forwarded now.
    pub fn current(&self) -> Option<Feed> {
        self.current
    }

    /// The feed waiting for its keyframe.
    pub fn pending(&self) -> Option<Feed> {
        self.pending
    }

    /// The allocator's choice for this slot. Returns the feed whose keyframe must be requested
    /// now, if any. `None` (nobody) takes effect at once: nothing to wait for.
    pub fn set_target(&mut self, target: Option<Feed>, now: Instant) -> Option<Feed> {
        match target {
            None => {
                self.current = None;
                self.pending = None;
                self.requested_at = None;
                None
            }
            Some(t) if Some(t) == self.current => {
                self.pending = None;
                self.requested_at = None;
                None
            }
            Some(t) if Some(t) == self.pending => None,
            Some(t) => {
                self.pending = Some(t);
                self.requested_at = Some(now);
                Some(t)
            }
        }
    }

    /// A pending feed whose keyframe has not come after [`KEYFRAME_RETRY`]: ask again.
    pub fn retry(&mut self, now: Instant) -> Option<Feed> {
        let pending = self.pending?;
        let at = self.requested_at?;
        if now.saturating_duration_since(at) >= KEYFRAME_RETRY {
            self.requested_at = Some(now);
            return Some(pending);
        }
        None
    }

    /// Stops forwarding the current feed while a switch waits for its keyframe: on a link that
    /// just proved too small, the old layer's packets would only fill the queue in front of the
    /// new layer's keyframe. The slot is dark until that keyframe, as it would freeze anyway.
    pub fn cut_over(&mut self) {
        if self.pending.is_some() {
            self.current = None;
        }
    }

    /// The track of this feed is gone: stop forwarding it now.
    pub fn forget_track(&mut self, track: u64) {
        if self.current.is_some_and(|f| f.track == track) {
            self.current = None;
        }
        if self.pending.is_some_and(|f| f.track == track) {
            self.pending = None;
            self.requested_at = None;
        }
    }

    /// A packet of `feed` arrived; `keyframe` if it starts a keyframe.
    pub fn on_packet(&mut self, feed: Feed, keyframe: bool) -> Verdict {
        if self.pending == Some(feed) && keyframe {
            self.current = Some(feed);
            self.pending = None;
            self.requested_at = None;
            return Verdict::ForwardSwitched;
        }
        if self.current == Some(feed) {
            return Verdict::Forward;
        }
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_HI: Feed = Feed { track: 1, layer: 0 };
    const A_LO: Feed = Feed { track: 1, layer: 2 };
    const B_LO: Feed = Feed { track: 2, layer: 2 };

    #[test]
    fn switch_waits_for_keyframe() {
        let t0 = Instant::now();
        let mut g = SlotGate::default();
        assert_eq!(g.set_target(Some(A_LO), t0), Some(A_LO));
        // Nothing flows until A_LO's keyframe.
        assert_eq!(g.on_packet(A_LO, false), Verdict::Drop);
        assert_eq!(g.on_packet(A_LO, true), Verdict::ForwardSwitched);
        assert_eq!(g.on_packet(A_LO, false), Verdict::Forward);
        // Layer up: old layer keeps flowing, new layer's delta frames are dropped.
        assert_eq!(g.set_target(Some(A_HI), t0), Some(A_HI));
        assert_eq!(g.set_target(Some(A_HI), t0), None, "no duplicate request");
        assert_eq!(g.on_packet(A_HI, false), Verdict::Drop);
        assert_eq!(g.on_packet(A_LO, false), Verdict::Forward);
        assert_eq!(
            g.on_packet(A_LO, true),
            Verdict::Forward,
            "old layer's keyframe"
        );
        assert_eq!(g.on_packet(A_HI, true), Verdict::ForwardSwitched);
        assert_eq!(g.on_packet(A_LO, false), Verdict::Drop);
        assert_eq!(g.on_packet(A_HI, false), Verdict::Forward);
        assert_eq!(g.current(), Some(A_HI));
    }

    #[test]
    fn a_cut_over_stops_the_old_layer_before_the_new_keyframe() {
        let t0 = Instant::now();
        let mut g = SlotGate::default();
        g.set_target(Some(A_HI), t0);
        assert_eq!(g.on_packet(A_HI, true), Verdict::ForwardSwitched);
        // Without a switch waiting, a cut-over changes nothing.
        g.cut_over();
        assert_eq!(g.on_packet(A_HI, false), Verdict::Forward);
        g.set_target(Some(A_LO), t0);
        g.cut_over();
        assert_eq!(g.on_packet(A_HI, false), Verdict::Drop);
        assert_eq!(g.on_packet(A_LO, false), Verdict::Drop);
        assert_eq!(g.pending(), Some(A_LO));
        assert_eq!(g.on_packet(A_LO, true), Verdict::ForwardSwitched);
        assert_eq!(g.on_packet(A_LO, false), Verdict::Forward);
    }

    #[test]
    fn back_to_current_cancels_pending() {
        let t0 = Instant::now();
        let mut g = SlotGate::default();
        g.set_target(Some(A_LO), t0);
        g.on_packet(A_LO, true);
        g.set_target(Some(B_LO), t0);
        assert_eq!(g.set_target(Some(A_LO), t0), None);
        assert_eq!(g.pending(), None);
        assert_eq!(g.on_packet(B_LO, true), Verdict::Drop);
    }

    #[test]
    fn retry_and_forget() {
        let t0 = Instant::now();
        let mut g = SlotGate::default();
        g.set_target(Some(A_LO), t0);
        g.on_packet(A_LO, true);
        g.set_target(Some(B_LO), t0);
        assert_eq!(g.retry(t0 + Duration::from_millis(100)), None);
        assert_eq!(g.retry(t0 + KEYFRAME_RETRY), Some(B_LO));
        assert_eq!(g.retry(t0 + KEYFRAME_RETRY), None);
        // A leaves: the slot goes quiet until B's keyframe.
        g.forget_track(1);
        assert_eq!(g.on_packet(A_LO, false), Verdict::Drop);
        assert_eq!(g.on_packet(B_LO, true), Verdict::ForwardSwitched);
        // Nobody: stop at once.
        g.set_target(None, t0);
        assert_eq!(g.on_packet(B_LO, false), Verdict::Drop);
    }
}
