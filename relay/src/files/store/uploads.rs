//! Uploads: start or resume, chunks arriving, commit into a file, abort, expiry.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::*;

impl ChunkStore {
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
            .prepare_cached("SELECT org, owner, size, lease_expires FROM uploads WHERE id = ?1")?
            .query_row([&id[..]], |r| {
                Ok(Upload {
                    id: *id,
                    org: r.get(0)?,
                    owner: r.get(1)?,
                    size: r.get::<_, i64>(2)? as u64,
                    lease_expires: r.get::<_, i64>(3)? as u64,
                })
            })
            .optional()?)
    }

    /// What an upload expects at manifest index `index`, and whether the store holds it.
    pub fn expected_chunk(&self, id: &UploadId, index: u32) -> Result<Option<ExpectedChunk>> {
        let row = self
            .db()
            .prepare_cached(
                "SELECT c.hash, c.len, c.received, k.hash IS NOT NULL
                 FROM upload_chunks c LEFT JOIN chunks k ON k.hash = c.hash
                 WHERE c.upload = ?1 AND c.idx = ?2",
            )?
            .query_row(params![&id[..], index], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .optional()?;
        row.map(|(h, len, received, stored)| {
            Ok(ExpectedChunk {
                hash: hash_of(h)?,
                len,
                received,
                stored,
            })
        })
        .transpose()
    }

    /// Records a chunk written by [`ChunkStore::write_chunk`] (`placed`; `None` when the store
    /// held it already) as received by an upload, and renews the upload's lease.
    ///
    /// The record is committed without waiting for the disk (SQLite's `synchronous = NORMAL`):
    /// a crash of the relay loses none of it, a power loss may lose the last of them, and then
    /// those chunks are asked for again when the upload continues (a chunk's bytes were made
    /// durable before its record was written, so no record ever names missing bytes). The next
    /// commit made with `FULL` (a file's, a removal's) carries every record before it to the disk.
    ///
    /// `compressed` says how the chunk travelled: a get compresses it for the wire again only if
    /// it came compressed once, or if nothing is known of it.
    #[allow(clippy::too_many_arguments)]
    pub fn chunk_received(
        &self,
        id: &UploadId,
        placed: Option<Placed>,
        hash: &Hash,
        len: u32,
        compressed: bool,
        now: u64,
        lease: Duration,
    ) -> Result<()> {
        let mut db = self.db();
        db.pragma_update(None, "synchronous", "NORMAL")?;
        let recorded = record_chunk(
            &mut db,
            id,
            placed.as_ref(),
            hash,
            len,
            compressed,
            now,
            lease,
        );
        // Kept as soon as its record is committed, whatever comes after: bytes a row names are
        // never given back.
        if recorded.as_ref().is_ok_and(|&new| new) {
            self.stored_bytes
                .fetch_add(u64::from(len), Ordering::Relaxed);
            if let Some(placed) = placed {
                placed.keep();
            }
        }
        let full = db.pragma_update(None, "synchronous", "FULL");
        recorded?;
        Ok(full?)
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

    /// Drops an upload and its reservation. Chunks it brought stay until collected.
    pub fn abort(&self, id: &UploadId, now: u64) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        Self::release_chunks(&tx, "upload = ?1", params![&id[..]], now)?;
        tx.execute("DELETE FROM uploads WHERE id = ?1", [&id[..]])?;
        tx.commit()?;
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
}

/// Marks every place of an upload that holds a chunk as received. Found through the chunk's
/// index, down to the upload's places not yet received: by the upload's key the planner would
/// read all of the upload's chunks for each one received, a cost that grows with the file (nine
/// times the whole record at 8,192 chunks); by the hash alone, every upload's places of a common
/// chunk (a block of zeros, say).
pub(super) const MARK_RECEIVED: &str = "UPDATE upload_chunks INDEXED BY upload_chunks_hash
     SET received = 1 WHERE upload = ?1 AND hash = ?2 AND received = 0";

/// Marks `hash` received by upload `id` and renews its lease; true if the chunk is new to the
/// store (its row records `placed`).
#[allow(clippy::too_many_arguments)]
fn record_chunk(
    db: &mut rusqlite::Connection,
    id: &UploadId,
    placed: Option<&Placed>,
    hash: &Hash,
    len: u32,
    compressed: bool,
    now: u64,
    lease: Duration,
) -> Result<bool> {
    let tx = db.transaction()?;
    // Once per chunk of every upload: the statements are kept prepared.
    let inserted = match placed {
        Some(placed) => catalogue::insert_chunk(&tx, placed, hash, len, now, Some(compressed))?,
        None => 0,
    };
    if compressed && inserted == 0 {
        tx.prepare_cached("UPDATE chunks SET compresses = 1 WHERE hash = ?1")?
            .execute([&hash[..]])?;
    }
    tx.prepare_cached(MARK_RECEIVED)?
        .execute(params![&id[..], &hash[..]])?;
    // Extended only when it moves: chunks arriving within one second leave the row alone.
    tx.prepare_cached(
        "UPDATE uploads SET lease_expires = ?2 WHERE id = ?1 AND lease_expires < ?2",
    )?
    .execute(params![&id[..], now.saturating_add(lease.as_secs()) as i64])?;
    tx.commit()?;
    Ok(inserted > 0)
}
