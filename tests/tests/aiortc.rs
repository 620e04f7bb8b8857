//! A second WebRTC stack against the relay: aiortc (Python, `tests/aiortc/peer.py`) publishes
//! VP8 and Opus through WHIP, and one aiortc watcher receives one slot, then three, through WHEP,
//! with every video transceiver on one bundled transport. The watcher counts decoded frames.
//!
//! `tests/run` installs aiortc into `target/aiortc` (`RELAY_AIORTC_PYTHON` names another
//! interpreter). Candidates stay on 127.0.0.1 and no STUN server is asked.

use std::path::PathBuf;
use std::process::Command;

use relay_tests::Relay;
use serde_json::Value;

fn python() -> PathBuf {
    let python = std::env::var_os("RELAY_AIORTC_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/aiortc/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: tests/run installs aiortc there (python3 -m venv target/aiortc && \
         target/aiortc/bin/pip install aiortc==1.16.0)",
        python.display()
    );
    python
}

/// Runs the aiortc peers: `publishers` publish into `lobby`, then a watcher with `slots` video
/// transceivers watches for a few seconds. Returns the watcher's report.
fn watch(relay: &Relay, publishers: &[&str], slots: usize) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/aiortc/peer.py"))
        .args(["--base", &format!("http://{}", relay.http)])
        .args(["--room", "lobby", "--slots", &slots.to_string()])
        .args(["--watcher", &relay.participant(&format!("watcher{slots}"))]);
    for name in publishers {
        cmd.args(["--publisher", &relay.participant(name)]);
    }
    let out = cmd.output().expect("run the aiortc peers");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aiortc peers failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("aiortc report ({e}): {stdout}"));
    for p in report["publishers"].as_array().expect("publishers") {
        assert!(
            matches!(p["ice"].as_str(), Some("completed" | "connected")),
            "a publisher's ICE: {report}"
        );
    }
    report
}

fn frames(report: &Value) -> Vec<u64> {
    report["watcher"]["video"]
        .as_array()
        .expect("video counts")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn aiortc_publishes_and_watches_one_slot_and_three_on_one_transport() {
    let relay = Relay::start();

    // One publisher, one slot.
    let one = watch(&relay, &["ada"], 1);
    assert!(
        matches!(
            one["watcher"]["ice"].as_str(),
            Some("completed" | "connected")
        ),
        "the watcher's ICE with one slot: {one}"
    );
    let f = frames(&one);
    assert!(f[0] >= 20, "frames decoded in the one slot: {one}");
    assert_eq!(one["watcher"]["sizes"][0], serde_json::json!([320, 240]));
    assert!(
        one["watcher"]["audio"].as_u64().unwrap_or(0) >= 50,
        "audio frames: {one}"
    );

    // Three publishers and three video transceivers on one bundled transport: each slot
    // carries one of them and decodes.
    let three = watch(&relay, &["ben", "cleo", "dev"], 3);
    assert!(
        matches!(
            three["watcher"]["ice"].as_str(),
            Some("completed" | "connected")
        ),
        "the watcher's ICE with three slots: {three}"
    );
    let f = frames(&three);
    assert_eq!(f.len(), 3, "{three}");
    for (slot, n) in f.iter().enumerate() {
        assert!(*n >= 20, "frames decoded in slot {slot}: {three}");
    }
}
