//! The chunk store: content-addressed chunks (their bytes behind the [`Blobs`] seam, on the file
//! system by default), and the files, uploads and references that use them in SQLite (`files.db`
//! in the data directory): [`catalogue`] (schema and shared queries), [`uploads`], [`files`],
//! [`maintenance`] (collection and checks), [`recordings`] (uploads that grow while a meeting
//! runs).
//!
//! Invariants:
//! - A chunk's bytes are kept by [`Blobs`] (on the file system, [`FsBlobs`]: packed into
//!   `chunks/packs/`) and written so that they are either absent or whole: hash verified, written
//!   at the end of a pack no other write touches meanwhile, flushed, and only then its row in
//!   `chunks`, which records where they are and their seal. A row therefore always names bytes
//!   that reached the disk; bytes without a row (a crash in between) lie at their pack's end and
//!   are cut off at the next start.
//! - A chunk read back is hashed again; one that no longer matches its name is never returned.
//! - "Already have" is answered per organisation: a chunk counts as held by an organisation only
//!   while one of its files (`org_chunks`) or one of its live uploads (a received
//!   `upload_chunks` row) references it. Another organisation's copy is never mentioned.
//! - Garbage collection removes a chunk only when no file references it, it has been unreferenced
//!   for the grace period, and no upload (live or not yet expired by the sweep) lists it, so a
//!   collection can never pull a chunk from under an upload that was told it exists.
//! - Quotas are logical bytes: the sum of file sizes plus the declared size of open uploads, which
//!   reserve at start and settle (or release) at commit, abort or lease expiry.

mod blobs;
mod catalogue;
mod files;
mod maintenance;
mod recent;
mod recordings;
mod uploads;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};

use crate::database::{self, Durability};

use super::Hash;
use super::chunker::{Seal, VerifiedChunk, chunk_hash, chunk_seal};
use super::manifest::{ChunkRef, Manifest};
use super::plan::{self, QuotaExceeded, Usage};
use super::pool::{ChunkPool, IN_FLIGHT};
use super::wire::{FileEntry, UploadId};
pub use blobs::{Blobs, FsBlobs, PACK_BYTES, Place, Placed, Register, Stored};
pub use files::ChunkToServe;
pub use recordings::{NewRecording, OpenRecording};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("file database: {0}")]
    Db(rusqlite::Error),
    #[error("{path}: {1}", path = .0.display())]
    Io(PathBuf, io::Error),
    /// A stored chunk does not match its name.
    #[error("stored chunk {} does not match its hash", hex::encode(.0))]
    Corrupt(Hash),
    #[error("{0}")]
    Quota(QuotaExceeded),
    #[error("no such {0}")]
    NotFound(&'static str),
    /// Chunks (manifest indices) the upload has not received yet.
    #[error("{} chunks have not been received", .0.len())]
    Incomplete(Vec<u32>),
    /// The request does not fit the upload (chunks listed out of order, more bytes than it
    /// declared, a commit before its whole manifest).
    #[error("{0}")]
    Rejected(String),
    /// The database says something that cannot be (a hash of the wrong length, ...).
    #[error("file database: {0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e)
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(path.to_path_buf(), e)
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub id: String,
    pub org: String,
    pub owner: String,
    pub name: String,
    pub room: Option<String>,
    pub size: u64,
    pub root: Hash,
    pub chunks: u32,
    pub classification: u8,
    pub view_only: bool,
    pub created: u64,
}

impl FileRecord {
    pub fn entry(&self) -> FileEntry {
        FileEntry {
            id: self.id.clone(),
            name: self.name.clone(),
            size: self.size,
            chunks: self.chunks,
            classification: self.classification,
            view_only: self.view_only,
            owner: self.owner.clone(),
            created: self.created,
        }
    }
}

/// What an upload declares at its start.
#[derive(Debug, Clone)]
pub struct NewUpload<'a> {
    pub org: &'a str,
    pub owner: &'a str,
    pub name: &'a str,
    pub room: Option<&'a str>,
    pub classification: u8,
    pub view_only: bool,
    /// Who asks: only what this bearer may read counts as held.
    pub reader: Reader<'a>,
}

/// What an uploader may read, for the "already have" answer: chunks count as held only through
/// files (or live uploads) of its organisation that it could download itself, so that the answer
/// says nothing of what lies above its clearance, outside its room, or is view-only elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader<'a> {
    pub clearance: u8,
    /// The one room a room-limited token reaches.
    pub room: Option<&'a str>,
    /// May read view-only files (a terminal device).
    pub view_only: bool,
}

/// An open upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: UploadId,
    pub org: String,
    pub owner: String,
    pub size: u64,
    pub lease_expires: u64,
}

/// The answer to an upload's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadPlan {
    pub id: UploadId,
    /// An earlier upload of the same content by the same user was continued.
    pub resumed: bool,
    pub missing: Vec<u32>,
    /// Logical bytes the organisation already held, which will not travel.
    pub deduplicated_bytes: u64,
}

/// One chunk an upload expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedChunk {
    pub hash: Hash,
    pub len: u32,
    pub received: bool,
    /// The store holds the chunk's bytes already (for this upload or any other).
    pub stored: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub chunks: u64,
    pub bytes: u64,
    pub uploads_expired: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub checked: u64,
    /// Chunks whose bytes no longer match their name.
    pub corrupt: Vec<Hash>,
    /// Chunks recorded or referenced by a file whose bytes are gone.
    pub missing: Vec<Hash>,
    /// Chunks whose reference count differs from the files that use them.
    pub miscounted: Vec<Hash>,
    /// Organisations' holdings whose reference count differs from their files.
    pub org_miscounted: Vec<(String, Hash)>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.miscounted.is_empty()
            && self.org_miscounted.is_empty()
    }
}

/// The limits an upload's start is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub org: Option<u64>,
    pub user: Option<u64>,
}

/// The room the pool keeps for chunks on their way in, letting kept chunks go for it.
const POOL_ROOM: usize = IN_FLIGHT / 4;

/// Chunks on disk and their bookkeeping.
#[derive(Debug)]
pub struct ChunkStore {
    blobs: Box<dyn Blobs>,
    db: Arc<Mutex<Connection>>,
    stored_bytes: AtomicU64,
    corrupt_reads: AtomicU64,
    recent: recent::Recent,
    /// Chunk reads answered by [`recent::Recent`].
    recent_reads: AtomicU64,
    /// The memory received chunks arrive in, kept as written ([`ChunkStore::keep_recent`]).
    pool: Option<Arc<ChunkPool>>,
}

fn hash_of(v: Vec<u8>) -> Result<Hash> {
    v.try_into()
        .map_err(|v: Vec<u8>| StoreError::Invalid(format!("hash of {} bytes", v.len())))
}

impl ChunkStore {
    /// Opens (creating when missing) the store in the data directory `data`.
    pub fn open(data: &Path) -> Result<ChunkStore> {
        let db = data.join("files.db");
        crate::private::file(&db).map_err(io_err(&db))?;
        let mut conn = Connection::open(&db)?;
        // Full: a commit the client was told about survives power loss, not only a crash.
        database::configure(&conn, Durability::Full)?;
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(StoreError::Invalid(format!("files.db: {ok}")));
        }
        conn.execute_batch(catalogue::SCHEMA)?;
        catalogue::upgrade(&mut conn)?;
        let stored: i64 =
            conn.query_row("SELECT COALESCE(SUM(len), 0) FROM chunks", [], |r| r.get(0))?;
        let db = Arc::new(Mutex::new(conn));
        let register: Register = {
            let db = Arc::clone(&db);
            // A commit that waits for the disk (the connection's default), so that the next
            // start knows the pack whatever is in it.
            Box::new(move |pack| {
                lock(&db).execute(
                    "INSERT OR IGNORE INTO packs (id) VALUES (?1)",
                    [pack as i64],
                )?;
                Ok(())
            })
        };
        let blobs = Box::new(FsBlobs::open(&data.join("chunks"), register)?);
        let store = ChunkStore {
            blobs,
            db,
            stored_bytes: AtomicU64::new(stored as u64),
            corrupt_reads: AtomicU64::new(0),
            recent: recent::Recent::new(0),
            recent_reads: AtomicU64::new(0),
            pool: None,
        };
        Ok(store)
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        lock(&self.db)
    }

    /// Keeps up to `budget` bytes of recent chunks in memory, and serves them from there (see
    /// [`recent`]): each chunk written whose bytes arrived in the pool this reserves (`budget`
    /// and [`IN_FLIGHT`], faulted in now; see [`crate::files::pool`]), and each chunk read more
    /// than once lately, copied into the pool. Every kept chunk lies in the pool, so the pool
    /// is all the memory they take. 0, the default, keeps none and reserves nothing.
    pub fn keep_recent(&mut self, budget: usize) {
        self.recent = recent::Recent::new(budget);
        self.pool = None;
        if budget > 0 {
            let began = std::time::Instant::now();
            self.pool = budget.checked_add(IN_FLIGHT).and_then(ChunkPool::reserve);
            if let Some(p) = &self.pool {
                tracing::info!(
                    bytes = p.size(),
                    took_ms = began.elapsed().as_millis() as u64,
                    "memory reserved for recent chunks"
                );
            } else {
                tracing::warn!(
                    bytes = budget.saturating_add(IN_FLIGHT),
                    "no memory reserved for recent chunks: the system refused it; none are kept"
                );
            }
        }
    }

    /// The memory received chunks arrive in and kept chunks lie in, if the store reserved it.
    pub fn pool(&self) -> Option<&Arc<ChunkPool>> {
        self.pool.as_ref()
    }

    /// Chunk reads answered from memory, and the bytes kept there now.
    pub fn recent_reads(&self) -> (u64, usize) {
        (
            self.recent_reads.load(Ordering::Relaxed),
            self.recent.bytes(),
        )
    }

    /// Bytes of chunk data on disk (each chunk once).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// Chunks found corrupt when read.
    pub fn corrupt_reads(&self) -> u64 {
        self.corrupt_reads.load(Ordering::Relaxed)
    }

    /// Where the chunks' bytes are kept.
    pub fn blobs(&self) -> &dyn Blobs {
        self.blobs.as_ref()
    }

    /// Removes what a crash between a chunk's write and its record left. Only the process that
    /// writes chunks may call this, before it starts writing.
    pub fn remove_temp_files(&self) -> Result<()> {
        let gone = self.blobs.clear_partial(&self.registered_packs()?);
        // Only packs whose removal is durable lose their registration.
        let mut db = self.db();
        let tx = db.transaction()?;
        for pack in gone {
            tx.execute("DELETE FROM packs WHERE id = ?1", [pack as i64])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every registered pack, with where its last recorded chunk ends (`None`: nothing recorded
    /// in it).
    fn registered_packs(&self) -> Result<HashMap<u64, Option<u64>>> {
        let db = self.db();
        let mut packs: HashMap<u64, Option<u64>> = db
            .prepare("SELECT id FROM packs")?
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, None)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut ends = db.prepare(
            "SELECT pack, MAX(at + len) FROM chunks WHERE pack IS NOT NULL GROUP BY pack",
        )?;
        let ends = ends.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for end in ends {
            let (pack, end) = end?;
            packs.insert(pack as u64, Some(end as u64));
        }
        Ok(packs)
    }

    /// Puts a verified chunk on disk, durably. Does not record it: [`ChunkStore::chunk_received`]
    /// does, after this returned, with the answer. A chunk whose bytes arrived in the store's pool
    /// is kept in memory as well.
    pub fn write_chunk(&self, chunk: &VerifiedChunk) -> Result<Placed> {
        let placed = self.blobs.put(chunk.data(), chunk.seal())?;
        self.keep(chunk.hash(), chunk.data(), *chunk.seal(), false);
        Ok(placed)
    }

    /// Keeps chunk `hash` in memory ([`recent`]): bytes that lie in the pool as they are, others
    /// copied there if `copy` and there is room. Then, while the pool lacks room for the chunks
    /// on their way in, lets the oldest kept chunks go where they are what holds its oldest
    /// memory: the pool hands memory out in order, so a kept chunk there would otherwise stop
    /// it for as long as it is kept.
    fn keep(&self, hash: &Hash, data: &Bytes, seal: Seal, copy: bool) {
        let Some(pool) = &self.pool else {
            return;
        };
        let kept = match pool.region_of(data) {
            Some(memory) => Some((data.clone(), memory)),
            None if copy => pool.copy(data),
            None => None,
        };
        if let Some((data, memory)) = kept {
            self.recent.keep(hash, data, seal, memory);
        }
        while pool.room() < POOL_ROOM && self.recent.let_go_first(pool.in_oldest()) {}
    }

    /// Where a recorded chunk's bytes are, from its row; `None` without a row.
    fn place_of(&self, hash: &Hash) -> Result<Option<Where>> {
        Ok(self
            .db()
            .prepare_cached("SELECT pack, at, seal FROM chunks WHERE hash = ?1")?
            .query_row([&hash[..]], |r| Where::from_row(r, 0))
            .optional()?)
    }

    /// The file that holds a recorded chunk's bytes, and where in it they begin.
    pub fn locate(&self, hash: &Hash) -> Result<Option<(PathBuf, u64)>> {
        Ok(self
            .place_of(hash)?
            .map(|w| self.blobs.file_of(hash, w.place)))
    }

    /// Reads a chunk and checks it against its seal or, without a matching seal, its name; a
    /// mismatch is [`StoreError::Corrupt`] and the bytes are dropped.
    pub fn read_chunk(&self, hash: &Hash, len: u32) -> Result<Bytes> {
        let stored = self.place_of(hash)?;
        self.read_at(hash, len, stored)
    }

    /// [`ChunkStore::read_chunk`] where the row (`stored`; `None`: there is none) was read
    /// already.
    fn read_at(&self, hash: &Hash, len: u32, stored: Option<Where>) -> Result<Bytes> {
        // Only a chunk with a row is served, from memory or from disk.
        if stored.is_some()
            && let Some(kept) = self.recent.get(hash)
        {
            if kept.data.len() == len as usize && intact(hash, &kept) {
                self.recent_reads.fetch_add(1, Ordering::Relaxed);
                return Ok(kept.data);
            }
            tracing::error!(chunk = %hex::encode(hash), "a chunk kept in memory no longer matches its seal; reading the disk");
            self.recent.forget(hash);
        }
        let found = match stored {
            Some(w) => self.blobs.get(hash, w.place, len)?.map(|mut s| {
                s.seal = s.seal.or(w.seal);
                s
            }),
            None => None,
        };
        match found {
            Some(s) if s.data.len() == len as usize && intact(hash, &s) => {
                if let Some(seal) = s.seal
                    && self.recent.read_again(hash)
                {
                    self.keep(hash, &s.data, seal, true);
                }
                Ok(s.data)
            }
            found => {
                self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                if found.is_some() {
                    tracing::error!(chunk = %hex::encode(hash), "stored chunk does not match its hash; refusing to serve it");
                }
                Err(StoreError::Corrupt(*hash))
            }
        }
    }
}

/// Where a recorded chunk's bytes are (a pack, or a chunk file of an earlier release), and the
/// seal its row keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Where {
    place: Option<Place>,
    seal: Option<Seal>,
}

impl Where {
    /// From a row's `pack, at, seal` columns, the first at `first`.
    fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Where> {
        let seal: Option<Vec<u8>> = r.get(first + 2)?;
        Ok(Where {
            place: place(r.get(first)?, r.get(first + 1)?),
            seal: seal.and_then(|s| s.try_into().ok()),
        })
    }
}

fn lock(db: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // Every write is one statement or one transaction, so a panic elsewhere cannot leave the
    // connection half-changed.
    db.lock().unwrap_or_else(|p| p.into_inner())
}

/// A place from a row's columns; none for a chunk file of an earlier release.
fn place(pack: Option<i64>, at: Option<i64>) -> Option<Place> {
    Some(Place {
        pack: pack? as u64,
        at: at? as u64,
    })
}

/// Whether stored bytes are the chunk `hash`: their seal matches them (the cheap check), or,
/// where the store kept no seal (a chunk stored by a release before seals) or a damaged one, their
/// BLAKE3 matches the name.
fn intact(hash: &Hash, stored: &Stored) -> bool {
    stored
        .seal
        .is_some_and(|seal| chunk_seal(hash, &stored.data) == seal)
        || chunk_hash(&stored.data) == *hash
}

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<FileRecord>> {
    let root = match hash_of(r.get(6)?) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(FileRecord {
        id: r.get(0)?,
        org: r.get(1)?,
        owner: r.get(2)?,
        name: r.get(3)?,
        room: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        root,
        chunks: r.get(7)?,
        classification: r.get(8)?,
        view_only: r.get(9)?,
        created: r.get::<_, i64>(10)? as u64,
    }))
}
