//! The ways around a token's room, clearance or ownership that a review tried, each refused:
//! room-limited tokens and files, admins bounded by their own clearance and room, who may
//! delete, removing people and revoking one token (live sessions end too), private files on
//! disk, "already have" answers above the uploader's clearance, session control with the wrong
//! token, oversized offers, and what the audit log and error messages tell.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use relay_tests::{Answer, FilesRun, Relay, noise, run, stderr};
use serde_json::{Value, json};

const WHIP_OFFER: &str = include_str!("../testdata/chromium-whip-offer.sdp");
const WHEP_OFFER: &str = include_str!("../testdata/chromium-whep-offer.sdp");

fn cli_ok(relay: &Relay, args: &[&str]) {
    let out = relay.cli(args);
    assert!(out.status.success(), "relay {args:?}: {}", stderr(&out));
}

/// Organisation `acme`: users of clearance 0 to 3, browser, terminal and low devices, and the
/// rooms `open` (0), `secret` (2) and `secure` (secure view).
fn acme(relay: &Relay) {
    cli_ok(relay, &["admin", "org", "add", "acme"]);
    for (user, clearance) in [("ann", "3"), ("bob", "0"), ("cy", "2"), ("root", "3")] {
        cli_ok(
            relay,
            &[
                "admin",
                "user",
                "add",
                "--org",
                "acme",
                user,
                "--clearance",
                clearance,
            ],
        );
    }
    for (device, kind, max) in [
        ("pc", "browser", "3"),
        ("term", "terminal", "3"),
        ("low", "browser", "0"),
    ] {
        cli_ok(
            relay,
            &[
                "admin",
                "device",
                "add",
                "--org",
                "acme",
                device,
                "--kind",
                kind,
                "--max-clearance",
                max,
            ],
        );
    }
    for (room, classification) in [("open", "0"), ("secret", "2")] {
        cli_ok(
            relay,
            &[
                "admin",
                "room",
                "add",
                "--org",
                "acme",
                room,
                "--classification",
                classification,
            ],
        );
    }
}

fn token(relay: &Relay, user: &str, device: &str, grants: &str, room: Option<&str>) -> String {
    let mut args = vec![
        "--org", "acme", "--user", user, "--device", device, "--grants", grants,
    ];
    if let Some(r) = room {
        args.extend(["--room", r]);
    }
    relay.token(&args)
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}

fn put(relay: &Relay, token: &str, path: &Path, extra: &[&str]) -> FilesRun {
    let p = path.to_string_lossy().to_string();
    let mut args = vec!["put", p.as_str()];
    args.extend_from_slice(extra);
    relay.files(token, &args)
}

fn ok(run: &FilesRun) {
    assert_eq!(run.code, 0, "{} {}", run.json, run.stderr);
}

fn refused(run: &FilesRun, code: &str) {
    assert_eq!(run.code, 3, "{} {}", run.json, run.stderr);
    assert_eq!(run.json["error"], code, "{}", run.json);
}

fn listed(relay: &Relay, token: &str) -> Vec<String> {
    let run = relay.files(token, &["ls"]);
    ok(&run);
    run.json["files"]
        .as_array()
        .or_else(|| run.json.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|f| f["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The audit log's lines, parsed.
fn audit_lines(relay: &Relay) -> Vec<Value> {
    let text = std::fs::read_to_string(relay.data.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (at most 5 s) for the audit log to hold a line that `pred` accepts.
fn audited(relay: &Relay, pred: impl Fn(&Value) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if audit_lines(relay).iter().any(&pred) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn api(relay: &Relay, method: &str, path: &str, token: &str, body: Option<Value>) -> Answer {
    let body = body.unwrap_or(Value::Null).to_string();
    relay.request(method, path, Some(token), "application/json", &body)
}

fn sdp(
    relay: &Relay,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &str,
) -> u16 {
    relay
        .request(method, path, Some(token), content_type, body)
        .status
}

/// Opens a WHIP (or WHEP) session and returns its Location.
fn open(relay: &Relay, path: &str, token: &str, offer: &str) -> String {
    let a = relay.post(path, Some(token), "application/sdp", offer);
    assert_eq!(a.status, 201, "{path}: {}", a.body);
    a.header("location").expect("Location").to_string()
}

#[test]
fn a_room_limited_token_reaches_only_the_files_of_its_room() {
    let relay = Relay::start();
    acme(&relay);
    let tmp = tempfile::tempdir().unwrap();
    let ann = token(&relay, "ann", "pc", "files", None);
    let in_open = token(&relay, "ann", "pc", "files", Some("open"));

    let secret = put(
        &relay,
        &ann,
        &write(tmp.path(), "plan.bin", &noise(1, 300_000)),
        &["--room", "secret"],
    );
    ok(&secret);
    let secret_id = secret.s("id");
    let loose = put(
        &relay,
        &ann,
        &write(tmp.path(), "loose.bin", &noise(2, 200_000)),
        &[],
    );
    ok(&loose);

    // The room-limited token neither lists nor reads them.
    assert!(listed(&relay, &in_open).is_empty());
    let out = tmp.path().join("got");
    let got = relay.files(&in_open, &["get", &secret_id, "-o", &out.to_string_lossy()]);
    refused(&got, "grant");
    assert!(!out.exists());
    refused(&relay.files(&in_open, &["get", &loose.s("id")]), "grant");
    // Nor puts into another room; without one named, its file lands in its own room.
    let other = write(tmp.path(), "other.bin", &noise(3, 100_000));
    refused(
        &put(&relay, &in_open, &other, &["--room", "secret"]),
        "grant",
    );
    let mine = put(&relay, &in_open, &other, &[]);
    ok(&mine);
    assert_eq!(listed(&relay, &in_open), vec![mine.s("id")]);
    // The unlimited token sees all three.
    assert_eq!(listed(&relay, &ann).len(), 3);
    assert!(audited(&relay, |l| l["action"] == "files.get"
        && l["decision"] == "deny"
        && l["reason"] == "room_scope"));
}

#[test]
fn files_are_removed_by_their_owner_or_an_admin_never_below_their_classification() {
    let relay = Relay::start();
    acme(&relay);
    let tmp = tempfile::tempdir().unwrap();
    let ann = token(&relay, "ann", "term", "files", None);
    let bob = token(&relay, "bob", "pc", "files", None);
    let plain = put(
        &relay,
        &ann,
        &write(tmp.path(), "a.bin", &noise(4, 100_000)),
        &[],
    );
    ok(&plain);
    let viewing = put(
        &relay,
        &ann,
        &write(tmp.path(), "v.bin", &noise(5, 100_000)),
        &["--view-only"],
    );
    ok(&viewing);
    let high = put(
        &relay,
        &ann,
        &write(tmp.path(), "h.bin", &noise(6, 100_000)),
        &["--classification", "2"],
    );
    ok(&high);

    refused(&relay.files(&bob, &["rm", &plain.s("id")]), "grant");
    refused(&relay.files(&bob, &["rm", &viewing.s("id")]), "grant");
    assert_eq!(listed(&relay, &ann).len(), 3, "nothing was removed");
    assert!(audited(&relay, |l| l["action"] == "files.rm"
        && l["reason"] == "not_owner"));

    // An admin of the organisation may, within its clearance; the owner may.
    let low_admin = token(&relay, "root", "low", "files,admin", None);
    refused(
        &relay.files(&low_admin, &["rm", &high.s("id")]),
        "clearance",
    );
    let admin = token(&relay, "root", "pc", "files,admin", None);
    ok(&relay.files(&admin, &["rm", &high.s("id")]));
    ok(&relay.files(&ann, &["rm", &plain.s("id")]));
    assert_eq!(listed(&relay, &ann), vec![viewing.s("id")]);
}

#[test]
fn already_have_answers_count_only_what_the_uploader_may_read() {
    let relay = Relay::start();
    acme(&relay);
    let tmp = tempfile::tempdir().unwrap();
    let data = noise(7, 8_000_000);
    let ann = token(&relay, "ann", "pc", "files", None);
    let first = put(
        &relay,
        &ann,
        &write(tmp.path(), "top.bin", &data),
        &["--classification", "3"],
    );
    ok(&first);
    let chunks = first.n("chunks");
    assert!(chunks >= 2);

    // A clearance-0 user putting a copy learns nothing: every chunk travels.
    let bob = token(&relay, "bob", "pc", "files", None);
    let copy = put(&relay, &bob, &write(tmp.path(), "copy.bin", &data), &[]);
    ok(&copy);
    assert_eq!(copy.n("chunks_sent"), chunks, "{}", copy.json);
    // One who may read the original sends nothing again.
    let root = token(&relay, "root", "pc", "files", None);
    let again = put(
        &relay,
        &root,
        &write(tmp.path(), "again.bin", &data),
        &["--classification", "3"],
    );
    ok(&again);
    assert_eq!(again.n("chunks_sent"), 0, "{}", again.json);
}

#[test]
fn an_admin_acts_only_within_its_own_clearance_and_room() {
    let relay = Relay::start();
    acme(&relay);
    // root holds clearance 3, but on a device of max clearance 0 its effective clearance is 0.
    let low = token(&relay, "root", "low", "admin", None);
    let deny = |a: &Answer, code: &str| {
        assert_eq!(a.status, 403, "{}", a.body);
        assert_eq!(a.error_code(), code, "{}", a.body);
    };
    deny(
        &api(
            &relay,
            "POST",
            "/api/admin/users",
            &low,
            Some(json!({"name": "eve", "clearance": 3})),
        ),
        "clearance",
    );
    deny(
        &api(
            &relay,
            "POST",
            "/api/admin/devices",
            &low,
            Some(json!({"id": "t2", "kind": "terminal", "max_clearance": 3})),
        ),
        "clearance",
    );
    deny(
        &api(
            &relay,
            "POST",
            "/api/admin/rooms",
            &low,
            Some(json!({"name": "vault", "classification": 3})),
        ),
        "clearance",
    );
    deny(
        &api(
            &relay,
            "PATCH",
            "/api/admin/users/bob",
            &low,
            Some(json!({"clearance": 3})),
        ),
        "clearance",
    );
    deny(
        &api(&relay, "DELETE", "/api/admin/users/ann", &low, None),
        "clearance",
    );
    deny(
        &api(&relay, "POST", "/api/admin/devices/pc/revoke", &low, None),
        "clearance",
    );
    // What it makes is made at its own level at most.
    let d = api(
        &relay,
        "POST",
        "/api/admin/devices",
        &low,
        Some(json!({"id": "t3", "kind": "terminal"})),
    );
    assert_eq!(d.status, 201, "{}", d.body);
    assert_eq!(d.json()["max_clearance"], 0, "{}", d.body);
    let u = api(
        &relay,
        "POST",
        "/api/admin/users",
        &low,
        Some(json!({"name": "fay", "clearance": 0})),
    );
    assert_eq!(u.status, 201, "{}", u.body);

    // Tokens: never above its clearance, and for another user audited with both names.
    let mint =
        |admin: &str, body: Value| api(&relay, "POST", "/api/admin/tokens", admin, Some(body));
    deny(
        &mint(
            &low,
            json!({"org": "acme", "user": "ann", "device": "pc", "clearance": 3}),
        ),
        "clearance",
    );
    let m = mint(&low, json!({"org": "acme", "user": "ann", "device": "pc"}));
    assert_eq!(m.status, 201, "{}", m.body);
    let minted = m.json()["token"].as_str().unwrap().to_string();
    let id = m.json()["id"].as_str().unwrap().to_string();
    deny(&relay.get("/api/rooms/secret", Some(&minted)), "clearance");
    assert!(audited(&relay, |l| l["action"] == "token.mint"
        && l["decision"] == "allow"
        && l["user"] == "root"
        && l["subject"] == "ann"
        && l["token"] == id.as_str()));
    // The same over the command line.
    let out = run(
        &[
            "admin",
            "user",
            "add",
            "--org",
            "acme",
            "gil",
            "--clearance",
            "2",
            "--server",
            &relay.url(""),
        ],
        &[("RELAY_TOKEN", &low)],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // A room-limited admin changes nothing organisation-wide and mints for its room only.
    let roomed = token(&relay, "root", "pc", "admin", Some("open"));
    deny(
        &api(
            &relay,
            "POST",
            "/api/admin/rooms",
            &roomed,
            Some(json!({"name": "side"})),
        ),
        "grant",
    );
    deny(
        &api(
            &relay,
            "POST",
            "/api/admin/users",
            &roomed,
            Some(json!({"name": "hal", "clearance": 0})),
        ),
        "grant",
    );
    deny(
        &mint(
            &roomed,
            json!({"org": "acme", "user": "ann", "device": "pc", "room": "secret"}),
        ),
        "grant",
    );
    deny(
        &mint(
            &roomed,
            json!({"org": "acme", "user": "ann", "device": "pc", "grants": ["admin"]}),
        ),
        "grant",
    );
    let m = mint(
        &roomed,
        json!({"org": "acme", "user": "cy", "device": "pc"}),
    );
    assert_eq!(m.status, 201, "{}", m.body);
    let scoped = m.json()["token"].as_str().unwrap().to_string();
    assert_eq!(relay.get("/api/rooms/open", Some(&scoped)).status, 200);
    deny(&relay.get("/api/rooms/secret", Some(&scoped)), "grant");
}

/// Polls `cond` every 50 ms for at most 5 s.
fn within(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn publishers(relay: &Relay, room: &str, token: &str) -> Vec<String> {
    let a = relay.get(&format!("/api/rooms/{room}"), Some(token));
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["publishers"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|p| p["user"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn people_are_removed_lowered_and_single_tokens_revoked_and_their_sessions_end() {
    let relay = Relay::start();
    acme(&relay);
    let admin = token(&relay, "root", "pc", "admin,subscribe", None);
    let watcher = token(&relay, "root", "pc", "subscribe", None);

    // A token revoked by its id stops at its next request, and its live session ends.
    let m = api(
        &relay,
        "POST",
        "/api/admin/tokens",
        &admin,
        Some(json!({"org": "acme", "user": "ann", "device": "pc"})),
    );
    assert_eq!(m.status, 201, "{}", m.body);
    let ann = m.json()["token"].as_str().unwrap().to_string();
    let ann_id = m.json()["id"].as_str().unwrap().to_string();
    let cy = token(&relay, "cy", "pc", "publish,subscribe", None);
    open(&relay, "/whip/open", &ann, WHIP_OFFER);
    open(&relay, "/whip/open", &cy, WHIP_OFFER);
    let mut both = publishers(&relay, "open", &watcher);
    both.sort();
    assert_eq!(both, vec!["ann", "cy"]);
    cli_ok(
        &relay,
        &["admin", "token", "revoke", "--org", "acme", &ann_id],
    );
    let a = relay.get("/api/info", Some(&ann));
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (401, "unauthorized"),
        "{}",
        a.body
    );
    assert!(
        within(|| publishers(&relay, "open", &watcher) == vec!["cy"]),
        "the revoked token's session did not end"
    );
    assert!(audited(&relay, |l| l["action"] == "session.end"
        && l["reason"] == "token_revoked"));

    // A lowered clearance holds from the next request and ends sessions it no longer allows.
    let cy_secret = open(&relay, "/whip/secret", &cy, WHIP_OFFER);
    assert!(cy_secret.starts_with("/whip/secret/"));
    let a = api(
        &relay,
        "PATCH",
        "/api/admin/users/cy",
        &admin,
        Some(json!({"clearance": 1})),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let denied = relay.get("/api/rooms/secret", Some(&cy));
    assert_eq!(
        (denied.status, denied.error_code().as_str()),
        (403, "clearance")
    );
    assert!(within(|| publishers(&relay, "secret", &watcher).is_empty()));
    assert_eq!(
        publishers(&relay, "open", &watcher),
        vec!["cy"],
        "room open still admits cy"
    );

    // A removed user's tokens stop, and stay stopped when the name is registered again.
    cli_ok(&relay, &["admin", "user", "remove", "--org", "acme", "cy"]);
    assert_eq!(relay.get("/api/info", Some(&cy)).status, 403);
    assert!(within(|| publishers(&relay, "open", &watcher).is_empty()));
    cli_ok(
        &relay,
        &[
            "admin",
            "user",
            "add",
            "--org",
            "acme",
            "cy",
            "--clearance",
            "1",
        ],
    );
    let old = relay.get("/api/info", Some(&cy));
    assert_eq!(
        (old.status, old.error_code().as_str()),
        (401, "unauthorized"),
        "{}",
        old.body
    );
    // Tokens carry their minting time in seconds, and those minted up to the second of the
    // removal stay refused: a new one comes from the next second on.
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = token(&relay, "cy", "pc", "publish", None);
    assert_eq!(relay.get("/api/info", Some(&fresh)).status, 200);

    // The same over the API, and the admin's own bounds hold there too.
    let r = api(&relay, "DELETE", "/api/admin/users/bob", &admin, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        api(&relay, "DELETE", "/api/admin/users/bob", &admin, None).status,
        404
    );
    let bob_token = relay.cli(&["token", "--org", "acme", "--user", "bob", "--device", "pc"]);
    assert_eq!(bob_token.status.code(), Some(3));
    let r = api(
        &relay,
        "POST",
        &format!("/api/admin/tokens/{}/revoke", "00ff"),
        &admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        api(
            &relay,
            "POST",
            "/api/admin/tokens/not-hex/revoke",
            &admin,
            None
        )
        .status,
        400
    );
    // Over the command line through the API.
    let out = run(
        &[
            "admin",
            "user",
            "set",
            "--org",
            "acme",
            "ann",
            "--clearance",
            "1",
            "--server",
            &relay.url(""),
        ],
        &[("RELAY_TOKEN", &admin)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn session_control_passes_the_checks_of_the_request_that_opened_it() {
    let relay = Relay::start();
    acme(&relay);
    let ann = token(&relay, "ann", "pc", "publish,subscribe", None);
    let whip = open(&relay, "/whip/secret", &ann, WHIP_OFFER);
    let whep = open(&relay, "/whep/secret", &ann, WHEP_OFFER);
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2122194687 127.0.0.1 50000 typ host\r\n";
    let trickle = "application/trickle-ice-sdpfrag";

    // The same user, with a token limited to another room, a token without the grant, or one
    // below the room's classification.
    let in_open = token(&relay, "ann", "pc", "publish,subscribe", Some("open"));
    let watch_only = token(&relay, "ann", "pc", "subscribe", None);
    let publish_only = token(&relay, "ann", "pc", "publish", None);
    let low = token(&relay, "ann", "low", "publish,subscribe", None);
    assert_eq!(sdp(&relay, "PATCH", &whip, &in_open, trickle, frag), 403);
    assert_eq!(sdp(&relay, "DELETE", &whip, &watch_only, "", ""), 403);
    assert_eq!(sdp(&relay, "DELETE", &whip, &low, "", ""), 403);
    let layout = format!("{whep}/layout");
    assert_eq!(
        sdp(
            &relay,
            "POST",
            &layout,
            &publish_only,
            "application/json",
            r#"{"layout":"grid"}"#
        ),
        403
    );
    assert_eq!(
        publishers(&relay, "secret", &ann),
        vec!["ann"],
        "the session is still there"
    );
    assert!(audited(&relay, |l| l["action"] == "whip.trickle"
        && l["reason"] == "room_scope"));
    assert!(audited(&relay, |l| l["action"] == "whip.end"
        && l["reason"] == "grant"));

    // The right tokens still work, and are audited.
    assert_eq!(
        sdp(&relay, "PATCH", &whip, &publish_only, trickle, frag),
        204
    );
    assert_eq!(
        sdp(
            &relay,
            "POST",
            &layout,
            &watch_only,
            "application/json",
            r#"{"layout":"grid"}"#
        ),
        204
    );
    assert_eq!(sdp(&relay, "DELETE", &whip, &publish_only, "", ""), 200);
    for action in ["whip.trickle", "whep.layout", "whip.end"] {
        assert!(
            audited(&relay, |l| l["action"] == action
                && l["decision"] == "allow"),
            "no allowed {action} in the audit log"
        );
    }
}

/// Chromium's WHEP offer with its video section repeated to `slots` m-lines.
fn offer_with_slots(slots: usize) -> String {
    let sections: Vec<&str> = WHEP_OFFER.split("m=").collect();
    let head = sections[0];
    let video = format!("m={}", sections[1]);
    let audio = format!("m={}", sections[3]);
    let mids: Vec<String> = (0..=slots).map(|i| i.to_string()).collect();
    let mut out = head.replace(
        "a=group:BUNDLE 0 1 2",
        &format!("a=group:BUNDLE {}", mids.join(" ")),
    );
    for i in 0..slots {
        out.push_str(&video.replace("a=mid:0", &format!("a=mid:{i}")));
    }
    out.push_str(&audio.replace("a=mid:2", &format!("a=mid:{slots}")));
    out
}

#[test]
fn an_offer_past_the_slot_cap_is_refused() {
    let relay = Relay::start();
    let t = relay.demo_token("subscribe");
    let fits = relay.post(
        "/whep/lobby",
        Some(&t),
        "application/sdp",
        &offer_with_slots(16),
    );
    assert_eq!(fits.status, 201, "{}", fits.body);
    let big = relay.post(
        "/whep/lobby",
        Some(&t),
        "application/sdp",
        &offer_with_slots(17),
    );
    assert_eq!(big.status, 400, "{}", big.body);
    assert_eq!(big.error_code(), "bad_sdp");
    assert!(big.body.len() < 1024, "{}", big.body);
    let huge = "v=0\r\n".to_string() + &"a=x\r\n".repeat(100_000);
    let a = relay.post("/whep/lobby", Some(&t), "application/sdp", &huge);
    assert_eq!(a.status, 413, "{}", a.body);
}

#[test]
fn everything_the_relay_writes_is_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut relay = Relay::start_in(&data, "", &[]);
    let t = relay.demo_token("files");
    let f = write(tmp.path(), "doc.bin", &noise(8, 600_000));
    ok(&put(&relay, &t, &f, &[]));
    // Let the audit writer catch up, so nothing is half-made; look while it runs (the
    // databases' write-ahead logs exist) and after it stopped.
    assert!(audited(&relay, |l| l["action"] == "files.put"));
    let private = |data: &std::path::Path| {
        let mut seen = 0;
        let mut stack = vec![data.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
            for e in std::fs::read_dir(&dir).unwrap() {
                // A temporary file may go between the listing and the look.
                let Ok(e) = e else { continue };
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(e.path());
                } else {
                    let mode = meta.permissions().mode() & 0o777;
                    assert_eq!(mode, 0o600, "{}", e.path().display());
                    seen += 1;
                }
            }
        }
        seen
    };
    let running = private(&data);
    assert!(running >= 9, "only {running} files were checked");
    relay.stop();
    // A clean stop folds the write-ahead logs back into the databases.
    let stopped = private(&data);
    assert!(stopped >= 7, "only {stopped} files were checked");
    assert!(!data.join("relay.db-wal").exists());
}

#[test]
fn all_use_is_logged_and_errors_do_not_echo_what_they_were_sent() {
    let relay = Relay::start();
    acme(&relay);
    let ann = token(&relay, "ann", "pc", "files,subscribe", None);
    assert_eq!(relay.get("/api/info", Some(&ann)).status, 200);
    listed(&relay, &ann);
    assert!(audited(&relay, |l| l["action"] == "info"
        && l["decision"] == "allow"));
    assert!(audited(&relay, |l| l["action"] == "files.ls"
        && l["decision"] == "allow"));

    // An organisation's admin learns of its own lines only.
    let admin = token(&relay, "root", "pc", "admin", None);
    let demo = relay.demo_token("subscribe");
    assert_eq!(relay.get("/api/info", Some(&demo)).status, 200);
    let v = api(&relay, "GET", "/api/admin/audit/verify", &admin, None);
    assert_eq!(v.status, 200, "{}", v.body);
    let lines = audit_lines(&relay);
    let acme_lines = lines.iter().filter(|l| l["org"] == "acme").count() as u64;
    let reported = v.json()["lines"].as_u64().unwrap();
    assert!(
        reported <= acme_lines && reported + 3 >= acme_lines,
        "{reported} of {acme_lines}"
    );
    assert!(
        (reported as usize) < lines.len(),
        "the appliance-wide count leaked"
    );
    assert!(audited(&relay, |l| l["action"] == "admin.audit.verify"
        && l["decision"] == "allow"));

    // A huge name is not echoed back whole.
    let name = "x".repeat(1 << 20);
    for (path, body) in [
        ("/api/admin/users", json!({"name": name, "clearance": 0})),
        ("/api/admin/rooms", json!({"name": name})),
    ] {
        let a = api(&relay, "POST", path, &admin, Some(body));
        assert_eq!(a.status, 400, "{path}");
        assert!(a.body.len() < 1024, "{path}: {} bytes", a.body.len());
    }
    // serde quotes a value of the wrong type in its reason: that is clipped too.
    let a = api(
        &relay,
        "POST",
        "/api/admin/users",
        &admin,
        Some(json!({"name": "z", "clearance": "9".repeat(1 << 20)})),
    );
    assert_eq!(a.status, 400);
    assert!(a.body.len() < 1024, "{} bytes", a.body.len());
    // serde quotes a value of the wrong type in its reason: that is clipped too.
    let a = api(
        &relay,
        "POST",
        "/api/admin/users",
        &admin,
        Some(json!({"name": "z", "clearance": "9".repeat(1 << 20)})),
    );
    assert_eq!(a.status, 400);
    assert!(a.body.len() < 1024, "{} bytes", a.body.len());
    let a = api(
        &relay,
        "PATCH",
        &format!("/api/admin/users/{}", "y".repeat(60_000)),
        &admin,
        Some(json!({"clearance": 0})),
    );
    assert!(a.body.len() < 1024, "{} bytes", a.body.len());
}

#[test]
fn expired_means_expired_and_errors_carry_no_addresses() {
    let relay = Relay::start();
    let t = relay.token(&[
        "--org",
        "demo",
        "--user",
        "demo",
        "--device",
        "demo-browser",
        "--ttl",
        "1s",
    ]);
    assert_eq!(relay.get("/api/info", Some(&t)).status, 200);
    // Past its expiry by more than the 1 s allowed for other nodes' clocks.
    std::thread::sleep(Duration::from_millis(2100));
    let a = relay.get("/api/info", Some(&t));
    assert_eq!((a.status, a.error_code().as_str()), (401, "unauthorized"));
    assert!(a.body.contains("expired"), "{}", a.body);

    let watcher = relay.demo_token("publish");
    for offer in ["v=0", "v=0\r\nm=video", "v=x\r\n"] {
        let a = relay.post("/whip/lobby", Some(&watcher), "application/sdp", offer);
        assert_eq!(
            (a.status, a.error_code().as_str()),
            (400, "bad_sdp"),
            "{}",
            a.body
        );
        assert!(!a.body.contains("0x"), "{offer:?}: {}", a.body);
    }
}

/// The claims inside a token (`v1.PAYLOAD.SIG`), as the page reads them.
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a token has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json claims")
}

#[test]
fn a_demo_guest_reaches_no_further_than_the_link_that_made_it() {
    let relay = Relay::start();
    let link = relay.token(&[
        "--org",
        "demo",
        "--user",
        "demo",
        "--device",
        "demo-browser",
        "--grants",
        "subscribe",
        "--clearance",
        "0",
        "--ttl",
        "10m",
    ]);
    let guest = relay.post(
        "/api/demo/guest",
        Some(&link),
        "application/json",
        r#"{"name": "Zed"}"#,
    );
    assert_eq!(guest.status, 201, "{}", guest.body);
    let g = guest.json();
    assert_eq!(g["user"], "zed");
    let c = claims_of(g["token"].as_str().unwrap());
    let l = claims_of(&link);
    assert_eq!(c["sub"], "zed");
    assert_eq!(c["grants"], serde_json::json!(["subscribe"]), "no publish");
    assert_eq!(c["clearance"], 0);
    assert!(c["exp"].as_u64() <= l["exp"].as_u64(), "{c} outlives {l}");
    // The name is taken now: the next Zed gets a suffix.
    let again = relay.post(
        "/api/demo/guest",
        Some(&link),
        "application/json",
        r#"{"name": "Zed"}"#,
    );
    assert_eq!(again.status, 201, "{}", again.body);
    assert!(again.json()["user"].as_str().unwrap().starts_with("zed-"));
    // Only the demo user's token may ask, and a name is a name.
    let bob = relay.participant("bob");
    let refused = relay.post("/api/demo/guest", Some(&bob), "application/json", "{}");
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (403, "grant")
    );
    let bad = relay.post(
        "/api/demo/guest",
        Some(&link),
        "application/json",
        r#"{"name": "../etc"}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
}
