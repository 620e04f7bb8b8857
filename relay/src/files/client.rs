//! The file plane's client: what `relay files put|get|ls|rm` do over one QUIC connection.
//!
//! Upload: map the file, make its manifest (remembered, re-cut along an earlier version, or cut
//! afresh: [`super::scan_cache`]), send it, send only the chunks the relay says are missing (the
//! first one alone, so a refused type stops at once, then several in flight), each handed to quinn
//! as a slice of the mapping, then commit. Re-running the same put continues the relay's open
//! upload of that content.
//!
//! Download: chunks are written at their offsets into `OUT.relay-part`, beside a small state file
//! `OUT.relay-state` naming the file and its root. A re-run with the same output verifies what
//! the part file already holds and fetches the rest; chunks that a previous version at `OUT`
//! already has are copied locally. Every chunk is checked against its hash before it is written,
//! the whole against the root (from those hashes, so the file is not read again), and only then is
//! the part file renamed over `OUT`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::DIRECT_ALIGN;
use super::Hash;
use super::chunker::{self, Chunker, Cut, chunk_hash};
use super::manifest::{Manifest, root_of};
use super::mapped::{Mapped, MappedRange};
use super::placed::PlacedWriter;
use super::plan;
use super::scan_cache::{Begun, Scan, ScanCache, begin_scan, cuts_of, manifest_from};
use super::transport::{self, ALPN, PARALLEL_CHUNKS};
use super::wire::{Encoding, FileEntry, PutStart, Request, Response, UploadId};

/// How often one chunk is sent again after the relay found it damaged.
const CHUNK_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The command was used wrongly (bad address, missing token, unreadable CA).
    #[error("{0}")]
    Usage(String),
    /// The connection could not be made or was lost.
    #[error("{0}")]
    Connection(String),
    /// The relay refused: `code` is the contract's (`quota`, `file_type`, ...).
    #[error("denied ({code}): {message}")]
    Refused { code: String, message: String },
    /// The relay could not do it (`not_found`, `corrupt`, ...).
    #[error("{code}: {message}")]
    Failed { code: String, message: String },
    #[error("{path}: {1}", path = .0.display())]
    Io(PathBuf, io::Error),
    /// The relay answered something that does not fit, or sent bytes that do not match.
    #[error("{0}")]
    Protocol(String),
    /// In a cluster, the file is stored by another node: at `addr`, with the certificate `cert`
    /// (DER), vouched for by the node that answered.
    #[error("the file is stored by the node at {addr}")]
    Elsewhere { addr: String, cert: Vec<u8> },
}

impl ClientError {
    /// The contract's code for `--json` error output.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Usage(_) => "usage",
            ClientError::Connection(_) => "connection",
            ClientError::Refused { code, .. } | ClientError::Failed { code, .. } => code,
            ClientError::Io(..) => "io",
            ClientError::Protocol(_) => "protocol",
            ClientError::Elsewhere { .. } => "elsewhere",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ClientError + '_ {
    move |e| ClientError::Io(path.to_path_buf(), e)
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Refused { code, message } => ClientError::Refused { code, message },
        Response::Failed { code, message } => ClientError::Failed { code, message },
        Response::Elsewhere { addr, cert } => ClientError::Elsewhere {
            addr,
            cert: cert.to_vec(),
        },
        other => ClientError::Protocol(format!("unexpected answer {other:?}")),
    }
}

/// Progress of a transfer, in logical bytes, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

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

#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions<'a> {
    pub room: Option<&'a str>,
    pub classification: u8,
    pub view_only: bool,
    /// Where scans of files are remembered (see [`super::scan_cache`]); none: every put scans.
    pub scan_cache: Option<&'a ScanCache>,
    /// A file cut afresh from this size on has its manifest sent in parts while it is cut, and
    /// its chunks sent as they are listed; none: [`STREAM_FROM`].
    pub stream_from: Option<u64>,
}

/// The size from which a file cut afresh is sent while it is cut: below it, cutting the file
/// first on every core takes less time than a round trip or two.
pub const STREAM_FROM: u64 = 64 << 20;

/// A connection to a relay's file plane.
#[derive(Debug)]
pub struct Client {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    token: String,
}

fn client_config(ca_der: Vec<u8>) -> Result<quinn::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der))
        .map_err(|e| ClientError::Usage(format!("the relay certificate is not usable: {e}")))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(transport::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Usage(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport::transport()));
    Ok(config)
}

impl Client {
    /// Connects to `server` (`HOST:PORT`), trusting the certificate `ca_der`. Must run inside a
    /// Tokio runtime.
    pub async fn connect(
        server: &str,
        ca_der: Vec<u8>,
        token: String,
    ) -> Result<Client, ClientError> {
        let (host, _) = server
            .rsplit_once(':')
            .ok_or_else(|| ClientError::Usage(format!("--server {server:?} is not HOST:PORT")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addr: SocketAddr = server
            .to_socket_addrs()
            .map_err(|e| ClientError::Usage(format!("--server {server}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Usage(format!("--server {server}: no address")))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let (socket, _) = transport::udp_socket(bind, 8 << 20, false)
            .map_err(|e| ClientError::Connection(format!("cannot open a UDP socket: {e}")))?;
        let mut endpoint = transport::endpoint(socket, None)
            .map_err(|e| ClientError::Connection(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(client_config(ca_der)?);
        let conn = endpoint
            .connect(addr, &host)
            .map_err(|e| ClientError::Connection(format!("{server}: {e}")))?
            .await
            .map_err(|e| ClientError::Connection(format!("{server}: {e}")))?;
        Ok(Client {
            conn,
            endpoint,
            token,
        })
    }

    /// Closes the connection and waits for the relay to hear it.
    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle())
            .await;
    }

    /// The connection's path as quinn measures it: datagram size, losses, round trip.
    pub fn path_stats(&self) -> quinn::PathStats {
        self.conn.stats().path
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends one request on its own stream and reads the answer.
    pub async fn request(&self, req: &Request) -> Result<Response, ClientError> {
        request_on(&self.conn, req, 0).await
    }

    pub async fn list(&self) -> Result<Vec<FileEntry>, ClientError> {
        match self
            .request(&Request::List {
                token: self.token.clone(),
            })
            .await?
        {
            Response::Listing(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    pub async fn remove(&self, id: &str) -> Result<(), ClientError> {
        match self
            .request(&Request::Remove {
                token: self.token.clone(),
                file: id.into(),
            })
            .await?
        {
            Response::Removed { .. } => Ok(()),
            r => Err(unexpected(r)),
        }
    }

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
                    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                    let cuts = chunker::cut_file(map.bytes(), threads);
                    let m = manifest_from(&cuts).map_err(io_err(&owned))?;
                    fresh.remember(&f, &m);
                    Begun::Known(m, Scan::Cut)
                }
                begun => begun,
            };
            Ok::<_, ClientError>((f, Arc::new(map), begun))
        })
        .await
        .map_err(|e| ClientError::Protocol(format!("scanning failed: {e}")))??;
        let head = &map.bytes()[..map.bytes().len().min(8192)];
        let compressible = plan::worth_trying_compression(head);
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
                compressible,
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
                // The scan is remembered as soon as it ends, so that a put cut short after it
                // is continued from the manifest.
                let scanner = tokio::task::spawn_blocking(move || {
                    let mut all = Vec::new();
                    let mut whole = false;
                    chunker::cut_in_parts(scanned.bytes(), |part, last| {
                        all.extend_from_slice(&part);
                        whole = last;
                        parts_in.blocking_send((part, last)).is_ok()
                    });
                    if let (true, Ok(m)) = (whole, manifest_from(&all)) {
                        fresh.remember(&file, &m);
                    }
                });
                let (mut cuts, mut last) = parts
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
                let mut lists = 1;
                let listing = async {
                    let listed = async {
                        while !last {
                            if queue.is_closed() {
                                // The sending stopped at a failure, which it reports.
                                return Ok(());
                            }
                            let (part, end) = parts
                                .recv()
                                .await
                                .ok_or_else(|| ClientError::Protocol("scanning failed".into()))?;
                            let first = cuts.len() as u32;
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
                            cuts.extend(part);
                            last = end;
                        }
                        Ok(())
                    };
                    // A failure to list ends the sending too, as a failed chunk would.
                    if let Err(e) = listed.await {
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
                scanner
                    .await
                    .map_err(|e| ClientError::Protocol(format!("scanning failed: {e}")))?;
                let manifest = manifest_from(&cuts).map_err(io_err(path))?;
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

/// Sends `req` and reads the answer; a chunk in the answer is placed `phase` bytes past a block
/// boundary in memory ([`transport::read_frame`]).
async fn request_on(
    conn: &quinn::Connection,
    req: &Request,
    phase: usize,
) -> Result<Response, ClientError> {
    let lost =
        |e: &dyn fmt::Display| ClientError::Connection(format!("connection to the relay: {e}"));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    transport::write_frame(&mut send, req.encode())
        .await
        .map_err(|e| lost(&e))?;
    send.finish().map_err(|e| lost(&e))?;
    let (kind, body) = transport::read_frame(&mut recv, phase)
        .await
        .map_err(|e| lost(&e))?
        .ok_or_else(|| {
            ClientError::Connection("the relay closed the stream without an answer".into())
        })?;
    Response::decode(kind, body).map_err(|e| ClientError::Protocol(format!("bad answer: {e}")))
}

struct PutJob {
    conn: quinn::Connection,
    token: String,
    upload: UploadId,
    /// The file as it was opened for the scan: chunks are sent from it without a copy.
    map: Arc<Mapped>,
    path: PathBuf,
    compressible: bool,
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
        let (encoding, data) = if self.compressible {
            tokio::task::spawn_blocking(move || match plan::compress(&buf) {
                Some(z) => (Encoding::Zstd, Bytes::from(z)),
                None => (Encoding::Raw, buf),
            })
            .await
            .map_err(|e| ClientError::Protocol(format!("compressing failed: {e}")))?
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
                        super::writeback::start_writeback(&this.part, at, plain.len() as u64)
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
        super::writeback::preallocate(&file, m.size());
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
    let written: Option<Vec<super::manifest::ChunkRef>> = m
        .chunks()
        .iter()
        .zip(verified.iter().chain(std::iter::repeat(&None)))
        .map(|(c, v)| v.map(|hash| super::manifest::ChunkRef { hash, len: c.len }))
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

/// Runs a chunk transfer for each item of `queue`, started by `start`, up to [`PARALLEL_CHUNKS`]
/// in flight, until the queue is closed and empty. A failure (a transfer's, or one put in the
/// queue by whoever fills it) closes the queue (whoever fills it hears so) and no new transfer
/// starts; the ones in flight finish, and the first failure is the result.
async fn in_parallel<T, F>(
    mut queue: mpsc::UnboundedReceiver<Result<T, ClientError>>,
    mut start: impl FnMut(T) -> F,
) -> Result<(), ClientError>
where
    F: Future<Output = Result<(), ClientError>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let mut failure = None;
    let mut open = true;
    loop {
        let taking = open && failure.is_none() && tasks.len() < PARALLEL_CHUNKS;
        if !taking && tasks.is_empty() {
            break;
        }
        tokio::select! {
            item = queue.recv(), if taking => match item {
                Some(Ok(t)) => {
                    tasks.spawn(start(t));
                }
                Some(Err(e)) => {
                    failure.get_or_insert(e);
                    queue.close();
                }
                None => open = false,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let result = done
                    .map_err(|e| ClientError::Protocol(format!("chunk task failed: {e}")))
                    .and_then(|r| r);
                if let Err(e) = result {
                    failure.get_or_insert(e);
                    queue.close();
                }
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// A closed queue of `items`.
fn queue_of<T>(
    items: impl IntoIterator<Item = T>,
) -> mpsc::UnboundedReceiver<Result<T, ClientError>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for t in items {
        // The receiver is held right here.
        let _ = tx.send(Ok(t));
    }
    rx
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
