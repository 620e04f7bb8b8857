//! Janus's VideoRoom beside us: starting Debian's `janus` on loopback only, and driving its
//! VideoRoom plugin through the HTTP API, so the same simulated clients can load it.
//!
//! The configuration is Debian's own (`/etc/janus`) copied into a throwaway folder and changed
//! only where a loopback benchmark needs it: ICE on `lo` alone, the HTTP transport on
//! 127.0.0.1 and a free port, every other plugin, transport, logger and event handler off.
//!
//! The API is JSON over HTTP: requests are POSTs; what a plugin answers later (a JSEP answer or
//! offer, `joined`, `started`) comes back on the session's long poll, which one thread keeps
//! open for the whole run (it also keeps the session alive). Everything Janus sends is checked
//! and turned into an error, never a panic. Every wait is bounded.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::appliance::{Cpu, Metrics, STOP_GRACE};
use crate::target::{Options, Sfu};
use relay_kit::netns;
use relay_kit::peer::Peer;
use relay_kit::process::Daemon;

/// How long Janus may take to answer its info request after starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a plugin may take to send the event a request waits for.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Events waiting to be claimed; more means nobody is claiming them.
const MAX_PENDING_EVENTS: usize = 10_000;
/// How the VideoRoom's "no such feed" error ends (its code 428).
const NO_SUCH_FEED: &str = "(code 428)";
/// The configuration files taken from Debian's folder.
const FILES: [&str; 3] = [
    "janus.jcfg",
    "janus.transport.http.jcfg",
    "janus.plugin.videoroom.jcfg",
];

/// The interface Janus gathers its ICE candidates on, in the run's own network namespace.
const ICE_INTERFACE: &str = "ltjanus0";
/// Its address: loopback range, on an interface that is not the loopback one.
const ICE_ADDRESS: &str = "127.0.0.2";

/// Moves this process into a network namespace of its own where Janus can gather candidates on
/// loopback addresses, which it cannot do on `lo` itself: Janus skips loopback interfaces, so
/// a veth end carries 127.0.0.2, and since libnice pins each socket to its interface, a second
/// local route sends 127.0.0.1 through that interface back to the loopback device. Nothing but
/// 127.0.0.0/8 is reachable there. Call it before starting any thread or process that should
/// live in the namespace (the relay, the clients and Janus alike).
pub fn enter_namespace() -> Result<(), String> {
    netns::unshare_network().map_err(|e| {
        format!("runs beside Janus need a network namespace of their own, as root: unshare: {e}")
    })?;
    let peer = format!("{ICE_INTERFACE}p");
    let steps: [&[&str]; 6] = [
        &["link", "set", "lo", "up"],
        &[
            "link",
            "add",
            ICE_INTERFACE,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ],
        &[
            "addr",
            "add",
            &format!("{ICE_ADDRESS}/32"),
            "dev",
            ICE_INTERFACE,
        ],
        &["link", "set", &peer, "up"],
        &["link", "set", ICE_INTERFACE, "up"],
        &[
            "route",
            "add",
            "local",
            "127.0.0.1/32",
            "dev",
            ICE_INTERFACE,
            "table",
            "local",
            "metric",
            "10",
        ],
    ];
    for args in steps {
        netns::ip(args)?;
    }
    Ok(())
}

/// Checks that every candidate in Janus's SDP is on a loopback address, so that no client
/// ever sends a packet anywhere else.
fn loopback_only(sdp: &str) -> Result<(), String> {
    for line in sdp.lines().filter(|l| l.starts_with("a=candidate:")) {
        let addr = line.split_whitespace().nth(4).unwrap_or("");
        let ok = addr
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if !ok {
            return Err(format!(
                "janus offers a candidate outside loopback ({addr}); refusing to connect"
            ));
        }
    }
    Ok(())
}

/// A Janus process this run started, on loopback, stopped when dropped.
#[derive(Debug)]
pub struct OwnJanus {
    process: Daemon,
    /// `http://127.0.0.1:PORT/janus`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl OwnJanus {
    /// Starts `bin` on a loopback-only copy of the configuration in `configs`.
    pub fn start(bin: &Path, configs: &Path) -> Result<OwnJanus, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port()?;
        let main = write_configs(configs, dir.path(), port)?;
        let process = Daemon::spawn(
            Command::new(bin)
                .arg("-C")
                .arg(&main)
                .arg("-F")
                .arg(dir.path()),
        )
        .map_err(|e| format!("{e} (install it with `apt-get install -y janus`)"))?;
        let mut janus = OwnJanus {
            process,
            url: format!("http://127.0.0.1:{port}/janus"),
            _dir: dir,
        };
        let agent = agent(Duration::from_secs(2));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let up = agent
                .get(format!("{}/info", janus.url))
                .call()
                .ok()
                .is_some_and(|r| r.status().as_u16() == 200);
            if up {
                return Ok(janus);
            }
            if janus.process.exited() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("janus did not come up:\n{}", janus.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn stop(&mut self) -> bool {
        self.process
            .stop_within(STOP_GRACE)
            .is_some_and(|s| s.success())
    }
}

/// A port on 127.0.0.1 nobody listens on now (the kernel's choice; a race with another
/// program taking it in between is possible but shows up as Janus failing to start).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}

/// Copies the three configuration files from `from` into `to`, made loopback-only with the
/// HTTP API on `port`; returns the main file's path.
fn write_configs(from: &Path, to: &Path, port: u16) -> Result<PathBuf, String> {
    let read = |name: &str| {
        std::fs::read_to_string(from.join(name))
            .map_err(|e| format!("read {}: {e}", from.join(name).display()))
    };
    let main = read(FILES[0])?;
    let folder = |key: &str, default: &str| {
        PathBuf::from(setting(&main, key).unwrap_or_else(|| default.to_string()))
    };
    let lib = "/usr/lib/x86_64-linux-gnu/janus";
    let others = |dir: PathBuf, keep: &str| -> String {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".so") && n != keep)
            .collect();
        names.sort();
        names.join(",")
    };
    let plugins = others(
        folder("plugins_folder", &format!("{lib}/plugins")),
        "libjanus_videoroom.so",
    );
    let transports = others(
        folder("transports_folder", &format!("{lib}/transports")),
        "libjanus_http.so",
    );
    let events = others(folder("events_folder", &format!("{lib}/events")), "");
    let loggers = others(folder("loggers_folder", &format!("{lib}/loggers")), "");
    let dir = to.display().to_string();
    let main = patch(
        &main,
        &[
            ("general", "configs_folder", quoted(&dir)),
            ("nat", "ice_enforce_list", quoted(ICE_INTERFACE)),
            ("nat", "stun_server", None),
            ("nat", "turn_server", None),
            ("nat", "nat_1_1_mapping", None),
            ("media", "ipv6", Some("false".into())),
            ("plugins", "disable", quoted(&plugins)),
            ("transports", "disable", quoted(&transports)),
            ("events", "broadcast", Some("false".into())),
            ("events", "disable", quoted(&events)),
            ("loggers", "disable", quoted(&loggers)),
        ],
    );
    let http = patch(
        &read(FILES[1])?,
        &[
            ("general", "http", Some("true".into())),
            ("general", "https", Some("false".into())),
            ("general", "ip", quoted("127.0.0.1")),
            ("general", "interface", None),
            ("general", "port", Some(port.to_string())),
            ("admin", "admin_http", Some("false".into())),
            ("admin", "admin_https", Some("false".into())),
        ],
    );
    let videoroom = read(FILES[2])?;
    for (name, text) in FILES.iter().zip([&main, &http, &videoroom]) {
        std::fs::write(to.join(name), text)
            .map_err(|e| format!("write {}: {e}", to.join(name).display()))?;
    }
    Ok(to.join(FILES[0]))
}

fn quoted(v: &str) -> Option<String> {
    Some(format!("\"{v}\""))
}

/// The value of a `key = "value"` line that is not commented out, anywhere in the file.
fn setting(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == key).then(|| {
            v.split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_string()
        })
    })
}

/// A libconfig file with `section.key` set to each value (or left unset with `None`): an
/// existing setting of that key in its section is commented out, the new one goes first in
/// the section, and a missing section is added at the end.
fn patch(text: &str, settings: &[(&str, &str, Option<String>)]) -> String {
    let mut out = String::with_capacity(text.len() + 512);
    let mut section: Option<String> = None;
    let mut seen: Vec<&str> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if section.is_none() {
            if let Some(name) = t.strip_suffix('{').and_then(|h| h.trim().strip_suffix(':')) {
                let name = name.trim();
                out += line;
                out.push('\n');
                for (s, k, v) in settings.iter().filter(|(s, _, _)| *s == name) {
                    seen.push(s);
                    if let Some(v) = v {
                        out += &format!("\t{k} = {v}\n");
                    }
                }
                section = Some(name.to_string());
                continue;
            }
        } else if t.starts_with('}') {
            section = None;
        } else if let Some(name) = &section {
            let key = t.split('=').next().unwrap_or("").trim();
            if !t.starts_with('#') && settings.iter().any(|(s, k, _)| s == name && *k == key) {
                out += "#";
            }
        }
        out += line;
        out.push('\n');
    }
    let mut missing: Vec<&str> = settings
        .iter()
        .map(|(s, _, _)| *s)
        .filter(|s| !seen.contains(s))
        .collect();
    missing.dedup();
    for name in missing {
        out += &format!("{name}: {{\n");
        for (_, k, v) in settings.iter().filter(|(s, _, _)| *s == name) {
            if let Some(v) = v {
                out += &format!("\t{k} = {v}\n");
            }
        }
        out += "}\n";
    }
    out
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build(),
    )
}

/// Events from the long poll that a request may claim, by handle and transaction.
#[derive(Debug, Default)]
struct Mailbox {
    events: Mutex<Vec<Value>>,
    arrived: Condvar,
}

/// One Janus session with its long poll; every participant is a handle on it.
#[derive(Debug)]
pub struct Session {
    url: String,
    id: u64,
    agent: ureq::Agent,
    mailbox: Arc<Mailbox>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
    next_transaction: AtomicU64,
}

/// A handle's answer to a message: the plugin's data and the JSEP that came with it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub data: Value,
    pub jsep: Option<Value>,
}

impl Reply {
    /// The SDP of the JSEP of `kind` (`offer` or `answer`).
    pub fn sdp(&self, kind: &str) -> Result<String, String> {
        let jsep = self
            .jsep
            .as_ref()
            .ok_or_else(|| format!("janus sent no JSEP {kind}: {}", self.data))?;
        if jsep["type"].as_str() != Some(kind) {
            return Err(format!(
                "janus sent a JSEP of type {} where an {kind} was due",
                jsep["type"]
            ));
        }
        jsep["sdp"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| "janus sent a JSEP without sdp".to_string())
    }
}

impl Session {
    /// Creates a session at `url` (`http://127.0.0.1:PORT/janus`) and opens its long poll,
    /// which ends at `deadline` at the latest.
    pub fn create(url: &str, deadline: Instant) -> Result<Session, String> {
        let mut s = Session {
            url: url.trim_end_matches('/').to_string(),
            id: 0,
            agent: agent(Duration::from_secs(20)),
            mailbox: Arc::new(Mailbox::default()),
            stop: Arc::new(AtomicBool::new(false)),
            poller: None,
            next_transaction: AtomicU64::new(0),
        };
        let r = s.post("", json!({"janus": "create"}))?;
        s.id = id_of(&r, "create")?;
        let url = format!("{}/{}?maxev=50", s.url, s.id);
        let (mailbox, stop) = (s.mailbox.clone(), s.stop.clone());
        s.poller = Some(
            std::thread::Builder::new()
                .name("janus-poll".into())
                .spawn(move || poll(&url, &mailbox, &stop, deadline))
                .map_err(|e| format!("start the janus poll thread: {e}"))?,
        );
        Ok(s)
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next_transaction.fetch_add(1, Ordering::Relaxed))
    }

    /// POSTs `body` with a fresh transaction to `url/path`.
    fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let transaction = self.transaction();
        self.post_with(path, body, &transaction)
    }

    /// Attaches a VideoRoom handle.
    pub fn attach(&self) -> Result<u64, String> {
        let r = self.post(
            &format!("/{}", self.id),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )?;
        id_of(&r, "attach")
    }

    /// Sends a VideoRoom request on `handle` and returns the plugin's answer: at once for a
    /// synchronous request, else the event carrying the same transaction from the long poll.
    pub fn message(&self, handle: u64, body: Value, jsep: Option<Value>) -> Result<Reply, String> {
        let what = body["request"].as_str().unwrap_or("request").to_string();
        let transaction = self.transaction();
        let mut msg = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let r = self.post_with(&format!("/{}/{handle}", self.id), msg, &transaction)?;
        let v = match r["janus"].as_str() {
            Some("success") => r,
            Some("ack") => self.wait(handle, &transaction, &what)?,
            _ => return Err(format!("janus {what}: unexpected answer {r}")),
        };
        let data = v["plugindata"]["data"].clone();
        if data.is_null() {
            return Err(format!("janus {what}: no plugin data in {v}"));
        }
        if let Some(e) = data.get("error") {
            return Err(format!("janus {what}: {e} (code {})", data["error_code"]));
        }
        Ok(Reply {
            data,
            jsep: v.get("jsep").cloned(),
        })
    }

    /// POSTs `body` with `transaction` to `url/path`; Janus's `error` is an error.
    fn post_with(&self, path: &str, mut body: Value, transaction: &str) -> Result<Value, String> {
        body["transaction"] = json!(transaction);
        let what = body["body"]["request"]
            .as_str()
            .or(body["janus"].as_str())
            .unwrap_or("request")
            .to_string();
        let mut resp = self
            .agent
            .post(format!("{}{path}", self.url))
            .content_type("application/json")
            .send(body.to_string())
            .map_err(|e| format!("janus {what}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if status != 200 {
            return Err(format!("janus {what}: HTTP {status} {text}"));
        }
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("janus {what}: not JSON ({e}): {text}"))?;
        if v["janus"] == "error" {
            return Err(format!("janus {what}: {}", v["error"]));
        }
        Ok(v)
    }

    /// The long poll's event for `handle` and `transaction`, within [`EVENT_TIMEOUT`].
    fn wait(&self, handle: u64, transaction: &str, what: &str) -> Result<Value, String> {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut events = self
            .mailbox
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(i) = events.iter().position(|e| {
                e["sender"].as_u64() == Some(handle) && e["transaction"] == transaction
            }) {
                return Ok(events.remove(i));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.load(Ordering::Relaxed) {
                return Err(format!(
                    "janus {what}: no answer within {}",
                    humantime::format_duration(EVENT_TIMEOUT)
                ));
            }
            events = self
                .mailbox
                .arrived
                .wait_timeout(events, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The poll returns within Janus's 30 s long-poll limit, or at once once Janus is gone;
        // it is not waited for here so that dropping never blocks on a live server.
        drop(self.poller.take());
    }
}

/// `data.id` of a `success` answer.
fn id_of(v: &Value, what: &str) -> Result<u64, String> {
    match (v["janus"].as_str(), v["data"]["id"].as_u64()) {
        (Some("success"), Some(id)) => Ok(id),
        _ => Err(format!("janus {what}: unexpected answer {v}")),
    }
}

/// The long poll: keeps the session's events (those answering a request) in the mailbox until
/// told to stop or `deadline`.
fn poll(url: &str, mailbox: &Mailbox, stop: &AtomicBool, deadline: Instant) {
    // Janus holds a long poll for 30 s at most.
    let agent = agent(Duration::from_secs(40));
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let text = agent
            .get(url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok());
        let Some(v) = text.and_then(|t| serde_json::from_str::<Value>(&t).ok()) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let batch = match v {
            Value::Array(a) => a,
            v => vec![v],
        };
        let mut events = mailbox.events.lock().unwrap_or_else(|p| p.into_inner());
        for e in batch.into_iter().filter(|e| e.get("transaction").is_some()) {
            if events.len() >= MAX_PENDING_EVENTS {
                events.remove(0);
            }
            events.push(e);
        }
        mailbox.arrived.notify_all();
    }
}

/// Janus's VideoRoom as the media run's SFU: one room per run room, one handle per
/// participant on one session.
#[derive(Debug)]
pub struct VideoRoom {
    session: Session,
    pid: u32,
    /// Room ids, and each room's publishers' feed ids as they join.
    rooms: Vec<(u64, Vec<u64>)>,
}

impl VideoRoom {
    /// Opens a session on `janus` whose long poll lasts until `deadline` at the latest.
    pub fn new(janus: &OwnJanus, deadline: Instant) -> Result<VideoRoom, String> {
        Ok(VideoRoom {
            session: Session::create(&janus.url, deadline)?,
            pid: janus.pid().ok_or_else(|| "janus exited".to_string())?,
            rooms: Vec::new(),
        })
    }
}

/// The simulcast substream (0 lowest) our relay's grid shows on `tiles` tiles: 1 highest,
/// 2 to 4 middle, more lowest.
fn substream(tiles: usize) -> u64 {
    match tiles {
        1 => 2,
        2..=4 => 1,
        _ => 0,
    }
}

impl Sfu for VideoRoom {
    fn name(&self) -> &'static str {
        "janus"
    }

    fn prepare(&mut self, o: &Options, prefix: &str) -> Result<(), String> {
        let control = self.session.attach()?;
        for r in 0..o.rooms {
            let reply = self.session.message(
                control,
                json!({
                    "request": "create",
                    "description": format!("{prefix}-room{r}"),
                    "publishers": o.publishers,
                    "videocodec": "vp8",
                    "audiocodec": "opus",
                    "bitrate": 0,
                    "is_private": true,
                }),
                None,
            )?;
            let id = reply.data["room"]
                .as_u64()
                .ok_or_else(|| format!("janus create: no room id in {}", reply.data))?;
            self.rooms.push((id, Vec::new()));
        }
        Ok(())
    }

    fn publish(
        &mut self,
        _: &Options,
        room: usize,
        index: usize,
        peer: &mut Peer,
    ) -> Result<(), String> {
        let (id, feeds) = &mut self.rooms[room];
        let handle = self.session.attach()?;
        let joined = self.session.message(
            handle,
            json!({"request": "join", "ptype": "publisher", "room": *id, "display": format!("p{index}")}),
            None,
        )?;
        let feed = joined.data["id"]
            .as_u64()
            .ok_or_else(|| format!("janus join: no publisher id in {}", joined.data))?;
        let offer = peer.publisher_offer()?;
        // Our layers are named lowest first; Janus takes the order from `rid_order`.
        let reply = self.session.message(
            handle,
            json!({"request": "configure", "audio": true, "video": true}),
            Some(json!({"type": "offer", "sdp": offer, "trickle": false, "rid_order": "lmh"})),
        )?;
        let answer = reply.sdp("answer")?;
        loopback_only(&answer)?;
        peer.accept(&answer)?;
        feeds.push(feed);
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
        let (id, feeds) = &self.rooms[room];
        let others: Vec<u64> = feeds
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != own)
            .map(|(_, f)| *f)
            .collect();
        if others.is_empty() {
            return Ok(false);
        }
        // As many feeds as slots, the watchers spread over the publishers.
        let tiles = o.slots.min(others.len());
        let streams: Vec<Value> = (0..tiles)
            .map(|k| json!({"feed": others[(index + k) % others.len()]}))
            .collect();
        let handle = self.session.attach()?;
        let join =
            json!({"request": "join", "ptype": "subscriber", "room": *id, "streams": streams});
        // A feed is there once its publisher's connection is up on Janus's side too, which
        // may be a moment after ours.
        let mut tries = 0;
        let joined = loop {
            match self.session.message(handle, join.clone(), None) {
                Err(e) if e.contains(NO_SUCH_FEED) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => break r?,
            }
        };
        let offer = joined.sdp("offer")?;
        loopback_only(&offer)?;
        let answer = peer.answer_offer(&offer)?;
        self.session.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
        )?;
        let video: Vec<Value> = joined.data["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["type"] == "video")
            .filter_map(|s| s["mid"].as_str())
            .map(|mid| json!({"mid": mid, "substream": substream(tiles)}))
            .collect();
        if !video.is_empty() {
            self.session.message(
                handle,
                json!({"request": "configure", "streams": video}),
                None,
            )?;
        }
        Ok(true)
    }

    fn metrics(&self) -> Result<Option<Metrics>, String> {
        Ok(None)
    }

    fn cpu(&self) -> Cpu {
        Cpu::Proc(self.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_keys_in_their_sections_and_comments_out_the_old_ones() {
        let text = "general: {\n\tport = 8088\n\t#ip = \"1.2.3.4\"\n}\nnat: {\n\tnice_debug = false\n\tstun_server = \"x\"\n}\n";
        let out = patch(
            text,
            &[
                ("general", "port", Some("9000".into())),
                ("general", "ip", quoted("127.0.0.1")),
                ("nat", "stun_server", None),
                ("plugins", "disable", quoted("a.so,b.so")),
            ],
        );
        assert_eq!(
            out,
            "general: {\n\tport = 9000\n\tip = \"127.0.0.1\"\n#\tport = 8088\n\t#ip = \"1.2.3.4\"\n}\n\
             nat: {\n\tnice_debug = false\n#\tstun_server = \"x\"\n}\nplugins: {\n\tdisable = \"a.so,b.so\"\n}\n"
        );
        assert_eq!(setting(&out, "port").as_deref(), Some("9000"));
        assert_eq!(setting(&out, "stun_server"), None);
    }

    #[test]
    fn replies_without_the_expected_jsep_are_errors() {
        let r = Reply {
            data: json!({"videoroom": "attached"}),
            jsep: Some(json!({"type": "answer", "sdp": "v=0"})),
        };
        assert_eq!(r.sdp("answer").unwrap(), "v=0");
        assert!(r.sdp("offer").is_err());
        let r = Reply {
            data: json!({}),
            jsep: Some(json!({"type": "offer"})),
        };
        assert!(r.sdp("offer").is_err());
    }

    #[test]
    fn candidates_outside_loopback_are_refused() {
        let ok = "v=0\r\na=candidate:1 1 udp 2015363327 127.0.0.2 37848 typ host\r\n";
        assert!(loopback_only(ok).is_ok());
        let bad = "a=candidate:1 1 udp 2015363327 127.0.0.2 1 typ host\r\n\
                   a=candidate:2 1 udp 2015363327 192.0.2.2 2 typ host\r\n";
        assert!(loopback_only(bad).unwrap_err().contains("192.0.2.2"));
        assert!(loopback_only("a=candidate:1 1 udp 1 nonsense").is_err());
    }
}
