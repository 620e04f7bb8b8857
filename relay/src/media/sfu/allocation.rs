//! Room allocation: the periodic tick (speakers, bitrates, staleness, keyframe retries) and the
//! decision of which publisher and layer feeds each subscriber's slots.

use super::*;

impl Core {
    /// The periodic tick: layer bitrates, liveness, allocation of every room.
    pub(super) fn tick(&mut self, now: Instant, wire: &mut dyn Wire) {
        // Also picks up sessions whose Rtc failed while draining.
        self.reap = true;
        let secs = TICK.as_secs_f64();
        for s in self.sessions.iter_mut().flatten() {
            let silent_for = now.saturating_duration_since(s.last_rx.unwrap_or(s.created));
            let limit = if s.last_rx.is_some() {
                SILENCE_TIMEOUT
            } else {
                SETUP_TIMEOUT
            };
            if silent_for > limit {
                s.dead = true;
            }
            if let Role::Publisher(p) = &mut s.role {
                for l in p.tracks.iter_mut().flat_map(|t| t.layers.iter_mut()) {
                    let rate = (l.window_bytes * 8) as f64 / secs;
                    // About one second of memory: a keyframe's burst must not read as the
                    // layer's rate, or every switch would push the allocator back down.
                    l.bitrate_bps = if l.bitrate_bps == 0 {
                        rate as u64
                    } else {
                        ((1.0 - RATE_SMOOTHING) * l.bitrate_bps as f64 + RATE_SMOOTHING * rate)
                            as u64
                    };
                    l.window_bytes = 0;
                }
            }
        }
        let rooms: Vec<RoomKey> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.reallocate(&room, now, wire);
            self.push_view(&room, wire);
        }
    }

    /// Re-run the allocation and audio selection for every subscriber of `room`, and ask for
    /// the keyframes the new choices need.
    pub(super) fn reallocate(&mut self, room: &str, now: Instant, wire: &mut dyn Wire) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        // Live video tracks with their layers ranked lowest first, and live audio tracks.
        let mut layer_sets: Vec<LiveTrack> = Vec::new();
        let mut audio = Vec::new();
        for &idx in &r.members {
            let Some(s) = self.sessions[idx].as_ref() else {
                continue;
            };
            let Role::Publisher(p) = &s.role else {
                continue;
            };
            for t in &p.tracks {
                let live = |l: &&Layer| {
                    l.last_rx
                        .is_some_and(|at| now.saturating_duration_since(at) < STALE_AFTER)
                };
                if t.kind == MediaKind::Audio {
                    if t.layers.iter().any(|l| live(&l)) {
                        audio.push(AudioCandidate {
                            track: t.id,
                            participant: s.participant,
                            db: t.loudness.db(),
                        });
                    }
                    continue;
                }
                let mut layers: Vec<(usize, &Layer)> = t
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| live(l))
                    .collect();
                layers.sort_by_key(|(_, l)| (l.height.unwrap_or(0), l.bitrate_bps));
                let n = layers.len();
                let infos = layers
                    .iter()
                    .enumerate()
                    .map(|(rank, (i, l))| LayerInfo {
                        layer: *i as u8,
                        // Unknown heights: assume the usual halving per simulcast step.
                        height: l.height.unwrap_or(720 >> (n - 1 - rank).min(4)),
                        bitrate_bps: l.bitrate_bps.max(1),
                    })
                    .collect();
                layer_sets.push((
                    t.id,
                    s.participant,
                    p.source == Source::Screen,
                    p.last_spoke,
                    t.order,
                    infos,
                ));
            }
        }
        let tracks: Vec<VideoTrack<'_>> = layer_sets
            .iter()
            .map(
                |(id, participant, screen, last_spoke, order, layers)| VideoTrack {
                    id: *id,
                    participant: *participant,
                    screen: *screen,
                    layers,
                    last_spoke: *last_spoke,
                    order: *order,
                },
            )
            .collect();
        let members = r.members.clone();
        let mut requests = Vec::new();
        for idx in members {
            let Some(s) = self.sessions[idx].as_mut() else {
                continue;
            };
            let participant = s.participant;
            let Role::Subscriber(sub) = &mut s.role else {
                continue;
            };
            let rate = |f: &Feed| -> u64 {
                tracks
                    .iter()
                    .find(|t| t.id == f.track)
                    .and_then(|t| t.layers.iter().find(|l| l.layer == f.layer))
                    .map_or(0, |l| l.bitrate_bps)
            };
            let req = SlotRequest {
                participant,
                layout: sub.layout,
                max_height: sub.max_height,
                bwe_bps: None,
                keep_slots: false,
            };
            // What the subscriber would get without a bandwidth limit: what a probe reaches for.
            let mut ideal = vec![None; sub.video.len()];
            allocate::allocate(&tracks, &req, &[], &mut ideal);
            let ideal_bps: u64 = ideal.iter().flatten().map(rate).sum();
            let sending: u64 = sub.prev.iter().flatten().map(rate).sum();
            let budget = sub.estimate.budget(now, sending, ideal_bps);
            // A slot shown before is emptied only once the budget has been short for a while,
            // so a thumbnail does not flicker while the estimate ramps.
            let keep_slots = sub
                .over_since
                .is_none_or(|t| now.saturating_duration_since(t) < EMPTY_AFTER);
            let mut out = vec![None; sub.video.len()];
            let over = allocate::allocate(
                &tracks,
                &SlotRequest {
                    bwe_bps: budget,
                    keep_slots,
                    ..req
                },
                &sub.prev,
                &mut out,
            );
            sub.over_since = if over {
                sub.over_since.or(Some(now))
            } else {
                None
            };
            let fell = sub.estimate.take_fall();
            for (slot, want) in sub.video.iter_mut().zip(&out) {
                if let Some(f) = slot.gate.set_target(*want, now) {
                    requests.push(f);
                    // The link proved too small: the layer it could not carry stops now.
                    if fell {
                        slot.gate.cut_over();
                    }
                }
                if let Some(f) = slot.gate.retry(now) {
                    requests.push(f);
                }
            }
            sub.sending_bps = out.iter().flatten().map(rate).sum();
            if out != sub.prev {
                tracing::debug!(
                    ?budget,
                    sending,
                    now_sending = sub.sending_bps,
                    probing = sub.estimate.probing(),
                    "allocation changed"
                );
            }
            sub.prev = out;

            let mut lines: Vec<Option<TrackId>> = sub.audio.iter().map(|l| l.track).collect();
            select_audio(&audio, participant, &mut lines);
            for (line, t) in sub.audio.iter_mut().zip(lines) {
                line.track = t;
            }
            drain(idx, s, wire, &mut self.events, &mut self.book);
        }
        let lost = self.allocate_recorder(room, &tracks, now, &mut requests);
        for f in requests {
            self.request_keyframe(f, now, wire, true);
        }
        if let Some(f) = lost {
            self.request_keyframe(f, now, wire, false);
        }
    }

    pub(super) fn update_gauges(&self) {
        let mut pubs = 0;
        let mut subs = 0;
        for s in self.sessions.iter().flatten() {
            match s.role {
                Role::Publisher(_) => pubs += 1,
                Role::Subscriber(_) => subs += 1,
            }
        }
        set(&self.counters.rooms, self.rooms.len() as u64);
        set(&self.counters.publishers, pubs);
        set(&self.counters.subscribers, subs);
    }
}
