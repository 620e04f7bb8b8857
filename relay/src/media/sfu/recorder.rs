//! A room's recording, as the SFU sees it: a subscriber of the relay's own with one video slot,
//! in the `screen` layout (the screen share while one is live, else the last speaker) at the
//! highest layer that arrives, with no ICE, DTLS or SRTP. Its slot is fed by the same
//! allocation, switch gate and rewriter as any slot, so it switches only on keyframes and its
//! timestamps run on across switches; the rewritten packets are assembled into whole VP8
//! frames ([`crate::record::vp8`]) and handed out with their time in the recording.
//!
//! Only VP8 feeds are recorded (WebM carries VP8 here); another codec's packets are skipped. A
//! lost packet holds frames back until a keyframe, which the next tick asks for.

use crate::record::vp8::Vp8Frames;

use super::*;

/// A frame of the recording: milliseconds since its first frame, and the VP8 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFrame {
    pub ms: u64,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

/// Bytes of frames held for the shell at most; past it the oldest go (a shell that stopped
/// taking them has lost the recording anyway).
const MAX_HELD_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub(super) struct Recorder {
    /// A participant of its own: it receives everyone.
    pub(super) participant: ParticipantId,
    gate: SlotGate,
    rw: Rewriter,
    prev: Vec<Option<Feed>>,
    frames: Vp8Frames,
    /// The last frame's RTP timestamp and the 90 kHz ticks since the first.
    clock: Option<(u32, u64)>,
    out: std::collections::VecDeque<RecordedFrame>,
    held_bytes: usize,
    /// The current feed's packets are VP8 (only then is a keyframe worth asking for).
    vp8: bool,
}

impl Recorder {
    pub(super) fn new(participant: ParticipantId) -> Recorder {
        Recorder {
            participant,
            gate: SlotGate::default(),
            rw: Rewriter::new(0, 0),
            prev: vec![None],
            frames: Vp8Frames::default(),
            clock: None,
            out: std::collections::VecDeque::new(),
            held_bytes: 0,
            vp8: false,
        }
    }

    /// A publisher's video packet of `feed`.
    pub(super) fn on_packet(
        &mut self,
        feed: Feed,
        keyframe: bool,
        codec: Codec,
        clock_rate: u32,
        pkt: &RtpPacket,
        now: Instant,
    ) {
        if self.gate.on_packet(feed, keyframe) == Verdict::Drop {
            return;
        }
        self.vp8 = codec == Codec::Vp8;
        if !self.vp8 {
            return;
        }
        let Some(out) = self.rw.rewrite(
            *pkt.header.ssrc,
            *pkt.seq_no,
            pkt.header.timestamp,
            clock_rate,
            now,
        ) else {
            return;
        };
        let made = self
            .frames
            .push(out.seq as u16, out.ts, pkt.header.marker, &pkt.payload);
        for f in made {
            let ticks = match self.clock {
                None => 0,
                Some((last, ticks)) => ticks + u64::from(f.ts.wrapping_sub(last)),
            };
            self.clock = Some((f.ts, ticks));
            self.held_bytes += f.data.len();
            while self.held_bytes > MAX_HELD_BYTES {
                let Some(old) = self.out.pop_front() else {
                    break;
                };
                self.held_bytes -= old.data.len();
            }
            self.out.push_back(RecordedFrame {
                ms: ticks / 90,
                keyframe: f.keyframe,
                data: f.data,
            });
        }
    }
}

impl Core {
    /// Starts recording `room`'s video. `NotFound` if the room has no session here.
    pub fn start_recording(
        &mut self,
        room: &str,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let r = self.rooms.get_mut(room).ok_or(MediaError::NotFound)?;
        if r.recorder.is_none() {
            let p = r.next_participant;
            r.next_participant += 1;
            r.recorder = Some(Box::new(Recorder::new(p)));
        }
        self.reallocate(room, now, wire);
        Ok(())
    }

    /// The frames recorded in `room` since the last call; `None` if it is not being recorded
    /// (or is gone).
    pub fn take_recorded(&mut self, room: &str) -> Option<Vec<RecordedFrame>> {
        let rec = self.rooms.get_mut(room)?.recorder.as_mut()?;
        rec.held_bytes = 0;
        Some(std::mem::take(&mut rec.out).into())
    }

    /// Stops recording `room`: the frames not taken yet.
    pub fn stop_recording(&mut self, room: &str) -> Option<Vec<RecordedFrame>> {
        let rec = self.rooms.get_mut(room)?.recorder.take()?;
        Some(rec.out.into())
    }

    /// The recorder's slot, allocated as a one-slot `screen` subscriber without a bandwidth
    /// limit: the keyframes its choice needs go to `requests`; the one a loss needs (asked for
    /// within the usual throttle) is returned.
    pub(super) fn allocate_recorder(
        &mut self,
        room: &str,
        tracks: &[VideoTrack<'_>],
        now: Instant,
        requests: &mut Vec<Feed>,
    ) -> Option<Feed> {
        let rec = self.rooms.get_mut(room)?.recorder.as_mut()?;
        let req = SlotRequest {
            participant: rec.participant,
            layout: Layout::Screen,
            max_height: None,
            bwe_bps: None,
            keep_slots: false,
        };
        let mut out = vec![None];
        allocate::allocate(tracks, &req, &rec.prev, &mut out);
        if let Some(f) = rec.gate.set_target(out[0], now) {
            requests.push(f);
        }
        if let Some(f) = rec.gate.retry(now) {
            requests.push(f);
        }
        rec.prev = out;
        rec.gate
            .current()
            .filter(|_| rec.vp8 && rec.frames.wants_keyframe())
    }

    /// The recorder's slot forgets a departed publisher's track.
    pub(super) fn recorder_forgets(&mut self, room: &str, track: TrackId) {
        if let Some(rec) = self.rooms.get_mut(room).and_then(|r| r.recorder.as_mut()) {
            rec.gate.forget_track(track);
        }
    }
}
