//! Where a chunk's bytes live: the [`Blobs`] seam, and its file-system implementation.
//!
//! A blob store keeps bytes and hands them back from where it said it put them; it checks
//! nothing. The [`super::ChunkStore`] verifies every chunk before it puts it and after it gets
//! it, and keeps the bookkeeping: each chunk's row records its [`Place`] and its seal. Another
//! backend (object storage, say) implements this trait.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Hash, Result, StoreError, io_err};
use crate::files::DIRECT_ALIGN;
use crate::files::chunker::Seal;

/// Where a chunk's bytes begin: a pack and an offset in it, on a block boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    pub pack: u64,
    pub at: u64,
}

/// What a blob store hands back: the bytes, and the seal kept beside them if the store kept one
/// (only a chunk file of an earlier release has its seal with it; a packed chunk's is in its
/// row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub data: Bytes,
    pub seal: Option<Seal>,
}

/// Bytes put somewhere durable, and found again by their place.
pub trait Blobs: Send + Sync + std::fmt::Debug {
    /// Puts `data` durably: once this returns it survives a crash or a power loss. The answer
    /// names the place; the bytes are the store's once [`Placed::keep`] is called, after their
    /// record is committed. Until then nothing else is written to their pack, and a [`Placed`]
    /// dropped unkept gives its room back.
    fn put(&self, data: &[u8], seal: &Seal) -> Result<Placed>;
    /// The `len` bytes of `hash` at `place` (`None`: a chunk file of an earlier release), or
    /// `None` when there are none. Bytes cut short come back short.
    fn get(&self, hash: &Hash, place: Option<Place>, len: u32) -> Result<Option<Stored>>;
    /// Frees the `len` bytes of `hash` at `place`; none there is no error.
    fn remove(&self, hash: &Hash, place: Option<Place>, len: u32) -> Result<()>;
    /// Clears what a crash between a put and its record left behind. `packs` holds every pack
    /// the catalogue registered, with where its last recorded chunk ends (`None`: nothing
    /// recorded in it, so it goes); a pack's bytes past that were never recorded. A pack the
    /// catalogue does not know (a catalogue lost or replaced) is left as it is. Answers the packs
    /// that are gone for good (their removal flushed, or never made). Only the process that puts
    /// may call this, before it starts putting.
    fn clear_partial(&self, packs: &HashMap<u64, Option<u64>>) -> Vec<u64>;
    /// The file that holds the bytes of `hash` at `place`, and where in it they begin.
    fn file_of(&self, hash: &Hash, place: Option<Place>) -> (PathBuf, u64);
}

/// Bytes just put: where they are, with their seal, holding their pack until they are kept or
/// dropped.
#[derive(Debug)]
pub struct Placed {
    place: Place,
    seal: Seal,
    pack: Option<OpenPack>,
    packs: Arc<Packs>,
}

impl Placed {
    pub fn place(&self) -> Place {
        self.place
    }

    pub fn seal(&self) -> &Seal {
        &self.seal
    }

    /// The bytes are recorded: they stay, and their pack takes the next chunk after them.
    pub fn keep(mut self) {
        if let Some(pack) = self.pack.take() {
            self.packs.give_back(pack);
        }
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        // Not kept: the bytes were the last written to the pack, so the next chunk overwrites
        // them.
        if let Some(mut pack) = self.pack.take() {
            pack.end = self.place.at;
            self.packs.give_back(pack);
        }
    }
}

/// How large a pack grows before a new one is started.
pub const PACK_BYTES: u64 = 1 << 30;

/// Makes a new pack's id known, durably, before anything is written to the pack; the pack is
/// used only if this succeeds.
pub type Register = Box<dyn Fn(u64) -> Result<()> + Send + Sync>;

/// Blobs on the file system: chunks packed, each at a block boundary, into pack files
/// (`chunks/packs/<16 hex digits>.pack`, 0600 in 0700 directories) of up to [`PACK_BYTES`],
/// written around the page cache and flushed with `fdatasync`. Each concurrent writer has a pack
/// of its own, so a pack is only ever appended to by one put at a time. A chunk removed is a
/// hole punched in its pack; a pack with no recorded chunk left is deleted at the next start.
///
/// Chunk files of an earlier release (`chunks/ab/cdef...`, the hex of the hash, with their seal
/// in the extended attribute `user.relay.seal`) are still read and removed.
///
/// Why packs: a file per chunk cost each chunk an inode, a temp file, a rename and a directory
/// flush, about twice the CPU of the write itself (`bench/examples/chunk_durability.rs`).
#[derive(Debug)]
pub struct FsBlobs {
    dir: PathBuf,
    packs: Arc<Packs>,
}

struct Packs {
    dir: PathBuf,
    limit: u64,
    idle: Mutex<Idle>,
    register: Register,
}

impl std::fmt::Debug for Packs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packs")
            .field("dir", &self.dir)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Idle {
    open: Vec<OpenPack>,
    next: u64,
}

/// A pack being appended to.
#[derive(Debug)]
struct OpenPack {
    id: u64,
    file: fs::File,
    /// Where the next chunk goes (a block boundary): the end of the last one kept.
    end: u64,
    /// Written around the page cache (not on a file system without `O_DIRECT`, as tmpfs).
    direct: bool,
}

impl FsBlobs {
    /// The blobs under `dir` (made when the first pack is), each new pack made known through
    /// `register`.
    pub fn open(dir: &Path, register: Register) -> Result<FsBlobs> {
        FsBlobs::open_with_limit(dir, PACK_BYTES, register)
    }

    /// As [`FsBlobs::open`], with packs of up to `limit` bytes.
    pub fn open_with_limit(dir: &Path, limit: u64, register: Register) -> Result<FsBlobs> {
        let packs = dir.join("packs");
        let next = pack_files(&packs)?
            .into_iter()
            .map(|(id, _)| id + 1)
            .max()
            .unwrap_or(0);
        Ok(FsBlobs {
            dir: dir.to_path_buf(),
            packs: Arc::new(Packs {
                dir: packs,
                limit,
                idle: Mutex::new(Idle {
                    open: Vec::new(),
                    next,
                }),
                register,
            }),
        })
    }

    fn legacy_path(&self, hash: &Hash) -> PathBuf {
        let hex = hex::encode(hash);
        self.dir.join(&hex[..2]).join(&hex[2..])
    }
}

/// The packs in `dir` (none when it is missing): (id, path).
fn pack_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        r => r.map_err(io_err(dir))?,
    };
    for e in entries {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".pack"))
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        if let Some(id) = id {
            found.push((id, e.path()));
        }
    }
    Ok(found)
}

/// `len` rounded up to whole blocks.
fn blocks(len: u64) -> u64 {
    len.next_multiple_of(DIRECT_ALIGN as u64)
}

impl Packs {
    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.pack"))
    }

    /// An idle pack, or a new one.
    fn take(&self) -> Result<OpenPack> {
        let id = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pack) = idle.open.pop() {
                return Ok(pack);
            }
            idle.next += 1;
            idle.next - 1
        };
        if !self.dir.exists() {
            // Made by the first put, not by a reader (`relay store check`, which may run as
            // another user).
            crate::private::dir(&self.dir).map_err(io_err(&self.dir))?;
            if let Some(parent) = self.dir.parent() {
                sync_dir(parent)?;
                if let Some(data) = parent.parent() {
                    sync_dir(data)?;
                }
            }
        }
        (self.register)(id)?;
        let path = self.path(id);
        let create = |direct: bool| {
            use std::os::unix::fs::OpenOptionsExt;
            crate::private::open_options()
                .write(true)
                .create_new(true)
                .custom_flags(if direct { libc::O_DIRECT } else { 0 })
                .open(&path)
        };
        let (file, direct) = match create(true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = fs::remove_file(&path);
                (create(false).map_err(io_err(&path))?, false)
            }
            f => (f.map_err(io_err(&path))?, true),
        };
        // The pack's name is durable before any record names it.
        sync_dir(&self.dir)?;
        Ok(OpenPack {
            id,
            file,
            end: 0,
            direct,
        })
    }

    /// A pack back to the idle ones, or closed when it is full.
    fn give_back(&self, pack: OpenPack) {
        if pack.end < self.limit {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.open.push(pack);
        }
    }
}

impl OpenPack {
    /// Writes `data` at the pack's end and flushes it. `O_DIRECT` wants whole aligned blocks:
    /// the whole blocks of `data` go to the disk as they lie when they begin on a block boundary
    /// in memory (the file plane's reader puts a received chunk there), or else through an
    /// aligned copy, and so does the last partial block, padded with zeros.
    fn append(&self, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.end;
        if !self.direct {
            self.file.write_all_at(data, at)?;
            return self.file.sync_data();
        }
        let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if whole > 0 {
            crate::files::write_direct_blocks(&self.file, &data[..whole], at)?;
        }
        let tail = &data[whole..];
        if !tail.is_empty() {
            crate::files::write_direct_copy(&self.file, tail, at + whole as u64)?;
        }
        self.file.sync_data()
    }
}

impl Blobs for FsBlobs {
    fn file_of(&self, hash: &Hash, place: Option<Place>) -> (PathBuf, u64) {
        match place {
            Some(p) => (self.packs.path(p.pack), p.at),
            None => (self.legacy_path(hash), 0),
        }
    }

    fn put(&self, data: &[u8], seal: &Seal) -> Result<Placed> {
        let mut pack = self.packs.take()?;
        if let Err(e) = pack.append(data) {
            let path = self.packs.path(pack.id);
            // What was written past the end is overwritten by the next chunk.
            self.packs.give_back(pack);
            return Err(StoreError::Io(path, e));
        }
        let place = Place {
            pack: pack.id,
            at: pack.end,
        };
        pack.end += blocks(data.len() as u64);
        Ok(Placed {
            place,
            seal: *seal,
            pack: Some(pack),
            packs: Arc::clone(&self.packs),
        })
    }

    fn get(&self, hash: &Hash, place: Option<Place>, len: u32) -> Result<Option<Stored>> {
        let (path, at) = self.file_of(hash, place);
        match read_durable(&path, at, place.map(|_| len as usize)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(path, e)),
        }
    }

    fn remove(&self, hash: &Hash, place: Option<Place>, len: u32) -> Result<()> {
        let (path, at) = self.file_of(hash, place);
        let gone = match place {
            Some(_) => fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| punch_hole(&f, at, blocks(u64::from(len)))),
            None => fs::remove_file(&path),
        };
        match gone {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io(path, e)),
            _ => Ok(()),
        }
    }

    fn clear_partial(&self, known: &HashMap<u64, Option<u64>>) -> Vec<u64> {
        let mut gone = Vec::new();
        match pack_files(&self.packs.dir) {
            Ok(packs) => {
                let on_disk: Vec<u64> = packs.iter().map(|(id, _)| *id).collect();
                // Registered, empty, and never made.
                gone.extend(
                    known
                        .iter()
                        .filter(|(id, end)| end.is_none() && !on_disk.contains(id))
                        .map(|(id, _)| *id),
                );
                let mut removed = Vec::new();
                for (id, path) in packs {
                    let cut = match known.get(&id) {
                        None => {
                            tracing::warn!(pack = %path.display(), "a chunk pack the file catalogue does not know; left as it is");
                            Ok(())
                        }
                        Some(None) => fs::remove_file(&path).map(|()| removed.push(id)),
                        Some(&Some(end)) => fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .and_then(|f| {
                                if f.metadata()?.len() > blocks(end) {
                                    f.set_len(blocks(end))?;
                                    f.sync_all()?;
                                }
                                Ok(())
                            }),
                    };
                    if let Err(e) = cut {
                        tracing::warn!(pack = %path.display(), "cannot clear a pack's unrecorded end: {e}");
                    }
                }
                // The removals are durable before their registrations go.
                if !removed.is_empty() {
                    match sync_dir(&self.packs.dir) {
                        Ok(()) => gone.extend(removed),
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list the chunk packs: {e}"),
        }
        // Temp files of chunk files, from an earlier release.
        let Ok(dirs) = fs::read_dir(&self.dir) else {
            return gone;
        };
        for d in dirs.flatten() {
            let Ok(entries) = fs::read_dir(d.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        gone
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Frees `len` bytes at `at` of `f`, its length unchanged; a file system that cannot punch
/// holes keeps the bytes (they are unreachable once their record is gone).
#[allow(unsafe_code)]
fn punch_hole(f: &fs::File, at: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return Ok(());
    }
    let (Ok(at), Ok(len)) = (libc::off_t::try_from(at), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: plain integers and a descriptor open and owned by `f`.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at,
            len,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!("the file system cannot punch holes: a removed chunk's space comes back only when its whole pack is empty, at a start")
            });
            Ok(())
        }
        e => Err(e),
    }
}

/// The extended attribute that holds a chunk file's seal (chunk files of an earlier release).
const SEAL_ATTR: &std::ffi::CStr = c"user.relay.seal";

/// The file's seal, if it has one of the right length.
#[allow(unsafe_code)]
fn get_seal(f: &fs::File) -> Option<Seal> {
    use std::os::fd::AsRawFd;
    let mut seal = Seal::default();
    // SAFETY: the name is a C string and the buffer is `seal`, writable for its whole length;
    // the descriptor is open and owned by `f`.
    let n = unsafe {
        libc::fgetxattr(
            f.as_raw_fd(),
            SEAL_ATTR.as_ptr(),
            seal.as_mut_ptr().cast(),
            seal.len(),
        )
    };
    (usize::try_from(n) == Ok(seal.len())).then_some(seal)
}

/// Reads `len` bytes at `at` of the file `path` (`None`: the whole file, and its seal).
///
/// Around the page cache (`O_DIRECT`), as chunks are written: a chunk is served once per download
/// and copying it through the cache cost more of the relay's CPU per served byte than anything but
/// the encryption. A file system without `O_DIRECT` (tmpfs) refuses it with `EINVAL`, and gets the
/// ordinary read.
fn read_durable(path: &Path, at: u64, len: Option<usize>) -> io::Result<Stored> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let (f, direct) = match direct {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (fs::File::open(path)?, false),
        f => (f?, true),
    };
    let whole_file = len.is_none();
    let len = match len {
        Some(len) => len,
        None => usize::try_from(f.metadata()?.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?,
    };
    let data = read_at(&f, at, len, direct)?;
    let seal = if whole_file { get_seal(&f) } else { None };
    Ok(Stored { data, seal })
}

/// Up to `len` bytes at `at` of `f`, short at the file's end. With `direct`, whole aligned blocks
/// are read into an aligned buffer (`at` on a block). The buffer is not zeroed first: the kernel
/// fills it (zeroing it cost a fourteenth of the relay's CPU per served byte).
fn read_at(f: &fs::File, at: u64, len: usize, direct: bool) -> io::Result<Bytes> {
    let align = if direct { DIRECT_ALIGN } else { 1 };
    let padded = len.div_ceil(align) * align;
    let mut buf: Vec<u8> = Vec::with_capacity(padded + align);
    // The bytes in front of the first boundary are padding, within the capacity.
    let start = buf.as_ptr().align_offset(align);
    if start >= align {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    buf.resize(start, 0);
    while buf.len() - start < len {
        let got = buf.len() - start;
        if read_at_into_spare(f, &mut buf, padded - got, at + got as u64)? == 0 {
            break;
        }
    }
    buf.truncate(start + len);
    Ok(Bytes::from(buf).slice(start..))
}

/// Reads up to `want` bytes at `offset` of `f` into the spare capacity of `buf`, which grows by
/// what was read; the count read.
#[allow(unsafe_code)]
fn read_at_into_spare(
    f: &fs::File,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let spare = buf.spare_capacity_mut();
    let want = want.min(spare.len());
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: the pointer and `want` lie within `buf`'s spare capacity, which nothing else
    // borrows during the call; the descriptor is open and owned by `f`.
    let n = unsafe { libc::pread(f.as_raw_fd(), spare.as_mut_ptr().cast(), want, offset) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: the kernel wrote the first `n <= want` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_kit::noise;
    use std::collections::BTreeSet;

    /// Registers any pack.
    fn any() -> Register {
        Box::new(|_| Ok(()))
    }

    /// Blocks the file system holds for `path`.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn packed_bytes_come_back_at_every_length_and_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open(&dir.path().join("chunks"), any()).unwrap();
        // Bytes that begin on a block boundary in memory and bytes that do not.
        let mut aligned = vec![0u8; (2 << 20) + DIRECT_ALIGN];
        let at = aligned.as_ptr().align_offset(DIRECT_ALIGN);
        let mut kept = Vec::new();
        for (i, len) in [
            0,
            1,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            DIRECT_ALIGN + 1,
            300_001,
            1 << 20,
        ]
        .into_iter()
        .enumerate()
        {
            let data = noise(len as u64, len);
            for skew in [0, 1] {
                let from = at + skew;
                aligned[from..from + len].copy_from_slice(&data);
                let seal = (i as u64 * 2 + skew as u64).to_le_bytes();
                let placed = blobs.put(&aligned[from..from + len], &seal).unwrap();
                assert_eq!(placed.seal(), &seal);
                let place = placed.place();
                assert_eq!(place.at % DIRECT_ALIGN as u64, 0, "on a block");
                placed.keep();
                kept.push((place, data.clone()));
            }
        }
        // One writer at a time: one pack, the chunks one after another.
        assert!(kept.windows(2).all(|w| w[0].0.pack == w[1].0.pack));
        assert!(kept.windows(2).all(|w| w[0].0.at <= w[1].0.at));
        for (place, data) in &kept {
            let got = blobs
                .get(&[0; 32], Some(*place), data.len() as u32)
                .unwrap()
                .unwrap();
            assert_eq!(got.data, data[..], "{} bytes", data.len());
            assert_eq!(got.seal, None, "a packed chunk's seal is in its row");
        }
    }

    #[test]
    fn unkept_bytes_give_their_room_back_and_concurrent_writers_get_packs_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open(&dir.path().join("chunks"), any()).unwrap();
        let first = blobs.put(b"first", &[1; 8]).unwrap();
        let second = blobs.put(b"second", &[2; 8]).unwrap();
        assert_ne!(
            first.place().pack,
            second.place().pack,
            "held packs are not shared"
        );
        let (a, b) = (first.place(), second.place());
        first.keep();
        drop(second);
        let third = blobs.put(b"third", &[3; 8]).unwrap();
        assert_eq!(third.place(), b, "the unkept bytes' room is taken again");
        third.keep();
        let fourth = blobs.put(b"fourth", &[4; 8]).unwrap();
        let after = Place {
            pack: b.pack,
            at: DIRECT_ALIGN as u64,
        };
        assert_eq!(fourth.place(), after, "after the kept chunk");
        fourth.keep();
        let got = |p: Place, n: usize| {
            blobs
                .get(&[0; 32], Some(p), n as u32)
                .unwrap()
                .unwrap()
                .data
        };
        assert_eq!(got(a, 5), &b"first"[..]);
        assert_eq!(got(b, 5), &b"third"[..]);
    }

    #[test]
    fn a_full_pack_is_closed_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open_with_limit(&dir.path().join("chunks"), 3 * 4096, any()).unwrap();
        let places: Vec<Place> = (0..5u8)
            .map(|i| {
                let p = blobs.put(&[i; 5000], &[i; 8]).unwrap();
                let place = p.place();
                p.keep();
                place
            })
            .collect();
        // 5000 bytes take two blocks: two chunks fill a pack of three blocks.
        let packs: Vec<u64> = places.iter().map(|p| p.pack).collect();
        assert_eq!(packs, [0, 0, 1, 1, 2]);
        for (i, p) in places.iter().enumerate() {
            let got = blobs.get(&[0; 32], Some(*p), 5000).unwrap().unwrap();
            assert_eq!(got.data, vec![i as u8; 5000]);
        }
        // Reopened, new packs get new names.
        drop(blobs);
        let blobs = FsBlobs::open_with_limit(&dir.path().join("chunks"), 3 * 4096, any()).unwrap();
        let p = blobs.put(b"x", &[0; 8]).unwrap();
        assert_eq!(p.place().pack, 3);
    }

    #[test]
    fn removed_bytes_become_a_hole_and_unrecorded_ends_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = dir.path().join("chunks");
        let blobs = FsBlobs::open(&chunks, any()).unwrap();
        let data = noise(5, 1 << 20);
        let mut places = Vec::new();
        for _ in 0..3 {
            let p = blobs.put(&data, &[0; 8]).unwrap();
            places.push(p.place());
            p.keep();
        }
        let pack = blobs.file_of(&[0; 32], Some(places[0])).0;
        let before = allocated(&pack);
        assert!(before >= 3 << 20, "{before}");
        blobs
            .remove(&[0; 32], Some(places[1]), data.len() as u32)
            .unwrap();
        assert!(
            allocated(&pack) <= before - (1 << 20),
            "the middle chunk's blocks are freed"
        );
        let got = |p: Place| {
            blobs
                .get(&[0; 32], Some(p), data.len() as u32)
                .unwrap()
                .unwrap()
                .data
        };
        assert_eq!(got(places[0]), data);
        assert_eq!(got(places[2]), data);
        assert_eq!(
            got(places[1]),
            vec![0u8; data.len()],
            "a hole reads as zeros"
        );
        // A chunk whose record never came (a crash before it), at the pack's end, and a second
        // pack in which nothing was recorded.
        let held = blobs.put(&data, &[0; 8]).unwrap();
        assert_eq!(held.place().pack, places[0].pack);
        let other = blobs.put(&data, &[0; 8]).unwrap();
        let other_pack = other.place().pack;
        std::mem::forget(held);
        other.keep();
        assert_eq!(fs::metadata(&pack).unwrap().len(), 4 << 20);
        let recorded = places[2].at + data.len() as u64;
        let reopened = FsBlobs::open(&chunks, any()).unwrap();
        let stray = blobs.packs.path(77);
        fs::write(&stray, b"not the catalogue's").unwrap();
        let gone = reopened.clear_partial(&HashMap::from([
            (places[0].pack, Some(recorded)),
            (other_pack, None),
            (55, None),
        ]));
        assert_eq!(
            BTreeSet::from_iter(gone),
            BTreeSet::from([other_pack, 55]),
            "removed, and registered but never made"
        );
        assert_eq!(
            fs::metadata(&pack).unwrap().len(),
            recorded,
            "the unrecorded end is cut"
        );
        assert!(
            !blobs.packs.path(other_pack).exists(),
            "a pack with nothing recorded goes"
        );
        assert!(
            stray.exists(),
            "a pack the catalogue does not know is left alone"
        );
        assert_eq!(got(places[2]), data);
        // Removing what is gone is no error.
        reopened
            .remove(&[0; 32], Some(Place { pack: 99, at: 0 }), 1)
            .unwrap();
    }

    #[test]
    fn a_pack_is_registered_before_it_is_written_and_unregistered_it_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let blobs = {
            let (seen, refuse) = (Arc::clone(&seen), Arc::clone(&refuse));
            FsBlobs::open(
                &dir.path().join("chunks"),
                Box::new(move |id| {
                    if refuse.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(StoreError::Invalid("refused".into()));
                    }
                    seen.lock().unwrap().push(id);
                    Ok(())
                }),
            )
            .unwrap()
        };
        assert!(blobs.put(b"bytes", &[0; 8]).is_err());
        assert!(
            pack_files(&blobs.packs.dir).unwrap().is_empty(),
            "no pack made without its registration"
        );
        refuse.store(false, std::sync::atomic::Ordering::Relaxed);
        let placed = blobs.put(b"bytes", &[0; 8]).unwrap();
        assert_eq!(*seen.lock().unwrap(), [placed.place().pack]);
        placed.keep();
        blobs.put(b"more", &[0; 8]).unwrap().keep();
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "an open pack is registered once"
        );
    }

    #[test]
    fn chunk_files_of_an_earlier_release_are_read_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open(&dir.path().join("chunks"), any()).unwrap();
        let hash = [0xab; 32];
        assert_eq!(blobs.get(&hash, None, 5).unwrap(), None);
        let (path, at) = blobs.file_of(&hash, None);
        assert_eq!(at, 0);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"plain").unwrap();
        let torn = path.with_extension("abc.tmp");
        fs::write(&torn, b"half").unwrap();
        blobs.clear_partial(&HashMap::new());
        assert!(!torn.exists(), "a torn temp file is cleared");
        assert!(
            !dir.path().join("chunks/packs").exists(),
            "made by the first put, not by a reader"
        );
        let got = blobs.get(&hash, None, 5).unwrap().unwrap();
        assert_eq!((&got.data[..], got.seal), (&b"plain"[..], None));
        blobs.remove(&hash, None, 5).unwrap();
        blobs.remove(&hash, None, 5).unwrap();
        assert_eq!(blobs.get(&hash, None, 5).unwrap(), None);
    }
}
