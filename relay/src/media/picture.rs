//! Picture-id continuity across switches, for VP8 (RFC 7741) and VP9 (RFC 9628) payloads.
//!
//! Job: VP8 and VP9 payload descriptors number pictures (PictureID, 7 or 15 bits) and, with
//! temporal layers, base-layer pictures (TL0PICIDX, 8 bits). A receiver uses them to tell a
//! missing picture from a reordered one. When a slot switches source or layer, the new stream's
//! numbers have nothing to do with the old one's: a jump back reads as a stale picture, a jump
//! forward as many lost ones. [`PictureIds`] renumbers both fields so each slot's outgoing
//! numbers continue from the last sent, as RTP sequence numbers do in [`super::rewrite`].
//!
//! The payload is shared by every subscriber's copy, so it is not changed here: [`PictureIds`]
//! answers the new values ([`NewIds`]), and the caller applies them to its own copy (str0m
//! patches VP8 descriptors while it serialises, without a copy of its own).
//!
//! Invariants:
//! - only the bytes of the two fields change, and only their value bits (the M bit that gives a
//!   PictureID's width stays): the descriptor keeps its length and layout;
//! - no new values (`None`) while the numbers pass through unchanged, as for a slot's first
//!   source;
//! - within one source, outgoing numbers are the incoming ones plus a fixed offset (modulo the
//!   field's width), so gaps and reordering pass through unchanged;
//! - a payload too short for the fields its flags announce is left untouched.

use super::keyframe::VideoCodec;

const PIC_15: u16 = 0x7fff;
const PIC_7: u16 = 0x7f;

/// Where one payload's fields sit: PictureID (offset, 15-bit wide) and TL0PICIDX (offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fields {
    pub picture_id: Option<(usize, bool)>,
    pub tl0picidx: Option<usize>,
}

/// The descriptor fields of a VP8 or VP9 payload; none for H.264 or a malformed descriptor.
pub fn locate(codec: VideoCodec, payload: &[u8]) -> Fields {
    let found = match codec {
        VideoCodec::Vp8 => locate_vp8(payload),
        VideoCodec::Vp9 => locate_vp9(payload),
        VideoCodec::H264 => None,
    };
    found.unwrap_or_default()
}

fn picture_id_at(payload: &[u8], i: usize) -> Option<((usize, bool), usize)> {
    let wide = *payload.get(i)? & 0x80 != 0;
    let len = if wide { 2 } else { 1 };
    payload.get(i + len - 1)?;
    Some(((i, wide), i + len))
}

fn locate_vp8(payload: &[u8]) -> Option<Fields> {
    // Byte 0: X R N S R PID; with X, byte 1: I L T K.
    let b0 = *payload.first()?;
    if b0 & 0x80 == 0 {
        return Some(Fields::default());
    }
    let x = *payload.get(1)?;
    let mut i = 2;
    let mut f = Fields::default();
    if x & 0x80 != 0 {
        let (at, next) = picture_id_at(payload, i)?;
        f.picture_id = Some(at);
        i = next;
    }
    if x & 0x40 != 0 {
        payload.get(i)?;
        f.tl0picidx = Some(i);
    }
    Some(f)
}

fn locate_vp9(payload: &[u8]) -> Option<Fields> {
    // Byte 0: I P L F B E V Z.
    let b0 = *payload.first()?;
    let mut i = 1;
    let mut f = Fields::default();
    if b0 & 0x80 != 0 {
        let (at, next) = picture_id_at(payload, i)?;
        f.picture_id = Some(at);
        i = next;
    }
    // Layer indices (TID U SID D), then TL0PICIDX unless in flexible mode (F).
    if b0 & 0x20 != 0 {
        payload.get(i)?;
        i += 1;
        if b0 & 0x10 == 0 {
            payload.get(i)?;
            f.tl0picidx = Some(i);
        }
    }
    Some(f)
}

fn read_picture_id(payload: &[u8], (at, wide): (usize, bool)) -> u16 {
    if wide {
        u16::from_be_bytes([payload[at], payload[at + 1]]) & PIC_15
    } else {
        u16::from(payload[at]) & PIC_7
    }
}

fn write_picture_id(payload: &mut [u8], (at, wide): (usize, bool), value: u16) {
    if wide {
        let [hi, lo] = (value & PIC_15).to_be_bytes();
        payload[at] = 0x80 | hi;
        payload[at + 1] = lo;
    } else {
        payload[at] = (value & PIC_7) as u8;
    }
}

/// New values for one payload's fields (each `None` where the payload has no such field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewIds {
    pub fields: Fields,
    pub picture_id: Option<u16>,
    pub tl0picidx: Option<u8>,
}

impl NewIds {
    /// Write the values into `payload`, a copy of the payload they were computed for.
    pub fn apply(&self, payload: &mut [u8]) {
        if let (Some(at), Some(v)) = (self.fields.picture_id, self.picture_id) {
            write_picture_id(payload, at, v);
        }
        if let (Some(at), Some(v)) = (self.fields.tl0picidx, self.tl0picidx) {
            payload[at] = v;
        }
    }
}

/// One slot's picture numbering. Plain data, no allocation.
#[derive(Debug, Clone, Default)]
pub struct PictureIds {
    /// Added (modulo the field's width) to incoming PictureIDs of the current source.
    picture_offset: u16,
    /// Added (wrapping) to incoming TL0PICIDX values of the current source.
    tl0_offset: u8,
    /// The newest PictureID (15-bit space) and TL0PICIDX sent.
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
}

impl PictureIds {
    /// The outgoing numbers for `payload`, or `None` if they are the incoming ones; `switched`
    /// is true on the first packet of a new source ([`super::rewrite::Rewritten::switched`]).
    pub fn rewrite(&mut self, codec: VideoCodec, payload: &[u8], switched: bool) -> Option<NewIds> {
        let fields = locate(codec, payload);
        let mut new = NewIds {
            fields,
            picture_id: None,
            tl0picidx: None,
        };
        let mut changed = false;
        if let Some(at) = fields.picture_id {
            let incoming = read_picture_id(payload, at);
            if switched {
                // The new source's first picture follows the last one sent.
                self.picture_offset = match self.last_picture {
                    Some(last) => last.wrapping_add(1).wrapping_sub(incoming) & PIC_15,
                    None => 0,
                };
            }
            let out = incoming.wrapping_add(self.picture_offset) & PIC_15;
            let mask = if at.1 { PIC_15 } else { PIC_7 };
            changed |= out & mask != incoming;
            new.picture_id = Some(out);
            // Keep the newest: a reordered older picture does not move the continuation back.
            if self
                .last_picture
                .is_none_or(|last| out.wrapping_sub(last) & PIC_15 < 0x4000)
            {
                self.last_picture = Some(out);
            }
        }
        if let Some(at) = fields.tl0picidx {
            let incoming = payload[at];
            if switched {
                self.tl0_offset = match self.last_tl0 {
                    Some(last) => last.wrapping_add(1).wrapping_sub(incoming),
                    None => 0,
                };
            }
            let out = incoming.wrapping_add(self.tl0_offset);
            changed |= out != incoming;
            new.tl0picidx = Some(out);
            if self
                .last_tl0
                .is_none_or(|last| out.wrapping_sub(last) < 0x80)
            {
                self.last_tl0 = Some(out);
            }
        }
        changed.then_some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VP8 descriptor with X, I (15-bit id), L: [X|S, I|L, M|hi, lo, tl0], then one frame byte.
    fn vp8(pic: u16, tl0: u8) -> Vec<u8> {
        let [hi, lo] = pic.to_be_bytes();
        vec![0x90, 0xc0, 0x80 | hi, lo, tl0, 0x01]
    }

    /// VP9 non-flexible descriptor with I (7-bit id), L: [I|L|B, id, layers, tl0].
    fn vp9(pic: u8, tl0: u8) -> Vec<u8> {
        vec![0xa8, pic & 0x7f, 0x00, tl0, 0xee]
    }

    /// Rewrite `d` as the caller does: a copy with the new values applied.
    fn renumber(p: &mut PictureIds, codec: VideoCodec, d: &mut [u8], switched: bool) {
        if let Some(new) = p.rewrite(codec, d, switched) {
            new.apply(d);
        }
    }

    #[test]
    fn fields_are_found_where_the_flags_put_them() {
        type Case = (VideoCodec, &'static [u8], Fields);
        let none = Fields::default();
        let cases: &[Case] = &[
            // VP8 without X: nothing.
            (VideoCodec::Vp8, &[0x10, 0x00], none),
            // X, I with a 7-bit id, no L.
            (
                VideoCodec::Vp8,
                &[0x90, 0x80, 0x05, 0x00],
                Fields {
                    picture_id: Some((2, false)),
                    tl0picidx: None,
                },
            ),
            // X, I with a 15-bit id, L.
            (
                VideoCodec::Vp8,
                &[0x90, 0xc0, 0x81, 0x02, 0x09, 0x00],
                Fields {
                    picture_id: Some((2, true)),
                    tl0picidx: Some(4),
                },
            ),
            // Truncated: X, I announced but no id byte.
            (VideoCodec::Vp8, &[0x90, 0x80], none),
            // Truncated inside a 15-bit id.
            (VideoCodec::Vp8, &[0x90, 0x80, 0x81], none),
            // VP9 non-flexible with a 15-bit id and layer indices: TL0PICIDX after them.
            (
                VideoCodec::Vp9,
                &[0xa8, 0x81, 0x02, 0x00, 0x07],
                Fields {
                    picture_id: Some((1, true)),
                    tl0picidx: Some(4),
                },
            ),
            // VP9 flexible mode: layer indices but no TL0PICIDX.
            (
                VideoCodec::Vp9,
                &[0xb8, 0x05, 0x00, 0x07],
                Fields {
                    picture_id: Some((1, false)),
                    tl0picidx: None,
                },
            ),
            // VP9 truncated before TL0PICIDX.
            (VideoCodec::Vp9, &[0xa8, 0x05, 0x00], none),
            (VideoCodec::Vp9, &[], none),
            (VideoCodec::H264, &[0x90, 0x80, 0x05], none),
        ];
        for (i, (codec, payload, want)) in cases.iter().enumerate() {
            assert_eq!(locate(*codec, payload), *want, "case {i}");
        }
    }

    #[test]
    fn numbers_continue_across_a_switch_and_keep_their_gaps() {
        let mut p = PictureIds::default();
        // Source A: pictures 100, 101, 103 (102 lost), TL0 7.
        let mut out = Vec::new();
        for (i, pic) in [100u16, 101, 103].into_iter().enumerate() {
            let mut d = vp8(pic, 7);
            renumber(&mut p, VideoCodec::Vp8, &mut d, i == 0);
            out.push((read_picture_id(&d, (2, true)), d[4]));
        }
        // The first source passes unchanged, without new values.
        assert_eq!(out, vec![(100, 7), (101, 7), (103, 7)]);
        assert_eq!(
            p.clone().rewrite(VideoCodec::Vp8, &vp8(104, 7), false),
            None
        );
        // Source B starts at 30_000 with TL0 200: continues at 104 and TL0 8.
        let mut out = Vec::new();
        for (i, pic) in [30_000u16, 30_001, 30_000].into_iter().enumerate() {
            let mut d = vp8(pic, 200);
            renumber(&mut p, VideoCodec::Vp8, &mut d, i == 0);
            assert_eq!(d[0..2], [0x90, 0xc0], "flags untouched");
            assert_eq!(d[2] & 0x80, 0x80, "M bit kept");
            assert_eq!(d[5], 0x01, "frame untouched");
            out.push((read_picture_id(&d, (2, true)), d[4]));
        }
        assert_eq!(out, vec![(104, 8), (105, 8), (104, 8)]);
        // Wrapping: a source at 32_767 after 105 continues at 106, then wraps past 32_767.
        let mut d = vp8(5, 0);
        renumber(&mut p, VideoCodec::Vp8, &mut d, true);
        assert_eq!(read_picture_id(&d, (2, true)), 106);
        let mut q = PictureIds::default();
        let mut d = vp8(32_767, 255);
        renumber(&mut q, VideoCodec::Vp8, &mut d, true);
        let mut d = vp8(0, 0);
        renumber(&mut q, VideoCodec::Vp8, &mut d, false);
        assert_eq!((read_picture_id(&d, (2, true)), d[4]), (0, 0));
    }

    #[test]
    fn seven_bit_ids_wrap_at_128_and_vp9_tl0_follows() {
        let mut p = PictureIds::default();
        let mut d = vp9(126, 10);
        renumber(&mut p, VideoCodec::Vp9, &mut d, true);
        assert_eq!((d[1], d[3]), (126, 10));
        // Switch to a source at 3: continues at 127, then 0 (7-bit wrap).
        let mut d = vp9(3, 50);
        renumber(&mut p, VideoCodec::Vp9, &mut d, true);
        assert_eq!((d[1], d[3]), (127, 11));
        let mut d = vp9(4, 51);
        renumber(&mut p, VideoCodec::Vp9, &mut d, false);
        assert_eq!((d[1], d[3]), (0, 12));
        assert_eq!(d[0], 0xa8, "flags untouched");
        assert_eq!(d[4], 0xee, "payload untouched");
    }

    #[test]
    fn short_or_foreign_payloads_are_left_alone() {
        let mut p = PictureIds::default();
        for (codec, bytes) in [
            (VideoCodec::Vp8, vec![0x90, 0x80]),
            (VideoCodec::Vp9, vec![0xa8, 0x05, 0x00]),
            (VideoCodec::H264, vec![0x65, 0x88, 0x84]),
            (VideoCodec::Vp8, vec![]),
        ] {
            let mut d = bytes.clone();
            renumber(&mut p, codec, &mut d, true);
            assert_eq!(d, bytes, "{codec:?}");
        }
    }
}
