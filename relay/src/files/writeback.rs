//! Telling the kernel about a download's file as it is written: its whole size reserved at the
//! start (`posix_fallocate`, so the file system allocates its extents once instead of chunk by
//! chunk into a sparse file), and each chunk's range handed to writeback as soon as it is written
//! (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`, which starts the write without waiting), so
//! dirty pages do not pile up for the final `fsync` to flush at once.
//!
//! Both are hints: where the file system refuses them, the download goes on without.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// Reserves `len` bytes for `file`; false where the file system does not.
pub fn preallocate(file: &File, len: u64) -> bool {
    let Ok(len) = libc::off_t::try_from(len) else {
        return false;
    };
    if len == 0 {
        return true;
    }
    // SAFETY: the descriptor is open and owned by `file` for the length of the call; the call
    // reads no memory of ours.
    unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) == 0 }
}

/// Starts writing back `len` bytes at `offset` of `file`, without waiting for them.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: as above; a failure (a file system without it) only means no early writeback.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_reserved_file_takes_writes_and_hints() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.set_len(1 << 20).unwrap();
        assert!(preallocate(&f, 1 << 20));
        f.write_all_at(b"abc", 4096).unwrap();
        start_writeback(&f, 4096, 3);
        let mut back = [0u8; 3];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(&back, b"abc");
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    }
}
