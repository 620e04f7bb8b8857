//! The file plane's requests, answered as plain functions: authentication and the policy on
//! every request, then the [`ChunkStore`]. Synchronous: the QUIC shell ([`super::server`]) reads
//! a frame, hands the request to [`Service::handle`] on the blocking pool once, and writes the
//! answer back.
//!
//! Every request carries its token and is checked through [`Control::authenticate`] and the
//! policy on its own: grant, organisation, room limit, clearance against the file's
//! classification, view-only files for terminals only, removal by the owner or an admin. Puts,
//! gets, listings and removals are audited, allowed or denied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::chunker::VerifiedChunk;
use super::manifest::Manifest;
use super::plan;
use super::store::{
    ChunkStore, ExpectedChunk, FileRecord, NewUpload, Quotas, Reader, StoreError, Upload,
    UploadPlan,
};
use super::wire::{self, Encoding, FileEntry, PutStart, Request, Response, UploadId};
use crate::config;
use crate::control::model::{CataloguedFile, DeviceKind, shown};
use crate::control::policy::{self, Denial, FileAction, FileFacts, Principal};
use crate::control::token::Grant;
use crate::control::{Control, unix_now};

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

/// What a request handler needs.
#[derive(Debug)]
pub struct Service {
    control: Arc<Control>,
    store: Arc<ChunkStore>,
    settings: config::Files,
    counters: Counters,
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
        StoreError::Rejected(m) => Response::failed("bad_request", m),
        other => {
            tracing::error!(error = %other, "file store failure");
            Response::failed("internal", "the file store failed")
        }
    }
}

impl Service {
    pub fn new(control: Arc<Control>, store: Arc<ChunkStore>, settings: config::Files) -> Service {
        Service {
            control,
            store,
            settings,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// The limits on what `org` and each of its users may store.
    pub fn quotas(&self, org: &str) -> Result<Quotas, crate::control::registry::RegistryError> {
        Ok(Quotas {
            org: self
                .control
                .registry()
                .org(org)?
                .and_then(|o| o.quota_bytes),
            user: (self.settings.user_quota_bytes > 0).then_some(self.settings.user_quota_bytes),
        })
    }

    pub fn settings(&self) -> &config::Files {
        &self.settings
    }

    /// Tells the registry this node stores `rec`, so the other nodes of a cluster send its
    /// downloads here. The file is stored whatever the registry says: a failure is logged.
    pub fn placed(&self, rec: &FileRecord) {
        if let Err(e) = self.control.registry().place_file(&catalogued(rec)) {
            tracing::warn!(file = %rec.id, error = %e, "the cluster's file directory was not told of a file");
        }
    }

    fn lease(&self) -> Duration {
        self.settings.upload_lease
    }

    /// Answers one request. Blocks on the store and the registry: the QUIC shell runs it on the
    /// blocking pool, once per request.
    pub fn handle(&self, req: Request) -> Response {
        match req {
            Request::PutStart(p) => self.begin_put(&p, None),
            Request::PutChunk {
                token,
                upload,
                index,
                encoding,
                data,
            } => self.put_chunk(&token, upload, index, encoding, data),
            Request::PutCommit { token, upload } => self.put_commit(&token, upload),
            Request::PutOpen { start, size } => self.begin_put(&start, Some(size)),
            Request::PutList {
                token,
                upload,
                first,
                last,
                part,
            } => self.put_list(&token, upload, first, last, &part),
            Request::GetStart { token, file } => self.get_start(&token, &file),
            Request::GetChunk { token, file, index } => self.get_chunk(&token, &file, index),
            Request::List { token } => self.list(&token),
            Request::Remove { token, file } => self.remove(&token, &file),
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
    fn own_upload(&self, p: &Principal, id: UploadId) -> Result<Upload, Response> {
        owned_upload(&self.store, &p.org, &p.user, id)
    }

    /// Refuses a file whose first bytes are not of an allowed type, ending its upload.
    fn check_type(&self, p: &Principal, upload: UploadId, head: &[u8]) -> Result<bool, Response> {
        let mime = plan::content_type(head);
        if plan::type_allowed(&self.settings.allowed_types, mime) {
            return Ok(plan::worth_trying_compression(head));
        }
        let _ = self.store.abort(&upload, unix_now());
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

    /// Starts an upload of `req.manifest`, or, with `size`, an upload of `size` bytes whose
    /// manifest begins with it and continues in [`Request::PutList`].
    fn begin_put(&self, req: &PutStart, size: Option<u64>) -> Response {
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
        let quotas = match self.quotas(&p.org) {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(error = %e, "registry failure");
                return Response::failed("internal", "the registry failed");
            }
        };
        let new = NewUpload {
            org: &p.org,
            owner: &p.user,
            name: &name,
            room: room.as_deref(),
            classification,
            view_only: req.view_only,
            reader: reader_of(&p),
        };
        let (now, lease) = (unix_now(), self.lease());
        let result = match size {
            None => self
                .store
                .begin_upload(&new, &req.manifest, quotas, now, lease),
            Some(size) => self
                .store
                .open_upload(&new, size, &req.manifest, quotas, now, lease),
        };
        match result {
            Ok(plan) => self.ready(plan),
            Err(StoreError::Quota(q)) => {
                self.control
                    .deny("files.put", Some(&p), &target, Denial::Quota);
                Response::refused(Denial::Quota.code(), q.to_string())
            }
            Err(e) => store_failure(e),
        }
    }

    /// The next part of an opened upload's manifest.
    fn put_list(
        &self,
        token: &str,
        upload: UploadId,
        first: u32,
        last: bool,
        part: &Manifest,
    ) -> Response {
        let p = match self
            .control
            .authenticate(Some(token), "files.put", "upload")
        {
            Ok(p) => p,
            Err(d) => return refusal(d),
        };
        if let Err(r) = self.own_upload(&p, upload) {
            return r;
        }
        let listed = self.store.list_upload(
            &upload,
            first,
            part,
            last,
            reader_of(&p),
            unix_now(),
            self.lease(),
        );
        match listed {
            Ok(plan) => self.ready(plan),
            Err(e) => store_failure(e),
        }
    }

    fn ready(&self, plan: UploadPlan) -> Response {
        self.counters
            .bytes_deduplicated
            .fetch_add(plan.deduplicated_bytes, Ordering::Relaxed);
        Response::PutReady {
            upload: plan.id,
            resumed: plan.resumed,
            missing: plan.missing,
        }
    }

    fn put_chunk(
        &self,
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
        if let Err(r) = self.own_upload(&p, upload) {
            return r;
        }
        let expected = match self.store.expected_chunk(&upload, index) {
            Ok(Some(e)) => e,
            Ok(None) => {
                return Response::failed(
                    "bad_request",
                    format!("the manifest has no chunk {index}"),
                );
            }
            Err(e) => return store_failure(e),
        };
        if expected.received {
            return Response::ChunkAccepted { index };
        }
        let plain = match encoding {
            Encoding::Raw => Some(data),
            Encoding::Zstd => plan::decompress(&data, expected.len as usize)
                .ok()
                .map(Bytes::from),
        };
        let verified = plain
            .filter(|p| p.len() == expected.len as usize)
            .and_then(|p| VerifiedChunk::check(&expected.hash, p));
        let Some(chunk) = verified else {
            self.counters
                .chunks_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Response::failed(
                "bad_chunk",
                format!("chunk {index} does not match its hash; send it again"),
            );
        };
        // The first chunk's bytes tell the file's type: a refused type ends the upload before
        // anything of it is stored.
        if index == 0
            && let Err(r) = self.check_type(&p, upload, chunk.data())
        {
            return r;
        }
        let compressed = encoding == Encoding::Zstd;
        match store_chunk(
            &self.store,
            &upload,
            &chunk,
            &expected,
            compressed,
            self.lease(),
        ) {
            Ok(()) => Response::ChunkAccepted { index },
            Err(e) => store_failure(e),
        }
    }

    fn put_commit(&self, token: &str, upload: UploadId) -> Response {
        let p = match self
            .control
            .authenticate(Some(token), "files.put", "upload")
        {
            Ok(p) => p,
            Err(d) => return refusal(d),
        };
        let up = match self.own_upload(&p, upload) {
            Ok(u) => u,
            Err(r) => return r,
        };
        // The type is checked on the stored first chunk too: it may have been deduplicated
        // rather than sent.
        let mut compressible = true;
        if up.size > 0 {
            let head = (|| {
                let first = self
                    .store
                    .expected_chunk(&upload, 0)?
                    .ok_or(StoreError::NotFound("chunk"))?;
                if !first.received {
                    return Ok(None);
                }
                self.store.read_chunk(&first.hash, first.len).map(Some)
            })();
            match head {
                Ok(Some(head)) => match self.check_type(&p, upload, &head) {
                    Ok(c) => compressible = c,
                    Err(r) => return r,
                },
                Ok(None) => {}
                Err(e) => return store_failure(e),
            }
        }
        match self.store.commit(&upload, unix_now(), compressible) {
            Ok(rec) => {
                self.control
                    .allow("files.put", &p, &format!("file:{}", rec.id));
                self.placed(&rec);
                Response::Committed(Box::new(rec.entry()))
            }
            Err(e) => store_failure(e),
        }
    }

    /// The caller of `token` and the file `id`, if the caller may `what` it; refusals are
    /// audited.
    fn file_for(
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
        let rec = match self.store.file(id) {
            Ok(Some(r)) => r,
            Ok(None) => {
                // In a cluster another node may store it; the caller is sent there, where the
                // policy is checked against the file itself.
                if let Ok(Some(home)) = self.control.registry().file_node(&p.org, id) {
                    return Err(Response::Elsewhere {
                        addr: home.addr,
                        cert: home.cert.into(),
                    });
                }
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

    fn get_start(&self, token: &str, id: &str) -> Response {
        let (p, rec) = match self.file_for(token, "files.get", FileAction::Get, id) {
            Ok(found) => found,
            Err(r) => return r,
        };
        match self.store.manifest(id) {
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

    fn get_chunk(&self, token: &str, id: &str, index: u32) -> Response {
        let rec = match self.file_for(token, "files.get", FileAction::Get, id) {
            Ok((_, rec)) => rec,
            Err(r) => return r,
        };
        let result = (|| {
            let c = self
                .store
                .chunk_to_serve(id, index)?
                .ok_or(StoreError::NotFound("chunk"))?;
            let data = self.store.read_to_serve(&c)?;
            Ok::<_, StoreError>(
                match c.worth_compressing.then(|| plan::compress(&data)).flatten() {
                    Some(z) => (Encoding::Zstd, Bytes::from(z)),
                    None => (Encoding::Raw, data),
                },
            )
        })();
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

    fn list(&self, token: &str) -> Response {
        let p = match self.control.authenticate(Some(token), "files.ls", "files") {
            Ok(p) => p,
            Err(d) => return refusal(d),
        };
        if !p.has(Grant::Files) {
            self.control
                .deny("files.ls", Some(&p), "files", Denial::Grant);
            return refusal(Denial::Grant);
        }
        let here = match self.store.list(&p.org) {
            Ok(files) => files,
            Err(e) => return store_failure(e),
        };
        // In a cluster, the organisation's files stored by the other nodes too.
        let elsewhere = self
            .control
            .registry()
            .files_elsewhere(&p.org, wire::MAX_LISTING)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the cluster's file catalogue did not answer; listing this node's files");
                Vec::new()
            });
        self.control.allow("files.ls", &p, "files");
        Response::Listing(
            here.iter()
                .map(catalogued)
                .chain(elsewhere)
                .filter(|f| policy::may_file(&p, FileAction::See, listed_facts(f)).is_ok())
                .take(wire::MAX_LISTING)
                .map(|f| listed_entry(&f))
                .collect(),
        )
    }

    fn remove(&self, token: &str, id: &str) -> Response {
        let p = match self.file_for(token, "files.rm", FileAction::Remove, id) {
            Ok((p, _)) => p,
            Err(r) => return r,
        };
        match self.store.remove(id, unix_now()) {
            Ok(()) => {
                if let Err(e) = self.control.registry().forget_file(&p.org, id) {
                    tracing::warn!(file = %id, error = %e, "the cluster's file catalogue still lists a removed file");
                }
                self.control.allow("files.rm", &p, &format!("file:{id}"));
                Response::Removed { id: id.into() }
            }
            Err(e) => store_failure(e),
        }
    }
}

/// A stored file as the catalogue lists it (the registry sets the node).
fn catalogued(rec: &FileRecord) -> CataloguedFile {
    CataloguedFile {
        id: rec.id.clone(),
        org: rec.org.clone(),
        owner: rec.owner.clone(),
        name: rec.name.clone(),
        room: rec.room.clone(),
        size: rec.size,
        chunks: rec.chunks,
        classification: rec.classification,
        view_only: rec.view_only,
        created: rec.created,
        node: String::new(),
    }
}

/// What the policy needs to know of a listed file.
fn listed_facts(f: &CataloguedFile) -> FileFacts<'_> {
    FileFacts {
        org: &f.org,
        owner: &f.owner,
        room: f.room.as_deref(),
        classification: f.classification,
        view_only: f.view_only,
    }
}

fn listed_entry(f: &CataloguedFile) -> FileEntry {
    FileEntry {
        id: f.id.clone(),
        name: f.name.clone(),
        size: f.size,
        chunks: f.chunks,
        classification: f.classification,
        view_only: f.view_only,
        owner: f.owner.clone(),
        created: f.created,
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

/// What the bearer `p` may read, for the "already have" answers of its uploads.
fn reader_of(p: &Principal) -> Reader<'_> {
    Reader {
        clearance: p.clearance,
        room: p.room.as_deref(),
        view_only: p.device_kind == DeviceKind::Terminal,
    }
}

/// The upload `id` of `org`'s `user`; another bearer's upload does not exist.
fn owned_upload(
    store: &ChunkStore,
    org: &str,
    user: &str,
    id: UploadId,
) -> Result<Upload, Response> {
    match store.upload(&id) {
        Ok(Some(u)) if u.org == org && u.owner == user => Ok(u),
        Ok(_) => Err(Response::failed(
            "not_found",
            "no such upload (its lease may have run out); start it again",
        )),
        Err(e) => Err(store_failure(e)),
    }
}

/// Puts a verified chunk of an upload on disk (unless the store had it when the upload's row was
/// read: one stored meanwhile by another upload is written again, and the copy given back when
/// its record finds the row there) and then records it.
fn store_chunk(
    store: &ChunkStore,
    upload: &UploadId,
    chunk: &VerifiedChunk,
    expected: &ExpectedChunk,
    compressed: bool,
    lease: Duration,
) -> Result<(), StoreError> {
    let placed = match expected.stored {
        true => None,
        false => Some(store.write_chunk(chunk)?),
    };
    store.chunk_received(
        upload,
        placed,
        chunk.hash(),
        expected.len,
        compressed,
        unix_now(),
        lease,
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::MintRequest;
    use crate::control::audit::AuditLog;
    use crate::control::registry::Registry;
    use crate::control::sqlite::SqliteRegistry;
    use crate::control::token::SigningKey;
    use crate::files::manifest::Manifest;
    use crate::metrics::Metrics;
    use relay_kit::noise;

    struct Fixture {
        _dir: tempfile::TempDir,
        service: Service,
    }

    /// A service over a real registry, audit log and store in a temp dir; no QUIC.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let reg = SqliteRegistry::open_or_create(&db).unwrap();
        reg.add_org("acme", None).unwrap();
        reg.add_user("acme", "ann", 3).unwrap();
        reg.add_user("acme", "bob", 0).unwrap();
        reg.add_device("acme", "pc", DeviceKind::Browser, 3)
            .unwrap();
        reg.add_room("acme", "ops", 2, false).unwrap();
        let audit = AuditLog::open(&dir.path().join("audit.log"), &db).unwrap();
        let control = Control::new(
            Box::new(reg),
            SigningKey::from_bytes([3; 32]),
            audit,
            Metrics::new(),
            crate::config::Tokens::default(),
            unix_now,
        );
        let store = ChunkStore::open(dir.path()).unwrap();
        let service = Service::new(Arc::new(control), Arc::new(store), config::Files::default());
        Fixture { _dir: dir, service }
    }

    fn token(f: &Fixture, user: &str, room: Option<&str>) -> String {
        let req = MintRequest {
            org: "acme".into(),
            user: user.into(),
            device: "pc".into(),
            clearance: None,
            room: room.map(Into::into),
            grants: Some(vec![Grant::Files]),
            ttl: None,
            not_after: None,
        };
        f.service.control.mint(&req, None).unwrap().token
    }

    /// Puts `data` through the handlers as a client would; the committed entry or the refusal.
    fn put(f: &Fixture, token: &str, data: &[u8], room: Option<&str>) -> Response {
        let manifest = Manifest::scan(data).unwrap();
        let start = f.service.handle(Request::PutStart(Box::new(PutStart {
            token: token.into(),
            name: "doc.bin".into(),
            room: room.map(Into::into),
            classification: 0,
            view_only: false,
            manifest: manifest.clone(),
        })));
        let Response::PutReady {
            upload, missing, ..
        } = start
        else {
            return start;
        };
        for i in missing {
            let c = manifest.chunks()[i as usize];
            let at = manifest.offsets()[i as usize] as usize;
            let chunk = Bytes::copy_from_slice(&data[at..at + c.len as usize]);
            let r = f.service.handle(Request::PutChunk {
                token: token.into(),
                upload,
                index: i,
                encoding: Encoding::Raw,
                data: chunk,
            });
            assert_eq!(r, Response::ChunkAccepted { index: i });
        }
        f.service.handle(Request::PutCommit {
            token: token.into(),
            upload,
        })
    }

    fn code(r: &Response) -> &str {
        match r {
            Response::Refused { code, .. } | Response::Failed { code, .. } => code,
            _ => "",
        }
    }

    #[test]
    fn handlers_answer_without_quic() {
        let f = fixture();
        let ann = token(&f, "ann", None);
        let data = noise(5, 700_000);
        let Response::Committed(entry) = put(&f, &ann, &data, Some("ops")) else {
            panic!("the put did not commit");
        };
        assert_eq!((entry.size, entry.classification), (data.len() as u64, 2));
        let got = f.service.handle(Request::GetStart {
            token: ann.clone(),
            file: entry.id.clone(),
        });
        assert!(matches!(got, Response::FileInfo { .. }), "{got:?}");
        let chunk = f.service.handle(Request::GetChunk {
            token: ann.clone(),
            file: entry.id.clone(),
            index: 0,
        });
        assert!(
            matches!(chunk, Response::ChunkData { index: 0, .. }),
            "{chunk:?}"
        );

        // The room's classification 2 is above bob's clearance; the file is not his to remove.
        let bob = token(&f, "bob", None);
        let get = Request::GetStart {
            token: bob.clone(),
            file: entry.id.clone(),
        };
        assert_eq!(code(&f.service.handle(get)), "clearance");
        let list = f.service.handle(Request::List { token: bob.clone() });
        assert_eq!(list, Response::Listing(vec![]));
        let rm = Request::Remove {
            token: bob,
            file: entry.id.clone(),
        };
        assert_eq!(code(&f.service.handle(rm)), "clearance");

        // A chunk that does not match its hash is refused and counted; a bad token is refused.
        let other = noise(6, 300_000);
        let manifest = Manifest::scan(&other[..]).unwrap();
        let Response::PutReady { upload, .. } =
            f.service.handle(Request::PutStart(Box::new(PutStart {
                token: ann.clone(),
                name: "x".into(),
                room: None,
                classification: 0,
                view_only: false,
                manifest,
            })))
        else {
            panic!("no upload");
        };
        let bad = f.service.handle(Request::PutChunk {
            token: ann.clone(),
            upload,
            index: 0,
            encoding: Encoding::Raw,
            data: Bytes::from(vec![0u8; 300_000]),
        });
        assert_eq!(code(&bad), "bad_chunk");
        assert_eq!(
            f.service.counters().chunks_rejected.load(Ordering::Relaxed),
            1
        );
        let forged = Request::List {
            token: "v1.forged.token".into(),
        };
        assert_eq!(code(&f.service.handle(forged)), "unauthorized");
    }

    #[test]
    fn a_chunk_the_store_holds_is_not_written_again() {
        let f = fixture();
        let packs_len = || -> u64 {
            let dir = f._dir.path().join("chunks/packs");
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum()
        };
        let data = noise(7, 900_000);
        let ann = token(&f, "ann", None);
        assert!(matches!(
            put(&f, &ann, &data, Some("ops")),
            Response::Committed(_)
        ));
        let (stored, on_disk) = (f.service.store.stored_bytes(), packs_len());
        assert_eq!(stored, data.len() as u64);
        // Bob may not read the room's file, so his upload of the same bytes is asked for every
        // chunk; the store keeps the one copy it has.
        let bob = token(&f, "bob", None);
        let Response::Committed(entry) = put(&f, &bob, &data, None) else {
            panic!("bob's put did not commit");
        };
        assert_eq!(f.service.store.stored_bytes(), stored);
        assert_eq!(packs_len(), on_disk);
        let chunk = f.service.handle(Request::GetChunk {
            token: bob,
            file: entry.id,
            index: 0,
        });
        assert!(
            matches!(chunk, Response::ChunkData { index: 0, .. }),
            "{chunk:?}"
        );
    }

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
