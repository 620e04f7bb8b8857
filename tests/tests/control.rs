//! The control plane end to end: the real binary, its data directory, HTTP on loopback.
#![allow(clippy::unwrap_used)] // Tests stop at the first unexpected failure.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use relay::control::token::{Claims, Grant, SigningKey};
use relay_tests::{Relay, run, stderr};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn fresh_start_serves_health_readiness_metrics_and_stops_on_sigterm() {
    let mut relay = Relay::start();
    for part in ["relay.db", "token.key", "tls.crt", "tls.key"] {
        assert!(
            relay.data.join(part).exists(),
            "{part} created on first start"
        );
    }
    assert_eq!(relay.get("/healthz", None).status, 200);
    assert_eq!(relay.get("/readyz", None).status, 200);
    let metrics = relay.get("/metrics", None).body;
    for name in [
        "relay_build_info",
        "relay_auth_denied_total",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // The start-up lines say how to get a token, and that command works.
    assert!(
        relay.log().contains("relay token --data"),
        "{}",
        relay.log()
    );
    let token = relay.demo_token("publish,subscribe");
    let info = relay.get("/api/info", Some(&token));
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.json()["cert_sha256"].as_str().map(str::len), Some(64));
    let status = relay.stop();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn unknown_routes_and_bad_bodies_get_json_errors() {
    let relay = Relay::start();
    let admin = relay.demo_token("admin");
    let a = relay.get("/nope", None);
    assert_eq!((a.status, a.error_code().as_str()), (404, "not_found"));
    let a = relay.post(
        "/api/admin/users",
        Some(&admin),
        "application/json",
        "{not json",
    );
    assert_eq!((a.status, a.error_code().as_str()), (400, "bad_request"));
    let a = relay.post(
        "/api/admin/users",
        Some(&admin),
        "application/json",
        r#"{"name":"x","clearance":9}"#,
    );
    assert_eq!(
        (a.status, a.error_code().as_str()),
        (400, "bad_request"),
        "{}",
        a.body
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(device: &str, exp: u64) -> Claims {
    Claims {
        jti: "t".into(),
        org: "demo".into(),
        sub: "demo".into(),
        device: device.into(),
        clearance: 1,
        room: None,
        grants: vec![Grant::Admin],
        iat: now(),
        nbf: now() - 10,
        exp,
    }
}

#[test]
fn every_bad_token_is_refused_with_its_code_counted_and_audited() {
    let mut relay = Relay::start();
    let key: [u8; 32] = fs::read(relay.data.join("token.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let key = SigningKey::from_bytes(key);
    let forged = SigningKey::from_bytes([9; 32]).sign(&claims("demo-browser", now() + 600));
    let expired = key.sign(&claims("demo-browser", now() - 3600));
    let unknown_device = key.sign(&claims("stolen-laptop", now() + 600));
    let no_grant = relay.demo_token("publish");

    let cases: [(Option<&str>, u16, &str, &str); 6] = [
        (None, 401, "unauthorized", "token_missing"),
        (Some("v1.garbage"), 401, "unauthorized", "token_malformed"),
        (Some(&forged), 401, "unauthorized", "token_signature"),
        (Some(&expired), 401, "unauthorized", "token_expired"),
        (Some(&unknown_device), 403, "device", "device_unknown"),
        (Some(&no_grant), 403, "grant", "grant"),
    ];
    for (token, status, code, reason) in cases {
        let before = relay
            .metric(&format!("relay_auth_denied_total{{reason=\"{reason}\"}}"))
            .unwrap();
        let a = relay.post(
            "/api/admin/users",
            token,
            "application/json",
            r#"{"name":"eve","clearance":3}"#,
        );
        assert_eq!(
            (a.status, a.error_code().as_str()),
            (status, code),
            "{reason}: {}",
            a.body
        );
        assert!(!a.json()["message"].as_str().unwrap().is_empty());
        let after = relay
            .metric(&format!("relay_auth_denied_total{{reason=\"{reason}\"}}"))
            .unwrap();
        assert_eq!(after, before + 1.0, "{reason} counted");
    }
    // Revocation holds from the next request on.
    let admin = relay.demo_token("admin");
    assert_eq!(relay.get("/api/info", Some(&admin)).status, 200);
    let out = relay.cli(&["admin", "device", "revoke", "--org", "demo", "demo-browser"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let a = relay.get("/api/info", Some(&admin));
    assert_eq!((a.status, a.error_code().as_str()), (403, "device"));
    assert_eq!(
        relay.metric("relay_auth_denied_total{reason=\"device_revoked\"}"),
        Some(1.0)
    );

    // Nothing of the refused requests changed the registry, and each is in the audit log.
    relay.stop();
    let audit = fs::read_to_string(relay_data_audit(&relay)).unwrap();
    for reason in [
        "token_missing",
        "token_malformed",
        "token_signature",
        "token_expired",
        "device_unknown",
        "grant",
        "device_revoked",
    ] {
        assert!(
            audit.contains(&format!("\"reason\":\"{reason}\"")),
            "{reason} not audited:\n{audit}"
        );
    }
    assert!(!audit.contains("\"action\":\"admin.user.add\",\"decision\":\"allow\""));
}

fn relay_data_audit(relay: &Relay) -> std::path::PathBuf {
    relay.data.join("audit.log")
}

#[test]
fn admin_commands_work_on_the_data_directory_and_over_http() {
    let relay = Relay::start();
    let ok = |args: &[&str]| {
        let out = relay.cli(args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    };
    ok(&["admin", "org", "add", "acme", "--quota-bytes", "1000000"]);
    ok(&[
        "admin",
        "user",
        "add",
        "--org",
        "acme",
        "ann",
        "--clearance",
        "2",
    ]);
    ok(&[
        "admin",
        "device",
        "add",
        "--org",
        "acme",
        "pc1",
        "--kind",
        "terminal",
        "--max-clearance",
        "3",
    ]);
    ok(&[
        "admin",
        "room",
        "add",
        "--org",
        "acme",
        "ops",
        "--classification",
        "2",
        "--secure-view",
    ]);
    // Usage errors exit 2, runtime failures 1, denials 3.
    assert_eq!(
        code(&relay.cli(&[
            "admin",
            "user",
            "add",
            "--org",
            "acme",
            "bob",
            "--clearance",
            "7"
        ])),
        2
    );
    assert_eq!(
        code(&relay.cli(&[
            "admin",
            "user",
            "add",
            "--org",
            "ghost",
            "bob",
            "--clearance",
            "1"
        ])),
        2
    );
    assert_eq!(code(&relay.cli(&["admin", "org", "add", "acme"])), 1);
    let over = relay.cli(&[
        "token",
        "--org",
        "acme",
        "--user",
        "ann",
        "--device",
        "pc1",
        "--clearance",
        "3",
    ]);
    assert_eq!(
        code(&over),
        3,
        "minting above the registry is refused: {}",
        stderr(&over)
    );
    assert!(stderr(&over).contains("clearance"));

    // An acme admin works over the API, on acme only.
    ok(&[
        "admin",
        "user",
        "add",
        "--org",
        "acme",
        "root",
        "--clearance",
        "2",
    ]);
    let admin = relay.token(&[
        "--org", "acme", "--user", "root", "--device", "pc1", "--grants", "admin",
    ]);
    let server = relay.url("");
    let remote = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--server", &server]);
        run(&all, &[("RELAY_TOKEN", &admin)])
    };
    let out = remote(&[
        "admin",
        "user",
        "add",
        "--org",
        "acme",
        "cid",
        "--clearance",
        "1",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = remote(&[
        "admin", "device", "add", "--org", "acme", "cam1", "--kind", "recorder",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = remote(&[
        "token", "--org", "acme", "--user", "cid", "--device", "cam1", "--room", "ops",
    ]);
    assert_eq!(
        code(&out),
        3,
        "cid's clearance 1 is below room ops (2): {}",
        stderr(&out)
    );
    let out = remote(&[
        "token", "--org", "acme", "--user", "cid", "--device", "cam1", "--grants", "files",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let minted = String::from_utf8(out.stdout).unwrap();
    assert!(minted.trim().starts_with("v1."));
    assert_eq!(
        code(&remote(&[
            "admin",
            "user",
            "add",
            "--org",
            "demo",
            "x",
            "--clearance",
            "1"
        ])),
        3
    );
    assert_eq!(
        code(&remote(&[
            "token",
            "--org",
            "demo",
            "--user",
            "demo",
            "--device",
            "demo-browser"
        ])),
        3
    );
    let out = remote(&["admin", "device", "revoke", "--org", "acme", "cam1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(relay.get("/api/info", Some(minted.trim())).status, 403);
    let out = remote(&["admin", "audit", "verify"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn a_tampered_audit_line_is_named() {
    let mut relay = Relay::start();
    for name in ["u1", "u2", "u3", "u4"] {
        relay.add_user("demo", name, 1);
    }
    let ok = relay.cli(&["admin", "audit", "verify"]);
    assert_eq!(code(&ok), 0, "{}", stderr(&ok));
    relay.stop();
    let path = relay_data_audit(&relay);
    let text = fs::read_to_string(&path).unwrap();
    // The start-up link's demo token, then the four users.
    assert_eq!(text.lines().count(), 5);
    assert!(text.lines().next().unwrap().contains("\"token.mint\""));
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 2 {
                l.replace("user:u2", "user:u9")
            } else {
                l.to_string()
            }
        })
        .collect();
    fs::write(&path, tampered.join("\n") + "\n").unwrap();
    let out = run(
        &[
            "admin",
            "audit",
            "verify",
            "--data",
            relay.data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (text, key) in [
        (
            "[http]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
            "http.bogus",
        ),
        ("[http]\nlisten = \"not an address\"\n", "http.listen"),
        (
            "[tokens]\ndefault_ttl = \"forever\"\n",
            "tokens.default_ttl",
        ),
    ] {
        let path = tmp.path().join("bad.toml");
        fs::write(&path, text).unwrap();
        let out = run(
            &[
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--data",
                tmp.path().join("d").to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code(&out), 2, "{text}");
        assert!(stderr(&out).contains(key), "{key}: {}", stderr(&out));
    }
    assert!(
        !tmp.path().join("d").exists(),
        "a refused configuration creates no state"
    );
}

#[test]
fn damaged_state_is_an_error_never_a_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut relay = Relay::start_in(&data, "", &[]);
    assert_eq!(relay.stop().code(), Some(0));

    let db = data.join("relay.db");
    let saved = fs::read(&db).unwrap();
    fs::write(&db, vec![0x33; 8192]).unwrap();
    let log =
        Relay::try_start_in(&data, "", &[]).expect_err("a corrupt database must stop the start");
    assert!(log.contains("corrupt"), "{log}");
    assert_eq!(
        fs::read(&db).unwrap(),
        vec![0x33; 8192],
        "the damaged file is left for inspection"
    );

    fs::write(&db, saved).unwrap();
    fs::remove_file(data.join("token.key")).unwrap();
    let log = Relay::try_start_in(&data, "", &[]).expect_err("a missing key must stop the start");
    assert!(
        log.contains("token.key") && log.contains("missing"),
        "{log}"
    );
}

#[test]
fn tells_systemd_when_ready() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut relay = Relay::start_in(
        &tmp.path().join("data"),
        "",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "600000"),
        ],
    );
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(relay.get("/readyz", None).status, 200);
    assert_eq!(relay.stop().code(), Some(0));
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn systemd_unit_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed; skipping the unit check");
        return;
    };
    assert!(out.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/relay.service"
    ))
    .unwrap();
    // Point ExecStart at this build so verify can check the binary exists.
    let unit = unit.replace(
        "/usr/local/bin/relay",
        relay_tests::relay_bin().to_str().unwrap(),
    );
    let path = tmp.path().join("relay.service");
    fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "warnings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
