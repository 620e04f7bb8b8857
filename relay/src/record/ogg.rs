//! An Ogg Opus writer (RFC 7845, on Ogg pages of RFC 3533), sans-IO and streaming: the two
//! header pages first, then a page of audio packets about once a second, each handed out as
//! bytes the caller stores at once. A file cut after any complete page plays to that page
//! ([`playable_len`] finds the cut), and [`OggOpusWriter::finish`] ends the stream.
//!
//! Granule positions count 48 kHz samples, the pre-skip included, as RFC 7845 asks; a packet's
//! duration comes from its TOC byte ([`opus_samples`]).

use super::webm::opus_head;

/// Audio kept before a page is closed, in 48 kHz samples (one second).
const PAGE_SAMPLES: u64 = 48_000;

/// Lacing values per page at most.
const MAX_SEGMENTS: usize = 255;

/// The largest Opus packet taken (120 ms at 510 kbit/s is 7,650 bytes), so that one packet
/// always fits a page.
pub const MAX_PACKET: usize = 8_000;

const BOS: u8 = 0x02;
const EOS: u8 = 0x04;

/// The Ogg page checksum: CRC-32 with polynomial 0x04C11DB7, not reflected, from zero.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// How many 48 kHz samples an Opus packet holds, from its TOC byte and frame count (RFC 6716,
/// 3.1 and 3.2); `None` for a packet that is not valid Opus.
pub fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame size in samples at 48 kHz, by configuration.
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let count = u32::from(*packet.get(1)? & 0x3F);
            if count == 0 {
                return None;
            }
            count
        }
    };
    let total = frame * frames;
    // At most 120 ms in one packet.
    (total <= 5760).then_some(total)
}

/// Writes an Ogg Opus stream page by page.
#[derive(Debug)]
pub struct OggOpusWriter {
    serial: u32,
    sequence: u32,
    pre_skip: u16,
    granule: u64,
    pending: Vec<Vec<u8>>,
    pending_samples: u64,
    out: Vec<u8>,
    finished: bool,
}

impl OggOpusWriter {
    /// A writer whose first bytes are the OpusHead and OpusTags pages.
    pub fn new(serial: u32, channels: u8, pre_skip: u16) -> OggOpusWriter {
        let mut w = OggOpusWriter {
            serial,
            sequence: 0,
            pre_skip,
            granule: u64::from(pre_skip),
            pending: Vec::new(),
            pending_samples: 0,
            out: Vec::new(),
            finished: false,
        };
        w.page(BOS, 0, &[opus_head(channels, pre_skip)]);
        let mut tags = b"OpusTags".to_vec();
        let vendor = b"relay";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        w.page(0, 0, &[tags]);
        w
    }

    /// Adds an Opus packet; one that is not valid Opus, or too large, is dropped (false).
    pub fn packet(&mut self, packet: &[u8]) -> bool {
        let Some(samples) = opus_samples(packet) else {
            return false;
        };
        if self.finished || packet.len() > MAX_PACKET {
            return false;
        }
        let lacing = |p: &[u8]| p.len() / 255 + 1;
        let held: usize = self.pending.iter().map(|p| lacing(p)).sum();
        if held + lacing(packet) > MAX_SEGMENTS {
            self.flush(0);
        }
        self.pending.push(packet.to_vec());
        self.pending_samples += u64::from(samples);
        if self.pending_samples >= PAGE_SAMPLES {
            self.flush(0);
        }
        true
    }

    /// Audio samples written (48 kHz, without the pre-skip).
    pub fn samples(&self) -> u64 {
        self.granule - u64::from(self.pre_skip) + self.pending_samples
    }

    fn flush(&mut self, flags: u8) {
        self.granule += self.pending_samples;
        self.pending_samples = 0;
        let packets = std::mem::take(&mut self.pending);
        // A page on which no packet ends carries the granule -1 (RFC 3533).
        let granule = if packets.is_empty() {
            u64::MAX
        } else {
            self.granule
        };
        self.page(flags, granule, &packets);
    }

    /// Ends the stream: what is pending goes out on a last page marked end of stream.
    pub fn finish(&mut self) {
        if !self.finished {
            self.flush(EOS);
            self.finished = true;
        }
    }

    fn page(&mut self, flags: u8, granule: u64, packets: &[Vec<u8>]) {
        let mut lacing = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        let start = self.out.len();
        self.out.extend_from_slice(b"OggS");
        self.out.push(0);
        self.out.push(flags);
        self.out.extend_from_slice(&granule.to_le_bytes());
        self.out.extend_from_slice(&self.serial.to_le_bytes());
        self.out.extend_from_slice(&self.sequence.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        self.out.push(lacing.len() as u8);
        self.out.extend_from_slice(&lacing);
        for p in packets {
            self.out.extend_from_slice(p);
        }
        let crc = crc32(&self.out[start..]);
        self.out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
    }

    /// The bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// How much of an Ogg stream is whole pages with good checksums, from the start.
pub fn playable_len(b: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let Some(h) = b.get(at..at + 27) else {
            return at;
        };
        if &h[..4] != b"OggS" || h[4] != 0 {
            return at;
        }
        let n = usize::from(h[26]);
        let Some(lacing) = b.get(at + 27..at + 27 + n) else {
            return at;
        };
        let body: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let end = at + 27 + n + body;
        let Some(page) = b.get(at..end) else {
            return at;
        };
        let mut zeroed = page.to_vec();
        zeroed[22..26].fill(0);
        if crc32(&zeroed).to_le_bytes() != page[22..26] {
            return at;
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_durations_follow_the_toc() {
        // SILK 20 ms mono, one frame; CELT 20 ms, two frames; CELT 2.5 ms x 3 (code 3).
        assert_eq!(opus_samples(&[0x08]), Some(960));
        assert_eq!(opus_samples(&[0xF8 | 1, 0, 0]), Some(1920));
        assert_eq!(opus_samples(&[0x83, 0x03]), Some(360));
        assert_eq!(opus_samples(&[0x0B, 0x03]), Some(2880), "SILK 20 ms x 3");
        assert_eq!(
            opus_samples(&[0x1B, 0x03]),
            None,
            "60 ms x 3 is over 120 ms"
        );
        assert_eq!(opus_samples(&[]), None);
        assert_eq!(opus_samples(&[0x03]), None, "code 3 needs its count");
        assert_eq!(opus_samples(&[0x03, 0x00]), None);
    }

    #[test]
    fn pages_carry_granules_and_checksums() {
        let mut w = OggOpusWriter::new(7, 2, 312);
        let head = w.take();
        assert_eq!(playable_len(&head), head.len());
        // 60 packets of 20 ms: one full page after 50, the rest on the last page.
        for _ in 0..60 {
            assert!(w.packet(&[0xFC, 0xFF, 0xFE]));
        }
        assert!(!w.packet(&[]), "not Opus");
        w.finish();
        let body = w.take();
        let mut file = head.clone();
        file.extend_from_slice(&body);
        assert_eq!(playable_len(&file), file.len());
        assert_eq!(w.samples(), 60 * 960);
        // The last page ends the stream at 60 packets plus the pre-skip.
        let last = file.windows(4).rposition(|x| x == b"OggS").unwrap();
        assert_eq!(file[last + 5], EOS);
        let granule = u64::from_le_bytes(file[last + 6..last + 14].try_into().unwrap());
        assert_eq!(granule, 60 * 960 + 312);
        // A damaged byte ends what is whole at the page before it.
        let mut bad = file.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(playable_len(&bad), last);
    }

    #[test]
    fn the_checksum_is_oggs() {
        // CRC-32/POSIX's check value 0x765E7680 without its final inversion.
        assert_eq!(crc32(b"123456789"), 0x89A1_897F);
    }

    #[test]
    fn large_packets_split_pages_and_oversized_ones_are_refused() {
        let mut w = OggOpusWriter::new(1, 1, 0);
        w.take();
        let big = {
            let mut p = vec![0xFCu8];
            p.resize(4000, 0x55);
            p
        };
        for _ in 0..40 {
            assert!(w.packet(&big));
        }
        assert!(!w.packet(&vec![0xFC; MAX_PACKET + 1]));
        w.finish();
        let body = w.take();
        assert_eq!(playable_len(&body), body.len());
        let pages = body.windows(4).filter(|x| x == b"OggS").count();
        assert!(
            pages >= 3,
            "16 lacing values a packet: 15 to a page ({pages})"
        );
    }
}
