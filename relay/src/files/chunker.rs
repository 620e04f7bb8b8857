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

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

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

/// Where a chunk of a file lies, and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub offset: u64,
    pub len: u32,
    pub hash: Hash,
}

/// Files smaller than this are cut by one thread: starting more costs more than it saves.
const PARALLEL_MIN: u64 = 64 << 20;

/// How far past its part a thread goes on cutting, for the next part's cut points to be found
/// among its own.
const PART_OVERLAP: u64 = 4 * MAX_CHUNK as u64;

/// Cuts a file into exactly the chunks one [`Chunker`] over the whole of it would, with up to
/// `threads` threads on parts of the file at once.
///
/// Why the parts agree: a cut point depends only on the bytes after the previous one, so two
/// chunkers that ever cut at the same offset cut identically from there on. A part's chunker
/// starts at an arbitrary offset and is usually in step with the whole-file cuts within a chunk
/// or two; the previous part's chunker goes on [`PART_OVERLAP`] past its end, and the first cut
/// the two share joins them. When none is shared (long runs of one byte value cut at fixed
/// distances from wherever they start), the cutting goes on from the last known cut alone.
pub fn cut_file(file: &File, len: u64, threads: usize) -> io::Result<Vec<Cut>> {
    let parts = if len < PARALLEL_MIN {
        1
    } else {
        threads.clamp(1, 8) as u64
    };
    let starts: Vec<u64> = (0..parts).map(|k| len / parts * k).collect();
    let lists: Vec<io::Result<Vec<Cut>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = starts
            .iter()
            .enumerate()
            .map(|(k, &start)| {
                let limit = starts
                    .get(k + 1)
                    .map_or(len, |&next| (next + PART_OVERLAP).min(len));
                scope.spawn(move || cut_range(file, start, limit, len))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a chunking thread panicked")))
            })
            .collect()
    });
    let mut lists = lists.into_iter();
    let mut cuts = lists.next().transpose()?.unwrap_or_default();
    for (list, &start) in lists.zip(&starts[1..]) {
        let list = list?;
        let end_of = |c: &Cut| c.offset + u64::from(c.len);
        let joined = cuts.iter().position(|c| {
            end_of(c) >= start && list.binary_search_by_key(&end_of(c), |n| n.offset).is_ok()
        });
        match joined {
            Some(i) => {
                let at = end_of(&cuts[i]);
                cuts.truncate(i + 1);
                let from = list.partition_point(|n| n.offset < at);
                cuts.extend_from_slice(&list[from..]);
            }
            None => {
                let from = cuts.last().map_or(0, end_of);
                cuts.extend(cut_range(file, from, len, len)?);
                return Ok(cuts);
            }
        }
    }
    Ok(cuts)
}

/// The chunks of `file[start..limit]` cut as if the file began at `start`; the last one is left
/// out unless `limit` is the file's end, since only the end of the data made it end there.
fn cut_range(file: &File, start: u64, limit: u64, len: u64) -> io::Result<Vec<Cut>> {
    let mut chunker = Chunker::new(FileRange {
        file,
        pos: start,
        end: limit,
    });
    let mut cuts = Vec::new();
    while let Some(c) = chunker.next_chunk()? {
        cuts.push(Cut {
            offset: start + c.offset,
            // A chunk is at most MAX_CHUNK (4 MiB) long.
            len: c.data.len() as u32,
            hash: c.hash,
        });
    }
    if limit < len {
        cuts.pop();
    }
    Ok(cuts)
}

/// A byte range of a file, read with `pread` so that several threads can share the file.
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

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
    fn parts_cut_a_file_exactly_as_one_chunker() {
        let dir = tempfile::tempdir().unwrap();
        let mut mixed = noise(8, 70 << 20);
        // Zeros cut at fixed distances from wherever a chunker starts: parts may never agree.
        mixed[20 << 20..50 << 20].fill(0);
        #[rustfmt::skip]
        let table: [(&str, Vec<u8>); 4] = [
            ("small", noise(9, 3 * AVG_CHUNK)),
            ("noise", noise(10, 80 << 20)),
            ("mixed", mixed),
            ("zeros", vec![0; 70 << 20]),
        ];
        for (name, data) in table {
            let path = dir.path().join(name);
            fs::write(&path, &data).unwrap();
            let file = File::open(&path).unwrap();
            let whole: Vec<Cut> =
                cut_range(&file, 0, data.len() as u64, data.len() as u64).unwrap();
            let offsets: Vec<(u64, usize)> =
                whole.iter().map(|c| (c.offset, c.len as usize)).collect();
            assert_eq!(offsets, cuts(&data), "{name}");
            for threads in [1, 2, 3, 5] {
                let got = cut_file(&file, data.len() as u64, threads).unwrap();
                assert_eq!(got, whole, "{name} with {threads} threads");
            }
        }
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
