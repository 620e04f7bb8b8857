//! The control plane's per-request path: token check, policy decision, and the full
//! authenticate (token + three registry lookups in SQLite) that every request pays.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use relay::control::audit::AuditLog;
use relay::control::model::DeviceKind;
use relay::control::policy::{self, RoomRole};
use relay::control::registry::Registry;
use relay::control::sqlite::SqliteRegistry;
use relay::control::token::{Claims, Grant, SigningKey};
use relay::control::{Control, unix_now};
use relay::metrics::Metrics;

fn claims() -> Claims {
    let now = unix_now();
    Claims {
        jti: "0123456789abcdef0123456789abcdef".into(),
        org: "acme".into(),
        sub: "ann".into(),
        device: "pc1".into(),
        clearance: 2,
        room: Some("ops".into()),
        grants: vec![Grant::Publish, Grant::Subscribe, Grant::Files],
        iat: now,
        nbf: now,
        exp: now + 3600,
    }
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes([7; 32]);
    let token = key.sign(&claims());
    let now = unix_now();
    c.bench_function("token_verify", |b| {
        b.iter(|| key.verify(black_box(&token), now, 1))
    });

    let dir = tempfile_dir();
    let db = dir.join("relay.db");
    let reg = SqliteRegistry::open_or_create(&db).expect("registry");
    reg.add_org("acme", None).expect("org");
    reg.add_user("acme", "ann", 3).expect("user");
    reg.add_device("acme", "pc1", DeviceKind::Browser, 3)
        .expect("device");
    let room = reg.add_room("acme", "ops", 2, true).expect("room");
    let org = reg.org("acme").expect("org").expect("org");
    let user = reg.user("acme", "ann").expect("user").expect("user");
    let device = reg.device("acme", "pc1").expect("device").expect("device");
    let cl = claims();
    c.bench_function("policy_principal_and_join", |b| {
        b.iter(|| {
            let p =
                policy::principal(&cl, Some(&org), Some(&user), Some(&device)).expect("principal");
            policy::may_join(&p, RoomRole::Subscribe, black_box(&room))
        })
    });

    let audit = AuditLog::open(&dir.join("audit.log"), &db).expect("audit");
    let control = Control::new(
        Box::new(reg),
        key,
        audit,
        Metrics::new(),
        Default::default(),
        relay::control::unix_now,
    );
    c.bench_function("authenticate_with_registry", |b| {
        b.iter(|| control.authenticate(Some(black_box(&token)), "bench", "bench"))
    });
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

criterion_group!(benches, bench);
criterion_main!(benches);
