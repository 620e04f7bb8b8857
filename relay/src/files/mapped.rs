//! A file mapped read-only into memory, so that the client cuts, hashes and sends its bytes from
//! the page cache in place instead of copying them into buffers first (a copy of every byte, twice
//! for a first upload: once to cut, once to send).
//!
//! This is the one module of the file plane that calls libc directly (`unsafe`): `mmap` and
//! `munmap`. Why the slice it hands out is sound to read: the mapping is private, read-only and
//! lives until the [`Mapped`] is dropped, which no slice outlives (they borrow it, or hold it in an
//! `Arc`). What a mapping cannot promise is that another process leaves the file alone: bytes
//! written meanwhile show through (the chunks then do not match their hashes, and the relay
//! refuses them), and a file truncated while it is read ends the client with `SIGBUS`, as it
//! would any program that maps files (git, ripgrep).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A whole file, mapped.
#[derive(Debug)]
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// The mapping is read-only memory owned by this value alone; sharing reads across threads is
// what it is for.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps the first `len` bytes of `file` (its length when it was opened).
    pub fn new(file: &File, len: u64) -> io::Result<Mapped> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
        if len == 0 {
            // mmap refuses an empty mapping; an empty file has nothing to read.
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel (no address given), of a file descriptor
        // that is open for the duration of the call; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes until `self` is dropped, and
        // the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `new`, unmapped once; no slice of it outlives `self`.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

/// A range of a shared mapping, to hand to `Bytes::from_owner` without copying.
#[derive(Debug, Clone)]
pub struct MappedRange {
    pub map: std::sync::Arc<Mapped>,
    pub start: usize,
    pub end: usize,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        self.map.bytes().get(self.start..self.end).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_files_of_any_length() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 4096, 1 << 20] {
            let path = dir.path().join(format!("f{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let f = File::open(&path).unwrap();
            let m = std::sync::Arc::new(Mapped::new(&f, len as u64).unwrap());
            assert_eq!(m.bytes(), &data[..]);
            let r = MappedRange {
                map: m.clone(),
                start: len / 3,
                end: len / 2,
            };
            assert_eq!(r.as_ref(), &data[len / 3..len / 2]);
            let past = MappedRange {
                map: m,
                start: len,
                end: len + 1,
            };
            assert_eq!(past.as_ref(), &[] as &[u8]);
        }
    }
}
