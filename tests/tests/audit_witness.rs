//! The audit log's outside witness, with Debian's rsyslog as the real receiver: every line
//! reaches it as it is written, and `relay admin audit verify --witness` catches what the hash
//! chain alone cannot: a log rewritten and re-chained with its anchor, lines appended behind the
//! witness's back, and lines cut off.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay::control::registry::Registry;
use relay::control::sqlite::SqliteRegistry;
use relay_tests::{Relay, stderr};

/// An rsyslogd in the foreground, receiving RFC 5424 over TCP on a loopback port and writing
/// everything to `witness.log` in its own directory.
struct Rsyslog {
    child: Child,
    port: u16,
    file: PathBuf,
}

/// A loopback port nobody listens on (another process may take it meanwhile: the test then
/// fails to start its server, it does not pass wrongly).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Rsyslog {
    fn start(dir: &Path) -> Rsyslog {
        Rsyslog::start_on(dir, free_port())
    }

    fn start_on(dir: &Path, port: u16) -> Rsyslog {
        let work = dir.join("rsyslog");
        std::fs::create_dir_all(&work).expect("rsyslog work dir");
        let file = work.join("witness.log");
        let config = work.join("rsyslog.conf");
        std::fs::write(
            &config,
            format!(
                "module(load=\"imtcp\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
                 $WorkDirectory {}\n\
                 *.* {}\n",
                work.display(),
                file.display()
            ),
        )
        .expect("write rsyslog config");
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&config)
            .arg("-i")
            .arg(work.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd (Debian's rsyslog; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Rsyslog { child, port, file }
    }

    /// Lines of the witness file written by the relay's audit.
    fn relay_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("relay-audit"))
            .map(String::from)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verify(relay: &Relay, witness: Option<&Path>) -> (i32, String, String) {
    let w = witness.map(|w| w.to_string_lossy().into_owned());
    let mut args = vec!["admin", "audit", "verify"];
    if let Some(w) = &w {
        args.extend(["--witness", w]);
    }
    let out = relay.cli(&args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

fn hash(line: &str) -> String {
    blake3::hash(line.as_bytes()).to_hex().to_string()
}

/// Writes `lines` as the audit log, each chained to the one before, and anchors the last one in
/// the database: what an insider with write access to the data directory can do.
fn rechain(data: &Path, mut lines: Vec<String>) {
    let mut prev = "0".repeat(64);
    for line in &mut lines {
        let start = line.find("\"prev\":\"").expect("prev field") + 8;
        line.replace_range(start..start + 64, &prev);
        prev = hash(line);
    }
    std::fs::write(data.join("audit.log"), lines.join("\n") + "\n").expect("write log");
    SqliteRegistry::open(&data.join("relay.db"))
        .expect("open registry")
        .set_audit_head(lines.len() as u64, &prev)
        .expect("anchor");
}

fn local_lines(data: &Path) -> Vec<String> {
    std::fs::read_to_string(data.join("audit.log"))
        .expect("audit log")
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_witness_catches_a_rewritten_an_extended_and_a_cut_log() {
    let tmp = tempfile::tempdir().unwrap();
    let syslog = Rsyslog::start(tmp.path());
    let data = tmp.path().join("data");
    let config = format!(
        "[audit]\nsyslog = \"tcp://127.0.0.1:{}\"\nhead_interval = \"1s\"\n",
        syslog.port
    );
    let mut relay = Relay::start_in(&data, &config, &[]);
    let demo = relay.demo_token("subscribe");
    assert_eq!(relay.get("/api/info", None).status, 401);
    assert_eq!(relay.get("/api/info", Some("v1.forged.token")).status, 401);
    assert_eq!(relay.get("/api/info", Some(&demo)).status, 200);

    // Every line reaches the witness, and so does the chain's head.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let local = local_lines(&data).len();
        let witnessed = syslog.relay_lines();
        let lines = witnessed.iter().filter(|l| l.contains("\"seq\":")).count();
        if local >= 4 && lines >= local && witnessed.iter().any(|l| l.contains("\"head\":")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the witness has {lines} of {local} lines:\n{}",
            witnessed.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines_metric = relay.metric("relay_audit_lines").unwrap_or(0.0);
    assert!(lines_metric >= 4.0, "relay_audit_lines {lines_metric}");
    relay.stop();

    let original = local_lines(&data);
    let (code, out, err) = verify(&relay, Some(&syslog.file));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("match the witness"), "{out}");
    let (code, out, _) = verify(&relay, None);
    assert_eq!(code, 0);
    assert!(out.contains("no outside witness"), "{out}");

    // A deny rewritten as an allow, re-chained and re-anchored: the chain alone passes it.
    let n = original
        .iter()
        .position(|l| l.contains("\"decision\":\"deny\""))
        .expect("a denied request in the log");
    let mut forged = original.clone();
    forged[n] = forged[n].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    rechain(&data, forged);
    let (code, out, err) = verify(&relay, None);
    assert_eq!(code, 0, "the forgery holds together as a chain: {out}{err}");
    let (code, _, err) = verify(&relay, Some(&syslog.file));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("first line that differs: {}", n + 1)),
        "{err}"
    );

    // Correctly chained lines appended behind the witness's back.
    let mut extended = original.clone();
    let mut extra = original[original.len() - 1].clone();
    let seq = original.len() + 1;
    let at = extra.find("\"seq\":").unwrap();
    let end = at + extra[at..].find(',').unwrap();
    extra.replace_range(at..end, &format!("\"seq\":{seq}"));
    extended.push(extra);
    rechain(&data, extended);
    let (code, _, err) = verify(&relay, Some(&syslog.file));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("lines only the log holds"), "{err}");
    assert!(err.contains(&seq.to_string()), "{err}");

    // The log cut short and re-anchored.
    rechain(&data, original[..2].to_vec());
    let (code, _, err) = verify(&relay, Some(&syslog.file));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("removed or cut off): 3-{}", original.len())),
        "{err}"
    );
}

#[test]
fn a_relay_whose_witness_is_away_keeps_its_lines_and_delivers_them_later() {
    // The relay keeps what it could not deliver; a command run on the data directory meanwhile
    // (here `relay token --data`) tries once and exits, and verify names its line.
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = tmp.path().join("data");
    let config = format!("[audit]\nsyslog = \"tcp://127.0.0.1:{port}\"\n");
    let relay = Relay::start_in(&data, &config, &[]);
    assert_eq!(relay.get("/api/info", None).status, 401);
    let demo = relay.demo_token("subscribe");
    assert_eq!(relay.get("/api/info", Some(&demo)).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        relay.log().contains("audit witness unreachable"),
        "{}",
        relay.log()
    );

    // The server comes up on that port: what was kept arrives.
    let syslog = Rsyslog::start_on(tmp.path(), port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let local = local_lines(&data).len();
        let witnessed = syslog
            .relay_lines()
            .iter()
            .filter(|l| l.contains("\"seq\":"))
            .count();
        // All but the command's own line (after the start-up link's token and the refusal).
        if local >= 4 && witnessed + 1 >= local {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{witnessed} of {local} lines arrived late"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = verify(&relay, Some(&syslog.file));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("lines only the log holds"), "{err}");
    assert!(err.ends_with(": 3\n") || err.contains("): 3\n"), "{err}");
}
