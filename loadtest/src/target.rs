//! What a media run loads and how: its options, and the SFU under test as a run drives it
//! (our relay, or Janus's VideoRoom beside it).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::appliance::{self, Cpu, Metrics};
use relay_kit::peer::Peer;

/// Longest measured window a run accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Sessions in the whole run; beyond it one machine measures its own client, not the relay.
const MAX_SESSIONS: usize = 4_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Grid,
    Screen,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Grid => "grid",
            Layout::Screen => "screen",
        }
    }
}

/// What to run: the `media` subcommand's options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub relay: appliance::Target,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room (camera: three simulcast VP8 layers and audio).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers per room, besides the publishers.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Every publisher also subscribes as the same participant, as in a meeting.
    #[arg(long)]
    pub meeting: bool,
    /// Publishers connect but send no media: every session stays up and idle, for what an
    /// idle connected session costs the SFU (keep-alives, RTCP, timers).
    #[arg(long)]
    pub silent: bool,
    /// Video slots per subscriber (plus one audio line).
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Subscribers' layout; with `screen` the first publisher of each room shares a screen.
    #[arg(long, value_enum, default_value = "grid")]
    pub layout: Layout,
    /// Measured window (at most 10 minutes).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time after everyone joined before the window opens.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Spread the sessions' opening evenly over this time (publishers first), instead of
    /// opening them all at once (at most 10 minutes).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp_up: Duration,
    /// Media workers of the relay this starts (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Datagrams per recvmmsg/sendmmsg of the relay this starts (`media.io_batch`; 1 = one
    /// per system call, the plain path).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub io_batch: u16,
    /// The datagram path of the relay this starts (`media.io`).
    #[arg(long, value_enum, default_value = "mmsg")]
    pub io: appliance::RelayIo,
    /// Threads driving the simulated clients.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Time per method of the loopback floor measured first (0s: skip it).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub floor_duration: Duration,
    /// The SFU to load: our relay, or Janus's VideoRoom (Debian's `janus`, started here on
    /// loopback and driven through its HTTP API).
    #[arg(long, value_enum, default_value = "relay")]
    pub peer: PeerKind,
    /// Run the same clients against our relay and then against Janus, and report both.
    #[arg(long, conflicts_with = "peer")]
    pub beside_janus: bool,
    /// The `janus` binary.
    #[arg(long, default_value = "janus")]
    pub janus_bin: PathBuf,
    /// The folder whose janus.jcfg, janus.transport.http.jcfg and janus.plugin.videoroom.jcfg
    /// are copied and made loopback-only.
    #[arg(long, default_value = "/etc/janus")]
    pub janus_configs: PathBuf,
    /// Start a cluster of this many relays (PostgreSQL and Redis from Debian's packages,
    /// started here on loopback) instead of one, and spread the rooms over them.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Name the rooms and participants `PREFIX-room0`, `PREFIX-r0-p0`, ... instead of after the
    /// start time, so a second run joins the same rooms (on a cluster: the same homes).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Draw a progress line on stderr.
    #[arg(skip = true)]
    pub progress: bool,
}

/// Which SFU a run loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    Relay,
    Janus,
}

impl Options {
    /// Checks the figures; the message names the option.
    pub fn check(&self) -> Result<(), String> {
        if self.rooms == 0 || self.publishers == 0 {
            return Err("--rooms and --publishers must be at least 1".into());
        }
        if self.subscribers == 0 && !self.meeting {
            return Err("--subscribers must be at least 1 (or give --meeting)".into());
        }
        if !(1..=16).contains(&self.slots) {
            return Err("--slots must be 1 to 16".into());
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(format!(
                "--duration must be more than 0 and at most {}",
                humantime::format_duration(MAX_DURATION)
            ));
        }
        if self.warmup > Duration::from_secs(60) {
            return Err("--warmup must be at most 60s".into());
        }
        if self.ramp_up > MAX_DURATION {
            return Err(format!(
                "--ramp-up must be at most {}",
                humantime::format_duration(MAX_DURATION)
            ));
        }
        if self.floor_duration > Duration::from_secs(30) {
            return Err("--floor-duration must be at most 30s".into());
        }
        if self.sessions() > MAX_SESSIONS {
            return Err(format!(
                "{} sessions asked; at most {MAX_SESSIONS}",
                self.sessions()
            ));
        }
        if !(1..=8).contains(&self.nodes) {
            return Err("--nodes must be 1 to 8".into());
        }
        if self.nodes > 1
            && (self.relay.target.is_some() || self.peer == PeerKind::Janus || self.beside_janus)
        {
            return Err("--nodes starts a cluster of our relays: no --target, no Janus".into());
        }
        if let Some(p) = &self.prefix
            && !((1..=24).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err("--prefix must be 1 to 24 letters, digits or -".into());
        }
        if !(1..=64).contains(&self.client_threads) {
            return Err("--client-threads must be 1 to 64".into());
        }
        if self.peer == PeerKind::Janus || self.beside_janus {
            if self.layout != Layout::Grid {
                return Err("Janus runs take the grid layout only".into());
            }
            if self.relay.target.is_some() {
                return Err("Janus runs start their own relay and Janus: no --target".into());
            }
        }
        self.relay.check()
    }

    pub fn sessions_per_room(&self) -> usize {
        self.publishers + self.subscribers + if self.meeting { self.publishers } else { 0 }
    }

    pub fn sessions(&self) -> usize {
        self.rooms * self.sessions_per_room()
    }

    /// Peers that should see media: publishers connect, subscribers need another publisher.
    pub fn expected_joins(&self) -> usize {
        let meeting_subs = if self.meeting && self.publishers >= 2 {
            self.publishers
        } else {
            0
        };
        self.rooms * (self.publishers + self.subscribers + meeting_subs)
    }
}

/// The SFU under test as a run sees it: how participants join it, and its process.
pub trait Sfu {
    /// `relay` or `janus`.
    fn name(&self) -> &'static str;
    /// Creates the rooms, and whatever else participants need, before anyone joins; `prefix`
    /// makes names unique per run.
    fn prepare(&mut self, o: &Options, prefix: &str) -> Result<(), String>;
    /// Signals publisher `index` of `room`; on return the peer has its answer.
    fn publish(
        &mut self,
        o: &Options,
        room: usize,
        index: usize,
        peer: &mut Peer,
    ) -> Result<(), String>;
    /// Signals watcher `index` of `room`: a subscriber, or with `own` publisher `own` of the
    /// room subscribing too. False when there is nothing for it to receive.
    fn subscribe(
        &mut self,
        o: &Options,
        room: usize,
        index: usize,
        own: Option<usize>,
        peer: &mut Peer,
    ) -> Result<bool, String>;
    /// Its own counters, where it has any.
    fn metrics(&self) -> Result<Option<Metrics>, String>;
    /// Each node's metrics, when the SFU is a cluster of several.
    fn node_metrics(&self) -> Result<Vec<(String, Metrics)>, String> {
        Ok(Vec::new())
    }
    fn cpu(&self) -> Cpu;
    /// Ends the sessions it opened (best effort).
    fn end(&mut self) {}
}
