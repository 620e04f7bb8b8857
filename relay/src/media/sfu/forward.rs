//! Forwarding: a publisher's RTP packet to the subscribers' slots and audio lines, each copy
//! rewritten (SSRC, sequence number, timestamp, picture ids) and written to str0m; keyframe
//! requests towards the layer that feeds a slot.

use super::sessions::video_codec;
use super::*;

impl Core {
    /// A publisher's packet: account it, then offer it to every subscriber slot in the room.
    pub(super) fn on_rtp(&mut self, idx: usize, pkt: RtpPacket, now: Instant) {
        bump(&self.counters.packets_received, 1);
        let Core {
            sessions,
            rooms,
            counters,
            book,
            written,
            ..
        } = self;
        let Some(s) = sessions[idx].as_mut() else {
            return;
        };
        let Role::Publisher(p) = &mut s.role else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let Some((ti, li)) = locate(p, &mut s.rtc, ssrc) else {
            counters.dropped(DropReason::Malformed);
            return;
        };
        let Some(&(_, codec, clock)) = p.codecs.iter().find(|c| c.0 == pkt.header.payload_type)
        else {
            counters.dropped(DropReason::CodecMismatch);
            return;
        };
        let track = &mut p.tracks[ti];
        let layer = &mut track.layers[li];
        layer.window_bytes += pkt.payload.len() as u64;
        layer.last_rx = Some(now);
        let mut keyframe = false;
        if let Some(vc) = video_codec(codec) {
            keyframe = is_keyframe(vc, &pkt.payload);
            if keyframe && vc == VideoCodec::Vp8 {
                layer.height = vp8_keyframe_height(&pkt.payload).or(layer.height);
            }
        }
        let mut ext = ExtensionValues::default();
        if track.kind == MediaKind::Audio
            && let Some(level) = pkt.header.ext_vals.audio_level
        {
            track.loudness.update(level);
            if track.loudness.speaking() {
                p.last_spoke = Some(now);
            }
            ext.audio_level = Some(level);
            ext.voice_activity = pkt.header.ext_vals.voice_activity;
        }
        let feed = Feed {
            track: track.id,
            layer: li as u8,
        };
        let kind = track.kind;
        let participant = s.participant;
        let Some(room) = rooms.get_mut(&s.room) else {
            return;
        };
        let ticket = book.open(now);
        for &sidx in &room.members {
            if sidx == idx {
                continue;
            }
            let Some(sub_s) = sessions[sidx].as_mut() else {
                continue;
            };
            if sub_s.participant == participant {
                continue;
            }
            let Role::Subscriber(sub) = &mut sub_s.role else {
                continue;
            };
            let mut wrote = false;
            if kind == MediaKind::Video {
                for slot in &mut sub.video {
                    let verdict = slot.gate.on_packet(feed, keyframe);
                    if verdict == Verdict::Drop {
                        continue;
                    }
                    if verdict == Verdict::ForwardSwitched {
                        bump(&counters.layer_switches, 1);
                        tracing::debug!(track = feed.track, layer = feed.layer, "slot switched");
                    }
                    let copied = write(
                        &mut sub_s.rtc,
                        slot.ssrc,
                        &slot.pts,
                        &mut slot.rw,
                        Some(&mut slot.pics),
                        codec,
                        clock,
                        &pkt,
                        ExtensionValues::default(),
                        now,
                        counters,
                    );
                    if copied {
                        book.wrote(ticket, &mut slot.pending);
                        *written += 1;
                    }
                    wrote |= copied;
                }
            } else {
                for line in sub.audio.iter_mut().filter(|l| l.track == Some(feed.track)) {
                    let copied = write(
                        &mut sub_s.rtc,
                        line.ssrc,
                        &line.pts,
                        &mut line.rw,
                        None,
                        codec,
                        clock,
                        &pkt,
                        ext.clone(),
                        now,
                        counters,
                    );
                    if copied {
                        book.wrote(ticket, &mut line.pending);
                        *written += 1;
                    }
                    wrote |= copied;
                }
            }
            // A written packet leaves on the session's next timeout (str0m's pacer learns of
            // it there), which the caller runs before it next waits: draining now would only
            // compute that timeout.
            if wrote {
                sub_s.next_timeout = now;
            }
        }
        book.sealed(ticket);
        if let Some(rec) = room.recorder.as_mut() {
            if kind == MediaKind::Video {
                rec.on_packet(feed, keyframe, codec, clock, &pkt, now);
            } else if codec == Codec::Opus {
                rec.on_audio(feed.track, &pkt, now);
            }
        }
    }

    /// Ask the publisher of `feed` for a keyframe on that layer, at most once per
    /// [`PLI_THROTTLE`] (`force` for a switch, which must not wait for a subscriber's PLI).
    pub(super) fn request_keyframe(
        &mut self,
        feed: Feed,
        now: Instant,
        wire: &mut dyn Wire,
        force: bool,
    ) {
        let (idx, generation, no) = track_parts(feed.track);
        let Some(s) = self.sessions.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        if s.generation != generation {
            return;
        }
        let Role::Publisher(p) = &mut s.role else {
            return;
        };
        let Some(layer) = p
            .tracks
            .get_mut(no)
            .and_then(|t| t.layers.get_mut(usize::from(feed.layer)))
        else {
            return;
        };
        let Some(ssrc) = layer.ssrc else {
            return;
        };
        let recent = layer
            .last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < PLI_THROTTLE);
        if recent && !force {
            return;
        }
        layer.last_pli = Some(now);
        {
            let mut api = s.rtc.direct_api();
            if let Some(rx) = api.stream_rx(&ssrc) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                bump(&self.counters.keyframe_requests, 1);
                tracing::debug!(layer = feed.layer, force, "keyframe requested");
            }
        }
        drain(idx, s, wire, &mut self.events, &mut self.book);
    }
}

impl Subscriber {
    /// The line sending as `ssrc` transmitted an RTP packet: its oldest queued copy left.
    /// Retransmissions and padding go out under the RTX SSRC and match no line; a peer that
    /// negotiated no RTX gets resends under the line's own SSRC, and each then releases a
    /// queued copy early (that datagram's delay is understated, only under loss).
    pub(super) fn copy_left(&mut self, ssrc: u32, book: &mut Book) {
        let line = self
            .video
            .iter_mut()
            .find(|v| *v.ssrc == ssrc)
            .map(|v| &mut v.pending)
            .or_else(|| {
                self.audio
                    .iter_mut()
                    .find(|a| *a.ssrc == ssrc)
                    .map(|a| &mut a.pending)
            });
        if let Some(line) = line {
            book.transmitted(line);
        }
    }
}

/// Find the track and layer an incoming SSRC belongs to; the first packet of an SSRC binds it
/// by the mid and rid str0m mapped it to.
pub(super) fn locate(p: &mut Publisher, rtc: &mut Rtc, ssrc: Ssrc) -> Option<(usize, usize)> {
    for (ti, t) in p.tracks.iter().enumerate() {
        if let Some(li) = t.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
            return Some((ti, li));
        }
    }
    let (mid, rid) = {
        let mut api = rtc.direct_api();
        let rx = api.stream_rx(&ssrc)?;
        (rx.mid(), rx.rid())
    };
    let ti = p.tracks.iter().position(|t| t.mid == mid)?;
    let t = &mut p.tracks[ti];
    let li = match t
        .layers
        .iter()
        .position(|l| l.rid == rid && l.ssrc.is_none())
    {
        Some(li) => li,
        // A rid the offer did not list, or a new SSRC for a layer (encoder restart): rebind.
        None => match t.layers.iter().position(|l| l.rid == rid) {
            Some(li) => li,
            None if t.layers.len() < 8 => {
                t.layers.push(Layer::new(rid));
                t.layers.len() - 1
            }
            None => return None,
        },
    };
    t.layers[li].ssrc = Some(ssrc);
    Some((ti, li))
}

/// str0m's VP8 descriptor patch for `new`, or `None` if it refuses the descriptor.
pub(super) fn vp8_patch(payload: &[u8], new: &NewIds) -> Option<Vp8Patch> {
    let mut b = Vp8Descriptor::parse(payload).ok()?.patch();
    if let (Some((_, wide)), Some(v)) = (new.fields.picture_id, new.picture_id) {
        b = b.picture_id(if wide { v & 0x7fff } else { v & 0x7f });
    }
    if let Some(v) = new.tl0picidx {
        b = b.tl0_pic_idx(v);
    }
    b.build().ok()
}

/// Rewrite and hand one packet to a subscriber's stream. True if written.
#[allow(clippy::too_many_arguments)]
pub(super) fn write(
    rtc: &mut Rtc,
    ssrc: Ssrc,
    pts: &[(Codec, Pt)],
    rw: &mut Rewriter,
    pics: Option<&mut PictureIds>,
    codec: Codec,
    clock: u32,
    pkt: &RtpPacket,
    ext: ExtensionValues,
    now: Instant,
    counters: &WorkerCounters,
) -> bool {
    let Some(&(_, pt)) = pts.iter().find(|(c, _)| *c == codec) else {
        counters.dropped(DropReason::CodecMismatch);
        return false;
    };
    let Some(out) = rw.rewrite(
        *pkt.header.ssrc,
        *pkt.seq_no,
        pkt.header.timestamp,
        clock,
        now,
    ) else {
        counters.dropped(DropReason::Stale);
        return false;
    };
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx(&ssrc) else {
        return false;
    };
    // The payload is shared by every copy; renumbered pictures need their own bytes.
    let new_ids = match (pics, video_codec(codec)) {
        (Some(pics), Some(vc)) => pics
            .rewrite(vc, &pkt.payload, out.switched)
            .map(|n| (vc, n)),
        _ => None,
    };
    let mut w = RtpWrite::new(pt, out.seq.into(), out.ts, now, pkt.payload.clone());
    match new_ids {
        // str0m patches VP8 descriptors while serialising: no copy.
        Some((VideoCodec::Vp8, new)) => {
            if let Some(patch) = vp8_patch(&pkt.payload, &new) {
                w = w.vp8_patch(patch);
            }
        }
        Some((_, new)) => {
            let mut own = pkt.payload.to_vec();
            new.apply(&mut own);
            w = RtpWrite::new(pt, out.seq.into(), out.ts, now, own);
        }
        None => {}
    }
    tx.write_rtp(w.marker(pkt.header.marker).nackable(true).ext_vals(ext));
    bump(&counters.packets_forwarded, 1);
    bump(&counters.bytes_forwarded, pkt.payload.len() as u64);
    true
}
