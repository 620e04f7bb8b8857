//! Recording: the file formats a recording is written in, sans-IO and streaming, so that bytes
//! go to the file store as the meeting runs and a file cut short still plays.
//!
//! - [`webm`]: WebM with one VP8 and one Opus track (meetings);
//! - [`ogg`]: Ogg Opus, RFC 7845 (voice calls);
//! - [`mix`]: the voices of a room decoded, mixed and encoded again (libopus);
//! - [`muxer`]: a recording's file from what the SFU's recorder gathers;

pub mod mix;
pub mod muxer;
pub mod ogg;
pub mod webm;
