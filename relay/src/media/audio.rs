//! Which publishers' audio fills a subscriber's audio m-lines, and who is speaking.
//!
//! Job: audio is not mixed; a subscriber with N audio m-lines receives the N loudest other
//! participants, judged by the RFC 6464 audio level each packet carries. Levels are smoothed per
//! track ([`Loudness`]), and a track only displaces one already playing when it is louder by
//! [`SWITCH_MARGIN_DB`], so two similar voices do not flap between lines.
//!
//! Invariants: pure and allocation-free; a track appears in at most one line; nobody hears
//! themselves; a line whose track still exists is only reassigned by the margin rule.

use super::allocate::{ParticipantId, TrackId};

/// A louder track displaces a playing one only when louder by this many dB.
pub const SWITCH_MARGIN_DB: f32 = 6.0;

/// A smoothed level above this counts as speech (for "most recent speakers first").
pub const SPEECH_THRESHOLD_DB: f32 = -50.0;

/// Silence as RFC 6464 defines the floor: -127 dBov.
pub const SILENCE_DB: f32 = -127.0;

/// Exponentially smoothed audio level of one track, in dBov (0 loudest, -127 silent).
#[derive(Debug, Clone, Copy)]
pub struct Loudness {
    db: f32,
}

impl Default for Loudness {
    fn default() -> Self {
        Loudness { db: SILENCE_DB }
    }
}

impl Loudness {
    /// Feed one packet's level: RFC 6464 as str0m reports it (0 loudest, -127 silent; the
    /// sign is accepted either way since senders differ).
    pub fn update(&mut self, level: i8) {
        let db = -f32::from(level.unsigned_abs().min(127));
        // Rise fast (speech onsets matter), decay slowly (pauses between words do not).
        let alpha = if db > self.db { 0.3 } else { 0.05 };
        self.db += alpha * (db - self.db);
    }

    /// The smoothed level in dBov.
    pub fn db(&self) -> f32 {
        self.db
    }

    /// True while the level says someone is speaking.
    pub fn speaking(&self) -> bool {
        self.db > SPEECH_THRESHOLD_DB
    }
}

/// One audio track as the selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct AudioCandidate {
    pub track: TrackId,
    pub participant: ParticipantId,
    pub db: f32,
}

/// Fill `lines` with the loudest candidates not belonging to `own`, keeping current
/// assignments unless displaced by a candidate louder by [`SWITCH_MARGIN_DB`].
pub fn select_audio(
    candidates: &[AudioCandidate],
    own: ParticipantId,
    lines: &mut [Option<TrackId>],
) {
    let level = |track: TrackId| {
        candidates
            .iter()
            .find(|c| c.track == track && c.participant != own)
            .map(|c| c.db)
    };
    // Lines whose track left (or is our own) are freed.
    for line in lines.iter_mut() {
        if line.is_some_and(|t| level(t).is_none()) {
            *line = None;
        }
    }
    // Unassigned candidates, loudest first, each either fills a free line or displaces the
    // quietest playing track by the margin. Selection without sorting: candidate counts are
    // small and this avoids allocating.
    let mut taken_floor = f32::INFINITY;
    loop {
        let next = candidates
            .iter()
            .filter(|c| c.participant != own && !lines.contains(&Some(c.track)))
            .filter(|c| c.db <= taken_floor)
            .max_by(|a, b| a.db.total_cmp(&b.db).then(b.track.cmp(&a.track)));
        let Some(c) = next else {
            return;
        };
        taken_floor = c.db;
        if let Some(free) = lines.iter_mut().find(|l| l.is_none()) {
            *free = Some(c.track);
            continue;
        }
        let quietest = lines
            .iter_mut()
            .filter_map(|l| l.map(|t| (level(t).unwrap_or(SILENCE_DB), l)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        match quietest {
            Some((db, line)) if c.db > db + SWITCH_MARGIN_DB => *line = Some(c.track),
            // Candidates come loudest first: if this one cannot displace, none can.
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(track: u64, participant: u64, db: f32) -> AudioCandidate {
        AudioCandidate {
            track,
            participant,
            db,
        }
    }

    #[test]
    fn loudest_first_not_own() {
        let cands = [
            c(1, 1, -60.0),
            c(2, 2, -20.0),
            c(3, 3, -30.0),
            c(4, 4, -10.0),
        ];
        let mut lines = [None; 2];
        select_audio(&cands, 4, &mut lines);
        assert_eq!(lines, [Some(2), Some(3)]);
        let mut lines = [None; 5];
        select_audio(&cands, 4, &mut lines);
        assert_eq!(lines, [Some(2), Some(3), Some(1), None, None]);
    }

    #[test]
    fn hysteresis() {
        let mut lines = [Some(1), Some(2)];
        // Track 3 is louder than 2 but within the margin: no change.
        select_audio(
            &[c(1, 1, -20.0), c(2, 2, -40.0), c(3, 3, -36.0)],
            9,
            &mut lines,
        );
        assert_eq!(lines, [Some(1), Some(2)]);
        // Beyond the margin: 3 replaces the quietest line in place.
        select_audio(
            &[c(1, 1, -20.0), c(2, 2, -40.0), c(3, 3, -30.0)],
            9,
            &mut lines,
        );
        assert_eq!(lines, [Some(1), Some(3)]);
        // A track that left frees its line for the next loudest.
        select_audio(&[c(2, 2, -40.0), c(3, 3, -30.0)], 9, &mut lines);
        assert_eq!(lines, [Some(2), Some(3)]);
    }

    #[test]
    fn own_audio_removed_from_lines() {
        let mut lines = [Some(1)];
        select_audio(&[c(1, 7, -10.0), c(2, 2, -90.0)], 7, &mut lines);
        assert_eq!(lines, [Some(2)]);
    }

    #[test]
    fn loudness_smoothing() {
        let mut l = Loudness::default();
        assert!(!l.speaking());
        for _ in 0..20 {
            l.update(-30);
        }
        assert!(l.speaking());
        assert!((l.db() + 30.0).abs() < 1.0);
        // One quiet packet does not end speech.
        l.update(-127);
        assert!(l.speaking());
        for _ in 0..200 {
            l.update(127);
        }
        assert!(!l.speaking());
    }
}
