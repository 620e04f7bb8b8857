//! Recording a meeting and a call in the relay itself, with real media: two people in headless
//! Chromium (its fake camera and microphone) meet, a recording runs for 20 s, and the file it
//! left in the organisation's store is fetched with `relay files get` and judged by Debian's
//! ffprobe and ffmpeg. Then the refusals, and a relay killed in the middle of a recording.
//!
//! Everything stays on 127.0.0.1.
#![allow(clippy::unwrap_used)] // Tests stop at the first unexpected failure.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use relay_tests::Relay;
use relay_tests::browser::{Browser, SETTLE, Window};
use relay_tests::judge::{decode_errors, mean_volume, probe};
use serde_json::Value;

/// The browsers of these tests would share two cores: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const RECORDED: Duration = Duration::from_secs(20);

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {SETTLE:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn join(b: &Browser, w: &Window) {
    b.click(w, "Join");
    eventually("the page joins and publishes", || {
        b.run(
            w,
            "return relay.state.joined && !!relay.state.pub && !!relay.state.view;",
        )
        .as_bool()
        .filter(|j| *j)
    });
}

/// A page of `token` in `room`, joined and publishing.
fn publishing(browser: &Browser, relay: &Relay, token: &str, room: &str) -> Window {
    let w = browser.open(&relay.url(&format!("/#token={token}&room={room}")));
    join(browser, &w);
    eventually("the page publishes", || {
        let state = relay.get(&format!("/api/rooms/{room}"), Some(token)).json();
        (!state["publishers"].as_array()?.is_empty()).then_some(())
    });
    w
}

/// A token of `user` in `demo` with `grants`.
fn token(relay: &Relay, user: &str, grants: &str) -> String {
    relay.token(&[
        "--org",
        "demo",
        "--user",
        user,
        "--device",
        "demo-browser",
        "--grants",
        grants,
    ])
}

fn record(relay: &Relay, room: &str, token: &str, kind: &str) -> relay_tests::Answer {
    relay.post(
        &format!("/api/rooms/{room}/recordings"),
        Some(token),
        "application/json",
        &format!(r#"{{"kind":"{kind}"}}"#),
    )
}

fn stop(relay: &Relay, room: &str, token: &str, id: &str) -> relay_tests::Answer {
    relay.request(
        "DELETE",
        &format!("/api/rooms/{room}/recordings/{id}"),
        Some(token),
        "",
        "",
    )
}

/// Fetches a stored file with `relay files get` into `dir`.
/// A copy is kept in `target/artefacts/` to be played.
fn fetch(relay: &Relay, token: &str, id: &str, dir: &Path, name: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let get = relay.files(token, &["get", id, "-o", &out.to_string_lossy()]);
    assert_eq!(get.code, 0, "relay files get: {}", get.stderr);
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artefacts");
    std::fs::create_dir_all(&keep).unwrap();
    std::fs::copy(&out, keep.join(format!("recording-{name}"))).unwrap();
    out
}

/// Records `kind` in the lobby for [`RECORDED`]; the answer to the stop and the time measured
/// between the start's answer and the stop's request.
fn record_for(relay: &Relay, recorder: &str, kind: &str) -> (Value, f64) {
    let start = record(relay, "lobby", recorder, kind);
    assert_eq!(start.status, 201, "{}", start.body);
    let started = Instant::now();
    let id = start.json()["id"].as_str().unwrap().to_string();
    // Everyone's page can show it: the room's state names it.
    let room = relay.get("/api/rooms/lobby", Some(recorder)).json();
    assert_eq!(room["recording"]["id"], id.as_str(), "{room}");
    assert_eq!(room["recording"]["kind"], kind);
    assert!(room["recording"]["since"].as_u64().unwrap() > 0);
    assert_eq!(relay.metric("relay_recordings_active"), Some(1.0));
    // One at a time in a room.
    let again = record(relay, "lobby", recorder, "audio");
    assert_eq!(
        (again.status, again.error_code()),
        (409, "recording".into())
    );
    std::thread::sleep(RECORDED);
    let measured = started.elapsed().as_secs_f64();
    let stopped = stop(relay, "lobby", recorder, &id);
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    let room = relay.get("/api/rooms/lobby", Some(recorder)).json();
    assert!(room["recording"].is_null(), "{room}");
    assert_eq!(relay.metric("relay_recordings_active"), Some(0.0));
    (stopped.json(), measured)
}

/// The file has `codecs`, lasts `seconds` (within 0.5 s), decodes without an error, and its
/// audio is not silent.
fn plays(file: &Path, codecs: &[&str], seconds: f64) {
    let (found, probed) = probe(file);
    assert_eq!(found, codecs, "{}", file.display());
    assert!(
        (probed - seconds).abs() < 0.5,
        "ffprobe says {probed} s for {seconds} s"
    );
    assert_eq!(decode_errors(file), "");
    let volume = mean_volume(file);
    assert!(volume > -50.0, "{} is silent: {volume} dB", file.display());
}

#[test]
fn a_two_person_meeting_and_a_call_are_recorded_into_the_store_and_play() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let relay = Relay::start();
    let bob = relay.participant("bob");
    let carol = relay.participant("carol");
    let recorder = token(&relay, "bob", "publish,subscribe,record,files");
    let browser = Browser::start();
    let page = |t: &str| relay.url(&format!("/#token={t}&room=lobby"));
    // Bob's page holds the record grant, carol's does not.
    let b = browser.open(&page(&recorder));
    let c = browser.open(&page(&carol));
    join(&browser, &b);
    join(&browser, &c);
    eventually("both publish", || {
        let room = relay.get("/api/rooms/lobby", Some(&bob)).json();
        (room["publishers"].as_array()?.len() >= 2).then_some(())
    });
    let shown = |w: &Window, id: &str| {
        browser
            .run(
                w,
                &format!("return !document.getElementById('{id}').hidden;"),
            )
            .as_bool()
            == Some(true)
    };
    eventually("bob's page offers Record", || {
        shown(&b, "record").then_some(())
    });
    assert!(!shown(&c, "record"), "carol may not record");
    assert!(!shown(&b, "recording") && !shown(&c, "recording"));
    let dir = tempfile::tempdir().unwrap();

    // Bob presses Record: everyone sees the indicator; 20 s later he presses Stop.
    browser.click(&b, "Record");
    let started = Instant::now();
    for w in [&b, &c] {
        eventually("the page shows the recording", || {
            (browser.run(w, "return relay.recording();").as_bool() == Some(true)).then_some(())
        });
    }
    let room = relay.get("/api/rooms/lobby", Some(&bob)).json();
    assert_eq!(room["recording"]["kind"], "meeting", "{room}");
    assert_eq!(relay.metric("relay_recordings_active"), Some(1.0));
    let again = record(&relay, "lobby", &recorder, "audio");
    assert_eq!(
        (again.status, again.error_code()),
        (409, "recording".into())
    );
    std::thread::sleep(RECORDED.saturating_sub(started.elapsed()));
    let measured = started.elapsed().as_secs_f64();
    browser.click(&b, "Stop recording");
    let said = eventually("the page says where the recording went", || {
        let s = browser.run(&b, "return relay.status();");
        s.as_str()
            .filter(|t| t.contains("saved as"))
            .map(str::to_string)
    });
    for w in [&b, &c] {
        eventually("the indicator goes", || {
            (browser.run(w, "return relay.recording();").as_bool() == Some(false)).then_some(())
        });
    }
    let ls = relay.files(&recorder, &["ls"]);
    let meeting = ls.json["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().is_some_and(|n| n.ends_with(".webm")))
        .unwrap_or_else(|| panic!("no meeting file: {}", ls.json))
        .clone();
    assert!(said.contains(meeting["name"].as_str().unwrap()), "{said}");
    let file = fetch(
        &relay,
        &recorder,
        meeting["id"].as_str().unwrap(),
        dir.path(),
        "m.webm",
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        meeting["size"].as_u64().unwrap()
    );
    plays(&file, &["vp8", "opus"], measured);

    let (call, measured) = record_for(&relay, &recorder, "audio");
    let told = call["duration_s"].as_f64().unwrap();
    assert!(
        (told - measured).abs() < 0.5,
        "the relay says {told} s for {measured} s"
    );
    let file = fetch(
        &relay,
        &recorder,
        call["file"].as_str().unwrap(),
        dir.path(),
        "c.ogg",
    );
    plays(&file, &["opus"], measured);

    // Both are files of the organisation, named by room and time, owned by who recorded.
    let ls = relay.files(&recorder, &["ls"]);
    let mut names: Vec<String> = ls.json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["owner"], "bob");
            f["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    names.sort_by_key(|n| !n.ends_with(".webm"));
    for (n, ext) in names.iter().zip([".webm", ".ogg"]) {
        assert!(n.starts_with("lobby-") && n.ends_with(ext), "{names:?}");
        assert_eq!(n.len(), "lobby-20261204-050607".len() + ext.len(), "{n}");
    }
    assert!(relay.metric("relay_recording_bytes_total").unwrap() > 100_000.0);
    let audit = std::fs::read_to_string(relay.data.join("audit.log")).unwrap();
    let lines = |action: &str| audit.lines().filter(|l| l.contains(action)).count();
    assert_eq!(
        lines("\"recording.start\""),
        2 + 2,
        "two starts, two refused as running"
    );
    assert_eq!(
        lines("\"recording.stop\""),
        2 + 2,
        "two stops asked, two ended"
    );

    // A recording also ends when the room empties.
    let start = record(&relay, "lobby", &recorder, "audio");
    assert_eq!(start.status, 201, "{}", start.body);
    std::thread::sleep(Duration::from_secs(3));
    browser.click(&b, "Leave");
    browser.click(&c, "Leave");
    eventually("the recording ends with the room", || {
        (relay.metric("relay_recordings_active") == Some(0.0)).then_some(())
    });
    eventually("its file is listed", || {
        let ls = relay.files(&recorder, &["ls"]);
        (ls.json["files"].as_array()?.len() == 3).then_some(())
    });
}

#[test]
fn refusals_a_secure_room_no_grant_too_low_a_clearance_an_empty_room() {
    let relay = Relay::start();
    for args in [
        vec![
            "admin",
            "room",
            "add",
            "--org",
            "demo",
            "vault",
            "--secure-view",
        ],
        vec![
            "admin",
            "room",
            "add",
            "--org",
            "demo",
            "ops",
            "--classification",
            "2",
        ],
    ] {
        let out = relay.cli(&args);
        assert!(out.status.success(), "{}", relay_tests::stderr(&out));
    }
    relay.add_user("demo", "rita", 1);
    let recorder = token(&relay, "rita", "subscribe,record");
    let plain = token(&relay, "rita", "subscribe");
    for (room, who, kind, status, code) in [
        ("vault", &recorder, "meeting", 403, "secure_view"),
        ("vault", &recorder, "audio", 403, "secure_view"),
        ("lobby", &plain, "meeting", 403, "grant"),
        ("ops", &recorder, "meeting", 403, "clearance"),
        ("lobby", &recorder, "meeting", 409, "room_empty"),
        ("lobby", &recorder, "video", 400, "bad_request"),
        ("nowhere", &recorder, "audio", 404, "not_found"),
    ] {
        let a = record(&relay, room, who, kind);
        assert_eq!(
            (a.status, a.error_code().as_str()),
            (status, code),
            "{room} {kind}: {}",
            a.body
        );
    }
    let a = record(&relay, "lobby", "forged", "audio");
    assert_eq!(a.status, 401);
    let a = stop(&relay, "lobby", &recorder, "0123456789abcdef");
    assert_eq!(a.status, 404, "{}", a.body);
    // Nothing of any of it was stored.
    let files = token(&relay, "rita", "files");
    let ls = relay.files(&files, &["ls"]);
    assert_eq!(
        ls.json["files"].as_array().map(Vec::len),
        Some(0),
        "{}",
        ls.json
    );
    let audit = std::fs::read_to_string(relay.data.join("audit.log")).unwrap();
    let denied = audit
        .lines()
        .filter(|l| l.contains("\"recording.start\"") && l.contains("\"deny\""))
        .count();
    assert!(denied >= 4, "refusals are audited:\n{audit}");
}

#[test]
fn a_stopped_relay_closes_its_recording_and_a_killed_one_keeps_a_playable_file() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut relay = Relay::start_in(&data, "", &[]);
    let bob = relay.participant("bob");
    let recorder = token(&relay, "bob", "publish,subscribe,record,files");
    let browser = Browser::start();
    // Bob's page in the lobby of `relay`, publishing.
    let publishing = |relay: &Relay| publishing(&browser, relay, &bob, "lobby");
    let recordings = |relay: &Relay| -> Vec<Value> {
        let ls = relay.files(&recorder, &["ls"]);
        ls.json["files"].as_array().cloned().unwrap_or_default()
    };

    // SIGTERM in the middle of a recording: the relay closes it before it exits.
    let _first = publishing(&relay);
    let start = record(&relay, "lobby", &recorder, "meeting");
    assert_eq!(start.status, 201, "{}", start.body);
    std::thread::sleep(Duration::from_secs(4));
    assert!(relay.stop().success(), "{}", relay.log());
    let mut relay = Relay::start_in(&data, "", &[]);
    let first = recordings(&relay);
    assert_eq!(first.len(), 1, "the stopped recording is listed: {first:?}");
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"recording.stop\"") && l.contains("\"stopped\"")),
        "a stop at shutdown is audited as stopped:\n{audit}"
    );
    assert!(!audit.contains("recovered"), "nothing was left to recover");

    // kill -9 in the middle of the next one: the restarted relay closes what was stored.
    let _second = publishing(&relay);
    let start = record(&relay, "lobby", &recorder, "meeting");
    assert_eq!(start.status, 201, "{}", start.body);
    std::thread::sleep(Duration::from_secs(9));
    relay.kill9();
    drop(browser);
    let relay = Relay::start_in(&data, "", &[]);
    let files = recordings(&relay);
    assert_eq!(files.len(), 2, "the cut recording is listed: {files:?}");
    let cut = files.iter().find(|f| f["id"] != first[0]["id"]).unwrap();
    let file = fetch(
        &relay,
        &recorder,
        cut["id"].as_str().unwrap(),
        tmp.path(),
        "cut.webm",
    );
    let (codecs, probed) = probe(&file);
    assert_eq!(codecs, ["vp8", "opus"]);
    // All but the last chunk's worth (2 s) and the mix's latency survived.
    assert!((6.0..9.5).contains(&probed), "{probed} s of 9 s recorded");
    assert_eq!(decode_errors(&file), "");
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"recording.stop\"") && l.contains("recovered")),
        "the closing is audited"
    );
}

#[test]
fn a_recording_that_reaches_the_quota_stops_keeps_what_fits_and_tells_the_room() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const QUOTA: u64 = 400_000;
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start_in(
        &tmp.path().join("data"),
        &format!("[files]\nlisten = \"127.0.0.1:0\"\nuser_quota_bytes = {QUOTA}\n"),
        &[],
    );
    let bob = relay.participant("bob");
    let recorder = token(&relay, "bob", "publish,subscribe,record,files");
    let browser = Browser::start();
    let b = publishing(&browser, &relay, &bob, "lobby");
    let start = record(&relay, "lobby", &recorder, "meeting");
    assert_eq!(start.status, 201, "{}", start.body);
    // A camera's top layer fills 400 kB within seconds: the recording stops by itself.
    eventually("the recording stops at the quota", || {
        (relay.metric("relay_recordings_active") == Some(0.0)).then_some(())
    });
    let room = relay.get("/api/rooms/lobby", Some(&bob)).json();
    assert!(room["recording"].is_null(), "{room}");
    let ls = relay.files(&recorder, &["ls"]);
    let files = ls.json["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{}", ls.json);
    let size = files[0]["size"].as_u64().unwrap();
    assert!(
        size <= QUOTA && size > 1_000,
        "{size} bytes under a quota of {QUOTA}"
    );
    let file = fetch(
        &relay,
        &recorder,
        files[0]["id"].as_str().unwrap(),
        tmp.path(),
        "quota.webm",
    );
    let (codecs, _) = probe(&file);
    assert_eq!(codecs, ["vp8", "opus"]);
    assert_eq!(decode_errors(&file), "");
    // The room is told, in the page and in its notices.
    let notices = relay.get("/api/notices?room=lobby", Some(&bob)).json();
    let told =
        notices["notices"].as_array().unwrap().iter().any(|n| {
            n["from"] == "relay" && n["text"].as_str().is_some_and(|t| t.contains("quota"))
        });
    assert!(told, "{notices}");
    eventually("bob's page shows the notice", || {
        let shown = browser.run(&b, "return relay.notices();");
        shown
            .as_array()?
            .iter()
            .any(|n| n.as_str().is_some_and(|t| t.contains("quota")))
            .then_some(())
    });
    let audit = std::fs::read_to_string(relay.data.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"recording.stop\"") && l.contains("\"quota\"")),
        "the end is audited with its reason"
    );
}

#[test]
fn a_recording_stops_when_its_starter_loses_the_clearance_for_the_room() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let relay = Relay::start();
    let out = relay.cli(&[
        "admin",
        "room",
        "add",
        "--org",
        "demo",
        "ops",
        "--classification",
        "1",
    ]);
    assert!(out.status.success(), "{}", relay_tests::stderr(&out));
    let carol = relay.participant("carol");
    relay.add_user("demo", "rita", 1);
    let rita = token(&relay, "rita", "record");
    let browser = Browser::start();
    let _c = publishing(&browser, &relay, &carol, "ops");
    let start = record(&relay, "ops", &rita, "audio");
    assert_eq!(start.status, 201, "{}", start.body);
    std::thread::sleep(Duration::from_secs(3));
    let out = relay.cli(&[
        "admin",
        "user",
        "set",
        "--org",
        "demo",
        "rita",
        "--clearance",
        "0",
    ]);
    assert!(out.status.success(), "{}", relay_tests::stderr(&out));
    eventually("the recording stops", || {
        (relay.metric("relay_recordings_active") == Some(0.0)).then_some(())
    });
    // Carol is still in the room; what was recorded is a file of the room's level.
    let room = relay.get("/api/rooms/ops", Some(&carol)).json();
    assert_eq!(
        room["publishers"].as_array().map(Vec::len),
        Some(1),
        "{room}"
    );
    assert!(room["recording"].is_null());
    let files = token(&relay, "carol", "files");
    let ls = relay.files(&files, &["ls"]);
    let listed = ls.json["files"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{}", ls.json);
    assert_eq!(listed[0]["classification"], 1);
    let audit = std::fs::read_to_string(relay.data.join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"recording.stop\"") && l.contains("\"stopped\"")),
        "{audit}"
    );
}
