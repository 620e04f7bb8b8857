//! Keyframe detection on RTP payloads, without decoding.
//!
//! Job: tell whether an RTP packet starts a keyframe (a frame a decoder can start from), so a
//! slot can switch to a new source or layer without showing a corrupt frame, and learn the
//! frame height VP8 keyframes carry, so layers can be chosen by size.
//!
//! Invariants: every function here takes arbitrary bytes from the network and never panics,
//! never allocates and never reads out of bounds (all indexing goes through `get`). A truncated
//! or malformed payload is simply "not a keyframe".

/// The video codecs the relay can gate switches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8, RFC 7741 payload format.
    Vp8,
    /// VP9, RFC 9628 payload format.
    Vp9,
    /// H.264, RFC 6184 payload format (packetization mode 0 or 1).
    H264,
}

/// True if `payload` (the RTP payload, header stripped) is the first packet of a keyframe.
pub fn is_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_keyframe(payload).is_some(),
        VideoCodec::Vp9 => vp9_keyframe(payload),
        VideoCodec::H264 => h264_keyframe(payload),
    }
}

/// The frame height carried by a VP8 keyframe's first packet, if this packet is one and is long
/// enough to carry it.
pub fn vp8_keyframe_height(payload: &[u8]) -> Option<u32> {
    let frame = vp8_keyframe(payload)?;
    // Keyframe header (RFC 6386 9.1): 3-byte frame tag, start code 9d 01 2a, then 16-bit
    // little-endian width and height whose top two bits are the scaling mode.
    if frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    (h > 0).then_some(u32::from(h))
}

/// The VP8 payload descriptor (RFC 7741, 4.2) at the start of an RTP payload: its length, and
/// whether the packet starts a frame (S set, partition 0). `None` if it is cut short.
pub fn vp8_descriptor(payload: &[u8]) -> Option<(usize, bool)> {
    let b0 = *payload.first()?;
    let extended = b0 & 0x80 != 0;
    let starts = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut i = 1;
    if extended {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 bits, or 15 bits when its M bit is set.
            let m = *payload.get(i)? & 0x80 != 0;
            i += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    (i <= payload.len()).then_some((i, starts))
}

/// If `payload` starts a VP8 keyframe, the VP8 frame bytes after the payload descriptor.
fn vp8_keyframe(payload: &[u8]) -> Option<&[u8]> {
    let (i, starts) = vp8_descriptor(payload)?;
    if !starts {
        return None;
    }
    let frame = payload.get(i..)?;
    // Inverse keyframe flag: P = 0 means keyframe.
    let tag = *frame.first()?;
    (tag & 0x01 == 0).then_some(frame)
}

fn vp9_keyframe(payload: &[u8]) -> bool {
    // Descriptor byte 0: I P L F B E V Z. A keyframe is a frame that is not inter-picture
    // predicted (P clear), seen on its first packet (B set).
    let Some(&b0) = payload.first() else {
        return false;
    };
    let inter_predicted = b0 & 0x40 != 0;
    let begin = b0 & 0x08 != 0;
    begin && !inter_predicted
}

const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

fn h264_nal_is_key(nal_type: u8) -> bool {
    nal_type == H264_IDR || nal_type == H264_SPS
}

fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    match b0 & 0x1f {
        t @ 1..=23 => h264_nal_is_key(t),
        H264_STAP_A => {
            // Aggregation: (16-bit size, NAL unit) repeated after the one-byte header.
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if size == 0 {
                    return false;
                }
                let nal_header = rest[2];
                if h264_nal_is_key(nal_header & 0x1f) {
                    return true;
                }
                let Some(next) = rest.get(2 + size..) else {
                    return false;
                };
                rest = next;
            }
            false
        }
        H264_FU_A => {
            // Fragment: only its first fragment (S bit) starts the NAL unit.
            let Some(&fu) = payload.get(1) else {
                return false;
            };
            fu & 0x80 != 0 && h264_nal_is_key(fu & 0x1f)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // VP8 keyframe of 640x360: descriptor (X=1,S=1) with 15-bit picture id, then the frame
    // tag with P=0, start code and dimensions.
    const VP8_KEY: &[u8] = &[
        0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
    ];

    #[test]
    fn table() {
        let cases: &[(VideoCodec, &[u8], bool)] = &[
            (VideoCodec::Vp8, VP8_KEY, true),
            // Minimal descriptor, S=1 partition 0, P=0.
            (VideoCodec::Vp8, &[0x10, 0x00], true),
            // Interframe: P=1.
            (VideoCodec::Vp8, &[0x10, 0x01], false),
            // Not the start of a partition.
            (VideoCodec::Vp8, &[0x00, 0x00], false),
            // Partition 1.
            (VideoCodec::Vp8, &[0x11, 0x00], false),
            // X set, I set with 7-bit picture id, L and T set: three extra bytes, then P=0.
            (VideoCodec::Vp8, &[0x90, 0xe0, 0x05, 0x01, 0x02, 0x00], true),
            (
                VideoCodec::Vp8,
                &[0x90, 0xe0, 0x05, 0x01, 0x02, 0x01],
                false,
            ),
            // Truncated descriptors.
            (VideoCodec::Vp8, &[0x90, 0xe0, 0x05], false),
            (VideoCodec::Vp8, &[0x90], false),
            (VideoCodec::Vp8, &[], false),
            // VP9: B set, P clear.
            (VideoCodec::Vp9, &[0x08], true),
            (VideoCodec::Vp9, &[0x88, 0x12], true),
            // P set.
            (VideoCodec::Vp9, &[0x48], false),
            // Not beginning of frame.
            (VideoCodec::Vp9, &[0x00], false),
            (VideoCodec::Vp9, &[], false),
            // H.264 single NAL units.
            (VideoCodec::H264, &[0x65, 0x88], true),
            (VideoCodec::H264, &[0x67, 0x42], true),
            (VideoCodec::H264, &[0x68, 0xce], false), // PPS
            (VideoCodec::H264, &[0x41, 0x9a], false), // non-IDR slice
            // STAP-A carrying SPS.
            (VideoCodec::H264, &[0x78, 0x00, 0x02, 0x67, 0x42], true),
            // STAP-A carrying a PPS then an IDR.
            (
                VideoCodec::H264,
                &[0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x65, 0x88],
                true,
            ),
            // STAP-A with only non-key NALs.
            (VideoCodec::H264, &[0x78, 0x00, 0x02, 0x41, 0x9a], false),
            // STAP-A whose size runs past the end.
            (VideoCodec::H264, &[0x78, 0xff, 0xff, 0x41], false),
            (VideoCodec::H264, &[0x78, 0x00, 0x00, 0x65], false),
            // FU-A start of IDR, middle of IDR, start of non-IDR.
            (VideoCodec::H264, &[0x7c, 0x85, 0x00], true),
            (VideoCodec::H264, &[0x7c, 0x05, 0x00], false),
            (VideoCodec::H264, &[0x7c, 0x81, 0x00], false),
            (VideoCodec::H264, &[0x7c], false),
            (VideoCodec::H264, &[], false),
        ];
        for (i, (codec, payload, want)) in cases.iter().enumerate() {
            assert_eq!(
                is_keyframe(*codec, payload),
                *want,
                "case {i}: {codec:?} {payload:02x?}"
            );
        }
    }

    #[test]
    fn vp8_height() {
        assert_eq!(vp8_keyframe_height(VP8_KEY), Some(360));
        assert_eq!(vp8_keyframe_height(&[0x10, 0x00]), None);
        assert_eq!(vp8_keyframe_height(&VP8_KEY[..VP8_KEY.len() - 1]), None);
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // Every input of up to two bytes, plus a spread of longer ones.
        let mut buf = [0u8; 2];
        for len in 0..=2 {
            for n in 0..(1u32 << (8 * len)) {
                for (i, b) in buf.iter_mut().enumerate().take(len) {
                    *b = (n >> (8 * i)) as u8;
                }
                for codec in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264] {
                    let _ = is_keyframe(codec, &buf[..len]);
                }
                let _ = vp8_keyframe_height(&buf[..len]);
            }
        }
        let mut state = 0x2545_f491_u32;
        let mut long = [0u8; 64];
        for _ in 0..200_000 {
            for b in long.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *b = state as u8;
            }
            let len = (state as usize) % long.len();
            for codec in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264] {
                let _ = is_keyframe(codec, &long[..len]);
            }
            let _ = vp8_keyframe_height(&long[..len]);
        }
    }
}
