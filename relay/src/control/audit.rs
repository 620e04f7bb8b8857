//! The tamper-evident audit log: one JSON line per allow, deny or admin change.
//!
//! Each line carries `seq` (1, 2, ...) and `prev`, the BLAKE3 hash of the previous line's bytes
//! (64 zeros for the first). Changing, removing or inserting a line breaks the chain at that point.
//! The hash of the last line written is anchored in the registry database, so truncating the log
//! or altering its last line is caught too.
//!
//! Whoever can write the data directory can re-chain the file and its anchor, so every line also
//! goes, as it is written, to the witnesses outside the relay ([`super::witness`]); the chain's
//! head goes there every `head_interval` too, and is published as a metric.
//!
//! One writer thread appends in batches and fsyncs each batch (group commit), so callers never
//! wait on the disk. The file is locked (`flock`) around each batch and the chain's tail is read
//! from the file itself under the lock, so the server and `relay admin --data` can both append.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;

use super::registry::Registry;
use super::sqlite::SqliteRegistry;
use super::witness::{Message, WitnessCounters, Witnesses};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How often the chain's head goes to the witnesses unless configured (`audit.head_interval`).
pub const DEFAULT_HEAD_INTERVAL: Duration = Duration::from_secs(60);
/// Longest line the tail reader accepts; fields are bounded far below this.
const MAX_LINE: u64 = 64 * 1024;
/// Longest value kept for a free-text field.
const MAX_FIELD: usize = 256;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// One audited event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What was attempted: `whip`, `whep`, `room.inspect`, `file.put`, `admin.device.revoke`, ...
    pub action: &'static str,
    pub decision: Decision,
    /// The denial reason, when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The room, file or registry entry acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The user acted for, when it is not the one acting (an admin minting another's token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The id of the token minted, so that it can be revoked by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// How many bytes the action carried (a chat message's size; never its content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl Event {
    pub fn new(action: &'static str, decision: Decision) -> Event {
        Event {
            action,
            decision,
            reason: None,
            org: None,
            user: None,
            device: None,
            target: None,
            subject: None,
            token: None,
            bytes: None,
        }
    }

    pub fn reason(mut self, reason: &'static str) -> Event {
        self.reason = Some(reason);
        self
    }

    pub fn who(mut self, org: &str, user: &str, device: &str) -> Event {
        self.org = Some(bounded(org));
        self.user = Some(bounded(user));
        self.device = Some(bounded(device));
        self
    }

    pub fn org(mut self, org: &str) -> Event {
        self.org = Some(bounded(org));
        self
    }

    pub fn target(mut self, target: &str) -> Event {
        self.target = Some(bounded(target));
        self
    }

    pub fn subject(mut self, user: &str) -> Event {
        self.subject = Some(bounded(user));
        self
    }

    pub fn token(mut self, id: &str) -> Event {
        self.token = Some(bounded(id));
        self
    }

    pub fn bytes(mut self, n: u64) -> Event {
        self.bytes = Some(n);
        self
    }
}

fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_FIELD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    ts: String,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit log: {0}")]
    Io(std::io::Error),
    /// The chain does not hold from this line (1-based) on.
    #[error("audit chain broken at line {line}: {why}")]
    Broken { line: u64, why: String },
}

impl From<std::io::Error> for AuditError {
    fn from(e: std::io::Error) -> Self {
        AuditError::Io(e)
    }
}

/// Appends events to the log from a writer thread.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<Event>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<WitnessCounters>,
    witnessed: bool,
}

impl AuditLog {
    /// Opens (creating if missing) the log at `path`, anchoring its head in the database at `db`,
    /// with no witness outside the relay.
    pub fn open(path: &Path, db: &Path) -> Result<AuditLog, AuditError> {
        let anchor = SqliteRegistry::open(db)
            .map_err(|e| AuditError::Io(std::io::Error::other(e.to_string())))?;
        AuditLog::witnessed(
            path,
            Box::new(anchor),
            Witnesses::none(),
            DEFAULT_HEAD_INTERVAL,
        )
    }

    /// Opens the log with `witnesses`, to which every line goes as it is written and the chain's
    /// head every `head_interval`; the head is anchored in `anchor` (the node's registry: in a
    /// cluster, the shared database, where each node's head is kept under its id).
    pub fn witnessed(
        path: &Path,
        anchor: Box<dyn Registry>,
        witnesses: Witnesses,
        head_interval: Duration,
    ) -> Result<AuditLog, AuditError> {
        let file = crate::private::open_options()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        crate::private::file(path)?;
        let registry = anchor;
        let (tx, rx) = mpsc::channel();
        let path = path.to_path_buf();
        let counters = witnesses.counters.clone();
        let witnessed = witnesses.any();
        let writer = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(path, file, registry, &rx, &witnesses, head_interval))?;
        Ok(AuditLog {
            tx: Some(tx),
            writer: Some(writer),
            counters,
            witnessed,
        })
    }

    /// What the witnesses have been sent, and the chain's head, for the metrics.
    pub fn counters(&self) -> &Arc<WitnessCounters> {
        &self.counters
    }

    /// Does any witness outside the relay receive the lines?
    pub fn has_witness(&self) -> bool {
        self.witnessed
    }

    /// Queues an event; never blocks on the disk.
    pub fn record(&self, event: Event) {
        if let Some(tx) = &self.tx {
            // The writer only stops when this handle is dropped.
            let _ = tx.send(event);
        }
    }
}

impl Drop for AuditLog {
    /// Writes out everything queued before returning.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(
    path: PathBuf,
    mut file: File,
    registry: Box<dyn Registry>,
    rx: &mpsc::Receiver<Event>,
    witnesses: &Witnesses,
    head_interval: Duration,
) {
    let mut head: Option<(u64, String)> = None;
    let mut next_head = Instant::now();
    loop {
        let first = match rx.recv_timeout(head_interval) {
            Ok(e) => Some(e),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            match append(&mut file, registry.as_ref(), &batch) {
                Ok(written) => {
                    for line in written.lines {
                        witnesses.send(&Message::Line(line));
                    }
                    witnesses.counters.set_head(written.head.0, &written.head.1);
                    head = Some(written.head);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, lost = batch.len(), "audit append failed");
                }
            }
        }
        if Instant::now() >= next_head {
            next_head = Instant::now() + head_interval;
            if head.is_none() {
                head = locked_tail(&mut file).ok();
                if let Some((lines, hash)) = &head {
                    witnesses.counters.set_head(*lines, hash);
                }
            }
            if let Some((lines, hash)) = &head {
                witnesses.send(&Message::Head {
                    lines: *lines,
                    hash: hash.clone(),
                });
            }
        }
    }
}

/// What one append wrote: its lines, and the chain's head after them.
struct Written {
    lines: Vec<Vec<u8>>,
    head: (u64, String),
}

fn append(
    file: &mut File,
    registry: &dyn Registry,
    batch: &[Event],
) -> Result<Written, AuditError> {
    file.lock()?;
    let result = (|| {
        let (mut seq, mut prev) = tail(file)?;
        let mut lines = Vec::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len() * 256);
        for event in batch {
            seq += 1;
            let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
            let line = serde_json::to_vec(&Line {
                seq,
                ts,
                prev: &prev,
                event,
            })
            .map_err(|e| AuditError::Io(std::io::Error::other(e)))?;
            prev = blake3::hash(&line).to_hex().to_string();
            out.extend_from_slice(&line);
            out.push(b'\n');
            lines.push(line);
        }
        file.write_all(&out)?;
        file.sync_data()?;
        registry
            .set_audit_head(seq, &prev)
            .map_err(|e| AuditError::Io(std::io::Error::other(e.to_string())))?;
        Ok(Written {
            lines,
            head: (seq, prev),
        })
    })();
    file.unlock()?;
    result
}

/// [`tail`] under the file's lock, so that another writer's line is never taken for a torn one.
fn locked_tail(file: &mut File) -> Result<(u64, String), AuditError> {
    file.lock()?;
    let result = tail(file);
    file.unlock()?;
    result
}

/// The last line's sequence number and hash. A torn last line (a crash mid-write, never synced)
/// is cut off so the chain goes on from the last whole line.
fn tail(file: &mut File) -> Result<(u64, String), AuditError> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, GENESIS.to_string()));
    }
    let start = len.saturating_sub(MAX_LINE + 1);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut buf)?;
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        return Err(AuditError::Broken {
            line: 1,
            why: "no complete line at the end of the log".into(),
        });
    };
    if last_nl + 1 != buf.len() {
        let keep = start + last_nl as u64 + 1;
        tracing::warn!(
            cut = len - keep,
            "audit log ended in a torn line; cutting it off"
        );
        file.set_len(keep)?;
        file.sync_data()?;
    }
    let body = &buf[..last_nl];
    let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if line_start == 0 && start != 0 {
        return Err(AuditError::Broken {
            line: 0,
            why: "last line is too long".into(),
        });
    }
    let line = &body[line_start..];
    let seq = serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(Value::as_u64))
        .ok_or_else(|| AuditError::Broken {
            line: 0,
            why: "last line has no sequence number".into(),
        })?;
    Ok((seq, blake3::hash(line).to_hex().to_string()))
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub lines: u64,
    /// Lines of the organisation asked about (all lines when none was).
    pub org_lines: u64,
    /// Lines after the anchored head: chained correctly, written after the last anchor update
    /// (a crash between the log's fsync and the anchor's commit leaves a few).
    pub unanchored: u64,
}

/// Checks the whole chain of the log at `path` against the anchored `head`, counting the lines
/// of `org` on the way.
pub fn verify(
    path: &Path,
    head: Option<(u64, String)>,
    org: Option<&str>,
) -> Result<Verified, AuditError> {
    let reader = BufReader::new(File::open(path)?);
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    let mut org_lines = 0u64;
    let mut anchored = head.is_none();
    for line in reader.split(b'\n') {
        let line = line?;
        n += 1;
        let broken = |why: String| AuditError::Broken { line: n, why };
        let v: Value =
            serde_json::from_slice(&line).map_err(|e| broken(format!("not JSON: {e}")))?;
        let seq = v.get("seq").and_then(Value::as_u64);
        if seq != Some(n) {
            return Err(broken(format!(
                "sequence {seq:?} where {n} was expected: a line was removed or inserted"
            )));
        }
        if v.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(AuditError::Broken {
                line: n.saturating_sub(1).max(1),
                why: format!(
                    "line {n} does not chain from line {}: one of the two was altered",
                    n - 1
                ),
            });
        }
        prev = blake3::hash(&line).to_hex().to_string();
        if org.is_none_or(|o| v.get("org").and_then(Value::as_str) == Some(o)) {
            org_lines += 1;
        }
        if let Some((lines, hash)) = &head
            && *lines == n
        {
            if *hash != prev {
                return Err(broken(
                    "does not match the anchored head: it was altered".into(),
                ));
            }
            anchored = true;
        }
    }
    if !anchored {
        let lines = head.map(|h| h.0).unwrap_or(0);
        return Err(AuditError::Broken {
            line: n + 1,
            why: format!("the log has {n} lines but {lines} were anchored: it was truncated"),
        });
    }
    let head_lines = head.map_or(n, |h| h.0);
    Ok(Verified {
        lines: n,
        org_lines,
        unanchored: n - head_lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        SqliteRegistry::open_or_create(&db).unwrap();
        let log = dir.path().join("audit.log");
        (dir, log, db)
    }

    fn write_events(log: &Path, db: &Path, n: usize) {
        let audit = AuditLog::open(log, db).unwrap();
        for i in 0..n {
            let decision = if i % 2 == 0 {
                Decision::Allow
            } else {
                Decision::Deny
            };
            audit.record(
                Event::new("whip", decision)
                    .who("acme", "ann", "pc1")
                    .target(&format!("room{i}")),
            );
        }
    }

    fn head(db: &Path) -> Option<(u64, String)> {
        SqliteRegistry::open(db).unwrap().audit_head().unwrap()
    }

    #[test]
    fn chain_verifies_across_reopen() {
        let (_d, log, db) = setup();
        write_events(&log, &db, 5);
        write_events(&log, &db, 3);
        assert_eq!(
            verify(&log, head(&db), None).unwrap(),
            Verified {
                lines: 8,
                org_lines: 8,
                unanchored: 0
            }
        );
        assert_eq!(verify(&log, head(&db), Some("acme")).unwrap().org_lines, 8);
        assert_eq!(verify(&log, head(&db), Some("other")).unwrap().org_lines, 0);
    }

    fn rewrite(log: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(log).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        f(&mut lines);
        std::fs::write(log, lines.join("\n") + "\n").unwrap();
    }

    fn broken_line(log: &Path, db: &Path) -> u64 {
        match verify(log, head(db), None) {
            Err(AuditError::Broken { line, .. }) => line,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn altered_line_is_named() {
        let (_d, log, db) = setup();
        write_events(&log, &db, 6);
        rewrite(&log, |l| l[2] = l[2].replace("\"allow\"", "\"deny\""));
        assert_eq!(broken_line(&log, &db), 3);
    }

    #[test]
    fn altered_last_line_is_caught_by_the_anchor() {
        let (_d, log, db) = setup();
        write_events(&log, &db, 4);
        rewrite(&log, |l| l[3] = l[3].replace("room3", "roomX"));
        assert_eq!(broken_line(&log, &db), 4);
    }

    #[test]
    fn removed_and_truncated_lines_are_caught() {
        let (_d, log, db) = setup();
        write_events(&log, &db, 5);
        let original = std::fs::read_to_string(&log).unwrap();
        rewrite(&log, |l| {
            l.remove(1);
        });
        assert_eq!(broken_line(&log, &db), 2);
        std::fs::write(&log, &original).unwrap();
        rewrite(&log, |l| l.truncate(3));
        assert_eq!(broken_line(&log, &db), 4);
    }

    #[test]
    fn torn_tail_is_cut_and_chain_goes_on() {
        let (_d, log, db) = setup();
        write_events(&log, &db, 2);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"seq\":3,\"ts\":\"half").unwrap();
        drop(f);
        write_events(&log, &db, 2);
        assert_eq!(verify(&log, head(&db), None).unwrap().lines, 4);
    }
}
