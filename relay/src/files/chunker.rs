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

use std::collections::HashMap;
use std::hash::Hasher;
use std::io::{self, Read};

use bytes::Bytes;
use fastcdc::v2020::MASKS;

use super::gear::{self, Sizes};

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

/// A chunk's seal: the 64-bit xxh3 sum of its bytes seeded with its name. The relay keeps it
/// beside the chunk's bytes when it has verified them, and a read checks the seal instead of
/// hashing the chunk with BLAKE3 again, at a fraction of the cost: a damaged byte, a torn or
/// short file, or another chunk's file under this name all fail it (the name is in the seed).
/// It guards against the disk's faults; the name stays the check against anything else.
pub type Seal = [u8; 8];

/// The seal of `data`, the bytes of the chunk named `hash`.
pub fn chunk_seal(hash: &Hash, data: &[u8]) -> Seal {
    twox_hash::XxHash3_64::oneshot_with_seed(seal_seed(hash), data).to_le_bytes()
}

fn seal_seed(hash: &Hash) -> u64 {
    u64::from_le_bytes([
        hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
    ])
}

/// Chunk bytes that matched their name when [`VerifiedChunk::check`] hashed them, with their
/// seal, so that code further on (the store's write) need not read them again.
#[derive(Debug, Clone)]
pub struct VerifiedChunk {
    hash: Hash,
    data: Bytes,
    seal: Seal,
}

/// The bytes hashed and sealed in one go: small enough that the seal finds them in the cache.
const CHECK_PIECE: usize = 64 << 10;

impl VerifiedChunk {
    /// `data` if it hashes to `hash`, sealed: one pass over the bytes feeds both sums.
    pub fn check(hash: &Hash, data: Bytes) -> Option<VerifiedChunk> {
        let mut name = blake3::Hasher::new();
        let mut seal = twox_hash::XxHash3_64::with_seed(seal_seed(hash));
        for piece in data.chunks(CHECK_PIECE) {
            name.update(piece);
            seal.write(piece);
        }
        (name.finalize().as_bytes() == hash).then(|| VerifiedChunk {
            hash: *hash,
            data,
            seal: seal.finish().to_le_bytes(),
        })
    }

    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn seal(&self) -> &Seal {
        &self.seal
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
    sizes: Sizes,
}

impl<R: Read> Chunker<R> {
    pub fn new(source: R) -> Chunker<R> {
        Chunker {
            source,
            buf: vec![0u8; 2 * MAX_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
            sizes: sizes(),
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
        let len = cut_len(pending, &self.sizes);
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
const PART_OVERLAP: usize = 4 * MAX_CHUNK;

/// Cuts a file's bytes (`data`, usually a [`super::mapped::Mapped`] file) into exactly the chunks
/// one [`Chunker`] over the whole of it would, with up to `threads` threads on parts of it at once.
///
/// Why the parts agree: a cut point depends only on the bytes after the previous one, so two
/// chunkers that ever cut at the same offset cut identically from there on. A part's chunker
/// starts at an arbitrary offset and is usually in step with the whole-file cuts within a chunk
/// or two; the previous part's chunker goes on [`PART_OVERLAP`] past its end, and the first cut
/// the two share joins them. When none is shared (long runs of one byte value cut at fixed
/// distances from wherever they start), the cutting goes on from the last known cut alone.
pub fn cut_file(data: &[u8], threads: usize) -> Vec<Cut> {
    let len = data.len();
    let parts = if (len as u64) < PARALLEL_MIN {
        1
    } else {
        threads.clamp(1, 8)
    };
    let starts: Vec<usize> = (0..parts).map(|k| len / parts * k).collect();
    let lists: Vec<Vec<Cut>> = std::thread::scope(|scope| {
        let workers: Vec<_> = starts
            .iter()
            .enumerate()
            .map(|(k, &start)| {
                let limit = starts
                    .get(k + 1)
                    .map_or(len, |&next| (next + PART_OVERLAP).min(len));
                scope.spawn(move || cut_range(data, start, limit))
            })
            .collect();
        // A worker only slices within `data` and cuts; should one panic all the same, its part
        // is cut again on this thread.
        workers
            .into_iter()
            .zip(&starts)
            .map(|(w, &start)| w.join().unwrap_or_else(|_| cut_range(data, start, len)))
            .collect()
    });
    let mut lists = lists.into_iter();
    let mut cuts = lists.next().unwrap_or_default();
    for (list, &start) in lists.zip(&starts[1..]) {
        let end_of = |c: &Cut| c.offset + u64::from(c.len);
        let joined = cuts.iter().position(|c| {
            end_of(c) >= start as u64 && list.binary_search_by_key(&end_of(c), |n| n.offset).is_ok()
        });
        match joined {
            Some(i) => {
                let at = end_of(&cuts[i]);
                cuts.truncate(i + 1);
                let from = list.partition_point(|n| n.offset < at);
                cuts.extend_from_slice(&list[from..]);
            }
            None => {
                let from = cuts.last().map_or(0, end_of) as usize;
                cuts.extend(cut_range(data, from, len));
                return cuts;
            }
        }
    }
    cuts
}

/// The most chunks [`cut_in_parts`] hands over at once.
pub const PART_CHUNKS: usize = 64;

/// Cuts `data` on this thread into the chunks [`cut_file`] finds, handing them to `each` in
/// parts as they are cut, with whether the part is the last: the first chunk alone, then parts
/// twice as long as the one before up to [`PART_CHUNKS`], so that what uses them can begin at
/// once and is not asked often later. Stops when `each` returns false. Empty data is one empty
/// last part.
pub fn cut_in_parts(data: &[u8], mut each: impl FnMut(Vec<Cut>, bool) -> bool) {
    let sizes = sizes();
    let mut want = 1;
    let mut pos = 0;
    loop {
        let mut part = Vec::with_capacity(want);
        while part.len() < want && pos < data.len() {
            let c = cut_at(data, pos, data.len(), &sizes);
            pos += c.len as usize;
            part.push(c);
        }
        let last = pos >= data.len();
        if !each(part, last) || last {
            return;
        }
        want = (want * 2).min(PART_CHUNKS);
    }
}

/// FastCDC's sizes and masks for our chunks.
fn sizes() -> Sizes {
    let bits = AVG_CHUNK.trailing_zeros();
    Sizes {
        min: MIN_CHUNK,
        avg: AVG_CHUNK,
        max: MAX_CHUNK,
        mask_s: MASKS[(bits + NORMALISATION_BITS) as usize],
        mask_l: MASKS[(bits - NORMALISATION_BITS) as usize],
    }
}

/// The length of the chunk that starts `window`, which holds what lies ahead of the cut point up
/// to [`MAX_CHUNK`] bytes (less only at the end of the stream).
fn cut_len(window: &[u8], sizes: &Sizes) -> usize {
    // The search answers at most `window.len()` and never 0 for non-empty input; clamp anyway so
    // a surprise cannot loop forever or slice out of bounds.
    gear::cut_len(window, sizes).clamp(1, window.len().max(1))
}

/// The chunk at `pos`, a cut point of the stream `data` seen up to `limit`.
fn cut_at(data: &[u8], pos: usize, limit: usize, sizes: &Sizes) -> Cut {
    let c = cut_len(&data[pos..limit.min(pos + MAX_CHUNK)], sizes);
    Cut {
        offset: pos as u64,
        // At most MAX_CHUNK (4 MiB).
        len: c as u32,
        hash: chunk_hash(&data[pos..pos + c]),
    }
}

/// The chunks of `data[start..limit]` cut as if the stream began at `start`; the last one is
/// left out unless `limit` is the end of `data`, since only the end of the data made it end there.
fn cut_range(data: &[u8], start: usize, limit: usize) -> Vec<Cut> {
    let sizes = sizes();
    let mut cuts = Vec::new();
    let mut pos = start;
    while pos < limit {
        let c = cut_at(data, pos, limit, &sizes);
        pos += c.len as usize;
        cuts.push(c);
    }
    if limit < data.len() {
        cuts.pop();
    }
    cuts
}

/// What a cut point's chunk depends on besides its bytes: how much of the stream lay ahead,
/// capped where the chunker stops looking.
fn ahead(len: u64, pos: u64) -> u64 {
    (len - pos).min(MAX_CHUNK as u64)
}

/// Cuts a file's bytes into exactly the chunks [`cut_file`] would, given the chunks of an earlier
/// version of it (`previous`, of a file of `previous_len` bytes), so that an edit costs a hash of
/// the file rather than a full content-defined scan.
///
/// Why it agrees with [`cut_file`]: the length FastCDC gives the chunk at a cut point depends only
/// on the bytes of that chunk and on how much of the stream lies ahead, capped at [`MAX_CHUNK`]
/// (its scan stops at the first cut it finds). So where the new file has, at one of its cut
/// points, the very bytes of an earlier chunk (its BLAKE3 hash matches) with as much ahead as the
/// earlier one had, the chunk there is that chunk, and the next cut point follows. Elsewhere one
/// chunk is cut by the scan, and the walk looks for the earlier chunk it may have met again, to
/// follow bytes that moved (an insertion or a deletion shifts every later chunk).
///
/// `previous` must be what [`cut_file`] gave for the earlier version; those bytes need not exist
/// any more. Whatever it holds, every chunk returned is hashed from `data`, so the list always
/// describes the file; only its cut points rest on `previous` being such a list. The chunks at
/// unmoved offsets are hashed up front on up to `threads` threads.
pub fn recut_file(data: &[u8], previous: &[Cut], previous_len: u64, threads: usize) -> Vec<Cut> {
    let len = data.len() as u64;
    // A stale list can be anything: keep only what could describe a file of `previous_len`.
    let previous: Vec<Cut> = previous
        .iter()
        .copied()
        .filter(|c| {
            c.len as usize <= MAX_CHUNK
                && c.len > 0
                && c.offset
                    .checked_add(u64::from(c.len))
                    .is_some_and(|e| e <= previous_len)
        })
        .collect();
    let worth = |c: &Cut, shift: i128| -> Option<u64> {
        let pos = u64::try_from(i128::from(c.offset) + shift).ok()?;
        let end = pos.checked_add(u64::from(c.len))?;
        (end <= len && ahead(len, pos) == ahead(previous_len, c.offset)).then_some(pos)
    };
    let unmoved = hash_unmoved(data, &previous, |c| worth(c, 0).is_some(), threads);
    let at_offset: HashMap<u64, usize> = previous
        .iter()
        .enumerate()
        .map(|(i, c)| (c.offset, i))
        .collect();
    let mut by_hash: HashMap<Hash, usize> = HashMap::with_capacity(previous.len());
    for (i, c) in previous.iter().enumerate() {
        by_hash.entry(c.hash).or_insert(i);
    }
    let sizes = sizes();
    let mut cuts = Vec::with_capacity(previous.len() + 8);
    // New offset minus old offset of the bytes being followed.
    let mut shift: i128 = 0;
    let mut pos = 0usize;
    while pos < data.len() {
        let earlier = u64::try_from(pos as i128 - shift)
            .ok()
            .and_then(|old| at_offset.get(&old).copied())
            .filter(|&i| worth(&previous[i], shift) == Some(pos as u64));
        if let Some(i) = earlier {
            let c = previous[i];
            let same = match unmoved[i] {
                Some(h) if shift == 0 => h == c.hash,
                _ => chunk_hash(&data[pos..pos + c.len as usize]) == c.hash,
            };
            if same {
                cuts.push(Cut {
                    offset: pos as u64,
                    ..c
                });
                pos += c.len as usize;
                continue;
            }
        }
        let c = cut_at(data, pos, data.len(), &sizes);
        pos += c.len as usize;
        if let Some(&i) = by_hash.get(&c.hash) {
            let old_end = previous[i].offset + u64::from(previous[i].len);
            shift = pos as i128 - i128::from(old_end);
        }
        cuts.push(c);
    }
    cuts
}

/// The hash of the new file's bytes under each earlier chunk that `wanted` picks, at the same
/// offset, on up to `threads` threads over runs of neighbouring chunks.
fn hash_unmoved(
    data: &[u8],
    previous: &[Cut],
    wanted: impl Fn(&Cut) -> bool + Sync,
    threads: usize,
) -> Vec<Option<Hash>> {
    let hash_part = |part: &[Cut]| -> Vec<Option<Hash>> {
        part.iter()
            .map(|c| {
                wanted(c).then(|| {
                    let at = c.offset as usize;
                    chunk_hash(&data[at..at + c.len as usize])
                })
            })
            .collect()
    };
    let per = previous.len().div_ceil(threads.clamp(1, 8)).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = previous
            .chunks(per)
            .map(|part| (part, scope.spawn(|| hash_part(part))))
            .collect();
        workers
            .into_iter()
            .flat_map(|(part, w)| w.join().unwrap_or_else(|_| vec![None; part.len()]))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_kit::noise;

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

    /// Seals are kept on disk beside every stored chunk: they must never change. The values are
    /// XXH3-64 with the seed, as every earlier release computed them.
    #[test]
    fn seals_are_the_xxh3_sums_earlier_releases_stored() {
        let long: Vec<u8> = (0..(1usize << 20) + 7)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let hash = [7u8; 32];
        assert_eq!(
            chunk_seal(&hash, &long),
            0xd3b9_1a24_c29e_9e0a_u64.to_le_bytes()
        );
        assert_eq!(
            chunk_seal(&hash, &long[..100]),
            0x6b0c_ccb1_de8a_bae6_u64.to_le_bytes()
        );
        let checked = VerifiedChunk::check(&chunk_hash(&long), Bytes::from(long.clone())).unwrap();
        assert_eq!(checked.seal(), &chunk_seal(&chunk_hash(&long), &long));
    }

    #[test]
    fn a_checked_chunk_is_sealed_as_a_read_seals_it() {
        let data = noise(3, (1 << 20) + 3);
        for len in [
            0,
            1,
            CHECK_PIECE - 1,
            CHECK_PIECE,
            CHECK_PIECE + 1,
            data.len(),
        ] {
            let bytes = Bytes::copy_from_slice(&data[..len]);
            let hash = chunk_hash(&bytes);
            let chunk = VerifiedChunk::check(&hash, bytes.clone()).expect("its own name");
            assert_eq!(chunk.seal(), &chunk_seal(&hash, &bytes), "{len} bytes");
            let mut other = hash;
            other[0] ^= 1;
            assert!(VerifiedChunk::check(&other, bytes.clone()).is_none());
            assert_ne!(chunk_seal(&other, &bytes), chunk_seal(&hash, &bytes));
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
        let mut mixed = noise(8, 70 << 20);
        // Zeros cut at fixed distances from wherever a chunker starts: parts may never agree.
        mixed[20 << 20..50 << 20].fill(0);
        #[rustfmt::skip]
        let table: [(&str, Vec<u8>); 5] = [
            ("empty", vec![]),
            ("small", noise(9, 3 * AVG_CHUNK)),
            ("noise", noise(10, 80 << 20)),
            ("mixed", mixed),
            ("zeros", vec![0; 70 << 20]),
        ];
        for (name, data) in table {
            let whole = cut_range(&data, 0, data.len());
            let offsets: Vec<(u64, usize)> =
                whole.iter().map(|c| (c.offset, c.len as usize)).collect();
            assert_eq!(offsets, cuts(&data), "{name}");
            for c in &whole {
                let at = c.offset as usize;
                assert_eq!(c.hash, chunk_hash(&data[at..at + c.len as usize]), "{name}");
            }
            for threads in [1, 2, 3, 5] {
                assert_eq!(
                    cut_file(&data, threads),
                    whole,
                    "{name} with {threads} threads"
                );
            }
        }
    }

    #[test]
    fn parts_handed_over_in_order_are_the_whole_files_chunks() {
        for (name, data) in [
            ("empty", vec![]),
            ("one chunk", noise(13, MIN_CHUNK / 2)),
            ("noise", noise(14, 300 * AVG_CHUNK)),
        ] {
            let mut parts = Vec::new();
            cut_in_parts(&data, |part, last| {
                parts.push((part, last));
                true
            });
            let lens: Vec<usize> = parts.iter().map(|(p, _)| p.len()).collect();
            let lasts: Vec<bool> = parts.iter().map(|&(_, l)| l).collect();
            let joined: Vec<Cut> = parts.into_iter().flat_map(|(p, _)| p).collect();
            assert_eq!(joined, cut_file(&data, 1), "{name}");
            // Only the last part says so, and every part but the last is as long as asked.
            assert_eq!(lasts.iter().filter(|&&l| l).count(), 1, "{name}");
            assert_eq!(lasts.last(), Some(&true), "{name}");
            let asked = [1, 2, 4, 8, 16, 32]
                .into_iter()
                .chain(std::iter::repeat(PART_CHUNKS));
            for (k, (len, want)) in lens.iter().zip(asked).enumerate() {
                if k + 1 < lens.len() {
                    assert_eq!(*len, want, "{name}: part {k}");
                } else {
                    assert!(*len <= want, "{name}: last part");
                }
            }
        }
        // Stopped after the second part: nothing more is cut or handed over.
        let data = noise(15, 40 * AVG_CHUNK);
        let mut calls = 0;
        cut_in_parts(&data, |_, _| {
            calls += 1;
            calls < 2
        });
        assert_eq!(calls, 2);
    }

    #[test]
    fn recutting_after_an_edit_matches_cutting_afresh() {
        let base = noise(12, 40 << 20);
        let mid = base.len() / 2;
        let edited = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut d = base.clone();
            f(&mut d);
            d
        };
        let mut zeros = base.clone();
        zeros[8 << 20..20 << 20].fill(0);
        #[rustfmt::skip]
        let table: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            ("unchanged", base.clone(), base.clone()),
            ("overwrite", base.clone(), edited(&|d| d[mid..mid + AVG_CHUNK].copy_from_slice(&noise(13, AVG_CHUNK)))),
            ("insert", base.clone(), edited(&|d| { d.splice(mid..mid, noise(14, 12345)); })),
            ("delete", base.clone(), edited(&|d| { d.drain(mid..mid + 777_777); })),
            ("truncate", base.clone(), base[..base.len() - 3 * MAX_CHUNK - 5].to_vec()),
            ("truncate a little", base.clone(), base[..base.len() - 100].to_vec()),
            ("append", base.clone(), edited(&|d| d.extend(noise(15, 5 << 20)))),
            ("append a little", base.clone(), edited(&|d| d.extend(noise(16, 10)))),
            ("prepend", base.clone(), edited(&|d| { d.splice(0..0, noise(17, 100)); })),
            ("first byte", base.clone(), edited(&|d| d[0] ^= 1)),
            ("last byte", base.clone(), edited(&|d| *d.last_mut().unwrap() ^= 1)),
            ("zeros filled", base.clone(), zeros.clone()),
            ("zeros cleared", zeros, base.clone()),
            ("other file", noise(18, 30 << 20), base.clone()),
            ("from empty", vec![], base.clone()),
            ("to empty", base.clone(), vec![]),
            ("small", noise(19, 3 * AVG_CHUNK), noise(19, 2 * AVG_CHUNK)),
        ];
        for (name, old, new) in table {
            let before = cut_file(&old, 2);
            let afresh = cut_file(&new, 2);
            for threads in [1, 3] {
                let recut = recut_file(&new, &before, old.len() as u64, threads);
                assert_eq!(recut, afresh, "{name} with {threads} threads");
            }
        }
    }

    #[test]
    fn recutting_trusts_no_list_for_the_bytes() {
        // A list that does not describe any earlier file still yields chunks of this one.
        let data = noise(20, 9 << 20);
        let len = data.len() as u64;
        let junk = [
            Cut {
                offset: 0,
                len: 0,
                hash: [0; 32],
            },
            Cut {
                offset: u64::MAX - 1,
                len: 9,
                hash: [1; 32],
            },
            Cut {
                offset: 5,
                len: MAX_CHUNK as u32 + 1,
                hash: [2; 32],
            },
            Cut {
                offset: len - 1,
                len: 1,
                hash: [3; 32],
            },
        ];
        assert_eq!(recut_file(&data, &junk, len, 2), cut_file(&data, 1));
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
