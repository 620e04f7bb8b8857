//! Download: chunks are written at their offsets into `OUT.relay-part`, beside a small state file
//! `OUT.relay-state` naming the file and its root. A re-run with the same output verifies what
//! the part file already holds and fetches the rest; chunks that a previous version at `OUT`
//! already has are copied locally. Every chunk is checked against its hash before it is written,
//! the whole against the root (from those hashes, so the file is not read again), and only then
//! is the part file renamed over `OUT`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Client, ClientError, Progress, in_parallel, io_err, queue_of, request_on, unexpected};
use crate::files::DIRECT_ALIGN;
use crate::files::Hash;
use crate::files::chunker::{Chunker, chunk_hash};
use crate::files::manifest::{ChunkRef, Manifest, root_of};
use crate::files::placed::PlacedWriter;
use crate::files::plan;
use crate::files::wire::{Encoding, FileEntry, Request, Response};

/// What `get` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetReport {
    pub entry: FileEntry,
    pub path: PathBuf,
    pub chunks: usize,
    pub chunks_received: u64,
    /// Chunk bytes as they travelled (after compression).
    pub bytes_received: u64,
    /// Chunks found in the part file of an interrupted run or in a previous version at the
    /// output path.
    pub chunks_local: u64,
}

impl Client {
    /// Downloads file `id` to `out` (or its stored name in the current directory).
    pub async fn get(
        &self,
        id: &str,
        out: Option<&Path>,
        progress: Arc<Progress>,
    ) -> Result<GetReport, ClientError> {
        let start = Request::GetStart {
            token: self.token.clone(),
            file: id.into(),
        };
        let (entry, manifest) = match self.request(&start).await? {
            Response::FileInfo { entry, manifest } => (*entry, manifest),
            r => return Err(unexpected(r)),
        };
        if entry.size != manifest.size() {
            return Err(ClientError::Protocol(
                "the file's size and manifest disagree".into(),
            ));
        }
        let out = match out {
            Some(o) => o.to_path_buf(),
            None => PathBuf::from(safe_name(&entry.name, id)),
        };
        progress.total.store(manifest.size(), Ordering::Relaxed);
        let local = {
            let (out, id, m) = (out.clone(), id.to_string(), manifest.clone());
            tokio::task::spawn_blocking(move || prepare_download(&out, &id, &m))
                .await
                .map_err(|e| ClientError::Protocol(format!("preparing failed: {e}")))??
        };
        // Distinct hashes still wanted, each with every index it fills.
        let mut wanted: HashMap<Hash, Vec<u32>> = HashMap::new();
        let mut order = Vec::new();
        for (i, c) in manifest.chunks().iter().enumerate() {
            if local.have[i] {
                continue;
            }
            let slots = wanted.entry(c.hash).or_default();
            if slots.is_empty() {
                order.push(i as u32);
            }
            slots.push(i as u32);
        }
        let held: u64 = manifest
            .chunks()
            .iter()
            .zip(&local.have)
            .filter(|(_, h)| **h)
            .map(|(c, _)| u64::from(c.len))
            .sum();
        progress.done.store(held, Ordering::Relaxed);
        // A file written from nothing goes around the page cache.
        let placed = if held == 0 {
            PlacedWriter::open(&local.part, manifest.size()).map_err(io_err(&local.part))?
        } else {
            None
        };
        let job = Arc::new(GetJob {
            conn: self.conn.clone(),
            token: self.token.clone(),
            id: id.to_string(),
            manifest: manifest.clone(),
            offsets: manifest.offsets(),
            part: local.part_file,
            part_path: local.part.clone(),
            placed,
            verified: std::sync::Mutex::new(
                manifest
                    .chunks()
                    .iter()
                    .zip(&local.have)
                    .map(|(c, h)| h.then_some(c.hash))
                    .collect(),
            ),
            bytes_received: AtomicU64::new(0),
            progress,
        });
        in_parallel(queue_of(order.iter().copied()), |i| {
            let slots = wanted
                .remove(&manifest.chunks()[i as usize].hash)
                .unwrap_or_default();
            job.clone().fetch_chunk(i, slots)
        })
        .await?;
        let chunks_received = order.len() as u64;
        let bytes_received = job.bytes_received.load(Ordering::Relaxed);
        let verified = std::mem::take(&mut *job.verified.lock().unwrap_or_else(|p| p.into_inner()));
        let (part, out2, state, m) = (local.part, out.clone(), local.state, manifest.clone());
        let written = job.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(w) = &written.placed {
                w.finish().map_err(io_err(&part))?;
            }
            finish_download(&part, &out2, &state, &m, &verified)
        })
        .await
        .map_err(|e| ClientError::Protocol(format!("finishing failed: {e}")))??;
        Ok(GetReport {
            entry,
            path: out,
            chunks: manifest.chunks().len(),
            chunks_received,
            bytes_received,
            chunks_local: local.have.iter().filter(|h| **h).count() as u64,
        })
    }
}

struct GetJob {
    conn: quinn::Connection,
    token: String,
    id: String,
    manifest: Manifest,
    offsets: Vec<u64>,
    part: Arc<fs::File>,
    part_path: PathBuf,
    /// Where the part file is written around the page cache, when it is.
    placed: Option<PlacedWriter>,
    /// Per manifest index, the hash of the bytes written there, taken from those very bytes
    /// before they were written (or when found on disk).
    verified: std::sync::Mutex<Vec<Option<Hash>>>,
    bytes_received: AtomicU64,
    progress: Arc<Progress>,
}

impl GetJob {
    /// Fetches chunk `index` and writes it at every index in `slots` (the same bytes recur).
    async fn fetch_chunk(self: Arc<Self>, index: u32, slots: Vec<u32>) -> Result<(), ClientError> {
        let c = self.manifest.chunks()[index as usize];
        let req = Request::GetChunk {
            token: self.token.clone(),
            file: self.id.clone(),
            index,
        };
        // Where the chunk's first copy goes in the file decides where it lies in memory: its
        // whole blocks are then written from there.
        let phase = slots
            .first()
            .map_or(0, |s| self.offsets[*s as usize] as usize % DIRECT_ALIGN);
        let (encoding, data) = match request_on(&self.conn, &req, phase).await? {
            Response::ChunkData {
                index: got,
                encoding,
                data,
            } if got == index => (encoding, data),
            r => return Err(unexpected(r)),
        };
        self.bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let plain = match encoding {
                Encoding::Raw => data,
                Encoding::Zstd => plan::decompress(&data, c.len as usize)
                    .map(Bytes::from)
                    .map_err(|e| {
                        ClientError::Protocol(format!("chunk {index} does not decompress: {e}"))
                    })?,
            };
            let hash = chunk_hash(&plain);
            if plain.len() != c.len as usize || hash != c.hash {
                return Err(ClientError::Protocol(format!(
                    "chunk {index} from the relay does not match its hash; nothing was written"
                )));
            }
            for s in &slots {
                let at = this.offsets[*s as usize];
                match &this.placed {
                    Some(w) => w.write(at, &plain),
                    None => this.part.write_all_at(&plain, at).map(|()| {
                        crate::files::writeback::start_writeback(&this.part, at, plain.len() as u64)
                    }),
                }
                .map_err(io_err(&this.part_path))?;
                if let Some(v) = this
                    .verified
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(*s as usize)
                {
                    *v = Some(hash);
                }
                this.progress
                    .done
                    .fetch_add(u64::from(c.len), Ordering::Relaxed);
            }
            Ok(())
        })
        .await
        .map_err(|e| ClientError::Protocol(format!("writing failed: {e}")))?
    }
}

/// A stored name made safe as a file name in the current directory.
fn safe_name(name: &str, id: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    match base {
        "" | "." | ".." => format!("file-{id}"),
        b => b.to_string(),
    }
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    out.with_file_name(name)
}

struct LocalState {
    part: PathBuf,
    state: PathBuf,
    part_file: Arc<fs::File>,
    /// Manifest indices whose bytes the part file already holds, verified.
    have: Vec<bool>,
}

fn state_text(id: &str, m: &Manifest) -> String {
    format!("relay download v1\n{id}\n{}\n", hex::encode(m.root()))
}

/// Opens (or continues) the part file and fills it from what is already on disk: the part file
/// of an interrupted run of the same file, and a previous version at `out`.
fn prepare_download(out: &Path, id: &str, m: &Manifest) -> Result<LocalState, ClientError> {
    let part = sibling(out, ".relay-part");
    let state = sibling(out, ".relay-state");
    let expected = state_text(id, m);
    let resuming = fs::read_to_string(&state).is_ok_and(|s| s == expected)
        && fs::metadata(&part).is_ok_and(|md| md.len() == m.size());
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(!resuming)
        .open(&part)
        .map_err(io_err(&part))?;
    if !resuming {
        file.set_len(m.size()).map_err(io_err(&part))?;
        crate::files::writeback::preallocate(&file, m.size());
        fs::write(&state, expected).map_err(io_err(&state))?;
    }
    let offsets = m.offsets();
    let mut have = vec![false; m.chunks().len()];
    let mut buf = Vec::new();
    if resuming {
        for (i, c) in m.chunks().iter().enumerate() {
            buf.resize(c.len as usize, 0);
            if file.read_exact_at(&mut buf, offsets[i]).is_ok() && chunk_hash(&buf) == c.hash {
                have[i] = true;
            }
        }
    }
    // A previous version at the output path: copy the chunks it shares.
    if have.iter().any(|h| !h)
        && let Ok(old) = fs::File::open(out)
    {
        let mut wanted: HashMap<Hash, Vec<usize>> = HashMap::new();
        for (i, c) in m.chunks().iter().enumerate() {
            if !have[i] {
                wanted.entry(c.hash).or_default().push(i);
            }
        }
        let mut chunker = Chunker::new(io::BufReader::with_capacity(1 << 20, old));
        while let Some(chunk) = chunker.next_chunk().map_err(io_err(out))? {
            if let Some(slots) = wanted.remove(&chunk.hash) {
                for i in slots {
                    file.write_all_at(chunk.data, offsets[i])
                        .map_err(io_err(&part))?;
                    have[i] = true;
                }
            }
        }
    }
    Ok(LocalState {
        part,
        state,
        part_file: Arc::new(file),
        have,
    })
}

/// Checks the manifest's root against the hashes of what was written (`verified`, per index, each
/// taken from the bytes themselves before they were written), makes the part file durable and
/// puts it in place. The file is not read again: every byte in it was hashed on its way in.
fn finish_download(
    part: &Path,
    out: &Path,
    state: &Path,
    m: &Manifest,
    verified: &[Option<Hash>],
) -> Result<(), ClientError> {
    let written: Option<Vec<ChunkRef>> = m
        .chunks()
        .iter()
        .zip(verified.iter().chain(std::iter::repeat(&None)))
        .map(|(c, v)| v.map(|hash| ChunkRef { hash, len: c.len }))
        .collect();
    if written.is_none_or(|w| root_of(&w) != *m.root()) {
        return Err(ClientError::Protocol(
            "the downloaded file does not match its root hash; it was not kept".into(),
        ));
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .open(part)
        .map_err(io_err(part))?;
    file.sync_all().map_err(io_err(part))?;
    fs::rename(part, out).map_err(io_err(out))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    let _ = fs::remove_file(state);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_kept_only_when_every_chunk_was_verified() {
        let dir = tempfile::tempdir().unwrap();
        let data = relay_kit::noise(30, 3 << 20);
        let m = Manifest::scan(&data[..]).unwrap();
        assert!(m.chunks().len() > 1);
        let all: Vec<Option<Hash>> = m.chunks().iter().map(|c| Some(c.hash)).collect();
        let mut one_missing = all.clone();
        one_missing[1] = None;
        let mut one_wrong = all.clone();
        one_wrong[0] = Some([7; 32]);
        #[rustfmt::skip]
        let table: [(&str, &[Option<Hash>], bool); 5] = [
            ("all verified", &all, true),
            ("one never verified", &one_missing, false),
            ("one wrong", &one_wrong, false),
            ("short list", &all[..1], false),
            ("none", &[], false),
        ];
        for (name, verified, kept) in table {
            let (part, out, state) = (
                dir.path().join("f.part"),
                dir.path().join("f"),
                dir.path().join("f.state"),
            );
            let _ = fs::remove_file(&out);
            fs::write(&part, &data).unwrap();
            fs::write(&state, "s").unwrap();
            let r = finish_download(&part, &out, &state, &m, verified);
            assert_eq!(r.is_ok(), kept, "{name}: {r:?}");
            assert_eq!(out.exists(), kept, "{name}");
            assert_eq!(part.exists(), !kept, "{name}");
        }
    }

    #[test]
    fn output_names_are_safe() {
        assert_eq!(safe_name("clip.mp4", "x"), "clip.mp4");
        assert_eq!(safe_name("../../etc/passwd", "x"), "passwd");
        assert_eq!(safe_name("..", "x"), "file-x");
        assert_eq!(safe_name("", "x"), "file-x");
        assert_eq!(
            sibling(Path::new("/a/b.mp4"), ".relay-part"),
            PathBuf::from("/a/b.mp4.relay-part")
        );
    }
}
