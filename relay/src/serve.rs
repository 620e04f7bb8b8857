//! `relay serve`: starts every plane, tells systemd when they are up, keeps the watchdog fed while
//! the serving loops turn, and shuts down cleanly on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio::net::TcpListener;

use crate::cluster::Cluster;
use crate::cluster::directory::RedisDirectory;
use crate::cluster::placement::Node;
use crate::config::Config;
use crate::control::Control;
use crate::control::audit::AuditLog;
use crate::control::unix_now;
use crate::control::witness::Witnesses;
use crate::datadir::{self, DataDir};
use crate::files::server::FilePlane;
use crate::http::notice_hub::NoticeHub;
use crate::http::sessions::MediaRoutes;
use crate::http::{self, AppState, Info, Readiness};
use crate::media::MediaPlane;
use crate::metrics::{Metrics, ScrapeCollector};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("data directory: {0}")]
    DataDir(datadir::DataDirError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("media plane: {0}")]
    Media(crate::media::MediaError),
    #[error("file plane: {0}")]
    Files(crate::files::server::FilesError),
    #[error("registry: {0}")]
    Registry(crate::control::registry::RegistryError),
    #[error("cluster: {0}")]
    Cluster(crate::cluster::ClusterError),
    #[error(transparent)]
    Io(std::io::Error),
}

/// Liveness of the serving loops, for the systemd watchdog: each loop beats as it turns, and the
/// watchdog is fed only while every loop has beaten recently, so a wedged loop gets the service
/// restarted.
#[derive(Debug, Clone)]
pub struct Heartbeats {
    start: Instant,
    loops: Arc<std::sync::Mutex<Vec<LoopBeat>>>,
}

/// A loop's name and the time of its last beat, in milliseconds since start.
type LoopBeat = (&'static str, Arc<AtomicU64>);

/// One loop's heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Heartbeats {
    pub fn new() -> Heartbeats {
        Heartbeats {
            start: Instant::now(),
            loops: Default::default(),
        }
    }

    pub fn register(&self, name: &'static str) -> Heartbeat {
        let last_ms = Arc::new(AtomicU64::new(self.start.elapsed().as_millis() as u64));
        self.loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, last_ms.clone()));
        Heartbeat {
            start: self.start,
            last_ms,
        }
    }

    /// Loops that have not beaten within `limit`.
    pub fn stale(&self, limit: Duration) -> Vec<&'static str> {
        let now = self.start.elapsed().as_millis() as u64;
        let loops = self.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops
            .iter()
            .filter(|(_, l)| {
                now.saturating_sub(l.load(Ordering::Relaxed)) > limit.as_millis() as u64
            })
            .map(|(n, _)| *n)
            .collect()
    }
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats::new()
    }
}

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The message of the line logged once every plane is up. Its fields name what was bound:
/// `http`, `media` (the workers' addresses, comma-separated), `files` and `data`. Tools that
/// start a relay on port 0 read the addresses from it (`relay_kit::process::startup_field`).
pub const UP_MESSAGE: &str = "relay is up";

/// Runs the appliance until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let dir = DataDir::new(&config.data_dir);
    let (secrets, fresh) = dir
        .init_or_open(&config.tls.subject_alt_names)
        .map_err(ServeError::DataDir)?;
    if fresh {
        tracing::info!(data = %dir.root.display(), "initialised a new data directory");
    }
    let registry = crate::node::registry(&config, &dir).map_err(ServeError::Registry)?;
    let signing_key = crate::node::signing_key(&config, &dir).map_err(ServeError::DataDir)?;
    let syslog = Some(config.audit.syslog.as_str()).filter(|s| !s.is_empty());
    dir.record_witness(syslog).map_err(ServeError::DataDir)?;
    let witnesses = Witnesses::new(syslog).map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    if !witnesses.any() {
        tracing::warn!(
            "the audit log has no outside witness: set audit.syslog to a log server, or run under systemd"
        );
    }
    let anchor = crate::node::registry(&config, &dir).map_err(ServeError::Registry)?;
    let audit = AuditLog::witnessed(
        &dir.audit_log(),
        anchor,
        witnesses,
        config.audit.head_interval,
    )
    .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    let metrics = Metrics::new();
    let control = Arc::new(Control::new(
        registry,
        signing_key,
        audit,
        metrics,
        config.tokens.clone(),
        unix_now,
    ));

    let readiness = Readiness::default();
    let control_ready = readiness.plane("control");
    let media_ready = readiness.plane("media");
    let files_ready = readiness.plane("files");

    let media = MediaPlane::start(config.media.plane()).map_err(ServeError::Media)?;
    control
        .metrics()
        .register(Box::new(media_metrics(media.clone())));
    let files = Arc::new(
        FilePlane::start(&config.files, &dir.root, &secrets, control.clone())
            .map_err(ServeError::Files)?,
    );
    control
        .metrics()
        .register(Box::new(files_metrics(Arc::downgrade(&files))));
    // In a cluster the other nodes send downloads of the files stored here to this file plane.
    if let Err(e) = control
        .registry()
        .announce_file_plane(&files.local_addr().to_string(), &secrets.cert_der)
    {
        tracing::warn!(error = %e, "the file plane could not be announced to the registry");
    }
    // Recordings a crash cut short become files before anything else is recorded.
    for f in crate::recordings::recover(files.service(), &control) {
        tracing::info!(file = %f.id, name = %f.name, size = f.size, "recording closed after a restart");
    }
    let recordings =
        crate::recordings::Recordings::new(files.service().clone(), control.clone(), media.clone());
    control
        .metrics()
        .register(Box::new(recording_metrics(Arc::downgrade(&recordings))));
    control
        .metrics()
        .register(Box::new(audit_metrics(control.audit().counters().clone())));
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        quic: Some(files.local_addr().to_string()),
        cert_sha256: hex::encode(sha2::Sha256::digest(&secrets.cert_der)),
        media_workers: media.workers(),
    };
    let listen = config.http.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Bind(listen, e))?;
    let local = listener.local_addr().map_err(ServeError::Io)?;
    let cluster = join_cluster(&config, local, &media).await?;
    if let Some(c) = &cluster {
        control
            .metrics()
            .register(Box::new(cluster_metrics(Arc::downgrade(c))));
        tokio::spawn(renew_leases(c.clone(), media.clone()));
    }
    let state = Arc::new(AppState {
        control: control.clone(),
        readiness,
        info,
        audit_path: dir.audit_log(),
        media: Some(MediaRoutes::new(media.clone())),
        notices: NoticeHub::new(&control),
        recordings: Some(recordings.clone()),
        cluster: cluster.clone(),
    });
    media_ready.store(true, Ordering::Release);
    files_ready.store(true, Ordering::Release);

    let heartbeats = Heartbeats::new();
    let http_beat = heartbeats.register("http");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            http_beat.beat();
        }
    });
    // The media workers beat on their own; their heartbeat counts only while every one turns.
    let media_beat = heartbeats.register("media");
    let media_watch = media.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if media_watch.healthy(Duration::from_secs(3)) {
                media_beat.beat();
            }
        }
    });
    // Live sessions are held to the registry: when it may have changed (here or through
    // `relay admin --data`), every session's token is checked again, so a removed user, a lowered
    // clearance or a revoked device or token ends its sessions within a second; and notices
    // written since go out to the pages.
    let enforce_state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut seen = None;
        loop {
            tick.tick().await;
            let version = enforce_state.control.registry_version();
            if seen != Some(version) {
                seen = Some(version);
                enforce_state.notices.catch_up(
                    &enforce_state.control,
                    enforce_state.media.as_ref().map(|m| &m.plane),
                );
                if let Some(m) = &enforce_state.media {
                    m.enforce(&enforce_state.control).await;
                }
                if let Some(r) = &enforce_state.recordings {
                    r.enforce();
                }
            }
        }
    });
    let chat_state = state.clone();
    tokio::spawn(async move {
        if let Some(m) = &chat_state.media {
            m.audit_chat(&chat_state.control).await;
        }
    });
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(feed_watchdog(heartbeats.clone(), period));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_http = stop_rx.clone();
    let server =
        axum::serve(listener, http::router(state.clone())).with_graceful_shutdown(async move {
            let _ = stop_http.wait_for(|s| *s).await;
        });
    let server = tokio::spawn(server.into_future());

    let stop = shutdown_signal();
    control_ready.store(true, Ordering::Release);
    if state.readiness.waiting().is_empty() {
        notify(&[sd_notify::NotifyState::Ready]);
    }
    let media_ports: Vec<String> = media
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(
        http = %local,
        media = %media_ports.join(","),
        files = %files.local_addr(),
        data = %dir.root.display(),
        "{UP_MESSAGE}"
    );
    if let Some(token) = demo_token(&control) {
        tracing::info!(
            "open the meeting: http://{local}/#token={token}&room={}",
            datadir::DEMO_ROOM
        );
    }
    tracing::info!(
        "get a token: relay token --data {} --org {} --user {} --device {} --room {}",
        dir.root.display(),
        datadir::DEMO_ORG,
        datadir::DEMO_USER,
        datadir::DEMO_DEVICE,
        datadir::DEMO_ROOM
    );

    stop.await;
    tracing::info!("stopping: no new requests, draining open ones");
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(c) = cluster {
        // Hand the rooms' homes back first, so new joins go to the other nodes at once.
        let _ = tokio::task::spawn_blocking(move || c.drain()).await;
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.http.drain_timeout, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "http server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "http server task failed"),
        Err(_) => tracing::warn!("drain timeout passed; dropping open requests"),
    }
    recordings.stop_all().await;
    drop(recordings);
    media.shutdown();
    files.shutdown().await;
    // Dropping the last handle of the control plane writes out the audit log.
    drop(state);
    drop(control);
    tracing::info!("stopped");
    Ok(())
}

/// Joins the cluster when `cluster.redis_url` is set: the node announces its public URL (the
/// configured one, or the address HTTP is bound to) and its media addresses.
async fn join_cluster(
    config: &Config,
    http: SocketAddr,
    media: &MediaPlane,
) -> Result<Option<Arc<Cluster>>, ServeError> {
    if config.cluster.redis_url.is_empty() {
        return Ok(None);
    }
    let url = if config.cluster.public_url.is_empty() {
        format!("http://{http}")
    } else {
        config.public_url()
    };
    let me = Node {
        id: config.node_id(),
        url,
        media: media
            .local_addrs()
            .iter()
            .map(ToString::to_string)
            .collect(),
        load: 0,
    };
    let redis = config.cluster.redis_url.clone();
    let lease = config.cluster.lease;
    let joined = tokio::task::spawn_blocking(move || {
        let dir = RedisDirectory::connect(&redis)?;
        Cluster::join(me, lease, Box::new(dir))
    })
    .await
    .map_err(|e| ServeError::Io(std::io::Error::other(e)))?
    .map_err(ServeError::Cluster)?;
    tracing::info!(node = %joined.node_id(), nodes = joined.live_nodes(), "joined the cluster");
    Ok(Some(Arc::new(joined)))
}

/// Renews the node's lease (with its load) and its rooms' leases, three times a lease, until the
/// node drains.
async fn renew_leases(cluster: Arc<Cluster>, media: MediaPlane) {
    let mut tick = tokio::time::interval(cluster.renew_every());
    loop {
        tick.tick().await;
        let c = media.counters();
        let load = c.publishers + c.subscribers;
        let rooms = media.rooms();
        let cl = cluster.clone();
        match tokio::task::spawn_blocking(move || cl.renew(load, &rooms)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the cluster leases"),
            Err(_) => return,
        }
    }
}

/// How long the start-up link's demo token lasts.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A short-lived token for the start-up link, while the `demo` organisation, its user and its
/// device are registered.
fn demo_token(control: &Control) -> Option<String> {
    let req = crate::control::MintRequest {
        org: datadir::DEMO_ORG.into(),
        user: datadir::DEMO_USER.into(),
        device: datadir::DEMO_DEVICE.into(),
        clearance: None,
        room: None,
        grants: Some(vec![
            crate::control::token::Grant::Publish,
            crate::control::token::Grant::Subscribe,
        ]),
        ttl: Some(DEMO_TOKEN_TTL),
        not_after: None,
    };
    control.registry().org(datadir::DEMO_ORG).ok().flatten()?;
    match control.mint(&req, None) {
        Ok(m) => Some(m.token),
        Err(e) => {
            tracing::info!(error = %e, "no demo link");
            None
        }
    }
}

/// The media plane's counters, read at scrape time.
fn media_metrics(media: MediaPlane) -> impl prometheus::core::Collector {
    const NAMES: [(&str, &str); 12] = [
        ("relay_rooms", "Rooms with at least one session."),
        ("relay_publishers", "Publishing sessions."),
        ("relay_subscribers", "Subscribing sessions."),
        (
            "relay_media_packets_received_total",
            "RTP packets received from publishers.",
        ),
        (
            "relay_media_packets_forwarded_total",
            "RTP packets sent to subscribers.",
        ),
        (
            "relay_media_bytes_forwarded_total",
            "RTP payload bytes sent to subscribers.",
        ),
        (
            "relay_media_packets_dropped_total",
            "Packets not forwarded, by reason.",
        ),
        (
            "relay_layer_switches_total",
            "Slot switches to another source or layer.",
        ),
        (
            "relay_keyframe_requests_total",
            "Keyframe requests sent to publishers.",
        ),
        (
            "relay_forward_delay_seconds",
            "Time from receiving a packet to sending its copies.",
        ),
        ("relay_media_workers", "Media worker threads."),
        (
            "relay_media_bandwidth_reports_total",
            "Receivers' bandwidth estimates (REMB) that reached subscribers' sessions.",
        ),
    ];
    ScrapeCollector::new(&NAMES, move |f| {
        let c = media.counters();
        let help = |i: usize| NAMES[i].1;
        f.gauge(NAMES[0].0, help(0), c.rooms as f64)
            .gauge(NAMES[1].0, help(1), c.publishers as f64)
            .gauge(NAMES[2].0, help(2), c.subscribers as f64)
            .counter(NAMES[3].0, help(3), c.packets_received)
            .counter(NAMES[4].0, help(4), c.packets_forwarded)
            .counter(NAMES[5].0, help(5), c.bytes_forwarded)
            .labelled_counter(NAMES[6].0, help(6), "reason", &c.dropped)
            .counter(NAMES[7].0, help(7), c.layer_switches)
            .counter(NAMES[8].0, help(8), c.keyframe_requests)
            .histogram(
                NAMES[9].0,
                help(9),
                c.forward_delay.bounds,
                &c.forward_delay.cumulative,
                c.forward_delay.count,
                c.forward_delay.sum_seconds,
            )
            .gauge(NAMES[10].0, help(10), media.workers() as f64)
            .counter(NAMES[11].0, help(11), c.bandwidth_reports);
    })
}

/// The audit chain's head and what its outside witness was sent, read at scrape time.
fn audit_metrics(
    c: Arc<crate::control::witness::WitnessCounters>,
) -> impl prometheus::core::Collector {
    const NAMES: [(&str, &str); 4] = [
        (
            "relay_audit_lines",
            "Lines of the audit chain written so far (the head's sequence number).",
        ),
        (
            "relay_audit_head",
            "The first 48 bits of the hash of the audit chain's last line, as a number.",
        ),
        (
            "relay_audit_witness_sent_total",
            "Audit messages written to the syslog witness.",
        ),
        (
            "relay_audit_witness_dropped_total",
            "Audit messages dropped while the syslog witness was away and its queue full.",
        ),
    ];
    ScrapeCollector::new(&NAMES, move |f| {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let help = |i: usize| NAMES[i].1;
        f.gauge(NAMES[0].0, help(0), load(&c.head_lines) as f64)
            .gauge(NAMES[1].0, help(1), load(&c.head_prefix) as f64)
            .counter(NAMES[2].0, help(2), load(&c.sent))
            .counter(NAMES[3].0, help(3), load(&c.dropped));
    })
}

/// The file plane's counters, read at scrape time.
/// Holds the plane weakly: the plane holds the control plane, whose metrics hold this, and a
/// strong handle here would keep both alive past the end (the registry's connection open, its
/// write-ahead log left behind).
fn files_metrics(files: std::sync::Weak<FilePlane>) -> impl prometheus::core::Collector {
    const NAMES: [(&str, &str); 9] = [
        (
            "relay_files_bytes_received_total",
            "Chunk bytes received by the file plane, as they travelled.",
        ),
        (
            "relay_files_bytes_deduplicated_total",
            "Logical bytes uploads did not send because their organisation held them.",
        ),
        (
            "relay_files_store_bytes",
            "Bytes of chunk data in the store, each chunk counted once.",
        ),
        (
            "relay_files_transfers_active",
            "Open file-plane connections.",
        ),
        (
            "relay_files_chunks_rejected_total",
            "Chunks refused on arrival for not matching their hash.",
        ),
        (
            "relay_files_chunks_corrupt_total",
            "Stored chunks found not matching their hash when read; never served.",
        ),
        (
            "relay_files_connections_total",
            "File-plane connections whose handshake completed, by the QUIC thread that took them.",
        ),
        (
            "relay_files_chunks_from_memory_total",
            "Chunk reads answered from the chunks kept in memory, not from disk.",
        ),
        (
            "relay_files_recent_bytes",
            "Bytes charged for the chunks kept in memory (read more than once lately).",
        ),
    ];
    ScrapeCollector::new(&NAMES, move |f| {
        let Some(files) = files.upgrade() else {
            return;
        };
        let c = files.counters();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let help = |i: usize| NAMES[i].1;
        f.counter(NAMES[0].0, help(0), load(&c.bytes_received))
            .counter(NAMES[1].0, help(1), load(&c.bytes_deduplicated))
            .gauge(NAMES[2].0, help(2), files.store().stored_bytes() as f64)
            .gauge(NAMES[3].0, help(3), load(&c.transfers_active) as f64)
            .counter(NAMES[4].0, help(4), load(&c.chunks_rejected))
            .counter(NAMES[5].0, help(5), files.store().corrupt_reads());
        let (from_memory, recent) = files.store().recent_reads();
        f.counter(NAMES[7].0, help(7), from_memory)
            .gauge(NAMES[8].0, help(8), recent as f64);
        let accepted = files.accepted();
        let threads: Vec<String> = (0..accepted.len()).map(|i| i.to_string()).collect();
        let by_thread: Vec<(&str, u64)> =
            threads.iter().map(String::as_str).zip(accepted).collect();
        f.labelled_counter(NAMES[6].0, help(6), "thread", &by_thread);
    })
}

/// The cluster's gauges, read at scrape time (held weakly, as the files').
fn cluster_metrics(c: std::sync::Weak<Cluster>) -> impl prometheus::core::Collector {
    const NAMES: [(&str, &str); 2] = [
        (
            "relay_cluster_nodes",
            "Live nodes in the room directory at the last look.",
        ),
        (
            "relay_cluster_redirects_total",
            "Requests sent to the room's home on another node.",
        ),
    ];
    ScrapeCollector::new(&NAMES, move |f| {
        let Some(c) = c.upgrade() else {
            return;
        };
        f.gauge(NAMES[0].0, NAMES[0].1, c.live_nodes() as f64)
            .counter(NAMES[1].0, NAMES[1].1, c.redirects());
    })
}

/// The recordings' gauge and byte counter, read at scrape time (held weakly, as the files').
fn recording_metrics(
    r: std::sync::Weak<crate::recordings::Recordings>,
) -> impl prometheus::core::Collector {
    const NAMES: [(&str, &str); 2] = [
        ("relay_recordings_active", "Recordings running now."),
        (
            "relay_recording_bytes_total",
            "Bytes recordings have written into the file store.",
        ),
    ];
    ScrapeCollector::new(&NAMES, move |f| {
        let Some(r) = r.upgrade() else {
            return;
        };
        f.gauge(NAMES[0].0, NAMES[0].1, r.active() as f64).counter(
            NAMES[1].0,
            NAMES[1].1,
            r.bytes_total(),
        );
    })
}

/// Watches SIGTERM and SIGINT from this call on, and resolves at the first of them. Called before
/// the relay says it is up: until a signal is watched, it ends the process unhandled, and a
/// supervisor may stop the relay as soon as it is up.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let mut term = match term {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                return std::future::pending().await;
            }
        };
        match int {
            Ok(mut int) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            Err(_) => {
                term.recv().await;
            }
        }
    }
}

async fn feed_watchdog(heartbeats: Heartbeats, period: Duration) {
    let mut tick = tokio::time::interval(period / 3);
    loop {
        tick.tick().await;
        let stale = heartbeats.stale(period / 2);
        if stale.is_empty() {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(loops = ?stale, "serving loops are not turning; withholding the watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_goes_stale() {
        let hb = Heartbeats::new();
        let a = hb.register("a");
        let _b = hb.register("b");
        std::thread::sleep(Duration::from_millis(30));
        a.beat();
        assert_eq!(hb.stale(Duration::from_millis(20)), vec!["b"]);
        assert!(hb.stale(Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn the_kit_reads_the_startup_line_the_relay_writes() {
        assert_eq!(UP_MESSAGE, relay_kit::process::UP_MESSAGE);
    }
}
