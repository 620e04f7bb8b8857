//! Recordings: files written while a meeting runs. A recording is an upload whose chunk list
//! grows as the media comes (each chunk durable before its row), with no lease to run out;
//! it becomes a file through the same commit as any upload. Its first chunk is the container's
//! header, which may be written again (the video's size, the duration) before the end. A
//! recording still open when the relay starts was cut short by a crash: the shell closes it
//! into a playable file from [`ChunkStore::open_recordings`].
//!
//! Its bytes count against the quotas as they arrive (an open upload's size is charged), and a
//! chunk that would pass a quota is refused with [`StoreError::Quota`] before it is recorded.

use rusqlite::{OptionalExtension, params};

use super::*;
use crate::files::manifest::root_of;

/// What a recording declares at its start.
#[derive(Debug, Clone, Copy)]
pub struct NewRecording<'a> {
    pub org: &'a str,
    pub owner: &'a str,
    pub name: &'a str,
    pub room: &'a str,
    pub classification: u8,
    /// What the shell needs to close it after a crash (`meeting`, `audio`).
    pub kind: &'a str,
}

/// A recording not yet closed into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRecording {
    pub id: UploadId,
    pub org: String,
    pub owner: String,
    pub name: String,
    pub room: String,
    pub kind: String,
    /// Seconds since the epoch at its start.
    pub started: u64,
    /// The time its stored chunks reach, in ms.
    pub duration_ms: u64,
    /// Its chunks in order.
    pub chunks: Vec<ChunkRef>,
}

/// An open recording never expires; a crash leaves it for the next start to close.
const NO_EXPIRY: i64 = i64::MAX;

impl ChunkStore {
    /// Opens a recording: an empty upload charged nothing yet. Refused with
    /// [`StoreError::Quota`] when the organisation or the user has no room left at all.
    pub fn begin_recording(
        &self,
        new: &NewRecording<'_>,
        quotas: Quotas,
        now: u64,
    ) -> Result<UploadId> {
        let mut db = self.db();
        let tx = db.transaction()?;
        Self::check_quota(&tx, new.org, new.owner, 1, quotas, now)?;
        let id: UploadId = crate::random_bytes();
        // The root is a placeholder until the end, when the chunks are known.
        let placeholder: Hash = crate::random_bytes();
        tx.execute(
            "INSERT INTO uploads (id, org, owner, name, room, root, size, classification,
             view_only, lease_expires, created)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, 0, ?8, ?9)",
            params![
                &id[..],
                new.org,
                new.owner,
                new.name,
                new.room,
                &placeholder[..],
                new.classification,
                NO_EXPIRY,
                now as i64
            ],
        )?;
        tx.execute(
            "INSERT INTO recordings (upload, kind, started) VALUES (?1, ?2, ?3)",
            params![&id[..], new.kind, now as i64],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Adds a chunk at the end of recording `id`, which then reaches `duration_ms`. It is
    /// checked against the quotas and charged as it is listed (not received yet), so that no
    /// collection takes a stored copy of the same bytes while they are written; then the bytes
    /// go to disk, and only then are they recorded as received. A chunk that would pass a quota
    /// is refused and not listed; one whose write fails is listed no more.
    pub fn append_recording(
        &self,
        id: &UploadId,
        chunk: &VerifiedChunk,
        duration_ms: u64,
        quotas: Quotas,
        now: u64,
    ) -> Result<()> {
        let len = chunk.data().len() as i64;
        let index = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let (org, owner) = Self::recording_owner(&tx, id)?;
            Self::check_quota(&tx, &org, &owner, len as u64, quotas, now)?;
            let index: i64 = tx.query_row(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM upload_chunks WHERE upload = ?1 AND idx >= 0",
                [&id[..]],
                |r| r.get(0),
            )?;
            Self::claim(&tx, id, index, chunk)?;
            tx.execute(
                "UPDATE uploads SET size = size + ?2 WHERE id = ?1",
                params![&id[..], len],
            )?;
            tx.commit()?;
            index
        };
        let written = self.write_chunk(chunk).and_then(|placed| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let new = Self::received(&tx, id, index, index, chunk, &placed, now)?;
            tx.execute(
                "UPDATE recordings SET duration_ms = ?2 WHERE upload = ?1",
                params![&id[..], duration_ms as i64],
            )?;
            tx.commit()?;
            if new.is_some() {
                placed.keep();
            }
            Ok(new.unwrap_or(0))
        });
        match written {
            Ok(new) => {
                self.stored(new);
                Ok(())
            }
            Err(e) => {
                let db = self.db();
                db.execute(
                    "DELETE FROM upload_chunks WHERE upload = ?1 AND idx = ?2 AND received = 0",
                    params![&id[..], index],
                )?;
                db.execute(
                    "UPDATE uploads SET size = size - ?2 WHERE id = ?1",
                    params![&id[..], len],
                )?;
                Err(e)
            }
        }
    }

    /// Writes chunk `index` of recording `id` again (a header that now knows more), listed
    /// under a placeholder index while its bytes are written, as a new chunk is; the old bytes
    /// are left to collection.
    pub fn replace_recording_chunk(
        &self,
        id: &UploadId,
        index: u32,
        chunk: &VerifiedChunk,
        now: u64,
    ) -> Result<()> {
        let placeholder = -1 - i64::from(index);
        {
            let db = self.db();
            db.execute(
                "DELETE FROM upload_chunks WHERE upload = ?1 AND idx = ?2",
                params![&id[..], placeholder],
            )?;
            Self::claim(&db, id, placeholder, chunk)?;
        }
        let written = self.write_chunk(chunk).and_then(|placed| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let old: i64 = tx
                .query_row(
                    "SELECT len FROM upload_chunks WHERE upload = ?1 AND idx = ?2",
                    params![&id[..], index],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(StoreError::NotFound("recording chunk"))?;
            Self::release_chunks(
                &tx,
                "upload = ?1 AND idx = ?2",
                params![&id[..], index],
                now,
            )?;
            tx.execute(
                "DELETE FROM upload_chunks WHERE upload = ?1 AND idx = ?2",
                params![&id[..], index],
            )?;
            let new = Self::received(&tx, id, placeholder, i64::from(index), chunk, &placed, now)?;
            tx.execute(
                "UPDATE uploads SET size = size - ?2 + ?3 WHERE id = ?1",
                params![&id[..], old, chunk.data().len() as i64],
            )?;
            tx.commit()?;
            if new.is_some() {
                placed.keep();
            }
            Ok(new.unwrap_or(0))
        });
        match written {
            Ok(new) => {
                self.stored(new);
                Ok(())
            }
            Err(e) => {
                self.db().execute(
                    "DELETE FROM upload_chunks WHERE upload = ?1 AND idx = ?2",
                    params![&id[..], placeholder],
                )?;
                Err(e)
            }
        }
    }

    /// Lists `chunk` as coming at `index` of the recording, not received yet.
    fn claim(tx: &Connection, id: &UploadId, index: i64, chunk: &VerifiedChunk) -> Result<()> {
        tx.execute(
            "INSERT INTO upload_chunks (upload, idx, hash, len, received) VALUES (?1, ?2, ?3, ?4, 0)",
            params![&id[..], index, &chunk.hash()[..], chunk.data().len() as i64],
        )?;
        Ok(())
    }

    /// The claimed chunk at `claimed` reached the disk (`placed`): it is recorded, and listed as
    /// received at `index`. Answers the bytes newly stored, if they are new to the store.
    fn received(
        tx: &Connection,
        id: &UploadId,
        claimed: i64,
        index: i64,
        chunk: &VerifiedChunk,
        placed: &Placed,
        now: u64,
    ) -> Result<Option<u64>> {
        let len = chunk.data().len() as u32;
        let inserted = catalogue::insert_chunk(tx, placed, chunk.hash(), len, now, None)? > 0;
        tx.execute(
            "UPDATE upload_chunks SET idx = ?3, received = 1 WHERE upload = ?1 AND idx = ?2",
            params![&id[..], claimed, index],
        )?;
        Ok(inserted.then_some(u64::from(len)))
    }

    /// Counts bytes newly on disk once their rows are committed.
    fn stored(&self, new: u64) {
        self.stored_bytes.fetch_add(new, Ordering::Relaxed);
    }

    fn recording_owner(db: &Connection, id: &UploadId) -> Result<(String, String)> {
        db.query_row(
            "SELECT u.org, u.owner FROM uploads u JOIN recordings r ON r.upload = u.id
             WHERE u.id = ?1",
            [&id[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or(StoreError::NotFound("recording"))
    }

    /// Closes recording `id` into a file of its chunks as listed now.
    pub fn finish_recording(&self, id: &UploadId, now: u64) -> Result<FileRecord> {
        {
            let db = self.db();
            Self::recording_owner(&db, id)?;
            // Claims whose bytes never arrived (a crash while they were written) go, and the
            // appended ones are no longer charged.
            db.execute(
                "UPDATE uploads SET size = size - (SELECT COALESCE(SUM(len), 0) FROM upload_chunks
                     WHERE upload = ?1 AND received = 0 AND idx >= 0) WHERE id = ?1",
                [&id[..]],
            )?;
            db.execute(
                "DELETE FROM upload_chunks WHERE upload = ?1 AND received = 0",
                [&id[..]],
            )?;
            let chunks = Self::manifest_rows(&db, id, true)?;
            if chunks.is_empty() {
                return Err(StoreError::Invalid("a recording without bytes".into()));
            }
            db.execute(
                "UPDATE uploads SET root = ?2 WHERE id = ?1",
                params![&id[..], &root_of(&chunks)[..]],
            )?;
        }
        // Commit deletes the upload, and with it (cascade) the recording's row.
        self.commit(id, now, false)
    }

    /// Drops a recording that holds nothing worth keeping; its chunks are left to collection.
    pub fn discard_recording(&self, id: &UploadId, now: u64) -> Result<()> {
        self.abort(id, now)
    }

    /// Recordings not closed yet (after a crash, every one that was running).
    pub fn open_recordings(&self) -> Result<Vec<OpenRecording>> {
        let db = self.db();
        let rows: Vec<(Vec<u8>, OpenRecording)> = db
            .prepare(
                "SELECT u.id, u.org, u.owner, u.name, u.room, r.kind, r.started, r.duration_ms
                 FROM recordings r JOIN uploads u ON u.id = r.upload ORDER BY r.started",
            )?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    OpenRecording {
                        id: [0; 16],
                        org: r.get(1)?,
                        owner: r.get(2)?,
                        name: r.get(3)?,
                        room: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        kind: r.get(5)?,
                        started: r.get::<_, i64>(6)? as u64,
                        duration_ms: r.get::<_, i64>(7)? as u64,
                        chunks: Vec::new(),
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, mut open)| {
                open.id = id
                    .try_into()
                    .map_err(|_| StoreError::Invalid("upload id".into()))?;
                open.chunks = Self::manifest_rows(&db, &open.id, true)?;
                Ok(open)
            })
            .collect()
    }
}
