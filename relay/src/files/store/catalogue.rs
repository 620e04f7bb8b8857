//! The catalogue: the schema, and the queries the other parts of the store share.

use rusqlite::{Connection, Transaction, params};

use super::*;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS chunks (
    hash               BLOB PRIMARY KEY NOT NULL,
    len                INTEGER NOT NULL,
    refs               INTEGER NOT NULL DEFAULT 0,
    unreferenced_since INTEGER,
    -- How the chunk first arrived: 1 compressed, 0 as it is (its sender found compressing it
    -- did not pay, or its file's type or the chunks sent before it said not to try); NULL not
    -- known.
    compresses         INTEGER,
    -- Where the bytes are: a pack and an offset in it, and their seal; NULL for a chunk file
    -- of an earlier release.
    pack               INTEGER,
    at                 INTEGER,
    seal               BLOB
) STRICT, WITHOUT ROWID;
-- Every pack chunks are written to, registered before its first chunk.
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY NOT NULL
) STRICT;
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
    created        INTEGER NOT NULL,
    -- While its manifest still comes in parts: how many chunks and bytes are listed (the root
    -- is a placeholder then, and the upload cannot be committed); NULL once it is whole.
    listing        INTEGER,
    listing_bytes  INTEGER
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
CREATE TABLE IF NOT EXISTS recordings (
    upload  BLOB PRIMARY KEY NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    started     INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
"#;

/// Does an organisation hold a chunk where a reader may read it (see [`ChunkStore::org_has`]).
/// Asked for every chunk of every upload's manifest, so each branch starts from the chunk's rows
/// (`CROSS JOIN` keeps that order): left to itself, the planner starts from the organisation's
/// files or uploads, and the check grows with how many the organisation has.
pub(super) const ORG_HAS: &str = "SELECT EXISTS (SELECT 1 FROM chunks WHERE hash = ?2) AND (
        EXISTS (SELECT 1 FROM file_chunks c CROSS JOIN files f ON f.id = c.file
                WHERE c.hash = ?2 AND f.org = ?1 AND f.classification <= ?4
                  AND (f.view_only = 0 OR ?5) AND (?6 IS NULL OR f.room = ?6))
        OR EXISTS (SELECT 1 FROM upload_chunks c CROSS JOIN uploads u ON u.id = c.upload
                   WHERE c.hash = ?2 AND c.received = 1 AND u.org = ?1
                     AND u.lease_expires > ?3 AND u.classification <= ?4
                     AND (u.view_only = 0 OR ?5) AND (?6 IS NULL OR u.room = ?6)))";

/// Brings a catalogue made by an earlier release up to [`SCHEMA`]: the columns added since.
/// In one write transaction, so that a second process opening the same catalogue waits and then
/// finds the column there.
pub(super) fn upgrade(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (table, column, kind) in [
        ("chunks", "compresses", "INTEGER"),
        ("chunks", "pack", "INTEGER"),
        ("chunks", "at", "INTEGER"),
        ("chunks", "seal", "BLOB"),
        ("uploads", "listing", "INTEGER"),
        ("uploads", "listing_bytes", "INTEGER"),
    ] {
        let has: bool = tx.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )?;
        if !has {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    tx.commit()
}

/// Records bytes just placed as the chunk `hash`, unless it has a row already; the rows added.
pub(super) fn insert_chunk(
    tx: &Connection,
    placed: &Placed,
    hash: &Hash,
    len: u32,
    now: u64,
    compressed: Option<bool>,
) -> rusqlite::Result<usize> {
    let place = placed.place();
    tx.prepare_cached(
        "INSERT OR IGNORE INTO chunks (hash, len, refs, unreferenced_since, compresses, pack, at, seal)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        &hash[..],
        len,
        now as i64,
        compressed,
        place.pack as i64,
        place.at as i64,
        &placed.seal()[..]
    ])
}

impl ChunkStore {
    /// Does `org` hold `hash` where `reader` may read it: through one of its files, or a chunk
    /// one of its live uploads has received?
    pub(super) fn org_has(
        tx: &Connection,
        org: &str,
        reader: Reader<'_>,
        hash: &Hash,
        now: u64,
    ) -> Result<bool> {
        let held: bool = tx.prepare_cached(ORG_HAS)?.query_row(
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

    /// Refuses `more` bytes that would take the organisation or its user `owner` past a quota.
    pub(super) fn check_quota(
        tx: &Connection,
        org: &str,
        owner: &str,
        more: u64,
        quotas: Quotas,
        now: u64,
    ) -> Result<()> {
        let org_usage = Usage {
            used: Self::usage(tx, org, None, now)?,
            limit: quotas.org,
        };
        let user = Usage {
            used: Self::usage(tx, org, Some(owner), now)?,
            limit: quotas.user,
        };
        plan::reserve(more, org_usage, user).map_err(StoreError::Quota)
    }

    pub(super) fn usage(tx: &Connection, org: &str, owner: Option<&str>, now: u64) -> Result<u64> {
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

    /// Adds `sign` (+1 or -1) times each of the file's chunk occurrences to the chunk and
    /// organisation reference counts.
    pub(super) fn add_refs(
        tx: &Transaction<'_>,
        file: &str,
        org: &str,
        sign: i64,
        now: u64,
    ) -> Result<()> {
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
        // Only rows this call lowered can fall to nothing; the table holds every organisation's
        // chunks, so it is not swept.
        let mut gone =
            tx.prepare_cached("DELETE FROM org_chunks WHERE org = ?1 AND hash = ?2 AND refs <= 0")?;
        for (hash, n) in counts {
            chunk.execute(params![hash, sign * n, now as i64])?;
            owned.execute(params![org, hash, sign * n])?;
            if sign < 0 {
                gone.execute(params![org, hash])?;
            }
        }
        Ok(())
    }

    /// Starts the grace period of unreferenced chunks of the uploads chosen by `filter`.
    pub(super) fn release_chunks(
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
}
