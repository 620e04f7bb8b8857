//! The chunk store: content-addressed chunks on disk, and the files, uploads and references that
//! use them in SQLite (`files.db` in the data directory).
//!
//! Invariants:
//! - A chunk lives at `chunks/ab/cdef...` (the hex of its BLAKE3 hash) and is written so that it
//!   is either absent or whole: hash verified, temp file in the same directory, fsync, rename,
//!   directory fsync, and only then its row in `chunks`. A row therefore always names bytes that
//!   reached the disk; a file without a row (a crash in between) is harmless and is rewritten.
//! - A chunk read back is hashed again; one that no longer matches its name is never returned.
//! - "Already have" is answered per organisation: a chunk counts as held by an organisation only
//!   while one of its files (`org_chunks`) or one of its live uploads (a received
//!   `upload_chunks` row) references it. Another organisation's copy is never mentioned.
//! - Garbage collection removes a chunk only when no file references it, it has been unreferenced
//!   for the grace period, and no upload (live or not yet expired by the sweep) lists it, so a
//!   collection can never pull a chunk from under an upload that was told it exists.
//! - Quotas are logical bytes: the sum of file sizes plus the declared size of open uploads, which
//!   reserve at start and settle (or release) at commit, abort or lease expiry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::Hash;
use super::chunker::{VerifiedChunk, chunk_hash};
use super::manifest::{ChunkRef, Manifest};
use super::plan::{self, QuotaExceeded, Usage};
use super::wire::{FileEntry, UploadId};

#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    Db(rusqlite::Error),
    Io(PathBuf, io::Error),
    /// A stored chunk does not match its name.
    Corrupt(Hash),
    Quota(QuotaExceeded),
    NotFound(&'static str),
    /// Chunks (manifest indices) the upload has not received yet.
    Incomplete(Vec<u32>),
    /// The database says something that cannot be (a hash of the wrong length, ...).
    Invalid(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Db(e) => write!(f, "file database: {e}"),
            StoreError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            StoreError::Corrupt(h) => {
                write!(f, "stored chunk {} does not match its hash", hex::encode(h))
            }
            StoreError::Quota(q) => q.fmt(f),
            StoreError::NotFound(what) => write!(f, "no such {what}"),
            StoreError::Incomplete(m) => {
                write!(f, "{} chunks have not been received", m.len())
            }
            StoreError::Invalid(m) => write!(f, "file database: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e)
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(path.to_path_buf(), e)
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS chunks (
    hash               BLOB PRIMARY KEY NOT NULL,
    len                INTEGER NOT NULL,
    refs               INTEGER NOT NULL DEFAULT 0,
    unreferenced_since INTEGER
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS org_chunks (
    org  TEXT NOT NULL,
    hash BLOB NOT NULL,
    refs INTEGER NOT NULL,
    PRIMARY KEY (org, hash)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    id             TEXT PRIMARY KEY NOT NULL,
    org            TEXT NOT NULL,
    owner          TEXT NOT NULL,
    name           TEXT NOT NULL,
    room           TEXT,
    size           INTEGER NOT NULL,
    root           BLOB NOT NULL,
    chunks         INTEGER NOT NULL,
    classification INTEGER NOT NULL,
    view_only      INTEGER NOT NULL,
    compressible   INTEGER NOT NULL,
    created        INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS files_org ON files (org, owner);
CREATE TABLE IF NOT EXISTS file_chunks (
    file TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    idx  INTEGER NOT NULL,
    hash BLOB NOT NULL,
    len  INTEGER NOT NULL,
    PRIMARY KEY (file, idx)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS file_chunks_hash ON file_chunks (hash);
CREATE TABLE IF NOT EXISTS uploads (
    id             BLOB PRIMARY KEY NOT NULL,
    org            TEXT NOT NULL,
    owner          TEXT NOT NULL,
    name           TEXT NOT NULL,
    room           TEXT,
    root           BLOB NOT NULL,
    size           INTEGER NOT NULL,
    classification INTEGER NOT NULL,
    view_only      INTEGER NOT NULL,
    lease_expires  INTEGER NOT NULL,
    created        INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS uploads_key ON uploads (org, owner, root);
CREATE TABLE IF NOT EXISTS upload_chunks (
    upload   BLOB NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    idx      INTEGER NOT NULL,
    hash     BLOB NOT NULL,
    len      INTEGER NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (upload, idx)
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS upload_chunks_hash ON upload_chunks (hash, received);
"#;

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
    pub manifest: &'a Manifest,
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

/// Chunks on disk and their bookkeeping.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    db: Mutex<Connection>,
    stored_bytes: AtomicU64,
    corrupt_reads: AtomicU64,
}

fn hash_of(v: Vec<u8>) -> Result<Hash> {
    v.try_into()
        .map_err(|v: Vec<u8>| StoreError::Invalid(format!("hash of {} bytes", v.len())))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The alignment `O_DIRECT` asks of a write's buffer, length and file offset: the logical block
/// size, at most 4096 on the disks a relay is installed on.
const DIRECT_ALIGN: usize = 4096;

thread_local! {
    /// A buffer for `O_DIRECT` writes, one per blocking thread, reused for every chunk.
    static DIRECT_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes `data` to the file `path` (created or truncated) and flushes it to the disk.
///
/// The bytes go with `O_DIRECT`, around the page cache: a chunk is written once and read back
/// rarely, and copying it into the cache took more of the relay's CPU than anything else it does
/// per stored byte; the fsync after it then has little left to do. A file system without
/// `O_DIRECT` (tmpfs) refuses it with `EINVAL`, and gets the ordinary write.
fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    match write_direct(path, data) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut f = crate::private::open_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            f.write_all(data)?;
            f.sync_all()
        }
        r => r,
    }
}

/// `O_DIRECT` wants whole aligned blocks: the data is copied into an aligned buffer padded with
/// zeros to a whole block, and the file cut back to the data's length before the fsync.
fn write_direct(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = crate::private::open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let padded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    DIRECT_BUF.with_borrow_mut(|buf| {
        buf.resize(padded + DIRECT_ALIGN, 0);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let Some(block) = buf.get_mut(start..start + padded) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        block[..data.len()].copy_from_slice(data);
        block[data.len()..].fill(0);
        f.write_all(block)
    })?;
    f.set_len(data.len() as u64)?;
    f.sync_all()
}

impl ChunkStore {
    /// Opens (creating when missing) the store in the data directory `data`.
    pub fn open(data: &Path) -> Result<ChunkStore> {
        let dir = data.join("chunks");
        let fresh = !dir.exists();
        crate::private::dir(&dir).map_err(io_err(&dir))?;
        if fresh {
            sync_dir(data)?;
        }
        let db = data.join("files.db");
        crate::private::file(&db).map_err(io_err(&db))?;
        let conn = Connection::open(&db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit the client was told about survives power loss, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(StoreError::Invalid(format!("files.db: {ok}")));
        }
        conn.execute_batch(SCHEMA)?;
        let stored: i64 =
            conn.query_row("SELECT COALESCE(SUM(len), 0) FROM chunks", [], |r| r.get(0))?;
        let store = ChunkStore {
            dir,
            db: Mutex::new(conn),
            stored_bytes: AtomicU64::new(stored as u64),
            corrupt_reads: AtomicU64::new(0),
        };
        Ok(store)
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // Every write is one statement or one transaction, so a panic elsewhere cannot leave the
        // connection half-changed.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of chunk data on disk (each chunk once).
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// Chunks found corrupt when read.
    pub fn corrupt_reads(&self) -> u64 {
        self.corrupt_reads.load(Ordering::Relaxed)
    }

    pub fn chunk_path(&self, hash: &Hash) -> PathBuf {
        let hex = hex::encode(hash);
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    /// Removes temp files left by a crash in the middle of a write. Only the process that
    /// writes chunks may call this, before it starts writing.
    pub fn remove_temp_files(&self) {
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

    /// Puts a verified chunk on disk under its hash, durably. Does not record it:
    /// [`ChunkStore::chunk_received`] does, after this returned.
    pub fn write_chunk(&self, chunk: &VerifiedChunk) -> Result<()> {
        let path = self.chunk_path(chunk.hash());
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
        if let Err(e) = write_durably(&tmp, chunk.data()) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io(tmp, e));
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&dir)
    }

    /// Reads a chunk and checks it against its name; a mismatch is [`StoreError::Corrupt`] and
    /// the bytes are dropped.
    pub fn read_chunk(&self, hash: &Hash, len: u32) -> Result<Vec<u8>> {
        let path = self.chunk_path(hash);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Corrupt(*hash));
            }
            Err(e) => return Err(StoreError::Io(path, e)),
        };
        if data.len() != len as usize || chunk_hash(&data) != *hash {
            self.corrupt_reads.fetch_add(1, Ordering::Relaxed);
            tracing::error!(chunk = %hex::encode(hash), path = %path.display(), "stored chunk does not match its hash; refusing to serve it");
            return Err(StoreError::Corrupt(*hash));
        }
        Ok(data)
    }

    /// Does `org` hold `hash` where `reader` may read it: through one of its files, or a chunk
    /// one of its live uploads has received?
    fn org_has(
        tx: &Connection,
        org: &str,
        reader: Reader<'_>,
        hash: &Hash,
        now: u64,
    ) -> Result<bool> {
        let held: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM chunks WHERE hash = ?2) AND (
                    EXISTS (SELECT 1 FROM file_chunks c JOIN files f ON f.id = c.file
                            WHERE c.hash = ?2 AND f.org = ?1 AND f.classification <= ?4
                              AND (f.view_only = 0 OR ?5) AND (?6 IS NULL OR f.room = ?6))
                    OR EXISTS (SELECT 1 FROM upload_chunks c JOIN uploads u ON u.id = c.upload
                               WHERE c.hash = ?2 AND c.received = 1 AND u.org = ?1
                                 AND u.lease_expires > ?3 AND u.classification <= ?4
                                 AND (u.view_only = 0 OR ?5) AND (?6 IS NULL OR u.room = ?6)))",
            )?
            .query_row(
                params![
                    org,
                    &hash[..],
                    now as i64,
                    reader.clearance,
                    reader.view_only,
                    reader.room
                ],
                |r| r.get(0),
            )?;
        Ok(held)
    }

    fn usage(tx: &Connection, org: &str, owner: Option<&str>, now: u64) -> Result<u64> {
        let used: i64 = tx
            .prepare_cached(
                "SELECT (SELECT COALESCE(SUM(size), 0) FROM files
                         WHERE org = ?1 AND (?2 IS NULL OR owner = ?2))
                      + (SELECT COALESCE(SUM(size), 0) FROM uploads
                         WHERE org = ?1 AND (?2 IS NULL OR owner = ?2) AND lease_expires > ?3)",
            )?
            .query_row(params![org, owner, now as i64], |r| r.get(0))?;
        Ok(used as u64)
    }

    /// Logical bytes charged to `org` (or to one user of it): files plus open reservations.
    pub fn usage_of(&self, org: &str, owner: Option<&str>, now: u64) -> Result<u64> {
        Self::usage(&self.db(), org, owner, now)
    }

    /// Starts an upload, or continues the same user's unfinished upload of the same content.
    /// A new upload reserves its size against the quotas; a continued one already holds its
    /// reservation.
    pub fn begin_upload(
        &self,
        new: &NewUpload<'_>,
        quotas: Quotas,
        now: u64,
        lease: Duration,
    ) -> Result<UploadPlan> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let m = new.manifest;
        let lease_expires = now.saturating_add(lease.as_secs()) as i64;
        let existing: Option<Vec<u8>> = tx
            .query_row(
                "SELECT id FROM uploads WHERE org = ?1 AND owner = ?2 AND root = ?3",
                params![new.org, new.owner, &m.root()[..]],
                |r| r.get(0),
            )
            .optional()?;
        let (id, resumed) = match existing {
            Some(id) => {
                let id: UploadId = id
                    .try_into()
                    .map_err(|_| StoreError::Invalid("upload id".into()))?;
                tx.execute(
                    "UPDATE uploads SET name = ?2, room = ?3, classification = ?4, view_only = ?5,
                     lease_expires = ?6 WHERE id = ?1",
                    params![
                        &id[..],
                        new.name,
                        new.room,
                        new.classification,
                        new.view_only,
                        lease_expires
                    ],
                )?;
                (id, true)
            }
            None => {
                let org = Usage {
                    used: Self::usage(&tx, new.org, None, now)?,
                    limit: quotas.org,
                };
                let user = Usage {
                    used: Self::usage(&tx, new.org, Some(new.owner), now)?,
                    limit: quotas.user,
                };
                plan::reserve(m.size(), org, user).map_err(StoreError::Quota)?;
                let id: UploadId = crate::random_bytes();
                tx.execute(
                    "INSERT INTO uploads (id, org, owner, name, room, root, size, classification,
                     view_only, lease_expires, created)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        &id[..],
                        new.org,
                        new.owner,
                        new.name,
                        new.room,
                        &m.root()[..],
                        m.size() as i64,
                        new.classification,
                        new.view_only,
                        lease_expires,
                        now as i64
                    ],
                )?;
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO upload_chunks (upload, idx, hash, len) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for (i, c) in m.chunks().iter().enumerate() {
                        insert.execute(params![&id[..], i as i64, &c.hash[..], c.len])?;
                    }
                }
                (id, false)
            }
        };
        // What the organisation holds now, including what this upload received before.
        let mut held: HashMap<Hash, bool> = HashMap::new();
        for c in m.chunks() {
            if let std::collections::hash_map::Entry::Vacant(v) = held.entry(c.hash) {
                v.insert(Self::org_has(&tx, new.org, new.reader, &c.hash, now)?);
            }
        }
        let mut deduplicated = 0u64;
        {
            let mut mark = tx.prepare_cached(
                "UPDATE upload_chunks SET received = 1 WHERE upload = ?1 AND idx = ?2 AND received = 0",
            )?;
            for (i, c) in m.chunks().iter().enumerate() {
                if held.get(&c.hash).copied().unwrap_or(false)
                    && mark.execute(params![&id[..], i as i64])? > 0
                {
                    deduplicated += u64::from(c.len);
                }
            }
        }
        let missing = plan::missing_chunks(m.chunks(), |h| held.get(h).copied().unwrap_or(false));
        tx.commit()?;
        Ok(UploadPlan {
            id,
            resumed,
            missing,
            deduplicated_bytes: deduplicated,
        })
    }

    pub fn upload(&self, id: &UploadId) -> Result<Option<Upload>> {
        Ok(self
            .db()
            .query_row(
                "SELECT org, owner, size, lease_expires FROM uploads WHERE id = ?1",
                [&id[..]],
                |r| {
                    Ok(Upload {
                        id: *id,
                        org: r.get(0)?,
                        owner: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        lease_expires: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .optional()?)
    }

    /// What an upload expects at manifest index `index`.
    pub fn expected_chunk(&self, id: &UploadId, index: u32) -> Result<Option<ExpectedChunk>> {
        let row = self
            .db()
            .prepare_cached(
                "SELECT hash, len, received FROM upload_chunks WHERE upload = ?1 AND idx = ?2",
            )?
            .query_row(params![&id[..], index], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u32>(1)?, r.get(2)?))
            })
            .optional()?;
        row.map(|(h, len, received)| {
            Ok(ExpectedChunk {
                hash: hash_of(h)?,
                len,
                received,
            })
        })
        .transpose()
    }

    /// Is the chunk recorded as stored?
    pub fn has_chunk(&self, hash: &Hash) -> Result<bool> {
        Ok(self
            .db()
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM chunks WHERE hash = ?1)")?
            .query_row([&hash[..]], |r| r.get(0))?)
    }

    /// Records a chunk written by [`ChunkStore::write_chunk`] as received by an upload, and
    /// renews the upload's lease.
    pub fn chunk_received(
        &self,
        id: &UploadId,
        hash: &Hash,
        len: u32,
        now: u64,
        lease: Duration,
    ) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO chunks (hash, len, refs, unreferenced_since) VALUES (?1, ?2, 0, ?3)",
            params![&hash[..], len, now as i64],
        )?;
        tx.execute(
            "UPDATE upload_chunks SET received = 1 WHERE upload = ?1 AND hash = ?2",
            params![&id[..], &hash[..]],
        )?;
        tx.execute(
            "UPDATE uploads SET lease_expires = ?2 WHERE id = ?1",
            params![&id[..], now.saturating_add(lease.as_secs()) as i64],
        )?;
        tx.commit()?;
        if inserted > 0 {
            self.stored_bytes
                .fetch_add(u64::from(len), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Turns a complete upload into a file: its reservation becomes the file's size, its chunks
    /// become references of the file and of its organisation. `compressible` says whether
    /// compressing its chunks for the wire is worth trying.
    pub fn commit(&self, id: &UploadId, now: u64, compressible: bool) -> Result<FileRecord> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let upload = tx
            .query_row(
                "SELECT org, owner, name, room, root, size, classification, view_only
                 FROM uploads WHERE id = ?1",
                [&id[..]],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, u8>(6)?,
                        r.get::<_, bool>(7)?,
                    ))
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound("upload"))?;
        let (org, owner, name, room, root, size, classification, view_only) = upload;
        let missing: Vec<u32> = tx
            .prepare(
                "SELECT c.idx FROM upload_chunks c
                 WHERE c.upload = ?1
                   AND (c.received = 0 OR NOT EXISTS (SELECT 1 FROM chunks k WHERE k.hash = c.hash))
                 ORDER BY c.idx",
            )?
            .query_map([&id[..]], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !missing.is_empty() {
            return Err(StoreError::Incomplete(missing));
        }
        let file_id = hex::encode(crate::random_bytes::<16>());
        let chunks: i64 = tx.query_row(
            "SELECT COUNT(*) FROM upload_chunks WHERE upload = ?1",
            [&id[..]],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO files (id, org, owner, name, room, size, root, chunks, classification,
             view_only, compressible, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                file_id,
                org,
                owner,
                name,
                room,
                size,
                root,
                chunks,
                classification,
                view_only,
                compressible,
                now as i64
            ],
        )?;
        tx.execute(
            "INSERT INTO file_chunks (file, idx, hash, len)
             SELECT ?2, idx, hash, len FROM upload_chunks WHERE upload = ?1",
            params![&id[..], file_id],
        )?;
        Self::add_refs(&tx, &file_id, &org, 1, now)?;
        tx.execute("DELETE FROM uploads WHERE id = ?1", [&id[..]])?;
        tx.commit()?;
        Ok(FileRecord {
            id: file_id,
            org,
            owner,
            name,
            room,
            size: size as u64,
            root: hash_of(root)?,
            chunks: chunks as u32,
            classification,
            view_only,
            created: now,
        })
    }

    /// Adds `sign` (+1 or -1) times each of the file's chunk occurrences to the chunk and
    /// organisation reference counts.
    fn add_refs(tx: &Transaction<'_>, file: &str, org: &str, sign: i64, now: u64) -> Result<()> {
        let counts: Vec<(Vec<u8>, i64)> = tx
            .prepare("SELECT hash, COUNT(*) FROM file_chunks WHERE file = ?1 GROUP BY hash")?
            .query_map([file], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut chunk = tx.prepare_cached(
            "UPDATE chunks SET refs = refs + ?2,
                    unreferenced_since = CASE WHEN refs + ?2 <= 0 THEN ?3 ELSE NULL END
             WHERE hash = ?1",
        )?;
        let mut owned = tx.prepare_cached(
            "INSERT INTO org_chunks (org, hash, refs) VALUES (?1, ?2, ?3)
             ON CONFLICT (org, hash) DO UPDATE SET refs = refs + excluded.refs",
        )?;
        for (hash, n) in counts {
            chunk.execute(params![hash, sign * n, now as i64])?;
            owned.execute(params![org, hash, sign * n])?;
        }
        tx.execute("DELETE FROM org_chunks WHERE refs <= 0", [])?;
        Ok(())
    }

    /// Drops an upload and its reservation. Chunks it brought stay until collected.
    pub fn abort(&self, id: &UploadId, now: u64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        Self::release_chunks(&tx, "upload = ?1", params![&id[..]], now)?;
        tx.execute("DELETE FROM uploads WHERE id = ?1", [&id[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// Starts the grace period of unreferenced chunks of the uploads chosen by `filter`.
    fn release_chunks(
        tx: &Transaction<'_>,
        filter: &str,
        args: impl rusqlite::Params,
        now: u64,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE chunks SET unreferenced_since = {now}
             WHERE refs <= 0 AND hash IN (SELECT hash FROM upload_chunks WHERE {filter})"
        );
        tx.execute(&sql, args)?;
        Ok(())
    }

    /// Ends uploads whose lease has run out, releasing their reservations.
    pub fn expire_uploads(&self, now: u64) -> Result<u64> {
        let mut db = self.db();
        let tx = db.transaction()?;
        Self::release_chunks(
            &tx,
            "upload IN (SELECT id FROM uploads WHERE lease_expires <= ?1)",
            params![now as i64],
            now,
        )?;
        let n = tx.execute(
            "DELETE FROM uploads WHERE lease_expires <= ?1",
            [now as i64],
        )?;
        tx.commit()?;
        Ok(n as u64)
    }

    pub fn file(&self, id: &str) -> Result<Option<FileRecord>> {
        let db = self.db();
        db.prepare_cached(
            "SELECT id, org, owner, name, room, size, root, chunks, classification, view_only,
             created FROM files WHERE id = ?1",
        )?
        .query_row([id], file_row)
        .optional()?
        .transpose()
    }

    /// The files of `org`, newest first.
    pub fn list(&self, org: &str) -> Result<Vec<FileRecord>> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT id, org, owner, name, room, size, root, chunks, classification, view_only,
             created FROM files WHERE org = ?1 ORDER BY created DESC, id",
        )?;
        let rows = stmt.query_map([org], file_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    pub fn manifest(&self, file: &str) -> Result<Manifest> {
        let db = self.db();
        let mut stmt =
            db.prepare_cached("SELECT hash, len FROM file_chunks WHERE file = ?1 ORDER BY idx")?;
        let rows = stmt.query_map([file], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))?;
        let mut chunks = Vec::new();
        for r in rows {
            let (h, len) = r?;
            chunks.push(ChunkRef {
                hash: hash_of(h)?,
                len,
            });
        }
        Manifest::new(chunks).map_err(|e| StoreError::Invalid(format!("file {file}: {e}")))
    }

    /// Chunk `index` of a file.
    pub fn file_chunk(&self, file: &str, index: u32) -> Result<Option<ChunkRef>> {
        let row = self
            .db()
            .prepare_cached("SELECT hash, len FROM file_chunks WHERE file = ?1 AND idx = ?2")?
            .query_row(params![file, index], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?))
            })
            .optional()?;
        row.map(|(h, len)| {
            Ok(ChunkRef {
                hash: hash_of(h)?,
                len,
            })
        })
        .transpose()
    }

    /// Is compressing this file's chunks for the wire worth trying?
    pub fn compressible(&self, file: &str) -> Result<bool> {
        Ok(self
            .db()
            .prepare_cached("SELECT compressible FROM files WHERE id = ?1")?
            .query_row([file], |r| r.get(0))
            .optional()?
            .unwrap_or(false))
    }

    /// How far the user's open upload of the content with `root` has come: (chunks received,
    /// chunks listed).
    pub fn upload_progress(
        &self,
        org: &str,
        owner: &str,
        root: &Hash,
    ) -> Result<Option<(u64, u64)>> {
        Ok(self
            .db()
            .query_row(
                "SELECT COALESCE(SUM(c.received), 0), COUNT(c.idx) FROM uploads u
                 JOIN upload_chunks c ON c.upload = u.id
                 WHERE u.org = ?1 AND u.owner = ?2 AND u.root = ?3",
                params![org, owner, &root[..]],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?
            .filter(|(_, n)| *n > 0))
    }

    /// Removes a file; its chunks stay until collected.
    pub fn remove(&self, id: &str, now: u64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let org: String = tx
            .query_row("SELECT org FROM files WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::NotFound("file"))?;
        Self::add_refs(&tx, id, &org, -1, now)?;
        tx.execute("DELETE FROM files WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Expires uploads, then removes chunks unreferenced for at least `grace` that no upload
    /// lists. Holds the database lock throughout, so no upload can start relying on a chunk
    /// while it is being removed.
    pub fn gc(&self, now: u64, grace: Duration) -> Result<GcReport> {
        let mut report = GcReport {
            uploads_expired: self.expire_uploads(now)?,
            ..GcReport::default()
        };
        let cutoff = now.saturating_sub(grace.as_secs()) as i64;
        let mut db = self.db();
        let tx = db.transaction()?;
        let doomed: Vec<(Vec<u8>, i64)> = tx
            .prepare(
                "SELECT hash, len FROM chunks k
                 WHERE refs <= 0 AND unreferenced_since IS NOT NULL AND unreferenced_since <= ?1
                   AND NOT EXISTS (SELECT 1 FROM upload_chunks c WHERE c.hash = k.hash)",
            )?
            .query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (hash, _) in &doomed {
            tx.execute("DELETE FROM chunks WHERE hash = ?1", [hash])?;
        }
        // Rows go first: a crash after this commit leaves files without rows, which are
        // harmless; the other order could leave rows naming nothing.
        tx.commit()?;
        for (hash, len) in doomed {
            let hash = hash_of(hash)?;
            let path = self.chunk_path(&hash);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::Io(path, e)),
            }
            report.chunks += 1;
            report.bytes += len as u64;
            self.stored_bytes.fetch_sub(len as u64, Ordering::Relaxed);
        }
        Ok(report)
    }

    /// Re-hashes every stored chunk and recounts every reference from the files that make it.
    /// Safe beside a running relay; a chunk collected while the check runs shows as missing, so a
    /// finding is worth a second run before it is acted on.
    pub fn check(&self) -> Result<CheckReport> {
        let (rows, unrecorded, miscounted, org_miscounted) = {
            let db = self.db();
            let hashes = |sql: &str| -> Result<Vec<Hash>> {
                let raw: Vec<Vec<u8>> = db
                    .prepare(sql)?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                raw.into_iter().map(hash_of).collect()
            };
            let rows: Vec<(Vec<u8>, u32)> = db
                .prepare("SELECT hash, len FROM chunks")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let unrecorded = hashes(
                "SELECT DISTINCT hash FROM file_chunks
                 WHERE hash NOT IN (SELECT hash FROM chunks) ORDER BY hash",
            )?;
            let miscounted = hashes(
                "SELECT k.hash FROM chunks k
                 LEFT JOIN (SELECT hash, COUNT(*) AS n FROM file_chunks GROUP BY hash) f
                   ON f.hash = k.hash
                 WHERE k.refs != COALESCE(f.n, 0) ORDER BY k.hash",
            )?;
            let org_raw: Vec<(String, Vec<u8>)> = db
                .prepare(
                    "WITH used AS (SELECT f.org, c.hash, COUNT(*) AS n
                                   FROM file_chunks c JOIN files f ON f.id = c.file
                                   GROUP BY f.org, c.hash)
                     SELECT o.org, o.hash FROM org_chunks o
                     LEFT JOIN used u ON u.org = o.org AND u.hash = o.hash
                     WHERE o.refs != COALESCE(u.n, 0)
                     UNION
                     SELECT u.org, u.hash FROM used u
                     LEFT JOIN org_chunks o ON o.org = u.org AND o.hash = u.hash
                     WHERE o.refs IS NULL
                     ORDER BY 1, 2",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let org_miscounted = org_raw
                .into_iter()
                .map(|(org, h)| Ok((org, hash_of(h)?)))
                .collect::<Result<Vec<_>>>()?;
            (rows, unrecorded, miscounted, org_miscounted)
        };
        let mut report = CheckReport {
            missing: unrecorded,
            miscounted,
            org_miscounted,
            ..CheckReport::default()
        };
        for (hash, len) in rows {
            let hash = hash_of(hash)?;
            report.checked += 1;
            let path = self.chunk_path(&hash);
            match fs::read(&path) {
                Ok(d) if d.len() == len as usize && chunk_hash(&d) == hash => {}
                Ok(_) => report.corrupt.push(hash),
                Err(e) if e.kind() == io::ErrorKind::NotFound => report.missing.push(hash),
                Err(e) => return Err(StoreError::Io(path, e)),
            }
        }
        Ok(report)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::chunker::tests::noise;

    const LEASE: Duration = Duration::from_secs(3600);
    const NO_QUOTA: Quotas = Quotas {
        org: None,
        user: None,
    };

    struct Fixture {
        _dir: tempfile::TempDir,
        store: ChunkStore,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        Fixture { _dir: dir, store }
    }

    /// Chunks of `data` as an uploader would cut them, with their bytes.
    fn cut(data: &[u8]) -> (Manifest, Vec<Vec<u8>>) {
        let m = Manifest::scan(data).unwrap();
        let bytes = m
            .chunks()
            .iter()
            .zip(m.offsets())
            .map(|(c, o)| data[o as usize..o as usize + c.len as usize].to_vec())
            .collect();
        (m, bytes)
    }

    fn new<'a>(org: &'a str, owner: &'a str, m: &'a Manifest) -> NewUpload<'a> {
        NewUpload {
            org,
            owner,
            name: "f.bin",
            room: None,
            classification: 0,
            view_only: false,
            manifest: m,
            reader: Reader {
                clearance: 3,
                room: None,
                view_only: true,
            },
        }
    }

    fn send(s: &ChunkStore, plan: &UploadPlan, m: &Manifest, bytes: &[Vec<u8>], now: u64) {
        for &i in &plan.missing {
            let c = m.chunks()[i as usize];
            let chunk = VerifiedChunk::check(&c.hash, bytes[i as usize].clone().into()).unwrap();
            s.write_chunk(&chunk).unwrap();
            s.chunk_received(&plan.id, &c.hash, c.len, now, LEASE)
                .unwrap();
        }
    }

    fn upload(s: &ChunkStore, org: &str, data: &[u8], now: u64) -> (UploadPlan, FileRecord) {
        let (m, bytes) = cut(data);
        let plan = s
            .begin_upload(&new(org, "ann", &m), NO_QUOTA, now, LEASE)
            .unwrap();
        send(s, &plan, &m, &bytes, now);
        let f = s.commit(&plan.id, now, true).unwrap();
        (plan, f)
    }

    fn read_all(s: &ChunkStore, id: &str) -> Result<Vec<u8>> {
        let m = s.manifest(id)?;
        let mut out = Vec::new();
        for c in m.chunks() {
            out.extend(s.read_chunk(&c.hash, c.len)?);
        }
        Ok(out)
    }

    #[test]
    fn upload_commit_read_back() {
        let f = fixture();
        let data = noise(1, 3_000_000);
        let (plan, rec) = upload(&f.store, "acme", &data, 100);
        assert!(!plan.resumed);
        assert_eq!(plan.missing.len(), rec.chunks as usize);
        assert_eq!(read_all(&f.store, &rec.id).unwrap(), data);
        assert_eq!(f.store.stored_bytes(), data.len() as u64);
        assert_eq!(f.store.list("acme").unwrap(), vec![rec.clone()]);
        assert!(f.store.list("other").unwrap().is_empty());
        assert_eq!(f.store.file(&rec.id).unwrap(), Some(rec));
        // Empty files are files too.
        let (plan, empty) = upload(&f.store, "acme", &[], 100);
        assert!(plan.missing.is_empty());
        assert_eq!(read_all(&f.store, &empty.id).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn already_have_stays_inside_the_organisation() {
        let f = fixture();
        let data = noise(2, 2_000_000);
        upload(&f.store, "acme", &data, 100);
        let (m, _) = cut(&data);
        let same_org = f
            .store
            .begin_upload(&new("acme", "bob", &m), NO_QUOTA, 101, LEASE)
            .unwrap();
        assert!(same_org.missing.is_empty());
        assert_eq!(same_org.deduplicated_bytes, data.len() as u64);
        let other = f
            .store
            .begin_upload(&new("other", "eve", &m), NO_QUOTA, 101, LEASE)
            .unwrap();
        assert_eq!(other.missing.len(), m.chunks().len());
        assert_eq!(other.deduplicated_bytes, 0);
        // Claiming the chunks without sending them does not make a file.
        assert!(matches!(
            f.store.commit(&other.id, 102, true),
            Err(StoreError::Incomplete(ref v)) if v.len() == m.chunks().len()
        ));
    }

    #[test]
    fn already_have_counts_only_what_the_uploader_may_read() {
        let f = fixture();
        let secret = noise(20, 1_500_000);
        let (m, bytes) = cut(&secret);
        let classified = NewUpload {
            classification: 3,
            room: Some("ops"),
            ..new("acme", "ann", &m)
        };
        let plan = f
            .store
            .begin_upload(&classified, NO_QUOTA, 100, LEASE)
            .unwrap();
        // While the upload is open, its received chunks are held for readers at its level only.
        send(&f.store, &plan, &m, &bytes, 100);
        let ask = |clearance, room, view_only, now| {
            let reader = Reader {
                clearance,
                room,
                view_only,
            };
            let plan = f
                .store
                .begin_upload(
                    &NewUpload {
                        reader,
                        ..new("acme", "bob", &m)
                    },
                    NO_QUOTA,
                    now,
                    LEASE,
                )
                .unwrap();
            f.store.abort(&plan.id, now).unwrap();
            plan.missing.len()
        };
        let all = m.chunks().len();
        assert_eq!(
            ask(0, None, true, 101),
            all,
            "an open upload above the reader"
        );
        assert_eq!(ask(3, None, true, 101), 0);
        f.store.commit(&plan.id, 102, true).unwrap();
        #[rustfmt::skip]
        let table = [
            (0, None, true, all),
            (2, None, true, all),
            (3, None, true, 0),
            (3, Some("hall"), true, all),
            (3, Some("ops"), true, 0),
        ];
        for (i, (clearance, room, view_only, missing)) in table.into_iter().enumerate() {
            assert_eq!(ask(clearance, room, view_only, 103), missing, "row {i}");
        }
        // A view-only file is held only for readers that may read view-only files.
        let film = noise(21, 700_000);
        let (fm, fbytes) = cut(&film);
        let plan = f
            .store
            .begin_upload(
                &NewUpload {
                    view_only: true,
                    ..new("acme", "ann", &fm)
                },
                NO_QUOTA,
                104,
                LEASE,
            )
            .unwrap();
        send(&f.store, &plan, &fm, &fbytes, 104);
        f.store.commit(&plan.id, 104, true).unwrap();
        let browser = Reader {
            clearance: 3,
            room: None,
            view_only: false,
        };
        let again = f
            .store
            .begin_upload(
                &NewUpload {
                    reader: browser,
                    ..new("acme", "bob", &fm)
                },
                NO_QUOTA,
                105,
                LEASE,
            )
            .unwrap();
        assert_eq!(again.missing.len(), fm.chunks().len());
    }

    #[test]
    fn restarted_upload_continues_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(3, 5_000_000);
        let (m, bytes) = cut(&data);
        assert!(m.chunks().len() >= 3);
        let first = {
            let s = ChunkStore::open(dir.path()).unwrap();
            let plan = s
                .begin_upload(&new("acme", "ann", &m), NO_QUOTA, 100, LEASE)
                .unwrap();
            let half = UploadPlan {
                missing: plan.missing[..2].to_vec(),
                ..plan.clone()
            };
            send(&s, &half, &m, &bytes, 100);
            plan
        };
        let s = ChunkStore::open(dir.path()).unwrap();
        let again = s
            .begin_upload(&new("acme", "ann", &m), NO_QUOTA, 200, LEASE)
            .unwrap();
        assert!(again.resumed);
        assert_eq!(again.id, first.id);
        assert_eq!(again.missing, first.missing[2..].to_vec());
        send(&s, &again, &m, &bytes, 200);
        let rec = s.commit(&again.id, 200, true).unwrap();
        assert_eq!(read_all(&s, &rec.id).unwrap(), data);
    }

    #[test]
    fn quotas_reserve_settle_and_release() {
        let f = fixture();
        let data = noise(4, 1_000_000);
        let (m, bytes) = cut(&data);
        let q = |org, user| Quotas { org, user };
        let size = data.len() as u64;
        // Fits exactly.
        let plan = f
            .store
            .begin_upload(&new("acme", "ann", &m), q(Some(size), None), 100, LEASE)
            .unwrap();
        assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), size);
        // A second one does not fit while the first holds its reservation.
        let (m2, _) = cut(&noise(5, 10));
        let e = f
            .store
            .begin_upload(&new("acme", "bob", &m2), q(Some(size), None), 100, LEASE)
            .unwrap_err();
        assert!(matches!(e, StoreError::Quota(ref x) if x.scope == plan::QuotaScope::Organisation));
        let e = f
            .store
            .begin_upload(&new("acme", "ann", &m2), q(None, Some(size)), 100, LEASE)
            .unwrap_err();
        assert!(matches!(e, StoreError::Quota(ref x) if x.scope == plan::QuotaScope::User));
        // The refusals left nothing behind.
        assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), size);
        send(&f.store, &plan, &m, &bytes, 100);
        let rec = f.store.commit(&plan.id, 100, true).unwrap();
        assert_eq!(f.store.usage_of("acme", Some("ann"), 100).unwrap(), size);
        f.store.remove(&rec.id, 100).unwrap();
        assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), 0);
        // Aborted and expired uploads release theirs.
        let p = f
            .store
            .begin_upload(&new("acme", "ann", &m), NO_QUOTA, 100, LEASE)
            .unwrap();
        f.store.abort(&p.id, 100).unwrap();
        assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), 0);
        f.store
            .begin_upload(&new("acme", "ann", &m), NO_QUOTA, 100, LEASE)
            .unwrap();
        assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), size);
        assert_eq!(f.store.expire_uploads(100 + LEASE.as_secs()).unwrap(), 1);
        assert_eq!(f.store.usage_of("acme", None, 100).unwrap(), 0);
    }

    #[test]
    fn gc_waits_for_grace_and_spares_live_uploads() {
        let f = fixture();
        let grace = Duration::from_secs(60);
        let data = noise(6, 2_000_000);
        let (_, rec) = upload(&f.store, "acme", &data, 100);
        let m = f.store.manifest(&rec.id).unwrap();
        assert_eq!(f.store.gc(1000, grace).unwrap().chunks, 0, "referenced");
        f.store.remove(&rec.id, 1000).unwrap();
        assert_eq!(f.store.gc(1030, grace).unwrap().chunks, 0, "in grace");
        // An upload that lists the chunks holds them, even though nobody references them.
        let p = f
            .store
            .begin_upload(&new("acme", "ann", &m), NO_QUOTA, 1030, LEASE)
            .unwrap();
        assert_eq!(f.store.gc(2000, grace).unwrap().chunks, 0, "leased");
        f.store.abort(&p.id, 2000).unwrap();
        assert_eq!(f.store.gc(2030, grace).unwrap().chunks, 0, "grace restarts");
        let r = f.store.gc(2061, grace).unwrap();
        assert_eq!(r.chunks as usize, m.chunks().len());
        assert_eq!(r.bytes, data.len() as u64);
        assert_eq!(f.store.stored_bytes(), 0);
        for c in m.chunks() {
            assert!(!f.store.chunk_path(&c.hash).exists());
        }
    }

    #[test]
    fn durable_writes_keep_every_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
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
            write_durably(&path, &data).unwrap();
            assert_eq!(fs::read(&path).unwrap(), data, "{len} bytes");
        }
    }

    #[test]
    fn tampered_chunks_are_never_served_and_check_finds_them() {
        let f = fixture();
        let data = noise(7, 3_000_000);
        let (_, rec) = upload(&f.store, "acme", &data, 100);
        assert!(f.store.check().unwrap().is_clean());
        let m = f.store.manifest(&rec.id).unwrap();
        let victim = m.chunks()[1];
        let path = f.store.chunk_path(&victim.hash);
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(
            matches!(read_all(&f.store, &rec.id), Err(StoreError::Corrupt(h)) if h == victim.hash)
        );
        assert_eq!(f.store.corrupt_reads(), 1);
        let report = f.store.check().unwrap();
        assert_eq!(report.corrupt, vec![victim.hash]);
        fs::remove_file(&path).unwrap();
        assert_eq!(f.store.check().unwrap().missing, vec![victim.hash]);
        // Reference counts are recounted from the files.
        f.store
            .db()
            .execute(
                "UPDATE chunks SET refs = refs + 1 WHERE hash = ?1",
                [&victim.hash[..]],
            )
            .unwrap();
        f.store
            .db()
            .execute("DELETE FROM org_chunks WHERE hash = ?1", [&victim.hash[..]])
            .unwrap();
        let report = f.store.check().unwrap();
        assert_eq!(report.miscounted, vec![victim.hash]);
        assert_eq!(
            report.org_miscounted,
            vec![("acme".to_string(), victim.hash)]
        );
        // Bytes that do not match their name cannot be handed to the store.
        assert!(
            VerifiedChunk::check(&victim.hash, bytes::Bytes::from_static(b"other bytes")).is_none()
        );
    }
}
