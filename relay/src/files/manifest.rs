//! The manifest: a file as its ordered list of chunks, with its size and root hash.
//!
//! The root is BLAKE3 in key-derivation mode with the context [`ROOT_CONTEXT`] over, for each chunk
//! in order, its 32-byte hash followed by its length as 4 little-endian bytes. It names the whole
//! file: two manifests with the same root list the same chunks, so the same bytes.
//!
//! Encoding (all integers little-endian):
//!
//! ```text
//! "RLM1" | size: u64 | count: u32 | root: [u8; 32] | count x (hash: [u8; 32], len: u32)
//! ```
//!
//! The decoder is strict and total: it checks the magic, the count against [`MAX_CHUNKS`], every
//! length against 1..=[`MAX_CHUNK`], the sum of lengths against `size`, the root against the chunks,
//! and refuses trailing bytes. It allocates only after the count is checked against the input's
//! length, and never panics.

use super::Hash;
use super::chunker::MAX_CHUNK;

/// The most chunks one file may have: 256 GiB at the average chunk size, a 9 MiB manifest.
pub const MAX_CHUNKS: usize = 1 << 18;

pub const ROOT_CONTEXT: &str = "relay files 2025 manifest root v1";

const MAGIC: &[u8; 4] = b"RLM1";
const HEAD: usize = 4 + 8 + 4 + 32;
const ENTRY: usize = 32 + 4;

/// One chunk of a file: its hash and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// A file's chunks, size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    size: u64,
    root: Hash,
    chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest truncated: {got} bytes, needs {needed}")]
    Truncated { needed: usize, got: usize },
    #[error("not a manifest (bad magic)")]
    BadMagic,
    #[error("manifest lists {0} chunks, more than {max}", max = MAX_CHUNKS)]
    TooManyChunks(u64),
    #[error("manifest chunk {index} is empty")]
    EmptyChunk { index: usize },
    #[error("manifest chunk {index} is {len} bytes, more than {}", MAX_CHUNK)]
    ChunkTooLarge { index: usize, len: u32 },
    #[error("manifest declares {declared} bytes but its chunks add up to {sum}")]
    SizeMismatch { declared: u64, sum: u64 },
    #[error("manifest root does not match its chunks")]
    RootMismatch,
    #[error("{0} bytes after the manifest")]
    TrailingBytes(usize),
}

/// The root hash of `chunks`; see the module documentation.
pub fn root_of(chunks: &[ChunkRef]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    for c in chunks {
        h.update(&c.hash);
        h.update(&c.len.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

fn check_chunks(chunks: &[ChunkRef]) -> Result<u64, ManifestError> {
    if chunks.len() > MAX_CHUNKS {
        return Err(ManifestError::TooManyChunks(chunks.len() as u64));
    }
    let mut sum = 0u64;
    for (index, c) in chunks.iter().enumerate() {
        if c.len == 0 {
            return Err(ManifestError::EmptyChunk { index });
        }
        if c.len as usize > MAX_CHUNK {
            return Err(ManifestError::ChunkTooLarge { index, len: c.len });
        }
        sum += u64::from(c.len);
    }
    Ok(sum)
}

impl Manifest {
    /// A manifest of `chunks`, checked against the limits.
    pub fn new(chunks: Vec<ChunkRef>) -> Result<Manifest, ManifestError> {
        let size = check_chunks(&chunks)?;
        Ok(Manifest {
            size,
            root: root_of(&chunks),
            chunks,
        })
    }

    /// Cuts `source` into chunks and lists them, reading it once.
    pub fn scan(source: impl std::io::Read) -> std::io::Result<Manifest> {
        let mut chunker = super::chunker::Chunker::new(source);
        let mut chunks = Vec::new();
        while let Some(c) = chunker.next_chunk()? {
            chunks.push(ChunkRef {
                hash: c.hash,
                // A chunk is at most MAX_CHUNK (4 MiB) long.
                len: c.data.len() as u32,
            });
        }
        Manifest::new(chunks).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn root(&self) -> &Hash {
        &self.root
    }
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// The byte offset of every chunk in the file.
    pub fn offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.chunks
            .iter()
            .map(|c| {
                let o = at;
                at += u64::from(c.len);
                o
            })
            .collect()
    }

    pub fn encoded_len(&self) -> usize {
        HEAD + ENTRY * self.chunks.len()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.root);
        for c in &self.chunks {
            out.extend_from_slice(&c.hash);
            out.extend_from_slice(&c.len.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let head = bytes.get(..HEAD).ok_or(ManifestError::Truncated {
            needed: HEAD,
            got: bytes.len(),
        })?;
        let (magic, rest) = head.split_at(4);
        if magic != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let (size, rest) = rest.split_at(8);
        let (count, root) = rest.split_at(4);
        let size = u64::from_le_bytes(size.try_into().unwrap_or_default());
        let count = u32::from_le_bytes(count.try_into().unwrap_or_default()) as usize;
        if count > MAX_CHUNKS {
            return Err(ManifestError::TooManyChunks(count as u64));
        }
        let needed = HEAD + count * ENTRY;
        if bytes.len() < needed {
            return Err(ManifestError::Truncated {
                needed,
                got: bytes.len(),
            });
        }
        if bytes.len() > needed {
            return Err(ManifestError::TrailingBytes(bytes.len() - needed));
        }
        let chunks: Vec<ChunkRef> = bytes[HEAD..needed]
            .chunks_exact(ENTRY)
            .map(|e| {
                let (hash, len) = e.split_at(32);
                ChunkRef {
                    hash: hash.try_into().unwrap_or_default(),
                    len: u32::from_le_bytes(len.try_into().unwrap_or_default()),
                }
            })
            .collect();
        let sum = check_chunks(&chunks)?;
        if sum != size {
            return Err(ManifestError::SizeMismatch {
                declared: size,
                sum,
            });
        }
        let m = Manifest::new(chunks)?;
        if m.root[..] != root[..] {
            return Err(ManifestError::RootMismatch);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::chunker::{AVG_CHUNK, chunk_hash};
    use relay_kit::noise;

    fn sample(n: usize) -> Manifest {
        let chunks = (0..n)
            .map(|i| ChunkRef {
                hash: chunk_hash(&i.to_le_bytes()),
                len: 1000 + i as u32,
            })
            .collect();
        Manifest::new(chunks).unwrap()
    }

    #[test]
    fn round_trips() {
        for n in [0, 1, 2, 100] {
            let m = sample(n);
            let bytes = m.encode();
            assert_eq!(bytes.len(), m.encoded_len());
            assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn scan_lists_the_file() {
        let data = noise(9, 3 * AVG_CHUNK + 17);
        let m = Manifest::scan(&data[..]).unwrap();
        assert_eq!(m.size(), data.len() as u64);
        let offsets = m.offsets();
        for (c, o) in m.chunks().iter().zip(offsets) {
            let o = o as usize;
            assert_eq!(chunk_hash(&data[o..o + c.len as usize]), c.hash);
        }
        let empty = Manifest::scan(&[][..]).unwrap();
        assert_eq!((empty.size(), empty.chunks().len()), (0, 0));
        assert_ne!(empty.root(), m.root());
    }

    #[test]
    fn root_depends_on_order_and_lengths() {
        let m = sample(3);
        let mut swapped = m.chunks().to_vec();
        swapped.swap(0, 1);
        assert_ne!(root_of(&swapped), *m.root());
        let mut longer = m.chunks().to_vec();
        longer[2].len += 1;
        assert_ne!(root_of(&longer), *m.root());
    }

    #[test]
    fn malformed_input_is_refused() {
        let good = sample(3).encode();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        type Case = (&'static str, Vec<u8>, fn(&ManifestError) -> bool);
        let cases: Vec<Case> = vec![
            ("empty", vec![], |e| {
                matches!(e, ManifestError::Truncated { .. })
            }),
            ("magic", with(&|b| b[0] = b'X'), |e| {
                matches!(e, ManifestError::BadMagic)
            }),
            ("short", good[..good.len() - 1].to_vec(), |e| {
                matches!(e, ManifestError::Truncated { .. })
            }),
            ("trailing", with(&|b| b.push(0)), |e| {
                matches!(e, ManifestError::TrailingBytes(1))
            }),
            (
                "huge count",
                with(&|b| b[12..16].copy_from_slice(&u32::MAX.to_le_bytes())),
                |e| matches!(e, ManifestError::TooManyChunks(_)),
            ),
            ("size", with(&|b| b[4] ^= 1), |e| {
                matches!(e, ManifestError::SizeMismatch { .. })
            }),
            ("root", with(&|b| b[20] ^= 1), |e| {
                matches!(e, ManifestError::RootMismatch)
            }),
            ("hash", with(&|b| b[HEAD] ^= 1), |e| {
                matches!(e, ManifestError::RootMismatch)
            }),
            (
                "zero length",
                with(&|b| b[HEAD + 32..HEAD + 36].copy_from_slice(&[0; 4])),
                |e| matches!(e, ManifestError::EmptyChunk { index: 0 }),
            ),
            (
                "too long",
                with(&|b| b[HEAD + 32..HEAD + 36].copy_from_slice(&u32::MAX.to_le_bytes())),
                |e| matches!(e, ManifestError::ChunkTooLarge { index: 0, .. }),
            ),
        ];
        for (name, bytes, ok) in cases {
            let e = Manifest::decode(&bytes).unwrap_err();
            assert!(ok(&e), "{name}: {e:?}");
            assert!(!e.to_string().is_empty());
        }
        // Every prefix of a good manifest is refused, none panics.
        for n in 0..good.len() {
            assert!(Manifest::decode(&good[..n]).is_err());
        }
    }
}
