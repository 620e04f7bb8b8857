//! The meeting page as people use it, in headless Chromium: every step goes through the page's
//! own controls (Join, Share screen, Message and Send, Dismiss, Leave), and the test reads back
//! what a person would see: named tiles that decode, the screen share on the large tile, chat
//! in order with the right sender, notices as alerts, refusals as sentences.
//!
//! Everything stays on 127.0.0.1. Screenshots of the grid and the screen layout are written to
//! `target/artefacts/`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use relay_tests::Relay;
use relay_tests::browser::{Browser, SETTLE, Window};
use serde_json::Value;

/// The pages of both tests would share two cores: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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

fn strings(v: Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The names on the page's tiles, sorted.
fn tiles(b: &Browser, w: &Window) -> Vec<String> {
    let mut t = strings(b.run(w, "return relay.tiles();"));
    t.sort();
    t
}

/// Each video slot the page decodes: (who it shows, source, frames, height).
fn shown(b: &Browser, w: &Window) -> Vec<(String, String, u64, u64)> {
    let v = b.run(
        w,
        "const st = await relay.stats('sub');
         const view = relay.state.view || {slots: []};
         return st.map((s) => {
           const x = view.slots.find((v) => v.mid === s.mid) || {};
           return [x.user || '', x.source || '', s.framesDecoded, s.frameHeight];
         });",
    );
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|s| !s[0].as_str().unwrap_or_default().is_empty())
        .map(|s| {
            (
                s[0].as_str().unwrap_or_default().to_string(),
                s[1].as_str().unwrap_or_default().to_string(),
                s[2].as_u64().unwrap_or(0),
                s[3].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits until every one of `who` is shown on `w` and decoding (new frames between two looks).
fn decodes(b: &Browser, w: &Window, who: &[&str], what: &str) -> Vec<(String, String, u64, u64)> {
    let mut before = shown(b, w);
    eventually(what, || {
        std::thread::sleep(Duration::from_millis(700));
        let now = shown(b, w);
        let grew = |name: &str| {
            let frames = |v: &[(String, String, u64, u64)]| {
                v.iter()
                    .filter(|s| s.0 == name)
                    .map(|s| s.2)
                    .max()
                    .unwrap_or(0)
            };
            frames(&now) > frames(&before)
        };
        let ok = who.iter().all(|n| grew(n));
        before = now.clone();
        ok.then_some(now)
    })
}

fn chat(b: &Browser, w: &Window) -> Vec<(String, String)> {
    let v = b.run(w, "return relay.chat();");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["from"].as_str().unwrap_or_default().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
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

fn artefact(name: &str, png: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artefacts");
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name} is no PNG");
    eprintln!("screenshot: {}", path.display());
}

#[test]
fn three_people_meet_with_names_a_screen_share_chat_and_notices() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let relay = Relay::start();
    // The start-up lines carry a link that opens the meeting for the demo user.
    let link = relay
        .log()
        .lines()
        .find_map(|l| {
            let at = l.find("open the meeting: ")?;
            let rest = &l[at + "open the meeting: ".len()..];
            Some(rest.split(['"', ' ', '\\']).next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no meeting link in the start-up lines:\n{}", relay.log()));
    assert!(
        link.starts_with(&relay.url("/#token=")) && link.ends_with("&room=lobby"),
        "{link}"
    );
    let bob = relay.participant("bob");
    let page = |t: &str| relay.url(&format!("/#token={t}&room=lobby"));

    // Two windows of the printed link are two people: each joins as a guest of its own name.
    let browser = Browser::start();
    let d = browser.open(&link);
    browser.resize(&d, 1280, 720);
    browser.type_into(&d, "Your name", "Dana");
    let c = browser.open(&link);
    browser.type_into(&c, "Your name", "carol");
    let b = browser.open(&page(&bob));
    for w in [&d, &b, &c] {
        join(&browser, w);
    }
    assert_eq!(browser.run(&d, "return relay.state.me;"), "dana");

    // Each sees the other two, named, decoding, and hears them; nobody sees themselves.
    for (w, me, others) in [
        (&d, "dana", ["bob", "carol"]),
        (&b, "bob", ["carol", "dana"]),
        (&c, "carol", ["bob", "dana"]),
    ] {
        decodes(
            &browser,
            w,
            &others,
            &format!("{me} sees the others decode"),
        );
        let names = eventually(&format!("{me}'s tiles are named"), || {
            let t = tiles(&browser, w);
            (t == others).then_some(t)
        });
        assert!(
            !names.iter().any(|n| n == me),
            "{me} sees itself: {names:?}"
        );
        let heard = browser.run(w, "return await relay.audioPackets();");
        std::thread::sleep(Duration::from_secs(1));
        let later = browser.run(w, "return await relay.audioPackets();");
        assert!(
            later.as_u64() > heard.as_u64(),
            "{me} hears no audio packets"
        );
    }
    // The relay's own account: no subscriber's slot is fed by its own participant.
    let room = relay.get("/api/rooms/lobby", Some(&bob)).json();
    let owner_of = |session: &str| {
        room["publishers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["session"].as_str() == Some(session)))
            .and_then(|p| p["user"].as_str())
            .map(str::to_string)
    };
    for s in room["subscribers"].as_array().expect("subscribers") {
        for slot in s["slots"].as_array().into_iter().flatten() {
            if let Some(p) = slot["publisher"].as_str() {
                assert_ne!(owner_of(p).as_deref(), s["user"].as_str(), "{room}");
            }
        }
    }
    artefact("meeting-grid.png", &browser.screenshot(&d));

    // Carol shares her screen: the others switch to the screen layout by themselves, the
    // share decodes at its own size on the large tile and the cameras become thumbnails at
    // the lowest layer.
    browser.click(&c, "Share screen");
    let screen_height = eventually("carol's screen is encoded", || {
        let v = browser.run(&c, "return await relay.stats('screen');");
        v.as_array()?
            .iter()
            .find(|s| s["framesEncoded"].as_u64() > Some(0))?["frameHeight"]
            .as_u64()
    });
    let camera_low = eventually("bob's lowest layer", || {
        let v = browser.run(&b, "return await relay.stats('pub');");
        let h: Vec<u64> = v
            .as_array()?
            .iter()
            .filter(|s| s["framesEncoded"].as_u64() > Some(0))
            .filter_map(|s| s["frameHeight"].as_u64())
            .collect();
        (h.len() == 3).then(|| h[0])
    });
    for (w, me, thumb) in [(&d, "dana", "bob"), (&b, "bob", "dana")] {
        eventually(&format!("{me} shows the screen share large"), || {
            let layout = browser.run(w, "return relay.state.shownLayout;");
            let first = strings(browser.run(w, "return relay.tiles();"));
            (layout == "screen" && first.first().map(String::as_str) == Some("carol (screen)"))
                .then_some(())
        });
        let s = decodes(
            &browser,
            w,
            &["carol", thumb],
            &format!("{me} decodes the share"),
        );
        eventually(&format!("{me}: share at its size, thumbnails low"), || {
            let s = shown(&browser, w);
            let screen = s.iter().find(|x| x.1 == "screen")?;
            let cam = s.iter().find(|x| x.0 == thumb && x.1 == "camera")?;
            (screen.3 == screen_height && cam.3 == camera_low).then_some(())
        });
        assert!(s.iter().any(|x| x.1 == "screen"));
    }
    artefact("meeting-screen.png", &browser.screenshot(&d));
    browser.click(&c, "Stop sharing");
    for (w, me) in [(&d, "dana"), (&b, "bob")] {
        eventually(&format!("{me} returns to the grid"), || {
            let layout = browser.run(w, "return relay.state.shownLayout;");
            (layout == "grid" && tiles(&browser, w).iter().all(|t| !t.contains("screen")))
                .then_some(())
        });
    }

    // Chat: typed and sent through the page, relayed to everyone in order, stamped with the
    // sender's name.
    browser.type_into(&d, "Message", "Hello from the lobby");
    browser.click(&d, "Send");
    browser.type_into(&b, "Message", "one");
    browser.click(&b, "Send");
    // From the keyboard alone: Enter in the message box sends.
    browser.type_into(&b, "Message", "two\u{E007}");
    let said = vec![
        ("dana".to_string(), "Hello from the lobby".to_string()),
        ("bob".to_string(), "one".to_string()),
        ("bob".to_string(), "two".to_string()),
    ];
    for (w, me) in [(&d, "dana"), (&b, "bob"), (&c, "carol")] {
        eventually(&format!("{me} reads the chat in order"), || {
            (chat(&browser, w) == said).then_some(())
        });
    }
    // A page cannot write as someone else: the relay stamps the token's subject. Nor can it
    // open a second chat channel (a fresh allowance of messages): the relay ignores it.
    browser.run(
        &c,
        "relay.state.chat.send(JSON.stringify({text: 'forged', from: 'bob'}));
         const extra = relay.state.sub.pc.createDataChannel('chat', {ordered: true});
         await new Promise((ok) => extra.addEventListener('open', ok));
         extra.send(JSON.stringify({text: 'second channel'}));",
    );
    // A late joiner is shown what was said.
    let dave = relay.participant("dave");
    let late = browser.open(&page(&dave));
    join(&browser, &late);
    eventually("the late joiner reads the earlier messages", || {
        (chat(&browser, &late) == said).then_some(())
    });
    assert!(
        chat(&browser, &d)
            .iter()
            .all(|(_, t)| t != "forged" && t != "second channel")
    );

    // The camera pauses and resumes in the same session: nothing is renegotiated.
    let before = browser.run(&c, "return relay.state.pub.location;");
    browser.click(&c, "Camera");
    assert_eq!(
        browser.run(
            &c,
            "return relay.state.pub.stream.getVideoTracks()[0].enabled;"
        ),
        false
    );
    browser.click(&c, "Camera");
    assert_eq!(
        browser.run(
            &c,
            "return [relay.state.pub.stream.getVideoTracks()[0].enabled, relay.state.pub.location,
                     relay.state.pub.pc.signalingState];"
        ),
        serde_json::json!([true, before, "stable"])
    );

    // A muted microphone is never the speaker (the others' fake microphones beep on).
    browser.click(&b, "Microphone");
    let bob_camera = eventually("bob's camera session", || {
        let info = relay.get("/api/rooms/lobby", Some(&bob)).json();
        info["publishers"].as_array()?.iter().find_map(|p| {
            (p["user"] == "bob" && p["source"] == "camera")
                .then(|| p["session"].as_str().map(str::to_string))?
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut speakers = Vec::new();
    for _ in 0..8 {
        let info = relay.get("/api/rooms/lobby", Some(&bob)).json();
        speakers.push(info["speaker"].as_str().unwrap_or_default().to_string());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        speakers.iter().all(|s| *s != bob_camera) && speakers.iter().any(|s| !s.is_empty()),
        "bob muted and still spoke: {speakers:?} (bob is {bob_camera})"
    );

    // An urgent notice reaches every page of the organisation, and none of another.
    for args in [
        vec!["admin", "org", "add", "other"],
        vec![
            "admin",
            "user",
            "add",
            "--org",
            "other",
            "olga",
            "--clearance",
            "1",
        ],
        vec!["admin", "device", "add", "--org", "other", "olga-pc"],
        vec!["admin", "room", "add", "--org", "other", "lobby"],
    ] {
        let out = relay.cli(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            relay_tests::stderr(&out)
        );
    }
    let olga = relay.token(&[
        "--org",
        "other",
        "--user",
        "olga",
        "--device",
        "olga-pc",
        "--grants",
        "subscribe",
    ]);
    let o = browser.open(&page(&olga));
    browser.click(&o, "Join");
    eventually("olga's page watches", || {
        browser
            .run(&o, "return relay.state.joined && !!relay.state.view;")
            .as_bool()
            .filter(|j| *j)
    });
    // Olga may not publish: the page says so and stays in the meeting.
    eventually("olga is told she watches only", || {
        let s = browser.run(&o, "return relay.status();");
        s.as_str()?
            .contains("Your token does not allow this.")
            .then_some(())
    });
    // A page open at the join form, in no meeting, hears notices too.
    let erin = relay.participant("erin");
    let idle = browser.open(&page(&erin));
    eventually("the idle page listens for notices", || {
        browser
            .run(&idle, "return relay.state.listening;")
            .as_bool()
            .filter(|l| *l)
    });
    let out = relay.cli(&[
        "admin",
        "notice",
        "send",
        "--org",
        "demo",
        "Fire drill at three",
    ]);
    assert!(out.status.success(), "{}", relay_tests::stderr(&out));
    for (w, me) in [
        (&d, "dana"),
        (&b, "bob"),
        (&c, "carol"),
        (&late, "dave"),
        (&idle, "erin, not joined"),
    ] {
        eventually(&format!("{me} shows the notice"), || {
            strings(browser.run(w, "return relay.notices();"))
                .iter()
                .any(|n| n.contains("Fire drill at three"))
                .then_some(())
        });
    }
    let admin = relay.token(&[
        "--org", "other", "--user", "olga", "--device", "olga-pc", "--grants", "admin",
    ]);
    let sent = relay.post(
        "/api/admin/notices",
        Some(&admin),
        "application/json",
        r#"{"text": "Only for other"}"#,
    );
    assert_eq!(sent.status, 201, "{}", sent.body);
    eventually("olga shows her organisation's notice", || {
        let n = strings(browser.run(&o, "return relay.notices();"));
        n.iter().any(|n| n.contains("Only for other")).then_some(n)
    });
    std::thread::sleep(Duration::from_secs(1));
    let listed = relay.get("/api/notices", Some(&bob)).json().to_string();
    assert!(
        listed.contains("Fire drill at three") && !listed.contains("Only for other"),
        "{listed}"
    );
    let hers = strings(browser.run(&o, "return relay.notices();"));
    assert!(hers.iter().all(|n| !n.contains("Fire drill")), "{hers:?}");
    let ours = strings(browser.run(&d, "return relay.notices();"));
    assert!(
        ours.iter().all(|n| !n.contains("Only for other")),
        "{ours:?}"
    );
    // Dismissed, the banner goes.
    browser.click(&d, "Dismiss");
    assert!(strings(browser.run(&d, "return relay.notices();")).is_empty());

    // A narrow window keeps every control in view, and the page tells the relay its smaller
    // tiles (a layout change with `max_height`, audited as `whep.layout`).
    let layouts = |relay: &Relay| {
        std::fs::read_to_string(relay.data.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"whep.layout\"") && l.contains("\"user\":\"dana\""))
            .count()
    };
    let told = layouts(&relay);
    browser.resize(&d, 420, 800);
    eventually("the page tells the relay its tile size", || {
        (layouts(&relay) > told).then_some(())
    });
    let fits = browser.run(
        &d,
        "return ['Send', 'Leave', 'Share screen', 'Camera', 'Microphone'].every((name) => {
           const b = [...document.querySelectorAll('button')].find((b) => b.textContent === name);
           const r = b.getBoundingClientRect();
           return r.width > 0 && r.left >= 0 && r.right <= innerWidth && r.bottom <= innerHeight;
         });",
    );
    artefact("meeting-narrow.png", &browser.screenshot(&d));
    assert_eq!(fits, true, "a control is out of view in a narrow window");

    // Leaving ends every session of the page.
    browser.click(&d, "Leave");
    eventually("dana's sessions end", || {
        let info = relay.get("/api/rooms/lobby", Some(&bob)).json();
        let users: Vec<&str> = ["publishers", "subscribers"]
            .iter()
            .flat_map(|k| info[k].as_array().into_iter().flatten())
            .filter_map(|s| s["user"].as_str())
            .collect();
        (!users.contains(&"dana")).then_some(())
    });
    // The audit log holds that messages were sent, never what they said.
    let audit = std::fs::read_to_string(relay.data.join("audit.log")).expect("audit log");
    let sends: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"chat.send\""))
        .collect();
    assert_eq!(sends.len(), 3, "{sends:?}");
    assert!(sends[0].contains("\"user\":\"dana\"") && sends[0].contains("\"bytes\":20"));
    assert!(!audit.contains("Hello from the lobby"));
    assert!(audit.contains("\"admin.notice.send\""));

    // Too long, and too fast: the relay answers the sender alone, in words.
    browser.run(
        &c,
        "relay.state.chat.send(JSON.stringify({text: 'x'.repeat(5000)}));",
    );
    eventually("carol is told the message is too long", || {
        (browser.run(&c, "return relay.status();") == "That message is too long.").then_some(())
    });
    browser.run(
        &c,
        "for (let i = 0; i < 14; i++) relay.state.chat.send(JSON.stringify({text: 'burst ' + i}));",
    );
    eventually("carol is told to slow down", || {
        let s = browser.run(&c, "return relay.status();");
        s.as_str()?
            .starts_with("You are sending messages too fast")
            .then_some(())
    });
    let bursts = || {
        chat(&browser, &b)
            .iter()
            .filter(|(from, t)| from == "carol" && t.starts_with("burst "))
            .count()
    };
    eventually("bob reads the burst the relay let through", || {
        (bursts() >= 10).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let through = bursts();
    assert!(through <= 11, "{through} of 14 got through at once");
    assert!(
        chat(&browser, &b).iter().all(|(_, t)| t.len() < 5000),
        "the long message was relayed"
    );
}

#[test]
fn a_full_room_reads_plainly() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().expect("temp dir");
    let relay = Relay::start_in(
        &tmp.path().join("data"),
        "[media]\nfirst_port = 0\nworkers = 1\nmax_sessions_per_room = 1\n",
        &[],
    );
    let ann = relay.participant("ann");
    let browser = Browser::start();
    let w = browser.open(&relay.url(&format!("/#token={ann}&room=lobby")));
    browser.click(&w, "Join");
    // Watching takes the room's one place; the camera finds it full.
    eventually("the room-full refusal", || {
        let s = browser.run(&w, "return relay.status();");
        (s == "You are watching only: The room is full.").then_some(())
    });
}

#[test]
fn a_secure_room_keeps_no_chat_and_refusals_read_plainly() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
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
        vec![
            "admin", "device", "add", "--org", "demo", "rec-1", "--kind", "recorder",
        ],
    ] {
        let out = relay.cli(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            relay_tests::stderr(&out)
        );
    }
    let alice = relay.participant("alice");
    let bob = relay.participant("bob");
    let carol = relay.participant("carol");
    let page = |t: &str, room: &str| relay.url(&format!("/#token={t}&room={room}"));
    let browser = Browser::start();
    let a = browser.open(&page(&alice, "vault"));
    let b = browser.open(&page(&bob, "vault"));
    join(&browser, &a);
    join(&browser, &b);
    browser.type_into(&a, "Message", "for the eyes in the room");
    browser.click(&a, "Send");
    eventually("bob reads it live", || {
        (chat(&browser, &b) == [("alice".into(), "for the eyes in the room".into())]).then_some(())
    });
    let c = browser.open(&page(&carol, "vault"));
    join(&browser, &c);
    // The channel is open (the view came on it); give any history the time it would take.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        chat(&browser, &c).is_empty(),
        "a late joiner of a secure room was shown earlier messages"
    );
    // (Windows close as they are done with: a browser holds only a few connections to one
    // server, and a page outside a meeting holds one open for notices.)
    for w in [&b, &c] {
        browser.close(w);
    }

    // A room's notices are for those cleared for the room.
    for path in ["/api/notices?room=ops", "/api/notices/live?room=ops"] {
        let a = relay.get(path, Some(&alice));
        assert_eq!(
            (a.status, a.error_code().as_str()),
            (403, "clearance"),
            "{path}"
        );
    }

    // Refusals, in words a person understands.
    refused(
        &browser,
        &page(&alice, "ops"),
        "Your clearance is too low for this room.",
    );
    let rec = relay.token(&[
        "--org",
        "demo",
        "--user",
        "bob",
        "--device",
        "rec-1",
        "--grants",
        "subscribe",
    ]);
    refused(&browser, &page(&rec, "vault"), "This room is secure");
    refused(&browser, &page(&alice, "nowhere"), "There is no such room.");
    let out = relay.cli(&["admin", "device", "add", "--org", "demo", "old-pc"]);
    assert!(out.status.success(), "{}", relay_tests::stderr(&out));
    let old = relay.token(&[
        "--org",
        "demo",
        "--user",
        "bob",
        "--device",
        "old-pc",
        "--grants",
        "subscribe",
    ]);
    let out = relay.cli(&["admin", "device", "revoke", "--org", "demo", "old-pc"]);
    assert!(out.status.success(), "{}", relay_tests::stderr(&out));
    refused(
        &browser,
        &page(&old, "lobby"),
        "This device is not registered",
    );
    refused(
        &browser,
        &page("v1.not-a-token", "lobby"),
        "Your token is missing, expired or not valid",
    );
}

/// Opens `url`, presses Join, waits for the page's refusal, which starts with `sentence`, and
/// closes the window.
fn refused(b: &Browser, url: &str, sentence: &str) {
    let w = b.open(url);
    b.click(&w, "Join");
    let deadline = Instant::now() + SETTLE;
    loop {
        let last = b.run(&w, "return relay.status();");
        if last.as_str().is_some_and(|s| s.starts_with(sentence)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refusal {sentence:?}: the page says {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    b.close(&w);
}
