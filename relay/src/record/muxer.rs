//! A recording's file, made from what the SFU's recorder gathers: the voices mixed
//! ([`super::mix`]), the video frames (meetings) in time order with the audio, written as WebM
//! (`meeting`) or Ogg Opus (`audio`). Sans-IO: bytes of whole blocks or pages come out, for the
//! caller to store as they come; the header is a piece of its own, written again when the video's
//! size becomes known and, with the duration, at the end.
//!
//! Audio is mixed [`LATENCY_MS`] behind the clock (the jitter a voice may have), and video is
//! held as long and until the audio before it is mixed, so the two tracks are written in one
//! time order.

use std::collections::VecDeque;

use super::mix::{MixError, Mixer};
use super::ogg::OggOpusWriter;
use super::webm::{Tracks, WebmWriter};
use crate::media::sfu::{Recorded, RecordedFrame};
use crate::media::vp8_frames::keyframe_size;

/// How far behind the clock the file is written.
pub const LATENCY_MS: u64 = 300;

/// What is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WebM: the active speaker's (or the screen share's) video and the mixed audio.
    Meeting,
    /// Ogg Opus: the mixed audio.
    Audio,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Meeting => "meeting",
            Kind::Audio => "audio",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "meeting" => Some(Kind::Meeting),
            "audio" => Some(Kind::Audio),
            _ => None,
        }
    }

    /// The file name's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Meeting => "webm",
            Kind::Audio => "ogg",
        }
    }
}

/// Video frames held for their time at most (about ten seconds at 30 frames a second).
const MAX_WAITING_FRAMES: usize = 300;

/// The video size a meeting's header names until a keyframe tells.
const DEFAULT_SIZE: (u32, u32) = (640, 480);

enum Container {
    Webm(WebmWriter, Tracks),
    Ogg(OggOpusWriter),
}

/// A recording's file in the making; see the module documentation.
pub struct Muxer {
    mixer: Mixer,
    container: Container,
    video: VecDeque<RecordedFrame>,
    header: Vec<u8>,
    header_changed: bool,
    video_frames: u64,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("mixer", &self.mixer)
            .field("video_frames", &self.video_frames)
            .finish()
    }
}

impl Muxer {
    pub fn new(kind: Kind) -> Result<Muxer, MixError> {
        let mixer = Mixer::new()?;
        let (container, header) = match kind {
            Kind::Meeting => {
                let tracks = Tracks {
                    width: DEFAULT_SIZE.0,
                    height: DEFAULT_SIZE.1,
                    channels: 1,
                    pre_skip: mixer.pre_skip(),
                };
                let mut w = WebmWriter::new(tracks);
                let header = w.take();
                (Container::Webm(w, tracks), header)
            }
            Kind::Audio => {
                let serial = u32::from_le_bytes(crate::random_bytes());
                let mut w = OggOpusWriter::new(serial, 1, mixer.pre_skip());
                let header = w.take();
                (Container::Ogg(w), header)
            }
        };
        Ok(Muxer {
            mixer,
            container,
            video: VecDeque::new(),
            header,
            header_changed: false,
            video_frames: 0,
        })
    }

    /// The file's first piece as it stands now.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The header, once, after it changed (the video's size became known).
    pub fn take_header_change(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.header_changed).then(|| self.header.clone())
    }

    /// What the recorder gathered.
    pub fn push(&mut self, r: Recorded) {
        for a in r.audio {
            self.mixer.push(a.voice, a.ms, a.ts, &a.data);
        }
        if let Container::Webm(_, tracks) = &mut self.container {
            for f in r.video {
                if f.keyframe
                    && let Some((w, h)) = keyframe_size(&f.data)
                    && (w, h) != (tracks.width, tracks.height)
                    && self.video_frames == 0
                {
                    tracks.width = w;
                    tracks.height = h;
                    self.header = WebmWriter::header(*tracks, None);
                    self.header_changed = true;
                }
                self.video_frames += 1;
                self.video.push_back(f);
            }
        }
    }

    /// Writes what is due at `now_ms` into the recording: the bytes of whole blocks or pages.
    pub fn advance(&mut self, now_ms: u64) -> Vec<u8> {
        self.write_until(now_ms.saturating_sub(LATENCY_MS))
    }

    fn write_until(&mut self, until_ms: u64) -> Vec<u8> {
        let audio = self.mixer.mix_until(until_ms);
        // Video goes no further than the audio mixed: a keyframe starts a cluster, and audio
        // mixed later with an earlier time would have to be moved to the cluster's start,
        // overlapping the audio after it (players then see two frames of one time).
        let video_until = until_ms.min(self.mixer.mixed_ms());
        match &mut self.container {
            Container::Webm(w, _) => {
                let mut audio = audio.into_iter().peekable();
                loop {
                    // A frame is due at its time, or at once when too many wait (a clock
                    // that ran ahead must not hold the rest back without bound).
                    let crowded = self.video.len() > MAX_WAITING_FRAMES;
                    // At the time the writer gives it: a burst of frames is spread out.
                    let next_video = self
                        .video
                        .front()
                        .map(|f| w.video_ms(f.ms))
                        .filter(|&ms| ms <= video_until || crowded);
                    let next_audio = audio.peek().map(|a| a.0);
                    match (next_video, next_audio) {
                        (Some(v), a) if a.is_none_or(|a| v <= a) => {
                            if let Some(f) = self.video.pop_front() {
                                w.video(f.ms, f.keyframe, &f.data);
                            }
                        }
                        (_, Some(_)) => {
                            if let Some((ms, p)) = audio.next() {
                                w.audio(ms, &p);
                            }
                        }
                        (_, None) => break,
                    }
                }
                w.take()
            }
            Container::Ogg(w) => {
                for (_, p) in audio {
                    w.packet(&p);
                }
                w.take()
            }
        }
    }

    /// Writes everything up to `now_ms` (nothing is held back any more) and closes the stream.
    pub fn finish(&mut self, now_ms: u64) -> Vec<u8> {
        let mut out = self.write_until(now_ms);
        // Video gathered past the last audio frame.
        if let Container::Webm(w, _) = &mut self.container {
            while let Some(f) = self.video.pop_front() {
                w.video(f.ms, f.keyframe, &f.data);
            }
            out.extend(w.take());
        }
        if let Container::Ogg(w) = &mut self.container {
            w.finish();
            out.extend(w.take());
        }
        out
    }

    /// The stretch written so far, in ms (the audio runs from the start without a gap).
    pub fn duration_ms(&self) -> u64 {
        self.mixer.mixed_ms()
    }

    /// The header to close the file with: for WebM with its duration, `ms` (what was stored).
    pub fn final_header(&self, ms: u64) -> Vec<u8> {
        match &self.container {
            Container::Webm(_, tracks) => WebmWriter::header(*tracks, Some(ms as f64)),
            Container::Ogg(_) => self.header.clone(),
        }
    }

    /// Video frames written or waiting.
    pub fn video_frames(&self) -> u64 {
        self.video_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::webm::{AUDIO_TRACK, VIDEO_TRACK, walk};

    /// The times of each track's blocks in a WebM file, in the order written.
    fn block_times(file: &[u8]) -> (Vec<u64>, Vec<u64>) {
        let (mut video, mut audio) = (Vec::new(), Vec::new());
        walk(file, |track, ms| match track {
            VIDEO_TRACK => video.push(ms),
            AUDIO_TRACK => audio.push(ms),
            _ => {}
        });
        (video, audio)
    }

    #[test]
    fn a_keyframe_due_before_the_audio_is_mixed_waits_for_it() {
        let mut m = Muxer::new(Kind::Meeting).unwrap();
        let mut file = m.header().to_vec();
        m.push(Recorded {
            video: vec![RecordedFrame {
                ms: 13,
                keyframe: true,
                data: vec![0; 40],
            }],
            audio: Vec::new(),
        });
        // The clock says 15 ms are due: less than one audio frame, which is 20 ms.
        file.extend(m.advance(LATENCY_MS + 15));
        file.extend(m.advance(LATENCY_MS + 100));
        let (video, audio) = block_times(&file);
        assert_eq!(video, [13]);
        // Every audio frame at its own time, 20 ms apart: none moved to the keyframe's cluster.
        assert_eq!(audio, [0, 20, 40, 60, 80]);
    }

    #[test]
    fn a_keyframe_moved_later_by_the_spacing_of_a_burst_still_waits_for_the_audio() {
        let mut m = Muxer::new(Kind::Meeting).unwrap();
        let mut file = m.header().to_vec();
        // Two frames of one time: the writer puts the second, a keyframe, 5 ms after the first,
        // past the audio frame that begins at 80 ms.
        let frame = |keyframe| RecordedFrame {
            ms: 78,
            keyframe,
            data: vec![0; 40],
        };
        m.push(Recorded {
            video: vec![frame(false), frame(true)],
            audio: Vec::new(),
        });
        file.extend(m.advance(LATENCY_MS + 95));
        file.extend(m.advance(LATENCY_MS + 140));
        let (video, audio) = block_times(&file);
        assert_eq!(video, [78, 83]);
        assert_eq!(audio, [0, 20, 40, 60, 80, 100, 120]);
    }
}
