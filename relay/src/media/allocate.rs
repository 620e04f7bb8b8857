//! Which publisher and which simulcast layer feeds each of a subscriber's video slots.
//!
//! Job: a pure decision, called when the room changes (join, leave, layout, speaker, bandwidth
//! estimate) and on a periodic tick, never per packet. Inputs are the room's live video tracks,
//! the subscriber's request and the previous decision; output is one optional [`Feed`] per slot.
//!
//! Rules (from the contract):
//! - `grid`: camera tracks, most recent speakers first; layer by tile count: 1 slot highest,
//!   2 to 4 middle, 5 or more lowest; `max_height` caps it at the smallest layer whose height is
//!   at least `max_height`.
//! - `screen`: slot 0 the screen share at its highest layer, the other slots camera thumbnails at
//!   the lowest. With no screen share it is `grid`.
//! - nobody is fed their own media;
//! - with a bandwidth estimate, layers are lowered (least important slot first) until the sum of
//!   layer bitrates fits, then slots are emptied from the last; a layer is only raised above the
//!   previous decision when it fits with [`RAISE_HEADROOM`] to spare (an emptied slot is filled
//!   again likewise), and one already shown is lowered or dropped only when it overshoots by more
//!   than [`HOLD_SLACK`] (hysteresis both ways).
//!
//! Invariants: a track already shown keeps its slot index when it stays selected (no needless
//! switch); no track appears in two slots; the result depends only on the arguments.

use std::cmp::Reverse;
use std::time::Instant;

/// Identifies a video track within a worker. Opaque here.
pub type TrackId = u64;

/// Identifies a participant within a room. Opaque here.
pub type ParticipantId = u64;

/// A subscriber's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Equal tiles of camera tracks.
    Grid,
    /// A screen share in slot 0, camera thumbnails in the rest.
    Screen,
}

/// One live simulcast layer of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerInfo {
    /// The publisher's index of this layer (stable while the track lives).
    pub layer: u8,
    /// Frame height in pixels (measured, or assumed from the layer's rank).
    pub height: u32,
    /// Measured bitrate in bits per second.
    pub bitrate_bps: u64,
}

/// A video track as the allocator sees it.
#[derive(Debug, Clone)]
pub struct VideoTrack<'a> {
    pub id: TrackId,
    pub participant: ParticipantId,
    pub screen: bool,
    /// Live layers, sorted from lowest to highest.
    pub layers: &'a [LayerInfo],
    /// When the participant last spoke (audio level above the speech threshold).
    pub last_spoke: Option<Instant>,
    /// Join order within the room: earlier tracks win ties.
    pub order: u64,
}

/// What a subscriber asks for.
#[derive(Debug, Clone, Copy)]
pub struct SlotRequest {
    pub participant: ParticipantId,
    pub layout: Layout,
    pub max_height: Option<u32>,
    /// The bandwidth budget towards this subscriber, if there is one.
    pub bwe_bps: Option<u64>,
    /// Keep every slot that was shown in `prev` (at its lowest layer if need be) even over the
    /// budget: the caller empties slots only once the budget has been short for a while.
    pub keep_slots: bool,
}

/// One slot's source: a track at one of its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Feed {
    pub track: TrackId,
    pub layer: u8,
}

/// A layer is raised above the previous decision only if the total still fits in the estimate
/// with this much (as a fraction of the raised layer's bitrate) to spare.
pub const RAISE_HEADROOM: f64 = 0.25;

/// A layer already shown is kept while the total exceeds the estimate by at most this fraction
/// of its bitrate: estimates and rates wobble by that much without any congestion, and every
/// needless switch costs a keyframe.
pub const HOLD_SLACK: f64 = 0.15;

/// Decide the feeds of `out.len()` slots. `prev` is the previous decision (any length).
/// Returns true if the decision exceeds the budget (only slots kept by `keep_slots` do).
pub fn allocate(
    tracks: &[VideoTrack<'_>],
    req: &SlotRequest,
    prev: &[Option<Feed>],
    out: &mut [Option<Feed>],
) -> bool {
    out.fill(None);
    let k = out.len();
    if k == 0 {
        return false;
    }
    let visible = |t: &&VideoTrack<'_>| t.participant != req.participant && !t.layers.is_empty();
    let mut cameras: Vec<&VideoTrack<'_>> = tracks
        .iter()
        .filter(visible)
        .filter(|t| !t.screen)
        .collect();
    cameras.sort_by_key(|t| (Reverse(t.last_spoke), t.order));

    let screen = match req.layout {
        Layout::Screen => tracks
            .iter()
            .filter(visible)
            .filter(|t| t.screen)
            .max_by_key(|t| (t.order, Reverse(t.id))),
        Layout::Grid => None,
    };

    // (track, index into its sorted layers) per chosen track, in priority order.
    let mut chosen: Vec<(&VideoTrack<'_>, usize)> = Vec::with_capacity(k);
    match screen {
        Some(s) => {
            chosen.push((s, s.layers.len() - 1));
            for t in cameras.iter().take(k - 1) {
                chosen.push((t, 0));
            }
        }
        None => {
            let n_tiles = cameras.len().min(k);
            for t in cameras.iter().take(k) {
                chosen.push((t, tile_layer(t.layers, n_tiles.max(1), req.max_height)));
            }
        }
    }

    let over = match req.bwe_bps {
        Some(bwe) => !fit_bandwidth(&mut chosen, prev, bwe, req.keep_slots),
        None => false,
    };

    // Placement: the screen share owns slot 0; a track keeps the slot it had; the rest fill the
    // free slots in priority order.
    let mut placed = vec![false; chosen.len()];
    if screen.is_some() && !chosen.is_empty() {
        out[0] = Some(feed(&chosen[0]));
        placed[0] = true;
    }
    for (i, c) in chosen.iter().enumerate() {
        if placed[i] {
            continue;
        }
        let kept = prev.iter().enumerate().position(|(slot, p)| {
            slot < k
                && out[slot].is_none()
                && !(screen.is_some() && slot == 0)
                && p.is_some_and(|p| p.track == c.0.id)
        });
        if let Some(slot) = kept {
            out[slot] = Some(feed(c));
            placed[i] = true;
        }
    }
    for (i, c) in chosen.iter().enumerate() {
        if placed[i] {
            continue;
        }
        if let Some(slot) = out.iter().position(Option::is_none) {
            out[slot] = Some(feed(c));
        }
    }
    over
}

fn feed((t, idx): &(&VideoTrack<'_>, usize)) -> Feed {
    Feed {
        track: t.id,
        layer: t.layers[*idx].layer,
    }
}

/// Index into `layers` (sorted lowest first, non-empty) for a grid of `tiles` tiles.
fn tile_layer(layers: &[LayerInfo], tiles: usize, max_height: Option<u32>) -> usize {
    let top = layers.len() - 1;
    let by_count = match tiles {
        1 => top,
        2..=4 => layers.len() / 2,
        _ => 0,
    }
    .min(top);
    match max_height {
        Some(h) => {
            let cap = layers.iter().position(|l| l.height >= h).unwrap_or(top);
            by_count.min(cap)
        }
        None => by_count,
    }
}

/// Lower layers (least important slot first) until the total fits `bwe`, then drop slots from
/// the end, keeping at least one at its lowest layer (and with `keep_shown`, every track shown
/// in `prev`). True if the result fits.
fn fit_bandwidth(
    chosen: &mut Vec<(&VideoTrack<'_>, usize)>,
    prev: &[Option<Feed>],
    bwe: u64,
    keep_shown: bool,
) -> bool {
    let prev_rank = |t: &VideoTrack<'_>| -> Option<usize> {
        let p = prev.iter().flatten().find(|p| p.track == t.id)?;
        t.layers.iter().position(|l| l.layer == p.layer)
    };
    // Cost including the raise headroom: raising needs room to spare, holding does not. A
    // track not shown before is raised from nothing, so filling an emptied slot needs the
    // headroom too; otherwise a thumbnail flickers in and out while the estimate wobbles.
    let cost = |t: &VideoTrack<'_>, idx: usize| -> f64 {
        let rate = t.layers[idx].bitrate_bps as f64;
        match prev_rank(t) {
            Some(p) if idx == p => rate * (1.0 - HOLD_SLACK),
            Some(p) if idx < p => rate,
            _ => rate * (1.0 + RAISE_HEADROOM),
        }
    };
    let budget = bwe as f64;
    loop {
        let total: f64 = chosen.iter().map(|(t, i)| cost(t, *i)).sum();
        if total <= budget {
            return true;
        }
        // The least important slot still above its lowest layer.
        if let Some(pos) = chosen.iter().rposition(|(_, i)| *i > 0) {
            chosen[pos].1 -= 1;
            continue;
        }
        // The least important slot that may go.
        let shown = |t: &VideoTrack<'_>| prev.iter().flatten().any(|p| p.track == t.id);
        match (1..chosen.len())
            .rev()
            .find(|&i| !(keep_shown && shown(chosen[i].0)))
        {
            Some(i) => {
                chosen.remove(i);
            }
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const L3: [LayerInfo; 3] = [
        LayerInfo {
            layer: 2,
            height: 180,
            bitrate_bps: 150_000,
        },
        LayerInfo {
            layer: 1,
            height: 360,
            bitrate_bps: 500_000,
        },
        LayerInfo {
            layer: 0,
            height: 720,
            bitrate_bps: 1_500_000,
        },
    ];
    const LOW: u8 = 2;
    const MID: u8 = 1;
    const HIGH: u8 = 0;

    fn cam(id: u64, participant: u64, spoke_ms: Option<u64>, t0: Instant) -> VideoTrack<'static> {
        VideoTrack {
            id,
            participant,
            screen: false,
            layers: &L3,
            last_spoke: spoke_ms.map(|ms| t0 + Duration::from_millis(ms)),
            order: id,
        }
    }

    fn req(participant: u64, layout: Layout) -> SlotRequest {
        SlotRequest {
            participant,
            layout,
            max_height: None,
            bwe_bps: None,
            keep_slots: false,
        }
    }

    fn run(
        tracks: &[VideoTrack<'_>],
        r: &SlotRequest,
        prev: &[Option<Feed>],
        k: usize,
    ) -> Vec<Option<Feed>> {
        let mut out = vec![None; k];
        allocate(tracks, r, prev, &mut out);
        out
    }

    fn f(track: u64, layer: u8) -> Option<Feed> {
        Some(Feed { track, layer })
    }

    #[test]
    fn grid_layer_by_tile_count() {
        let t0 = Instant::now();
        let two = [cam(1, 1, None, t0), cam(2, 2, None, t0)];
        let six: Vec<_> = (1..=6).map(|i| cam(i, i, None, t0)).collect();
        type Case<'a> = (&'a [VideoTrack<'a>], usize, Vec<Option<Feed>>);
        let cases: &[Case<'_>] = &[
            // One slot: highest.
            (&two, 1, vec![f(1, HIGH)]),
            // Two tiles: middle.
            (&two, 2, vec![f(1, MID), f(2, MID)]),
            // Four slots, two tracks: still two tiles, middle; free slots stay empty.
            (&two, 4, vec![f(1, MID), f(2, MID), None, None]),
            // Five or more tiles: lowest.
            (
                &six,
                5,
                vec![f(1, LOW), f(2, LOW), f(3, LOW), f(4, LOW), f(5, LOW)],
            ),
            // Four tiles out of six tracks: middle.
            (&six, 4, vec![f(1, MID), f(2, MID), f(3, MID), f(4, MID)]),
        ];
        for (i, (tracks, k, want)) in cases.iter().enumerate() {
            assert_eq!(
                &run(tracks, &req(99, Layout::Grid), &[], *k),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn max_height_caps() {
        let t0 = Instant::now();
        let one = [cam(1, 1, None, t0)];
        let mut r = req(99, Layout::Grid);
        for (h, want) in [
            (100, LOW),
            (180, LOW),
            (181, MID),
            (360, MID),
            (500, HIGH),
            (4000, HIGH),
        ] {
            r.max_height = Some(h);
            assert_eq!(run(&one, &r, &[], 1), vec![f(1, want)], "max_height {h}");
        }
        // The cap never raises above the tile-count rule.
        r.max_height = Some(720);
        let six: Vec<_> = (1..=6).map(|i| cam(i, i, None, t0)).collect();
        assert!(
            run(&six, &r, &[], 6)
                .iter()
                .all(|s| s.is_some_and(|s| s.layer == LOW))
        );
    }

    #[test]
    fn recent_speakers_first_and_not_own() {
        let t0 = Instant::now();
        let tracks = [
            cam(1, 1, Some(100), t0),
            cam(2, 2, None, t0),
            cam(3, 3, Some(300), t0),
            cam(4, 4, Some(200), t0),
        ];
        // Participant 3 asks: never sees track 3; 4 spoke more recently than 1; 2 never spoke.
        assert_eq!(
            run(&tracks, &req(3, Layout::Grid), &[], 2),
            vec![f(4, MID), f(1, MID)]
        );
        assert_eq!(
            run(&tracks[2..3], &req(3, Layout::Grid), &[], 2),
            vec![None, None]
        );
    }

    #[test]
    fn kept_tracks_keep_their_slot() {
        let t0 = Instant::now();
        let tracks = [
            cam(1, 1, Some(100), t0),
            cam(2, 2, Some(200), t0),
            cam(3, 3, Some(300), t0),
        ];
        let prev = [f(1, MID), f(2, MID)];
        // 3 is now the most recent speaker, 1 drops out of the top two: 2 stays in slot 1 and
        // 3 takes the freed slot 0.
        assert_eq!(
            run(&tracks, &req(9, Layout::Grid), &prev, 2),
            vec![f(3, MID), f(2, MID)]
        );
    }

    #[test]
    fn screen_layout() {
        let t0 = Instant::now();
        let mut share = cam(10, 1, None, t0);
        share.screen = true;
        let tracks = [
            cam(1, 1, Some(5), t0),
            cam(2, 2, Some(9), t0),
            share.clone(),
        ];
        assert_eq!(
            run(&tracks, &req(3, Layout::Screen), &[], 3),
            vec![f(10, HIGH), f(2, LOW), f(1, LOW)]
        );
        // Grid ignores screen shares.
        assert_eq!(
            run(&tracks, &req(3, Layout::Grid), &[], 3),
            vec![f(2, MID), f(1, MID), None]
        );
        // No screen share: screen behaves as grid.
        assert_eq!(
            run(&tracks[..2], &req(3, Layout::Screen), &[], 3),
            run(&tracks[..2], &req(3, Layout::Grid), &[], 3)
        );
        // The sharer does not get their own share.
        assert_eq!(
            run(&tracks, &req(1, Layout::Screen), &[], 2),
            vec![f(2, HIGH), None]
        );
    }

    #[test]
    fn bandwidth_lowers_then_raises_with_hysteresis() {
        let t0 = Instant::now();
        let tracks = [cam(1, 1, Some(2), t0), cam(2, 2, Some(1), t0)];
        let mut r = req(9, Layout::Grid);
        // Plenty: both middle (500k each).
        r.bwe_bps = Some(5_000_000);
        let full = run(&tracks, &r, &[], 2);
        assert_eq!(full, vec![f(1, MID), f(2, MID)]);
        // 700k: the least important slot drops first, then the other.
        r.bwe_bps = Some(700_000);
        let low = run(&tracks, &r, &full, 2);
        assert_eq!(low, vec![f(1, MID), f(2, LOW)]);
        r.bwe_bps = Some(400_000);
        assert_eq!(run(&tracks, &r, &full, 2), vec![f(1, LOW), f(2, LOW)]);
        // 200k: only one slot at lowest.
        r.bwe_bps = Some(200_000);
        assert_eq!(run(&tracks, &r, &full, 2), vec![f(1, LOW), None]);
        // Back to exactly the sum (1M): fits when holding, but raising from low needs headroom.
        r.bwe_bps = Some(1_000_000);
        assert_eq!(run(&tracks, &r, &full, 2), vec![f(1, MID), f(2, MID)]);
        assert_eq!(run(&tracks, &r, &low, 2), vec![f(1, MID), f(2, LOW)]);
        r.bwe_bps = Some(1_150_000);
        assert_eq!(run(&tracks, &r, &low, 2), vec![f(1, MID), f(2, MID)]);
        // An emptied slot is filled again only with the raise headroom (150k * 1.25 beside
        // the held 150k * 0.85 = 315k), while a shown one is held down to 255k.
        let one = vec![f(1, LOW), None];
        let both = vec![f(1, LOW), f(2, LOW)];
        r.bwe_bps = Some(300_000);
        assert_eq!(run(&tracks, &r, &one, 2), one);
        assert_eq!(run(&tracks, &r, &both, 2), both);
        r.bwe_bps = Some(260_000);
        assert_eq!(run(&tracks, &r, &both, 2), both);
        r.bwe_bps = Some(320_000);
        assert_eq!(run(&tracks, &r, &one, 2), both);
    }

    #[test]
    fn shown_slots_are_kept_over_the_budget_while_asked_and_it_says_so() {
        let t0 = Instant::now();
        let tracks = [cam(1, 1, Some(2), t0), cam(2, 2, Some(1), t0)];
        let both = vec![f(1, LOW), f(2, LOW)];
        let mut r = req(9, Layout::Grid);
        r.bwe_bps = Some(200_000);
        let mut out = vec![None; 2];
        // Short of both lowest layers: kept while asked, and over the budget.
        r.keep_slots = true;
        assert!(allocate(&tracks, &r, &both, &mut out));
        assert_eq!(out, both);
        // A slot not shown before is not kept.
        assert!(!allocate(&tracks, &r, &[f(1, LOW)], &mut out));
        assert_eq!(out, vec![f(1, LOW), None]);
        // Once the caller stops asking, the least important goes.
        r.keep_slots = false;
        assert!(!allocate(&tracks, &r, &both, &mut out));
        assert_eq!(out, vec![f(1, LOW), None]);
        // Without a budget nothing is over.
        r.bwe_bps = None;
        assert!(!allocate(&tracks, &r, &both, &mut out));
    }
}
