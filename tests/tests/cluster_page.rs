//! The meeting page on a cluster of three relays, in headless Chromium: a page opened on a node
//! that is not the room's home moves to the home and meets there; when the home is killed, the
//! pages find the room's new home through the other nodes and meet again, by themselves.
//!
//! PostgreSQL and Redis are started by the test (Debian's packages); everything stays on
//! 127.0.0.1.
#![allow(clippy::unwrap_used)] // Tests stop at the first unexpected failure.

use std::time::{Duration, Instant};

use relay_kit::cluster::{Engines, Node};
use relay_tests::browser::{Browser, SETTLE, Window, slots};
use relay_tests::relay_bin;

const LEASE: Duration = Duration::from_secs(2);

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

fn cli(node: &Node, args: &[&str]) -> String {
    node.cli(&relay_bin(), args)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The page's origin; `None` while it is moving to another node.
fn origin(b: &Browser, w: &Window) -> Option<String> {
    let v = b.try_run(w, "return location.origin;").ok()?;
    v.as_str().map(str::to_string)
}

/// Waits until the page at `w` is joined on the node at `url` and decodes the other person.
fn meets_on(b: &Browser, w: &Window, url: &str, what: &str) {
    eventually(what, || {
        if origin(b, w)? != url {
            return None;
        }
        let joined = b
            .try_run(w, "return relay.state.joined && !!relay.state.pub;")
            .ok()?;
        joined.as_bool().filter(|j| *j)?;
        let before: u64 = slots(b, w).iter().map(|s| s.frames).sum();
        std::thread::sleep(Duration::from_millis(700));
        let after: u64 = slots(b, w).iter().map(|s| s.frames).sum();
        (after > before).then_some(())
    });
}

#[test]
fn the_page_meets_on_the_rooms_home_and_follows_it_when_the_home_dies() {
    let dir = tempfile::tempdir().unwrap();
    let engines = Engines::start(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let [mut a, b, c] = ["a", "b", "c"].map(|id| {
        engines
            .node(&relay_bin(), id, LEASE, 100)
            .unwrap_or_else(|e| panic!("{e}"))
    });
    cli(&a, &["admin", "org", "add", "acme"]);
    cli(
        &a,
        &[
            "admin",
            "device",
            "add",
            "--org",
            "acme",
            "cam",
            "--max-clearance",
            "1",
        ],
    );
    cli(&a, &["admin", "room", "add", "--org", "acme", "hall"]);
    let token = |user: &str| {
        cli(
            &b,
            &[
                "admin",
                "user",
                "add",
                "--org",
                "acme",
                user,
                "--clearance",
                "1",
            ],
        );
        cli(
            &b,
            &[
                "token",
                "--org",
                "acme",
                "--user",
                user,
                "--device",
                "cam",
                "--grants",
                "publish,subscribe",
            ],
        )
    };
    let (ann, bob) = (token("ann"), token("bob"));

    // Opened on c and on b, both pages move to the room's home (the idle node first by id: a).
    let browser = Browser::start();
    let w1 = browser.open(&format!("{}/#token={ann}&room=hall", c.url()));
    browser.click(&w1, "Join");
    let w2 = browser.open(&format!("{}/#token={bob}&room=hall", b.url()));
    browser.click(&w2, "Join");
    meets_on(&browser, &w1, &a.url(), "ann meets bob on a");
    meets_on(&browser, &w2, &a.url(), "bob meets ann on a");

    // The home dies. Its leases run out, the room is homed on a live node, and both pages,
    // asking the nodes they know, meet there again.
    a.process.daemon.kill();
    let moved = eventually("ann's page leaves the dead node", || {
        let o = origin(&browser, &w1)?;
        (o == b.url() || o == c.url()).then_some(o)
    });
    meets_on(&browser, &w1, &moved, "ann meets bob again");
    meets_on(&browser, &w2, &moved, "bob meets ann again");
}
