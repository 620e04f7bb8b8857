//! A room's recording, as the SFU sees it: a subscriber of the relay's own with one video slot,
//! in the `screen` layout (the screen share while one is live, else the last speaker) at the
//! highest layer that arrives, with no ICE, DTLS or SRTP. Its slot is fed by the same
//! allocation, switch gate and rewriter as any slot, so it switches only on keyframes and its
//! timestamps run on across switches; the rewritten packets are assembled into whole VP8
//! frames ([`crate::media::vp8_frames`]) and handed out with their time in the recording. Every
//! publisher's Opus packets are handed out as they arrive, for the shell to mix.
//!
//! Time in the recording is milliseconds since it started: the first video frame is placed
//! at its arrival, later ones by their (rewritten, continuous) RTP timestamps; audio packets
//! carry their arrival, and the mixer places them by their own timestamps.
//!
//! Only VP8 feeds are recorded (WebM carries VP8 here); another codec's packets are skipped. A
//! lost packet holds frames back until a keyframe, which the next tick asks for.

use crate::media::vp8_frames::Vp8Frames;

use super::*;

/// A video frame of the recording: its time in the recording (ms), and the VP8 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFrame {
    pub ms: u64,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

/// A publisher's Opus packet: which track, when it arrived (ms into the recording), its RTP
/// timestamp and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAudio {
    pub voice: TrackId,
    pub ms: u64,
    pub ts: u32,
    pub data: Vec<u8>,
}

/// What a recording gathered since it was last asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    pub video: Vec<RecordedFrame>,
    pub audio: Vec<RecordedAudio>,
}

/// How far (90 kHz ticks) the video's timestamps may part from the frames' arrival: one second.
const MAX_DRIFT_TICKS: u64 = 90_000;

/// Bytes of frames held for the shell at most; past it the oldest go (a shell that stopped
/// taking them has lost the recording anyway).
const MAX_HELD_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub(super) struct Recorder {
    /// A participant of its own: it receives everyone.
    pub(super) participant: ParticipantId,
    start: Instant,
    gate: SlotGate,
    rw: Rewriter,
    prev: Vec<Option<Feed>>,
    frames: Vp8Frames,
    /// The last frame's RTP timestamp and its time in the recording in 90 kHz ticks.
    clock: Option<(u32, u64)>,
    out: std::collections::VecDeque<RecordedFrame>,
    audio: std::collections::VecDeque<RecordedAudio>,
    held_bytes: usize,
    /// The current feed's packets are VP8 (only then is a keyframe worth asking for).
    vp8: bool,
    /// Video is recorded (a meeting); without it (a call) the slot is never fed.
    video: bool,
}

impl Recorder {
    pub(super) fn new(participant: ParticipantId, start: Instant, video: bool) -> Recorder {
        Recorder {
            participant,
            start,
            gate: SlotGate::default(),
            rw: Rewriter::new(0, 0),
            prev: vec![None],
            frames: Vp8Frames::default(),
            clock: None,
            out: std::collections::VecDeque::new(),
            audio: std::collections::VecDeque::new(),
            held_bytes: 0,
            vp8: false,
            video,
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
        if !self.video || self.gate.on_packet(feed, keyframe) == Verdict::Drop {
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
        let arrival = self.ms(now) * 90;
        for f in made {
            let ticks = match self.clock {
                None => arrival,
                Some((last, ticks)) => {
                    let next = ticks + u64::from(f.ts.wrapping_sub(last));
                    // A publisher's timestamps that part from the clock by more than a second
                    // (a jump, a restart) are not followed: the frame is placed by its
                    // arrival, never back in time.
                    if next.abs_diff(arrival) > MAX_DRIFT_TICKS {
                        arrival.max(ticks + 90)
                    } else {
                        next
                    }
                }
            };
            self.clock = Some((f.ts, ticks));
            self.hold(f.data.len());
            self.out.push_back(RecordedFrame {
                ms: ticks / 90,
                keyframe: f.keyframe,
                data: f.data,
            });
        }
    }

    /// A publisher's Opus packet on `track`.
    pub(super) fn on_audio(&mut self, track: TrackId, pkt: &RtpPacket, now: Instant) {
        self.hold(pkt.payload.len());
        self.audio.push_back(RecordedAudio {
            voice: track,
            ms: self.ms(now),
            ts: pkt.header.timestamp,
            data: pkt.payload.to_vec(),
        });
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Counts `len` more bytes held; past the limit the oldest video frames and audio go.
    fn hold(&mut self, len: usize) {
        self.held_bytes += len;
        while self.held_bytes > MAX_HELD_BYTES {
            let old = match (self.out.front(), self.audio.front()) {
                (Some(_), _) => self.out.pop_front().map(|f| f.data.len()),
                (None, Some(_)) => self.audio.pop_front().map(|a| a.data.len()),
                (None, None) => None,
            };
            let Some(n) = old else { break };
            self.held_bytes -= n;
        }
    }

    fn take(&mut self) -> Recorded {
        self.held_bytes = 0;
        Recorded {
            video: std::mem::take(&mut self.out).into(),
            audio: std::mem::take(&mut self.audio).into(),
        }
    }
}

impl Core {
    /// Starts recording `room`: its voices, and its video when `video`. `NotFound` if the
    /// room has no session here.
    pub fn start_recording(
        &mut self,
        room: &str,
        video: bool,
        now: Instant,
        wire: &mut dyn Wire,
    ) -> Result<(), MediaError> {
        let r = self.rooms.get_mut(room).ok_or(MediaError::NotFound)?;
        // Always a recorder of its own: one left from an earlier recording (whose writer
        // ended before the worker noticed) has that recording's clock.
        let p = match &r.recorder {
            Some(old) => old.participant,
            None => {
                r.next_participant += 1;
                r.next_participant - 1
            }
        };
        r.recorder = Some(Box::new(Recorder::new(p, now, video)));
        self.reallocate(room, now, wire);
        Ok(())
    }

    /// What `room` recorded since the last call; `None` if it is not being recorded (or is
    /// gone).
    pub fn take_recorded(&mut self, room: &str) -> Option<Recorded> {
        Some(self.rooms.get_mut(room)?.recorder.as_mut()?.take())
    }

    /// Stops recording `room`: what was not taken yet.
    pub fn stop_recording(&mut self, room: &str) -> Option<Recorded> {
        Some(self.rooms.get_mut(room)?.recorder.take()?.take())
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
        let rec = self
            .rooms
            .get_mut(room)?
            .recorder
            .as_mut()
            .filter(|r| r.video)?;
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
