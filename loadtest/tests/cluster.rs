//! Three relays as one appliance, on real engines started here on loopback: PostgreSQL for the
//! shared registry, Redis for the room directory. The load tester's clients join through a node
//! that is not the room's home and end up on it; a revocation through one node holds on another;
//! a node killed with SIGKILL loses its rooms within the lease and a new join homes them
//! elsewhere; a node stopped cleanly hands its rooms back at once.

#![allow(clippy::unwrap_used)] // Tests stop at the first unexpected failure.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relay_kit::cluster::{Engines, Node};
use relay_kit::process::relay_bin;
use serde_json::Value;

/// Short, so a dead node's rooms move within the test's patience.
const LEASE: Duration = Duration::from_secs(2);

/// `relay ARGS` on `node`'s state; panics with what the command said when it fails.
fn cli(node: &Node, args: &[&str]) -> String {
    node.cli(&relay_bin(), args)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `relay files ARGS --json` against `node`'s file plane, trusting its certificate.
fn files(node: &Node, token: &str, state: &Path, args: &[&str]) -> Value {
    let addr = node.process.startup_field("files").unwrap();
    let out = Command::new(relay_bin())
        .arg("files")
        .args(args)
        .args(["--json", "--server", &addr, "--token", token, "--ca"])
        .arg(node.data.join("tls.crt"))
        .env("RELAY_STATE_DIR", state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "relay files {args:?} through {}: {}{}",
        node.id,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An HTTP answer: status, Location, JSON body (null when not JSON).
fn call(method: &str, url: &str, token: &str, body: Option<&str>) -> (u16, Option<String>, Value) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    );
    let auth = format!("Bearer {token}");
    let r = match (method, body) {
        ("GET", _) => agent.get(url).header("authorization", &auth).call(),
        (_, b) => agent
            .post(url)
            .header("authorization", &auth)
            .content_type("application/json")
            .send(b.unwrap_or("{}")),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        location,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /api/cluster` through `node`: (node ids with their loads, room -> home).
/// (node id, load) of each live node; (room, home node) of each homed room.
type ClusterView = (Vec<(String, u64)>, Vec<(String, String)>);

fn cluster(node: &Node, admin: &str) -> ClusterView {
    let (status, _, v) = call("GET", &format!("{}/api/cluster", node.url()), admin, None);
    assert_eq!(status, 200, "{v}");
    let nodes = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["load"].as_u64().unwrap(),
            )
        })
        .collect();
    let rooms = v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["room"].as_str().unwrap().to_string(),
                r["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (nodes, rooms)
}

fn home_of(node: &Node, admin: &str, room: &str) -> Option<String> {
    cluster(node, admin)
        .1
        .into_iter()
        .find(|(r, _)| r == room)
        .map(|(_, n)| n)
}

/// Runs the load tester's media clients through `node` to its end and reads back its report.
/// Runs `relay-loadtest media` with `args`, short and bounded, to its end: its JSON report (written
/// to `json`) and what it printed.
fn media_run(args: &[&str], json: &Path) -> (Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_relay-loadtest"))
        .arg("media")
        .args(args)
        .args([
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--floor-duration",
            "0s",
        ])
        .arg("--relay-bin")
        .arg(relay_bin())
        .arg("--json")
        .arg(json)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "relay-loadtest {args:?}: {text}");
    let report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (report, text)
}

/// The load tester's clients through `node`: one room (`PREFIX-room0`), a publisher and two
/// subscribers.
fn media_through(node: &Node, admin: &str, prefix: &str, dir: &Path) -> Value {
    let json = dir.join(format!("{prefix}-{}.json", node.id));
    let url = node.url();
    let args = ["--target", &url, "--admin-token", admin, "--prefix", prefix];
    let sizes = ["--rooms", "1", "--publishers", "1", "--subscribers", "2"];
    media_run(&[&args[..], &sizes[..]].concat(), &json).0
}

fn media_flowed(report: &Value) {
    assert_eq!(report["joined"], report["expected_joins"], "{report}");
    assert!(
        report["video_packets_received"].as_u64().unwrap() > 100,
        "{report}"
    );
    assert_eq!(report["dead_peers"], 0, "{report}");
}

/// The value of the metric `name` (no labels) on `node`.
fn metric(node: &Node, name: &str) -> f64 {
    let text = ureq::get(format!("{}/metrics", node.url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name}:\n{text}"))
}

fn redirects(node: &Node) -> f64 {
    metric(node, "relay_cluster_redirects_total")
}

#[test]
fn three_relays_act_as_one_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let engines = Engines::start(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let [mut a, b, mut c] = ["a", "b", "c"].map(|id| {
        engines
            .node(&relay_bin(), id, LEASE, 100)
            .unwrap_or_else(|e| panic!("{e}"))
    });

    // The registry is one: what is added through a's command line, every node knows.
    cli(&a, &["admin", "org", "add", "acme"]);
    cli(
        &a,
        &[
            "admin",
            "user",
            "add",
            "--org",
            "acme",
            "ops",
            "--clearance",
            "3",
        ],
    );
    cli(
        &a,
        &[
            "admin",
            "device",
            "add",
            "--org",
            "acme",
            "ops-term",
            "--kind",
            "terminal",
            "--max-clearance",
            "3",
        ],
    );
    cli(
        &a,
        &[
            "admin",
            "user",
            "add",
            "--org",
            "acme",
            "eve",
            "--clearance",
            "1",
        ],
    );
    cli(
        &a,
        &[
            "admin",
            "device",
            "add",
            "--org",
            "acme",
            "eve-cam",
            "--max-clearance",
            "1",
        ],
    );
    cli(&b, &["admin", "room", "add", "--org", "acme", "r1"]);
    cli(&b, &["admin", "room", "add", "--org", "acme", "r2"]);
    // One signing key: a token minted on a is good on c.
    let admin = cli(
        &a,
        &[
            "token",
            "--org",
            "acme",
            "--user",
            "ops",
            "--device",
            "ops-term",
            "--grants",
            "admin,publish,subscribe,files",
            "--ttl",
            "1h",
        ],
    );
    let eve = cli(
        &c,
        &[
            "token",
            "--org",
            "acme",
            "--user",
            "eve",
            "--device",
            "eve-cam",
            "--grants",
            "publish,subscribe",
        ],
    );
    let (nodes, _) = cluster(&b, &admin);
    let ids: Vec<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    // Every node counts the live nodes at its next renewal.
    eventually("every node sees three", LEASE * 2, || {
        [&a, &b, &c]
            .iter()
            .all(|n| metric(n, "relay_cluster_nodes") == 3.0)
            .then_some(())
    });

    // A room without a home goes to the least-loaded node (all idle: the first by id), and a
    // request reaching another node is sent there.
    let (status, location, _) = call("GET", &format!("{}/api/rooms/r1", c.url()), &eve, None);
    assert_eq!(status, 307);
    assert_eq!(
        location.as_deref(),
        Some(format!("{}/api/rooms/r1", a.url()).as_str())
    );
    let (status, _, room) = call("GET", &format!("{}/api/rooms/r1", a.url()), &eve, None);
    assert_eq!((status, room["room"].as_str()), (200, Some("r1")), "{room}");
    assert_eq!(home_of(&b, &admin, "r1").as_deref(), Some("a"));

    // Clients joining through c, which is not the home of their room, end up on the home and
    // media flows; c counts the redirects.
    let before = redirects(&c);
    let report = media_through(&c, &admin, "m1", dir.path());
    media_flowed(&report);
    let home = home_of(&b, &admin, "m1-room0").expect("the load tester's room has a home");
    assert_ne!(home, "c", "the first idle node by id is a");
    assert!(
        redirects(&c) >= before + 3.0,
        "three sessions were sent to the home"
    );

    // A revocation made through a holds on c from the next request.
    let (status, _, _) = call("GET", &format!("{}/api/info", c.url()), &eve, None);
    assert_eq!(status, 200);
    let (status, _, v) = call(
        "POST",
        &format!("{}/api/admin/devices/eve-cam/revoke", a.url()),
        &admin,
        None,
    );
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = call("GET", &format!("{}/api/info", c.url()), &eve, None);
    assert_eq!((status, v["error"].as_str()), (403, Some("device")), "{v}");

    // Every node checks its own audit chain, anchored in the shared registry; one node's
    // broken chain fails the check and is named.
    let verify = || {
        Command::new(relay_bin())
            .args([
                "admin",
                "audit",
                "verify",
                "--server",
                &b.url(),
                "--token",
                &admin,
            ])
            .env_remove("RELAY_TOKEN")
            .output()
            .unwrap()
    };
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["a", "b", "c"] {
        assert!(
            text.contains(&format!("node {id}: audit log intact")),
            "{text}"
        );
    }
    let log = c.data.join("audit.log");
    let lines = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, lines.replacen("\"allow\"", "\"deny!\"", 1)).unwrap();
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("node a: audit log intact"), "{text}");
    assert!(!text.contains("node c: audit log intact"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("node c"));

    // A file put through a is fetched through b: b tells the client where it is stored.
    let state = dir.path().join("client-state");
    let doc = dir.path().join("doc.bin");
    std::fs::write(&doc, relay_kit::noise(11, 3 << 20)).unwrap();
    let put = files(&a, &admin, &state, &["put", doc.to_str().unwrap()]);
    let id = put["id"].as_str().unwrap().to_string();
    let back = dir.path().join("doc.back");
    let got = files(
        &b,
        &admin,
        &state,
        &["get", &id, "-o", back.to_str().unwrap()],
    );
    assert_eq!(got["size"], put["size"], "{got}");
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&doc).unwrap());
    // The catalogue is the cluster's: c lists it, and a removal through c reaches a.
    let listed = files(&c, &admin, &state, &["ls"]);
    let ids: Vec<&str> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()], "{listed}");
    files(&c, &admin, &state, &["rm", &id]);
    assert_eq!(
        files(&b, &admin, &state, &["ls"])["files"],
        serde_json::json!([])
    );

    // a homes r1 (all idle again: the first by id) and holds its lease when it is killed. Within
    // the lease a and its rooms are gone, and a new join homes r1 on a live node.
    // (Until the last run's sessions are gone from a's load and r1's last claim has lapsed,
    // another node may take it.)
    eventually("a homes r1", LEASE * 6, || {
        let (status, _, _) = call("GET", &format!("{}/api/rooms/r1", a.url()), &admin, None);
        (status == 200).then_some(())
    });
    assert_eq!(home_of(&b, &admin, "r1").as_deref(), Some("a"));
    a.process.daemon.kill();
    let moved = eventually("r1 rehomed after a was killed", LEASE * 4, || {
        let (status, location, _) = call("GET", &format!("{}/api/rooms/r1", b.url()), &admin, None);
        match status {
            200 => Some("b".to_string()),
            307 if !location.as_deref()?.starts_with(&a.url()) => Some("c".to_string()),
            _ => None,
        }
    });
    assert_eq!(home_of(&c, &admin, "r1"), Some(moved));
    let (nodes, _) = cluster(&c, &admin);
    let ids: Vec<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    let report = media_through(&b, &admin, "m1", dir.path());
    media_flowed(&report);
    let home = home_of(&b, &admin, "m1-room0").unwrap();
    assert!(home == "b" || home == "c", "{home}");

    // A node stopped cleanly hands its rooms back at once: none is left homed on it, and it has
    // left the directory before its lease could run out.
    let (_, _, _) = call("GET", &format!("{}/api/rooms/r2", c.url()), &admin, None);
    let held_by_c: Vec<String> = cluster(&b, &admin)
        .1
        .into_iter()
        .filter(|(_, n)| n == "c")
        .map(|(r, _)| r)
        .collect();
    assert!(!held_by_c.is_empty(), "c holds a room before it stops");
    let term = Command::new("kill")
        .args(["-TERM", &c.process.daemon.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // c renewed its lease at most a third of a lease ago: gone within a fraction of a second, it
    // handed itself back rather than ran out.
    eventually("c left the directory", LEASE / 4, || {
        let (nodes, rooms) = cluster(&b, &admin);
        let ids: Vec<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
        (ids == ["b"] && rooms.iter().all(|(_, n)| n != "c")).then_some(())
    });
    let status = c.process.daemon.stop_within(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        c.process.daemon.log()
    );
}

#[test]
fn the_load_tester_starts_a_cluster_spreads_its_rooms_and_reports_each_node() {
    let dir = tempfile::tempdir().unwrap();
    let (report, text) = media_run(
        &[
            "--nodes",
            "3",
            "--rooms",
            "3",
            "--publishers",
            "1",
            "--subscribers",
            "1",
        ],
        &dir.path().join("nodes.json"),
    );
    media_flowed(&report);
    assert_eq!(report["setup"]["nodes"], 3);
    // Rooms claimed one after another go to the node with the fewest rooms: one each.
    let nodes = report["relay"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{report}");
    let forwarded: Vec<u64> = nodes
        .iter()
        .map(|n| n["packets_forwarded"].as_u64().unwrap())
        .collect();
    assert!(forwarded.iter().all(|f| *f > 0), "{forwarded:?}");
    // Each node's CPU from its process, which this run started.
    assert!(
        nodes
            .iter()
            .all(|n| n["cpu_seconds"].as_f64().unwrap() > 0.0),
        "{report}"
    );
    assert_eq!(report["relay"]["cpu_source"], "proc");
    assert_eq!(
        forwarded.iter().sum::<u64>(),
        report["relay"]["packets_forwarded"].as_u64().unwrap()
    );
    assert!(text.contains("node http://127.0.0.1:"), "{text}");
}
