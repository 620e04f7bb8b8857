//! Uploads: start or resume, chunks arriving, commit into a file, abort, expiry.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::*;
use crate::files::chunker::MAX_CHUNK;
use crate::files::manifest::{MAX_CHUNKS, root_of};

/// The most bytes an upload may declare: a manifest's most chunks, each of the most bytes.
const LARGEST_UPLOAD: u64 = MAX_CHUNKS as u64 * MAX_CHUNK as u64;

/// What listing a manifest's chunks answered.
#[derive(Debug, Default)]
struct Listed {
    /// Indices of the chunks to send.
    missing: Vec<u32>,
    /// Bytes the organisation held already, now counted as received.
    deduplicated: u64,
}

impl Listed {
    /// The answer for upload `id` (`resumed`: an earlier upload continued).
    fn plan(self, id: UploadId, resumed: bool) -> UploadPlan {
        UploadPlan {
            id,
            resumed,
            missing: self.missing,
            deduplicated_bytes: self.deduplicated,
        }
    }
}

fn upload_id(v: Vec<u8>) -> Result<UploadId> {
    v.try_into()
        .map_err(|_| StoreError::Invalid("upload id".into()))
}

impl ChunkStore {
    /// Logical bytes charged to `org` (or to one user of it): files plus open reservations.
    pub fn usage_of(&self, org: &str, owner: Option<&str>, now: u64) -> Result<u64> {
        Self::usage(&self.db(), org, owner, now)
    }

    /// Starts an upload of `manifest`, or continues the same user's unfinished upload of the same
    /// content (or of the same file's manifest sent in parts, see
    /// [`ChunkStore::open_upload`]). A new upload reserves its size against the quotas; a
    /// continued one already holds its reservation.
    pub fn begin_upload(
        &self,
        new: &NewUpload<'_>,
        manifest: &Manifest,
        quotas: Quotas,
        now: u64,
        lease: Duration,
    ) -> Result<UploadPlan> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let existing: Option<Vec<u8>> = tx
            .query_row(
                "SELECT id FROM uploads WHERE org = ?1 AND owner = ?2 AND root = ?3",
                params![new.org, new.owner, &manifest.root()[..]],
                |r| r.get(0),
            )
            .optional()?;
        let size = manifest.size();
        let (id, resumed) = match existing {
            Some(id) => {
                let id = upload_id(id)?;
                Self::renew(&tx, &id, new, now, lease)?;
                (id, true)
            }
            None => match Self::take_over(&tx, new, size, manifest, now, lease)? {
                Some(id) => (id, true),
                None => {
                    let root = manifest.root();
                    (
                        Self::insert_upload(&tx, new, size, root, quotas, now, lease)?,
                        false,
                    )
                }
            },
        };
        let chunks = manifest.chunks();
        let listed = Self::list_places(&tx, &id, new.org, new.reader, 0, chunks, now)?;
        // Its places are now the manifest's chunks: the root is the manifest's.
        let end = chunks.len() as u32;
        Self::finish_listing(&tx, &id, end, Some(manifest.root()), now)?;
        tx.commit()?;
        Ok(listed.plan(id, resumed))
    }

    /// Starts an upload of `size` bytes whose manifest comes in parts while the file is cut,
    /// `first` the first of them; the rest follow through [`ChunkStore::list_upload`]. The same
    /// user's unfinished upload of a file with the same name, size and first chunk is taken
    /// over (its chunks received stay received, its reservation passes on, its id ends), so that
    /// an interrupted put run again sends only what had not arrived.
    pub fn open_upload(
        &self,
        new: &NewUpload<'_>,
        size: u64,
        first: &Manifest,
        quotas: Quotas,
        now: u64,
        lease: Duration,
    ) -> Result<UploadPlan> {
        if size > LARGEST_UPLOAD {
            return Err(StoreError::Rejected(format!(
                "an upload holds at most {LARGEST_UPLOAD} bytes, not {size}"
            )));
        }
        let mut db = self.db();
        let tx = db.transaction()?;
        let (id, resumed) = match Self::take_over(&tx, new, size, first, now, lease)? {
            Some(id) => (id, true),
            None => {
                // A placeholder until the manifest is whole.
                let root: Hash = crate::random_bytes();
                (
                    Self::insert_upload(&tx, new, size, &root, quotas, now, lease)?,
                    false,
                )
            }
        };
        let listed = Self::list_places(&tx, &id, new.org, new.reader, 0, first.chunks(), now)?;
        Self::listed_up_to(&tx, &id, first.chunks().len() as u32, first.size(), size)?;
        tx.commit()?;
        Ok(listed.plan(id, resumed))
    }

    /// Lists the chunks of upload `id` from index `first` on, the next part of its manifest,
    /// and answers which of them to send. `last` ends the manifest: the chunks must then add up
    /// to the upload's size, and the upload can be committed (and continued by its content, as
    /// [`ChunkStore::begin_upload`] does).
    #[allow(clippy::too_many_arguments)]
    pub fn list_upload(
        &self,
        id: &UploadId,
        first: u32,
        part: &Manifest,
        last: bool,
        reader: Reader<'_>,
        now: u64,
        lease: Duration,
    ) -> Result<UploadPlan> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let (org, size, listing, listing_bytes): (String, i64, Option<i64>, Option<i64>) = tx
            .query_row(
                "SELECT org, size, listing, listing_bytes FROM uploads
                 WHERE id = ?1 AND lease_expires > ?2",
                params![&id[..], now as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?
            .ok_or(StoreError::NotFound("upload"))?;
        let (Some(listing), Some(listing_bytes)) = (listing, listing_bytes) else {
            return Err(StoreError::Rejected(
                "the upload's manifest is complete already".into(),
            ));
        };
        if i64::from(first) != listing {
            return Err(StoreError::Rejected(format!(
                "chunks listed from {first}, but {listing} are listed before"
            )));
        }
        let listed = Self::list_places(&tx, id, &org, reader, first, part.chunks(), now)?;
        let end = first.saturating_add(part.chunks().len() as u32);
        let bytes = listing_bytes as u64 + part.size();
        Self::listed_up_to(&tx, id, end, bytes, size as u64)?;
        if last {
            if bytes != size as u64 {
                return Err(StoreError::Rejected(format!(
                    "the manifest's chunks add up to {bytes} bytes, the upload declared {size}"
                )));
            }
            Self::finish_listing(&tx, id, end, None, now)?;
        }
        tx.execute(
            "UPDATE uploads SET lease_expires = ?2 WHERE id = ?1 AND lease_expires < ?2",
            params![&id[..], now.saturating_add(lease.as_secs()) as i64],
        )?;
        tx.commit()?;
        Ok(listed.plan(*id, false))
    }

    /// The same user's unfinished upload (not a recording) of a file with `new`'s name, `size`
    /// and the first chunk of `manifest`, given a new id and the put's facts; `None` if there is
    /// none. Its chunks and reservation pass on; its old id ends, so that a put still using it
    /// stops rather than lists chunks beside this one.
    fn take_over(
        tx: &Connection,
        new: &NewUpload<'_>,
        size: u64,
        manifest: &Manifest,
        now: u64,
        lease: Duration,
    ) -> Result<Option<UploadId>> {
        let Some(c) = manifest.chunks().first() else {
            return Ok(None);
        };
        let earlier: Option<Vec<u8>> = tx
            .query_row(
                "SELECT u.id FROM uploads u JOIN upload_chunks c ON c.upload = u.id AND c.idx = 0
                 WHERE u.org = ?1 AND u.owner = ?2 AND u.name = ?3 AND u.size = ?4
                   AND c.hash = ?5 AND u.lease_expires > ?6
                   AND NOT EXISTS (SELECT 1 FROM recordings r WHERE r.upload = u.id)",
                params![
                    new.org,
                    new.owner,
                    new.name,
                    size as i64,
                    &c.hash[..],
                    now as i64
                ],
                |r| r.get(0),
            )
            .optional()?;
        let Some(old) = earlier else {
            return Ok(None);
        };
        let old = upload_id(old)?;
        let id: UploadId = crate::random_bytes();
        // Its manifest is listed again: a placeholder root until it is whole.
        let placeholder: Hash = crate::random_bytes();
        tx.execute(
            "INSERT INTO uploads (id, org, owner, name, room, root, size, classification,
             view_only, lease_expires, created)
             SELECT ?2, org, owner, name, room, ?3, size, classification, view_only,
                    lease_expires, created
             FROM uploads WHERE id = ?1",
            params![&old[..], &id[..], &placeholder[..]],
        )?;
        tx.execute(
            "UPDATE upload_chunks SET upload = ?2 WHERE upload = ?1",
            params![&old[..], &id[..]],
        )?;
        tx.execute("DELETE FROM uploads WHERE id = ?1", [&old[..]])?;
        Self::renew(tx, &id, new, now, lease)?;
        Ok(Some(id))
    }

    /// Records that upload `id`'s manifest is listed up to `end` chunks, which add up to
    /// `bytes`; refused past the upload's `size`. Places past `end` listed before (by an upload
    /// taken over) stay until listed again or cut off at the manifest's end.
    fn listed_up_to(tx: &Connection, id: &UploadId, end: u32, bytes: u64, size: u64) -> Result<()> {
        if bytes > size {
            return Err(StoreError::Rejected(format!(
                "the chunks listed add up to {bytes} bytes, the upload declared {size}"
            )));
        }
        tx.execute(
            "UPDATE uploads SET listing = ?2, listing_bytes = ?3 WHERE id = ?1",
            params![&id[..], end, bytes as i64],
        )?;
        Ok(())
    }

    /// Ends the manifest of upload `id` at `end` chunks: the places past it go, and the upload
    /// takes the root of its chunks, `root` when the caller knows it (unless the same user's
    /// other unfinished upload of this content holds it: this one is then reached by its id
    /// only) and may be committed.
    fn finish_listing(
        tx: &rusqlite::Transaction<'_>,
        id: &UploadId,
        end: u32,
        root: Option<&Hash>,
        now: u64,
    ) -> Result<()> {
        Self::release_chunks(tx, "upload = ?1 AND idx >= ?2", params![&id[..], end], now)?;
        tx.execute(
            "DELETE FROM upload_chunks WHERE upload = ?1 AND idx >= ?2",
            params![&id[..], end],
        )?;
        let root = match root {
            Some(r) => *r,
            None => root_of(&Self::manifest_rows(tx, id, false)?),
        };
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM uploads u, uploads me
             WHERE me.id = ?1 AND u.id != me.id AND u.org = me.org AND u.owner = me.owner
               AND u.root = ?2)",
            params![&id[..], &root[..]],
            |r| r.get(0),
        )?;
        if !taken {
            tx.execute(
                "UPDATE uploads SET root = ?2 WHERE id = ?1",
                params![&id[..], &root[..]],
            )?;
        }
        tx.execute(
            "UPDATE uploads SET listing = NULL, listing_bytes = NULL WHERE id = ?1",
            [&id[..]],
        )?;
        Ok(())
    }

    /// A new upload's row, its size reserved against the quotas.
    fn insert_upload(
        tx: &Connection,
        new: &NewUpload<'_>,
        size: u64,
        root: &Hash,
        quotas: Quotas,
        now: u64,
        lease: Duration,
    ) -> Result<UploadId> {
        Self::check_quota(tx, new.org, new.owner, size, quotas, now)?;
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
                &root[..],
                size as i64,
                new.classification,
                new.view_only,
                now.saturating_add(lease.as_secs()) as i64,
                now as i64
            ],
        )?;
        Ok(id)
    }

    /// An upload continued: what the put says of it now, and a new lease.
    fn renew(
        tx: &Connection,
        id: &UploadId,
        new: &NewUpload<'_>,
        now: u64,
        lease: Duration,
    ) -> Result<()> {
        tx.execute(
            "UPDATE uploads SET name = ?2, room = ?3, classification = ?4, view_only = ?5,
             lease_expires = ?6 WHERE id = ?1",
            params![
                &id[..],
                new.name,
                new.room,
                new.classification,
                new.view_only,
                now.saturating_add(lease.as_secs()) as i64
            ],
        )?;
        Ok(())
    }

    /// Sets `chunks` as upload `id`'s places from index `first` on (the places before it are
    /// listed), keeping a place that already lists the same chunk (and whether it was received),
    /// and answers which to send. A chunk is not sent when it was received, when another place of
    /// this upload received it or lists it earlier (it arrives once for all of them), or when the
    /// organisation holds it where `reader` may read it; received either way, it counts as
    /// received at once.
    fn list_places(
        tx: &rusqlite::Transaction<'_>,
        id: &UploadId,
        org: &str,
        reader: Reader<'_>,
        first: u32,
        chunks: &[ChunkRef],
        now: u64,
    ) -> Result<Listed> {
        if u64::from(first) + chunks.len() as u64 > MAX_CHUNKS as u64 {
            return Err(StoreError::Rejected(format!(
                "a manifest lists at most {MAX_CHUNKS} chunks"
            )));
        }
        let mut held: HashMap<Hash, bool> = HashMap::new();
        let mut listed = Listed::default();
        for (k, c) in chunks.iter().enumerate() {
            let idx = i64::from(first) + k as i64;
            let place: Option<(Vec<u8>, u32, bool)> = tx
                .prepare_cached(
                    "SELECT hash, len, received FROM upload_chunks WHERE upload = ?1 AND idx = ?2",
                )?
                .query_row(params![&id[..], idx], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let received = match place {
                Some((hash, len, received)) if hash[..] == c.hash[..] && len == c.len => received,
                other => {
                    if other.is_some() {
                        Self::release_chunks(
                            tx,
                            "upload = ?1 AND idx = ?2",
                            params![&id[..], idx],
                            now,
                        )?;
                        tx.prepare_cached(
                            "DELETE FROM upload_chunks WHERE upload = ?1 AND idx = ?2",
                        )?
                        .execute(params![&id[..], idx])?;
                    }
                    tx.prepare_cached(
                        "INSERT INTO upload_chunks (upload, idx, hash, len) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![&id[..], idx, &c.hash[..], c.len])?;
                    false
                }
            };
            if received {
                continue;
            }
            // This upload's other places of the chunk: seeks on (hash, received, upload).
            let (ours, coming): (Option<bool>, Option<bool>) = tx
                .prepare_cached(OTHER_PLACES)?
                .query_row(params![&id[..], &c.hash[..], idx], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let have = ours == Some(true)
                || match held.get(&c.hash) {
                    Some(&h) => h,
                    None => {
                        let h = Self::org_has(tx, org, reader, &c.hash, now)?;
                        held.insert(c.hash, h);
                        h
                    }
                };
            if have {
                let marked = tx
                    .prepare_cached(
                        "UPDATE upload_chunks SET received = 1
                         WHERE upload = ?1 AND idx = ?2 AND received = 0",
                    )?
                    .execute(params![&id[..], idx])?;
                if marked > 0 {
                    listed.deduplicated += u64::from(c.len);
                }
            } else if coming != Some(true) {
                // At most MAX_CHUNKS, checked above.
                listed.missing.push(idx as u32);
            }
        }
        Ok(listed)
    }

    /// The chunks an upload lists, in order: every one, or only those `received`.
    pub(super) fn manifest_rows(
        tx: &Connection,
        id: &UploadId,
        received: bool,
    ) -> Result<Vec<ChunkRef>> {
        let rows: Vec<(Vec<u8>, u32)> = tx
            .prepare_cached(
                "SELECT hash, len FROM upload_chunks
                 WHERE upload = ?1 AND idx >= 0 AND (received = 1 OR NOT ?2) ORDER BY idx",
            )?
            .query_map(params![&id[..], received], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(h, len)| {
                Ok(ChunkRef {
                    hash: hash_of(h)?,
                    len,
                })
            })
            .collect()
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
                "SELECT org, owner, name, room, size, classification, view_only,
                        listing IS NULL
                 FROM uploads WHERE id = ?1",
                [&id[..]],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, u8>(5)?,
                        r.get::<_, bool>(6)?,
                        r.get::<_, bool>(7)?,
                    ))
                },
            )
            .optional()?
            .ok_or(StoreError::NotFound("upload"))?;
        let (org, owner, name, room, size, classification, view_only, listed) = upload;
        if !listed {
            return Err(StoreError::Rejected(
                "the upload's manifest has not been sent whole".into(),
            ));
        }
        // The file is named by the chunks it is made of (an upload may carry a placeholder).
        let root = root_of(&Self::manifest_rows(&tx, id, false)?);
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
                &root[..],
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
            root,
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

    /// How far the user's open upload of a file named `name` has come: (chunks received,
    /// chunks listed so far).
    pub fn upload_progress(
        &self,
        org: &str,
        owner: &str,
        name: &str,
    ) -> Result<Option<(u64, u64)>> {
        Ok(self
            .db()
            .query_row(
                "SELECT COALESCE(SUM(c.received), 0), COUNT(c.idx) FROM uploads u
                 JOIN upload_chunks c ON c.upload = u.id
                 WHERE u.org = ?1 AND u.owner = ?2 AND u.name = ?3",
                params![org, owner, name],
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

/// Whether another place of an upload received a chunk, and whether an earlier one lists it
/// still to come. Found through the chunk's index down to the upload (whose key comes after the
/// index's columns), so that it costs the same for a chunk every upload lists.
pub(super) const OTHER_PLACES: &str = "SELECT MAX(received), MAX(received = 0 AND idx < ?3)
     FROM upload_chunks INDEXED BY upload_chunks_hash
     WHERE hash = ?2 AND received IN (0, 1) AND upload = ?1 AND idx != ?3";

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
