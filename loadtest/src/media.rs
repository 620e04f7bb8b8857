//! `relay-loadtest media`: rooms of simulated publishers and subscribers against a relay, and
//! what it costs the relay per forwarded packet.
//!
//! The run: measure the loopback floor (so the relay's figure has a same-machine yardstick),
//! start a relay (or use `--target`), register one user per participant and the rooms, mint one
//! token per participant, open every WHIP and WHEP session, wait for everyone to join, warm up,
//! then measure a window: the clients' own counts, one-way delay and loss, and the relay's CPU
//! time, memory and `/metrics` counters over the same window. Everything is bounded by a
//! deadline computed up front; the run stops by itself.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::appliance::{self, Api, Cpu, Metrics, RelayIo};
use crate::client::{Client, Role};
use crate::driver::{self, Group, GroupResult};
use crate::floor;
use crate::janus;
use crate::plot;
use crate::sys;
use crate::target::{Layout, Options, PeerKind, Sfu};
use relay_kit::peer::Peer;

/// How long everyone may take to join before the run goes on without them.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEVICE: &str = "relay-loadtest";

/// The run's settings, as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// What was loaded: `relay` or `janus`.
    pub sfu: &'static str,
    pub target: Option<String>,
    pub rooms: usize,
    pub publishers_per_room: usize,
    pub subscribers_per_room: usize,
    pub meeting: bool,
    pub slots: usize,
    pub layout: Layout,
    pub warmup_seconds: f64,
    pub ramp_up_seconds: f64,
    pub duration_seconds: f64,
    pub relay_media_workers: usize,
    /// `media.io_batch` of the relay this started (not known for --target).
    pub relay_io_batch: u16,
    /// `media.io` of the relay this started.
    pub relay_io: RelayIo,
    pub client_threads: usize,
    pub sessions: usize,
    /// Relays of the cluster this started (`--nodes`; 1: one relay).
    pub nodes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Distribution {
    pub samples: usize,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Distribution {
    fn of(mut v: Vec<f64>) -> Distribution {
        if v.is_empty() {
            return Distribution::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Distribution {
            samples: v.len(),
            median: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// The relay's side of the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayFigures {
    pub packets_received: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub packets_dropped: u64,
    pub layer_switches: u64,
    pub keyframe_requests: u64,
    pub forwarded_per_second: f64,
    /// Who counted the forwarded packets: the SFU itself (`sfu`, our relay's `/metrics`), or
    /// its subscribers (`subscribers`: Janus has no such counter), in which case the counts
    /// above other than these are zero.
    pub forwarded_counted_by: &'static str,
    /// Whole process, user + system.
    pub cpu_seconds: f64,
    /// Where the CPU time came from: `proc` (our own child) or `metrics` (`--target`).
    pub cpu_source: &'static str,
    /// The `media-worker-*` threads alone, when the process is ours.
    pub media_workers_cpu_seconds: Option<f64>,
    /// CPU-seconds per wall-second over the window (1.0 = one core busy).
    pub cores_busy: f64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// From the `relay_forward_delay_seconds` histogram over the window, interpolated.
    pub forward_delay_p50_ms: Option<f64>,
    pub forward_delay_p99_ms: Option<f64>,
    /// Each node of a cluster (`--target` with several URLs) on its own; empty for one relay.
    pub nodes: Vec<NodeFigures>,
    /// Sessions the SFU counted open at the window's end (0 where it counts none).
    pub sessions_at_end: u64,
}

/// One node of a cluster over the window, from its own `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFigures {
    pub url: String,
    pub packets_forwarded: u64,
    pub cpu_seconds: f64,
    pub forwarded_per_cpu_second: f64,
}

impl NodeFigures {
    /// Each node's share of the window from snapshots `a` and `b` (the same nodes in order).
    fn of(a: &[(String, Metrics)], b: &[(String, Metrics)]) -> Vec<NodeFigures> {
        a.iter()
            .zip(b)
            .map(|((url, x), (_, y))| {
                let packets_forwarded = (y.packets_forwarded - x.packets_forwarded).max(0.0) as u64;
                let cpu_seconds = (y.process_cpu_seconds - x.process_cpu_seconds).max(0.0);
                NodeFigures {
                    url: url.clone(),
                    packets_forwarded,
                    cpu_seconds,
                    forwarded_per_cpu_second: packets_forwarded as f64 / cpu_seconds.max(1e-9),
                }
            })
            .collect()
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_unix: u64,
    pub setup: Setup,
    pub window_seconds: f64,
    pub joined: usize,
    pub expected_joins: usize,
    /// Seconds from sending the offer to the first video packet (subscribers) or to the
    /// connection being up (publishers).
    pub join_seconds: Distribution,
    /// Seconds from the first session's offer to the last one handed to its client thread
    /// (about `--ramp-up` when given).
    pub opened_seconds: f64,
    pub video_packets_sent: u64,
    pub audio_packets_sent: u64,
    pub video_packets_received: u64,
    pub audio_packets_received: u64,
    pub keyframes_sent: u64,
    pub keyframe_requests_received: u64,
    pub client_send_errors: u64,
    /// Over subscribers' streams in the window: packets the sequence numbers say were sent
    /// to them, and how many of those arrived.
    pub loss_expected: u64,
    pub loss_received: u64,
    pub loss_ratio: f64,
    /// Publisher stamp to subscriber receipt, through the relay, in milliseconds.
    pub one_way_delay_ms: Distribution,
    pub relay: RelayFigures,
    /// The headline: packets the relay forwarded per CPU-second of its whole process.
    pub forwarded_packets_per_cpu_second: f64,
    /// Packets the subscribers received per CPU-second of the SFU's whole process: the same
    /// yardstick for our relay and for Janus.
    pub received_packets_per_cpu_second: f64,
    /// The SFU's CPU milliseconds per second of each joined session (with `--silent`: what an
    /// idle connected session costs it).
    pub cpu_ms_per_session_second: f64,
    pub forwarded_packets_per_media_worker_cpu_second: Option<f64>,
    pub floor: Option<floor::Report>,
    pub floor_packets_per_cpu_second: Option<f64>,
    pub ratio_to_floor: Option<f64>,
    pub peers: usize,
    pub dead_peers: usize,
    /// The run ended on its own schedule (not by the deadline guard).
    pub stopped_by_itself: bool,
}

/// Our relay and Janus under the same load, one after the other in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Beside {
    pub relay: Report,
    pub janus: Report,
    /// Packets subscribers received per relay CPU-second over the same per Janus CPU-second.
    pub relay_to_janus: Option<f64>,
}

impl Beside {
    /// The relay's chart with Janus beside it: packets received per CPU-second of each, and
    /// Janus's delay and loss.
    pub fn chart(&self) -> plot::Chart {
        let (r, j) = (&self.relay, &self.janus);
        let mut chart = chart(&[r], r.floor_packets_per_cpu_second, None);
        chart.title = "relay and Janus, same clients".into();
        let point = |f: &dyn Fn(&Report) -> f64| vec![(j.setup.sessions as f64, f(j))];
        let extra = [
            (
                "janus (received per CPU-s)",
                point(&|x| x.received_packets_per_cpu_second),
            ),
            ("janus p99", point(&|x| x.one_way_delay_ms.p99)),
            ("janus loss", point(&|x| x.loss_ratio * 100.0)),
        ];
        for (panel, (name, points)) in chart.panels.iter_mut().zip(extra) {
            panel.series.push(plot::Series {
                name: name.into(),
                points,
            });
        }
        chart
    }

    pub fn summary(&self) -> String {
        let mut out = self.relay.summary();
        out += &self.janus.summary();
        let (r, j) = (&self.relay, &self.janus);
        let of_floor = |x: &Report| {
            x.floor_packets_per_cpu_second
                .filter(|f| *f > 0.0)
                .map_or(String::new(), |f| {
                    format!(
                        " ({:.1}% of floor)",
                        x.received_packets_per_cpu_second / f * 100.0
                    )
                })
        };
        out += &format!(
            "side by side, packets received by the subscribers per CPU-second of the SFU:\n  \
             relay: {:.0} forwarded packets per relay CPU-second{}\n  \
             janus: {:.0} forwarded packets per Janus CPU-second{}; relay/janus ratio {}\n",
            r.received_packets_per_cpu_second,
            of_floor(r),
            j.received_packets_per_cpu_second,
            of_floor(j),
            self.relay_to_janus
                .map_or("-".to_string(), |x| format!("{x:.2}"))
        );
        out
    }
}

struct Snapshot {
    at: Instant,
    /// Each node's metrics, for a cluster.
    nodes: Vec<(String, Metrics)>,
    /// The SFU's own counters, or zeros where it has none (`counted` false).
    metrics: Metrics,
    counted: bool,
    cpu: f64,
    workers_cpu: Option<f64>,
}

fn snapshot(sfu: &dyn Sfu) -> Result<Snapshot, String> {
    // A cluster's nodes are read once, and the totals are their sum at that look.
    let nodes = sfu.node_metrics()?;
    let metrics = if nodes.is_empty() {
        sfu.metrics()?
    } else {
        let mut sum = Metrics::default();
        for (_, m) in &nodes {
            sum.add(m);
        }
        Some(sum)
    };
    let counted = metrics.is_some();
    let metrics = metrics.unwrap_or_default();
    let (cpu, workers_cpu) = match sfu.cpu() {
        Cpu::Proc(pid) => (
            appliance::process_cpu_seconds(pid)?,
            (sfu.name() == "relay").then(|| appliance::threads_cpu_seconds(pid, "media-worker")),
        ),
        Cpu::Metrics | Cpu::Nodes => (metrics.process_cpu_seconds, None),
    };
    Ok(Snapshot {
        nodes,
        at: Instant::now(),
        metrics,
        counted,
        cpu,
        workers_cpu,
    })
}

/// A participant's credentials.
struct Participant {
    room: String,
    token: String,
}

/// Our relay over WHIP and WHEP, with one user and token per participant.
struct Relay<'a> {
    api: &'a Api,
    cpu: Cpu,
    /// The process of each node of a cluster this started, in the order of the API's nodes.
    pids: Vec<u32>,
    rooms: Vec<(Vec<Participant>, Vec<Participant>)>,
    /// (Location, token) of every session opened.
    sessions: Vec<(String, String)>,
}

impl Sfu for Relay<'_> {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn prepare(&mut self, o: &Options, prefix: &str) -> Result<(), String> {
        let api = self.api;
        api.add_device(DEVICE)?;
        for r in 0..o.rooms {
            let room = format!("{prefix}-room{r}");
            api.add_room(&room)?;
            let make = |kind: &str, n: usize| -> Result<Vec<Participant>, String> {
                (0..n)
                    .map(|i| {
                        let user = format!("{prefix}-r{r}-{kind}{i}");
                        api.add_user(&user)?;
                        Ok(Participant {
                            room: room.clone(),
                            token: api.mint(&user, DEVICE)?,
                        })
                    })
                    .collect()
            };
            let pubs = make("p", o.publishers)?;
            let subs = make("s", o.subscribers)?;
            self.rooms.push((pubs, subs));
        }
        Ok(())
    }

    fn publish(
        &mut self,
        o: &Options,
        room: usize,
        index: usize,
        peer: &mut Peer,
    ) -> Result<(), String> {
        let p = &self.rooms[room].0[index];
        let offer = peer.publisher_offer()?;
        let source = if o.layout == Layout::Screen && index == 0 {
            "screen"
        } else {
            "camera"
        };
        let s = self.api.offer(
            room,
            &format!("/whip/{}?source={source}", p.room),
            &p.token,
            &offer,
        )?;
        peer.accept(&s.answer)?;
        self.sessions.push((s.location, p.token.clone()));
        Ok(())
    }

    fn subscribe(
        &mut self,
        o: &Options,
        room: usize,
        index: usize,
        own: Option<usize>,
        peer: &mut Peer,
    ) -> Result<bool, String> {
        let (pubs, subs) = &self.rooms[room];
        let p = match own {
            Some(i) => &pubs[i],
            None => &subs[index],
        };
        let offer = peer.subscriber_offer(o.slots, 1)?;
        let s = self.api.offer(
            room,
            &format!("/whep/{}?layout={}", p.room, o.layout.as_str()),
            &p.token,
            &offer,
        )?;
        peer.accept(&s.answer)?;
        self.sessions.push((s.location, p.token.clone()));
        Ok(true)
    }

    fn metrics(&self) -> Result<Option<Metrics>, String> {
        self.api.metrics().map(Some)
    }

    fn node_metrics(&self) -> Result<Vec<(String, Metrics)>, String> {
        if self.api.nodes.len() < 2 {
            return Ok(Vec::new());
        }
        let mut nodes = self.api.node_metrics()?;
        // The nodes' own counter has whole seconds only: the processes this started are read
        // from /proc.
        for ((_, m), pid) in nodes.iter_mut().zip(&self.pids) {
            m.process_cpu_seconds = appliance::process_cpu_seconds(*pid)?;
            m.process_rss_bytes = appliance::process_rss(*pid).0 as f64;
        }
        Ok(nodes)
    }

    fn cpu(&self) -> Cpu {
        self.cpu
    }

    fn end(&mut self) {
        for (location, token) in &self.sessions {
            self.api.end(location, token);
        }
    }
}

/// Runs the whole load test against the SFU `--peer` names.
pub fn run(o: &Options) -> Result<Report, String> {
    let (started_unix, floor) = begin(o)?;
    match o.peer {
        PeerKind::Relay => run_relay(o, started_unix, floor),
        PeerKind::Janus => run_janus(o, started_unix, floor),
    }
}

/// Checks the options, installs the crypto provider and measures the floor.
fn begin(o: &Options) -> Result<(u64, Option<floor::Report>), String> {
    o.check()?;
    if o.peer == PeerKind::Janus || o.beside_janus {
        // Before any thread or child, so that all of the run shares the namespace.
        progress(
            o,
            "moving into a network namespace of its own (loopback only)",
        );
        janus::enter_namespace()?;
    }
    str0m::crypto::from_feature_flags().install_process_default();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let floor = if o.floor_duration.is_zero() {
        None
    } else {
        progress(o, "measuring the loopback floor");
        Some(floor::measure(o.floor_duration, 50_000_000).map_err(|e| format!("floor: {e}"))?)
    };
    Ok((started_unix, floor))
}

fn run_relay(
    o: &Options,
    started_unix: u64,
    floor: Option<floor::Report>,
) -> Result<Report, String> {
    if o.nodes > 1 {
        return run_cluster(o, started_unix, floor);
    }
    let (own, api, cpu) = appliance::attach(
        &o.relay,
        o.workers,
        o.io_batch,
        o.io,
        o.sessions_per_room() + 4,
        |m| progress(o, m),
    )?;
    let mut relay = Relay {
        api: &api,
        cpu,
        pids: Vec::new(),
        rooms: Vec::new(),
        sessions: Vec::new(),
    };
    let result = drive(o, &mut relay, started_unix, floor);
    if let Some(mut relay) = own {
        if result.is_err() {
            eprintln!("relay log:\n{}", relay.log());
        }
        relay.stop();
    }
    result
}

/// The same load on a cluster of `--nodes` relays started here, on PostgreSQL and Redis of its
/// own: room i goes through node i, which sends it to the room's home.
fn run_cluster(
    o: &Options,
    started_unix: u64,
    floor: Option<floor::Report>,
) -> Result<Report, String> {
    let bin = match &o.relay.relay_bin {
        Some(b) => b.clone(),
        None => appliance::relay_beside_me()?,
    };
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    progress(
        o,
        &format!("starting PostgreSQL, Redis and {} relays", o.nodes),
    );
    let engines = relay_kit::cluster::Engines::start(dir.path())?;
    let nodes = (0..o.nodes)
        .map(|i| {
            engines.node(
                &bin,
                &format!("n{i}"),
                CLUSTER_LEASE,
                o.sessions_per_room() + 4,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first = &nodes[0];
    for args in [
        &["admin", "org", "add", "load"][..],
        &[
            "admin",
            "user",
            "add",
            "--org",
            "load",
            "ops",
            "--clearance",
            "3",
        ],
        &[
            "admin", "device", "add", "--org", "load", "ops-term", "--kind", "terminal",
        ],
    ] {
        first.cli(&bin, args)?;
    }
    let admin = first.cli(
        &bin,
        &[
            "token", "--org", "load", "--user", "ops", "--device", "ops-term", "--grants", "admin",
            "--ttl", "2h",
        ],
    )?;
    let urls: Vec<String> = nodes.iter().map(relay_kit::cluster::Node::url).collect();
    let api = Api::cluster(&urls, &admin)?;
    let pids = nodes
        .iter()
        .map(|n| {
            n.process
                .daemon
                .pid()
                .ok_or_else(|| format!("node {} exited", n.id))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut relay = Relay {
        api: &api,
        cpu: Cpu::Nodes,
        pids,
        rooms: Vec::new(),
        sessions: Vec::new(),
    };
    let result = drive(o, &mut relay, started_unix, floor);
    if result.is_err() {
        for n in &nodes {
            eprintln!("node {} log:\n{}", n.id, n.process.daemon.log());
        }
    }
    result
}

/// The lease of a cluster the load tester starts: the appliance's default.
const CLUSTER_LEASE: Duration = Duration::from_secs(5);

fn run_janus(
    o: &Options,
    started_unix: u64,
    floor: Option<floor::Report>,
) -> Result<Report, String> {
    progress(o, &format!("starting {}", o.janus_bin.display()));
    let mut own = janus::OwnJanus::start(&o.janus_bin, &o.janus_configs)?;
    let result = janus::VideoRoom::new(&own, run_deadline(o, Instant::now()))
        .and_then(|mut room| drive(o, &mut room, started_unix, floor));
    if result.is_err() {
        eprintln!("janus log:\n{}", own.log());
    }
    own.stop();
    result
}

/// Our relay and then Janus, with the same clients, settings and floor.
pub fn run_beside_janus(o: &Options) -> Result<Beside, String> {
    let (started_unix, floor) = begin(o)?;
    progress(o, "our relay first");
    let relay = run_relay(o, started_unix, floor.clone())?;
    progress(o, "then Janus");
    let janus = run_janus(o, started_unix, floor)?;
    let relay_to_janus = (janus.received_packets_per_cpu_second > 0.0)
        .then(|| relay.received_packets_per_cpu_second / janus.received_packets_per_cpu_second);
    Ok(Beside {
        relay,
        janus,
        relay_to_janus,
    })
}

/// Latest moment a run may go on to, from its start: joins, warm-up, window and slack.
fn run_deadline(o: &Options, epoch: Instant) -> Instant {
    epoch + o.ramp_up + JOIN_TIMEOUT * 2 + o.warmup + o.duration + Duration::from_secs(30)
}

fn drive(
    o: &Options,
    sfu: &mut dyn Sfu,
    started_unix: u64,
    floor: Option<floor::Report>,
) -> Result<Report, String> {
    // Names unique per run, so a shared relay (`--target`) can be loaded again and again.
    let prefix = o
        .prefix
        .clone()
        .unwrap_or_else(|| format!("lt{:06x}", started_unix & 0xff_ffff));
    progress(
        o,
        &format!("registering {} rooms and their participants", o.rooms),
    );
    sfu.prepare(o, &prefix)?;

    let epoch = Instant::now();
    let deadline = run_deadline(o, epoch);
    let groups: Vec<Group> = (0..o.client_threads)
        .map(|i| driver::spawn(i, epoch, deadline))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("start client threads: {e}"))?;
    let opened = open_sessions(o, sfu, &groups, epoch);
    let report = match &opened {
        Ok(_) => measure(o, sfu, &groups, epoch, deadline),
        Err(e) => Err(e.clone()),
    };
    for g in &groups {
        g.shared.phase.store(driver::STOP, Ordering::Release);
    }
    let mut results = Vec::new();
    for g in groups {
        match g.handle.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => return Err(format!("client thread: {e}")),
            Err(_) => return Err("a client thread panicked".into()),
        }
    }
    sfu.end();
    let (window, relay, snap_ok) = report?;
    let mut r = assemble(
        o,
        sfu.name(),
        started_unix,
        floor,
        window,
        relay,
        results,
        snap_ok,
    );
    r.opened_seconds = opened.unwrap_or_default();
    Ok(r)
}

/// Opens every session (spread over `--ramp-up`); the seconds it took.
fn open_sessions(
    o: &Options,
    sfu: &mut dyn Sfu,
    groups: &[Group],
    epoch: Instant,
) -> Result<f64, String> {
    let mut next_group = 0;
    let mut id = 0u32;
    // With --ramp-up, session k opens at start + k * gap.
    let start = Instant::now();
    let gap = o.ramp_up.div_f64(o.sessions().max(1) as f64);
    let mut opened = 0u32;
    let mut hand = |p: Client| -> Result<(), String> {
        let g = &groups[next_group % groups.len()];
        next_group += 1;
        g.tx.send(p)
            .map_err(|_| "a client thread has stopped".to_string())?;
        opened += 1;
        let next = start + gap * opened;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Ok(())
    };
    // Publishers first, so subscribers find media as soon as they connect.
    for room in 0..o.rooms {
        for i in 0..o.publishers {
            id += 1;
            let mut client =
                Client::new(client_socket()?, Role::Publisher, id, Instant::now(), epoch)?;
            client.turn = (i as u32, o.publishers as u32);
            client.silent = o.silent;
            sfu.publish(o, room, i, &mut client.peer)?;
            hand(client)?;
        }
    }
    // Janus takes subscribers to a feed only once its publisher's connection is up.
    let until = Instant::now() + JOIN_TIMEOUT;
    let publishers = (o.rooms * o.publishers) as u64;
    while sum(groups, |s| s.joined.load(Ordering::Relaxed)) < publishers && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    for room in 0..o.rooms {
        let own = (0..o.publishers).filter(|_| o.meeting).map(Some);
        for (index, own) in std::iter::repeat_n(None, o.subscribers)
            .chain(own)
            .enumerate()
        {
            let mut client =
                Client::new(client_socket()?, Role::Subscriber, 0, Instant::now(), epoch)?;
            client.silent = o.silent;
            if sfu.subscribe(o, room, index, own, &mut client.peer)? {
                hand(client)?;
            }
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// A non-blocking client socket on loopback with room for bursts of keyframes.
fn client_socket() -> Result<mio::net::UdpSocket, String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind client: {e}"))?;
    // Best effort: the kernel may cap it, and a smaller buffer only shows up as loss.
    let _ = sys::set_recv_buffer(&s, 1 << 20);
    let _ = sys::set_send_buffer(&s, 1 << 20);
    s.set_nonblocking(true)
        .map_err(|e| format!("non-blocking client socket: {e}"))?;
    Ok(mio::net::UdpSocket::from_std(s))
}

fn sum(groups: &[Group], f: impl Fn(&driver::Shared) -> u64) -> u64 {
    groups.iter().map(|g| f(&g.shared)).sum()
}

/// Waits for joins, warms up, measures the window; returns (window seconds, relay figures,
/// whether both relay snapshots were taken).
fn measure(
    o: &Options,
    sfu: &dyn Sfu,
    groups: &[Group],
    epoch: Instant,
    deadline: Instant,
) -> Result<(f64, RelayFigures, bool), String> {
    let expected = o.expected_joins() as u64;
    let join_until = Instant::now() + JOIN_TIMEOUT;
    while Instant::now() < join_until.min(deadline) {
        let joined = sum(groups, |s| s.joined.load(Ordering::Relaxed));
        progress_line(
            o,
            &format!(
                "joining: {joined}/{expected} t={:.1}s",
                epoch.elapsed().as_secs_f64()
            ),
        );
        if joined >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let warm_until = Instant::now() + o.warmup;
    while Instant::now() < warm_until {
        std::thread::sleep(
            Duration::from_secs(1).min(warm_until.saturating_duration_since(Instant::now())),
        );
        tick(o, groups, "warm-up", None);
    }

    let a = snapshot(sfu)?;
    for g in groups {
        g.shared.phase.store(driver::MEASURE, Ordering::Release);
    }
    let end = a.at + o.duration;
    let mut last_print = Instant::now();
    while Instant::now() < end.min(deadline) {
        std::thread::sleep(
            Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
        );
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let m = sfu.metrics().ok().flatten();
            tick(o, groups, "measuring", m.map(|m| (m, &a)));
        }
    }
    for g in groups {
        g.shared.phase.store(driver::MEASURED, Ordering::Release);
    }
    let b = snapshot(sfu)?;
    if o.progress {
        eprintln!();
    }
    let secs = (b.at - a.at).as_secs_f64();
    let cpu = sfu.cpu();
    let (rss, peak) = match cpu {
        Cpu::Proc(pid) => appliance::process_rss(pid),
        Cpu::Metrics | Cpu::Nodes => (b.metrics.process_rss_bytes as u64, 0),
    };
    let d = |f: fn(&Metrics) -> f64| (f(&b.metrics) - f(&a.metrics)).max(0.0) as u64;
    let forwarded = d(|m| m.packets_forwarded);
    let cpu_s = b.cpu - a.cpu;
    let q = |q| {
        appliance::histogram_quantile(&a.metrics.delay_buckets, &b.metrics.delay_buckets, q)
            .map(|s| s * 1e3)
    };
    let relay = RelayFigures {
        packets_received: d(|m| m.packets_received),
        packets_forwarded: forwarded,
        bytes_forwarded: d(|m| m.bytes_forwarded),
        packets_dropped: d(|m| m.packets_dropped),
        layer_switches: d(|m| m.layer_switches),
        keyframe_requests: d(|m| m.keyframe_requests),
        forwarded_per_second: forwarded as f64 / secs.max(1e-9),
        forwarded_counted_by: if b.counted { "sfu" } else { "subscribers" },
        cpu_seconds: cpu_s,
        cpu_source: cpu.source(),
        media_workers_cpu_seconds: match (a.workers_cpu, b.workers_cpu) {
            (Some(x), Some(y)) => Some(y - x),
            _ => None,
        },
        cores_busy: cpu_s / secs.max(1e-9),
        rss_bytes: rss,
        peak_rss_bytes: peak,
        forward_delay_p50_ms: q(0.5),
        forward_delay_p99_ms: q(0.99),
        nodes: NodeFigures::of(&a.nodes, &b.nodes),
        sessions_at_end: b.metrics.sessions as u64,
    };
    Ok((secs, relay, Instant::now() < deadline))
}

fn tick(o: &Options, groups: &[Group], phase: &str, relay: Option<(Metrics, &Snapshot)>) {
    let sent = sum(groups, |s| s.sent.load(Ordering::Relaxed));
    let received = sum(groups, |s| s.received.load(Ordering::Relaxed));
    let dead = sum(groups, |s| s.dead.load(Ordering::Relaxed));
    let mut line = format!("{phase}: sent {sent} received {received}");
    if let Some((m, a)) = relay {
        let secs = a.at.elapsed().as_secs_f64().max(1e-9);
        line += &format!(
            " relay forwarded {:.0}/s",
            (m.packets_forwarded - a.metrics.packets_forwarded) / secs
        );
    }
    if dead > 0 {
        line += &format!(" dead peers {dead}");
    }
    progress_line(o, &line);
}

fn progress(o: &Options, msg: &str) {
    if o.progress {
        eprintln!("relay-loadtest: {msg}");
    }
}

/// One line rewritten in place on a terminal; otherwise one line each time.
fn progress_line(o: &Options, msg: &str) {
    if !o.progress {
        return;
    }
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{msg}");
    } else {
        eprintln!("{msg}");
    }
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    o: &Options,
    sfu: &'static str,
    started_unix: u64,
    floor: Option<floor::Report>,
    window_seconds: f64,
    mut relay: RelayFigures,
    results: Vec<GroupResult>,
    stopped_by_itself: bool,
) -> Report {
    let mut t = crate::client::Totals::default();
    let (mut expected, mut received, mut peers, mut dead) = (0, 0, 0, 0);
    let mut delays = Vec::new();
    let mut joins = Vec::new();
    for r in results {
        t.add(&r.window);
        expected += r.loss_expected;
        received += r.loss_received;
        peers += r.peers;
        dead += r.dead;
        delays.extend(r.delays_us.iter().map(|&us| f64::from(us) / 1e3));
        joins.extend(r.joins);
    }
    if relay.forwarded_counted_by == "subscribers" {
        relay.packets_forwarded = t.received();
        relay.bytes_forwarded = t.bytes_received;
        relay.forwarded_per_second = t.received() as f64 / window_seconds.max(1e-9);
    }
    let per_cpu_second = |packets: u64| {
        if relay.cpu_seconds > 0.0 {
            packets as f64 / relay.cpu_seconds
        } else {
            0.0
        }
    };
    let per_cpu = per_cpu_second(relay.packets_forwarded);
    let received_per_cpu = per_cpu_second(t.received());
    let floor_pps = floor.as_ref().map(|f| f.floor_packets_per_cpu_second);
    let joined = joins.len();
    let cpu_ms_per_session_second =
        relay.cpu_seconds * 1e3 / (window_seconds * joined as f64).max(1e-9);
    Report {
        started_unix,
        setup: Setup {
            sfu,
            target: o.relay.target.clone(),
            rooms: o.rooms,
            publishers_per_room: o.publishers,
            subscribers_per_room: o.subscribers,
            meeting: o.meeting,
            slots: o.slots,
            layout: o.layout,
            warmup_seconds: o.warmup.as_secs_f64(),
            ramp_up_seconds: o.ramp_up.as_secs_f64(),
            duration_seconds: o.duration.as_secs_f64(),
            relay_media_workers: o.workers,
            relay_io_batch: o.io_batch,
            relay_io: o.io,
            client_threads: o.client_threads,
            sessions: o.sessions(),
            nodes: o.nodes,
        },
        window_seconds,
        joined,
        expected_joins: o.expected_joins(),
        join_seconds: Distribution::of(joins),
        opened_seconds: 0.0,
        video_packets_sent: t.video_packets_sent,
        audio_packets_sent: t.audio_packets_sent,
        video_packets_received: t.video_packets_received,
        audio_packets_received: t.audio_packets_received,
        keyframes_sent: t.keyframes_sent,
        keyframe_requests_received: t.keyframe_requests_received,
        client_send_errors: t.send_errors,
        loss_expected: expected,
        loss_received: received,
        loss_ratio: if expected > 0 {
            (expected - received) as f64 / expected as f64
        } else {
            0.0
        },
        one_way_delay_ms: Distribution::of(delays),
        forwarded_packets_per_media_worker_cpu_second: relay
            .media_workers_cpu_seconds
            .filter(|c| *c > 0.0)
            .map(|c| relay.packets_forwarded as f64 / c),
        relay,
        cpu_ms_per_session_second,
        forwarded_packets_per_cpu_second: per_cpu,
        received_packets_per_cpu_second: received_per_cpu,
        floor,
        floor_packets_per_cpu_second: floor_pps,
        ratio_to_floor: floor_pps.filter(|f| *f > 0.0).map(|f| per_cpu / f),
        peers,
        dead_peers: dead,
        stopped_by_itself,
    }
}

impl Report {
    pub fn packets_sent(&self) -> u64 {
        self.video_packets_sent + self.audio_packets_sent
    }

    pub fn packets_received(&self) -> u64 {
        self.video_packets_received + self.audio_packets_received
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let s = &self.setup;
        let r = &self.relay;
        let name = s.sfu;
        let mut out = format!(
            "media load on {name}: {} rooms x ({} publishers{} + {} subscribers), {} slots, {} layout, \
             {} sessions{}{}; window {:.1} s after {:.0} s warm-up\n",
            s.rooms,
            s.publishers_per_room,
            if s.meeting { " also subscribing" } else { "" },
            s.subscribers_per_room,
            s.slots,
            s.layout.as_str(),
            s.sessions,
            if name == "relay" {
                format!(
                    ", relay io {} batch {}",
                    s.relay_io.as_str(),
                    s.relay_io_batch
                )
            } else {
                String::new()
            },
            if s.ramp_up_seconds > 0.0 {
                format!(", opened over {:.1} s", s.ramp_up_seconds)
            } else {
                String::new()
            },
            self.window_seconds,
            s.warmup_seconds
        );
        out += &format!(
            "  joined {}/{}  join time median {:.0} ms  p99 {:.0} ms\n",
            self.joined,
            self.expected_joins,
            self.join_seconds.median * 1e3,
            self.join_seconds.p99 * 1e3
        );
        out += &format!(
            "  publishers sent {} packets ({} video, {} audio); subscribers received {} ({} video, {} audio)\n",
            self.packets_sent(),
            self.video_packets_sent,
            self.audio_packets_sent,
            self.packets_received(),
            self.video_packets_received,
            self.audio_packets_received
        );
        out += &format!(
            "  loss {:.3}% ({} of {} expected)  one-way delay median {:.2} ms  p99 {:.2} ms  max {:.1} ms\n",
            self.loss_ratio * 100.0,
            self.loss_expected - self.loss_received,
            self.loss_expected,
            self.one_way_delay_ms.median,
            self.one_way_delay_ms.p99,
            self.one_way_delay_ms.max
        );
        if r.forwarded_counted_by == "sfu" {
            out += &format!(
                "  {name}: received {} forwarded {} ({:.0}/s) dropped {}  keyframe requests {}  layer switches {}\n",
                r.packets_received,
                r.packets_forwarded,
                r.forwarded_per_second,
                r.packets_dropped,
                r.keyframe_requests,
                r.layer_switches
            );
        } else {
            out += &format!(
                "  {name}: forwarded {} ({:.0}/s), as counted by the subscribers\n",
                r.packets_forwarded, r.forwarded_per_second
            );
        }
        let fmt_ms = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3} ms"));
        out += &format!(
            "  {name}: CPU {:.2} s ({:.2} cores{}; {:.3} ms per session-second)  RSS {:.1} MiB (peak {:.1} MiB)  forward delay p50 {} p99 {}\n",
            r.cpu_seconds,
            r.cores_busy,
            r.media_workers_cpu_seconds
                .map_or(String::new(), |w| format!(", media workers {w:.2} s")),
            self.cpu_ms_per_session_second,
            r.rss_bytes as f64 / 1048576.0,
            r.peak_rss_bytes as f64 / 1048576.0,
            fmt_ms(r.forward_delay_p50_ms),
            fmt_ms(r.forward_delay_p99_ms)
        );
        for n in &r.nodes {
            out += &format!(
                "  node {}: forwarded {}  CPU {:.2} s  {:.0} per CPU-second\n",
                n.url, n.packets_forwarded, n.cpu_seconds, n.forwarded_per_cpu_second
            );
        }
        out += &format!(
            "forwarded packets per {name} CPU-second: {:.0}",
            self.forwarded_packets_per_cpu_second
        );
        if let Some(w) = self.forwarded_packets_per_media_worker_cpu_second {
            out += &format!(" (per media-worker CPU-second: {w:.0})");
        }
        out += "\n";
        if let (Some(f), Some(ratio)) = (self.floor_packets_per_cpu_second, self.ratio_to_floor) {
            out += &format!(
                "loopback floor (sendmmsg + AES-128-GCM, same run): {f:.0} packets per CPU-second; {name} at {:.1}% of it\n",
                ratio * 100.0
            );
        }
        if let Some(fan) = self
            .floor
            .as_ref()
            .map(|f| f.fanout_packets_per_cpu_second)
            .filter(|f| *f > 0.0)
        {
            out += &format!(
                "loopback fan-out to {} sleeping receivers (same run): {fan:.0} packets per CPU-second; {name} at {:.1}% of it\n",
                floor::FANOUT,
                self.forwarded_packets_per_cpu_second / fan * 100.0
            );
        }
        if r.cpu_source == "metrics" {
            out += "  (relay CPU from its process_cpu_seconds_total: whole seconds only)\n";
        }
        if self.dead_peers > 0 {
            out += &format!("  {} peers failed during the run\n", self.dead_peers);
        }
        out
    }
}

/// Relay efficiency, delay and loss against the sessions of each run.
pub fn chart(reports: &[&Report], floor: Option<f64>, limits: Option<(f64, f64)>) -> plot::Chart {
    let series = |name: &str, f: &dyn Fn(&Report) -> f64| plot::Series {
        name: name.into(),
        points: reports
            .iter()
            .map(|r| (r.setup.sessions as f64, f(r)))
            .collect(),
    };
    let mut efficiency = vec![series("relay", &|r| r.forwarded_packets_per_cpu_second)];
    if let Some(f) = floor {
        efficiency.push(series("loopback floor", &|_| f));
    }
    plot::Chart {
        title: "relay media plane".into(),
        x_label: "sessions (publishers + subscribers)".into(),
        panels: vec![
            plot::Panel {
                y_label: "forwarded packets per relay CPU-second".into(),
                series: efficiency,
                limit: None,
            },
            plot::Panel {
                y_label: "delay, ms: one-way (clients), forward (relay)".into(),
                series: vec![
                    series("p99", &|r| r.one_way_delay_ms.p99),
                    series("median", &|r| r.one_way_delay_ms.median),
                    // The relay's own share of the delay, from its histogram.
                    series("relay forward p99", &|r| {
                        r.relay.forward_delay_p99_ms.unwrap_or(f64::NAN)
                    }),
                ],
                limit: limits.map(|(_, d)| (d, format!("p99 limit {d} ms"))),
            },
            plot::Panel {
                y_label: "loss, %".into(),
                series: vec![series("loss", &|r| r.loss_ratio * 100.0)],
                limit: limits.map(|(l, _)| (l, format!("limit {l}%"))),
            },
        ],
        marker: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One room of a publisher and two subscribers against a relay this starts, briefly.
    fn short_run() -> Options {
        Options {
            relay: appliance::Target {
                relay_bin: Some(relay_kit::process::relay_bin()),
                ..Default::default()
            },
            rooms: 1,
            publishers: 1,
            subscribers: 2,
            meeting: false,
            slots: 1,
            layout: Layout::Grid,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            ramp_up: Duration::from_secs(2),
            workers: 1,
            // The plain path, one datagram per system call (the default batch runs elsewhere).
            io_batch: 1,
            io: RelayIo::Mmsg,
            client_threads: 1,
            floor_duration: Duration::from_millis(100),
            peer: PeerKind::Relay,
            beside_janus: false,
            silent: false,
            janus_bin: "janus".into(),
            janus_configs: "/etc/janus".into(),
            nodes: 1,
            prefix: None,
            progress: false,
        }
    }

    #[test]
    fn short_run_against_own_relay_counts_are_consistent_and_it_stops() {
        let o = short_run();
        let t0 = Instant::now();
        let r = run(&o).unwrap();
        let summary = r.summary();
        assert!(r.stopped_by_itself, "{summary}");
        assert!(t0.elapsed() < Duration::from_secs(120), "{summary}");
        assert_eq!((r.peers, r.dead_peers), (3, 0), "{summary}");
        assert_eq!(r.joined, 3, "{summary}");
        // Three sessions over a 2 s ramp: the last is handed over no sooner than 2 s in (without
        // the ramp, about as long as the publisher takes to connect).
        assert!(
            r.opened_seconds >= 2.0,
            "opened in {} s: {summary}",
            r.opened_seconds
        );
        assert!(r.packets_sent() > 0, "{summary}");
        assert!(
            r.video_packets_sent > 0 && r.audio_packets_sent > 0,
            "{summary}"
        );
        assert!(r.relay.packets_forwarded > 0, "{summary}");
        assert!(r.packets_received() > 0, "{summary}");
        // The window's edges are a few milliseconds apart on the two sides; allow for the
        // packets in flight across them, never for more.
        let slack = r.relay.packets_forwarded / 20 + 50;
        assert!(
            r.packets_received() <= r.relay.packets_forwarded + slack,
            "{summary}"
        );
        assert!(r.relay.cpu_seconds > 0.0, "{summary}");
        assert!(r.forwarded_packets_per_cpu_second > 0.0, "{summary}");
        assert!(r.ratio_to_floor.is_some_and(|x| x > 0.0), "{summary}");
        assert!(r.one_way_delay_ms.samples > 0, "{summary}");
        assert!(r.loss_expected >= r.loss_received, "{summary}");
    }

    #[test]
    fn silent_sessions_stay_connected_past_the_relays_silence_timeout() {
        // Longer than the relay's five seconds without a datagram after which it drops a
        // session: keep-alives and reports must keep idle sessions up.
        let o = Options {
            silent: true,
            duration: Duration::from_secs(7),
            ramp_up: Duration::ZERO,
            floor_duration: Duration::ZERO,
            ..short_run()
        };
        let r = run(&o).unwrap();
        let summary = r.summary();
        assert_eq!((r.joined, r.peers, r.dead_peers), (3, 3, 0), "{summary}");
        assert_eq!(r.packets_sent(), 0, "{summary}");
        assert_eq!(r.relay.packets_forwarded, 0, "{summary}");
        assert_eq!(r.relay.sessions_at_end, 3, "{summary}");
        assert!(r.cpu_ms_per_session_second > 0.0, "{summary}");
    }
}
