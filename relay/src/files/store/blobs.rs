//! Where a chunk's bytes live: the [`Blobs`] seam, and its file-system implementation.
//!
//! A blob store keeps bytes under a hash and hands them back as they were put; it checks
//! nothing. The [`super::ChunkStore`] verifies every chunk before it puts it and after it gets
//! it, and keeps the bookkeeping. Another backend (object storage, or a store written while a
//! recording's bytes still arrive) implements this trait.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Hash, Result, StoreError, io_err};
use crate::files::DIRECT_ALIGN;
use crate::files::chunker::Seal;

/// What a blob store hands back: the bytes, and the seal put with them if the store kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub data: Bytes,
    pub seal: Option<Seal>,
}

/// Bytes by their hash, each with a seal that the store keeps beside them where it can.
pub trait Blobs: Send + Sync + std::fmt::Debug {
    /// Puts `data` under `hash` with `seal`, durably: once this returns they survive a crash or
    /// a power loss, and until then a reader finds either nothing or the whole of the bytes.
    fn put(&self, hash: &Hash, data: &[u8], seal: &Seal) -> Result<()>;
    /// The bytes under `hash` as they were put, or `None` when there are none.
    fn get(&self, hash: &Hash) -> Result<Option<Stored>>;
    /// Removes the bytes under `hash`; none there is no error.
    fn remove(&self, hash: &Hash) -> Result<()>;
    /// Clears what a crash in the middle of a put left behind. Only the process that puts may
    /// call this, before it starts putting.
    fn clear_partial(&self);
}

/// Blobs as files: `chunks/ab/cdef...` (the hex of the hash), each written to a temp file in
/// its directory, flushed, renamed into place and the directory flushed; 0600 in 0700
/// directories. The seal is the file's extended attribute `user.relay.seal`, so that a file
/// holds exactly its chunk's bytes whichever release wrote it; on a file system without user
/// extended attributes it is not kept.
#[derive(Debug)]
pub struct FsBlobs {
    dir: PathBuf,
}

impl FsBlobs {
    /// The blobs under `dir`, made if missing.
    pub fn open(dir: &Path) -> Result<FsBlobs> {
        let fresh = !dir.exists();
        crate::private::dir(dir).map_err(io_err(dir))?;
        if fresh && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(FsBlobs {
            dir: dir.to_path_buf(),
        })
    }

    fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hex::encode(hash);
        self.dir.join(&hex[..2]).join(&hex[2..])
    }
}

impl Blobs for FsBlobs {
    fn put(&self, hash: &Hash, data: &[u8], seal: &Seal) -> Result<()> {
        let path = self.path_of(hash);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        if !dir.exists() {
            crate::private::dir(&dir).map_err(io_err(&dir))?;
            sync_dir(&self.dir)?;
        }
        let tmp = dir.join(format!(
            "{}.{}.tmp",
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            hex::encode(crate::random_bytes::<6>())
        ));
        if let Err(e) = write_durably(&tmp, data, seal) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io(tmp, e));
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&dir)
    }

    fn get(&self, hash: &Hash) -> Result<Option<Stored>> {
        let path = self.path_of(hash);
        match read_durable(&path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io(path, e)),
        }
    }

    fn remove(&self, hash: &Hash) -> Result<()> {
        let path = self.path_of(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io(path, e)),
        }
    }

    fn clear_partial(&self) {
        let Ok(dirs) = fs::read_dir(&self.dir) else {
            return;
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
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `data` to the file `path` (created or truncated), seals it, and flushes it to the disk.
///
/// The bytes go with `O_DIRECT`, around the page cache: a chunk is written once and read back
/// rarely, and copying it into the cache took more of the relay's CPU than anything else it does
/// per stored byte; the fsync after it then has little left to do. A file system without
/// `O_DIRECT` (tmpfs) refuses it with `EINVAL`, and gets the ordinary write.
fn write_durably(path: &Path, data: &[u8], seal: &Seal) -> io::Result<()> {
    let f = match write_direct(path, data) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut f = crate::private::open_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            f.write_all(data)?;
            f
        }
        r => r?,
    };
    set_seal(&f, seal)?;
    f.sync_all()
}

/// The extended attribute that holds a chunk file's seal.
const SEAL_ATTR: &std::ffi::CStr = c"user.relay.seal";

/// Sets the file's seal; a file system without user extended attributes keeps none.
#[allow(unsafe_code)]
fn set_seal(f: &fs::File, seal: &Seal) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the name is a C string and the value a live buffer of the length given; the
    // descriptor is open and owned by `f`.
    let r = unsafe {
        libc::fsetxattr(
            f.as_raw_fd(),
            SEAL_ATTR.as_ptr(),
            seal.as_ptr().cast(),
            seal.len(),
            0,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        e => Err(e),
    }
}

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

/// `O_DIRECT` wants whole aligned blocks. The whole blocks of `data` go to the disk as they lie
/// when they begin on a block boundary in memory (the file plane's reader puts a received chunk
/// there), or else through an aligned copy. The last partial block goes through the page cache,
/// so that the file is never longer than the data and never has to be cut back (cutting it cost
/// the file system more than the write of the block). The caller flushes the file.
fn write_direct(path: &Path, data: &[u8]) -> io::Result<fs::File> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = crate::private::open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    if whole > 0 {
        if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            f.write_all_at(&data[..whole], 0)?;
        } else {
            crate::files::write_direct_copy(&f, &data[..whole], 0)?;
        }
    }
    let tail = &data[whole..];
    if !tail.is_empty() {
        buffered(&f)?;
        f.write_all_at(tail, whole as u64)?;
    }
    Ok(f)
}

/// Turns `O_DIRECT` off for `f`: its next writes go through the page cache.
#[allow(unsafe_code)]
fn buffered(f: &fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open and owned by `f`; F_GETFL and F_SETFL take and return plain
    // integers.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the file `path` whole.
///
/// Around the page cache (`O_DIRECT`), as chunks are written: a chunk is served once per download
/// and copying it through the cache cost more of the relay's CPU per served byte than anything but
/// the encryption. A file system without `O_DIRECT` (tmpfs) refuses it with `EINVAL`, and gets the
/// ordinary read.
fn read_durable(path: &Path) -> io::Result<Stored> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let direct = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let (f, data) = match direct {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut f = fs::File::open(path)?;
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            (f, Bytes::from(data))
        }
        f => {
            let f = f?;
            let data = read_direct(&f)?;
            (f, data)
        }
    };
    Ok(Stored {
        data,
        seal: get_seal(&f),
    })
}

/// Whole aligned blocks read into an aligned buffer; the last block comes back short, at the
/// file's end. The buffer is not zeroed first: the kernel fills it (zeroing it cost a fourteenth
/// of the relay's CPU per served byte).
fn read_direct(f: &fs::File) -> io::Result<Bytes> {
    let len = usize::try_from(f.metadata()?.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let padded = len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut buf: Vec<u8> = Vec::with_capacity(padded + DIRECT_ALIGN);
    // The bytes in front of the first boundary are padding, within the capacity.
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    if start >= DIRECT_ALIGN {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    buf.resize(start, 0);
    while buf.len() - start < len {
        let got = buf.len() - start;
        if read_at_into_spare(f, &mut buf, padded - got, got as u64)? == 0 {
            break;
        }
    }
    // A file cut short between the length and the read is read as it is now.
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

    #[test]
    fn durable_writes_keep_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        // Bytes that begin on a block boundary in memory and bytes that do not.
        let mut aligned = vec![0u8; (2 << 20) + DIRECT_ALIGN];
        let at = aligned.as_ptr().align_offset(DIRECT_ALIGN);
        for len in [
            0,
            1,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            DIRECT_ALIGN + 1,
            300_001,
            1 << 20,
        ] {
            let data = noise(len as u64, len);
            let seal = (len as u64).to_le_bytes();
            write_durably(&path, &data, &seal).unwrap();
            assert_eq!(fs::read(&path).unwrap(), data, "{len} bytes");
            let stored = read_durable(&path).unwrap();
            assert_eq!(stored.data, data, "{len} bytes read around the cache");
            assert_eq!(stored.seal, Some(seal), "{len} bytes' seal");
            for skew in [0, 1] {
                let from = at + skew;
                aligned[from..from + len].copy_from_slice(&data);
                write_durably(&path, &aligned[from..from + len], &seal).unwrap();
                assert_eq!(fs::read(&path).unwrap(), data, "{len} bytes at {skew}");
            }
        }
    }

    #[test]
    fn blobs_come_back_as_put_and_partial_writes_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FsBlobs::open(&dir.path().join("chunks")).unwrap();
        let hash = [7u8; 32];
        assert_eq!(blobs.get(&hash).unwrap(), None);
        blobs.put(&hash, b"first", &[1; 8]).unwrap();
        blobs.put(&hash, b"second", &[2; 8]).unwrap();
        let second = Some(Stored {
            data: Bytes::from_static(b"second"),
            seal: Some([2; 8]),
        });
        assert_eq!(blobs.get(&hash).unwrap(), second);
        // A crash mid-put leaves a temp file beside the blobs; it is cleared, they are not.
        let torn = blobs.path_of(&hash).with_extension("abc.tmp");
        fs::write(&torn, b"half").unwrap();
        blobs.clear_partial();
        assert!(!torn.exists());
        assert_eq!(blobs.get(&hash).unwrap(), second);
        // A file written without a seal (by an earlier release) has none.
        fs::remove_file(blobs.path_of(&hash)).unwrap();
        fs::write(blobs.path_of(&hash), b"plain").unwrap();
        let plain = blobs.get(&hash).unwrap().unwrap();
        assert_eq!((&plain.data[..], plain.seal), (&b"plain"[..], None));
        blobs.remove(&hash).unwrap();
        blobs.remove(&hash).unwrap();
        assert_eq!(blobs.get(&hash).unwrap(), None);
    }
}
