//! Content-defined chunking: FastCDC v2020 cut points over a stream, BLAKE3 per chunk.
//!
//! Invariants: a chunk is never empty and never longer than [`MAX_CHUNK`]; only the last chunk of
//! a stream may be shorter than [`MIN_CHUNK`]; the chunks of a stream, in order, are exactly its
//! bytes. Memory is one buffer of twice [`MAX_CHUNK`] whatever the stream's length, and the cut
//! points are those of `fastcdc::v2020::StreamCDC` with the same sizes (a test holds us to that),
//! so a file chunks the same on every client.
//!
//! The sizes are powers of two, as FastCDC's masks need: a non power-of-two average changed cut
//! points between crate versions. A 1 MiB average keeps the manifest of a multi-GB video small
//! (a few thousand entries) while a 1 MiB edit still touches only a few chunks.

use std::io::{self, Read};

use bytes::Bytes;
use fastcdc::v2020::{MASKS, cut};

use super::Hash;

pub const MIN_CHUNK: usize = 256 * 1024;
pub const AVG_CHUNK: usize = 1024 * 1024;
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;

/// FastCDC's normalisation level 1 (its default): one bit either side of the average's mask.
const NORMALISATION_BITS: u32 = 1;

/// The BLAKE3 hash that names a chunk.
pub fn chunk_hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Chunk bytes that matched their name when [`VerifiedChunk::check`] hashed them, so that code
/// further on (the store's write) need not hash them again.
#[derive(Debug, Clone)]
pub struct VerifiedChunk {
    hash: Hash,
    data: Bytes,
}

impl VerifiedChunk {
    /// `data` if it hashes to `hash`.
    pub fn check(hash: &Hash, data: Bytes) -> Option<VerifiedChunk> {
        (chunk_hash(&data) == *hash).then_some(VerifiedChunk { hash: *hash, data })
    }

    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// A chunk just cut from the stream. `data` borrows the chunker's buffer.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// Where the chunk starts in the stream.
    pub offset: u64,
    pub data: &'a [u8],
    pub hash: Hash,
}

/// Cuts a byte stream into content-defined chunks.
#[derive(Debug)]
pub struct Chunker<R> {
    source: R,
    buf: Box<[u8]>,
    /// `buf[start..end]` holds bytes read but not yet cut.
    start: usize,
    end: usize,
    eof: bool,
    offset: u64,
    masks: [u64; 4],
}

impl<R: Read> Chunker<R> {
    pub fn new(source: R) -> Chunker<R> {
        let bits = AVG_CHUNK.trailing_zeros();
        let mask_s = MASKS[(bits + NORMALISATION_BITS) as usize];
        let mask_l = MASKS[(bits - NORMALISATION_BITS) as usize];
        Chunker {
            source,
            buf: vec![0u8; 2 * MAX_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
            masks: [mask_s, mask_l, mask_s << 1, mask_l << 1],
        }
    }

    /// Keeps at least [`MAX_CHUNK`] bytes ahead of the cut point unless the stream ends first.
    /// With a buffer of twice that, the bytes moved to the front are at most one chunk for every
    /// chunk read, so the copying stays linear.
    fn fill(&mut self) -> io::Result<()> {
        if self.eof || self.end - self.start >= MAX_CHUNK {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.buf.len() {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk<'_>>> {
        self.fill()?;
        let pending = &self.buf[self.start..self.end];
        if pending.is_empty() {
            return Ok(None);
        }
        let [mask_s, mask_l, mask_s_ls, mask_l_ls] = self.masks;
        let (_, len) = cut(
            pending, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK, mask_s, mask_l, mask_s_ls, mask_l_ls,
        );
        // `cut` returns at most `pending.len()` and never 0 for non-empty input; clamp anyway so
        // a surprise in the crate cannot loop forever or slice out of bounds.
        let len = len.clamp(1, pending.len());
        let data = &self.buf[self.start..self.start + len];
        let chunk = Chunk {
            offset: self.offset,
            data,
            hash: chunk_hash(data),
        };
        self.start += len;
        self.offset += len as u64;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic incompressible bytes (xorshift64*), so tests need no data files.
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn cuts(data: &[u8]) -> Vec<(u64, usize)> {
        let mut c = Chunker::new(data);
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk().unwrap() {
            assert_eq!(ch.hash, chunk_hash(ch.data));
            out.push((ch.offset, ch.data.len()));
        }
        out
    }

    /// A reader that hands out a few bytes at a time, as pipes and sockets do.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn cut_points_match_the_crate_streaming_chunker() {
        let data = noise(7, 12 * MAX_CHUNK + 12345);
        let ours = cuts(&data);
        let theirs: Vec<(u64, usize)> = fastcdc::v2020::StreamCDC::new(
            &data[..],
            MIN_CHUNK as u32,
            AVG_CHUNK as u32,
            MAX_CHUNK as u32,
        )
        .map(|c| {
            let c = c.unwrap();
            (c.offset, c.length)
        })
        .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn sizes_are_bounded_and_cover_the_stream() {
        #[rustfmt::skip]
        let table: [(&str, Vec<u8>); 6] = [
            ("empty", vec![]),
            ("one byte", vec![42]),
            ("below min", noise(1, MIN_CHUNK - 1)),
            ("exactly max", noise(2, MAX_CHUNK)),
            ("zeros", vec![0; 3 * MAX_CHUNK + 7]),
            ("noise", noise(3, 9 * AVG_CHUNK)),
        ];
        for (name, data) in table {
            let c = cuts(&data);
            let total: usize = c.iter().map(|(_, l)| l).sum();
            assert_eq!(total, data.len(), "{name}");
            for (i, (_, len)) in c.iter().enumerate() {
                assert!(*len >= 1 && *len <= MAX_CHUNK, "{name} chunk {i}: {len}");
                if i + 1 < c.len() {
                    assert!(*len >= MIN_CHUNK, "{name} chunk {i}: {len}");
                }
            }
        }
        assert!(cuts(&[]).is_empty());
    }

    #[test]
    fn small_reads_cut_the_same() {
        let data = noise(4, 5 * AVG_CHUNK);
        let mut c = Chunker::new(Trickle(&data, 1000));
        let mut got = Vec::new();
        while let Some(ch) = c.next_chunk().unwrap() {
            got.push((ch.offset, ch.data.len()));
        }
        assert_eq!(got, cuts(&data));
    }

    #[test]
    fn an_edit_in_the_middle_changes_few_chunks() {
        let a = noise(5, 32 * AVG_CHUNK);
        let mut b = a.clone();
        let mid = a.len() / 2;
        b[mid..mid + AVG_CHUNK].copy_from_slice(&noise(6, AVG_CHUNK));
        let hashes = |d: &[u8]| {
            let mut c = Chunker::new(d);
            let mut h = std::collections::HashSet::new();
            while let Some(ch) = c.next_chunk().unwrap() {
                h.insert(ch.hash);
            }
            h
        };
        let (ha, hb) = (hashes(&a), hashes(&b));
        let new = hb.difference(&ha).count();
        assert!(new <= 4, "{new} new chunks of {}", hb.len());
    }
}
