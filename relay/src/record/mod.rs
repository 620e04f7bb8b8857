//! Recording: the file formats a recording is written in, sans-IO and streaming, so that bytes
//! go to the file store as the meeting runs and a file cut short still plays.
//!
//! - [`webm`]: WebM with one VP8 and one Opus track (meetings);
//! - [`ogg`]: Ogg Opus, RFC 7845 (voice calls);
//! - [`mix`]: the voices of a room decoded, mixed and encoded again (libopus);
//! - [`muxer`]: a recording's file from what the SFU's recorder gathers;
//! - [`vp8`]: whole VP8 frames from a stream's RTP packets, held back after a loss until the
//!   next keyframe.

pub mod mix;
pub mod muxer;
pub mod ogg;
pub mod vp8;
pub mod webm;
