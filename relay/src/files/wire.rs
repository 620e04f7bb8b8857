//! The file plane's framing over QUIC streams: one request and its answers per bidirectional
//! stream, each message one frame.
//!
//! ```text
//! frame   = kind: u8 | len: u32 (little-endian) | body: len bytes      (len <= MAX_FRAME)
//! string  = len: u16 | UTF-8 bytes                                      (len <= its field's limit)
//! ```
//!
//! Every request carries the bearer token, so each stream is checked on its own. Decoding is
//! strict and total: a length over its limit, an unknown kind, a bad enum value, invalid UTF-8 or a
//! byte left over is an error, never a panic, and nothing is allocated beyond the frame itself
//! (chunk payloads are slices of the frame's buffer).

use bytes::Bytes;

use super::manifest::{Manifest, ManifestError};

/// Largest frame body: a chunk (4 MiB) with room to spare, or a manifest of `MAX_CHUNKS`.
pub const MAX_FRAME: usize = 16 << 20;
pub const HEADER_LEN: usize = 5;
pub const MAX_TOKEN: usize = 4096;
pub const MAX_NAME: usize = 255;
/// File ids: 32 lowercase hex digits (128 random bits).
pub const MAX_ID: usize = 64;
const MAX_MESSAGE: usize = 1024;
const MAX_CODE: usize = 32;
/// A node's file plane address (`HOST:PORT`).
const MAX_ADDR: usize = 255;
/// A node's certificate (DER); a self-signed one is under 1 KiB.
const MAX_CERT: usize = 16 * 1024;
/// Entries in one listing answer.
pub const MAX_LISTING: usize = 10_000;

pub type UploadId = [u8; 16];

mod kind {
    pub const PUT_START: u8 = 0x01;
    pub const PUT_CHUNK: u8 = 0x02;
    pub const PUT_COMMIT: u8 = 0x03;
    pub const GET_START: u8 = 0x04;
    pub const GET_CHUNK: u8 = 0x05;
    pub const LIST: u8 = 0x06;
    pub const REMOVE: u8 = 0x07;
    pub const PUT_OPEN: u8 = 0x08;
    pub const PUT_LIST: u8 = 0x09;
    pub const PUT_READY: u8 = 0x81;
    pub const CHUNK_ACCEPTED: u8 = 0x82;
    pub const COMMITTED: u8 = 0x83;
    pub const FILE_INFO: u8 = 0x84;
    pub const CHUNK_DATA: u8 = 0x85;
    pub const LISTING: u8 = 0x86;
    pub const REMOVED: u8 = 0x87;
    pub const ELSEWHERE: u8 = 0x88;
    pub const REFUSED: u8 = 0xE0;
    pub const FAILED: u8 = 0xE1;
}

/// How a chunk's bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Zstd,
}

impl Encoding {
    fn byte(self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Zstd => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame of {0} bytes exceeds {max}", max = MAX_FRAME)]
    FrameTooLarge(usize),
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("frame ends inside {0}")]
    Truncated(&'static str),
    #[error("{0} is {1} bytes, over its limit")]
    TooLong(&'static str, usize),
    #[error("{0} is not UTF-8")]
    BadUtf8(&'static str),
    #[error("{0} has the invalid value {1}")]
    BadValue(&'static str, u64),
    #[error("{0} bytes after the message")]
    TrailingBytes(usize),
    #[error("header says {header} bytes, body has {body}")]
    LengthMismatch { header: usize, body: usize },
    #[error(transparent)]
    Manifest(ManifestError),
}

impl From<ManifestError> for WireError {
    fn from(e: ManifestError) -> Self {
        WireError::Manifest(e)
    }
}

/// The start of an upload: what the file is and what it is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutStart {
    pub token: String,
    pub name: String,
    pub room: Option<String>,
    pub classification: u8,
    pub view_only: bool,
    pub manifest: Manifest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    PutStart(Box<PutStart>),
    PutChunk {
        token: String,
        upload: UploadId,
        index: u32,
        encoding: Encoding,
        data: Bytes,
    },
    PutCommit {
        token: String,
        upload: UploadId,
    },
    /// The start of an upload whose manifest comes in parts while the file is cut: `start`
    /// carries the first part, `size` the whole file's; the rest follows in [`Request::PutList`].
    PutOpen {
        start: Box<PutStart>,
        size: u64,
    },
    /// The chunks of an opened upload from index `first` on; `last` when they end its manifest.
    PutList {
        token: String,
        upload: UploadId,
        first: u32,
        last: bool,
        part: Manifest,
    },
    GetStart {
        token: String,
        file: String,
    },
    GetChunk {
        token: String,
        file: String,
        index: u32,
    },
    List {
        token: String,
    },
    Remove {
        token: String,
        file: String,
    },
}

/// A stored file as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub chunks: u32,
    pub classification: u8,
    pub view_only: bool,
    pub owner: String,
    /// Unix seconds.
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The upload is open; send these chunks (indices into the manifest).
    PutReady {
        upload: UploadId,
        resumed: bool,
        missing: Vec<u32>,
    },
    ChunkAccepted {
        index: u32,
    },
    Committed(Box<FileEntry>),
    FileInfo {
        entry: Box<FileEntry>,
        manifest: Manifest,
    },
    ChunkData {
        index: u32,
        encoding: Encoding,
        data: Bytes,
    },
    Listing(Vec<FileEntry>),
    Removed {
        id: String,
    },
    /// In a cluster, the file is stored by another node: ask it there, at its file plane's
    /// `addr`, trusting `cert` (its certificate, DER), which this node vouches for.
    Elsewhere {
        addr: String,
        cert: Bytes,
    },
    /// A policy said no; `code` is the contract's (`quota`, `file_type`, `secure_view`, ...).
    Refused {
        code: String,
        message: String,
    },
    /// The request failed for another reason (`bad_request`, `not_found`, `bad_chunk`,
    /// `corrupt`, `incomplete`, `internal`).
    Failed {
        code: String,
        message: String,
    },
}

/// An encoded frame: `head` holds the header and fields, `payload` follows it unchanged, so a
/// chunk is never copied into the frame.
#[derive(Debug)]
pub struct Frame {
    pub head: Vec<u8>,
    pub payload: Bytes,
}

impl Frame {
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = self.head.clone();
        v.extend_from_slice(&self.payload);
        v
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8) -> Writer {
        let mut v = Vec::with_capacity(64);
        v.push(kind);
        v.extend_from_slice(&[0; 4]);
        Writer(v)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A put's fields before its manifest.
    fn put_start(&mut self, p: &PutStart) -> &mut Self {
        self.str(&p.token)
            .str(&p.name)
            .opt_str(p.room.as_deref())
            .u8(p.classification)
            .u8(u8::from(p.view_only))
    }
    /// Strings longer than a u16 count are cut; every field's limit is far below that, and the
    /// decoder refuses what is over the limit, so a sender learns of it at once.
    fn str(&mut self, s: &str) -> &mut Self {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.0.extend_from_slice(&(b.len() as u16).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.u8(0),
            Some(s) => self.u8(1).str(s),
        }
    }
    fn entry(&mut self, e: &FileEntry) -> &mut Self {
        self.str(&e.id)
            .str(&e.name)
            .u64(e.size)
            .u32(e.chunks)
            .u8(e.classification)
            .u8(u8::from(e.view_only))
            .str(&e.owner)
            .u64(e.created)
    }
    fn finish(self, payload: Bytes) -> Frame {
        let mut head = self.0;
        let len = (head.len() - HEADER_LEN + payload.len()) as u32;
        head[1..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        Frame { head, payload }
    }
}

/// Where, in the body of a frame of `kind` that begins with `first`, a chunk's bytes begin: the
/// reader of a stream places them in memory where they can go to disk around the page cache
/// without being copied first (a sent chunk, a fetched chunk). `None` for frames that carry no
/// chunk. Only a hint: a frame that turns out malformed is refused by its decoder as ever.
pub fn chunk_offset(kind: u8, first: [u8; 2]) -> Option<usize> {
    match kind {
        kind::PUT_CHUNK => Some(2 + usize::from(u16::from_le_bytes(first)) + UPLOAD_ID_LEN + 4 + 1),
        // The chunk's index, then its encoding.
        kind::CHUNK_DATA => Some(4 + 1),
        _ => None,
    }
}

/// A put's fields before its manifest, as decoded.
struct PutHead {
    token: String,
    name: String,
    room: Option<String>,
    classification: u8,
    view_only: bool,
}

impl PutHead {
    fn with(self, manifest: Manifest) -> PutStart {
        PutStart {
            token: self.token,
            name: self.name,
            room: self.room,
            classification: self.classification,
            view_only: self.view_only,
            manifest,
        }
    }
}

const UPLOAD_ID_LEN: usize = std::mem::size_of::<UploadId>();

struct Reader {
    body: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Truncated(what))?;
        let s = self
            .body
            .get(self.at..end)
            .ok_or(WireError::Truncated(what))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::BadValue(what, v.into())),
        }
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let mut b = [0; 2];
        b.copy_from_slice(self.take(2, what)?);
        Ok(u16::from_le_bytes(b))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }
    fn str(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let n = self.u16(what)? as usize;
        if n > max {
            return Err(WireError::TooLong(what, n));
        }
        let b = self.take(n, what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| WireError::BadUtf8(what))
    }
    fn opt_str(&mut self, what: &'static str, max: usize) -> Result<Option<String>, WireError> {
        Ok(if self.bool(what)? {
            Some(self.str(what, max)?)
        } else {
            None
        })
    }
    fn upload_id(&mut self) -> Result<UploadId, WireError> {
        let mut id = [0; 16];
        id.copy_from_slice(self.take(16, "upload id")?);
        Ok(id)
    }
    fn encoding(&mut self) -> Result<Encoding, WireError> {
        match self.u8("encoding")? {
            0 => Ok(Encoding::Raw),
            1 => Ok(Encoding::Zstd),
            v => Err(WireError::BadValue("encoding", v.into())),
        }
    }
    fn level(&mut self) -> Result<u8, WireError> {
        match self.u8("classification")? {
            v @ 0..=3 => Ok(v),
            v => Err(WireError::BadValue("classification", v.into())),
        }
    }
    fn put_head(&mut self) -> Result<PutHead, WireError> {
        Ok(PutHead {
            token: self.str("token", MAX_TOKEN)?,
            name: self.str("name", MAX_NAME)?,
            room: self.opt_str("room", MAX_NAME)?,
            classification: self.level()?,
            view_only: self.bool("view_only")?,
        })
    }
    fn entry(&mut self) -> Result<FileEntry, WireError> {
        Ok(FileEntry {
            id: self.str("file id", MAX_ID)?,
            name: self.str("name", MAX_NAME)?,
            size: self.u64("size")?,
            chunks: self.u32("chunk count")?,
            classification: self.level()?,
            view_only: self.bool("view_only")?,
            owner: self.str("owner", MAX_NAME)?,
            created: self.u64("created")?,
        })
    }
    /// The rest of the frame, without copying.
    fn rest(&mut self) -> Bytes {
        let r = self.body.slice(self.at..);
        self.at = self.body.len();
        r
    }
    fn end(&self) -> Result<(), WireError> {
        match self.body.len() - self.at {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

/// The kind and body length of a frame header.
pub fn parse_header(head: [u8; HEADER_LEN]) -> Result<(u8, usize), WireError> {
    let [kind, a, b, c, d] = head;
    let len = u32::from_le_bytes([a, b, c, d]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge(len));
    }
    Ok((kind, len))
}

/// Splits a whole frame held in one buffer into its kind and body.
fn split_frame(frame: &[u8]) -> Result<(u8, Bytes), WireError> {
    let head: [u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated("frame header"))?;
    let (kind, len) = parse_header(head)?;
    let body = &frame[HEADER_LEN..];
    if body.len() != len {
        return Err(WireError::LengthMismatch {
            header: len,
            body: body.len(),
        });
    }
    Ok((kind, Bytes::copy_from_slice(body)))
}

impl Request {
    pub fn token(&self) -> &str {
        match self {
            Request::PutStart(p) | Request::PutOpen { start: p, .. } => &p.token,
            Request::PutChunk { token, .. }
            | Request::PutCommit { token, .. }
            | Request::PutList { token, .. }
            | Request::GetStart { token, .. }
            | Request::GetChunk { token, .. }
            | Request::List { token }
            | Request::Remove { token, .. } => token,
        }
    }

    pub fn encode(&self) -> Frame {
        match self {
            Request::PutStart(p) => {
                let mut w = Writer::new(kind::PUT_START);
                w.put_start(p).bytes(&p.manifest.encode());
                w.finish(Bytes::new())
            }
            Request::PutOpen { start, size } => {
                let mut w = Writer::new(kind::PUT_OPEN);
                w.put_start(start)
                    .u64(*size)
                    .bytes(&start.manifest.encode());
                w.finish(Bytes::new())
            }
            Request::PutList {
                token,
                upload,
                first,
                last,
                part,
            } => {
                let mut w = Writer::new(kind::PUT_LIST);
                w.str(token)
                    .bytes(upload)
                    .u32(*first)
                    .u8(u8::from(*last))
                    .bytes(&part.encode());
                w.finish(Bytes::new())
            }
            Request::PutChunk {
                token,
                upload,
                index,
                encoding,
                data,
            } => {
                let mut w = Writer::new(kind::PUT_CHUNK);
                w.str(token).bytes(upload).u32(*index).u8(encoding.byte());
                w.finish(data.clone())
            }
            Request::PutCommit { token, upload } => {
                let mut w = Writer::new(kind::PUT_COMMIT);
                w.str(token).bytes(upload);
                w.finish(Bytes::new())
            }
            Request::GetStart { token, file } => {
                let mut w = Writer::new(kind::GET_START);
                w.str(token).str(file);
                w.finish(Bytes::new())
            }
            Request::GetChunk { token, file, index } => {
                let mut w = Writer::new(kind::GET_CHUNK);
                w.str(token).str(file).u32(*index);
                w.finish(Bytes::new())
            }
            Request::List { token } => {
                let mut w = Writer::new(kind::LIST);
                w.str(token);
                w.finish(Bytes::new())
            }
            Request::Remove { token, file } => {
                let mut w = Writer::new(kind::REMOVE);
                w.str(token).str(file);
                w.finish(Bytes::new())
            }
        }
    }

    /// Decodes a request from its frame's kind and body.
    pub fn decode(kind: u8, body: Bytes) -> Result<Request, WireError> {
        let mut r = Reader { body, at: 0 };
        let req = match kind {
            kind::PUT_START => {
                let head = r.put_head()?;
                Request::PutStart(Box::new(head.with(Manifest::decode(&r.rest())?)))
            }
            kind::PUT_OPEN => {
                let head = r.put_head()?;
                let size = r.u64("size")?;
                let start = Box::new(head.with(Manifest::decode(&r.rest())?));
                Request::PutOpen { start, size }
            }
            kind::PUT_LIST => Request::PutList {
                token: r.str("token", MAX_TOKEN)?,
                upload: r.upload_id()?,
                first: r.u32("first chunk")?,
                last: r.bool("last")?,
                part: Manifest::decode(&r.rest())?,
            },
            kind::PUT_CHUNK => Request::PutChunk {
                token: r.str("token", MAX_TOKEN)?,
                upload: r.upload_id()?,
                index: r.u32("chunk index")?,
                encoding: r.encoding()?,
                data: r.rest(),
            },
            kind::PUT_COMMIT => Request::PutCommit {
                token: r.str("token", MAX_TOKEN)?,
                upload: r.upload_id()?,
            },
            kind::GET_START => Request::GetStart {
                token: r.str("token", MAX_TOKEN)?,
                file: r.str("file id", MAX_ID)?,
            },
            kind::GET_CHUNK => Request::GetChunk {
                token: r.str("token", MAX_TOKEN)?,
                file: r.str("file id", MAX_ID)?,
                index: r.u32("chunk index")?,
            },
            kind::LIST => Request::List {
                token: r.str("token", MAX_TOKEN)?,
            },
            kind::REMOVE => Request::Remove {
                token: r.str("token", MAX_TOKEN)?,
                file: r.str("file id", MAX_ID)?,
            },
            k => return Err(WireError::UnknownKind(k)),
        };
        r.end()?;
        Ok(req)
    }

    /// Decodes a whole frame held in one buffer.
    pub fn decode_frame(frame: &[u8]) -> Result<Request, WireError> {
        let (kind, body) = split_frame(frame)?;
        Request::decode(kind, body)
    }
}

impl Response {
    pub fn refused(code: &str, message: impl Into<String>) -> Response {
        Response::Refused {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn failed(code: &str, message: impl Into<String>) -> Response {
        Response::Failed {
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn encode(&self) -> Frame {
        match self {
            Response::PutReady {
                upload,
                resumed,
                missing,
            } => {
                let mut w = Writer::new(kind::PUT_READY);
                w.bytes(upload)
                    .u8(u8::from(*resumed))
                    .u32(missing.len() as u32);
                for i in missing {
                    w.u32(*i);
                }
                w.finish(Bytes::new())
            }
            Response::ChunkAccepted { index } => {
                let mut w = Writer::new(kind::CHUNK_ACCEPTED);
                w.u32(*index);
                w.finish(Bytes::new())
            }
            Response::Committed(e) => {
                let mut w = Writer::new(kind::COMMITTED);
                w.entry(e);
                w.finish(Bytes::new())
            }
            Response::FileInfo { entry, manifest } => {
                let mut w = Writer::new(kind::FILE_INFO);
                w.entry(entry).bytes(&manifest.encode());
                w.finish(Bytes::new())
            }
            Response::ChunkData {
                index,
                encoding,
                data,
            } => {
                let mut w = Writer::new(kind::CHUNK_DATA);
                w.u32(*index).u8(encoding.byte());
                w.finish(data.clone())
            }
            Response::Listing(entries) => {
                let mut w = Writer::new(kind::LISTING);
                w.u32(entries.len() as u32);
                for e in entries {
                    w.entry(e);
                }
                w.finish(Bytes::new())
            }
            Response::Removed { id } => {
                let mut w = Writer::new(kind::REMOVED);
                w.str(id);
                w.finish(Bytes::new())
            }
            Response::Elsewhere { addr, cert } => {
                let mut w = Writer::new(kind::ELSEWHERE);
                w.str(addr);
                w.finish(cert.clone())
            }
            Response::Refused { code, message } => {
                let mut w = Writer::new(kind::REFUSED);
                w.str(code).str(message);
                w.finish(Bytes::new())
            }
            Response::Failed { code, message } => {
                let mut w = Writer::new(kind::FAILED);
                w.str(code).str(message);
                w.finish(Bytes::new())
            }
        }
    }

    pub fn decode(kind: u8, body: Bytes) -> Result<Response, WireError> {
        let mut r = Reader { body, at: 0 };
        let resp = match kind {
            kind::PUT_READY => {
                let upload = r.upload_id()?;
                let resumed = r.bool("resumed")?;
                let n = r.u32("missing count")? as usize;
                if n > super::manifest::MAX_CHUNKS {
                    return Err(WireError::TooLong("missing list", n));
                }
                let mut missing = Vec::with_capacity(n.min(r.body.len() / 4));
                for _ in 0..n {
                    missing.push(r.u32("missing index")?);
                }
                Response::PutReady {
                    upload,
                    resumed,
                    missing,
                }
            }
            kind::CHUNK_ACCEPTED => Response::ChunkAccepted {
                index: r.u32("chunk index")?,
            },
            kind::COMMITTED => Response::Committed(Box::new(r.entry()?)),
            kind::FILE_INFO => {
                let entry = Box::new(r.entry()?);
                let manifest = Manifest::decode(&r.rest())?;
                Response::FileInfo { entry, manifest }
            }
            kind::CHUNK_DATA => Response::ChunkData {
                index: r.u32("chunk index")?,
                encoding: r.encoding()?,
                data: r.rest(),
            },
            kind::LISTING => {
                let n = r.u32("entry count")? as usize;
                if n > MAX_LISTING {
                    return Err(WireError::TooLong("listing", n));
                }
                let mut entries = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    entries.push(r.entry()?);
                }
                Response::Listing(entries)
            }
            kind::REMOVED => Response::Removed {
                id: r.str("file id", MAX_ID)?,
            },
            kind::ELSEWHERE => {
                let addr = r.str("address", MAX_ADDR)?;
                let cert = r.rest();
                if cert.is_empty() || cert.len() > MAX_CERT {
                    return Err(WireError::TooLong("certificate", cert.len()));
                }
                Response::Elsewhere { addr, cert }
            }
            kind::REFUSED => Response::Refused {
                code: r.str("code", MAX_CODE)?,
                message: r.str("message", MAX_MESSAGE)?,
            },
            kind::FAILED => Response::Failed {
                code: r.str("code", MAX_CODE)?,
                message: r.str("message", MAX_MESSAGE)?,
            },
            k => return Err(WireError::UnknownKind(k)),
        };
        r.end()?;
        Ok(resp)
    }

    pub fn decode_frame(frame: &[u8]) -> Result<Response, WireError> {
        let (kind, body) = split_frame(frame)?;
        Response::decode(kind, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::chunker::chunk_hash;
    use crate::files::manifest::ChunkRef;

    fn manifest() -> Manifest {
        Manifest::new(vec![
            ChunkRef {
                hash: chunk_hash(b"a"),
                len: 1,
            },
            ChunkRef {
                hash: chunk_hash(b"bc"),
                len: 2,
            },
        ])
        .unwrap()
    }

    fn entry() -> FileEntry {
        FileEntry {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "clip.mp4".into(),
            size: 3,
            chunks: 2,
            classification: 2,
            view_only: true,
            owner: "ann".into(),
            created: 1_700_000_000,
        }
    }

    fn requests() -> Vec<Request> {
        let t = "v1.tok".to_string();
        vec![
            Request::PutStart(Box::new(PutStart {
                token: t.clone(),
                name: "clip.mp4".into(),
                room: Some("ops".into()),
                classification: 1,
                view_only: true,
                manifest: manifest(),
            })),
            Request::PutStart(Box::new(PutStart {
                token: t.clone(),
                name: String::new(),
                room: None,
                classification: 0,
                view_only: false,
                manifest: Manifest::new(vec![]).unwrap(),
            })),
            Request::PutChunk {
                token: t.clone(),
                upload: [7; 16],
                index: 3,
                encoding: Encoding::Zstd,
                data: Bytes::from_static(b"payload"),
            },
            Request::PutCommit {
                token: t.clone(),
                upload: [1; 16],
            },
            Request::PutOpen {
                start: Box::new(PutStart {
                    token: t.clone(),
                    name: "big.mov".into(),
                    room: None,
                    classification: 3,
                    view_only: false,
                    manifest: manifest(),
                }),
                size: u64::MAX,
            },
            Request::PutList {
                token: t.clone(),
                upload: [9; 16],
                first: 70_000,
                last: true,
                part: manifest(),
            },
            Request::PutList {
                token: t.clone(),
                upload: [9; 16],
                first: 0,
                last: false,
                part: Manifest::new(vec![]).unwrap(),
            },
            Request::GetStart {
                token: t.clone(),
                file: "abc".into(),
            },
            Request::GetChunk {
                token: t.clone(),
                file: "abc".into(),
                index: u32::MAX,
            },
            Request::List { token: t.clone() },
            Request::Remove {
                token: t,
                file: "abc".into(),
            },
        ]
    }

    #[test]
    fn the_chunk_offset_is_where_the_decoder_finds_the_chunk() {
        // Each frame with the chunk it carries, if any.
        let requests = requests().into_iter().map(|r| {
            let chunk = match &r {
                Request::PutChunk { data, .. } => Some(data.clone()),
                _ => None,
            };
            (r.encode(), chunk, format!("{r:?}"))
        });
        let responses = responses().into_iter().map(|r| {
            let chunk = match &r {
                Response::ChunkData { data, .. } => Some(data.clone()),
                _ => None,
            };
            (r.encode(), chunk, format!("{r:?}"))
        });
        for (f, chunk, what) in requests.chain(responses) {
            let mut frame = f.head.to_vec();
            frame.extend_from_slice(&f.payload);
            let body = &frame[HEADER_LEN..];
            let at = chunk_offset(frame[0], [body[0], body[1]]);
            match chunk {
                Some(data) => {
                    let at = at.expect("a frame with a chunk has a chunk offset");
                    assert_eq!(&body[at..], &data[..], "{what}");
                }
                None => assert_eq!(at, None, "{what}"),
            }
        }
    }

    fn responses() -> Vec<Response> {
        vec![
            Response::PutReady {
                upload: [9; 16],
                resumed: true,
                missing: vec![0, 5, 9],
            },
            Response::ChunkAccepted { index: 4 },
            Response::Committed(Box::new(entry())),
            Response::FileInfo {
                entry: Box::new(entry()),
                manifest: manifest(),
            },
            Response::ChunkData {
                index: 1,
                encoding: Encoding::Raw,
                data: Bytes::from_static(b"bc"),
            },
            Response::Listing(vec![entry(), entry()]),
            Response::Listing(vec![]),
            Response::Removed { id: "abc".into() },
            Response::Elsewhere {
                addr: "10.0.0.12:4433".into(),
                cert: Bytes::from_static(b"0\x82\x01\x00der"),
            },
            Response::refused("quota", "the quota would be exceeded"),
            Response::failed("not_found", "no such file"),
        ]
    }

    #[test]
    fn requests_round_trip() {
        for req in requests() {
            let frame = req.encode().to_vec();
            assert_eq!(Request::decode_frame(&frame).unwrap(), req);
        }
    }

    #[test]
    fn responses_round_trip() {
        for resp in responses() {
            let frame = resp.encode().to_vec();
            assert_eq!(Response::decode_frame(&frame).unwrap(), resp);
        }
    }

    #[test]
    fn every_truncation_is_an_error_and_none_panics() {
        for req in requests() {
            let frame = req.encode().to_vec();
            for n in 0..frame.len() {
                assert!(Request::decode_frame(&frame[..n]).is_err());
                // The same bytes with a header that agrees with the short body.
                if n >= HEADER_LEN {
                    let mut f = frame[..n].to_vec();
                    f[1..5].copy_from_slice(&((n - HEADER_LEN) as u32).to_le_bytes());
                    let r = Request::decode_frame(&f);
                    // Chunk payloads may legitimately be shorter; all else must fail.
                    if !matches!(req, Request::PutChunk { .. }) {
                        assert!(r.is_err(), "{req:?} cut to {n}");
                    }
                }
            }
        }
        for resp in responses() {
            let frame = resp.encode().to_vec();
            for n in 0..frame.len() {
                assert!(Response::decode_frame(&frame[..n]).is_err());
            }
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let list = Request::List { token: "t".into() }.encode().to_vec();
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = list.clone();
            f(&mut b);
            b
        };
        let huge = {
            let mut h = vec![kind::LIST];
            h.extend_from_slice(&((MAX_FRAME + 1) as u32).to_le_bytes());
            h
        };
        let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
            ("kind", with(&|b| b[0] = 0x7f), WireError::UnknownKind(0x7f)),
            ("too large", huge, WireError::FrameTooLarge(MAX_FRAME + 1)),
            (
                "trailing",
                with(&|b| {
                    b.push(0);
                    b[1] += 1;
                }),
                WireError::TrailingBytes(1),
            ),
            (
                "utf8",
                with(&|b| {
                    let n = b.len();
                    b[n - 1] = 0xff;
                }),
                WireError::BadUtf8("token"),
            ),
            (
                "long token",
                {
                    let mut f = vec![kind::LIST, 0, 0, 0, 0];
                    f.extend_from_slice(&(MAX_TOKEN as u16 + 1).to_le_bytes());
                    f.extend(std::iter::repeat_n(b'a', MAX_TOKEN + 1));
                    let n = (f.len() - HEADER_LEN) as u32;
                    f[1..5].copy_from_slice(&n.to_le_bytes());
                    f
                },
                WireError::TooLong("token", MAX_TOKEN + 1),
            ),
        ];
        for (name, frame, want) in cases {
            assert_eq!(Request::decode_frame(&frame).unwrap_err(), want, "{name}");
        }
        let mut bad_level = Request::PutStart(Box::new(PutStart {
            token: "t".into(),
            name: "n".into(),
            room: None,
            classification: 0,
            view_only: false,
            manifest: manifest(),
        }))
        .encode()
        .to_vec();
        // kind, len, token (2+1), name (2+1), room flag: the classification byte follows.
        bad_level[HEADER_LEN + 7] = 9;
        assert_eq!(
            Request::decode_frame(&bad_level).unwrap_err(),
            WireError::BadValue("classification", 9)
        );
    }
}
