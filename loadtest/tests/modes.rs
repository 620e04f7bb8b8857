//! Short runs of the load tester's modes as a user runs them: the `relay-loadtest` binary
//! against a relay it starts itself (the `relay` binary of this build), reading back its
//! `--json` report and `--plot` SVG. Counts are checked, never timings.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `relay-loadtest ARGS` to its end; a guard far above any bound the run sets itself
/// only keeps a broken run from hanging the suite.
fn loadtest(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay-loadtest"))
        .args(args)
        .arg("--relay-bin")
        .arg(relay_kit::process::relay_bin())
        .env_remove("RELAY_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start relay-loadtest");
    let guard = Instant::now() + Duration::from_secs(600);
    while child.try_wait().expect("wait for relay-loadtest").is_none() {
        if Instant::now() > guard {
            let _ = child.kill();
            panic!("relay-loadtest did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("relay-loadtest output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the JSON report"))
        .expect("the JSON report parses")
}

/// A well-formed SVG with `series` polylines, each with at least one point.
fn check_svg(path: &Path, series: usize) {
    let svg = std::fs::read_to_string(path).expect("the SVG plot");
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<svg").count(), 1, "{svg}");
    assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
    let polylines: Vec<&str> = svg.lines().filter(|l| l.contains("<polyline")).collect();
    assert_eq!(polylines.len(), series, "{svg}");
    for l in polylines {
        let points = l
            .split("points=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default();
        assert!(!points.is_empty(), "{l}");
        for p in points.split(' ') {
            let (x, y) = p.split_once(',').expect("x,y");
            assert!(x.parse::<f64>().is_ok() && y.parse::<f64>().is_ok(), "{l}");
        }
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn files_run_moves_every_file_intact_and_the_edit_travels_small() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("files.json");
    let size: u64 = 6_000_000;
    let (code, out) = loadtest(&[
        "files",
        "--clients",
        "2",
        "--size",
        &size.to_string(),
        "--duration",
        "300s",
        "--json",
        report.to_str().unwrap(),
        "--plot",
        "files.svg",
    ]);
    assert_eq!(code, 0, "{out}");
    let r = json(&report);
    assert_eq!(r["stopped_by_itself"], true, "{out}");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(
        steps.iter().map(|s| u(&s["clients"])).collect::<Vec<_>>(),
        [1, 2]
    );
    let mut logical_total = 0;
    for s in steps {
        let clients = u(&s["clients"]);
        assert_eq!(s["errors"].as_array().unwrap().len(), 0, "{out}");
        assert_eq!(s["cut_short"], false, "{out}");
        assert_eq!(u(&s["files_put"]), 3 * clients, "{out}");
        assert_eq!(u(&s["files_got"]), u(&s["files_put"]), "{out}");
        assert_eq!(u(&s["files_verified"]), u(&s["files_got"]), "{out}");
        assert_eq!(u(&s["mismatches"]), 0, "{out}");
        // Random and compressible files of `size`, and the edited copy 1000 bytes longer.
        let logical = clients * (3 * size + 1000);
        assert_eq!(u(&s["logical_bytes_put"]), logical, "{out}");
        assert_eq!(u(&s["logical_bytes_got"]), logical, "{out}");
        assert_eq!(u(&s["bytes_verified"]), logical, "{out}");
        assert!(u(&s["bytes_sent"]) <= logical, "{out}");
        logical_total += logical;
        let kinds = s["kinds"].as_array().unwrap();
        let sent: u64 = kinds.iter().map(|k| u(&k["bytes_sent"])).sum();
        assert_eq!(sent, u(&s["bytes_sent"]), "{out}");
        for k in kinds {
            assert_eq!(u(&k["files"]), clients, "{out}");
            assert!(u(&k["bytes_sent"]) <= u(&k["logical_bytes"]), "{out}");
            assert!(u(&k["chunks_sent"]) <= u(&k["chunks"]), "{out}");
            match k["kind"].as_str().unwrap() {
                // Only the chunks the edits touched travel again; zstd shrinks the text.
                "edited" | "compressible" => {
                    assert!(u(&k["bytes_sent"]) < u(&k["logical_bytes"]), "{out}");
                }
                _ => {}
            }
        }
        assert!(s["relay_cpu_seconds"].as_f64().unwrap() >= 0.0, "{out}");
    }
    assert_eq!(u(&r["logical_bytes_put"]), logical_total, "{out}");
    assert_eq!(u(&r["files_put"]), 9, "{out}");
    assert_eq!(u(&r["files_verified"]), 9, "{out}");
    assert_eq!(r["cpu_source"], "proc", "{out}");
    // A bare plot name lands next to the JSON: put and get, and the relay's CPU per GB.
    check_svg(&dir.path().join("files.svg"), 3);
}

#[test]
fn find_capacity_reports_its_steps_and_the_load_held() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("capacity.json");
    let plot = dir.path().join("capacity.svg");
    // Thresholds far from anything loopback shows, so every step should hold and the
    // search end at its step limit.
    let (code, out) = loadtest(&[
        "media",
        "--rooms",
        "1",
        "--publishers",
        "1",
        "--subscribers",
        "1",
        "--workers",
        "1",
        "--client-threads",
        "1",
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--floor-duration",
        "100ms",
        "--find-capacity",
        "--max-steps",
        "2",
        "--max-loss-percent",
        "50",
        "--max-p99-ms",
        "5000",
        "--json",
        report.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let r = json(&report);
    assert_eq!(r["stopped_by_itself"], true, "{out}");
    let steps = r["steps"].as_array().unwrap();
    assert!((1..=2).contains(&steps.len()), "{out}");
    assert_eq!(u(&steps[0]["subscribers_per_room"]), 1, "{out}");
    if let Some(second) = steps.get(1) {
        assert_eq!(u(&second["subscribers_per_room"]), 2, "{out}");
    }
    for s in steps {
        let m = &s["report"];
        assert!(m.is_object(), "{out}");
        assert_eq!(m["joined"], m["expected_joins"], "{out}");
        assert!(u(&m["relay"]["packets_forwarded"]) > 0, "{out}");
        assert_eq!(s["held"], s["reasons"].as_array().unwrap().is_empty());
    }
    let held = u(&r["held_subscribers_per_room"]);
    let last_held = steps.iter().take_while(|s| s["held"] == true).last();
    assert_eq!(
        Some(held),
        last_held.map(|s| u(&s["subscribers_per_room"])),
        "{out}"
    );
    assert_eq!(
        u(&r["held_sessions"]),
        u(&last_held.unwrap()["sessions"]),
        "{out}"
    );
    // Relay and floor; p99 and median one-way delay and the relay's forward p99; loss.
    check_svg(&plot, 6);
}

#[test]
fn bad_options_exit_2_without_running() {
    for args in [
        &["files", "--clients", "0"][..],
        &["files", "--size", "10"],
        &["media", "--find-capacity", "--max-steps", "0"],
        &["files", "--target", "http://127.0.0.1:1"],
    ] {
        let (code, out) = loadtest(args);
        assert_eq!(code, 2, "{args:?}: {out}");
    }
}

/// Process ids of every running `janus`.
fn janus_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "janus")
        })
        .collect()
}

#[test]
fn beside_janus_runs_the_same_clients_on_both_and_stops_by_itself() {
    // Janus comes from Debian (CI installs it); the run needs root for its network namespace.
    let janus = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("janus").is_file());
    if !janus {
        println!("SKIPPED beside_janus: `janus` is not installed (apt-get install -y janus)");
        return;
    }
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    });
    if !root {
        println!("SKIPPED beside_janus: the run's network namespace needs root");
        return;
    }
    let before = janus_pids();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("beside.json");
    let (code, out) = loadtest(&[
        "media",
        "--beside-janus",
        "--rooms",
        "1",
        "--publishers",
        "1",
        "--subscribers",
        "2",
        "--workers",
        "1",
        "--client-threads",
        "1",
        "--duration",
        "3s",
        "--warmup",
        "1s",
        "--floor-duration",
        "100ms",
        "--json",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("relay/janus ratio"), "{out}");
    let r = json(&report);
    for (name, m) in [("relay", &r["relay"]), ("janus", &r["janus"])] {
        assert_eq!(m["setup"]["sfu"], name, "{out}");
        assert_eq!(m["stopped_by_itself"], true, "{out}");
        assert_eq!(u(&m["joined"]), 3, "{name}: {out}");
        assert_eq!(m["joined"], m["expected_joins"], "{name}: {out}");
        assert_eq!(
            (u(&m["peers"]), u(&m["dead_peers"])),
            (3, 0),
            "{name}: {out}"
        );
        let sent = u(&m["video_packets_sent"]) + u(&m["audio_packets_sent"]);
        let received = u(&m["video_packets_received"]) + u(&m["audio_packets_received"]);
        assert!(
            u(&m["video_packets_sent"]) > 0 && u(&m["audio_packets_sent"]) > 0,
            "{out}"
        );
        assert!(u(&m["video_packets_received"]) > 0, "{name}: {out}");
        assert!(u(&m["audio_packets_received"]) > 0, "{name}: {out}");
        // Each subscriber gets one layer of three and the audio: at most what was sent, each,
        // give or take the packets in flight at the window's edges.
        assert!(received <= 2 * sent + 100, "{name}: {out}");
        assert!(u(&m["loss_expected"]) >= u(&m["loss_received"]), "{out}");
        assert!(m["loss_ratio"].as_f64().unwrap() < 0.5, "{name}: {out}");
        assert!(u(&m["one_way_delay_ms"]["samples"]) > 0, "{name}: {out}");
        assert!(
            m["relay"]["cpu_seconds"].as_f64().unwrap() > 0.0,
            "{name}: {out}"
        );
        assert!(
            m["received_packets_per_cpu_second"].as_f64().unwrap() > 0.0,
            "{out}"
        );
    }
    let j = &r["janus"]["relay"];
    // Janus counts nothing itself: its forwarded packets are what the subscribers received.
    assert_eq!(j["forwarded_counted_by"], "subscribers", "{out}");
    assert_eq!(
        u(&j["packets_forwarded"]),
        u(&r["janus"]["video_packets_received"]) + u(&r["janus"]["audio_packets_received"]),
        "{out}"
    );
    assert_eq!(r["relay"]["relay"]["forwarded_counted_by"], "sfu", "{out}");
    assert!(r["relay_to_janus"].as_f64().unwrap() > 0.0, "{out}");
    // The Janus this run started is gone.
    let left: Vec<u32> = janus_pids()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(left.is_empty(), "janus left running: {left:?}");
}
