//! Witnesses of the audit log outside the relay's reach, and the check of the log against one.
//!
//! The hash chain in `audit.log` shows that lines were changed, removed or inserted, but whoever
//! can write the data directory can also re-chain the file and update its anchor. So every line,
//! as it is written, also goes to a witness the relay cannot rewrite:
//!
//! - a syslog server, as RFC 5424 messages over TCP with octet-counting framing (RFC 6587),
//!   `audit.syslog = "tcp://HOST:PORT"`: APP-NAME `relay-audit`, MSGID `line` for an audit line
//!   and `head` for the chain head published every `audit.head_interval`, the JSON as the MSG;
//! - the systemd journal, where the relay runs under systemd (`SYSLOG_IDENTIFIER=relay-audit`).
//!
//! Sending never blocks the audit writer: a thread of its own keeps what it has not delivered
//! (up to [`MAX_QUEUED`] lines; beyond that the oldest are dropped and counted) and reconnects
//! once a second while the server is away. TCP syslog has no acknowledgement, so lines written
//! into a connection that then breaks can be lost; [`compare`] reports them as lines only the
//! local log has, which an operator reads beside the relay's own log of the outage.
//!
//! [`compare`] holds the local log against the witness's file (rsyslog's default file format:
//! its timestamp and host, the tag `relay-audit[PID]:`, then the JSON) and names the first line
//! that differs, the lines missing on either side, and heads that do not match.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Lines kept for a syslog server that is away; beyond it the oldest are dropped.
pub const MAX_QUEUED: usize = 100_000;
/// The APP-NAME of every message.
pub const APP_NAME: &str = "relay-audit";

/// A message for the witnesses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// An audit line as written to the log (without its newline).
    Line(Vec<u8>),
    /// The chain's head: lines written so far and the hash of the last one.
    Head { lines: u64, hash: String },
}

impl Message {
    fn msgid(&self) -> &'static str {
        match self {
            Message::Line(_) => "line",
            Message::Head { .. } => "head",
        }
    }

    fn body(&self) -> Vec<u8> {
        match self {
            Message::Line(l) => l.clone(),
            Message::Head { lines, hash } => serde_json::json!({"head": hash, "lines": lines})
                .to_string()
                .into_bytes(),
        }
    }
}

/// Counters of the witnesses, published as metrics.
#[derive(Debug, Default)]
pub struct WitnessCounters {
    /// Messages delivered to the syslog server (written into its connection).
    pub sent: AtomicU64,
    /// Messages dropped because the queue for an absent server was full.
    pub dropped: AtomicU64,
    /// Lines of the chain written so far, and the first 48 bits of the last one's hash.
    pub head_lines: AtomicU64,
    pub head_prefix: AtomicU64,
}

impl WitnessCounters {
    /// Records the chain's head for the metrics.
    pub fn set_head(&self, lines: u64, hash: &str) {
        self.head_lines.store(lines, Ordering::Relaxed);
        self.head_prefix
            .store(hex_prefix48(hash), Ordering::Relaxed);
    }
}

/// Where audit lines go besides the log.
#[derive(Debug, Default)]
pub struct Witnesses {
    syslog: Option<Syslog>,
    journal: Option<Journal>,
    pub counters: Arc<WitnessCounters>,
}

/// The syslog sender thread and its queue.
#[derive(Debug)]
struct Syslog {
    tx: Option<mpsc::Sender<Message>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a stopping process waits for its last lines to reach the syslog server.
const FLUSH_WAIT: Duration = Duration::from_secs(3);

impl Drop for Syslog {
    /// Gives what is queued a last chance to go out, for at most [`FLUSH_WAIT`]: a command that
    /// writes one line and exits must not lose it.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + FLUSH_WAIT;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Witnesses {
    /// No witness outside the relay.
    pub fn none() -> Witnesses {
        Witnesses::default()
    }

    /// Sends to the syslog server at `url` (`tcp://HOST:PORT`), and to the journal where systemd
    /// runs the relay.
    pub fn new(url: Option<&str>) -> Result<Witnesses, String> {
        let counters = Arc::new(WitnessCounters::default());
        let syslog = match url {
            Some(url) => {
                let addr = parse_url(url)?;
                let (tx, rx) = mpsc::channel();
                let c = counters.clone();
                let thread = std::thread::Builder::new()
                    .name("audit-syslog".into())
                    .spawn(move || syslog_loop(&addr, &rx, &c))
                    .map_err(|e| format!("cannot start the syslog sender: {e}"))?;
                Some(Syslog {
                    tx: Some(tx),
                    thread: Some(thread),
                })
            }
            None => None,
        };
        Ok(Witnesses {
            syslog,
            journal: Journal::of_environment(),
            counters,
        })
    }

    /// Is any witness outside the relay configured?
    pub fn any(&self) -> bool {
        self.syslog.is_some() || self.journal.is_some()
    }

    /// Hands `message` to every witness; never blocks on the network.
    pub fn send(&self, message: &Message) {
        if let Some(tx) = self.syslog.as_ref().and_then(|s| s.tx.as_ref()) {
            // The sender thread lives as long as this handle.
            let _ = tx.send(message.clone());
        }
        if let Some(j) = &self.journal {
            j.send(message);
        }
    }
}

/// The first 48 bits of a hex hash as a number, exact in a Prometheus sample (a double).
fn hex_prefix48(hash: &str) -> u64 {
    hash.get(..12)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// `tcp://HOST:PORT`, checked for shape; the name is resolved at each connection.
pub fn parse_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("{url:?} must be tcp://HOST:PORT"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} must name a port: tcp://HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{url:?} must be tcp://HOST:PORT"));
    }
    Ok(rest.to_string())
}

/// This machine's name for the HOSTNAME field, or the nil value.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

/// One RFC 5424 message, framed by octet counting (RFC 6587): facility authpriv, severity info.
pub fn frame(message: &Message, host: &str, pid: u32, now: SystemTime) -> Vec<u8> {
    let ts = humantime::format_rfc3339_millis(now);
    let mut msg = format!("<86>1 {ts} {host} {APP_NAME} {pid} {} - ", message.msgid()).into_bytes();
    msg.extend_from_slice(&message.body());
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(&msg);
    out
}

fn syslog_loop(addr: &str, rx: &mpsc::Receiver<Message>, counters: &WitnessCounters) {
    let host = hostname();
    let pid = std::process::id();
    let mut queue: VecDeque<Message> = VecDeque::new();
    let mut conn: Option<TcpStream> = None;
    let mut away = false;
    loop {
        // Wait for work; while the server is away, wake once a second to try again.
        let wait = if queue.is_empty() {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(1)
        };
        let closing = match rx.recv_timeout(wait) {
            Ok(m) => {
                queue.push_back(m);
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        while let Ok(m) = rx.try_recv() {
            queue.push_back(m);
        }
        while queue.len() > MAX_QUEUED {
            queue.pop_front();
            counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        while !queue.is_empty() {
            if conn.is_none() {
                match connect(addr) {
                    Ok(s) => {
                        if away {
                            tracing::info!(server = addr, "audit witness reachable again");
                        }
                        away = false;
                        conn = Some(s);
                    }
                    Err(e) => {
                        if !away {
                            tracing::warn!(server = addr, error = %e, queued = queue.len(), "audit witness unreachable; keeping lines until it is back");
                        }
                        away = true;
                        break;
                    }
                }
            }
            let Some(stream) = conn.as_mut() else {
                break;
            };
            let n = queue.len().min(1024);
            let mut batch = Vec::new();
            for m in queue.iter().take(n) {
                batch.extend_from_slice(&frame(m, &host, pid, SystemTime::now()));
            }
            match stream.write_all(&batch).and_then(|()| stream.flush()) {
                Ok(()) => {
                    queue.drain(..n);
                    counters.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(server = addr, error = %e, "audit witness connection lost");
                    away = true;
                    conn = None;
                    break;
                }
            }
        }
        if closing {
            if !queue.is_empty() {
                tracing::warn!(
                    server = addr,
                    lost = queue.len(),
                    "audit lines not delivered to the witness"
                );
            }
            return;
        }
    }
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::other("the name resolves to no address");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The systemd journal, through its native datagram socket.
#[derive(Debug)]
pub struct Journal {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl Journal {
    /// The journal of the systemd that runs this process, if one does (it sets `JOURNAL_STREAM`
    /// or `INVOCATION_ID` for its services).
    fn of_environment() -> Option<Journal> {
        let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some()
            || std::env::var_os("INVOCATION_ID").is_some();
        let path = Path::new("/run/systemd/journal/socket");
        if under_systemd && path.exists() {
            Journal::at(path).ok()
        } else {
            None
        }
    }

    /// A journal listening on the datagram socket at `path`.
    pub fn at(path: &Path) -> std::io::Result<Journal> {
        Ok(Journal {
            socket: std::os::unix::net::UnixDatagram::unbound()?,
            path: path.to_path_buf(),
        })
    }

    /// The journal's native format: `KEY=value` lines (audit lines hold no newline).
    pub fn entry(message: &Message) -> Vec<u8> {
        let mut out = format!(
            "SYSLOG_IDENTIFIER={APP_NAME}\nPRIORITY=6\nRELAY_AUDIT={}\nMESSAGE=",
            message.msgid()
        )
        .into_bytes();
        out.extend_from_slice(&message.body());
        out.push(b'\n');
        out
    }

    fn send(&self, message: &Message) {
        if let Err(e) = self.socket.send_to(&Journal::entry(message), &self.path) {
            tracing::debug!(error = %e, "audit line not sent to the journal");
        }
    }
}

/// What holding the local log against a witness's copy found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Lines (by sequence number) in both.
    pub matched: u64,
    /// Lines whose text differs between the two, first first.
    pub differing: Vec<u64>,
    /// Lines the witness holds and the local log does not: removed or truncated locally.
    pub missing_locally: Vec<u64>,
    /// Lines only the local log holds: added behind the witness's back, or never delivered.
    pub only_local: Vec<u64>,
    /// Chain heads the witness holds that the local log does not reproduce.
    pub bad_heads: Vec<u64>,
}

impl Comparison {
    pub fn agrees(&self) -> bool {
        self.differing.is_empty()
            && self.missing_locally.is_empty()
            && self.only_local.is_empty()
            && self.bad_heads.is_empty()
    }
}

/// The JSON of a witness file's line from this relay, if it is one: what follows the
/// `relay-audit[PID]:` tag (or `relay-audit:`).
pub fn witnessed(line: &str) -> Option<&str> {
    let at = line.find(APP_NAME)?;
    let rest = &line[at + APP_NAME.len()..];
    let brace = rest.find('{')?;
    // The tag's rest: `[PID]`, then a colon in the traditional format and none in RFC 5424's.
    let tag = rest[..brace].trim_end();
    let tag = tag.strip_suffix(':').unwrap_or(tag);
    let pid = match tag.strip_prefix('[') {
        Some(t) => t.strip_suffix(']')?,
        None if tag.is_empty() => "",
        None => return None,
    };
    pid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| rest[brace..].trim_end())
}

/// Holds the local log at `local` against the witness's file at `witness`.
pub fn compare(local: &Path, witness: &Path) -> std::io::Result<Comparison> {
    let mut lines: BTreeMap<u64, String> = BTreeMap::new();
    let mut heads: BTreeMap<u64, String> = BTreeMap::new();
    let mut doubles: Vec<u64> = Vec::new();
    for line in BufReader::new(File::open(witness)?).lines() {
        let line = line?;
        let Some(json) = witnessed(&line) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            continue;
        };
        if let (Some(hash), Some(n)) = (
            v.get("head").and_then(Value::as_str),
            v.get("lines").and_then(Value::as_u64),
        ) {
            heads.insert(n, hash.to_string());
        } else if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
            // A line sent twice (after a reconnect) must be the same both times.
            if let Some(before) = lines.insert(seq, json.to_string())
                && before != json
            {
                doubles.push(seq);
            }
        }
    }
    let mut c = Comparison::default();
    let mut seen = 0u64;
    let mut hash_at: BTreeMap<u64, String> = BTreeMap::new();
    for (i, line) in BufReader::new(File::open(local)?).lines().enumerate() {
        let line = line?;
        let seq = i as u64 + 1;
        seen = seq;
        if heads.contains_key(&seq) {
            hash_at.insert(seq, blake3::hash(line.as_bytes()).to_hex().to_string());
        }
        match lines.remove(&seq) {
            Some(w) if w == line && !doubles.contains(&seq) => c.matched += 1,
            Some(_) => c.differing.push(seq),
            None => c.only_local.push(seq),
        }
    }
    c.missing_locally = lines.into_keys().collect();
    for (n, hash) in heads {
        if n > seen || hash_at.get(&n) != Some(&hash) {
            c.bad_heads.push(n);
        }
    }
    Ok(c)
}

/// `[1, 2, 3, 7, 9, 10]` as `1-3, 7, 9-10`.
pub fn ranges(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end + 1 {
            i += 1;
            end = seqs[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_octet_counted_rfc5424() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let f = frame(&Message::Line(b"{\"seq\":1}".to_vec()), "box", 42, now);
        let text = String::from_utf8(f).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<86>1 2023-11-14T22:13:20.123Z box relay-audit 42 line - {\"seq\":1}"
        );
        let head = Message::Head {
            lines: 7,
            hash: "ab".into(),
        };
        let text = String::from_utf8(frame(&head, "-", 1, now)).unwrap();
        assert!(
            text.ends_with(" relay-audit 1 head - {\"head\":\"ab\",\"lines\":7}"),
            "{text}"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(parse_url("tcp://127.0.0.1:514").unwrap(), "127.0.0.1:514");
        assert_eq!(
            parse_url("tcp://log.example:6514").unwrap(),
            "log.example:6514"
        );
        for bad in [
            "udp://1.2.3.4:514",
            "tcp://host",
            "tcp://:514",
            "tcp://h:0",
            "h:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn journal_entries_reach_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let j = Journal::at(&path).unwrap();
        j.send(&Message::Line(b"{\"seq\":3}".to_vec()));
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"SYSLOG_IDENTIFIER=relay-audit\nPRIORITY=6\nRELAY_AUDIT=line\nMESSAGE={\"seq\":3}\n"
        );
    }

    #[test]
    fn witness_lines_are_found_behind_rsyslogs_prefix() {
        let json = "{\"seq\":1,\"prev\":\"00\"}";
        #[rustfmt::skip]
        let table = [
            (format!("Dec  3 11:30:06 box relay-audit[42]: {json}"), Some(json)),
            (format!("2026-12-03T11:30:06+00:00 box relay-audit[42]: {json}"), Some(json)),
            (format!("Dec  3 11:30:06 box relay-audit: {json}"), Some(json)),
            (format!("2026-12-03T11:51:37.464Z vm relay-audit[17827] {json}"), Some(json)),
            (format!("Dec  3 11:30:06 box other[42]: {json}"), None),
            (format!("Dec  3 11:30:06 box relay-auditx[42]: {json}"), None),
            ("Dec  3 11:30:06 box relay-audit[42]: no json".to_string(), None),
        ];
        for (line, want) in table {
            assert_eq!(witnessed(&line), want, "{line}");
        }
    }

    #[test]
    fn comparison_names_what_differs_and_what_is_missing_on_either_side() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("audit.log");
        let witness = dir.path().join("witness.log");
        let line = |seq: u64, what: &str| format!("{{\"seq\":{seq},\"decision\":\"{what}\"}}");
        let write = |path: &Path, lines: &[String]| {
            std::fs::write(path, lines.join("\n") + "\n").unwrap();
        };
        let tagged = |l: &String| format!("Dec  3 11:30:06 box relay-audit[7]: {l}");
        let original: Vec<String> = (1..=6).map(|i| line(i, "deny")).collect();
        let head_hash = blake3::hash(original[3].as_bytes()).to_hex().to_string();
        let mut w: Vec<String> = original[..5].iter().map(tagged).collect();
        w.push(format!(
            "Dec  3 11:30:07 box relay-audit[7]: {{\"head\":\"{head_hash}\",\"lines\":4}}"
        ));
        w.push("Dec  3 11:30:07 box kernel: unrelated".into());
        write(&witness, &w);

        // The whole local log but its last line was witnessed.
        write(&local, &original);
        let c = compare(&local, &witness).unwrap();
        assert_eq!((c.matched, c.only_local.clone()), (5, vec![6]));
        assert!(c.differing.is_empty() && c.missing_locally.is_empty() && c.bad_heads.is_empty());
        assert!(!c.agrees());

        // A deny rewritten as an allow, and the log cut short.
        let mut changed = original[..3].to_vec();
        changed[1] = line(2, "allow");
        write(&local, &changed);
        let c = compare(&local, &witness).unwrap();
        assert_eq!(c.differing, vec![2]);
        assert_eq!(c.missing_locally, vec![4, 5]);
        assert_eq!(c.bad_heads, vec![4]);

        write(&local, &original[..5]);
        assert!(compare(&local, &witness).unwrap().agrees());
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3, 7, 9-10");
    }
}
