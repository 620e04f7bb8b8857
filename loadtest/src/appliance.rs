//! The relay under test: starting one of our own on loopback, and talking to any relay over its
//! HTTP API (admin registrations, token minting, WHIP/WHEP, `/metrics`), plus what `/proc` says
//! about its process.
//!
//! A relay we start gets a throwaway data directory, HTTP on 127.0.0.1 port 0 and media on
//! 127.0.0.1 with ports chosen by the kernel, and is stopped (SIGTERM, then SIGKILL) when its
//! handle drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use relay_kit::process::RelayProcess;
use serde_json::json;

use crate::sys;

/// How long a relay may take to say it is up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server this run started gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A relay process this run started.
#[derive(Debug)]
pub struct OwnRelay {
    process: RelayProcess,
    pub http: String,
    pub data: PathBuf,
    pub bin: PathBuf,
    _tmp: tempfile::TempDir,
}

/// The `relay` binary beside this executable.
pub fn relay_beside_me() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable path: {e}"))?;
    let bin = exe
        .parent()
        .map(|d| d.join("relay"))
        .ok_or_else(|| "own executable has no directory".to_string())?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no relay binary at {}: build it with `cargo build --release -p relay` \
             (or pass --target URL --admin-token T to load a running relay)",
            bin.display()
        ))
    }
}

/// The media workers' datagram path of a relay the load tester starts (`media.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayIo {
    Mmsg,
    Uring,
}

impl RelayIo {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayIo::Mmsg => "mmsg",
            RelayIo::Uring => "uring",
        }
    }
}

impl OwnRelay {
    /// Starts `bin serve` on a fresh data directory with `workers` media workers (0: one per
    /// core), `io_batch` datagrams per system call on the datagram path `io`, and room for
    /// `max_sessions` sessions in a room.
    pub fn start(
        bin: &Path,
        workers: usize,
        io_batch: u16,
        io: RelayIo,
        max_sessions: usize,
    ) -> Result<OwnRelay, String> {
        let tmp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let data = tmp.path().join("data");
        let config = tmp.path().join("relay.toml");
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"3s\"\n\
             [media]\nbind = \"127.0.0.1\"\nfirst_port = 0\nworkers = {workers}\n\
             io_batch = {io_batch}\n{}max_sessions_per_room = {}\n[files]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nlevel = \"info\"\n",
            // The default is left unsaid, so relays from before the key was known start too.
            match io {
                RelayIo::Mmsg => "",
                RelayIo::Uring => "io = \"uring\"\n",
            },
            max_sessions.max(1)
        );
        std::fs::write(&config, text).map_err(|e| format!("write relay config: {e}"))?;
        let process = RelayProcess::start(bin, &config, &data, &[], START_TIMEOUT)
            .map_err(|log| format!("the relay did not come up:\n{log}"))?;
        Ok(OwnRelay {
            http: format!("http://{}", process.http),
            process,
            data,
            bin: bin.to_path_buf(),
            _tmp: tmp,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.daemon.pid()
    }

    pub fn log(&self) -> String {
        self.process.daemon.log()
    }

    /// An admin token of the demo organisation, minted on the data directory.
    pub fn admin_token(&self) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(["token", "--data"])
            .arg(&self.data)
            .args([
                "--org",
                "demo",
                "--user",
                "demo",
                "--device",
                "demo-browser",
                "--grants",
                "admin",
                "--ttl",
                "2h",
            ])
            .env_remove("RELAY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run relay token: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "relay token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the relay: SIGTERM, then SIGKILL after 10 s. Returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        self.process
            .daemon
            .stop_within(STOP_GRACE)
            .is_some_and(|s| s.success())
    }
}

/// A relay's HTTP API, as one organisation's admin.
#[derive(Debug)]
pub struct Api {
    /// The first node's URL: registrations and tokens go there (the registry is one).
    pub base: String,
    /// Every node's URL (`--target URL,URL,...`); a room's sessions go to one of them.
    pub nodes: Vec<String>,
    pub org: String,
    admin: String,
    agent: ureq::Agent,
}

/// `location` (absolute, or a path) resolved against the absolute `url` it was answered to.
fn absolute(url: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    // scheme://authority, without the path
    let authority_end = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(url.len());
    format!("{}{location}", &url[..authority_end])
}

/// A WHIP or WHEP session the relay opened.
#[derive(Debug, Clone)]
pub struct Session {
    pub answer: String,
    pub location: String,
}

impl Api {
    /// The API at `base` (`http://host:port`) with an admin token; the organisation is the
    /// token's own.
    /// The API of a cluster's nodes at `nodes` (at least one), with an admin token of one
    /// organisation.
    pub fn cluster(nodes: &[String], admin: &str) -> Result<Api, String> {
        let first = nodes.first().ok_or("no node to load")?;
        let mut api = Api::new(first, admin)?;
        api.nodes = nodes
            .iter()
            .map(|n| n.trim_end_matches('/').to_string())
            .collect();
        Ok(api)
    }

    pub fn new(base: &str, admin: &str) -> Result<Api, String> {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A cluster's redirects are followed by hand: the token must go along (see `offer`).
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(20)))
            .build();
        let base = base.trim_end_matches('/').to_string();
        Ok(Api {
            nodes: vec![base.clone()],
            base,
            org: token_org(admin)?,
            admin: admin.to_string(),
            agent: ureq::Agent::new_with_config(config),
        })
    }

    fn answer(
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String, Option<String>), String> {
        let mut resp = r.map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((status, body, location))
    }

    fn admin_post(&self, path: &str, body: serde_json::Value) -> Result<(u16, String), String> {
        let r = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.admin))
            .content_type("application/json")
            .send(body.to_string());
        let (status, body, _) = Api::answer(path, r)?;
        Ok((status, body))
    }

    /// Registers something; an existing one (409) is fine.
    fn register(&self, path: &str, body: serde_json::Value) -> Result<(), String> {
        match self.admin_post(path, body)? {
            (201 | 409, _) => Ok(()),
            (s, b) => Err(format!("POST {path}: {s} {b}")),
        }
    }

    pub fn add_device(&self, id: &str) -> Result<(), String> {
        self.register(
            "/api/admin/devices",
            json!({"id": id, "kind": "browser", "max_clearance": 1}),
        )
    }

    pub fn add_user(&self, name: &str) -> Result<(), String> {
        self.register("/api/admin/users", json!({"name": name, "clearance": 1}))
    }

    pub fn add_room(&self, name: &str) -> Result<(), String> {
        self.register("/api/admin/rooms", json!({"name": name}))
    }

    /// A publish + subscribe token for `user` on `device`.
    pub fn mint(&self, user: &str, device: &str) -> Result<String, String> {
        self.mint_with(user, device, &["publish", "subscribe"])
    }

    /// A token with `grants` for `user` on `device`.
    pub fn mint_with(&self, user: &str, device: &str, grants: &[&str]) -> Result<String, String> {
        let (status, body) = self.admin_post(
            "/api/admin/tokens",
            json!({
                "org": self.org,
                "user": user,
                "device": device,
                "grants": grants,
                "ttl": "2h",
            }),
        )?;
        if status != 201 {
            return Err(format!("mint a token for {user}: {status} {body}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("token answer: {e}"))?;
        v["token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| format!("token answer without a token: {body}"))
    }

    /// POSTs an SDP offer to `path` (`/whip/...` or `/whep/...`) on node `node` (modulo the
    /// nodes); expects 201 with a Location. A cluster node that is not the room's home answers
    /// 307 with the home's URL: the offer goes there, once. The session's location is absolute,
    /// on the node that opened it.
    pub fn offer(
        &self,
        node: usize,
        path: &str,
        token: &str,
        sdp: &str,
    ) -> Result<Session, String> {
        let mut url = format!("{}{path}", self.nodes[node % self.nodes.len()]);
        for _ in 0..2 {
            let r = self
                .agent
                .post(&url)
                .header("authorization", format!("Bearer {token}"))
                .content_type("application/sdp")
                .send(sdp.to_string());
            match Api::answer(path, r)? {
                (201, answer, Some(location)) => {
                    let location = absolute(&url, &location);
                    return Ok(Session { answer, location });
                }
                (307, _, Some(home)) => url = absolute(&url, &home),
                (s, body, _) => return Err(format!("POST {url}: {s} {body}")),
            }
        }
        Err(format!("POST {path}: redirected more than once"))
    }

    /// Ends a session (its absolute location); errors are ignored because the relay ends idle
    /// sessions on its own.
    pub fn end(&self, location: &str, token: &str) {
        let _ = self
            .agent
            .delete(location)
            .header("authorization", format!("Bearer {token}"))
            .call();
    }

    /// `GET /api/info`: the file plane's QUIC address and its certificate's SHA-256.
    pub fn info(&self) -> Result<Info, String> {
        let r = self
            .agent
            .get(format!("{}/api/info", self.base))
            .header("authorization", format!("Bearer {}", self.admin))
            .call();
        match Api::answer("/api/info", r)? {
            (200, text, _) => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("/api/info: {e}"))?;
                Ok(Info {
                    quic: v["quic"].as_str().map(String::from),
                    cert_sha256: v["cert_sha256"].as_str().unwrap_or_default().to_string(),
                })
            }
            (s, body, _) => Err(format!("GET /api/info: {s} {body}")),
        }
    }

    /// Every node's metrics, added up.
    pub fn metrics(&self) -> Result<Metrics, String> {
        let mut sum = Metrics::default();
        for (_, m) in self.node_metrics()? {
            sum.add(&m);
        }
        Ok(sum)
    }

    /// Each node's metrics, by its URL.
    pub fn node_metrics(&self) -> Result<Vec<(String, Metrics)>, String> {
        self.nodes
            .iter()
            .map(|node| {
                let r = self.agent.get(format!("{node}/metrics")).call();
                match Api::answer("/metrics", r)? {
                    (200, text, _) => Ok((node.clone(), Metrics::parse(&text))),
                    (s, body, _) => Err(format!("GET {node}/metrics: {s} {body}")),
                }
            })
            .collect()
    }
}

/// What `/api/info` says of the file plane.
#[derive(Debug, Clone)]
pub struct Info {
    pub quic: Option<String>,
    pub cert_sha256: String,
}

/// Where the relay's CPU time comes from: `/proc` of our own child, its `/metrics`, or the
/// `/proc` of each node of a cluster this started (read into each node's metrics).
#[derive(Debug, Clone, Copy)]
pub enum Cpu {
    Proc(u32),
    Metrics,
    Nodes,
}

impl Cpu {
    /// The process's CPU seconds now; `metrics` is a scrape taken at the same moment.
    pub fn seconds(&self, metrics: &Metrics) -> Result<f64, String> {
        match self {
            Cpu::Proc(pid) => process_cpu_seconds(*pid),
            Cpu::Metrics | Cpu::Nodes => Ok(metrics.process_cpu_seconds),
        }
    }

    pub fn source(&self) -> &'static str {
        match self {
            Cpu::Proc(_) | Cpu::Nodes => "proc",
            Cpu::Metrics => "metrics",
        }
    }
}

/// Which relay a run loads: the command-line options every mode shares.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// A running relay's HTTP base URL (http://host:port), or a cluster's nodes separated by
    /// commas: rooms are spread over them (room i through node i), each reported on its own.
    /// Needs --admin-token.
    #[arg(long)]
    pub target: Option<String>,
    /// A token with the admin grant for one organisation of the --target relay.
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The relay binary to start instead of the one beside this executable.
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
}

impl Target {
    pub fn check(&self) -> Result<(), String> {
        if self.target.is_some() != self.admin_token.is_some() {
            return Err("--target and --admin-token go together".into());
        }
        if let Some(t) = &self.target
            && !t
                .split(',')
                .all(|u| u.trim().starts_with("http://") || u.trim().starts_with("https://"))
        {
            return Err("--target takes http:// URLs, separated by commas".into());
        }
        Ok(())
    }
}

/// The relay a run loads: the one at `--target` with an admin token, or else one started here
/// from `--relay-bin` (default: beside this executable), which the caller keeps alive.
pub fn attach(
    t: &Target,
    workers: usize,
    io_batch: u16,
    io: RelayIo,
    max_sessions: usize,
    say: impl Fn(&str),
) -> Result<(Option<OwnRelay>, Api, Cpu), String> {
    if let (Some(url), Some(token)) = (&t.target, &t.admin_token) {
        let nodes: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
        return Ok((None, Api::cluster(&nodes, token)?, Cpu::Metrics));
    }
    let bin = match &t.relay_bin {
        Some(b) => b.clone(),
        None => relay_beside_me()?,
    };
    say(&format!("starting {}", bin.display()));
    let relay = OwnRelay::start(&bin, workers, io_batch, io, max_sessions)?;
    let admin = relay.admin_token()?;
    let api = Api::new(&relay.http, &admin)?;
    let pid = relay.pid().ok_or_else(|| "the relay exited".to_string())?;
    Ok((Some(relay), api, Cpu::Proc(pid)))
}

/// The organisation named in a token's claims (`v1.<base64url JSON>.<tag>`).
fn token_org(token: &str) -> Result<String, String> {
    let claims = token
        .split('.')
        .nth(1)
        .ok_or_else(|| "the admin token is not of the v1.<claims>.<tag> shape".to_string())?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|e| format!("the admin token's claims are not base64url: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| format!("the admin token's claims are not JSON: {e}"))?;
    v["org"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| "the admin token names no organisation".to_string())
}

/// The figures the load test reads from `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub packets_received: f64,
    pub packets_forwarded: f64,
    pub bytes_forwarded: f64,
    pub packets_dropped: f64,
    pub layer_switches: f64,
    pub keyframe_requests: f64,
    /// `relay_forward_delay_seconds`: (upper bound, cumulative count), `+Inf` last.
    pub delay_buckets: Vec<(f64, f64)>,
    pub process_cpu_seconds: f64,
    pub process_rss_bytes: f64,
    pub files_bytes_received: f64,
    pub files_bytes_deduplicated: f64,
    /// Publishing and subscribing sessions open now.
    pub sessions: f64,
}

impl Metrics {
    /// Adds `other`'s figures to these (another node's, with the same histogram buckets).
    pub fn add(&mut self, other: &Metrics) {
        self.packets_received += other.packets_received;
        self.packets_forwarded += other.packets_forwarded;
        self.bytes_forwarded += other.bytes_forwarded;
        self.packets_dropped += other.packets_dropped;
        self.layer_switches += other.layer_switches;
        self.keyframe_requests += other.keyframe_requests;
        self.sessions += other.sessions;
        if self.delay_buckets.is_empty() {
            self.delay_buckets = other.delay_buckets.clone();
        } else {
            for (mine, theirs) in self.delay_buckets.iter_mut().zip(&other.delay_buckets) {
                mine.1 += theirs.1;
            }
        }
        self.process_cpu_seconds += other.process_cpu_seconds;
        self.process_rss_bytes += other.process_rss_bytes;
        self.files_bytes_received += other.files_bytes_received;
        self.files_bytes_deduplicated += other.files_bytes_deduplicated;
    }

    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            match name {
                "relay_media_packets_received_total" => m.packets_received = v,
                "relay_media_packets_forwarded_total" => m.packets_forwarded = v,
                "relay_media_bytes_forwarded_total" => m.bytes_forwarded = v,
                "relay_media_packets_dropped_total" => m.packets_dropped += v,
                "relay_layer_switches_total" => m.layer_switches = v,
                "relay_keyframe_requests_total" => m.keyframe_requests = v,
                "relay_publishers" | "relay_subscribers" => m.sessions += v,
                "process_cpu_seconds_total" => m.process_cpu_seconds = v,
                "process_resident_memory_bytes" => m.process_rss_bytes = v,
                "relay_files_bytes_received_total" => m.files_bytes_received = v,
                "relay_files_bytes_deduplicated_total" => m.files_bytes_deduplicated = v,
                "relay_forward_delay_seconds_bucket" => {
                    let le = series
                        .split("le=\"")
                        .nth(1)
                        .and_then(|s| s.split('"').next())
                        .map(|s| {
                            if s == "+Inf" {
                                f64::INFINITY
                            } else {
                                s.parse().unwrap_or(f64::NAN)
                            }
                        });
                    if let Some(le) = le.filter(|x| !x.is_nan()) {
                        m.delay_buckets.push((le, v));
                    }
                }
                _ => {}
            }
        }
        m.delay_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        m
    }
}

/// Quantile `q` of the histogram difference `b - a`, interpolated linearly inside the bucket
/// as Prometheus' `histogram_quantile` does; `None` without observations.
pub fn histogram_quantile(a: &[(f64, f64)], b: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> = b
        .iter()
        .map(|&(le, cb)| {
            let ca = a.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, cb - ca)
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, c) in &diff {
        if c >= rank {
            if le.is_infinite() {
                // Above the last finite bound: that bound is all we can say.
                return Some(lower.0);
            }
            let in_bucket = c - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, c);
    }
    None
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    stat_cpu_seconds(&text).ok_or_else(|| format!("cannot parse /proc/{pid}/stat"))
}

/// utime + stime of a `stat` line; fields counted after the `)` that ends the command name,
/// which may itself hold spaces.
fn stat_cpu_seconds(text: &str) -> Option<f64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, utime field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / sys::clock_ticks_per_second())
}

/// CPU seconds of a process's threads whose name starts with `prefix`.
pub fn threads_cpu_seconds(pid: u32, prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.find('(').is_some_and(|i| s[i + 1..].starts_with(prefix)))
        .filter_map(|s| stat_cpu_seconds(&s))
        .sum()
}

/// Resident set size of a process in bytes, and its peak, from `/proc/<pid>/status`.
pub fn process_rss(pid: u32) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_histogram_quantile() {
        let text = "# HELP x\nrelay_media_packets_forwarded_total 1000\n\
            relay_media_packets_dropped_total{reason=\"stale\"} 2\n\
            relay_media_packets_dropped_total{reason=\"send_failed\"} 3\n\
            relay_forward_delay_seconds_bucket{le=\"0.0001\"} 50\n\
            relay_forward_delay_seconds_bucket{le=\"0.001\"} 100\n\
            relay_forward_delay_seconds_bucket{le=\"+Inf\"} 100\n";
        let m = Metrics::parse(text);
        assert_eq!(m.packets_forwarded, 1000.0);
        assert_eq!(m.packets_dropped, 5.0);
        assert_eq!(m.delay_buckets.len(), 3);
        let q = histogram_quantile(&[], &m.delay_buckets, 0.5).unwrap();
        assert!((q - 0.0001).abs() < 1e-12, "{q}");
        let q = histogram_quantile(&[], &m.delay_buckets, 0.75).unwrap();
        assert!((q - 0.00055).abs() < 1e-9, "{q}");
        assert_eq!(
            histogram_quantile(&m.delay_buckets, &m.delay_buckets, 0.5),
            None
        );
        // Two nodes' figures add up, bucket by bucket.
        let mut sum = Metrics::default();
        sum.add(&m);
        sum.add(&m);
        assert_eq!(sum.packets_forwarded, 2000.0);
        assert_eq!(sum.packets_dropped, 10.0);
        let counts: Vec<f64> = sum.delay_buckets.iter().map(|b| b.1).collect();
        assert_eq!(counts, [100.0, 200.0, 200.0]);
    }

    #[test]
    fn a_location_resolves_against_the_node_that_answered() {
        let url = "http://127.0.0.1:9001/whip/r?source=camera";
        assert_eq!(
            absolute(url, "/whip/r/abc"),
            "http://127.0.0.1:9001/whip/r/abc"
        );
        assert_eq!(
            absolute(url, "http://127.0.0.1:9002/whip/r?source=camera"),
            "http://127.0.0.1:9002/whip/r?source=camera"
        );
        assert_eq!(absolute("http://h:1", "/x"), "http://h:1/x");
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "42 (media worker) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0";
        let secs = stat_cpu_seconds(line).unwrap();
        assert!((secs - 500.0 / sys::clock_ticks_per_second()).abs() < 1e-9);
    }
}
