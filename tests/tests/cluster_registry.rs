//! The registry's one contract, held against both of its homes: the appliance's SQLite file and
//! a PostgreSQL database shared by a cluster (a throwaway one, on loopback). Each check runs on a
//! fresh SQLite registry and on a fresh PostgreSQL database, and asks the same answers of both,
//! down to the words of the errors. Then what only a shared database has: a second node sees
//! the generation move, each node keeps its own audit head, nodes starting together migrate
//! once, and the client is at home inside a tokio runtime.
#![allow(clippy::unwrap_used)] // Tests stop at the first unexpected failure.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use relay::control::model::{CataloguedFile, DeviceKind};
use relay::control::postgres::PgRegistry;
use relay::control::registry::{Registry, RegistryError};
use relay::control::sqlite::SqliteRegistry;
use relay_kit::postgres::Postgres;

/// The error's words, or a panic saying what came instead.
fn err_text<T: std::fmt::Debug>(r: Result<T, RegistryError>) -> String {
    r.unwrap_err().to_string()
}

fn register_and_look_up(reg: &dyn Registry) {
    let org = reg.add_org("acme", Some(1 << 30)).unwrap();
    assert_eq!(org.quota_bytes, Some(1 << 30));
    assert_eq!(reg.org("acme").unwrap(), Some(org));
    assert_eq!(reg.add_org("open", None).unwrap().quota_bytes, None);
    assert_eq!(reg.org("open").unwrap().unwrap().quota_bytes, None);
    assert_eq!(reg.org("nobody").unwrap(), None);
    assert_eq!(
        err_text(reg.add_org("acme", None)),
        "organisation \"acme\" already exists"
    );

    let ann = reg.add_user("acme", "ann", 2).unwrap();
    assert_eq!(reg.user("acme", "ann").unwrap(), Some(ann));
    assert_eq!(reg.user("open", "ann").unwrap(), None);
    assert_eq!(
        err_text(reg.add_user("acme", "ann", 1)),
        "user \"ann\" in \"acme\" already exists"
    );
    // The same name in another organisation is another user.
    assert_eq!(reg.add_user("open", "ann", 0).unwrap().clearance, 0);

    let pc = reg
        .add_device("acme", "pc1", DeviceKind::Terminal, 3)
        .unwrap();
    assert_eq!(reg.device("acme", "pc1").unwrap(), Some(pc));
    reg.add_device("acme", "cam", DeviceKind::Recorder, 1)
        .unwrap();
    reg.add_device("acme", "web", DeviceKind::Browser, 0)
        .unwrap();
    let kinds: Vec<_> = ["pc1", "cam", "web"]
        .iter()
        .map(|d| reg.device("acme", d).unwrap().unwrap().kind)
        .collect();
    assert_eq!(
        kinds,
        [
            DeviceKind::Terminal,
            DeviceKind::Recorder,
            DeviceKind::Browser
        ]
    );
    assert_eq!(
        err_text(reg.add_device("acme", "pc1", DeviceKind::Browser, 0)),
        "device \"pc1\" in \"acme\" already exists"
    );
    reg.revoke_device("acme", "pc1").unwrap();
    assert!(reg.device("acme", "pc1").unwrap().unwrap().revoked);
    assert!(!reg.device("acme", "cam").unwrap().unwrap().revoked);
    assert_eq!(
        err_text(reg.revoke_device("acme", "nope")),
        "device \"nope\" in \"acme\" is not registered"
    );
    assert_eq!(reg.device("open", "pc1").unwrap(), None);

    let ops = reg.add_room("acme", "ops", 1, true).unwrap();
    assert_eq!(reg.room("acme", "ops").unwrap(), Some(ops));
    let hall = reg.add_room("acme", "hall", 0, false).unwrap();
    assert_eq!(reg.room("acme", "hall").unwrap(), Some(hall));
    assert_eq!(reg.room("open", "ops").unwrap(), None);
    assert_eq!(
        err_text(reg.add_room("acme", "ops", 0, false)),
        "room \"ops\" in \"acme\" already exists"
    );
}

fn rejects_bad_input(reg: &dyn Registry) {
    let missing = "organisation \"ghost\" is not registered";
    assert_eq!(err_text(reg.add_user("ghost", "ann", 1)), missing);
    assert_eq!(
        err_text(reg.add_device("ghost", "pc", DeviceKind::Browser, 1)),
        missing
    );
    assert_eq!(err_text(reg.add_room("ghost", "ops", 1, false)), missing);
    assert_eq!(err_text(reg.revoke_token("ghost", "ab", 1)), missing);
    assert_eq!(
        err_text(reg.add_notice("ghost", None, "hi", "ann", 1)),
        missing
    );

    reg.add_org("acme", None).unwrap();
    assert_eq!(
        err_text(reg.add_user("acme", "ann", 4)),
        "clearance must be 0 to 3, not 4"
    );
    assert_eq!(
        err_text(reg.add_device("acme", "pc", DeviceKind::Browser, 9)),
        "max clearance must be 0 to 3, not 9"
    );
    assert_eq!(
        err_text(reg.add_room("acme", "ops", 5, false)),
        "classification must be 0 to 3, not 5"
    );
    for bad in ["a/b", "", "..", ".hidden", "nul\0byte", &"x".repeat(65)] {
        assert!(
            matches!(reg.add_user("acme", bad, 1), Err(RegistryError::Invalid(_))),
            "{bad:?}"
        );
        assert!(
            matches!(reg.add_org(bad, None), Err(RegistryError::Invalid(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        err_text(reg.add_org("big", Some(u64::MAX))),
        "quota too large"
    );
    assert_eq!(reg.org("big").unwrap(), None);
    assert_eq!(
        err_text(reg.set_clearance("acme", "bob", 1)),
        "user \"bob\" in \"acme\" is not registered"
    );
    assert_eq!(
        err_text(reg.remove_user("acme", "bob", 1)),
        "user \"bob\" in \"acme\" is not registered"
    );
    assert!(matches!(
        reg.revoke_token("acme", "not-hex", 1),
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        reg.revoke_token("acme", "", 1),
        Err(RegistryError::Invalid(_))
    ));
    // Keys no name can hold are simply not there.
    assert_eq!(reg.org("a\0b").unwrap(), None);
    assert_eq!(reg.user("acme", "a\0b").unwrap(), None);
    assert_eq!(reg.device("acme", "a\0b").unwrap(), None);
    assert_eq!(reg.room("acme", "a\0b").unwrap(), None);
    assert!(!reg.token_revoked("acme", "a\0b", "ab", 1).unwrap());
    assert!(matches!(
        reg.set_clearance("acme", "a\0b", 1),
        Err(RegistryError::NotFound(_))
    ));
}

fn removal_revokes_older_tokens(reg: &dyn Registry) {
    reg.add_org("acme", None).unwrap();
    reg.add_user("acme", "ann", 2).unwrap();
    reg.add_user("acme", "bob", 1).unwrap();
    assert!(!reg.token_revoked("acme", "ann", "aa01", 90).unwrap());
    let gone = reg.remove_user("acme", "ann", 100).unwrap();
    assert_eq!((gone.name.as_str(), gone.clearance), ("ann", 2));
    assert_eq!(reg.user("acme", "ann").unwrap(), None);
    // Minted before or in the second of the removal: refused; after it: not.
    assert!(reg.token_revoked("acme", "ann", "aa01", 90).unwrap());
    assert!(reg.token_revoked("acme", "ann", "aa02", 100).unwrap());
    assert!(!reg.token_revoked("acme", "ann", "aa03", 101).unwrap());
    assert!(!reg.token_revoked("acme", "bob", "aa01", 90).unwrap());
    // Registered again: the old tokens stay refused.
    reg.add_user("acme", "ann", 0).unwrap();
    assert_eq!(reg.user("acme", "ann").unwrap().unwrap().clearance, 0);
    assert!(reg.token_revoked("acme", "ann", "aa01", 90).unwrap());
    assert!(!reg.token_revoked("acme", "ann", "aa04", 150).unwrap());
    // A second removal moves the line on.
    reg.remove_user("acme", "ann", 200).unwrap();
    assert!(reg.token_revoked("acme", "ann", "aa04", 150).unwrap());
    assert!(!reg.token_revoked("acme", "ann", "aa05", 201).unwrap());
    assert_eq!(
        err_text(reg.remove_user("acme", "ann", 300)),
        "user \"ann\" in \"acme\" is not registered"
    );
}

fn revoke_token_and_set_clearance(reg: &dyn Registry) {
    reg.add_org("acme", None).unwrap();
    reg.add_org("other", None).unwrap();
    reg.add_user("acme", "ann", 1).unwrap();
    reg.revoke_token("acme", "ab12", 50).unwrap();
    reg.revoke_token("acme", "ab12", 60).unwrap();
    assert!(reg.token_revoked("acme", "ann", "ab12", 10).unwrap());
    assert!(reg.token_revoked("acme", "ann", "ab12", 99).unwrap());
    assert!(!reg.token_revoked("acme", "ann", "ab13", 10).unwrap());
    assert!(!reg.token_revoked("other", "ann", "ab12", 10).unwrap());

    let ann = reg.set_clearance("acme", "ann", 3).unwrap();
    assert_eq!(ann.clearance, 3);
    assert_eq!(reg.user("acme", "ann").unwrap(), Some(ann));
    assert_eq!(
        err_text(reg.set_clearance("acme", "ann", 4)),
        "clearance must be 0 to 3, not 4"
    );
    assert_eq!(reg.user("acme", "ann").unwrap().unwrap().clearance, 3);
}

fn notices_are_kept_per_organisation(reg: &dyn Registry) {
    assert_eq!(reg.last_notice_id().unwrap(), 0);
    assert_eq!(reg.notices_after(0, 10).unwrap(), []);
    reg.add_org("acme", None).unwrap();
    reg.add_org("other", None).unwrap();
    reg.add_room("acme", "ops", 0, false).unwrap();
    let first = reg
        .add_notice("acme", None, "fire drill", "operator", 10)
        .unwrap();
    let second = reg
        .add_notice("acme", Some("ops"), "ops only\n\tsee you", "ann", 11)
        .unwrap();
    let theirs = reg
        .add_notice("other", None, "elsewhere", "bob", 12)
        .unwrap();
    assert!(first.id < second.id && second.id < theirs.id);
    assert_eq!(
        (second.room.as_deref(), second.from.as_str(), second.sent_at),
        (Some("ops"), "ann", 11)
    );
    assert_eq!(
        reg.notices("acme", 10).unwrap(),
        [first.clone(), second.clone()]
    );
    assert_eq!(
        reg.notices("acme", 1).unwrap(),
        std::slice::from_ref(&second)
    );
    assert_eq!(reg.notices("acme", 0).unwrap(), []);
    assert_eq!(reg.notices("acme", usize::MAX).unwrap().len(), 2);
    assert_eq!(reg.notices("nobody", 10).unwrap(), []);
    assert_eq!(reg.last_notice_id().unwrap(), theirs.id);
    assert_eq!(
        reg.notices_after(first.id, 10).unwrap(),
        [second.clone(), theirs.clone()]
    );
    assert_eq!(reg.notices_after(first.id, 1).unwrap(), [second]);
    assert_eq!(reg.notices_after(theirs.id, 10).unwrap(), []);
    assert_eq!(
        err_text(reg.add_notice("acme", Some("nowhere"), "x", "ann", 13)),
        "room \"nowhere\" in \"acme\" is not registered"
    );
    assert_eq!(
        err_text(reg.add_notice("acme", None, "  ", "ann", 13)),
        "a notice needs a text"
    );
    assert!(matches!(
        reg.add_notice("acme", None, "bell\u{7}", "ann", 13),
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        reg.add_notice("acme", None, &"x".repeat(2001), "ann", 13),
        Err(RegistryError::Invalid(_))
    ));
    assert_eq!(reg.last_notice_id().unwrap(), theirs.id);

    for i in 0..505 {
        reg.add_notice("acme", None, &format!("n{i}"), "ann", 20)
            .unwrap();
    }
    let kept = reg.notices("acme", 10_000).unwrap();
    assert_eq!(kept.len(), 500);
    assert_eq!(kept[0].text, "n5");
    assert_eq!(kept[499].text, "n504");
    assert!(kept.windows(2).all(|w| w[0].id < w[1].id));
    // Another organisation's notices are not pruned with these.
    assert_eq!(reg.notices("other", 10).unwrap(), [theirs]);
    assert_eq!(reg.last_notice_id().unwrap(), kept[499].id);
}

fn generation_and_audit_head(reg: &dyn Registry) {
    assert_eq!(reg.generation().unwrap(), 0);
    // Every change a standing or an admission is checked against moves it, and a notice (they go
    // out when it moves); the audit head does not.
    let changes: [(&str, &dyn Fn()); 10] = [
        ("org", &|| drop(reg.add_org("acme", None).unwrap())),
        ("user", &|| drop(reg.add_user("acme", "ann", 2).unwrap())),
        ("device", &|| {
            drop(
                reg.add_device("acme", "pc1", DeviceKind::Browser, 3)
                    .unwrap(),
            )
        }),
        ("room", &|| {
            drop(reg.add_room("acme", "ops", 1, false).unwrap())
        }),
        ("clearance", &|| {
            drop(reg.set_clearance("acme", "ann", 1).unwrap())
        }),
        ("token revoked", &|| {
            reg.revoke_token("acme", "ab12", 5).unwrap()
        }),
        ("device revoked", &|| {
            reg.revoke_device("acme", "pc1").unwrap()
        }),
        ("user removed", &|| {
            drop(reg.remove_user("acme", "ann", 6).unwrap())
        }),
        ("user again", &|| {
            drop(reg.add_user("acme", "ann", 0).unwrap())
        }),
        ("notice", &|| {
            drop(
                reg.add_notice("acme", None, "hello", "operator", 7)
                    .unwrap(),
            )
        }),
    ];
    for (what, change) in changes {
        let before = reg.generation().unwrap();
        change();
        assert!(reg.generation().unwrap() > before, "{what} did not move it");
    }
    let moved = reg.generation().unwrap();

    assert_eq!(reg.audit_head().unwrap(), None);
    reg.set_audit_head(7, "abc123").unwrap();
    assert_eq!(reg.audit_head().unwrap(), Some((7, "abc123".into())));
    reg.set_audit_head(9, "def456").unwrap();
    assert_eq!(reg.audit_head().unwrap(), Some((9, "def456".into())));
    assert_eq!(reg.generation().unwrap(), moved);
}

type Check = fn(&dyn Registry);

const CONTRACT: &[(&str, Check)] = &[
    ("register_and_look_up", register_and_look_up),
    ("rejects_bad_input", rejects_bad_input),
    ("removal_revokes_older_tokens", removal_revokes_older_tokens),
    (
        "revoke_token_and_set_clearance",
        revoke_token_and_set_clearance,
    ),
    (
        "notices_are_kept_per_organisation",
        notices_are_kept_per_organisation,
    ),
    ("generation_and_audit_head", generation_and_audit_head),
];

#[test]
fn one_contract_on_sqlite_and_postgres() {
    let pg = Postgres::start().unwrap();
    for (i, (name, check)) in CONTRACT.iter().enumerate() {
        eprintln!("{name} on SQLite");
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteRegistry::open_or_create(&dir.path().join("relay.db")).unwrap();
        check(&sqlite);

        eprintln!("{name} on PostgreSQL");
        let url = pg.create_database(&format!("contract{i}")).unwrap();
        let reg = PgRegistry::connect(&url, "node-a").unwrap();
        check(&reg);
    }

    eprintln!("a second node");
    second_node_sees_generation_and_keeps_its_own_audit_head(&pg);
    eprintln!("migrations");
    migrations_run_once(&pg);
    eprintln!("inside a runtime");
    works_inside_a_tokio_runtime(&pg);
    eprintln!("a lost connection");
    a_lost_connection_is_made_again(&pg);
}

fn second_node_sees_generation_and_keeps_its_own_audit_head(pg: &Postgres) {
    let url = pg.create_database("nodes").unwrap();
    let a = PgRegistry::connect(&url, "node-a").unwrap();
    let b = PgRegistry::connect(&url, "node-b").unwrap();
    assert_eq!(a.node(), "node-a");
    assert_eq!((a.generation().unwrap(), b.generation().unwrap()), (0, 0));

    // What one node registers, the other sees at once, and its generation moved with it.
    a.add_org("acme", None).unwrap();
    a.add_user("acme", "ann", 2).unwrap();
    let after_a = b.generation().unwrap();
    assert!(after_a > 0);
    assert_eq!(b.user("acme", "ann").unwrap().unwrap().clearance, 2);
    b.remove_user("acme", "ann", 100).unwrap();
    let after_b = a.generation().unwrap();
    assert!(after_b > after_a);
    assert!(a.token_revoked("acme", "ann", "aa", 99).unwrap());
    // An operator's own SQL moves it too, a TRUNCATE included.
    pg.sql("nodes", "TRUNCATE user_removals").unwrap();
    assert!(b.generation().unwrap() > after_b);
    assert!(!a.token_revoked("acme", "ann", "aa", 99).unwrap());
    let n = b.add_notice("acme", None, "from b", "operator", 5).unwrap();
    assert_eq!(a.last_notice_id().unwrap(), n.id);
    assert!(matches!(
        b.add_org("acme", None),
        Err(RegistryError::Exists(_))
    ));

    // Each node anchors its own audit chain.
    a.set_audit_head(3, "aaa").unwrap();
    assert_eq!(b.audit_head().unwrap(), None);
    b.set_audit_head(5, "bbb").unwrap();
    assert_eq!(a.audit_head().unwrap(), Some((3, "aaa".into())));
    assert_eq!(b.audit_head().unwrap(), Some((5, "bbb".into())));
    let both = vec![
        ("node-a".to_string(), 3, "aaa".to_string()),
        ("node-b".to_string(), 5, "bbb".to_string()),
    ];
    assert_eq!(a.audit_heads().unwrap(), both);
    assert_eq!(b.audit_heads().unwrap(), both);
    // A node reconnecting under its id finds its head again.
    drop(a);
    let a = PgRegistry::connect(&url, "node-a").unwrap();
    assert_eq!(a.audit_head().unwrap(), Some((3, "aaa".into())));
    assert!(matches!(
        PgRegistry::connect(&url, "bad/node"),
        Err(RegistryError::Invalid(_))
    ));

    // Where files are: a's file plane and file, as b is told of them; a is told of none.
    a.announce_file_plane("10.0.0.11:4433", b"a-cert").unwrap();
    let f1 = CataloguedFile {
        id: "f1".into(),
        org: "acme".into(),
        owner: "ann".into(),
        name: "minutes.pdf".into(),
        room: Some("hall".into()),
        size: 10,
        chunks: 1,
        classification: 2,
        view_only: true,
        created: 7,
        node: "set by the registry to its own node".into(),
    };
    a.place_file(&f1).unwrap();
    let home = b.file_node("acme", "f1").unwrap().unwrap();
    assert_eq!(
        (home.node.as_str(), home.addr.as_str(), home.cert.as_slice()),
        ("node-a", "10.0.0.11:4433", &b"a-cert"[..])
    );
    assert_eq!(
        a.file_node("acme", "f1").unwrap(),
        None,
        "a stores it itself"
    );
    assert_eq!(
        b.file_node("other", "f1").unwrap(),
        None,
        "another organisation's id"
    );
    // The catalogue lists it, with its node, to the other nodes.
    let listed = b.files_elsewhere("acme", 10).unwrap();
    let want = CataloguedFile {
        node: "node-a".into(),
        ..f1.clone()
    };
    assert_eq!(listed, [want]);
    assert!(a.files_elsewhere("acme", 10).unwrap().is_empty());
    assert!(b.files_elsewhere("other", 10).unwrap().is_empty());
    // A plane announced again (a new address) is what the others are told from then on.
    a.announce_file_plane("10.0.0.11:4434", b"a-cert-2")
        .unwrap();
    assert_eq!(
        b.file_node("acme", "f1").unwrap().unwrap().addr,
        "10.0.0.11:4434"
    );
    // A removed file leaves the catalogue.
    a.forget_file("acme", "f1").unwrap();
    assert_eq!(b.file_node("acme", "f1").unwrap(), None);
    assert!(b.files_elsewhere("acme", 10).unwrap().is_empty());
}

fn migrations_run_once(pg: &Postgres) {
    // Connecting again to a migrated database changes nothing and keeps the data.
    let url = pg.create_database("again").unwrap();
    PgRegistry::connect(&url, "n1")
        .unwrap()
        .add_org("acme", None)
        .unwrap();
    let again = PgRegistry::connect(&url, "n1").unwrap();
    assert!(again.org("acme").unwrap().is_some());
    assert_eq!(
        pg.sql("again", "SELECT count(*), max(version) FROM schema_version")
            .unwrap(),
        "3|3"
    );

    // Three nodes starting at once against an empty database all come up, and the schema is
    // made once.
    let url = pg.create_database("together").unwrap();
    let nodes: Vec<_> = (0..3)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || PgRegistry::connect(&url, &format!("n{i}")))
        })
        .collect();
    let nodes: Vec<PgRegistry> = nodes
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    nodes[0].add_org("acme", None).unwrap();
    assert!(nodes[2].org("acme").unwrap().is_some());
    assert_eq!(
        pg.sql("together", "SELECT count(*) FROM schema_version")
            .unwrap(),
        "3"
    );

    // A schema newer than this build knows is refused, not used.
    pg.sql("again", "INSERT INTO schema_version (version) VALUES (99)")
        .unwrap();
    let newer = PgRegistry::connect(&pg.url_of("again"), "n1");
    assert!(
        matches!(&newer, Err(RegistryError::Corrupt(m)) if m.contains("99")),
        "{newer:?}"
    );
}

fn works_inside_a_tokio_runtime(pg: &Postgres) {
    let url = pg.create_database("inside").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answer = rt.block_on(async move {
        // As the HTTP handlers ask it: synchronously, from a task on the runtime.
        tokio::spawn(async move {
            let reg = PgRegistry::connect(&url, "node-a").unwrap();
            reg.add_org("acme", None).unwrap();
            let org = reg.org("acme").unwrap();
            let generation = reg.generation().unwrap();
            drop(reg);
            (org.map(|o| o.name), generation)
        })
        .await
        .unwrap()
    });
    assert_eq!(answer, (Some("acme".to_string()), 1));
}

fn a_lost_connection_is_made_again(pg: &Postgres) {
    let url = pg.create_database("lost").unwrap();
    let reg = PgRegistry::connect(&url, "node-l").unwrap();
    reg.add_org("acme", None).unwrap();
    let killed = pg
        .sql(
            "lost",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'relay node-l'",
        )
        .unwrap();
    assert_eq!(killed, "1");
    // The call that finds the connection gone may fail; the next connects again.
    let first = reg.org("acme");
    let answer = match first {
        Ok(found) => found,
        Err(e) => {
            assert!(matches!(e, RegistryError::Postgres(_)), "{e}");
            reg.org("acme").unwrap()
        }
    };
    assert_eq!(answer.map(|o| o.name), Some("acme".to_string()));
}

#[test]
fn an_unreachable_database_is_a_clean_error() {
    // A port nothing listens on, a moment after it was free.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://relay:hunter2secret@127.0.0.1:{port}/relay?connect_timeout=3");
    let t = Instant::now();
    let err = PgRegistry::connect(&url, "node-a").unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(matches!(err, RegistryError::Postgres(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(!format!("{err:?}").contains("hunter2secret"));

    // A URL that does not parse is a usage error, and its password is not echoed either.
    let bad = "postgres://relay:hunter2secret@127.0.0.1:notaport/relay";
    let err = PgRegistry::connect(bad, "node-a").unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
    assert!(!err.to_string().contains("hunter2secret"), "{err}");
}
