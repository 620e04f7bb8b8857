//! Recordings as a service: start and stop a room's recording, the writer that turns what the
//! media worker gathers into a file in the store as the meeting runs, and the closing, at the
//! next start, of recordings a crash cut short.
//!
//! Job: [`Recordings::start`] opens a growing upload in the store (the room's organisation, the
//! starter as owner, the room's classification, named `ROOM-YYYYMMDD-HHMMSS.webm|.ogg`), asks
//! the room's worker to record, and runs a writer thread. The writer mixes and muxes
//! ([`crate::record::muxer`]) and stores a chunk every [`CHUNK_EVERY`] or [`CHUNK_BYTES`],
//! whichever comes first, so a kill loses at most that much. It ends when the recording is
//! stopped, the room empties (the worker drops its end of the channel), or a quota would be
//! passed (with a notice in the room); then the header is written again with the duration and
//! the upload becomes a file.
//!
//! Invariants:
//! - a room has at most one recording; the map of running ones is the truth the API answers from;
//! - every chunk stored ends on a whole block or page, so the chunks stored so far, behind a header
//!   with the duration, are a playable file ([`recover`]);
//! - the store's row for a chunk is written after its bytes are durable (the store's rule).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::control::Control;
use crate::control::admin::{AdminChange, Change};
use crate::control::audit::{Decision, Event};
use crate::files::chunker::{MAX_CHUNK, VerifiedChunk, chunk_hash};
use crate::files::service::Service;
use crate::files::store::{ChunkStore, FileRecord, NewRecording, StoreError};
use crate::media::sfu::Recorded;
use crate::media::{MediaError, MediaPlane};
use crate::record::muxer::{Kind, Muxer};
use crate::record::webm;

/// A chunk is stored at least this often while a recording runs.
pub const CHUNK_EVERY: Duration = Duration::from_secs(2);
/// ... or once this many bytes wait.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Hand-offs from the worker (every 100 ms) that may wait for the writer.
const QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("the room is already being recorded")]
    Running,
    #[error("nobody is in the room")]
    Empty,
    #[error("no recording {0} runs in this room")]
    NotFound(String),
    #[error("{0}")]
    Quota(String),
    #[error("{0}")]
    Failed(String),
}

/// What a recording left.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub file: FileRecord,
    pub duration_ms: u64,
    /// Why it ended: `stopped`, `room_empty`, `quota`.
    pub ended: &'static str,
}

/// A running recording, as the room's state shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Running {
    pub id: String,
    pub kind: &'static str,
    /// Seconds since the epoch.
    pub since: u64,
}

#[derive(Debug)]
struct Active {
    shown: Running,
    org: String,
    room: String,
    owner: String,
    device: String,
    /// The room's classification when it started, which the file carries.
    classification: u8,
    /// The media worker records (the start went through).
    started: bool,
    /// Who waits for the end (a stop), and the answer it gets.
    waiter: Option<oneshot::Sender<Result<Outcome, RecordingError>>>,
    stopping: bool,
}

/// How a writer ended, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Its channel closed: stopped, or the room emptied.
    Stopped,
    /// The next chunk would have passed a quota.
    Quota,
    /// The store failed; what it held was closed into a file.
    Failed,
}

/// Who starts a recording of what.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub org: &'a str,
    pub room: &'a str,
    /// The media plane's name of the room.
    pub room_key: &'a str,
    pub owner: &'a str,
    pub device: &'a str,
    pub classification: u8,
    pub kind: Kind,
}

/// The recordings of the appliance.
#[derive(Debug)]
pub struct Recordings {
    files: Arc<Service>,
    control: Arc<Control>,
    plane: MediaPlane,
    active: Mutex<HashMap<String, Active>>,
    bytes: AtomicU64,
}

impl Recordings {
    pub fn new(files: Arc<Service>, control: Arc<Control>, plane: MediaPlane) -> Arc<Recordings> {
        Arc::new(Recordings {
            files,
            control,
            plane,
            active: Mutex::new(HashMap::new()),
            bytes: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recordings running now.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    /// Bytes recordings have stored.
    pub fn bytes_total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The recording running in the room (by its media key), if any.
    pub fn running(&self, room_key: &str) -> Option<Running> {
        self.lock().get(room_key).map(|a| a.shown.clone())
    }

    /// Starts recording; answers the recording's id.
    pub async fn start(self: &Arc<Self>, s: Start<'_>) -> Result<String, RecordingError> {
        let now = crate::control::unix_now();
        let id = {
            let mut active = self.lock();
            if active.contains_key(s.room_key) {
                return Err(RecordingError::Running);
            }
            let id = hex::encode(crate::random_bytes::<8>());
            active.insert(
                s.room_key.to_owned(),
                Active {
                    shown: Running {
                        id: id.clone(),
                        kind: s.kind.as_str(),
                        since: now,
                    },
                    org: s.org.to_owned(),
                    room: s.room.to_owned(),
                    owner: s.owner.to_owned(),
                    device: s.device.to_owned(),
                    classification: s.classification,
                    started: false,
                    waiter: None,
                    stopping: false,
                },
            );
            id
        };
        match self.open(&s, now).await {
            Ok(()) => Ok(id),
            Err(e) => {
                self.lock().remove(s.room_key);
                Err(e)
            }
        }
    }

    async fn open(self: &Arc<Self>, s: &Start<'_>, now: u64) -> Result<(), RecordingError> {
        let muxer = Muxer::new(s.kind).map_err(|e| RecordingError::Failed(e.to_string()))?;
        let quotas = self
            .files
            .quotas(s.org)
            .map_err(|e| RecordingError::Failed(e.to_string()))?;
        let store = self.files.store().clone();
        let new = (
            s.org.to_owned(),
            s.owner.to_owned(),
            file_name(s.room, now, s.kind),
            s.room.to_owned(),
            s.classification,
            s.kind.as_str(),
        );
        let header = piece(muxer.header());
        let header_len = header.data().len() as u64;
        // The upload and its header, made durable off the async runtime.
        let upload = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let (org, owner, name, room, classification, kind) = new;
                let upload = store.begin_recording(
                    &NewRecording {
                        org: &org,
                        owner: &owner,
                        name: &name,
                        room: &room,
                        classification,
                        kind,
                    },
                    quotas,
                    now,
                )?;
                if let Err(e) = store.append_recording(&upload, &header, 0, quotas, now) {
                    let _ = store.discard_recording(&upload, now);
                    return Err(e);
                }
                Ok(upload)
            })
            .await
            .map_err(|e| RecordingError::Failed(e.to_string()))?
            .map_err(store_error)?
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let video = s.kind == Kind::Meeting;
        let key = s.room_key.to_owned();
        if let Err(e) = self.plane.start_recording(&key, video, tx).await {
            let _ = store.discard_recording(&upload, now);
            return Err(match e {
                MediaError::NotFound => RecordingError::Empty,
                e => RecordingError::Failed(e.to_string()),
            });
        }
        self.bytes.fetch_add(header_len, Ordering::Relaxed);
        let me = self.clone();
        let org = s.org.to_owned();
        let thread_key = key.clone();
        let spawned = std::thread::Builder::new()
            .name("recording".into())
            .spawn(move || {
                let started = Instant::now();
                let mut muxer = muxer;
                // A panic in the writer must not leave the room marked as recording.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    me.write(&rx, &mut muxer, &store, &upload, &org, started)
                }))
                .unwrap_or_else(|_| Err(StoreError::Invalid("the writer panicked".into())));
                drop(rx);
                let r = r.or_else(|e| {
                    // What was stored stays a file, if it can be made one.
                    tracing::error!(error = %e, "a recording failed; closing what it stored");
                    match store.finish_recording(&upload, crate::control::unix_now()) {
                        Ok(file) => Ok((file, 0, Ended::Failed)),
                        Err(_) => {
                            let _ = store.discard_recording(&upload, crate::control::unix_now());
                            Err(e)
                        }
                    }
                });
                me.ended(&thread_key, r);
            });
        if let Err(e) = spawned {
            self.plane.stop_recording(&key).await;
            let _ = self.files.store().discard_recording(&upload, now);
            return Err(RecordingError::Failed(format!("writer thread: {e}")));
        }
        // A stop asked while this start was under way is carried out now.
        let stop_now = {
            let mut active = self.lock();
            active.get_mut(&key).is_some_and(|a| {
                a.started = true;
                a.stopping
            })
        };
        if stop_now {
            self.plane.stop_recording(&key).await;
        }
        Ok(())
    }

    /// The writer: until the worker's end of the channel goes, or a quota is reached. Answers
    /// the file, the time it holds (ms) and why it ended.
    fn write(
        &self,
        rx: &mpsc::Receiver<Recorded>,
        muxer: &mut Muxer,
        store: &ChunkStore,
        upload: &[u8; 16],
        org: &str,
        started: Instant,
    ) -> Result<(FileRecord, u64, Ended), StoreError> {
        let quotas = self
            .files
            .quotas(org)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut pending = Vec::new();
        let mut last_chunk = Instant::now();
        // The time the stored chunks reach.
        let mut stored_ms = 0;
        let mut ended = Ended::Stopped;
        loop {
            let more = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => {
                    muxer.push(r);
                    true
                }
                Err(mpsc::RecvTimeoutError::Timeout) => true,
                Err(mpsc::RecvTimeoutError::Disconnected) => false,
            };
            if let Some(h) = muxer.take_header_change() {
                store.replace_recording_chunk(upload, 0, &piece(&h), crate::control::unix_now())?;
            }
            let now_ms = started.elapsed().as_millis() as u64;
            if more {
                pending.extend(muxer.advance(now_ms));
            } else {
                pending.extend(muxer.finish(now_ms));
            }
            if !more || pending.len() >= CHUNK_BYTES || last_chunk.elapsed() >= CHUNK_EVERY {
                let reached = muxer.duration_ms();
                // A chunk is at most the store's largest.
                for part in pending.chunks(MAX_CHUNK) {
                    let now = crate::control::unix_now();
                    match store.append_recording(upload, &piece(part), reached, quotas, now) {
                        Ok(()) => {
                            self.bytes.fetch_add(part.len() as u64, Ordering::Relaxed);
                        }
                        Err(StoreError::Quota(q)) => {
                            tracing::warn!("a recording reached a quota and stops: {q}");
                            ended = Ended::Quota;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if ended == Ended::Quota {
                    break;
                }
                stored_ms = reached;
                pending.clear();
                last_chunk = Instant::now();
            }
            if !more {
                break;
            }
        }
        let now = crate::control::unix_now();
        store.replace_recording_chunk(upload, 0, &piece(&muxer.final_header(stored_ms)), now)?;
        let file = store.finish_recording(upload, now)?;
        Ok((file, stored_ms, ended))
    }

    /// The writer is done: the file is listed, the end audited, whoever stopped it answered.
    fn ended(&self, key: &str, r: Result<(FileRecord, u64, Ended), StoreError>) {
        let Some(a) = self.lock().remove(key) else {
            return;
        };
        let target = format!("room:{}", a.room);
        let answer = match r {
            Ok((file, duration_ms, how)) => {
                self.files.placed(&file);
                let quota = how == Ended::Quota;
                let ended = match how {
                    Ended::Quota => "quota",
                    Ended::Failed => "failed",
                    Ended::Stopped if a.stopping => "stopped",
                    // The worker let go: the room emptied (or the media plane stopped).
                    Ended::Stopped => "room_empty",
                };
                self.control.record(
                    Event::new("recording.stop", Decision::Allow)
                        .who(&a.org, &a.owner, &a.device)
                        .target(&target)
                        .reason(ended)
                        .bytes(file.size),
                );
                if quota {
                    let text = format!(
                        "The recording of {} stopped: the storage quota is reached. What was recorded is kept as {}.",
                        a.room, file.name
                    );
                    let notice = AdminChange::new(
                        a.org.clone(),
                        Change::SendNotice {
                            room: Some(a.room.clone()),
                            text,
                            from: "relay".into(),
                        },
                    );
                    // Sent as the appliance: stored, audited, and out to the room's pages.
                    if let Err(e) = self.control.apply(&notice, None) {
                        tracing::error!(error = %e, "the quota notice could not be sent");
                    }
                }
                Ok(Outcome {
                    file,
                    duration_ms,
                    ended,
                })
            }
            Err(e) => {
                tracing::error!(room = %a.room, error = %e, "a recording failed");
                self.control.record(
                    Event::new("recording.stop", Decision::Deny)
                        .who(&a.org, &a.owner, &a.device)
                        .target(&target)
                        .reason("failed"),
                );
                Err(RecordingError::Failed(e.to_string()))
            }
        };
        if let Some(w) = a.waiter {
            let _ = w.send(answer);
        }
    }

    /// Stops the recording `id` of the room and waits for its file.
    pub async fn stop(&self, room_key: &str, id: &str) -> Result<Outcome, RecordingError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut active = self.lock();
            let a = active
                .get_mut(room_key)
                .filter(|a| a.shown.id == id && !a.stopping)
                .ok_or_else(|| RecordingError::NotFound(id.to_owned()))?;
            a.stopping = true;
            a.waiter = Some(tx);
        }
        self.plane.stop_recording(&room_key.to_owned()).await;
        rx.await
            .map_err(|_| RecordingError::Failed("the recording's writer is gone".into()))?
    }

    /// Stops every recording, all at once, and waits (at most ten seconds) for their files:
    /// the relay is stopping.
    pub async fn stop_all(self: &Arc<Self>) {
        let running: Vec<(String, String)> = self
            .lock()
            .iter()
            .map(|(k, a)| (k.clone(), a.shown.id.clone()))
            .collect();
        let mut stops = tokio::task::JoinSet::new();
        for (key, id) in running {
            let me = self.clone();
            stops.spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(10), me.stop(&key, &id)).await;
                if !matches!(r, Ok(Ok(_))) {
                    tracing::warn!(room = %key, "a recording did not close before the stop; the next start closes it");
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }

    /// Holds running recordings to the registry as it is now: a recording whose room is gone,
    /// became `secure_view` or changed classification, or whose starter is no longer registered
    /// with the clearance for it, is stopped.
    pub fn enforce(self: &Arc<Self>) {
        let running: Vec<(String, String, String, String, String, u8)> = self
            .lock()
            .iter()
            .filter(|(_, a)| !a.stopping)
            .map(|(k, a)| {
                (
                    k.clone(),
                    a.shown.id.clone(),
                    a.org.clone(),
                    a.room.clone(),
                    a.owner.clone(),
                    a.classification,
                )
            })
            .collect();
        for (key, id, org, room, owner, classification) in running {
            let allowed = {
                let reg = self.control.registry();
                let room_ok = reg
                    .room(&org, &room)
                    .ok()
                    .flatten()
                    .is_some_and(|r| !r.secure_view && r.classification == classification);
                let user_ok = reg
                    .user(&org, &owner)
                    .ok()
                    .flatten()
                    .is_some_and(|u| u.clearance >= classification);
                room_ok && user_ok
            };
            if !allowed {
                tracing::warn!(%room, "the registry no longer allows this recording; it stops");
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.stop(&key, &id).await;
                });
            }
        }
    }
}

fn store_error(e: StoreError) -> RecordingError {
    match e {
        StoreError::Quota(q) => RecordingError::Quota(q.to_string()),
        e => RecordingError::Failed(e.to_string()),
    }
}

fn piece(bytes: &[u8]) -> VerifiedChunk {
    let hash = chunk_hash(bytes);
    VerifiedChunk::check(&hash, bytes.to_vec().into()).expect("hashed here")
}

/// `ROOM-YYYYMMDD-HHMMSS.webm|.ogg`, in UTC.
pub fn file_name(room: &str, unix: u64, kind: Kind) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{room}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}.{}",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60,
        kind.extension()
    )
}

/// Closes every recording a crash left open into a file of what it stored: its chunks behind a
/// header with the duration. One that stored nothing past its header is dropped.
pub fn recover(files: &Service, control: &Control) -> Vec<FileRecord> {
    let store = files.store();
    let open = match store.open_recordings() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "open recordings could not be listed");
            return Vec::new();
        }
    };
    let now = crate::control::unix_now();
    let mut closed = Vec::new();
    for r in open {
        let result = (|| -> Result<Option<FileRecord>, StoreError> {
            if r.chunks.len() < 2 {
                store.discard_recording(&r.id, now)?;
                return Ok(None);
            }
            if r.kind == Kind::Meeting.as_str() {
                let first = r.chunks[0];
                // Without its duration (a header that cannot be read back) the file still
                // plays; a player then reads the length from the blocks.
                let fixed = store
                    .read_chunk(&first.hash, first.len)
                    .ok()
                    .and_then(|h| webm::with_duration(&h, r.duration_ms as f64));
                match fixed {
                    Some(h) => store.replace_recording_chunk(&r.id, 0, &piece(&h), now)?,
                    None => {
                        tracing::warn!(name = %r.name, "a cut recording's header could not be read; closed without its duration")
                    }
                }
            }
            store.finish_recording(&r.id, now).map(Some)
        })();
        match result {
            Ok(Some(file)) => {
                tracing::info!(file = %file.id, name = %file.name, "a recording cut short was closed");
                files.placed(&file);
                control.record(
                    Event::new("recording.stop", Decision::Allow)
                        .org(&r.org)
                        .subject(&r.owner)
                        .target(&format!("room:{}", r.room))
                        .reason("recovered")
                        .bytes(file.size),
                );
                closed.push(file);
            }
            Ok(None) => {}
            Err(e) => {
                // Never left open (charged, its chunks held) for the next start to fail again.
                tracing::error!(error = %e, name = %r.name, "a recording cut short could not be closed; it is dropped");
                let _ = store.discard_recording(&r.id, now);
            }
        }
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_the_room_and_the_utc_time() {
        assert_eq!(
            file_name("lobby", 0, Kind::Meeting),
            "lobby-19700101-000000.webm"
        );
        // 2026-12-04 05:06:07 UTC.
        assert_eq!(
            file_name("ops", 1_796_360_767, Kind::Audio),
            "ops-20261204-050607.ogg"
        );
        // 2024-02-29 23:59:59 UTC, a leap day.
        assert_eq!(
            file_name("r", 1_709_251_199, Kind::Meeting),
            "r-20240229-235959.webm"
        );
    }
}
