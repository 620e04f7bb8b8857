//! The media plane's I/O shell: worker threads, their sockets, and the async API.
//!
//! Job: [`MediaPlane::start`] spawns one thread per worker. Each owns a non-blocking UDP socket
//! (port `first_port + i`), a mio `Poll`, and one [`Core`]; it reads datagrams in a loop up to a
//! budget, feeds timeouts, and takes commands from the async API through a channel plus a mio
//! `Waker`, answering on tokio oneshot channels. Rooms are placed on the least-loaded worker
//! and live there until they empty. Datagrams go in and out in batches ([`udp`]): the copies
//! a loop iteration produces leave in `sendmmsg` calls at its end, or sooner when a batch fills.
//!
//! Invariants:
//! - a worker thread is the only writer of its core, counters and heartbeat: no lock on the
//!   packet path. The placement map (room -> worker, session -> worker and the opener's
//!   [`SessionTag`]) is locked only by API calls and by a worker when a session opens or closes;
//! - the placement map is the one owner of which sessions live: a session the plane drops on its
//!   own (silence, ICE timeout) leaves it, tag and all, so no caller keeps a map to reconcile;
//! - a room is mapped to one worker while any session in it lives or any open for it is in
//!   flight, so a room is never split across workers;
//! - every socket read loop is bounded ([`RECV_BUDGET`]); a full budget re-polls at once instead
//!   of waiting, since mio readiness is edge-triggered;
//! - nothing stays queued in the outbox past the end of a loop iteration.
//!
//! [`udp`]: super::udp

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;

use super::chat::ChatSent;
use super::counters::{DropReason, MediaCounters, WorkerCounters, set};
use super::datagrams::{self, IoKind, Reader, Writer};
use super::sfu::{Core, CoreConfig, Recorded, Wire};
use super::types::{
    Layout, MediaError, ParticipantKey, RoomInfo, RoomKey, SessionAnswer, SessionId, Source,
};

/// Datagrams read per loop iteration before timers and commands get a turn.
pub const RECV_BUDGET: usize = 256;

/// Copies written within one batch after which they are released at once, before the rest
/// of the batch is handled: the delay a datagram's copies wait for the copies of the
/// datagrams read with it stays bounded, while a subscriber's copies of the several datagrams
/// written before a release leave as one offloaded message. Against 64, 256 cost 12% less CPU
/// per copy at 200 subscribers with a lower p99, and 15% less at 50 with p50 about 0.25 ms
/// higher; a release per whole batch cost less still but raised p99 (`bench/RESULTS.md`).
pub const RELEASE_AFTER: usize = 256;

/// Datagrams per `recvmmsg`/`sendmmsg` unless configured (`media.io_batch`).
pub const DEFAULT_IO_BATCH: usize = 32;

/// Socket buffers asked of the kernel for each worker socket (it may grant less; logged).
const SOCKET_BUFFER: usize = 4 << 20;
/// How long an API call waits for its worker before answering `WorkerBusy`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a worker sleeps, so its heartbeat stays fresh when idle.
const MAX_SLEEP: Duration = Duration::from_millis(500);

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// Media plane settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Address the workers bind and advertise as their ICE host candidate. Must be a concrete
    /// address (not 0.0.0.0 / ::), since peers are told to send to it.
    pub bind_ip: IpAddr,
    /// Worker `i` listens on `first_port + i`. 0 lets the system pick (tests).
    pub first_port: u16,
    /// Number of workers; 0 = one per core.
    pub workers: usize,
    /// Publishers plus subscribers per room; beyond it `RoomFull`.
    pub max_sessions_per_room: usize,
    /// Rooms per worker; beyond it on every worker `WorkerBusy`.
    pub max_rooms_per_worker: usize,
    /// Datagrams per `recvmmsg`/`sendmmsg` (1..=[`super::udp::MAX_BATCH`]; 1 = one per call).
    pub io_batch: usize,
    /// The datagram path: `recvmmsg`/`sendmmsg` or io_uring (`media.io`).
    pub io: IoKind,
    /// Video m-lines (slots, or a publisher's video tracks) one offer may carry; beyond it `BadSdp`.
    pub max_slots: usize,
    /// Audio m-lines one offer may carry; beyond it `BadSdp`.
    pub max_audio_lines: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            first_port: 40_000,
            workers: 0,
            max_sessions_per_room: 100,
            max_rooms_per_worker: 1_000,
            io_batch: DEFAULT_IO_BATCH,
            io: IoKind::default(),
            max_slots: DEFAULT_MAX_SLOTS,
            max_audio_lines: DEFAULT_MAX_AUDIO_LINES,
        }
    }
}

/// Video m-lines per offer unless configured (`media.max_slots`).
pub const DEFAULT_MAX_SLOTS: usize = 16;
/// Audio m-lines per offer unless configured (`media.max_audio_lines`).
pub const DEFAULT_MAX_AUDIO_LINES: usize = 8;

/// Refuses an offer with more video or audio m-lines than a session may have, or other media
/// sections beyond one (a data channel), before any of it is parsed or a session is made for it.
pub fn check_offer_size(offer: &str, max_slots: usize, max_audio: usize) -> Result<(), MediaError> {
    let (mut video, mut audio, mut other) = (0usize, 0usize, 0usize);
    for line in offer.lines() {
        let Some(media) = line.strip_prefix("m=") else {
            continue;
        };
        match media.split(' ').next() {
            Some("video") => video += 1,
            Some("audio") => audio += 1,
            _ => other += 1,
        }
    }
    if video > max_slots {
        return Err(MediaError::BadSdp(format!(
            "the offer has {video} video m-lines; a session may have at most {max_slots}"
        )));
    }
    if audio > max_audio {
        return Err(MediaError::BadSdp(format!(
            "the offer has {audio} audio m-lines; a session may have at most {max_audio}"
        )));
    }
    if other > 1 {
        return Err(MediaError::BadSdp(format!(
            "the offer has {other} m-lines that are neither audio nor video; at most 1"
        )));
    }
    Ok(())
}

/// A handle on the running media plane. Cheap to clone; all clones drive the same workers.
#[derive(Debug, Clone)]
pub struct MediaPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: MediaConfig,
    workers: Vec<WorkerHandle>,
    placement: Arc<Mutex<Placement>>,
    epoch: Instant,
    stopped: AtomicBool,
    /// Chat messages relayed, for the control plane's audit log ([`MediaPlane::take_chat_log`]).
    chat_log: Mutex<Option<ChatLog>>,
}

/// Where the workers report each chat message they relayed.
pub type ChatLog = tokio::sync::mpsc::Receiver<ChatSent>;

/// Chat reports queued for the audit log before the workers drop them (and warn).
const CHAT_LOG_QUEUE: usize = 4096;

#[derive(Debug)]
struct WorkerHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    counters: Arc<WorkerCounters>,
    /// Nanoseconds since `epoch` at the worker's last loop iteration.
    heartbeat: Arc<AtomicU64>,
    addr: SocketAddr,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the caller of [`MediaPlane::publish`] or [`MediaPlane::subscribe`] attaches to the
/// session it opens (who opened it, and on what terms), handed back while the session lives and
/// dropped with it. The plane never looks inside.
pub type SessionTag = Arc<dyn Any + Send + Sync>;

/// Where a session lives, and its opener's tag (set once the open has answered).
struct Placed {
    worker: usize,
    tag: Option<SessionTag>,
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placed")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// Which worker holds which room and session.
#[derive(Debug, Default)]
struct Placement {
    rooms: HashMap<RoomKey, usize>,
    sessions: HashMap<SessionId, Placed>,
    /// Opens in flight per room: the room stays mapped while any is pending.
    opening: HashMap<RoomKey, usize>,
}

fn lock(m: &Mutex<Placement>) -> MutexGuard<'_, Placement> {
    // The map holds no invariant a panicking holder could break halfway (single inserts and
    // removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The answer to an open, and whether the room still exists on the worker afterwards.
type Opened = (Result<SessionAnswer, MediaError>, bool);

#[derive(Debug)]
enum Command {
    Publish {
        room: RoomKey,
        user: ParticipantKey,
        source: Source,
        offer: String,
        reply: oneshot::Sender<Opened>,
    },
    Subscribe {
        room: RoomKey,
        user: ParticipantKey,
        layout: Layout,
        keep_chat: bool,
        offer: String,
        reply: oneshot::Sender<Opened>,
    },
    Trickle {
        session: SessionId,
        frag: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    End {
        session: SessionId,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    SetLayout {
        session: SessionId,
        layout: Layout,
        max_height: Option<u32>,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    RoomInfo {
        room: RoomKey,
        reply: oneshot::Sender<Option<RoomInfo>>,
    },
    Notice {
        org: String,
        room: Option<String>,
        message: Arc<[u8]>,
    },
    StartRecording {
        room: RoomKey,
        video: bool,
        sink: mpsc::SyncSender<Recorded>,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    StopRecording {
        room: RoomKey,
        reply: oneshot::Sender<()>,
    },
    Shutdown,
}

impl MediaPlane {
    /// Bind the workers' sockets and start their threads.
    pub fn start(cfg: MediaConfig) -> Result<MediaPlane, MediaError> {
        if cfg.bind_ip.is_unspecified() {
            return Err(MediaError::Config(
                "bind_ip must be a concrete address: it is the ICE candidate peers send to".into(),
            ));
        }
        let n = match cfg.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let epoch = Instant::now();
        let placement = Arc::new(Mutex::new(Placement::default()));
        let (chat_tx, chat_rx) = tokio::sync::mpsc::channel(CHAT_LOG_QUEUE);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let port = match cfg.first_port {
                0 => 0,
                p => u16::try_from(usize::from(p) + i)
                    .map_err(|_| MediaError::Config(format!("port {p} + {i} is out of range")))?,
            };
            let std_socket = std::net::UdpSocket::bind((cfg.bind_ip, port))
                .map_err(|e| MediaError::Io(format!("bind {}:{port}: {e}", cfg.bind_ip)))?;
            std_socket
                .set_nonblocking(true)
                .map_err(|e| MediaError::Io(format!("non-blocking socket: {e}")))?;
            grow_buffers(&std_socket);
            let addr = std_socket
                .local_addr()
                .map_err(|e| MediaError::Io(format!("local address: {e}")))?;
            let socket = UdpSocket::from_std(std_socket);
            let (inbox, outbox, refused) = datagrams::open(cfg.io, &socket, cfg.io_batch);
            if let Some(e) = refused
                && i == 0
            {
                tracing::warn!(
                    "media.io = \"uring\" but io_uring is not available here ({e}); \
                     the workers use recvmmsg/sendmmsg"
                );
            }
            let poll = Poll::new().map_err(|e| MediaError::Io(format!("poll: {e}")))?;
            poll.registry()
                .register(
                    &mut SourceFd(&inbox.ready_fd(&socket)),
                    SOCKET,
                    Interest::READABLE,
                )
                .map_err(|e| MediaError::Io(format!("register socket: {e}")))?;
            let waker = Arc::new(
                Waker::new(poll.registry(), WAKER)
                    .map_err(|e| MediaError::Io(format!("waker: {e}")))?,
            );
            let (tx, rx) = mpsc::channel();
            let counters = Arc::new(WorkerCounters::default());
            let heartbeat = Arc::new(AtomicU64::new(0));
            let core = Core::new(
                CoreConfig {
                    local: addr,
                    max_sessions_per_room: cfg.max_sessions_per_room,
                    max_rooms: cfg.max_rooms_per_worker,
                },
                counters.clone(),
                Instant::now(),
            );
            let worker = Worker {
                index: i,
                core,
                socket,
                poll,
                rx,
                counters: counters.clone(),
                heartbeat: heartbeat.clone(),
                epoch,
                placement: placement.clone(),
                inbox,
                outbox,
                chat_log: chat_tx.clone(),
                recordings: HashMap::new(),
                last_handoff: epoch,
            };
            let thread = std::thread::Builder::new()
                .name(format!("media-worker-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| MediaError::Io(format!("spawn worker: {e}")))?;
            workers.push(WorkerHandle {
                tx,
                waker,
                counters,
                heartbeat,
                addr,
                thread: Mutex::new(Some(thread)),
            });
        }
        tracing::info!(workers = n, first = %workers[0].addr, "media plane started");
        Ok(MediaPlane {
            inner: Arc::new(Inner {
                cfg,
                workers,
                placement,
                epoch,
                stopped: AtomicBool::new(false),
                chat_log: Mutex::new(Some(chat_rx)),
            }),
        })
    }

    /// The reports of chat messages relayed (who, room, size; never the text), once: the
    /// control plane audits them.
    pub fn take_chat_log(&self) -> Option<ChatLog> {
        self.inner
            .chat_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Number of workers (`media_workers` in `GET /api/info`).
    pub fn workers(&self) -> usize {
        self.inner.workers.len()
    }

    /// Each worker's UDP address.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.workers.iter().map(|w| w.addr).collect()
    }

    /// Accept a WHIP offer for `room` from `participant` (the token's subject); `tag` stays with
    /// the session.
    pub async fn publish(
        &self,
        room: RoomKey,
        participant: ParticipantKey,
        source: Source,
        offer_sdp: &str,
        tag: SessionTag,
    ) -> Result<SessionAnswer, MediaError> {
        self.check_offer(offer_sdp)?;
        let offer = offer_sdp.to_owned();
        self.open(room.clone(), tag, move |reply| Command::Publish {
            room,
            user: participant,
            source,
            offer,
            reply,
        })
        .await
    }

    /// Accept a WHEP offer: its video m-lines are the slots, its audio m-lines the audio lines;
    /// `tag` stays with the session.
    /// `keep_chat`: the room may keep its last chat messages for late joiners (not in a
    /// `secure_view` room).
    pub async fn subscribe(
        &self,
        room: RoomKey,
        participant: ParticipantKey,
        layout: Layout,
        keep_chat: bool,
        offer_sdp: &str,
        tag: SessionTag,
    ) -> Result<SessionAnswer, MediaError> {
        self.check_offer(offer_sdp)?;
        let offer = offer_sdp.to_owned();
        self.open(room.clone(), tag, move |reply| Command::Subscribe {
            room,
            user: participant,
            layout,
            keep_chat,
            offer,
            reply,
        })
        .await
    }

    fn check_offer(&self, offer: &str) -> Result<(), MediaError> {
        let cfg = &self.inner.cfg;
        check_offer_size(offer, cfg.max_slots, cfg.max_audio_lines)
    }

    /// Trickled ICE candidates (`application/trickle-ice-sdpfrag`).
    pub async fn trickle(&self, session: &SessionId, sdpfrag: &str) -> Result<(), MediaError> {
        let w = self.worker_of(session)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            w,
            Command::Trickle {
                session: session.clone(),
                frag: sdpfrag.to_owned(),
                reply,
            },
        )?;
        wait(rx).await?
    }

    /// End a session (WHIP/WHEP DELETE).
    pub async fn end(&self, session: &SessionId) -> Result<(), MediaError> {
        let w = self.worker_of(session)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            w,
            Command::End {
                session: session.clone(),
                reply,
            },
        )?;
        wait(rx).await?
    }

    /// Change a subscriber's layout and height cap.
    pub async fn set_layout(
        &self,
        session: &SessionId,
        layout: Layout,
        max_height: Option<u32>,
    ) -> Result<(), MediaError> {
        let w = self.worker_of(session)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            w,
            Command::SetLayout {
                session: session.clone(),
                layout,
                max_height,
                reply,
            },
        )?;
        wait(rx).await?
    }

    /// Writes `message` on the chat channel of every page in a room of `org` (or in its room
    /// `room`): an urgent notice reaches the pages in a meeting without a request of theirs.
    pub fn notice(&self, org: &str, room: Option<&str>, message: Arc<[u8]>) {
        for w in 0..self.inner.workers.len() {
            let cmd = Command::Notice {
                org: org.to_owned(),
                room: room.map(str::to_owned),
                message: message.clone(),
            };
            if let Err(e) = self.send(w, cmd) {
                tracing::debug!(worker = w, "notice not handed to the worker: {e}");
            }
        }
    }

    /// Starts recording `room` (its video too when `video`): what it gathers goes to `sink` about every
    /// [`RECORDING_HANDOFF`]. The sink is dropped (its receiver sees the end) when the
    /// recording stops, the room empties, or the receiver is gone. `NotFound` if nobody is in
    /// the room.
    pub async fn start_recording(
        &self,
        room: &RoomKey,
        video: bool,
        sink: mpsc::SyncSender<Recorded>,
    ) -> Result<(), MediaError> {
        let w = *lock(&self.inner.placement)
            .rooms
            .get(room)
            .ok_or(MediaError::NotFound)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            w,
            Command::StartRecording {
                room: room.clone(),
                video,
                sink,
                reply,
            },
        )?;
        wait(rx).await?
    }

    /// Stops recording `room`: what it gathered last goes to the sink, which is then dropped.
    pub async fn stop_recording(&self, room: &RoomKey) {
        let Some(w) = lock(&self.inner.placement).rooms.get(room).copied() else {
            return;
        };
        let (reply, rx) = oneshot::channel();
        if self
            .send(
                w,
                Command::StopRecording {
                    room: room.clone(),
                    reply,
                },
            )
            .is_ok()
        {
            let _ = wait(rx).await;
        }
    }

    /// The room's publishers and subscribers; `None` if the room has no session.
    pub async fn room_info(&self, room: &RoomKey) -> Option<RoomInfo> {
        let w = *lock(&self.inner.placement).rooms.get(room)?;
        let (reply, rx) = oneshot::channel();
        self.send(
            w,
            Command::RoomInfo {
                room: room.clone(),
                reply,
            },
        )
        .ok()?;
        wait(rx).await.ok()?
    }

    /// Summed counters of every worker, for the metrics scrape.
    pub fn counters(&self) -> MediaCounters {
        MediaCounters::sum(self.inner.workers.iter().map(|w| &*w.counters))
    }

    /// When each worker last went round its loop. A worker whose instant lags far behind
    /// (seconds) is wedged; feed the oldest to the systemd watchdog decision.
    pub fn heartbeat(&self) -> Vec<Instant> {
        self.inner
            .workers
            .iter()
            .map(|w| self.inner.epoch + Duration::from_nanos(w.heartbeat.load(Ordering::Relaxed)))
            .collect()
    }

    /// True if every worker went round its loop within `max_age`.
    pub fn healthy(&self, max_age: Duration) -> bool {
        let now = Instant::now();
        !self.inner.stopped.load(Ordering::Relaxed)
            && self
                .heartbeat()
                .iter()
                .all(|h| now.saturating_duration_since(*h) <= max_age)
    }

    /// Stop every worker: sessions end, sockets close, threads are joined.
    pub fn shutdown(&self) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for w in &self.inner.workers {
            if w.tx.send(Command::Shutdown).is_ok() {
                let _ = w.waker.wake();
            }
        }
        for w in &self.inner.workers {
            let handle = w.thread.lock().ok().and_then(|mut t| t.take());
            if let Some(h) = handle
                && h.join().is_err()
            {
                tracing::error!(addr = %w.addr, "media worker had panicked");
            }
        }
    }

    /// Place `room` (its worker, or the least-loaded one with room to spare) and open a
    /// session there.
    async fn open(
        &self,
        room: RoomKey,
        tag: SessionTag,
        make: impl FnOnce(oneshot::Sender<Opened>) -> Command,
    ) -> Result<SessionAnswer, MediaError> {
        if self.inner.stopped.load(Ordering::Relaxed) {
            return Err(MediaError::ShuttingDown);
        }
        let w = {
            let mut p = lock(&self.inner.placement);
            let w = match p.rooms.get(&room) {
                Some(&w) => w,
                None => {
                    let max = self.inner.cfg.max_rooms_per_worker as u64;
                    let w = self
                        .inner
                        .workers
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| w.counters.rooms.load(Ordering::Relaxed) < max)
                        .min_by_key(|(_, w)| {
                            let c = &w.counters;
                            (
                                c.publishers.load(Ordering::Relaxed)
                                    + c.subscribers.load(Ordering::Relaxed),
                                c.rooms.load(Ordering::Relaxed),
                            )
                        })
                        .map(|(i, _)| i)
                        .ok_or(MediaError::WorkerBusy)?;
                    p.rooms.insert(room.clone(), w);
                    w
                }
            };
            *p.opening.entry(room.clone()).or_insert(0) += 1;
            w
        };
        let (reply, rx) = oneshot::channel();
        let sent = self.send(w, make(reply));
        let (result, room_lives) = match sent {
            Ok(()) => match wait(rx).await {
                Ok(opened) => opened,
                Err(e) => (Err(e), true),
            },
            Err(e) => (Err(e), true),
        };
        let mut p = lock(&self.inner.placement);
        if let Some(n) = p.opening.get_mut(&room) {
            *n -= 1;
            if *n == 0 {
                p.opening.remove(&room);
            }
        }
        // A failed first open leaves no room on the worker: unmap it unless another open for
        // it is on its way.
        if !room_lives && !p.opening.contains_key(&room) && p.rooms.get(&room) == Some(&w) {
            p.rooms.remove(&room);
        }
        // The worker mapped the session as it opened it; if it is gone already, so is its tag.
        if let Ok(a) = &result
            && let Some(placed) = p.sessions.get_mut(&a.session)
        {
            placed.tag = Some(tag);
        }
        result
    }

    fn worker_of(&self, session: &SessionId) -> Result<usize, MediaError> {
        lock(&self.inner.placement)
            .sessions
            .get(session)
            .map(|p| p.worker)
            .ok_or(MediaError::NotFound)
    }

    /// The tag its opener attached to the live session `id`.
    pub fn tag(&self, id: &SessionId) -> Option<SessionTag> {
        lock(&self.inner.placement)
            .sessions
            .get(id)
            .and_then(|p| p.tag.clone())
    }

    /// The rooms with sessions (or opens in flight) on this node.
    pub fn rooms(&self) -> std::collections::HashSet<RoomKey> {
        lock(&self.inner.placement).rooms.keys().cloned().collect()
    }

    /// Every live session and its tag.
    pub fn tags(&self) -> Vec<(SessionId, SessionTag)> {
        lock(&self.inner.placement)
            .sessions
            .iter()
            .filter_map(|(id, p)| p.tag.clone().map(|t| (id.clone(), t)))
            .collect()
    }

    fn send(&self, w: usize, cmd: Command) -> Result<(), MediaError> {
        if self.inner.stopped.load(Ordering::Relaxed) {
            return Err(MediaError::ShuttingDown);
        }
        let worker = &self.inner.workers[w];
        worker.tx.send(cmd).map_err(|_| MediaError::WorkerBusy)?;
        worker
            .waker
            .wake()
            .map_err(|e| MediaError::Io(format!("wake: {e}")))
    }
}

async fn wait<T>(rx: oneshot::Receiver<T>) -> Result<T, MediaError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
        Ok(Ok(v)) => Ok(v),
        // The worker dropped the reply (it stopped) or did not answer in time.
        Ok(Err(_)) | Err(_) => Err(MediaError::WorkerBusy),
    }
}

struct Worker {
    index: usize,
    core: Core,
    socket: UdpSocket,
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    counters: Arc<WorkerCounters>,
    heartbeat: Arc<AtomicU64>,
    epoch: Instant,
    placement: Arc<Mutex<Placement>>,
    inbox: Reader,
    outbox: Writer,
    chat_log: tokio::sync::mpsc::Sender<ChatSent>,
    /// Rooms being recorded here, with where their recordings go.
    recordings: HashMap<RoomKey, mpsc::SyncSender<Recorded>>,
    last_handoff: Instant,
}

/// How often a worker hands what its recordings gathered to their writers.
pub const RECORDING_HANDOFF: Duration = Duration::from_millis(100);

/// The worker's socket as the core sees it: datagrams queue in the outbox.
struct SocketWire<'a> {
    socket: &'a UdpSocket,
    outbox: &'a mut Writer,
    counters: &'a WorkerCounters,
}

impl Wire for SocketWire<'_> {
    fn send(&mut self, to: SocketAddr, data: &[u8]) {
        let refused = self.outbox.push(self.socket, to, data);
        count_refused(self.counters, refused);
    }
}

fn count_refused(counters: &WorkerCounters, refused: usize) {
    for _ in 0..refused {
        counters.dropped(DropReason::SendFailed);
    }
}

/// Ask for larger socket buffers, so a burst of copies (a keyframe to many subscribers) is not
/// refused by a full send buffer. The kernel caps it at `net.core.wmem_max`/`rmem_max`.
fn grow_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    tracing::debug!(
        send = s.send_buffer_size().unwrap_or(0),
        recv = s.recv_buffer_size().unwrap_or(0),
        "media socket buffers granted"
    );
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let mut more_to_read = false;
        loop {
            let now = Instant::now();
            set(
                &self.heartbeat,
                u64::try_from(now.saturating_duration_since(self.epoch).as_nanos())
                    .unwrap_or(u64::MAX),
            );
            let sleep = if more_to_read {
                Duration::ZERO
            } else {
                self.core
                    .poll_timeout()
                    .saturating_duration_since(now)
                    .min(MAX_SLEEP)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(sleep))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(worker = self.index, "poll failed: {e}");
                return;
            }
            if !self.commands() {
                return;
            }
            more_to_read = self.read();
            // Timers due without any read (and the allocation tick).
            self.release();
            self.settle_gone();
            self.report_chat();
            self.hand_off_recordings(false);
        }
    }

    /// Hands each recording what it gathered, every [`RECORDING_HANDOFF`] (`now`: at once).
    /// A recording whose room is gone, or whose writer is gone or stuck, ends here.
    fn hand_off_recordings(&mut self, now: bool) {
        if self.recordings.is_empty() || !now && self.last_handoff.elapsed() < RECORDING_HANDOFF {
            return;
        }
        self.last_handoff = Instant::now();
        let core = &mut self.core;
        self.recordings.retain(|room, sink| {
            let Some(r) = core.take_recorded(room) else {
                return false;
            };
            match sink.try_send(r) {
                Ok(()) => true,
                Err(mpsc::TrySendError::Full(_)) => {
                    tracing::warn!(%room, "the recording's writer fell behind; the recording ends");
                    core.stop_recording(room);
                    false
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    core.stop_recording(room);
                    false
                }
            }
        });
    }

    /// Hand the chat messages relayed to the audit log's queue.
    fn report_chat(&mut self) {
        for c in self.core.take_chat_sent() {
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = self.chat_log.try_send(c)
            {
                tracing::warn!(
                    worker = self.index,
                    "chat audit queue full: a report was lost"
                );
            }
        }
    }

    /// Run the sessions that are due (str0m releases written copies on a session's next
    /// timeout, every one of them since no pacer holds any back) and send what they produced.
    fn release(&mut self) {
        let mut wire = SocketWire {
            socket: &self.socket,
            outbox: &mut self.outbox,
            counters: &self.counters,
        };
        self.core.handle_timeout(Instant::now(), &mut wire);
        self.flush();
    }

    /// Send what the outbox holds, then record the forward delay of the datagrams whose last
    /// copies just left: from the read that brought each to now.
    fn flush(&mut self) {
        count_refused(&self.counters, self.outbox.flush(&self.socket));
        let now = Instant::now();
        for t in self.core.take_left() {
            let d = now.saturating_duration_since(t);
            self.counters
                .observe_delay(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        }
    }

    /// Read up to [`RECV_BUDGET`] datagrams; true if the budget ran out first. Every
    /// `recvmmsg` batch is written to the subscribers' streams, then one pass over the due
    /// sessions releases every copy of it before the next read: a subscriber's session runs
    /// at most once per batch (once per [`RELEASE_AFTER`] copies in a larger fan-out), and no
    /// copy waits for later reads.
    fn read(&mut self) -> bool {
        let mut budget = RECV_BUDGET;
        while budget > 0 {
            match self.inbox.recv(&self.socket) {
                Ok(n) => {
                    let t0 = Instant::now();
                    for i in 0..n {
                        let Worker {
                            core,
                            socket,
                            counters,
                            inbox,
                            outbox,
                            ..
                        } = self;
                        let Some((src, data)) = inbox.get(i) else {
                            counters.dropped(DropReason::UnknownSource);
                            continue;
                        };
                        let mut wire = SocketWire {
                            socket,
                            outbox,
                            counters,
                        };
                        core.handle_datagram(src, data, t0, &mut wire);
                        // A large fan-out does not wait for the rest of the batch.
                        if core.written() >= RELEASE_AFTER {
                            self.release();
                        }
                    }
                    self.release();
                    budget = budget.saturating_sub(n.max(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // Linux reports an earlier send's ICMP error on a later receive; nothing was
                // read, go on (the budget bounds the loop).
                Err(_) => budget -= 1,
            }
        }
        true
    }

    /// Apply queued commands; false on shutdown.
    fn commands(&mut self) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            let now = Instant::now();
            let mut wire = SocketWire {
                socket: &self.socket,
                outbox: &mut self.outbox,
                counters: &self.counters,
            };
            match cmd {
                Command::Publish {
                    room,
                    user,
                    source,
                    offer,
                    reply,
                } => {
                    let r = self
                        .core
                        .publish(&room, &user, source, &offer, now, &mut wire);
                    self.opened(&room, &r);
                    let _ = reply.send((r, self.core.has_room(&room)));
                }
                Command::Subscribe {
                    room,
                    user,
                    layout,
                    keep_chat,
                    offer,
                    reply,
                } => {
                    let r = self
                        .core
                        .subscribe(&room, &user, layout, keep_chat, &offer, now, &mut wire);
                    self.opened(&room, &r);
                    let _ = reply.send((r, self.core.has_room(&room)));
                }
                Command::Trickle {
                    session,
                    frag,
                    reply,
                } => {
                    let _ = reply.send(self.core.trickle(&session, &frag, now, &mut wire));
                }
                Command::End { session, reply } => {
                    let _ = reply.send(self.core.end(&session, now, &mut wire));
                }
                Command::SetLayout {
                    session,
                    layout,
                    max_height,
                    reply,
                } => {
                    let r = self
                        .core
                        .set_layout(&session, layout, max_height, now, &mut wire);
                    let _ = reply.send(r);
                }
                Command::RoomInfo { room, reply } => {
                    let _ = reply.send(self.core.room_info(&room));
                }
                Command::Notice { org, room, message } => {
                    self.core.notice(&org, room.as_deref(), &message, &mut wire);
                }
                Command::StartRecording {
                    room,
                    video,
                    sink,
                    reply,
                } => {
                    let r = self.core.start_recording(&room, video, now, &mut wire);
                    if r.is_ok() {
                        self.recordings.insert(room, sink);
                    }
                    let _ = reply.send(r);
                }
                Command::StopRecording { room, reply } => {
                    if let Some(sink) = self.recordings.remove(&room)
                        && let Some(last) = self.core.stop_recording(&room)
                    {
                        let _ = sink.try_send(last);
                    }
                    let _ = reply.send(());
                }
                Command::Shutdown => {
                    self.core.close_all(now, &mut wire);
                    self.flush();
                    self.settle_gone();
                    return false;
                }
            }
            self.settle_gone();
        }
        true
    }

    /// Record a new session in the placement map before its id is handed out.
    fn opened(&self, room: &RoomKey, r: &Result<SessionAnswer, MediaError>) {
        if let Ok(a) = r {
            let mut p = lock(&self.placement);
            p.sessions.insert(
                a.session.clone(),
                Placed {
                    worker: self.index,
                    tag: None,
                },
            );
            p.rooms.insert(room.clone(), self.index);
        }
    }

    /// Unmap removed sessions and rooms (a room only if no open for it is in flight).
    fn settle_gone(&mut self) {
        if !self.core.has_gone() {
            return;
        }
        let (sessions, rooms) = self.core.take_gone();
        let mut p = lock(&self.placement);
        for s in sessions {
            p.sessions.remove(&s);
        }
        for r in rooms {
            if !p.opening.contains_key(&r) && p.rooms.get(&r) == Some(&self.index) {
                p.rooms.remove(&r);
            }
        }
    }
}
