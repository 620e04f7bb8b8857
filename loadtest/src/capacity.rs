//! `relay-loadtest media --find-capacity`: the media run repeated with more subscribers per
//! room each step, until loss or p99 one-way delay crosses its threshold (or a step fails to
//! get everyone joined); the load held is the last step that stayed within both.
//!
//! Each step is a whole `media` run (a fresh relay of our own, unless `--target`), so a step
//! cannot inherit the previous one's backlog; each is bounded by the media run's own deadline,
//! and the search by `--max-steps` and the session limit, so it stops by itself.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::media;
use crate::output;
use crate::plot;
use crate::target;

/// The search's options, beside the media options of the first step.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "capacity")]
pub struct Options {
    /// Raise subscribers per room step by step until loss or p99 one-way delay crosses its
    /// threshold; report the highest load held. --subscribers is the first step's load and
    /// --duration each step's window.
    #[arg(long)]
    pub find_capacity: bool,
    /// Loss above this (percent of packets) fails a step.
    #[arg(long, default_value_t = 1.0)]
    pub max_loss_percent: f64,
    /// p99 one-way delay above this (milliseconds) fails a step.
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// Most steps in the search.
    #[arg(long, default_value_t = 6)]
    pub max_steps: usize,
    /// Subscribers per room grow by this factor each step (and by at least one).
    #[arg(long, default_value_t = 2.0)]
    pub growth: f64,
}

impl Options {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.max_loss_percent) {
            return Err("--max-loss-percent must be 0 to 100".into());
        }
        if !(self.max_p99_ms > 0.0 && self.max_p99_ms <= 10_000.0) {
            return Err("--max-p99-ms must be more than 0 and at most 10000".into());
        }
        if !(1..=20).contains(&self.max_steps) {
            return Err("--max-steps must be 1 to 20".into());
        }
        if !(self.growth > 1.0 && self.growth <= 10.0) {
            return Err("--growth must be more than 1 and at most 10".into());
        }
        Ok(())
    }

    /// Subscribers per room of the step after one with `s`.
    fn next(&self, s: usize) -> usize {
        ((s as f64 * self.growth).ceil() as usize).max(s + 1)
    }
}

/// One step of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub subscribers_per_room: usize,
    pub sessions: usize,
    /// Within both thresholds, with everyone joined and no peer failed.
    pub held: bool,
    /// Why it did not hold.
    pub reasons: Vec<String>,
    pub loss_ratio: f64,
    pub one_way_delay_median_ms: f64,
    pub one_way_delay_p99_ms: f64,
    pub forwarded_per_second: f64,
    pub forwarded_packets_per_cpu_second: f64,
    pub relay_cores_busy: f64,
    pub error: Option<String>,
    pub report: Option<media::Report>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_unix: u64,
    pub rooms: usize,
    pub publishers_per_room: usize,
    pub max_loss_percent: f64,
    pub max_p99_ms: f64,
    pub max_steps: usize,
    pub growth: f64,
    pub steps: Vec<Step>,
    /// The last step that held before the first that did not: the capacity found.
    pub held_subscribers_per_room: Option<usize>,
    pub held_sessions: Option<usize>,
    pub held_forwarded_per_second: Option<f64>,
    /// From the first step's floor measurement.
    pub floor_packets_per_cpu_second: Option<f64>,
    /// Why the search ended.
    pub ended: String,
    /// The search ended on its own terms (a threshold, the step limit or the session limit).
    pub stopped_by_itself: bool,
}

/// Whether a step's report stays within the thresholds; the reasons if not.
fn verdict(c: &Options, r: &media::Report) -> Vec<String> {
    let mut why = Vec::new();
    if r.loss_ratio * 100.0 > c.max_loss_percent {
        why.push(format!(
            "loss {:.2}% > {}%",
            r.loss_ratio * 100.0,
            c.max_loss_percent
        ));
    }
    if r.one_way_delay_ms.p99 > c.max_p99_ms {
        why.push(format!(
            "p99 delay {:.1} ms > {} ms",
            r.one_way_delay_ms.p99, c.max_p99_ms
        ));
    }
    if r.joined < r.expected_joins {
        why.push(format!("joined {}/{}", r.joined, r.expected_joins));
    }
    if r.dead_peers > 0 {
        why.push(format!("{} peers failed", r.dead_peers));
    }
    if !r.stopped_by_itself {
        why.push("the step ran into its deadline".into());
    }
    why
}

/// Runs the search.
pub fn run(o: &target::Options, c: &Options) -> Result<Report, String> {
    c.check()?;
    o.check()?;
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut steps: Vec<Step> = Vec::new();
    let mut step_o = o.clone();
    let mut floor = None;
    let mut ended = format!("{} steps done", c.max_steps);
    for k in 0..c.max_steps {
        if k > 0 {
            step_o.subscribers = c.next(step_o.subscribers);
            // One floor per search is enough: it does not depend on the load.
            step_o.floor_duration = std::time::Duration::ZERO;
            if let Err(e) = step_o.check() {
                ended = format!("the next step is beyond the load tester's limits: {e}");
                break;
            }
        }
        output::say(
            o.progress,
            &format!(
                "capacity step {}: {} subscribers per room",
                k + 1,
                step_o.subscribers
            ),
        );
        let step = match media::run(&step_o) {
            Ok(r) => {
                if k == 0 {
                    floor = r.floor_packets_per_cpu_second;
                }
                let reasons = verdict(c, &r);
                Step {
                    subscribers_per_room: step_o.subscribers,
                    sessions: r.setup.sessions,
                    held: reasons.is_empty(),
                    reasons,
                    loss_ratio: r.loss_ratio,
                    one_way_delay_median_ms: r.one_way_delay_ms.median,
                    one_way_delay_p99_ms: r.one_way_delay_ms.p99,
                    forwarded_per_second: r.relay.forwarded_per_second,
                    forwarded_packets_per_cpu_second: r.forwarded_packets_per_cpu_second,
                    relay_cores_busy: r.relay.cores_busy,
                    error: None,
                    report: Some(r),
                }
            }
            Err(e) => Step {
                subscribers_per_room: step_o.subscribers,
                sessions: 0,
                held: false,
                reasons: vec!["the step failed".into()],
                loss_ratio: f64::NAN,
                one_way_delay_median_ms: f64::NAN,
                one_way_delay_p99_ms: f64::NAN,
                forwarded_per_second: f64::NAN,
                forwarded_packets_per_cpu_second: f64::NAN,
                relay_cores_busy: f64::NAN,
                error: Some(e),
                report: None,
            },
        };
        let held = step.held;
        steps.push(step);
        if !held {
            ended = format!("step {} did not hold", k + 1);
            break;
        }
    }
    let held = steps.iter().take_while(|s| s.held).last();
    Ok(Report {
        started_unix,
        rooms: o.rooms,
        publishers_per_room: o.publishers,
        max_loss_percent: c.max_loss_percent,
        max_p99_ms: c.max_p99_ms,
        max_steps: c.max_steps,
        growth: c.growth,
        held_subscribers_per_room: held.map(|s| s.subscribers_per_room),
        held_sessions: held.map(|s| s.sessions),
        held_forwarded_per_second: held.map(|s| s.forwarded_per_second),
        floor_packets_per_cpu_second: floor,
        ended,
        stopped_by_itself: steps.iter().all(|s| s.error.is_none()),
        steps,
    })
}

impl Report {
    pub fn summary(&self) -> String {
        let mut out = format!(
            "media capacity: {} rooms x {} publishers, subscribers per room raised x{} per step; \
             a step holds with loss <= {}% and p99 one-way delay <= {} ms\n",
            self.rooms,
            self.publishers_per_room,
            self.growth,
            self.max_loss_percent,
            self.max_p99_ms
        );
        for (k, s) in self.steps.iter().enumerate() {
            out += &format!(
                "  step {}: {:>4} subscribers/room {:>5} sessions  forwarded {:.0}/s  \
                 {:.0} pkt per relay CPU-s  loss {:.2}%  delay median {:.1} ms p99 {:.1} ms  {}\n",
                k + 1,
                s.subscribers_per_room,
                s.sessions,
                s.forwarded_per_second,
                s.forwarded_packets_per_cpu_second,
                s.loss_ratio * 100.0,
                s.one_way_delay_median_ms,
                s.one_way_delay_p99_ms,
                if s.held {
                    "held".to_string()
                } else {
                    format!("not held: {}", s.reasons.join(", "))
                }
            );
            if let Some(e) = &s.error {
                out += &format!("      error: {e}\n");
            }
        }
        match (self.held_subscribers_per_room, self.held_sessions) {
            (Some(s), Some(n)) => {
                out += &format!(
                    "capacity held: {s} subscribers per room ({n} sessions), {:.0} packets/s forwarded; {}\n",
                    self.held_forwarded_per_second.unwrap_or(0.0),
                    self.ended
                )
            }
            _ => out += &format!("no step held; {}\n", self.ended),
        }
        out
    }

    pub fn chart(&self) -> plot::Chart {
        let reports: Vec<&media::Report> = self
            .steps
            .iter()
            .filter_map(|s| s.report.as_ref())
            .collect();
        let mut chart = media::chart(
            &reports,
            self.floor_packets_per_cpu_second,
            Some((self.max_loss_percent, self.max_p99_ms)),
        );
        chart.title = format!(
            "relay media capacity: {} rooms x {} publishers, subscribers raised per step",
            self.rooms, self.publishers_per_room
        );
        chart.marker = self.held_sessions.map(|n| (n as f64, "held".to_string()));
        chart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_grow_by_the_factor_and_at_least_one() {
        let c = Options {
            find_capacity: true,
            max_loss_percent: 1.0,
            max_p99_ms: 50.0,
            max_steps: 6,
            growth: 1.5,
        };
        assert_eq!(c.next(0), 1);
        assert_eq!(c.next(1), 2);
        assert_eq!(c.next(2), 3);
        assert_eq!(c.next(10), 15);
        assert!(c.check().is_ok());
        assert!(Options { growth: 1.0, ..c }.check().is_err());
        assert!(Options { max_steps: 0, ..c }.check().is_err());
    }
}
