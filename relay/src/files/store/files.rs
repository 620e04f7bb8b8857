//! Stored files: look-ups, listings, manifests and removal.

use rusqlite::{OptionalExtension, params};

use super::*;

/// The one catalogue query per served chunk: its place, its file's type flag, and how it arrived.
pub(super) const CHUNK_TO_SERVE: &str = "SELECT c.hash, c.len, f.compressible, k.compresses,
            k.hash IS NOT NULL, k.pack, k.at, k.seal
     FROM file_chunks c JOIN files f ON f.id = c.file
     LEFT JOIN chunks k ON k.hash = c.hash
     WHERE c.file = ?1 AND c.idx = ?2";

/// A chunk of a file as a get serves it: the chunk, whether compressing it for the wire is worth
/// trying ([`plan::worth_compressing_to_serve`]), and where its bytes are.
#[derive(Debug, Clone)]
pub struct ChunkToServe {
    pub chunk: ChunkRef,
    pub worth_compressing: bool,
    stored: Option<Where>,
}

impl ChunkStore {
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

    /// Chunk `index` of `file` as a get serves it, with where its bytes are.
    pub fn chunk_to_serve(&self, file: &str, index: u32) -> Result<Option<ChunkToServe>> {
        let row = self
            .db()
            .prepare_cached(CHUNK_TO_SERVE)?
            .query_row(params![file, index], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<bool>>(3)?,
                    // The chunk's row, if it has one.
                    match r.get::<_, bool>(4)? {
                        true => Some(Where::from_row(r, 5)?),
                        false => None,
                    },
                ))
            })
            .optional()?;
        row.map(|(h, len, file_may, chunk_came, stored)| {
            Ok(ChunkToServe {
                chunk: ChunkRef {
                    hash: hash_of(h)?,
                    len,
                },
                worth_compressing: plan::worth_compressing_to_serve(file_may, chunk_came),
                stored,
            })
        })
        .transpose()
    }

    /// The bytes of a chunk to serve, checked as [`ChunkStore::read_chunk`] checks them.
    pub fn read_to_serve(&self, c: &ChunkToServe) -> Result<Bytes> {
        self.read_at(&c.chunk.hash, c.chunk.len, c.stored)
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
}
