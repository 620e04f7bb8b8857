//! The file plane's decisions, as pure functions: which chunks must travel, whether an upload fits
//! its quotas, whether a chunk is worth compressing, whether a file's type is allowed.
//!
//! No I/O, no clock, no store: the shells ask these and act on the answer, and tests call them
//! directly.

use std::collections::HashSet;
use std::fmt;

use super::Hash;
use super::manifest::ChunkRef;

/// The chunk indices the other side must send: the first index of every distinct hash that
/// `have` says is not held. A chunk repeated within a file travels once.
pub fn missing_chunks(chunks: &[ChunkRef], mut have: impl FnMut(&Hash) -> bool) -> Vec<u32> {
    let mut seen = HashSet::with_capacity(chunks.len());
    let mut missing = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        if seen.insert(c.hash) && !have(&c.hash) {
            // A manifest holds at most MAX_CHUNKS (2^18) entries.
            missing.push(i as u32);
        }
    }
    missing
}

/// Whose quota an upload would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    Organisation,
    User,
}

/// Logical bytes in use (stored files plus open reservations) and the limit, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub scope: QuotaScope,
    pub used: u64,
    pub limit: u64,
    pub wanted: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.scope {
            QuotaScope::Organisation => "organisation",
            QuotaScope::User => "user",
        };
        write!(
            f,
            "the {who} quota would be exceeded: {} bytes in use, {} wanted, {} allowed",
            self.used, self.wanted, self.limit
        )
    }
}

/// May `size` more logical bytes be reserved? Both quotas must hold; the organisation is checked
/// first so its message wins when both are full.
pub fn reserve(size: u64, org: Usage, user: Usage) -> Result<(), QuotaExceeded> {
    for (scope, u) in [(QuotaScope::Organisation, org), (QuotaScope::User, user)] {
        if let Some(limit) = u.limit
            && u.used.checked_add(size).is_none_or(|total| total > limit)
        {
            return Err(QuotaExceeded {
                scope,
                used: u.used,
                limit,
                wanted: size,
            });
        }
    }
    Ok(())
}

/// zstd level for chunks on the wire: cheap enough to keep up with the link.
pub const ZSTD_LEVEL: i32 = 3;

/// Is it worth trying to compress a file whose first chunk is `head`? Not for formats that are
/// compressed already: zstd would burn a core to save nothing.
pub fn worth_trying_compression(head: &[u8]) -> bool {
    use infer::MatcherType::{Archive, Audio, Image, Video};
    !infer::get(head).is_some_and(|t| matches!(t.matcher_type(), Video | Image | Archive | Audio))
}

/// Which chunks of a file a sender tries to compress, learnt as it sends them. A file whose type
/// is compressed already is never tried. Otherwise every chunk is tried until [`UNPAID_RUN`] in a
/// row did not pay; from then on one chunk in [`RETRY_EVERY`] of those sent is, until one pays and
/// every chunk is tried again. A video whose magic bytes did not give it away then costs its
/// sender a sample of one chunk in sixteen, not of each. A chunk sent untried goes as it is and
/// is served as it came, as one that was tried and did not pay: where a compressible part of a
/// file follows an incompressible one, the chunks sent before a trial finds it out (up to
/// `RETRY_EVERY - 1`, and those already on their way while the trial runs) stay uncompressed.
/// Chunks travel several at a time, so "in a row" is in the order their trials end.
#[derive(Debug)]
pub struct CompressionTrials {
    file_may_compress: bool,
    unpaid: std::sync::atomic::AtomicU32,
    untried: std::sync::atomic::AtomicU32,
}

/// Chunks in a row that did not pay before a sender stops trying each one.
pub const UNPAID_RUN: u32 = 8;
/// Then one chunk in this many is tried.
pub const RETRY_EVERY: u32 = 16;

impl CompressionTrials {
    /// Trials for a file whose first bytes are `head` (see [`worth_trying_compression`]).
    pub fn for_file(head: &[u8]) -> CompressionTrials {
        CompressionTrials {
            file_may_compress: worth_trying_compression(head),
            unpaid: Default::default(),
            untried: Default::default(),
        }
    }

    /// Is the next chunk sent to be tried?
    pub fn worth_trying(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.file_may_compress
            && (self.unpaid.load(Relaxed) < UNPAID_RUN
                || self.untried.fetch_add(1, Relaxed) % RETRY_EVERY == RETRY_EVERY - 1)
    }

    /// A tried chunk's outcome: compressing it paid, or not.
    pub fn tried(&self, paid: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if paid {
            self.unpaid.store(0, Relaxed);
        } else {
            self.unpaid.fetch_add(1, Relaxed);
        }
    }
}

/// Is compressing a stored chunk for the wire worth trying on a get? Not when its file's type
/// is compressed already (`file_may_compress` false), nor when the chunk arrived as it is
/// (`arrived_compressed` `Some(false)`): its sender tried and it did not pay, or its type or the
/// chunks before it said not to try ([`CompressionTrials`]). A chunk that nothing is known of
/// (stored by an earlier release) is tried.
pub fn worth_compressing_to_serve(
    file_may_compress: bool,
    arrived_compressed: Option<bool>,
) -> bool {
    file_may_compress && arrived_compressed != Some(false)
}

/// Keep a compressed form only when it saves at least 3%.
pub fn keep_compressed(raw_len: usize, compressed_len: usize) -> bool {
    (compressed_len as u128) * 100 <= (raw_len as u128) * 97
}

/// Bytes from the middle of a chunk that are compressed first, at the fastest level: when they
/// do not save 3%, the whole chunk is sent as it is without trying. Incompressible data (most
/// video, whatever its name says) then costs the sender a 64 KiB attempt per chunk instead of a
/// full one, which had been a quarter of its CPU.
const COMPRESSION_SAMPLE: usize = 64 * 1024;

thread_local! {
    /// A compression context per thread, kept between chunks: making one for each chunk cost as
    /// much as compressing the sample of an incompressible chunk.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A chunk of `len` bytes from its compressed form, through this thread's context.
pub fn decompress(data: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let z = match slot {
            Some(z) => z,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        z.decompress(data, len)
    })
}

/// `data` compressed, when that saves at least 3%.
pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let z = match slot {
            Some(z) => z,
            None => slot.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?),
        };
        if data.len() >= 4 * COMPRESSION_SAMPLE {
            let mid = data.len() / 2 - COMPRESSION_SAMPLE / 2;
            let sample = &data[mid..mid + COMPRESSION_SAMPLE];
            z.set_compression_level(1).ok()?;
            let c = z.compress(sample).ok()?;
            if !keep_compressed(sample.len(), c.len()) {
                return None;
            }
        }
        z.set_compression_level(ZSTD_LEVEL).ok()?;
        let c = z.compress(data).ok()?;
        keep_compressed(data.len(), c.len()).then_some(c)
    })
}

/// The content type the allow-list is checked against: what the magic bytes say, or
/// `application/octet-stream` for content with no known signature.
pub fn content_type(head: &[u8]) -> &'static str {
    infer::get(head).map_or("application/octet-stream", |t| t.mime_type())
}

/// Does `allowed` (MIME types, or `type/*` for a whole family) admit `mime`?
pub fn type_allowed(allowed: &[String], mime: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix("/*") {
        Some(family) => mime
            .split_once('/')
            .is_some_and(|(f, _)| f.eq_ignore_ascii_case(family)),
        None => a.eq_ignore_ascii_case(mime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_kit::noise;

    fn c(b: u8) -> ChunkRef {
        ChunkRef {
            hash: [b; 32],
            len: 1,
        }
    }

    #[test]
    fn missing_lists_first_index_of_each_absent_hash() {
        let chunks = [c(1), c(2), c(1), c(3), c(2), c(4)];
        #[rustfmt::skip]
        let table: [(&[u8], Vec<u32>); 4] = [
            (&[],           vec![0, 1, 3, 5]),
            (&[1, 2, 3, 4], vec![]),
            (&[2],          vec![0, 3, 5]),
            (&[1, 4],       vec![1, 3]),
        ];
        for (have, want) in table {
            assert_eq!(missing_chunks(&chunks, |h| have.contains(&h[0])), want);
        }
        assert!(missing_chunks(&[], |_| false).is_empty());
    }

    #[test]
    fn quota_arithmetic() {
        let u = |used, limit| Usage { used, limit };
        #[rustfmt::skip]
        let table = [
            (10, u(0, None),        u(0, None),       None),
            (10, u(90, Some(100)),  u(0, None),       None),
            (11, u(90, Some(100)),  u(0, None),       Some(QuotaScope::Organisation)),
            (11, u(0, None),        u(90, Some(100)), Some(QuotaScope::User)),
            (11, u(90, Some(100)),  u(90, Some(100)), Some(QuotaScope::Organisation)),
            (0,  u(100, Some(100)), u(0, Some(0)),    None),
            (1,  u(0, Some(100)),   u(0, Some(0)),    Some(QuotaScope::User)),
            (u64::MAX, u(1, Some(u64::MAX)), u(0, None), Some(QuotaScope::Organisation)),
        ];
        for (i, (size, org, user, want)) in table.into_iter().enumerate() {
            assert_eq!(
                reserve(size, org, user).err().map(|e| e.scope),
                want,
                "row {i}"
            );
        }
    }

    #[test]
    fn a_get_tries_compression_unless_the_type_or_the_chunk_said_no() {
        assert!(worth_compressing_to_serve(true, Some(true)));
        assert!(worth_compressing_to_serve(true, None));
        assert!(!worth_compressing_to_serve(true, Some(false)));
        for chunk in [Some(true), Some(false), None] {
            assert!(!worth_compressing_to_serve(false, chunk));
        }
    }

    #[test]
    fn a_sender_stops_trying_each_chunk_after_a_run_that_did_not_pay() {
        let mp4 = [
            0, 0, 0, 0x18, b'f', b't', b'y', b'p', b'm', b'p', b'4', b'2',
        ];
        let video = CompressionTrials::for_file(&mp4);
        assert!(
            (0..64).all(|_| !video.worth_trying()),
            "a compressed type is never tried"
        );
        let t = CompressionTrials::for_file(b"plain words");
        for i in 0..UNPAID_RUN {
            assert!(t.worth_trying(), "chunk {i}");
            t.tried(false);
        }
        let tried: Vec<u32> = (0..64).filter(|_| t.worth_trying()).collect();
        assert_eq!(tried, [15, 31, 47, 63], "one in sixteen of the chunks sent");
        t.tried(true);
        assert!(
            (0..64).all(|_| t.worth_trying()),
            "one that paid brings every chunk back"
        );
        for _ in 0..UNPAID_RUN - 1 {
            t.tried(false);
        }
        assert!(
            t.worth_trying(),
            "a run shorter than UNPAID_RUN keeps every chunk tried"
        );
    }

    #[test]
    fn compression_only_when_it_pays() {
        assert!(keep_compressed(100, 97));
        assert!(!keep_compressed(100, 98));
        assert!(keep_compressed(0, 0));
        assert!(compress(&vec![b'a'; 100_000]).is_some());
        assert!(compress(&noise(1, 100_000)).is_none());
        // Large chunks are judged by a sample from their middle first.
        let mut text = b"the same few words again and again, ".repeat(30_000);
        assert!(compress(&text).is_some());
        let mid = text.len() / 2;
        text[mid - 40_000..mid + 40_000].copy_from_slice(&noise(2, 80_000));
        assert!(compress(&text).is_none());
        // A small chunk right after a sample judged at the fastest level is compressed at the
        // full level, as a fresh context would.
        let lines: Vec<u8> = (0..10_000)
            .flat_map(|i| format!("line {i} of {}, ", i * 7 % 1000).into_bytes())
            .collect();
        assert!(lines.len() < 4 * COMPRESSION_SAMPLE);
        let fast = zstd::bulk::compress(&lines, 1).unwrap();
        let full = zstd::bulk::compress(&lines, ZSTD_LEVEL).unwrap();
        assert_ne!(fast, full, "the levels must differ on this input");
        assert_eq!(compress(&lines).unwrap(), full);
        // One context serves every chunk of a thread, whatever came before: each compressed
        // form comes back as its chunk, at the full level (not the sample's).
        for data in [
            b"the same few words again and again, ".repeat(30_000),
            vec![b'a'; 100_000],
            b"another line of text, and another, ".repeat(20_000),
        ] {
            let z = compress(&data).unwrap();
            assert_eq!(decompress(&z, data.len()).unwrap(), data);
            assert!(decompress(&z, data.len() - 1).is_err(), "longer than said");
            assert!(
                decompress(&z[..z.len() / 2], data.len()).is_err(),
                "cut short"
            );
            assert_eq!(z, zstd::bulk::compress(&data, ZSTD_LEVEL).unwrap());
        }
        let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0];
        let mp4 = [
            0, 0, 0, 0x18, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm',
        ];
        let zip = [b'P', b'K', 3, 4, 0, 0, 0, 0];
        for head in [&png[..], &mp4[..], &zip[..]] {
            assert!(!worth_trying_compression(head), "{head:?}");
        }
        assert!(worth_trying_compression(b"plain text"));
        assert!(worth_trying_compression(&[]));
    }

    #[test]
    fn types_are_matched_on_content() {
        let allowed: Vec<String> = ["video/*", "application/pdf", "application/octet-stream"]
            .map(String::from)
            .to_vec();
        // infer wants a whole ELF header (more than 52 bytes) before it says ELF.
        let mut elf = vec![
            0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0,
        ];
        elf.resize(64, 0);
        let mp4 = [
            0, 0, 0, 0x18, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm',
        ];
        #[rustfmt::skip]
        let table: [(&[u8], bool); 5] = [
            (&mp4,            true),
            (b"%PDF-1.7\n",   true),
            (b"just text",    true),
            (&[],             true),
            (&elf[..],        false),
        ];
        for (head, want) in table {
            let t = content_type(head);
            assert_eq!(type_allowed(&allowed, t), want, "{t}");
        }
        assert!(type_allowed(&["VIDEO/*".into()], "video/mp4"));
        assert!(!type_allowed(&["video/*".into()], "videos/mp4"));
        assert!(!type_allowed(&[], "video/mp4"));
    }
}
