//! A download's file written around the page cache (`O_DIRECT`) from where its chunks arrive in
//! memory, in whatever order they come.
//!
//! `O_DIRECT` takes whole blocks at block offsets from memory on a block boundary, and the chunks
//! of a content-defined cut begin anywhere. The transport places each fetched chunk in memory as
//! far past a block boundary as its offset in the file lies past a block
//! ([`super::transport::read_frame`]), so the whole blocks inside a chunk are written from where
//! they lie, at once, by the thread that checked the chunk. The two pieces of blocks at a chunk's
//! ends are copied into the block each shares with a neighbouring chunk, and that block goes
//! through the page cache once both its sides have come: no chunk waits for another. A chunk that
//! lies elsewhere in memory (decompressed, or a second copy at another offset) is first copied
//! once into memory placed so.
//!
//! Through the page cache, writing a 1 GiB download cost the client about a fifth of its CPU in
//! the kernel's copy, and the dirty pages piled up until writeback threw the writer off pace,
//! which made one download in three or four twice as slow as the others. The shared blocks are
//! one in a chunk's 256 or so: too few to matter there.
//!
//! Only for a file written from nothing: bytes a download copies from a previous version or finds
//! in an interrupted run's part file are written through the page cache by the caller.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::DIRECT_ALIGN;

const BLOCK: u64 = DIRECT_ALIGN as u64;

/// See the module documentation.
#[derive(Debug)]
pub struct PlacedWriter {
    /// The file opened with `O_DIRECT`, for whole blocks.
    direct: File,
    /// The same file through the page cache, for the blocks that chunks share.
    cached: File,
    len: u64,
    /// Blocks that two chunks share, by block number, while one side has not come.
    shared: Mutex<HashMap<u64, Shared>>,
    /// Bytes written so far, whichever way.
    done: AtomicU64,
    /// Bytes copied to be placed or to join a shared block.
    copied: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    bytes: Vec<u8>,
    /// The ranges of `bytes` that came.
    came: Vec<(usize, usize)>,
}

impl PlacedWriter {
    /// Opens `path`, a file of `len` bytes, for writing around the page cache; `None` where the
    /// file system does not take `O_DIRECT` (tmpfs).
    pub fn open(path: &Path, len: u64) -> io::Result<Option<PlacedWriter>> {
        let direct = match File::options()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        let cached = File::options().write(true).open(path)?;
        Ok(Some(PlacedWriter {
            direct,
            cached,
            len,
            shared: Mutex::new(HashMap::new()),
            done: AtomicU64::new(0),
            copied: AtomicU64::new(0),
        }))
    }

    /// Writes `bytes`, the file's from `offset` on. Each byte of the file is written once.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|end| *end <= self.len)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{} bytes at {offset} do not fit a file of {}",
                    bytes.len(),
                    self.len
                ))
            })?;
        let first_whole = offset.next_multiple_of(BLOCK);
        let last_whole = end / BLOCK * BLOCK;
        if first_whole >= last_whole {
            // No whole block: at most the ends of two.
            let cut = (first_whole.min(end) - offset) as usize;
            self.share(offset, &bytes[..cut])?;
            self.share(offset + cut as u64, &bytes[cut..])?;
        } else {
            let from = (first_whole - offset) as usize;
            let to = (last_whole - offset) as usize;
            let middle = &bytes[from..to];
            if super::write_direct_blocks(&self.direct, middle, first_whole)? {
                self.copied
                    .fetch_add(middle.len() as u64, Ordering::Relaxed);
            }
            self.done.fetch_add(middle.len() as u64, Ordering::Relaxed);
            self.share(offset, &bytes[..from])?;
            self.share(last_whole, &bytes[to..])?;
        }
        Ok(())
    }

    /// Bytes copied so far: chunks that did not lie where their blocks could be written from,
    /// and the pieces that join shared blocks.
    pub fn copied(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }

    /// Puts `piece`, at `at` and inside one block, into that block; writes the block once it is
    /// whole.
    fn share(&self, at: u64, piece: &[u8]) -> io::Result<()> {
        if piece.is_empty() {
            return Ok(());
        }
        let block = at / BLOCK;
        let start = block * BLOCK;
        let block_len = (self.len - start).min(BLOCK) as usize;
        let within = (at - start) as usize;
        let whole = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let s = shared.entry(block).or_insert_with(|| Shared {
                bytes: vec![0; block_len],
                came: Vec::new(),
            });
            let range = (within, within + piece.len());
            if s.came.iter().any(|c| c.0 < range.1 && range.0 < c.1) {
                return Err(io::Error::other(format!(
                    "bytes of the block at {start} came twice"
                )));
            }
            s.bytes[range.0..range.1].copy_from_slice(piece);
            s.came.push(range);
            let filled: usize = s.came.iter().map(|c| c.1 - c.0).sum();
            (filled == block_len)
                .then(|| shared.remove(&block))
                .flatten()
        };
        self.copied.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if let Some(s) = whole {
            self.cached.write_all_at(&s.bytes, start)?;
            self.done.fetch_add(block_len as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Checks that every byte came and sets the file's length; an error if some part never came.
    /// The caller flushes the file.
    pub fn finish(&self) -> io::Result<()> {
        let done = self.done.load(Ordering::Relaxed);
        let open = self.shared.lock().unwrap_or_else(|p| p.into_inner()).len();
        if done != self.len || open != 0 {
            return Err(io::Error::other(format!(
                "the download stopped with {done} bytes of {} written",
                self.len
            )));
        }
        self.direct.set_len(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// `data` in memory whose offset 0 lies on a block boundary, as the transport places a
    /// download's chunks: each piece then lies as far past a boundary as its file offset.
    fn placed(data: &[u8]) -> Bytes {
        let mut buf: Vec<u8> = Vec::with_capacity(data.len() + DIRECT_ALIGN);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        // Within the capacity: the buffer does not move.
        buf.resize(start, 0);
        buf.extend_from_slice(data);
        Bytes::from(buf).slice(start..)
    }

    fn cuts(len: usize, step: usize) -> Vec<usize> {
        let mut cuts = vec![0usize];
        let mut at = 0;
        for k in 0.. {
            at += step + (k * 104_729) % 2_000_000;
            if at >= len {
                break;
            }
            cuts.push(at);
        }
        cuts.push(len);
        cuts
    }

    #[test]
    fn chunks_in_any_order_make_the_file_and_only_the_shared_blocks_are_copied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = relay_kit::noise(4, (12 << 20) + 4321);
        let whole = placed(&data);
        assert_eq!(whole.as_ptr().align_offset(DIRECT_ALIGN), 0);
        let cuts = cuts(data.len(), 70_000);
        // Every third piece lies out of place, as a decompressed chunk would.
        let mut out_of_place = 0;
        let pieces: Vec<(u64, Bytes)> = cuts
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let piece = whole.slice(w[0]..w[1]);
                let piece = if i % 3 == 2 {
                    out_of_place += piece.len() as u64;
                    let mut moved = vec![0u8; piece.len() + 1];
                    moved[1..].copy_from_slice(&piece);
                    Bytes::from(moved).slice(1..)
                } else {
                    piece
                };
                (w[0] as u64, piece)
            })
            .collect();
        File::create(&path).unwrap();
        let Some(w) = PlacedWriter::open(&path, data.len() as u64).unwrap() else {
            // A file system without O_DIRECT: nothing to test here.
            return;
        };
        // Delivered out of order, in groups of three backwards.
        for group in pieces.chunks(3) {
            for (offset, bytes) in group.iter().rev() {
                w.write(*offset, bytes).unwrap();
            }
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let ends = 2 * BLOCK * pieces.len() as u64;
        assert!(
            w.copied() <= out_of_place + ends,
            "{} bytes copied, {out_of_place} out of place",
            w.copied()
        );
        assert!(
            w.copied() >= out_of_place - ends,
            "the moved pieces are copied"
        );
    }

    #[test]
    fn small_pieces_inside_and_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = relay_kit::noise(5, 5 * DIRECT_ALIGN + 333);
        let whole = placed(&data);
        let cuts = [
            0,
            1,
            100,
            4095,
            4097,
            9000,
            12_288,
            16_384,
            20_000,
            data.len(),
        ];
        File::create(&path).unwrap();
        let Some(w) = PlacedWriter::open(&path, data.len() as u64).unwrap() else {
            return;
        };
        for p in cuts.windows(2).rev() {
            w.write(p[0] as u64, &whole[p[0]..p[1]]).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn an_empty_file_and_a_file_under_a_block() {
        let dir = tempfile::tempdir().unwrap();
        for data in [&b""[..], b"x", &[7u8; DIRECT_ALIGN + 1][..]] {
            let path = dir.path().join("f");
            File::create(&path).unwrap();
            let Some(w) = PlacedWriter::open(&path, data.len() as u64).unwrap() else {
                return;
            };
            w.write(0, data).unwrap();
            w.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
    }

    #[test]
    fn a_missing_chunk_a_repeated_one_and_one_past_the_end_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = relay_kit::noise(6, 4 * DIRECT_ALIGN);
        let whole = placed(&data);
        File::create(&path).unwrap();
        let Some(w) = PlacedWriter::open(&path, data.len() as u64).unwrap() else {
            return;
        };
        // A chunk of whole blocks only, at a block: nothing shared shows it missing.
        w.write(0, &whole[..2 * DIRECT_ALIGN]).unwrap();
        assert!(w.finish().is_err(), "half the file never came");
        w.write(2 * BLOCK, &whole[2 * DIRECT_ALIGN..3 * DIRECT_ALIGN + 10])
            .unwrap();
        assert!(
            w.write(3 * BLOCK, &whole[3 * DIRECT_ALIGN..3 * DIRECT_ALIGN + 20])
                .is_err(),
            "the same bytes twice"
        );
        assert!(
            w.write(4 * BLOCK - 5, &whole[..10]).is_err(),
            "past the end"
        );
    }
}
