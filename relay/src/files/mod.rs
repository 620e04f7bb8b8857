//! The file plane: chunked, deduplicated, resumable, verified file transfers over QUIC.
//!
//! The sans-IO core cuts files into content-defined chunks ([`chunker`]), lists them in a
//! [`manifest::Manifest`], frames requests and answers ([`wire`]) and makes every decision as a
//! pure function ([`plan`]). [`store::ChunkStore`] keeps chunks on disk and their bookkeeping in
//! SQLite; [`service`] answers requests as plain functions, [`server`] is the quinn shell around it and
//! [`client`] the other end, driven by the command line
//! (`crate::cli::files`).
//! Invariants the whole plane keeps: a chunk is named by the BLAKE3 hash
//! of its plaintext and is checked against that name whenever it crosses a boundary (network in,
//! disk in, disk out, network out); nothing is read whole into memory beyond one chunk.

/// The alignment writing and reading around the page cache (`O_DIRECT`) asks of a buffer's
/// address, its length and the file offset: the logical block size, at most 4096 on the disks a
/// relay is installed on.
pub const DIRECT_ALIGN: usize = 4096;

thread_local! {
    /// A buffer for `O_DIRECT` writes of bytes that do not lie on a block boundary, one per
    /// thread, reused for every write.
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `data` at `at` of `file` (opened with `O_DIRECT`, `at` on a block) from a copy in an
/// aligned buffer, padded with zeros to whole blocks: for bytes that do not lie on a block
/// boundary in memory, or a last partial block.
pub(crate) fn write_direct_copy(file: &std::fs::File, data: &[u8], at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let padded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    DIRECT_BUF.with_borrow_mut(|buf| {
        buf.resize(padded + DIRECT_ALIGN, 0);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let Some(block) = buf.get_mut(start..start + padded) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        block[..data.len()].copy_from_slice(data);
        block[data.len()..].fill(0);
        file.write_all_at(block, at)
    })
}

/// Writes `blocks` (whole blocks) at `at` of `file` (opened with `O_DIRECT`, `at` on a block):
/// from where they lie when they begin on a block boundary in memory, or else through
/// [`write_direct_copy`]. Answers whether they were copied.
pub(crate) fn write_direct_blocks(
    file: &std::fs::File,
    blocks: &[u8],
    at: u64,
) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    if blocks.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
        file.write_all_at(blocks, at)?;
        return Ok(false);
    }
    write_direct_copy(file, blocks, at)?;
    Ok(true)
}

pub mod chunker;
pub mod client;
pub mod gear;
pub mod heap;
pub mod manifest;
pub mod mapped;
pub mod placed;
pub mod plan;
pub mod pool;
pub mod scan_cache;
pub mod server;
pub mod service;
pub mod store;
pub mod transport;
pub mod wire;
pub mod writeback;

/// A BLAKE3 hash: a chunk's name, or a manifest's root.
pub type Hash = [u8; 32];
