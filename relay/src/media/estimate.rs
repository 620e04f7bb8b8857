//! The bandwidth budget towards one subscriber, from the receiver's own estimate (REMB), with
//! upward probing by media.
//!
//! Subscribers' sessions run without send-side estimation, so nothing gates a forwarded packet:
//! it leaves as soon as it is written. The estimate comes from the receiver instead: a browser
//! that negotiated `goog-remb` and `abs-send-time` but not transport-cc sends REMB, its
//! receive-side estimate. That estimate cannot grow past about 1.5 times what arrives, so a
//! subscriber held at low layers would never earn the higher ones by REMB alone, and it starts
//! low and climbs by a few percent a second.
//!
//! So the budget is the larger of the estimate and a rate the link was seen to hold (at first
//! [`INITIAL_BPS`]). The estimate *falls* short when a report is below what is sent and below
//! the one before: the receiver saw queues build (a browser lowers its estimate only then). A
//! report equal to the one before is no fall: Chromium holds its estimate for seconds while what
//! arrives does not grow and after a queue drains, which is exactly what it reports while a
//! probe on a link that was just freed runs. A fall takes the held rate away:
//! the budget is the estimate alone, and the next probe waits twice as long as the last wait
//! (up to [`PROBE_WAIT_MAX`]). A probe lets the allocation reach for more (the ideal, with the
//! headroom a raise needs, within a few times what is sent): if the estimate falls while it
//! runs, the link could not take it; if it does not fall for [`PROBE_HOLD`], the link holds the
//! new rate, which becomes the held rate, and the wait is [`PROBE_WAIT`] again.
//!
//! Pure state: time comes in as a parameter.

use std::time::{Duration, Instant};

use super::allocate::RAISE_HEADROOM;

/// The budget before the receiver's first report.
pub const INITIAL_BPS: u64 = 1_000_000;
/// Without any report this long after the first call, the receiver sends none: no budget.
pub const REPORT_WAIT: Duration = Duration::from_secs(3);
/// A probe that saw no fall in the estimate for this long has succeeded.
pub const PROBE_HOLD: Duration = Duration::from_secs(3);
/// The wait before the first probe, and after one that held.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);
/// The longest wait after falls (it doubles on each).
pub const PROBE_WAIT_MAX: Duration = Duration::from_secs(6);
/// A probe asks for up to this many times what is sent now (one simulcast step, about three
/// times the rate, with the headroom a raise needs) ...
const PROBE_GAIN: u64 = 4;
/// ... and at least this much more.
const PROBE_STEP_BPS: u64 = 500_000;
/// A report below what is sent by this fraction, and below the report before, is a fall.
const BELOW_SENT: f64 = 0.95;
/// Loss above this fraction is a fall.
pub const LOSS_FALL: f32 = 0.10;

#[derive(Debug, Clone)]
pub struct Estimate {
    since: Option<Instant>,
    /// The receiver's latest report, and whether it had fallen below what was sent.
    report: Option<u64>,
    fell: bool,
    /// Set by the budget that followed a fall, until [`Estimate::take_fall`].
    fall_seen: bool,
    /// A rate the link was seen to hold, which the budget does not go below.
    held: Option<u64>,
    probe: Option<Probe>,
    wait: Duration,
    next_probe: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    started: Instant,
    target: u64,
}

impl Default for Estimate {
    fn default() -> Self {
        Estimate {
            since: None,
            report: None,
            fell: false,
            fall_seen: false,
            held: Some(INITIAL_BPS),
            probe: None,
            wait: PROBE_WAIT,
            next_probe: None,
        }
    }
}

impl Estimate {
    /// A receiver's report (REMB), with what the allocation sends now.
    pub fn on_report(&mut self, bps: u64, sending: u64) {
        let b = bps as f64;
        if let Some(last) = self.report
            && bps < last
            && b < sending as f64 * BELOW_SENT
        {
            self.fell = true;
        }
        self.report = Some(bps);
    }

    /// The receiver's loss (a fraction, from its receiver reports). Above [`LOSS_FALL`] the
    /// link is overloaded whatever the estimate says: a link so full that the receiver's
    /// estimate has nothing new to measure holds the estimate flat, which is no fall by itself.
    pub fn on_loss(&mut self, loss: f32) {
        if loss > LOSS_FALL {
            self.fell = true;
        }
    }

    /// The latest report, if any.
    pub fn report(&self) -> Option<u64> {
        self.report
    }

    /// The budget for the next allocation, given what the current one sends and what the
    /// subscriber would get without a limit. None: no limit (a receiver that reports nothing).
    pub fn budget(&mut self, now: Instant, sending: u64, ideal: u64) -> Option<u64> {
        let since = *self.since.get_or_insert(now);
        let Some(report) = self.report else {
            return (now.saturating_duration_since(since) < REPORT_WAIT).then_some(INITIAL_BPS);
        };
        self.next_probe.get_or_insert(now + self.wait);
        if std::mem::take(&mut self.fell) {
            // The link took less than was sent: trust the receiver alone.
            self.fall_seen = true;
            self.held = None;
            self.probe = None;
            self.wait = (self.wait * 2).min(PROBE_WAIT_MAX);
            self.next_probe = Some(now + self.wait);
            return Some(report);
        }
        if let Some(p) = self.probe {
            if now.saturating_duration_since(p.started) >= PROBE_HOLD {
                self.probe = None;
                self.held = Some(self.held.unwrap_or(0).max(p.target.min(sending)));
                self.wait = PROBE_WAIT;
                self.next_probe = Some(now + self.wait);
            } else {
                return Some(report.max(p.target));
            }
        }
        let floor = report.max(self.held.unwrap_or(0));
        if self.next_probe.is_some_and(|t| now >= t) && ideal > floor {
            // With the headroom a raise needs, so the ideal is reached in one step.
            let reach = (ideal as f64 * (1.0 + RAISE_HEADROOM)) as u64;
            let target = reach.min((sending * PROBE_GAIN).max(sending + PROBE_STEP_BPS));
            if target > floor {
                self.probe = Some(Probe {
                    started: now,
                    target,
                });
                return Some(target);
            }
        }
        Some(floor)
    }

    /// Whether the last budget followed a fall (the link took less than was sent); clears it.
    pub fn take_fall(&mut self) -> bool {
        std::mem::take(&mut self.fall_seen)
    }

    /// Whether a probe runs now.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn before_any_report_the_initial_budget_then_none() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        assert_eq!(e.budget(t0, 0, 2_000_000), Some(INITIAL_BPS));
        assert_eq!(e.budget(ms(t0, 2_900), 0, 2_000_000), Some(INITIAL_BPS));
        assert_eq!(e.budget(ms(t0, 3_100), 0, 2_000_000), None);
    }

    #[test]
    fn a_climbing_estimate_keeps_the_initial_budget_and_a_fall_ends_it() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        // A browser's first reports are low and climb: not a fall.
        for (i, r) in [100_000, 150_000, 200_000].into_iter().enumerate() {
            e.on_report(r, 800_000);
            assert_eq!(
                e.budget(ms(t0, i as u64 * 250), 800_000, 800_000),
                Some(INITIAL_BPS)
            );
        }
        // Lower than before but still above what is sent: not a fall either.
        e.on_report(900_000, 800_000);
        e.on_report(850_000, 800_000);
        assert_eq!(e.budget(ms(t0, 1_000), 800_000, 800_000), Some(INITIAL_BPS));
        // Below what is sent and no longer climbing: the link is full.
        assert!(!e.take_fall());
        e.on_report(500_000, 800_000);
        assert_eq!(e.budget(ms(t0, 1_250), 800_000, 800_000), Some(500_000));
        assert!(e.take_fall(), "the allocation learns of the fall once");
        assert!(!e.take_fall());
        assert_eq!(e.budget(ms(t0, 1_500), 500_000, 800_000), Some(500_000));
        assert!(!e.take_fall());
    }

    #[test]
    fn a_probe_the_receiver_cannot_follow_fails() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        // A fall first: the budget is the estimate alone (low layers of two tiles, 300k).
        e.on_report(700_000, 800_000);
        e.on_report(300_000, 800_000);
        assert_eq!(e.budget(t0, 800_000, 1_000_000), Some(300_000));
        e.on_report(450_000, 300_000);
        // Not before the wait, twice the first after a fall.
        assert_eq!(e.budget(ms(t0, 3_900), 300_000, 1_000_000), Some(450_000));
        // The probe reaches for the ideal with headroom (within four times what is sent).
        assert_eq!(e.budget(ms(t0, 4_000), 300_000, 1_000_000), Some(1_200_000));
        assert!(e.probing());
        // The receiver reports less than before and below what is sent: it failed.
        e.on_report(400_000, 900_000);
        assert_eq!(e.budget(ms(t0, 5_000), 900_000, 1_000_000), Some(400_000));
        assert!(!e.probing());
    }

    #[test]
    fn a_probe_without_a_fall_is_held_and_a_later_fall_drops_it() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        e.on_report(700_000, 800_000);
        e.on_report(300_000, 800_000);
        assert_eq!(e.budget(t0, 800_000, 1_000_000), Some(300_000));
        e.on_report(450_000, 300_000);
        assert_eq!(e.budget(ms(t0, 4_000), 300_000, 1_000_000), Some(1_200_000));
        // The receiver's estimate climbs behind the new rate: no fall.
        e.on_report(600_000, 900_000);
        assert_eq!(e.budget(ms(t0, 5_000), 900_000, 1_000_000), Some(1_200_000));
        assert!(e.probing());
        e.on_report(700_000, 900_000);
        // After the hold the rate is held.
        assert_eq!(e.budget(ms(t0, 7_000), 900_000, 1_000_000), Some(900_000));
        assert!(!e.probing());
        // A fall (a link that shrank) takes it away at once.
        e.on_report(400_000, 900_000);
        assert_eq!(e.budget(ms(t0, 7_100), 900_000, 1_000_000), Some(400_000));
        assert_eq!(e.budget(ms(t0, 7_200), 400_000, 1_000_000), Some(400_000));
    }

    #[test]
    fn an_estimate_held_flat_during_a_probe_is_no_fall() {
        // Reports as Chromium sent them behind a link limited to 250 kbit/s that was then freed:
        // its estimate fell to 148k and stayed there, flat, while a probe at 350k ran on the
        // freed link.
        let t0 = Instant::now();
        let mut e = Estimate::default();
        e.on_report(174_778, 400_000);
        e.on_report(148_398, 400_000);
        assert_eq!(e.budget(t0, 400_000, 2_000_000), Some(148_398));
        e.on_report(148_398, 150_000);
        let probe = e.budget(ms(t0, 4_000), 150_000, 2_000_000);
        assert!(probe > Some(600_000), "{probe:?}");
        for i in 1..=3 {
            e.on_report(148_398, 350_000);
            assert_eq!(e.budget(ms(t0, 4_000 + i * 900), 350_000, 2_000_000), probe);
        }
        // Held: the rate it sent becomes the floor.
        assert_eq!(e.budget(ms(t0, 7_100), 350_000, 2_000_000), Some(350_000));
    }

    #[test]
    fn loss_fails_a_probe_that_the_estimate_does_not() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        e.on_report(174_778, 400_000);
        e.on_report(148_398, 400_000);
        assert_eq!(e.budget(t0, 400_000, 2_000_000), Some(148_398));
        let probe = e.budget(ms(t0, 4_000), 150_000, 2_000_000);
        assert!(probe > Some(600_000), "{probe:?}");
        // The link is jammed: the estimate stays flat, the receiver loses a third.
        e.on_report(148_398, 350_000);
        e.on_loss(0.05);
        assert_eq!(e.budget(ms(t0, 4_900), 350_000, 2_000_000), probe);
        e.on_loss(0.33);
        assert_eq!(e.budget(ms(t0, 5_900), 350_000, 2_000_000), Some(148_398));
        assert!(!e.probing());
        assert!(e.take_fall());
    }

    #[test]
    fn failed_probes_wait_longer_each_time_up_to_the_cap() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        e.on_report(900_000, 1_000_000);
        e.on_report(200_000, 1_000_000);
        let mut now = t0;
        assert_eq!(e.budget(now, 1_000_000, 2_000_000), Some(200_000));
        let mut waits = Vec::new();
        let mut last_fail = t0;
        for _ in 0..5 {
            // Step in 100 ms until a probe starts.
            loop {
                now += Duration::from_millis(100);
                if e.budget(now, 150_000, 2_000_000) > Some(200_000) {
                    break;
                }
            }
            waits.push((now - last_fail).as_millis());
            // The link cannot take it.
            e.on_report(160_000, 650_000);
            now += Duration::from_millis(100);
            assert_eq!(e.budget(now, 650_000, 2_000_000), Some(160_000));
            e.on_report(200_000, 150_000);
            last_fail = now;
        }
        assert_eq!(waits, vec![4_000, 6_000, 6_000, 6_000, 6_000]);
    }

    #[test]
    fn nothing_to_probe_for_when_the_ideal_fits() {
        let t0 = Instant::now();
        let mut e = Estimate::default();
        e.on_report(3_000_000, 1_500_000);
        for s in 0..20 {
            assert_eq!(
                e.budget(ms(t0, s * 500), 1_500_000, 1_500_000),
                Some(3_000_000)
            );
        }
        assert!(!e.probing());
    }
}
