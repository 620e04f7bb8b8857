//! A file mapped read-only into memory, so that the client cuts, hashes and sends its bytes from
//! the page cache in place instead of copying them into buffers first (a copy of every byte, twice
//! for a first upload: once to cut, once to send).
//!
//! The mapping itself is `memmap2`'s. Why the slice it hands out is sound to read: the mapping
//! is private, read-only and lives until the [`Mapped`] is dropped, which no slice outlives (they
//! borrow it, or hold it in an `Arc`). What a mapping cannot promise is that another process
//! leaves the file alone: bytes written meanwhile show through (the chunks then do not match
//! their hashes, and the relay refuses them), and a file truncated while it is read ends the
//! client with `SIGBUS`, as it would any program that maps files (git, ripgrep).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// A whole file, mapped.
#[derive(Debug)]
pub struct Mapped {
    /// `None` for an empty file: there is nothing to map.
    map: Option<memmap2::Mmap>,
}

impl Mapped {
    /// Maps the first `len` bytes of `file` (its length when it was opened).
    pub fn new(file: &File, len: u64) -> io::Result<Mapped> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too large to map"))?;
        if len == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: a private read-only mapping of an open file. Another process changing the file
        // meanwhile is what this cannot exclude: changed bytes fail their chunk's hash, and a
        // truncation ends the client with SIGBUS, as the module says.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(Mapped { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
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
