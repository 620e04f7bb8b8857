//! WHIP and WHEP signalling against the real binary: what is accepted, and every way a request
//! is refused (bad SDP, no or forged token, low clearance, revoked device, a recorder or a
//! `record` grant in a secure room) with its status and code, audited, and nothing forwarded.
//!
//! The offers are real ones, captured from Chromium (only their loopback candidates kept), so a
//! refusal is the policy's and not the SDP parser's.

use std::fs;

use relay::control::token::{Claims, Grant, SigningKey};
use relay_tests::{Answer, Relay, stderr};

const WHIP_OFFER: &str = include_str!("../testdata/chromium-whip-offer.sdp");
const WHEP_OFFER: &str = include_str!("../testdata/chromium-whep-offer.sdp");

fn admin(relay: &Relay, args: &[&str]) {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    let out = relay.cli(&all);
    assert!(out.status.success(), "relay {all:?}: {}", stderr(&out));
}

fn token(relay: &Relay, user: &str, device: &str, grants: &str) -> String {
    relay.token(&[
        "--org", "demo", "--user", user, "--device", device, "--grants", grants,
    ])
}

fn offer(relay: &Relay, path: &str, token: Option<&str>, sdp: &str) -> Answer {
    relay.post(path, token, "application/sdp", sdp)
}

/// Path, token, offer, then the expected status, error code and denial reason counted.
type Case<'a> = (&'a str, Option<&'a str>, &'a str, u16, &'a str, &'a str);

fn denied(relay: &Relay, reason: &str) -> f64 {
    relay
        .metric(&format!("relay_auth_denied_total{{reason=\"{reason}\"}}"))
        .unwrap_or(0.0)
}

#[test]
fn whip_and_whep_sessions_open_trickle_and_end() {
    let relay = Relay::start();
    let alice = token(&relay, "demo", "demo-browser", "publish,subscribe");

    let a = offer(
        &relay,
        "/whip/lobby?source=camera",
        Some(&alice),
        WHIP_OFFER,
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("application/sdp"));
    assert!(a.body.starts_with("v=0"), "{}", a.body);
    assert!(a.body.contains("a=ice-lite"), "{}", a.body);
    let location = a.header("location").expect("Location").to_string();
    let session = location.rsplit('/').next().unwrap_or_default();
    assert!(location.starts_with("/whip/lobby/"), "{location}");
    assert_eq!(session.len(), 32, "128-bit session id: {location}");

    // The room shows the publisher and its three simulcast layers.
    let room = relay.get("/api/rooms/lobby", Some(&alice)).json();
    let p = &room["publishers"][0];
    assert_eq!(p["session"].as_str(), Some(session), "{room}");
    assert_eq!(p["source"].as_str(), Some("camera"), "{room}");
    assert_eq!(p["layers"].as_array().map(Vec::len), Some(3), "{room}");
    assert_eq!(relay.metric("relay_publishers"), Some(1.0));

    // Trickle and end: only the token's participant may touch the session.
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2122194687 127.0.0.1 50000 typ host\r\n";
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build();
    let agent: ureq::Agent = agent.into();
    let patch = |t: &str| {
        agent
            .patch(relay.url(&location))
            .header("authorization", format!("Bearer {t}"))
            .content_type("application/trickle-ice-sdpfrag")
            .send(frag)
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let delete = |t: &str| {
        agent
            .delete(relay.url(&location))
            .header("authorization", format!("Bearer {t}"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    relay.add_user("demo", "mallory", 1);
    let mallory = token(&relay, "mallory", "demo-browser", "publish,subscribe");
    assert_eq!(patch(&alice), 204);
    assert_eq!(patch(&mallory), 404);
    assert_eq!(delete(&mallory), 404);
    assert_eq!(delete(&alice), 200);
    assert_eq!(delete(&alice), 404);
    assert_eq!(relay.metric("relay_publishers"), Some(0.0));

    // A watcher's offer: its video m-lines become slots.
    let w = offer(
        &relay,
        "/whep/lobby?layout=grid",
        Some(&mallory),
        WHEP_OFFER,
    );
    assert_eq!(w.status, 201, "{}", w.body);
    let room = relay.get("/api/rooms/lobby", Some(&mallory)).json();
    let slots = room["subscribers"][0]["slots"].as_array().map(Vec::len);
    assert_eq!(slots, Some(2), "{room}");
    assert_eq!(room["subscribers"][0]["layout"].as_str(), Some("grid"));
}

#[test]
fn refused_offers_get_their_status_and_code_are_audited_and_forward_nothing() {
    let mut relay = Relay::start();
    admin(
        &relay,
        &[
            "room",
            "add",
            "--org",
            "demo",
            "secret",
            "--classification",
            "2",
        ],
    );
    admin(
        &relay,
        &["room", "add", "--org", "demo", "board", "--secure-view"],
    );
    admin(
        &relay,
        &[
            "device",
            "add",
            "--org",
            "demo",
            "recorder-1",
            "--kind",
            "recorder",
            "--max-clearance",
            "1",
        ],
    );
    admin(
        &relay,
        &[
            "device",
            "add",
            "--org",
            "demo",
            "laptop",
            "--kind",
            "browser",
            "--max-clearance",
            "1",
        ],
    );
    let viewer = token(&relay, "demo", "demo-browser", "publish,subscribe");
    let recorder = token(&relay, "demo", "recorder-1", "subscribe");
    let with_record = token(&relay, "demo", "demo-browser", "subscribe,record");
    let publish_only = token(&relay, "demo", "demo-browser", "publish");
    let laptop = token(&relay, "demo", "laptop", "publish,subscribe");
    let key: [u8; 32] = fs::read(relay.data.join("token.key"))
        .expect("token key")
        .try_into()
        .expect("32-byte key");
    let now = relay::control::unix_now();
    let claims = Claims {
        jti: "forged".into(),
        org: "demo".into(),
        sub: "demo".into(),
        device: "demo-browser".into(),
        clearance: 1,
        room: None,
        grants: vec![Grant::Publish, Grant::Subscribe],
        iat: now,
        nbf: now - 10,
        exp: now + 600,
    };
    let forged = SigningKey::from_bytes([7; 32]).sign(&claims);
    assert_ne!(SigningKey::from_bytes(key).sign(&claims), forged);
    // Revoked after minting: refused from the next request on.
    admin(&relay, &["device", "revoke", "--org", "demo", "laptop"]);

    let truncated = &WHIP_OFFER[..WHIP_OFFER.len() / 3];
    let cases: [Case<'_>; 10] = [
        (
            "/whip/lobby?source=camera",
            Some(&viewer),
            "hello",
            400,
            "bad_sdp",
            "",
        ),
        (
            "/whip/lobby?source=camera",
            Some(&viewer),
            truncated,
            400,
            "bad_sdp",
            "",
        ),
        (
            "/whip/lobby?source=camera",
            None,
            WHIP_OFFER,
            401,
            "unauthorized",
            "token_missing",
        ),
        (
            "/whip/lobby?source=camera",
            Some(&forged),
            WHIP_OFFER,
            401,
            "unauthorized",
            "token_signature",
        ),
        (
            "/whep/lobby?layout=grid",
            Some(&publish_only),
            WHEP_OFFER,
            403,
            "grant",
            "grant",
        ),
        (
            "/whip/secret?source=camera",
            Some(&viewer),
            WHIP_OFFER,
            403,
            "clearance",
            "clearance",
        ),
        (
            "/whep/secret?layout=grid",
            Some(&viewer),
            WHEP_OFFER,
            403,
            "clearance",
            "clearance",
        ),
        (
            "/whip/lobby?source=camera",
            Some(&laptop),
            WHIP_OFFER,
            403,
            "device",
            "device_revoked",
        ),
        (
            "/whep/board?layout=grid",
            Some(&recorder),
            WHEP_OFFER,
            403,
            "secure_view",
            "secure_view",
        ),
        (
            "/whep/board?layout=grid",
            Some(&with_record),
            WHEP_OFFER,
            403,
            "secure_view",
            "secure_view",
        ),
    ];
    for (path, t, sdp, status, code, reason) in cases {
        let before = denied(&relay, reason);
        let a = offer(&relay, path, t, sdp);
        assert_eq!(
            (a.status, a.error_code().as_str()),
            (status, code),
            "{path} ({reason}): {}",
            a.body
        );
        assert!(a.header("location").is_none());
        if !reason.is_empty() {
            assert_eq!(denied(&relay, reason), before + 1.0, "{reason} counted");
        }
    }

    // A plain browser may watch the secure room: viewing is allowed, recording is not.
    let ok = offer(&relay, "/whep/board?layout=grid", Some(&viewer), WHEP_OFFER);
    assert_eq!(ok.status, 201, "{}", ok.body);

    // Nothing of the refused offers reached the media plane.
    assert_eq!(relay.metric("relay_publishers"), Some(0.0));
    assert_eq!(relay.metric("relay_subscribers"), Some(1.0));
    assert_eq!(
        relay.metric("relay_media_packets_forwarded_total"),
        Some(0.0)
    );
    for room in ["lobby", "secret"] {
        let info = relay.get(&format!("/api/rooms/{room}"), Some(&viewer));
        if info.status == 200 {
            let info = info.json();
            assert_eq!(
                info["publishers"].as_array().map(Vec::len),
                Some(0),
                "{info}"
            );
            assert_eq!(
                info["subscribers"].as_array().map(Vec::len),
                Some(0),
                "{info}"
            );
        }
    }

    relay.stop();
    let audit = fs::read_to_string(relay.data.join("audit.log")).expect("audit log");
    for reason in [
        "token_missing",
        "token_signature",
        "grant",
        "clearance",
        "device_revoked",
        "secure_view",
    ] {
        assert!(
            audit.contains(&format!("\"reason\":\"{reason}\"")),
            "{reason} not audited:\n{audit}"
        );
    }
}
