//! The file plane's QUIC shell: the quinn endpoint, one task per connection and per stream, and
//! the checks every request passes before it touches the [`ChunkStore`].
//!
//! One request per bidirectional stream, answered with one frame. Every request carries its token
//! and is checked through [`Control::authenticate`] and the policy on its own: grant, organisation,
//! clearance against the file's classification, view-only files for terminals only. Puts, gets and
//! removals are audited, allowed or denied. Store work (hashing, fsync, SQLite) runs on the
//! blocking pool so the network tasks keep turning.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::chunker::VerifiedChunk;
use super::plan;
use super::store::{ChunkStore, FileRecord, NewUpload, Quotas, Reader, StoreError};
use super::transport::{self, ALPN, Buffers};
use super::wire::{self, Encoding, PutStart, Request, Response, UploadId};
use crate::config;
use crate::control::model::{DeviceKind, shown};
use crate::control::policy::{self, Denial, FileAction, FileFacts, Principal};
use crate::control::token::Grant;
use crate::control::{Control, unix_now};
use crate::datadir::{Secrets, pem_body};

#[derive(Debug)]
#[non_exhaustive]
pub enum FilesError {
    Tls(String),
    Bind(SocketAddr, std::io::Error),
    Store(StoreError),
}

impl std::fmt::Display for FilesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilesError::Tls(m) => write!(f, "TLS: {m}"),
            FilesError::Bind(a, e) => write!(f, "cannot listen on UDP {a}: {e}"),
            FilesError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FilesError {}

/// Plain counters of the file plane, published at scrape time.
#[derive(Debug, Default)]
pub struct Counters {
    /// Chunk bytes received as they travelled (compressed or not), accepted or not.
    pub bytes_received: AtomicU64,
    /// Logical bytes an upload did not send because its organisation held them.
    pub bytes_deduplicated: AtomicU64,
    /// Open connections (one per client command).
    pub transfers_active: AtomicU64,
    /// Chunks refused on arrival for not matching their hash.
    pub chunks_rejected: AtomicU64,
}

/// The running file plane.
#[derive(Debug)]
pub struct FilePlane {
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    service: Arc<Service>,
    pub buffers: Buffers,
}

/// What a request handler needs.
#[derive(Debug)]
struct Service {
    control: Arc<Control>,
    store: Arc<ChunkStore>,
    settings: config::Files,
    counters: Counters,
}

/// Decrements a gauge when dropped.
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn server_config(secrets: &Secrets) -> Result<quinn::ServerConfig, FilesError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = pem_body(&secrets.key_pem, "PRIVATE KEY")
        .ok_or_else(|| FilesError::Tls("the TLS key is not PEM".into()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(transport::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| FilesError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(secrets.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .map_err(|e| FilesError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| FilesError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport::transport()));
    Ok(server)
}

impl FilePlane {
    /// Opens the store in `data` and starts serving. Must run inside a Tokio runtime.
    pub fn start(
        settings: &config::Files,
        data: &Path,
        secrets: &Secrets,
        control: Arc<Control>,
    ) -> Result<FilePlane, FilesError> {
        let store = ChunkStore::open(data).map_err(FilesError::Store)?;
        store.remove_temp_files();
        let server = server_config(secrets)?;
        let (socket, buffers) =
            transport::udp_socket(settings.listen, settings.socket_buffer_bytes)
                .map_err(|e| FilesError::Bind(settings.listen, e))?;
        // Linux reports twice what it grants (half is bookkeeping), so compare against that.
        if buffers.recv < 2 * buffers.requested || buffers.send < 2 * buffers.requested {
            tracing::warn!(
                requested = buffers.requested,
                recv_granted = buffers.recv / 2,
                send_granted = buffers.send / 2,
                "the kernel granted smaller UDP buffers than asked; raise net.core.rmem_max and net.core.wmem_max"
            );
        } else {
            tracing::info!(
                recv_granted = buffers.recv / 2,
                send_granted = buffers.send / 2,
                "file plane UDP buffers"
            );
        }
        let endpoint = quinn::Endpoint::new(
            transport::endpoint_config(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| FilesError::Bind(settings.listen, e))?;
        let local = endpoint
            .local_addr()
            .map_err(|e| FilesError::Bind(settings.listen, e))?;
        let service = Arc::new(Service {
            control,
            store: Arc::new(store),
            settings: settings.clone(),
            counters: Counters::default(),
        });
        tokio::spawn(accept(endpoint.clone(), service.clone()));
        tokio::spawn(collect_garbage(service.clone()));
        Ok(FilePlane {
            endpoint,
            local,
            service,
            buffers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn counters(&self) -> &Counters {
        &self.service.counters
    }

    pub fn store(&self) -> &ChunkStore {
        &self.service.store
    }

    /// Stops accepting, closes connections and waits briefly for them to go.
    pub async fn shutdown(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"relay is stopping");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn accept(endpoint: quinn::Endpoint, service: Arc<Service>) {
    while let Some(incoming) = endpoint.accept().await {
        let service = service.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(service, conn).await,
                Err(e) => tracing::debug!(error = %e, "file plane handshake failed"),
            }
        });
    }
}

async fn serve_connection(service: Arc<Service>, conn: quinn::Connection) {
    service
        .counters
        .transfers_active
        .fetch_add(1, Ordering::Relaxed);
    let _active = Active(&service.counters.transfers_active);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let service = service.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_stream(&service, send, recv).await {
                        tracing::debug!(error = %e, "file plane stream failed");
                    }
                });
            }
            Err(e) => {
                tracing::debug!(remote = %conn.remote_address(), reason = %e, "file plane connection closed");
                return;
            }
        }
    }
}

async fn serve_stream(
    service: &Arc<Service>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), transport::StreamError> {
    let Some((kind, body)) = transport::read_frame(&mut recv).await? else {
        return Ok(());
    };
    let response = match Request::decode(kind, body) {
        Ok(req) => service.handle(req).await,
        Err(e) => Response::failed("bad_request", e.to_string()),
    };
    transport::write_frame(&mut send, response.encode()).await?;
    // quinn keeps delivering a finished stream's data after the handle is dropped.
    send.finish().map_err(transport::StreamError::Closed)
}

/// Runs `f` on the blocking pool; a panic there is an internal failure, not a crash.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Invalid(format!("store task failed: {e}"))))
}

fn refusal(d: Denial) -> Response {
    Response::refused(d.code(), d.to_string())
}

fn store_failure(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(what) => Response::failed("not_found", format!("no such {what}")),
        StoreError::Corrupt(_) => Response::failed("corrupt", e.to_string()),
        StoreError::Incomplete(ref m) => Response::failed(
            "incomplete",
            format!(
                "{} chunks have not arrived; send them and commit again",
                m.len()
            ),
        ),
        StoreError::Quota(q) => Response::refused("quota", q.to_string()),
        other => {
            tracing::error!(error = %other, "file store failure");
            Response::failed("internal", "the file store failed")
        }
    }
}

impl Service {
    fn lease(&self) -> Duration {
        self.settings.upload_lease
    }

    async fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::PutStart(p) => self.put_start(*p).await,
            Request::PutChunk {
                token,
                upload,
                index,
                encoding,
                data,
            } => self.put_chunk(&token, upload, index, encoding, data).await,
            Request::PutCommit { token, upload } => self.put_commit(&token, upload).await,
            Request::GetStart { token, file } => self.get_start(&token, &file).await,
            Request::GetChunk { token, file, index } => self.get_chunk(&token, &file, index).await,
            Request::List { token } => self.list(&token).await,
            Request::Remove { token, file } => self.remove(&token, &file).await,
        }
    }

    /// Checks `p` against the policy for `facts`, auditing a denial.
    fn may(
        &self,
        action: &'static str,
        p: &Principal,
        what: FileAction,
        facts: FileFacts<'_>,
        target: &str,
    ) -> Result<(), Response> {
        policy::may_file(p, what, facts).map_err(|d| {
            self.control.deny(action, Some(p), target, d);
            refusal(d)
        })
    }

    /// The upload `id`, if it belongs to the bearer; another bearer's upload does not exist.
    async fn own_upload(
        &self,
        p: &Principal,
        id: UploadId,
    ) -> Result<super::store::Upload, Response> {
        let store = self.store.clone();
        let (org, user) = (p.org.clone(), p.user.clone());
        tokio::task::spawn_blocking(move || owned_upload(&store, &org, &user, id))
            .await
            .unwrap_or_else(|e| {
                Err(Response::failed(
                    "internal",
                    format!("store task failed: {e}"),
                ))
            })
    }

    /// Refuses a file whose first bytes are not of an allowed type, ending its upload.
    async fn check_type(
        &self,
        p: &Principal,
        upload: UploadId,
        head: &[u8],
    ) -> Result<bool, Response> {
        let mime = plan::content_type(head);
        if plan::type_allowed(&self.settings.allowed_types, mime) {
            return Ok(plan::worth_trying_compression(head));
        }
        let store = self.store.clone();
        let _ = blocking(move || store.abort(&upload, unix_now())).await;
        self.control.deny(
            "files.put",
            Some(p),
            &format!("type:{mime}"),
            Denial::FileType,
        );
        Err(Response::refused(
            Denial::FileType.code(),
            format!("files of type {mime} are not allowed here"),
        ))
    }

    async fn put_start(self: &Arc<Self>, req: PutStart) -> Response {
        let target = format!("file:{}", req.name);
        let p = match self
            .control
            .authenticate(Some(&req.token), "files.put", &target)
        {
            Ok(p) => p,
            Err(d) => return refusal(d),
        };
        let mut classification = req.classification;
        // A room-limited token puts into its room when it names none.
        let room = req.room.clone().or_else(|| p.room.clone());
        if let Some(room) = &room {
            let found = self.control.registry().room(&p.org, room);
            match found {
                Ok(Some(r)) => classification = classification.max(r.classification),
                Ok(None) => {
                    return Response::failed(
                        "not_found",
                        format!("room {} is not registered", shown(room)),
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "registry failure");
                    return Response::failed("internal", "the registry failed");
                }
            }
        }
        let facts = FileFacts {
            org: &p.org,
            owner: &p.user,
            room: room.as_deref(),
            classification,
            view_only: req.view_only,
        };
        if let Err(r) = self.may("files.put", &p, FileAction::Put, facts, &target) {
            return r;
        }
        let name = clean_name(&req.name);
        let org_quota = match self.control.registry().org(&p.org) {
            Ok(o) => o.and_then(|o| o.quota_bytes),
            Err(e) => {
                tracing::error!(error = %e, "registry failure");
                return Response::failed("internal", "the registry failed");
            }
        };
        let quotas = Quotas {
            org: org_quota,
            user: (self.settings.user_quota_bytes > 0).then_some(self.settings.user_quota_bytes),
        };
        let store = self.store.clone();
        let lease = self.lease();
        let (org, owner, view_only) = (p.org.clone(), p.user.clone(), req.view_only);
        let (clearance, token_room) = (p.clearance, p.room.clone());
        let terminal = p.device_kind == DeviceKind::Terminal;
        let manifest = req.manifest;
        let result = blocking(move || {
            let new = NewUpload {
                org: &org,
                owner: &owner,
                name: &name,
                room: room.as_deref(),
                classification,
                view_only,
                manifest: &manifest,
                reader: Reader {
                    clearance,
                    room: token_room.as_deref(),
                    view_only: terminal,
                },
            };
            store.begin_upload(&new, quotas, unix_now(), lease)
        })
        .await;
        match result {
            Ok(plan) => {
                self.counters
                    .bytes_deduplicated
                    .fetch_add(plan.deduplicated_bytes, Ordering::Relaxed);
                Response::PutReady {
                    upload: plan.id,
                    resumed: plan.resumed,
                    missing: plan.missing,
                }
            }
            Err(StoreError::Quota(q)) => {
                self.control
                    .deny("files.put", Some(&p), &target, Denial::Quota);
                Response::refused(Denial::Quota.code(), q.to_string())
            }
            Err(e) => store_failure(e),
        }
    }

    async fn put_chunk(
        self: &Arc<Self>,
        token: &str,
        upload: UploadId,
        index: u32,
        encoding: Encoding,
        data: Bytes,
    ) -> Response {
        let p = match self
            .control
            .authenticate(Some(token), "files.put", "upload")
        {
            Ok(p) => p,
            Err(d) => return refusal(d),
        };
        self.counters
            .bytes_received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // The owner check, the manifest's expectation, decompression, the hash and the store's
        // write in one trip to the blocking pool, where each used to be a trip of its own (a
        // thread hand-off each way, per chunk). The first chunk stops before the write: its type
        // is checked first.
        let store = self.store.clone();
        let lease = self.lease();
        let (org, user) = (p.org.clone(), p.user.clone());
        let arrival = tokio::task::spawn_blocking(move || -> Result<Arrival, Response> {
            owned_upload(&store, &org, &user, upload)?;
            let expected = match store.expected_chunk(&upload, index) {
                Ok(Some(e)) => e,
                Ok(None) => {
                    return Err(Response::failed(
                        "bad_request",
                        format!("the manifest has no chunk {index}"),
                    ));
                }
                Err(e) => return Err(store_failure(e)),
            };
            if expected.received {
                return Ok(Arrival::Held);
            }
            let plain = match encoding {
                Encoding::Raw => Some(data),
                Encoding::Zstd => zstd::bulk::decompress(&data, expected.len as usize)
                    .ok()
                    .map(Bytes::from),
            };
            let verified = plain
                .filter(|p| p.len() == expected.len as usize)
                .and_then(|p| VerifiedChunk::check(&expected.hash, p));
            match verified {
                None => Ok(Arrival::Damaged),
                Some(chunk) if index == 0 => Ok(Arrival::First(chunk, expected.len)),
                Some(chunk) => store_chunk(&store, &upload, &chunk, expected.len, lease)
                    .map(|()| Arrival::Held)
                    .map_err(store_failure),
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(Response::failed(
                "internal",
                format!("store task failed: {e}"),
            ))
        });
        let (chunk, len) = match arrival {
            Ok(Arrival::Held) => return Response::ChunkAccepted { index },
            Ok(Arrival::Damaged) => {
                self.counters
                    .chunks_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return Response::failed(
                    "bad_chunk",
                    format!("chunk {index} does not match its hash; send it again"),
                );
            }
            Ok(Arrival::First(chunk, len)) => (chunk, len),
            Err(r) => return r,
        };
        if let Err(r) = self.check_type(&p, upload, chunk.data()).await {
            return r;
        }
        let store = self.store.clone();
        let lease = self.lease();
        match blocking(move || store_chunk(&store, &upload, &chunk, len, lease)).await {
            Ok(()) => Response::ChunkAccepted { index },
            Err(e) => store_failure(e),
        }
    }

    async fn put_commit(self: &Arc<Self>, token: &str, upload: UploadId) -> Response {
        let p = match self
            .control
            .authenticate(Some(token), "files.put", "upload")
        {
            Ok(p) => p,
            Err(d) => return refusal(d),
        };
        let up = match self.own_upload(&p, upload).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        // The type is checked on the stored first chunk too: it may have been deduplicated
        // rather than sent.
        let mut compressible = true;
        if up.size > 0 {
            let store = self.store.clone();
            let head = blocking(move || {
                let first = store
                    .expected_chunk(&upload, 0)?
                    .ok_or(StoreError::NotFound("chunk"))?;
                if !first.received {
                    return Ok(None);
                }
                store.read_chunk(&first.hash, first.len).map(Some)
            })
            .await;
            match head {
                Ok(Some(head)) => match self.check_type(&p, upload, &head).await {
                    Ok(c) => compressible = c,
                    Err(r) => return r,
                },
                Ok(None) => {}
                Err(e) => return store_failure(e),
            }
        }
        let store = self.store.clone();
        match blocking(move || store.commit(&upload, unix_now(), compressible)).await {
            Ok(rec) => {
                self.control
                    .allow("files.put", &p, &format!("file:{}", rec.id));
                Response::Committed(Box::new(rec.entry()))
            }
            Err(e) => store_failure(e),
        }
    }

    /// The caller of `token` and the file `id`, if the caller may `what` it; refusals are
    /// audited.
    async fn file_for(
        &self,
        token: &str,
        action: &'static str,
        what: FileAction,
        id: &str,
    ) -> Result<(Principal, FileRecord), Response> {
        let p = self
            .control
            .authenticate(Some(token), action, &format!("file:{id}"))
            .map_err(refusal)?;
        let store = self.store.clone();
        let owned = id.to_string();
        let rec = match blocking(move || store.file(&owned)).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(Response::failed(
                    "not_found",
                    format!("no file {}", shown(id)),
                ));
            }
            Err(e) => return Err(store_failure(e)),
        };
        self.may(action, &p, what, facts_of(&rec), &format!("file:{id}"))?;
        Ok((p, rec))
    }

    async fn get_start(self: &Arc<Self>, token: &str, id: &str) -> Response {
        let (p, rec) = match self.file_for(token, "files.get", FileAction::Get, id).await {
            Ok(found) => found,
            Err(r) => return r,
        };
        let store = self.store.clone();
        let owned = id.to_string();
        match blocking(move || store.manifest(&owned)).await {
            Ok(manifest) => {
                self.control.allow("files.get", &p, &format!("file:{id}"));
                Response::FileInfo {
                    entry: Box::new(rec.entry()),
                    manifest,
                }
            }
            Err(e) => store_failure(e),
        }
    }

    async fn get_chunk(self: &Arc<Self>, token: &str, id: &str, index: u32) -> Response {
        let rec = match self.file_for(token, "files.get", FileAction::Get, id).await {
            Ok((_, rec)) => rec,
            Err(r) => return r,
        };
        let store = self.store.clone();
        let owned = id.to_string();
        let result = blocking(move || {
            let c = store
                .file_chunk(&owned, index)?
                .ok_or(StoreError::NotFound("chunk"))?;
            let data = store.read_chunk(&c.hash, c.len)?;
            let compressible = store.compressible(&owned)?;
            Ok(
                match compressible.then(|| plan::compress(&data)).flatten() {
                    Some(z) => (Encoding::Zstd, Bytes::from(z)),
                    None => (Encoding::Raw, Bytes::from(data)),
                },
            )
        })
        .await;
        match result {
            Ok((encoding, data)) => Response::ChunkData {
                index,
                encoding,
                data,
            },
            Err(e) => {
                if matches!(e, StoreError::Corrupt(_)) {
                    tracing::error!(file = %rec.id, index, "refusing to serve a corrupt chunk");
                }
                store_failure(e)
            }
        }
    }

    async fn list(self: &Arc<Self>, token: &str) -> Response {
        let p = match self.control.authenticate(Some(token), "files.ls", "files") {
            Ok(p) => p,
            Err(d) => return refusal(d),
        };
        if !p.has(Grant::Files) {
            self.control
                .deny("files.ls", Some(&p), "files", Denial::Grant);
            return refusal(Denial::Grant);
        }
        let store = self.store.clone();
        let org = p.org.clone();
        match blocking(move || store.list(&org)).await {
            Ok(files) => {
                self.control.allow("files.ls", &p, "files");
                Response::Listing(
                    files
                        .iter()
                        .filter(|f| policy::may_file(&p, FileAction::See, facts_of(f)).is_ok())
                        .take(wire::MAX_LISTING)
                        .map(|f| f.entry())
                        .collect(),
                )
            }
            Err(e) => store_failure(e),
        }
    }

    async fn remove(self: &Arc<Self>, token: &str, id: &str) -> Response {
        let p = match self
            .file_for(token, "files.rm", FileAction::Remove, id)
            .await
        {
            Ok((p, _)) => p,
            Err(r) => return r,
        };
        let store = self.store.clone();
        let owned = id.to_string();
        match blocking(move || store.remove(&owned, unix_now())).await {
            Ok(()) => {
                self.control.allow("files.rm", &p, &format!("file:{id}"));
                Response::Removed { id: id.into() }
            }
            Err(e) => store_failure(e),
        }
    }
}

/// What the policy needs to know of a stored file.
fn facts_of(rec: &FileRecord) -> FileFacts<'_> {
    FileFacts {
        org: &rec.org,
        owner: &rec.owner,
        room: rec.room.as_deref(),
        classification: rec.classification,
        view_only: rec.view_only,
    }
}

/// What became of a chunk that arrived for an upload.
enum Arrival {
    /// Stored now, or held already.
    Held,
    /// It does not match what the manifest names.
    Damaged,
    /// The first chunk, verified, of this many bytes: its type is checked before it is stored.
    First(VerifiedChunk, u32),
}

/// The upload `id` of `org`'s `user`; another bearer's upload does not exist. Blocks on the store.
fn owned_upload(
    store: &ChunkStore,
    org: &str,
    user: &str,
    id: UploadId,
) -> Result<super::store::Upload, Response> {
    match store.upload(&id) {
        Ok(Some(u)) if u.org == org && u.owner == user => Ok(u),
        Ok(_) => Err(Response::failed(
            "not_found",
            "no such upload (its lease may have run out); start it again",
        )),
        Err(e) => Err(store_failure(e)),
    }
}

/// Puts a verified chunk of an upload on disk (unless the store has it) and then records it.
fn store_chunk(
    store: &ChunkStore,
    upload: &UploadId,
    chunk: &VerifiedChunk,
    len: u32,
    lease: Duration,
) -> Result<(), StoreError> {
    if !store.has_chunk(chunk.hash())? {
        store.write_chunk(chunk)?;
    }
    store.chunk_received(upload, chunk.hash(), len, unix_now(), lease)
}

/// A stored name: the last path component, without control characters.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base.chars().filter(|c| !c.is_control()).collect();
    match clean.as_str() {
        "" | "." | ".." => "unnamed".into(),
        _ => clean,
    }
}

/// Expires uploads and collects unreferenced chunks, once a minute.
async fn collect_garbage(service: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let store = service.store.clone();
        let grace = service.settings.gc_grace;
        match blocking(move || store.gc(unix_now(), grace)).await {
            Ok(r) if r.chunks > 0 || r.uploads_expired > 0 => tracing::info!(
                chunks = r.chunks,
                bytes = r.bytes,
                uploads_expired = r.uploads_expired,
                "file store collected"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "file store collection failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_paths() {
        #[rustfmt::skip]
        let table = [
            ("clip.mp4", "clip.mp4"),
            ("/etc/passwd", "passwd"),
            ("..\\..\\boot.ini", "boot.ini"),
            ("../", "unnamed"),
            ("..", "unnamed"),
            ("", "unnamed"),
            ("a\u{7}b\nc", "abc"),
        ];
        for (name, want) in table {
            assert_eq!(clean_name(name), want, "{name:?}");
        }
    }
}
