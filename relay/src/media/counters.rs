//! Plain per-worker counters, summed at scrape time.
//!
//! Job: the packet path counts into [`WorkerCounters`], whose fields are atomics written by
//! exactly one thread (the worker's loop) and read by the metrics scrape. Because there is a
//! single writer, an increment is a relaxed load plus a relaxed store: no locked read-modify-
//! write, no registry, no lock on the packet path. [`MediaCounters`] is the summed snapshot the
//! control plane publishes in Prometheus format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a packet or datagram was dropped; the label values of
/// `relay_media_packets_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// A datagram from an address no session owns, that is not a STUN request for one.
    UnknownSource = 0,
    /// A datagram or packet the WebRTC stack could not parse or authenticate.
    Malformed = 1,
    /// The subscriber did not negotiate the publisher's codec.
    CodecMismatch = 2,
    /// The socket refused the datagram (buffer full or error).
    SendFailed = 3,
    /// A late packet of a source from before the slot switched to it.
    Stale = 4,
}

impl DropReason {
    /// All reasons, in label order.
    pub const ALL: [DropReason; 5] = [
        DropReason::UnknownSource,
        DropReason::Malformed,
        DropReason::CodecMismatch,
        DropReason::SendFailed,
        DropReason::Stale,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::Malformed => "malformed",
            DropReason::CodecMismatch => "codec_mismatch",
            DropReason::SendFailed => "send_failed",
            DropReason::Stale => "stale",
        }
    }
}

/// Upper bounds (seconds) of the forward-delay histogram buckets; `+Inf` is implied.
pub const FORWARD_DELAY_BOUNDS: [f64; 10] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];

const BUCKETS: usize = FORWARD_DELAY_BOUNDS.len() + 1;

/// One worker's counters. Written only by the worker thread.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    pub rooms: AtomicU64,
    pub publishers: AtomicU64,
    pub subscribers: AtomicU64,
    pub packets_received: AtomicU64,
    pub packets_forwarded: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    pub layer_switches: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Receivers' bandwidth reports (REMB) that reached a subscriber's session.
    pub bandwidth_reports: AtomicU64,
    /// Non-cumulative bucket counts; the last is above every bound.
    pub delay_buckets: [AtomicU64; BUCKETS],
    pub delay_sum_nanos: AtomicU64,
}

/// Add `n` to a counter only this thread writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    // Single writer: a plain load and store cannot lose an update, and costs no locked
    // instruction on the packet path.
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Set a gauge only this thread writes.
#[inline]
pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Relaxed);
}

impl WorkerCounters {
    pub fn dropped(&self, reason: DropReason) {
        bump(&self.dropped[reason as usize], 1);
    }

    /// Record one forward delay (datagram in to copies out).
    pub fn observe_delay(&self, nanos: u64) {
        let secs = nanos as f64 / 1e9;
        let i = FORWARD_DELAY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FORWARD_DELAY_BOUNDS.len());
        bump(&self.delay_buckets[i], 1);
        bump(&self.delay_sum_nanos, nanos);
    }
}

/// A histogram snapshot in Prometheus terms.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayHistogram {
    /// Bucket upper bounds in seconds (`+Inf` implied after the last).
    pub bounds: &'static [f64],
    /// Cumulative counts per bound, then the `+Inf` count (= `count`).
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// Summed snapshot of every worker's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaCounters {
    pub rooms: u64,
    pub publishers: u64,
    pub subscribers: u64,
    pub packets_received: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    /// `(reason label, count)` for every [`DropReason`].
    pub dropped: Vec<(&'static str, u64)>,
    pub layer_switches: u64,
    pub keyframe_requests: u64,
    pub bandwidth_reports: u64,
    pub forward_delay: DelayHistogram,
}

impl MediaCounters {
    /// Sum the workers' counters.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> MediaCounters {
        let mut raw = [0u64; BUCKETS];
        let mut dropped = [0u64; DropReason::ALL.len()];
        let mut m = MediaCounters {
            rooms: 0,
            publishers: 0,
            subscribers: 0,
            packets_received: 0,
            packets_forwarded: 0,
            bytes_forwarded: 0,
            dropped: Vec::new(),
            layer_switches: 0,
            keyframe_requests: 0,
            bandwidth_reports: 0,
            forward_delay: DelayHistogram {
                bounds: &FORWARD_DELAY_BOUNDS,
                cumulative: Vec::new(),
                sum_seconds: 0.0,
                count: 0,
            },
        };
        let mut sum_nanos = 0u64;
        for w in workers {
            m.rooms += w.rooms.load(Relaxed);
            m.publishers += w.publishers.load(Relaxed);
            m.subscribers += w.subscribers.load(Relaxed);
            m.packets_received += w.packets_received.load(Relaxed);
            m.packets_forwarded += w.packets_forwarded.load(Relaxed);
            m.bytes_forwarded += w.bytes_forwarded.load(Relaxed);
            m.layer_switches += w.layer_switches.load(Relaxed);
            m.keyframe_requests += w.keyframe_requests.load(Relaxed);
            m.bandwidth_reports += w.bandwidth_reports.load(Relaxed);
            for (d, c) in dropped.iter_mut().zip(&w.dropped) {
                *d += c.load(Relaxed);
            }
            for (r, c) in raw.iter_mut().zip(&w.delay_buckets) {
                *r += c.load(Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(w.delay_sum_nanos.load(Relaxed));
        }
        m.dropped = DropReason::ALL
            .iter()
            .map(|r| (r.label(), dropped[*r as usize]))
            .collect();
        let mut acc = 0;
        m.forward_delay.cumulative = raw
            .iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect();
        m.forward_delay.count = acc;
        m.forward_delay.sum_seconds = sum_nanos as f64 / 1e9;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_histogram() {
        let a = WorkerCounters::default();
        let b = WorkerCounters::default();
        bump(&a.packets_forwarded, 3);
        bump(&b.packets_forwarded, 4);
        a.dropped(DropReason::Stale);
        a.observe_delay(40_000); // 40 us: first bucket
        b.observe_delay(2_000_000); // 2 ms: <= 2.5 ms
        b.observe_delay(1_000_000_000); // 1 s: +Inf
        let m = MediaCounters::sum([&a, &b]);
        assert_eq!(m.packets_forwarded, 7);
        assert_eq!(
            m.dropped.iter().find(|d| d.0 == "stale").map(|d| d.1),
            Some(1)
        );
        assert_eq!(m.forward_delay.count, 3);
        assert_eq!(m.forward_delay.cumulative[0], 1);
        assert_eq!(m.forward_delay.cumulative[4], 1); // <= 1 ms
        assert_eq!(m.forward_delay.cumulative[5], 2); // <= 2.5 ms
        assert_eq!(m.forward_delay.cumulative[9], 2);
        assert_eq!(m.forward_delay.cumulative[10], 3);
        assert!((m.forward_delay.sum_seconds - 1.002_04).abs() < 1e-9);
    }
}
