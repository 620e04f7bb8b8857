//! Collection of unreferenced chunks, and the check of every chunk and reference.

use std::time::Duration;

use super::*;

/// A chunk's row as collection and the check read it: `hash, len, pack, at`.
pub(super) struct Located {
    hash: Vec<u8>,
    len: u32,
    place: Option<Place>,
}

pub(super) fn located(r: &rusqlite::Row<'_>) -> rusqlite::Result<Located> {
    Ok(Located {
        hash: r.get(0)?,
        len: r.get(1)?,
        place: place(r.get(2)?, r.get(3)?),
    })
}

impl ChunkStore {
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
        let doomed: Vec<Located> = tx
            .prepare(
                "SELECT hash, len, pack, at FROM chunks k
                 WHERE refs <= 0 AND unreferenced_since IS NOT NULL AND unreferenced_since <= ?1
                   AND NOT EXISTS (SELECT 1 FROM upload_chunks c WHERE c.hash = k.hash)",
            )?
            .query_map([cutoff], located)?
            .collect::<rusqlite::Result<_>>()?;
        for c in &doomed {
            tx.execute("DELETE FROM chunks WHERE hash = ?1", [&c.hash])?;
        }
        // Rows go first: a crash after this commit leaves bytes without rows, which are
        // harmless; the other order could leave rows naming nothing.
        tx.commit()?;
        for c in doomed {
            let hash = hash_of(c.hash)?;
            self.recent.forget(&hash);
            // The rows are gone: a chunk whose bytes cannot be freed now never will be, and the
            // others still are.
            if let Err(e) = self.blobs.remove(&hash, c.place, c.len) {
                tracing::warn!(chunk = %hex::encode(hash), "collected chunk's bytes not freed: {e}");
            }
            report.chunks += 1;
            report.bytes += u64::from(c.len);
            self.stored_bytes
                .fetch_sub(u64::from(c.len), Ordering::Relaxed);
        }
        Ok(report)
    }

    /// Re-hashes every stored chunk and recounts every reference from the files that make it.
    /// Safe beside a running relay: a chunk collected while the check runs is not a finding.
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
            let rows: Vec<Located> = db
                .prepare("SELECT hash, len, pack, at FROM chunks")?
                .query_map([], located)?
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
        self.check_chunks(rows, &mut report)?;
        Ok(report)
    }

    /// Re-hashes the chunks of `rows`, read from the catalogue before, into `report`.
    pub(super) fn check_chunks(&self, rows: Vec<Located>, report: &mut CheckReport) -> Result<()> {
        for c in rows {
            let hash = hash_of(c.hash)?;
            report.checked += 1;
            // Bytes that cannot be read are a finding, not the end of the check.
            let present = match self.blobs.get(&hash, c.place, c.len) {
                Ok(Some(s)) if s.data.len() == c.len as usize && chunk_hash(&s.data) == hash => {
                    continue;
                }
                Ok(found) => found.is_some(),
                Err(e) => {
                    tracing::warn!(chunk = %hex::encode(hash), "stored chunk unreadable: {e}");
                    true
                }
            };
            // A chunk collected since the rows were read (its blocks freed, or its file gone) is
            // no finding.
            if self.place_of(&hash)?.is_none_or(|w| w.place != c.place) {
                continue;
            }
            match present {
                true => report.corrupt.push(hash),
                false => report.missing.push(hash),
            }
        }
        Ok(())
    }
}
