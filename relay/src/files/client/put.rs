//! Upload: map the file, make its manifest (remembered, re-cut along an earlier version, or cut
//! afresh: [`crate::files::scan_cache`]), send it, send only the chunks the relay says are
//! missing (the first one alone, so a refused type stops at once, then several in flight), each
//! handed to quinn as a slice of the mapping, then commit. A large file cut afresh is sent while
//! it is cut, its manifest in parts. Re-running the same put continues the relay's open upload
//! of that content.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Client, ClientError, Progress, in_parallel, io_err, request_on, unexpected};
use crate::files::chunker::{self, Cut, chunk_hash};
use crate::files::mapped::{Mapped, MappedRange};
use crate::files::plan;
use crate::files::scan_cache::{Begun, Scan, ScanCache, begin_scan, cuts_of, manifest_from};
use crate::files::wire::{Encoding, FileEntry, PutStart, Request, Response, UploadId};

/// How often one chunk is sent again after the relay found it damaged.
const CHUNK_RETRIES: usize = 3;

/// What `put` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReport {
    pub entry: FileEntry,
    pub chunks: usize,
    pub chunks_sent: u64,
    /// Chunk bytes as they travelled (after compression).
    pub bytes_sent: u64,
    pub resumed: bool,
    /// How the manifest was made: remembered, re-cut along an earlier version, or cut afresh.
    pub scan: Scan,
    /// The messages the manifest took: 1 when it was sent whole, more when it was sent in parts
    /// while the file was cut.
    pub manifest_parts: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions<'a> {
    pub room: Option<&'a str>,
    pub classification: u8,
    pub view_only: bool,
    /// Where scans of files are remembered (see [`crate::files::scan_cache`]); none: every put scans.
    pub scan_cache: Option<&'a ScanCache>,
    /// A file cut afresh from this size on has its manifest sent in parts while it is cut, and
    /// its chunks sent as they are listed; none: [`STREAM_FROM`].
    pub stream_from: Option<u64>,
}

/// The size from which a file cut afresh is sent while it is cut: below it, cutting the file
/// first on every core takes less time than a round trip or two.
pub const STREAM_FROM: u64 = 64 << 20;

impl Client {
    /// Uploads `path`; see the module documentation.
    pub async fn put(
        &self,
        path: &Path,
        opts: PutOptions<'_>,
        progress: Arc<Progress>,
    ) -> Result<PutReport, ClientError> {
        let owned = path.to_path_buf();
        let cache = opts.scan_cache.cloned();
        let stream_from = opts.stream_from.unwrap_or(STREAM_FROM);
        let (file, map, begun) = tokio::task::spawn_blocking(move || {
            let f = fs::File::open(&owned).map_err(io_err(&owned))?;
            let len = f.metadata().map_err(io_err(&owned))?.len();
            let map = Mapped::new(&f, len).map_err(io_err(&owned))?;
            // The cache is keyed by the file's canonical path; without one, no cache.
            let key = fs::canonicalize(&owned).ok();
            let cache = cache.as_ref().filter(|_| key.is_some());
            let key = key.as_deref().unwrap_or(&owned);
            let begun = match begin_scan(&f, &map, key, cache).map_err(io_err(&owned))? {
                Begun::Fresh(fresh) if len < stream_from => {
                    Begun::Known(fresh.cut(&f, &map).map_err(io_err(&owned))?, Scan::Cut)
                }
                begun => begun,
            };
            Ok::<_, ClientError>((f, Arc::new(map), begun))
        })
        .await
        .map_err(|e| ClientError::Protocol(format!("scanning failed: {e}")))??;
        let head = &map.bytes()[..map.bytes().len().min(8192)];
        let compression = Arc::new(plan::CompressionTrials::for_file(head));
        progress
            .total
            .store(map.bytes().len() as u64, Ordering::Relaxed);
        let facts = |manifest| PutStart {
            token: self.token.clone(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            room: opts.room.map(String::from),
            classification: opts.classification,
            view_only: opts.view_only,
            manifest,
        };
        let job = |upload| {
            Arc::new(PutJob {
                conn: self.conn.clone(),
                token: self.token.clone(),
                upload,
                map: map.clone(),
                path: path.to_path_buf(),
                compression: compression.clone(),
                bytes_sent: AtomicU64::new(0),
                chunks_sent: AtomicU64::new(0),
                progress: progress.clone(),
            })
        };
        let (job, manifest, resumed, scan, manifest_parts) = match begun {
            Begun::Known(manifest, scan) => {
                let start = Request::PutStart(Box::new(facts(manifest.clone())));
                let (upload, resumed, missing) = ready(self.request(&start).await?)?;
                let cuts = cuts_of(&manifest);
                let job = job(upload);
                job.listed(&cuts, 0, &missing)?;
                let (queue, rest) = job.clone().first_alone(&cuts, missing).await?;
                drop(queue);
                in_parallel(rest, |(i, c)| job.clone().send_chunk(i, c)).await?;
                (job, manifest, resumed, scan, 1)
            }
            Begun::Fresh(fresh) => {
                let size = map.bytes().len() as u64;
                let (parts_in, mut parts) = mpsc::channel(4);
                let scanned = map.clone();
                // The scan's manifest is remembered as soon as it is whole, so that a put cut
                // short after it is continued from the manifest; it is the put's too.
                let scanner = tokio::task::spawn_blocking(move || {
                    let mut all = Vec::new();
                    let mut whole = false;
                    chunker::cut_in_parts(scanned.bytes(), |part, last| {
                        all.extend_from_slice(&part);
                        whole = last;
                        parts_in.blocking_send((part, last)).is_ok()
                    });
                    let manifest = manifest_from(&all).ok().filter(|_| whole)?;
                    fresh.remember(&file, &manifest);
                    Some(manifest)
                });
                let (cuts, mut last) = parts
                    .recv()
                    .await
                    .ok_or_else(|| ClientError::Protocol("scanning failed".into()))?;
                let open = Request::PutOpen {
                    start: Box::new(facts(manifest_from(&cuts).map_err(io_err(path))?)),
                    size,
                };
                let (upload, resumed, missing) = ready(self.request(&open).await?)?;
                let job = job(upload);
                job.listed(&cuts, 0, &missing)?;
                let (queue, rest) = job.clone().first_alone(&cuts, missing).await?;
                // The rest of the manifest is listed while the chunks listed so far travel.
                let mut listed = cuts.len() as u32;
                let mut lists = 1;
                let listing = async {
                    let listing = async {
                        while !last {
                            if queue.is_closed() {
                                // The sending stopped at a failure, which it reports.
                                return Ok(());
                            }
                            let (part, end) = parts
                                .recv()
                                .await
                                .ok_or_else(|| ClientError::Protocol("scanning failed".into()))?;
                            let first = listed;
                            lists += 1;
                            let list = Request::PutList {
                                token: self.token.clone(),
                                upload,
                                first,
                                last: end,
                                part: manifest_from(&part).map_err(io_err(path))?,
                            };
                            let (_, _, missing) = ready(self.request(&list).await?)?;
                            job.listed(&part, first, &missing)?;
                            for i in missing {
                                let c = part[(i - first) as usize];
                                if queue.send(Ok((i, c))).is_err() {
                                    return Ok(());
                                }
                            }
                            listed += part.len() as u32;
                            last = end;
                        }
                        Ok(())
                    };
                    // A failure to list ends the sending too, as a failed chunk would.
                    if let Err(e) = listing.await {
                        let _ = queue.send(Err(e));
                    }
                    drop(queue);
                };
                let sending = in_parallel(rest, |(i, c)| job.clone().send_chunk(i, c));
                let ((), sent) = tokio::join!(listing, sending);
                sent?;
                if !last {
                    return Err(ClientError::Protocol(
                        "the upload stopped before its manifest was listed whole".into(),
                    ));
                }
                drop(parts);
                let manifest = scanner
                    .await
                    .map_err(|e| ClientError::Protocol(format!("scanning failed: {e}")))?
                    .ok_or_else(|| ClientError::Protocol("scanning failed".into()))?;
                (job, manifest, resumed, Scan::Cut, lists)
            }
        };
        let commit = Request::PutCommit {
            token: self.token.clone(),
            upload: job.upload,
        };
        match self.request(&commit).await? {
            Response::Committed(entry) => Ok(PutReport {
                entry: *entry,
                chunks: manifest.chunks().len(),
                chunks_sent: job.chunks_sent.load(Ordering::Relaxed),
                bytes_sent: job.bytes_sent.load(Ordering::Relaxed),
                resumed,
                scan,
                manifest_parts,
            }),
            r => Err(unexpected(r)),
        }
    }
}

struct PutJob {
    conn: quinn::Connection,
    token: String,
    upload: UploadId,
    /// The file as it was opened for the scan: chunks are sent from it without a copy.
    map: Arc<Mapped>,
    path: PathBuf,
    compression: Arc<plan::CompressionTrials>,
    bytes_sent: AtomicU64,
    chunks_sent: AtomicU64,
    progress: Arc<Progress>,
}

/// Chunks to send, by manifest index.
type Queue = mpsc::UnboundedSender<Result<(u32, Cut), ClientError>>;

impl PutJob {
    /// Checks the relay's answer to the listing of `cuts` (manifest indices from `first` on):
    /// it may ask only for those; what it does not ask for is done.
    fn listed(&self, cuts: &[Cut], first: u32, missing: &[u32]) -> Result<(), ClientError> {
        let end = u64::from(first) + cuts.len() as u64;
        if missing.iter().any(|&i| i < first || u64::from(i) >= end) {
            return Err(ClientError::Protocol(
                "the relay asked for a chunk the manifest does not have".into(),
            ));
        }
        let listed: u64 = cuts.iter().map(|c| u64::from(c.len)).sum();
        let asked: u64 = missing
            .iter()
            .map(|&i| u64::from(cuts[(i - first) as usize].len))
            .sum();
        self.progress
            .done
            .fetch_add(listed.saturating_sub(asked), Ordering::Relaxed);
        Ok(())
    }

    /// Sends chunk 0 alone if it is `missing` (the relay checks the file's type on it and may
    /// refuse at once), and queues the rest of `missing` (indices into `cuts`).
    async fn first_alone(
        self: Arc<Self>,
        cuts: &[Cut],
        missing: Vec<u32>,
    ) -> Result<
        (
            Queue,
            mpsc::UnboundedReceiver<Result<(u32, Cut), ClientError>>,
        ),
        ClientError,
    > {
        let (queue, rest) = mpsc::unbounded_channel();
        for i in missing {
            let c = cuts[i as usize];
            if i == 0 {
                self.clone().send_chunk(0, c).await?;
            } else {
                // The receiver is held right here.
                let _ = queue.send(Ok((i, c)));
            }
        }
        Ok((queue, rest))
    }

    /// The chunk `c` of the file as it is now, straight from the mapping.
    fn chunk(&self, c: &Cut) -> Result<Bytes, ClientError> {
        let start = usize::try_from(c.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(c.len as usize);
        if end > self.map.bytes().len() {
            return Err(ClientError::Io(
                self.path.clone(),
                io::Error::from(io::ErrorKind::UnexpectedEof),
            ));
        }
        Ok(Bytes::from_owner(MappedRange {
            map: self.map.clone(),
            start,
            end,
        }))
    }

    /// Sends chunk `index`, `c`. It is not hashed again here: the relay hashes every chunk it
    /// receives, and only when it refuses one is the file read again, to tell a file that
    /// changed since it was scanned from damage on the way.
    async fn send_chunk(self: Arc<Self>, index: u32, c: Cut) -> Result<(), ClientError> {
        let buf = self.chunk(&c)?;
        let (encoding, data) = if self.compression.worth_trying() {
            let tried = tokio::task::spawn_blocking(move || match plan::compress(&buf) {
                Some(z) => (Encoding::Zstd, Bytes::from(z)),
                None => (Encoding::Raw, buf),
            })
            .await
            .map_err(|e| ClientError::Protocol(format!("compressing failed: {e}")))?;
            self.compression.tried(tried.0 == Encoding::Zstd);
            tried
        } else {
            (Encoding::Raw, buf)
        };
        let req = Request::PutChunk {
            token: self.token.clone(),
            upload: self.upload,
            index,
            encoding,
            data: data.clone(),
        };
        for attempt in 0..=CHUNK_RETRIES {
            self.bytes_sent
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            match request_on(&self.conn, &req, 0).await? {
                Response::ChunkAccepted { index: got } if got == index => {
                    self.chunks_sent.fetch_add(1, Ordering::Relaxed);
                    self.progress
                        .done
                        .fetch_add(u64::from(c.len), Ordering::Relaxed);
                    return Ok(());
                }
                Response::Failed { code, .. } if code == "bad_chunk" => {
                    let now = self.chunk(&c)?;
                    if chunk_hash(&now) != c.hash {
                        return Err(ClientError::Usage(format!(
                            "{} changed while it was being sent; run the command again",
                            self.path.display()
                        )));
                    }
                    if attempt == CHUNK_RETRIES {
                        break;
                    }
                    tracing::warn!(index, "the relay received chunk damaged; sending it again");
                }
                r => return Err(unexpected(r)),
            }
        }
        Err(ClientError::Protocol(format!(
            "chunk {index} kept arriving damaged"
        )))
    }
}

/// The upload a start, an open or a listing answered, whether it was continued, and the chunks
/// the relay asks for.
fn ready(r: Response) -> Result<(UploadId, bool, Vec<u32>), ClientError> {
    match r {
        Response::PutReady {
            upload,
            resumed,
            missing,
        } => Ok((upload, resumed, missing)),
        r => Err(unexpected(r)),
    }
}
