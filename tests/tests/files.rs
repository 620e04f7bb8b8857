//! The file plane end to end: the real binary, `relay files ...` over QUIC on loopback, the chunk
//! store on disk.
#![allow(clippy::unwrap_used)] // Tests stop at the first unexpected failure.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use relay::files::chunker::{MAX_CHUNK, MIN_CHUNK};
use relay::files::manifest::Manifest;
use relay::files::store::ChunkStore;
use relay_tests::{FilesRun, Relay, noise, run};

const MIB: usize = 1 << 20;

/// Incompressible bytes, reproducible from `seed`.
fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(run: &FilesRun) {
    assert_eq!(run.code, 0, "{} {}", run.json, run.stderr);
}

fn denied(run: &FilesRun, code: &str) {
    assert_eq!(run.code, 3, "{} {}", run.json, run.stderr);
    assert_eq!(run.json["error"], code, "{}", run.json);
    assert!(
        run.stderr.contains(&format!("denied ({code})")),
        "{}",
        run.stderr
    );
}

/// Registers organisation `org` (with an optional quota), a user and a device, and mints a token.
fn member(
    relay: &Relay,
    org: &str,
    quota: Option<u64>,
    user: &str,
    device: &str,
    kind: &str,
    clearance: u8,
) -> String {
    let mut add = vec!["admin", "org", "add", org];
    let q = quota.map(|q| q.to_string());
    if let Some(q) = &q {
        add.extend(["--quota-bytes", q]);
    }
    let _ = relay.cli(&add); // may exist already
    let c = clearance.to_string();
    let out = relay.cli(&[
        "admin",
        "user",
        "add",
        "--org",
        org,
        user,
        "--clearance",
        &c,
    ]);
    assert!(out.status.success() || relay_tests::stderr(&out).contains("exists"));
    let out = relay.cli(&[
        "admin", "device", "add", "--org", org, device, "--kind", kind,
    ]);
    assert!(out.status.success() || relay_tests::stderr(&out).contains("exists"));
    relay.token(&[
        "--org", org, "--user", user, "--device", device, "--grants", "files",
    ])
}

/// Polls `cond` every 20 ms for at most `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn received(relay: &Relay) -> f64 {
    relay
        .metric("relay_files_bytes_received_total")
        .unwrap_or(0.0)
}

/// Waits until the relay has received at least `bytes` of chunk data, then kills `child`.
/// Returns whether the child was still running when killed.
/// Sends the signal `name` (`STOP`, `CONT`) to `child`.
fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "kill -{name} {}", child.id());
}

/// Lets `child` run in slices of 20 ms, frozen between them, until `enough` says what it has done
/// so far is enough, and kills it there. Frozen, the child cannot move on while `enough` looks, so
/// it dies in the state `enough` saw. False if the child finished first.
fn kill_when(child: &mut Child, mut enough: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        signal(child, "STOP");
        if enough() || Instant::now() > deadline {
            break;
        }
        signal(child, "CONT");
    }
    let _ = child.kill();
    let _ = child.wait();
    true
}

/// Kills `child` once the relay has received `bytes` more chunk bytes.
fn kill_after(relay: &Relay, child: &mut Child, bytes: f64) -> bool {
    let start = received(relay);
    kill_when(child, || received(relay) - start >= bytes)
}

fn store(relay: &Relay) -> ChunkStore {
    ChunkStore::open(&relay.data).unwrap()
}

#[test]
fn round_trips_are_bit_identical_listed_and_removed() {
    let relay = Relay::start();
    let token = relay.demo_token("files");
    let tmp = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    while text.len() < 3 * MIB {
        text.extend_from_slice(b"the quick brown fox jumps over the lazy dog, again and again\n");
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("tiny", b"hello".to_vec()),
        ("min-chunk", noise(1, MIN_CHUNK)),
        ("max-chunk", noise(2, MAX_CHUNK)),
        ("max-chunk-plus-one", noise(3, MAX_CHUNK + 1)),
        ("text", text),
    ];
    let mut ids = Vec::new();
    for (name, data) in &cases {
        let path = write(tmp.path(), name, data);
        let put = relay.files(&token, &["put", s(&path)]);
        ok(&put);
        assert_eq!(put.n("size"), data.len() as u64, "{name}");
        assert_eq!(put.n("chunks_sent"), put.n("chunks"), "{name}");
        if *name == "text" {
            assert!(
                put.n("bytes_sent") < data.len() as u64 / 10,
                "compressed: {}",
                put.json
            );
        }
        let out = tmp.path().join(format!("{name}.out"));
        let get = relay.files(&token, &["get", &put.s("id"), "-o", s(&out)]);
        ok(&get);
        assert_eq!(get.n("size"), data.len() as u64);
        assert_eq!(get.n("chunks_received"), put.n("chunks"));
        if *name == "text" {
            // The chunks came compressed, so the relay compresses them for the wire again.
            assert!(
                get.n("bytes_received") < data.len() as u64 / 10,
                "compressed: {}",
                get.json
            );
        }
        assert_eq!(&fs::read(&out).unwrap(), data, "{name} read back");
        assert!(!tmp.path().join(format!("{name}.out.relay-state")).exists());
        ids.push(put.s("id"));
    }
    let ls = relay.files(&token, &["ls"]);
    ok(&ls);
    let listed: Vec<&str> = ls.json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} in {listed:?}");
    }
    ok(&relay.files(&token, &["rm", &ids[1]]));
    let gone = relay.files(&token, &["get", &ids[1], "-o", s(&tmp.path().join("x"))]);
    assert_eq!(
        (gone.code, gone.json["error"].as_str()),
        (1, Some("not_found"))
    );
    // The contract's surface: readiness, the QUIC address in /api/info, the metrics.
    assert_eq!(relay.get("/readyz", None).status, 200);
    let info = relay.get("/api/info", Some(&token)).json();
    assert_eq!(info["quic"].as_str().unwrap(), relay.files_addr());
    for m in [
        "relay_files_bytes_received_total",
        "relay_files_bytes_deduplicated_total",
        "relay_files_store_bytes",
        "relay_files_transfers_active",
    ] {
        assert!(relay.metric(m).is_some(), "{m}");
    }
    assert!(relay.metric("relay_files_store_bytes").unwrap() > 0.0);
    // Puts, gets and removals are audited.
    let audit = fs::read_to_string(relay.data.join("audit.log")).unwrap();
    for action in ["files.put", "files.get", "files.rm"] {
        assert!(audit.contains(action), "{action} in the audit log");
    }
}

#[test]
fn a_finished_command_leaves_no_connection_open_on_the_relay() {
    // The client ends without waiting out QUIC's drain, but its close must still reach the
    // relay: a relay that never heard it would hold the connection for its 10 s idle timeout.
    let relay = Relay::start();
    let token = relay.demo_token("files");
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "note.txt", b"a short note");
    for _ in 0..3 {
        ok(&relay.files(&token, &["put", s(&path)]));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while relay.metric("relay_files_transfers_active") != Some(0.0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay still holds the command's connection"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn dedup_sends_only_what_the_organisation_lacks() {
    let relay = Relay::start();
    let token = relay.demo_token("files");
    let tmp = tempfile::tempdir().unwrap();
    let size = 200 * MIB;
    let mut data = noise(10, size);
    let path = write(tmp.path(), "big.bin", &data);

    let first = relay.files(&token, &["put", s(&path)]);
    ok(&first);
    let chunks = first.n("chunks");
    assert!(chunks > 20, "{}", first.json);
    assert_eq!(first.n("chunks_sent"), chunks);
    assert!(
        first.n("bytes_sent") >= size as u64,
        "incompressible: {}",
        first.json
    );
    let out = tmp.path().join("big.out");
    let get = relay.files(&token, &["get", &first.s("id"), "-o", s(&out)]);
    ok(&get);
    assert!(fs::read(&out).unwrap() == data, "large file read back");

    // The same content again, by the same organisation: no chunk travels.
    let dedup_before = relay
        .metric("relay_files_bytes_deduplicated_total")
        .unwrap();
    let again = relay.files(&token, &["put", s(&path)]);
    ok(&again);
    assert_eq!((again.n("chunks_sent"), again.n("bytes_sent")), (0, 0));
    assert_ne!(again.s("id"), first.s("id"));
    let dedup_after = relay
        .metric("relay_files_bytes_deduplicated_total")
        .unwrap();
    assert_eq!(dedup_after - dedup_before, size as f64);

    // A 1 MiB edit in the middle sends a few chunks.
    let mid = size / 2;
    data[mid..mid + MIB].copy_from_slice(&noise(11, MIB));
    fs::write(&path, &data).unwrap();
    let edit = relay.files(&token, &["put", s(&path)]);
    ok(&edit);
    assert!(edit.n("chunks_sent") <= 4, "{}", edit.json);
    assert!(
        edit.n("bytes_sent") <= 4 * MAX_CHUNK as u64,
        "{}",
        edit.json
    );
    // Downloading the edited version over the old one fetches only those chunks.
    let get = relay.files(&token, &["get", &edit.s("id"), "-o", s(&out)]);
    ok(&get);
    assert_eq!(
        get.n("chunks_received"),
        edit.n("chunks_sent"),
        "{}",
        get.json
    );
    assert!(fs::read(&out).unwrap() == data, "edited file read back");

    // Another organisation is not told the chunks exist: it sends everything.
    let other = member(&relay, "acme", None, "ann", "ann-pc", "terminal", 3);
    let foreign = relay.files(&other, &["put", s(&path)]);
    ok(&foreign);
    assert_eq!(foreign.n("chunks_sent"), foreign.n("chunks"));
    assert!(foreign.n("bytes_sent") >= size as u64);
}

/// Sets a file's modification time (and so, unavoidably, its change time to now).
fn set_mtime(path: &Path, mtime: std::time::SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn a_remembered_scan_is_used_only_while_the_file_is_unchanged() {
    let relay = Relay::start();
    let token = relay.demo_token("files");
    let tmp = tempfile::tempdir().unwrap();
    let size = 24 * MIB;
    let mut data = noise(40, size);
    let path = write(tmp.path(), "doc.bin", &data);
    let put = |want: &str| {
        let r = relay.files(&token, &["put", s(&path)]);
        ok(&r);
        assert_eq!(r.s("scan"), want, "{}", r.json);
        r
    };
    let read_back = |r: &FilesRun, want: &[u8]| {
        let out = tmp.path().join("out.bin");
        let _ = fs::remove_file(&out);
        ok(&relay.files(&token, &["get", &r.s("id"), "-o", s(&out)]));
        assert!(fs::read(&out).unwrap() == want, "read back");
    };

    // Just written: cut, and remembered only as a guide, since a write in the same clock tick
    // would not show in the file's times.
    let first = put("cut");
    assert_eq!(first.n("chunks_sent"), first.n("chunks"));
    let again = put("recut");
    assert_eq!(again.n("bytes_sent"), 0);
    // Settled before that scan began: now trusted without reading the file.
    std::thread::sleep(relay::files::scan_cache::SETTLE + Duration::from_millis(200));
    let settled = put("recut");
    let known = put("remembered");
    assert_eq!(known.n("bytes_sent"), 0);
    assert_eq!(known.n("chunks"), settled.n("chunks"));
    read_back(&known, &data);

    // Edited in place with the same size and its modification time put back: the change time
    // still moves, so the file is read again and the edit travels.
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let mid = size / 2;
    data[mid..mid + MIB].copy_from_slice(&noise(41, MIB));
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&data[mid..mid + MIB], mid as u64)
        .unwrap();
    set_mtime(&path, mtime);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    let edited = put("recut");
    assert!(edited.n("chunks_sent") >= 1, "{}", edited.json);
    assert!(edited.n("chunks_sent") <= 4, "{}", edited.json);
    assert_ne!(edited.s("id"), known.s("id"));
    read_back(&edited, &data);

    // Replaced by another file under the same name (a new inode): read again.
    std::thread::sleep(relay::files::scan_cache::SETTLE + Duration::from_millis(200));
    put("recut");
    put("remembered");
    let other = noise(42, size + 5);
    let staged = write(tmp.path(), "staged.bin", &other);
    set_mtime(&staged, mtime);
    fs::rename(&staged, &path).unwrap();
    let replaced = put("recut");
    read_back(&replaced, &other);

    // A damaged cache entry is ignored, never trusted.
    let entries: Vec<PathBuf> = fs::read_dir(relay.client_state().join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut bytes = fs::read(&entries[0]).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 1;
    fs::write(&entries[0], &bytes).unwrap();
    let fresh = put("cut");
    read_back(&fresh, &other);
}

#[test]
fn interrupted_upload_and_download_resume_without_resending() {
    let relay = Relay::start();
    let token = relay.demo_token("files");
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(20, 64 * MIB);
    let path = write(tmp.path(), "clip.bin", &data);
    let manifest = Manifest::scan(&data[..]).unwrap();
    let total = manifest.chunks().len() as u64;

    let mut child = relay.spawn_files(&token, &["put", s(&path)]);
    let killed = kill_after(&relay, &mut child, (16 * MIB) as f64);
    // Chunks already in the relay's hands when the client died still land; wait for the count
    // to settle before reading it.
    let progress = || {
        store(&relay)
            .upload_progress("demo", "demo", "clip.bin")
            .unwrap()
    };
    let mut before = progress();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = progress();
        if now == before {
            break;
        }
        before = now;
    }
    let resumed = relay.files(&token, &["put", s(&path)]);
    ok(&resumed);
    eprintln!(
        "upload killed part way: {before:?} of {total}; resumed: {}",
        resumed.json
    );
    assert!(killed, "the upload finished before it could be interrupted");
    let (done, listed) = before.expect("the interrupted upload is open");
    // A file this large is sent while it is cut: its manifest may not have been listed whole.
    assert!(listed <= total, "{listed} of {total}");
    assert!(done > 0 && done < total, "{done} of {total}");
    assert_eq!(resumed.n("chunks_sent"), total - done, "{}", resumed.json);
    assert_eq!(resumed.json["resumed"], true);
    let id = resumed.s("id");

    // Download: kill the client part way, then run again into the same output.
    let out = tmp.path().join("clip.out");
    let mut child = relay.spawn_files(&token, &["get", &id, "-o", s(&out)]);
    let part = tmp.path().join("clip.out.relay-part");
    let partial = || {
        let held = held_chunks(&part, &manifest);
        held > 0 && held < total
    };
    assert!(
        kill_when(&mut child, partial),
        "the download finished before it could be interrupted"
    );
    let held = held_chunks(&part, &manifest);
    assert!(held > 0 && held < total, "{held} of {total}");
    let again = relay.files(&token, &["get", &id, "-o", s(&out)]);
    ok(&again);
    eprintln!(
        "download killed with {held} of {total} chunks held; resumed: {}",
        again.json
    );
    assert_eq!(again.n("chunks_received"), total - held, "{}", again.json);
    assert_eq!(again.n("chunks_local"), held, "{}", again.json);
    assert!(
        fs::read(&out).unwrap() == data,
        "resumed download is intact"
    );
    assert!(!part.exists());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Chunks of `manifest` that the part file already holds.
fn held_chunks(part: &Path, manifest: &Manifest) -> u64 {
    let Ok(bytes) = fs::read(part) else { return 0 };
    manifest
        .chunks()
        .iter()
        .zip(manifest.offsets())
        .filter(|(c, o)| {
            let (o, l) = (*o as usize, c.len as usize);
            bytes.len() >= o + l && *blake3::hash(&bytes[o..o + l]).as_bytes() == c.hash
        })
        .count() as u64
}

#[test]
fn relay_killed_mid_upload_resumes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut relay = Relay::start_in(&data_dir, "", &[]);
    let token = relay.demo_token("files");
    let data = noise(30, 64 * MIB);
    let path = write(tmp.path(), "rec.bin", &data);
    let manifest = Manifest::scan(&data[..]).unwrap();
    let total = manifest.chunks().len() as u64;

    let mut child = relay.spawn_files(&token, &["put", s(&path)]);
    let start = received(&relay);
    wait_for(Duration::from_secs(120), || {
        received(&relay) - start >= (16 * MIB) as f64 || child.try_wait().unwrap().is_some()
    });
    relay.kill9();
    // The client would notice the relay gone after its idle timeout; a crash test need not wait.
    let status = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let relay = Relay::start_in(&data_dir, "", &[]);
    let before = store(&relay)
        .upload_progress("demo", "demo", "rec.bin")
        .unwrap();
    let resumed = relay.files(&token, &["put", s(&path)]);
    ok(&resumed);
    eprintln!(
        "relay killed part way: {before:?} of {total}; resumed: {}",
        resumed.json
    );
    match before {
        Some((done, _)) => {
            assert!(status.is_none_or(|s| !s.success()));
            assert!(done > 0, "some chunks were kept");
            assert_eq!(resumed.n("chunks_sent"), total - done, "{}", resumed.json);
        }
        None => assert_eq!(resumed.n("chunks_sent"), 0),
    }
    let out = tmp.path().join("rec.out");
    ok(&relay.files(&token, &["get", &resumed.s("id"), "-o", s(&out)]));
    assert!(fs::read(&out).unwrap() == data);
}

#[test]
fn crash_during_concurrent_uploads_keeps_every_completed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut relay = Relay::start_in(&data_dir, "", &[]);
    let token = relay.demo_token("files");
    let mut done: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..2 {
        let data = noise(40 + i, 6 * MIB + i as usize);
        let path = write(tmp.path(), &format!("early{i}"), &data);
        let put = relay.files(&token, &["put", s(&path)]);
        ok(&put);
        done.push((put.s("id"), data));
    }
    let mut running = Vec::new();
    for i in 0..4 {
        let data = noise(50 + i, 24 * MIB);
        let path = write(tmp.path(), &format!("late{i}"), &data);
        running.push((relay.spawn_files(&token, &["put", s(&path)]), data));
    }
    let start = received(&relay);
    wait_for(Duration::from_secs(120), || {
        received(&relay) - start >= (24 * MIB) as f64
    });
    relay.kill9();
    for (mut child, data) in running {
        // Clients that finished before the crash hold completed files; the rest are cut off.
        let finished = child.try_wait().unwrap().is_some_and(|s| s.success());
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if finished {
            done.push((FilesRun::from(out).s("id"), data));
        }
    }
    let relay = Relay::start_in(&data_dir, "", &[]);
    eprintln!("{} files completed before the crash", done.len());
    for (id, data) in &done {
        let out = tmp.path().join(format!("{id}.out"));
        ok(&relay.files(&token, &["get", id, "-o", s(&out)]));
        assert!(
            fs::read(&out).unwrap() == *data,
            "{id} intact after the crash"
        );
    }
    let report = store(&relay).check().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.checked > 0);
}

#[test]
fn several_quic_threads_share_the_port_and_every_transfer_is_intact() {
    const THREADS: usize = 3;
    let tmp = tempfile::tempdir().unwrap();
    // Threads share only a fixed port (with port 0 the relay runs one): take one that is free.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = Relay::start_in(
        &tmp.path().join("data"),
        &format!("[files]\nlisten = \"127.0.0.1:{port}\"\nio_threads = {THREADS}\n"),
        &[],
    );
    let token = relay.demo_token("files");
    // Clients at once, each from a port of its own, so the kernel spreads them over the threads.
    let files: Vec<Vec<u8>> = (0..12)
        .map(|i| noise(70 + i, MIB + 4099 * i as usize))
        .collect();
    let puts: Vec<Child> = files
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let path = write(tmp.path(), &format!("in{i}"), data);
            relay.spawn_files(&token, &["put", s(&path)])
        })
        .collect();
    let ids: Vec<String> = puts
        .into_iter()
        .map(|c| {
            let run = FilesRun::from(c.wait_with_output().unwrap());
            ok(&run);
            run.s("id")
        })
        .collect();
    let gets: Vec<(Child, PathBuf)> = ids
        .iter()
        .map(|id| {
            let out = tmp.path().join(format!("{id}.out"));
            (relay.spawn_files(&token, &["get", id, "-o", s(&out)]), out)
        })
        .collect();
    for ((child, out), data) in gets.into_iter().zip(&files) {
        ok(&FilesRun::from(child.wait_with_output().unwrap()));
        assert!(fs::read(&out).unwrap() == *data, "{} intact", out.display());
    }
    let accepted: Vec<f64> = (0..THREADS)
        .map(|t| {
            relay
                .metric(&format!("relay_files_connections_total{{thread=\"{t}\"}}"))
                .unwrap_or_else(|| panic!("no connection count for thread {t}"))
        })
        .collect();
    assert!(
        accepted.iter().sum::<f64>() >= 24.0,
        "every transfer's connection counted: {accepted:?}"
    );
    assert!(
        accepted.iter().filter(|&&n| n > 0.0).count() >= 2,
        "connections spread over the threads: {accepted:?}"
    );
}

#[test]
fn a_tampered_chunk_is_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut relay = Relay::start_in(&data_dir, "", &[]);
    let token = relay.demo_token("files");
    let data = noise(60, 6 * MIB);
    let path = write(tmp.path(), "doc.bin", &data);
    let put = relay.files(&token, &["put", s(&path)]);
    ok(&put);
    let check = || {
        let out = run(&["store", "check", "--data", s(&data_dir), "--json"], &[]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report)
    };
    let (code, report) = check();
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["clean"], true);
    assert!(report["checked"].as_u64().unwrap() >= 2, "{report}");
    let manifest = Manifest::scan(&data[..]).unwrap();
    // Just put, the file is kept in memory, and its first download is served from there.
    let from_memory = || {
        relay
            .metric("relay_files_chunks_from_memory_total")
            .unwrap()
    };
    // The put's commit reads the first chunk back, to check the file's type.
    let at_put = from_memory();
    assert_eq!(at_put, 1.0);
    for name in ["doc.first", "doc.second"] {
        ok(&relay.files(
            &token,
            &["get", &put.s("id"), "-o", s(&tmp.path().join(name))],
        ));
        assert!(fs::read(tmp.path().join(name)).unwrap() == data);
    }
    let n = manifest.chunks().len() as f64;
    assert_eq!(from_memory(), at_put + 2.0 * n);
    let victim = manifest.chunks()[1];
    // The disk's fault: the chunk's bytes change where they lie, under their seal.
    let (file, at) = store(&relay).locate(&victim.hash).unwrap().unwrap();
    let mut bytes = data[manifest.offsets()[1] as usize..][..victim.len as usize].to_vec();
    bytes[100] ^= 0x55;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&bytes, at).unwrap();
    }
    // Kept in memory, the chunk is served from there, intact.
    let warm = tmp.path().join("doc.warm");
    ok(&relay.files(&token, &["get", &put.s("id"), "-o", s(&warm)]));
    assert!(fs::read(&warm).unwrap() == data);
    assert_eq!(from_memory(), at_put + 3.0 * n);
    // After a restart nothing is kept: the disk is read, and the damage found.
    relay.stop();
    let relay = Relay::start_in(&data_dir, "", &[]);
    let out = tmp.path().join("doc.out");
    let get = relay.files(&token, &["get", &put.s("id"), "-o", s(&out)]);
    assert_eq!(get.code, 1, "{} {}", get.json, get.stderr);
    assert_eq!(get.json["error"], "corrupt");
    assert!(!out.exists(), "nothing is put in place");
    let part = tmp.path().join("doc.out.relay-part");
    if let Ok(p) = fs::read(&part) {
        let o = manifest.offsets()[1] as usize;
        assert!(
            p[o..o + victim.len as usize] != bytes[..],
            "the bad bytes never arrive"
        );
    }
    assert!(relay.metric("relay_files_chunks_corrupt_total").unwrap() >= 1.0);
    assert_eq!(store(&relay).check().unwrap().corrupt, vec![victim.hash]);
    // The operator's check, beside the running relay, names the chunk and fails.
    let (code, report) = check();
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["clean"], false);
    assert_eq!(report["corrupt"], serde_json::json!([hex(&victim.hash)]));
}

#[test]
fn a_chunk_damaged_in_flight_is_rejected_and_asked_again() {
    use relay::files::client::Client;
    use relay::files::wire::{Encoding, PutStart, Request, Response};

    let relay = Relay::start();
    let token = relay.demo_token("files");
    let data = noise(70, 2 * MIB);
    let manifest = Manifest::scan(&data[..]).unwrap();
    let cert = certificate(&relay);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect(&relay.files_addr(), cert, token.clone())
            .await
            .unwrap();
        let start = Request::PutStart(Box::new(PutStart {
            token: token.clone(),
            name: "x.bin".into(),
            room: None,
            classification: 0,
            view_only: false,
            manifest: manifest.clone(),
        }));
        let Response::PutReady {
            upload, missing, ..
        } = client.request(&start).await.unwrap()
        else {
            panic!("no upload")
        };
        let offsets = manifest.offsets();
        for i in missing {
            let c = manifest.chunks()[i as usize];
            let o = offsets[i as usize] as usize;
            let good = bytes::Bytes::copy_from_slice(&data[o..o + c.len as usize]);
            let mut bad = good.to_vec();
            bad[7] ^= 1;
            let send = |data: bytes::Bytes| Request::PutChunk {
                token: token.clone(),
                upload,
                index: i,
                encoding: Encoding::Raw,
                data,
            };
            let r = client.request(&send(bad.into())).await.unwrap();
            assert!(
                matches!(r, Response::Failed { ref code, .. } if code == "bad_chunk"),
                "{r:?}"
            );
            let r = client.request(&send(good)).await.unwrap();
            assert_eq!(r, Response::ChunkAccepted { index: i });
        }
        let r = client
            .request(&Request::PutCommit {
                token: token.clone(),
                upload,
            })
            .await
            .unwrap();
        assert!(
            matches!(r, Response::Committed(ref e) if e.size == data.len() as u64),
            "{r:?}"
        );
        client.close().await;
    });
    assert!(relay.metric("relay_files_chunks_rejected_total").unwrap() >= 1.0);
}

#[test]
fn refusals_exit_3_with_their_code_and_leave_nothing_behind() {
    let relay = Relay::start();
    let tmp = tempfile::tempdir().unwrap();
    let small = member(
        &relay,
        "small",
        Some(5 * MIB as u64),
        "sam",
        "sam-pc",
        "terminal",
        3,
    );
    let big = write(tmp.path(), "big.mp4", &noise(80, 6 * MIB));
    let fits = write(tmp.path(), "fits.bin", &noise(81, MIB));
    ok(&relay.files(&small, &["put", s(&fits)]));
    let usage = |r: &Relay| {
        store(r)
            .usage_of("small", None, relay::control::unix_now())
            .unwrap()
    };
    let before = usage(&relay);
    let stored_before = relay.metric("relay_files_store_bytes").unwrap();
    denied(&relay.files(&small, &["put", s(&big)]), "quota");
    assert_eq!(usage(&relay), before, "the refused upload reserved nothing");
    assert_eq!(
        relay.metric("relay_files_store_bytes").unwrap(),
        stored_before
    );

    // An executable renamed to a video is judged by its content.
    let mut elf = vec![
        0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0x3e, 0,
    ];
    elf.extend(noise(82, 300_000));
    let fake = write(tmp.path(), "holiday.mp4", &elf);
    let demo = relay.demo_token("files");
    denied(&relay.files(&demo, &["put", s(&fake)]), "file_type");
    let demo_usage = store(&relay)
        .usage_of("demo", None, relay::control::unix_now())
        .unwrap();
    assert_eq!(demo_usage, 0, "the refused upload left no reservation");

    // View-only: the terminal gets it, the browser does not.
    let terminal = member(&relay, "demo", None, "demo", "demo-terminal", "terminal", 1);
    let doc = write(tmp.path(), "plan.pdf", b"%PDF-1.7\nsecret plans\n");
    let put = relay.files(&terminal, &["put", s(&doc), "--view-only"]);
    ok(&put);
    let id = put.s("id");
    ok(&relay.files(&terminal, &["get", &id, "-o", s(&tmp.path().join("t.pdf"))]));
    denied(
        &relay.files(&demo, &["get", &id, "-o", s(&tmp.path().join("b.pdf"))]),
        "secure_view",
    );
    assert!(!tmp.path().join("b.pdf").exists());

    // Clearance: a file above the reader's clearance.
    let high = member(&relay, "demo", None, "boss", "boss-pc", "terminal", 3);
    let put = relay.files(&high, &["put", s(&fits), "--classification", "3"]);
    ok(&put);
    denied(
        &relay.files(
            &demo,
            &["get", &put.s("id"), "-o", s(&tmp.path().join("c"))],
        ),
        "clearance",
    );

    // Another organisation's file.
    denied(
        &relay.files(&small, &["get", &id, "-o", s(&tmp.path().join("o"))]),
        "grant",
    );
    denied(&relay.files(&small, &["rm", &id]), "grant");

    // A forged token.
    let claims = relay::control::token::Claims {
        jti: "f".into(),
        org: "demo".into(),
        sub: "demo".into(),
        device: "demo-terminal".into(),
        clearance: 3,
        room: None,
        grants: vec![relay::control::token::Grant::Files],
        iat: relay::control::unix_now(),
        nbf: relay::control::unix_now() - 10,
        exp: relay::control::unix_now() + 600,
    };
    let forged = relay::control::token::SigningKey::from_bytes([7; 32]).sign(&claims);
    denied(
        &relay.files(&forged, &["get", &id, "-o", s(&tmp.path().join("f"))]),
        "unauthorized",
    );
    denied(&relay.files(&forged, &["put", s(&fits)]), "unauthorized");

    // A token without the files grant.
    let no_files = relay.demo_token("publish");
    denied(&relay.files(&no_files, &["ls"]), "grant");

    let audit = fs::read_to_string(relay.data.join("audit.log")).unwrap();
    for reason in [
        "quota",
        "file_type",
        "secure_view",
        "clearance",
        "token_signature",
    ] {
        assert!(audit.contains(&format!("\"{reason}\"")), "{reason} audited");
    }
}

/// On a terminal a transfer draws a progress bar on stderr; into a pipe it draws none. The
/// terminal is a real pseudo-terminal from util-linux `script`.
#[test]
fn a_progress_bar_only_on_a_terminal() {
    let relay = Relay::start();
    let token = relay.demo_token("files");
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "clip.bin", &noise(77, 8 * MIB));

    let piped = relay.files(&token, &["put", s(&path)]);
    ok(&piped);
    assert!(!piped.stderr.contains("MiB"), "{}", piped.stderr);

    let fresh = write(tmp.path(), "other.bin", &noise(78, 8 * MIB));
    let args = relay.files_args(&token, &["put", s(&fresh)]);
    let command = std::iter::once(relay_tests::relay_bin().to_string_lossy().into_owned())
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("RELAY_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(" MiB") && shown.contains('%') && shown.contains("[#"),
        "no progress bar on the terminal: {shown}"
    );
}

#[test]
fn a_file_sent_while_it_is_cut_comes_back_whole_and_sent_again_sends_nothing() {
    use relay::files::client::{Client, Progress, PutOptions};
    use relay::files::scan_cache::Scan;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let relay = Relay::start();
    let token = relay.demo_token("files");
    let dir = tempfile::tempdir().unwrap();
    // The same bytes at the start and the end: their chunks are listed in different parts and
    // travel once.
    let start = noise(72, 8 * MIB);
    let data = [start.clone(), noise(73, 24 * MIB), start].concat();
    let path = write(dir.path(), "cut.bin", &data);
    let manifest = Manifest::scan(&data[..]).unwrap();
    let distinct: HashSet<_> = manifest.chunks().iter().map(|c| c.hash).collect();
    assert!(distinct.len() < manifest.chunks().len());
    let cert = certificate(&relay);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect(&relay.files_addr(), cert, token)
            .await
            .unwrap();
        let opts = PutOptions {
            stream_from: Some(0),
            ..PutOptions::default()
        };
        let progress = Arc::new(Progress::default());
        let first = client.put(&path, opts, progress.clone()).await.unwrap();
        eprintln!("sent while cut: {first:?}");
        assert!(first.manifest_parts > 1, "{first:?}");
        assert_eq!(first.scan, Scan::Cut);
        assert_eq!(first.chunks, manifest.chunks().len());
        assert_eq!(first.chunks_sent, distinct.len() as u64);
        assert_eq!(first.entry.size, data.len() as u64);
        assert_eq!(progress.done.load(Ordering::Relaxed), data.len() as u64);
        let out = dir.path().join("cut.out");
        client
            .get(&first.entry.id, Some(&out), Arc::new(Progress::default()))
            .await
            .unwrap();
        assert!(fs::read(&out).unwrap() == data, "the download is intact");
        let again = client
            .put(&path, opts, Arc::new(Progress::default()))
            .await
            .unwrap();
        assert!(again.manifest_parts > 1);
        assert_eq!(again.chunks_sent, 0, "{again:?}");
        assert_ne!(again.entry.id, first.entry.id);
        client.close().await;
    });
}

#[test]
fn a_transfer_on_loopback_climbs_to_the_largest_datagrams_and_keeps_them() {
    use relay::files::transport::MAX_UDP_PAYLOAD;

    let relay = Relay::start();
    let sizes = datagrams_of_a_put_and_a_get(&relay);
    // Loopback carries datagrams of any size: discovery reaches the bound, and the sends of
    // several large datagrams (over one IP packet, split by the file plane's socket) all
    // arrive, so nothing looks like a black hole.
    assert_eq!(sizes.black_holes, 0, "{}", sizes.stats);
    assert_eq!(sizes.up, MAX_UDP_PAYLOAD, "{}", sizes.stats);
    assert!(sizes.down_average > 8192, "{}", sizes.stats);
}

#[test]
fn the_memory_for_recent_chunks_is_used_again_as_files_keep_arriving() {
    let tmp = tempfile::tempdir().unwrap();
    // 16 MiB kept: the reservation, with 64 MiB for chunks on their way in, is 80 MiB, which
    // five files of 24 MiB go round more than once; the last arrives wholly in memory used
    // before. (The budget holds several chunks of up to 4 MiB, so that the last file's last
    // chunks are still kept when its get begins: a get keeps the file's first chunk, read
    // once before by the put's type check, and that may push out one.)
    let budget = 16 << 20;
    let relay = Relay::start_in(
        &tmp.path().join("data"),
        &format!("[files]\nlisten = \"127.0.0.1:0\"\nrecent_chunk_bytes = {budget}\n"),
        &[],
    );
    let token = relay.demo_token("files");
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let data = noise(70 + i, 24 * MIB);
            let path = write(tmp.path(), &format!("f{i}.bin"), &data);
            let put = relay.files(&token, &["put", s(&path)]);
            ok(&put);
            (put.s("id"), data)
        })
        .collect();
    let kept = relay.metric("relay_files_recent_bytes").unwrap();
    assert!(kept > 0.0 && kept <= budget as f64, "{kept}");
    let from_memory = || {
        relay
            .metric("relay_files_chunks_from_memory_total")
            .unwrap()
    };
    let get = |(id, data): &(String, Vec<u8>)| {
        let before = from_memory();
        let out = tmp.path().join(format!("{id}.out"));
        ok(&relay.files(&token, &["get", id, "-o", s(&out)]));
        assert!(fs::read(&out).unwrap() == *data);
        from_memory() - before
    };
    // The last file's last chunks are served from memory; the first file's are long gone.
    assert!(get(&files[4]) >= 1.0);
    assert_eq!(get(&files[0]), 0.0);
}

#[test]
fn the_relays_datagram_bound_holds_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start_in(
        &tmp.path().join("data"),
        "[files]\nlisten = \"127.0.0.1:0\"\nmax_udp_payload = 1452\n",
        &[],
    );
    let sizes = datagrams_of_a_put_and_a_get(&relay);
    // The client's own bound is larger; the relay's, sent in its transport parameters, wins for
    // what the client sends, and bounds the relay's own discovery for what it sends.
    assert_eq!(sizes.up, 1452, "{}", sizes.stats);
    assert!(sizes.down_average <= 1452, "{}", sizes.stats);
    assert_eq!(sizes.black_holes, 0, "{}", sizes.stats);
}

/// The datagrams of one transfer each way.
struct DatagramSizes {
    /// The size the client's sends reached during a put.
    up: u16,
    black_holes: u64,
    /// The average size of what the client received during a get of the same file.
    down_average: u64,
    stats: String,
}

/// Puts 48 MiB of noise through `relay` and gets it back, on one connection.
fn datagrams_of_a_put_and_a_get(relay: &Relay) -> DatagramSizes {
    use relay::files::client::{Client, Progress, PutOptions};
    use std::sync::Arc;

    let token = relay.demo_token("files");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let data = noise(71, 48 * MIB);
    fs::write(&path, &data).unwrap();
    let cert = certificate(relay);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect(&relay.files_addr(), cert, token)
            .await
            .unwrap();
        let report = client
            .put(&path, PutOptions::default(), Arc::new(Progress::default()))
            .await
            .unwrap();
        assert_eq!(report.entry.size, 48 * MIB as u64);
        let after_put = client.stats();
        let out = dir.path().join("back.bin");
        client
            .get(&report.entry.id, Some(&out), Arc::new(Progress::default()))
            .await
            .unwrap();
        assert!(fs::read(&out).unwrap() == data, "the download is intact");
        let after_get = client.stats();
        client.close().await;
        let bytes = after_get.udp_rx.bytes - after_put.udp_rx.bytes;
        let datagrams = after_get.udp_rx.datagrams - after_put.udp_rx.datagrams;
        DatagramSizes {
            up: after_put.path.current_mtu,
            black_holes: after_put.path.black_holes_detected,
            down_average: bytes / datagrams.max(1),
            stats: format!(
                "average received during the get: {}; {after_get:?}",
                bytes / datagrams.max(1)
            ),
        }
    })
}

/// The relay's certificate (DER), as a client trusts it.
fn certificate(relay: &Relay) -> Vec<u8> {
    relay::datadir::pem_body(
        &fs::read_to_string(relay.data.join("tls.crt")).unwrap(),
        "CERTIFICATE",
    )
    .unwrap()
}
