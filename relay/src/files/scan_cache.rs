//! The client's memory of files it has cut: per path, the manifest of the file as it was, with the
//! file's identity then (device, inode, size, mtime and ctime to the nanosecond) and when the scan
//! began.
//!
//! A put of a file whose identity is unchanged takes the remembered manifest without reading the
//! file: the quick check rsync makes, stricter (rsync trusts size and mtime; mtime can be set back
//! by anyone, ctime cannot, and any write or `touch` moves it). A remembered identity is trusted
//! only when the file had not changed for [`SETTLE`] before its scan began: file system clocks are
//! coarse, and a write in the same tick as the one remembered would leave every field as it was.
//! When the identity differs, the remembered chunks still guide the re-cut
//! ([`chunker::recut_file`]), which then hashes the file instead of scanning it for cut points.
//!
//! Entries live in `<state>/manifests/`, one file per path named by the BLAKE3 hash of the path,
//! written crash-safely (temp file, fsync, rename, directory fsync) and checked on read (format,
//! chunking parameters, a BLAKE3 checksum of the whole entry, the manifest's own root); anything
//! that does not check out is ignored. What the check cannot see is a change that leaves every
//! field of the identity as it was (the clock set back, then a write of the same size): such a file
//! is uploaded as it was remembered, as rsync would skip it. Chunks that do travel are still read
//! from the file and verified by the relay, so such a put fails rather than mixing versions.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::chunker::{self, AVG_CHUNK, Cut, MAX_CHUNK, MIN_CHUNK};
use super::manifest::{ChunkRef, Manifest};
use super::mapped::Mapped;
use crate::datadir::{self, DataDirError};

/// How long a file must have been unchanged before its scan for the scan to be trusted by
/// identity alone: longer than the coarsest timestamps Linux file systems keep (FAT's 2 s).
pub const SETTLE: Duration = Duration::from_secs(3);

const MAGIC: &[u8; 4] = b"RLS1";
/// Magic, chunk sizes, identity, scan start.
const HEAD: usize = 4 + 3 * 4 + IDENTITY + 12;
const IDENTITY: usize = 8 + 8 + 8 + 12 + 12;
const CHECKSUM: usize = 32;

/// A time as seconds and nanoseconds since the epoch, as `stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Stamp {
    pub fn of(t: SystemTime) -> Stamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Stamp {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            // Before 1970: no file of ours is trusted against such a clock.
            Err(_) => Stamp { secs: 0, nanos: 0 },
        }
    }

    fn minus(self, d: Duration) -> Stamp {
        let total =
            i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos) - d.as_nanos() as i128;
        Stamp {
            secs: i64::try_from(total.div_euclid(1_000_000_000)).unwrap_or(i64::MIN),
            // Below 10^9.
            nanos: total.rem_euclid(1_000_000_000) as u32,
        }
    }
}

/// What says a file is the one scanned before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Stamp,
    pub ctime: Stamp,
}

impl Identity {
    pub fn of(md: &fs::Metadata) -> Identity {
        let stamp = |secs: i64, nanos: i64| Stamp {
            secs,
            nanos: u32::try_from(nanos).unwrap_or(0),
        };
        Identity {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: stamp(md.mtime(), md.mtime_nsec()),
            ctime: stamp(md.ctime(), md.ctime_nsec()),
        }
    }
}

/// A remembered scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub identity: Identity,
    /// When the scan began (the client's clock, which the file system's stamps come from).
    pub scanned: Stamp,
    pub manifest: Manifest,
}

/// May `entry` stand for a file whose identity is now `now`? Only if nothing of the identity
/// moved, and the file had settled for [`SETTLE`] before the scan began.
pub fn trusted(entry: &Entry, now: &Identity) -> bool {
    let settled = entry.scanned.minus(SETTLE);
    entry.identity == *now && entry.identity.mtime < settled && entry.identity.ctime < settled
}

/// How a put came by its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Remembered: the file was not read.
    Remembered,
    /// Hashed along the remembered chunks of an earlier version, cut afresh where it changed.
    Recut,
    /// Cut afresh.
    Cut,
}

impl Scan {
    pub fn as_str(self) -> &'static str {
        match self {
            Scan::Remembered => "remembered",
            Scan::Recut => "recut",
            Scan::Cut => "cut",
        }
    }
}

/// Where the client keeps its state: `RELAY_STATE_DIR`, else `$XDG_STATE_HOME/relay`, else
/// `$HOME/.local/state/relay`; none when none of them is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("RELAY_STATE_DIR")
        .or_else(|| var("XDG_STATE_HOME").map(|d| d.join("relay")))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/relay")))
}

/// The remembered scans in one state directory.
#[derive(Debug, Clone)]
pub struct ScanCache {
    dir: PathBuf,
}

impl ScanCache {
    /// The cache in state directory `state` (created when first written).
    pub fn new(state: &Path) -> ScanCache {
        ScanCache {
            dir: state.join("manifests"),
        }
    }

    fn entry_path(&self, file: &Path) -> PathBuf {
        let key = blake3::hash(file.as_os_str().as_encoded_bytes());
        self.dir.join(key.to_hex().as_str())
    }

    /// The entry for the file at `path` (an absolute, canonical path), if one checks out.
    pub fn get(&self, path: &Path) -> Option<Entry> {
        decode(&fs::read(self.entry_path(path)).ok()?)
    }

    /// Remembers `entry` for the file at `path`, durably (see [`datadir::write_atomic`]).
    pub fn put(&self, path: &Path, entry: &Entry) -> Result<(), DataDirError> {
        datadir::create_private_dir(&self.dir)?;
        datadir::write_atomic(&self.entry_path(path), &encode(entry))
    }
}

fn put_stamp(out: &mut Vec<u8>, s: Stamp) {
    out.extend_from_slice(&s.secs.to_le_bytes());
    out.extend_from_slice(&s.nanos.to_le_bytes());
}

pub fn encode(e: &Entry) -> Vec<u8> {
    let manifest = e.manifest.encode();
    let mut out = Vec::with_capacity(HEAD + manifest.len() + CHECKSUM);
    out.extend_from_slice(MAGIC);
    for size in [MIN_CHUNK, AVG_CHUNK, MAX_CHUNK] {
        // The chunk sizes are constants of a few MiB.
        out.extend_from_slice(&(size as u32).to_le_bytes());
    }
    let id = &e.identity;
    for v in [id.dev, id.ino, id.size] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_stamp(&mut out, id.mtime);
    put_stamp(&mut out, id.ctime);
    put_stamp(&mut out, e.scanned);
    out.extend_from_slice(&manifest);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Reads fixed-size fields off the front of a slice already checked to be long enough.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N.min(self.0.len()));
        self.0 = rest;
        head.try_into().unwrap_or([0; N])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn stamp(&mut self) -> Stamp {
        Stamp {
            secs: i64::from_le_bytes(self.take()),
            nanos: self.u32(),
        }
    }
}

/// The entry in `bytes`, or `None` if anything about it is off.
pub fn decode(bytes: &[u8]) -> Option<Entry> {
    if bytes.len() < HEAD + CHECKSUM {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if blake3::hash(body).as_bytes()[..] != sum[..] || &body[..4] != MAGIC {
        return None;
    }
    let mut f = Fields(&body[4..HEAD]);
    let sizes = [f.u32(), f.u32(), f.u32()];
    if sizes.map(|s| s as usize) != [MIN_CHUNK, AVG_CHUNK, MAX_CHUNK] {
        return None;
    }
    let identity = Identity {
        dev: f.u64(),
        ino: f.u64(),
        size: f.u64(),
        mtime: f.stamp(),
        ctime: f.stamp(),
    };
    let scanned = f.stamp();
    let manifest = Manifest::decode(&body[HEAD..]).ok()?;
    (manifest.size() == identity.size).then_some(Entry {
        identity,
        scanned,
        manifest,
    })
}

/// The manifest of `file` (at the canonical `path`), from `cache` when it may be, and remembered
/// there afterwards when the file held still while it was read. A cache that cannot be written
/// costs only the next put's time. `map` is the file, mapped when it was opened.
pub fn manifest_of(
    file: &File,
    map: &Mapped,
    path: &Path,
    cache: Option<&ScanCache>,
) -> io::Result<(Manifest, Scan)> {
    match begin_scan(file, map, path, cache)? {
        Begun::Known(m, how) => Ok((m, how)),
        Begun::Fresh(fresh) => Ok((fresh.cut(file, map)?, Scan::Cut)),
    }
}

/// Where the scan of a file starts.
#[derive(Debug)]
pub enum Begun {
    /// The manifest is known: remembered, or re-cut along an earlier version (and remembered).
    Known(Manifest, Scan),
    /// Nothing is known of the file: it is to be cut afresh.
    Fresh(Fresh),
}

/// A file to be cut afresh, as it was when its scan began.
#[derive(Debug)]
pub struct Fresh {
    before: Identity,
    scanned: Stamp,
    path: PathBuf,
    cache: Option<ScanCache>,
}

impl Fresh {
    /// Cuts the whole file (`map`) on every core, and remembers its manifest.
    pub fn cut(&self, file: &File, map: &Mapped) -> io::Result<Manifest> {
        let manifest = manifest_from(&chunker::cut_file(map.bytes(), cores()))?;
        self.remember(file, &manifest);
        Ok(manifest)
    }

    /// Remembers `manifest`, cut from the file since, if the file is still as it was.
    pub fn remember(&self, file: &File, manifest: &Manifest) {
        let cache = self.cache.as_ref();
        remember(
            file,
            &self.path,
            cache,
            &self.before,
            self.scanned,
            manifest,
        );
    }
}

/// Begins the scan of `file` (at the canonical `path`): its manifest when `cache` knows it or an
/// earlier version of it, otherwise what the cut afresh needs. `map` is the file, mapped when it
/// was opened.
pub fn begin_scan(
    file: &File,
    map: &Mapped,
    path: &Path,
    cache: Option<&ScanCache>,
) -> io::Result<Begun> {
    let scanned = Stamp::of(SystemTime::now());
    let before = Identity::of(&file.metadata()?);
    if before.size != map.bytes().len() as u64 {
        return Err(io::Error::other(
            "the file changed size while it was opened",
        ));
    }
    let Some(earlier) = cache.and_then(|c| c.get(path)) else {
        return Ok(Begun::Fresh(Fresh {
            before,
            scanned,
            path: path.to_path_buf(),
            cache: cache.cloned(),
        }));
    };
    if trusted(&earlier, &before) {
        return Ok(Begun::Known(earlier.manifest, Scan::Remembered));
    }
    let previous = cuts_of(&earlier.manifest);
    let cuts = chunker::recut_file(map.bytes(), &previous, earlier.manifest.size(), cores());
    let manifest = manifest_from(&cuts)?;
    remember(file, path, cache, &before, scanned, &manifest);
    Ok(Begun::Known(manifest, Scan::Recut))
}

/// The threads a whole file is cut on: one per core.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The manifest of a file's chunks, in order.
pub fn manifest_from(cuts: &[Cut]) -> io::Result<Manifest> {
    let chunks = cuts
        .iter()
        .map(|c| ChunkRef {
            hash: c.hash,
            len: c.len,
        })
        .collect();
    Manifest::new(chunks).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Keeps `manifest` in `cache` as the scan begun at `scanned` of the file at `path`, which was
/// `before` then, if it still is.
fn remember(
    file: &File,
    path: &Path,
    cache: Option<&ScanCache>,
    before: &Identity,
    scanned: Stamp,
    manifest: &Manifest,
) {
    let Some(cache) = cache else { return };
    if !file.metadata().is_ok_and(|md| Identity::of(&md) == *before) {
        return;
    }
    let entry = Entry {
        identity: *before,
        scanned,
        manifest: manifest.clone(),
    };
    if let Err(e) = cache.put(path, &entry) {
        tracing::debug!(error = %e, "cannot remember the file's manifest");
    }
}

/// A manifest's chunks with their offsets.
pub fn cuts_of(m: &Manifest) -> Vec<Cut> {
    m.chunks()
        .iter()
        .zip(m.offsets())
        .map(|(c, offset)| Cut {
            offset,
            len: c.len,
            hash: c.hash,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_kit::noise;

    fn stamp(secs: i64) -> Stamp {
        Stamp { secs, nanos: 5 }
    }

    fn entry(scanned: i64, ctime: i64) -> Entry {
        Entry {
            identity: Identity {
                dev: 1,
                ino: 2,
                size: 3,
                mtime: stamp(ctime - 10),
                ctime: stamp(ctime),
            },
            scanned: stamp(scanned),
            manifest: Manifest::scan(&b"abc"[..]).unwrap(),
        }
    }

    #[test]
    fn trust_needs_the_same_identity_and_a_settled_file() {
        let e = entry(1000, 900);
        assert!(trusted(&e, &e.identity));
        type Change = fn(&mut Identity);
        let moved: [(&str, Change); 7] = [
            ("dev", |i| i.dev += 1),
            ("ino", |i| i.ino += 1),
            ("size", |i| i.size += 1),
            ("mtime", |i| i.mtime.nanos += 1),
            ("mtime secs", |i| i.mtime.secs -= 1),
            ("ctime", |i| i.ctime.nanos += 1),
            ("ctime secs", |i| i.ctime.secs += 1),
        ];
        for (name, change) in moved {
            let mut now = e.identity;
            change(&mut now);
            assert!(!trusted(&e, &now), "{name}");
        }
        // Changed within SETTLE of the scan: a later write in the same tick would not show.
        let secs = SETTLE.as_secs() as i64;
        for (scanned, ctime, want) in [
            (1000, 1000, false),
            (1000, 1000 - secs + 1, false),
            (1000, 1000 - secs, false),
            (1000, 1000 - secs - 1, true),
            (1000, 1010, false),
        ] {
            let e = entry(scanned, ctime);
            assert_eq!(trusted(&e, &e.identity), want, "{scanned} {ctime}");
        }
        let mut future_mtime = entry(1000, 900);
        future_mtime.identity.mtime = stamp(2000);
        assert!(!trusted(&future_mtime, &future_mtime.identity));
    }

    #[test]
    fn stamps_subtract_across_seconds() {
        let s = Stamp {
            secs: 10,
            nanos: 100,
        };
        assert_eq!(
            s.minus(Duration::from_nanos(200)),
            Stamp {
                secs: 9,
                nanos: 999_999_900
            }
        );
        assert_eq!(
            s.minus(Duration::from_secs(3)),
            Stamp {
                secs: 7,
                nanos: 100
            }
        );
    }

    #[test]
    fn entries_round_trip_and_damage_is_ignored() {
        let data = noise(3, 5 << 20);
        let e = Entry {
            manifest: Manifest::scan(&data[..]).unwrap(),
            ..entry(1000, 900)
        };
        let mut e = e;
        e.identity.size = data.len() as u64;
        let bytes = encode(&e);
        assert_eq!(decode(&bytes), Some(e.clone()));
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad), None, "byte {i}");
        }
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n]), None, "prefix {n}");
        }
    }

    #[test]
    fn the_cache_remembers_per_path_and_survives_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ScanCache::new(&dir.path().join("state"));
        let path = dir.path().join("f.bin");
        let data = noise(4, 3 << 20);
        fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let map = Mapped::new(&file, data.len() as u64).unwrap();
        let scan = |cache| manifest_of(&file, &map, &path, cache).unwrap();
        // Just written: remembered, but not trusted by identity yet.
        let (m, how) = scan(Some(&cache));
        assert_eq!(how, Scan::Cut);
        assert_eq!(m, Manifest::scan(&data[..]).unwrap());
        let (m2, how) = scan(Some(&cache));
        assert_eq!((m2, how), (m.clone(), Scan::Recut));
        // An entry made long after the last change is trusted.
        let mut e = cache.get(&path).unwrap();
        e.scanned = Stamp::of(SystemTime::now() + 2 * SETTLE);
        cache.put(&path, &e).unwrap();
        let (m3, how) = scan(Some(&cache));
        assert_eq!((m3, how), (m.clone(), Scan::Remembered));
        // Another path has no entry.
        let other = dir.path().join("g.bin");
        fs::write(&other, &data).unwrap();
        let f = File::open(&other).unwrap();
        let other_map = Mapped::new(&f, data.len() as u64).unwrap();
        let (_, how) = manifest_of(&f, &other_map, &other, Some(&cache)).unwrap();
        assert_eq!(how, Scan::Cut);
        // Without a cache: always cut.
        let (m4, how) = scan(None);
        assert_eq!((m4, how), (m, Scan::Cut));
        // Only entries remain in the directory: no temp file is left behind.
        for f in fs::read_dir(dir.path().join("state/manifests")).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            assert_eq!(name.len(), 64, "{name}");
        }
    }
}
