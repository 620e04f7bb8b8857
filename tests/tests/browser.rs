//! The media plane with a real browser: headless Chromium (fake camera and microphone) publishes
//! through the relay's own web page over WHIP, another window of it watches over WHEP, and the
//! test reads `getStats()` in both to see frames decode at the layer each layout calls for.
//!
//! Everything stays on 127.0.0.1: the relay's HTTP and media ports and chromedriver.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use relay_tests::Relay;
use relay_tests::browser::{Browser, SETTLE, layer_heights, slot, slots, wait_for};
use serde_json::Value;

/// The session id at the end of a WHIP/WHEP `Location`.
fn session_of(location: &Value) -> String {
    let l = location.as_str().unwrap_or_default();
    l.rsplit('/').next().unwrap_or_default().to_string()
}

#[test]
fn browsers_publish_and_watch_with_layouts_that_pick_layers() {
    let relay = Relay::start();
    let alice = relay.participant("alice");
    let bob = relay.participant("bob");
    let carol = relay.participant("carol");
    let page = |t: &str| relay.url(&format!("/#token={t}&room=lobby"));

    let browser = Browser::start();
    let a = browser.open(&page(&alice));
    let alice_pub = browser.run(
        &a,
        "return await relay.publish({source: 'camera', simulcast: true});",
    );
    let heights = layer_heights(&browser, &a, 3);
    let (low, mid) = (heights[0], heights[1]);
    assert!(
        low < mid && mid < heights[2],
        "three distinct layers: {heights:?}"
    );

    // Grid with a height cap: the smallest layer at least that tall feeds the tile.
    let w = browser.open(&page(&bob));
    browser.run(
        &w,
        "await relay.subscribe({slots: 4, layout: 'grid', audio: 1});
         await relay.setLayout('grid', 100);",
    );
    let first = wait_for(&browser, &w, "grid at the lowest layer", |s| {
        (slot(s, 0).height == low).then_some(vec![0])
    });
    // Nobody else publishes, so the other tiles stay dark.
    assert!(first.iter().filter(|s| s.mid != 0).all(|s| s.frames == 0));

    // A larger tile: the slot switches layer and keeps decoding through the switch. The switch
    // comes once the session has settled (three seconds of decoding, as in a meeting where
    // the layout changes after people joined): a switch within the first second of decoding,
    // while the bandwidth estimate still ramps, was counted as one freeze in about one run of
    // ten.
    let first_frames = slot(&first, 0).frames;
    let settled = wait_for(&browser, &w, "three seconds of decoding", |s| {
        (slot(s, 0).frames >= first_frames + 90 && slot(s, 0).height == low).then_some(vec![0])
    });
    browser.run(&w, &format!("await relay.setLayout('grid', {mid});"));
    let before = slot(&settled, 0);
    let switched = wait_for(&browser, &w, "grid at the middle layer", |s| {
        (slot(s, 0).height == mid).then_some(vec![0])
    });
    let after = slot(&switched, 0);
    assert!(after.frames > before.frames);
    assert_eq!(
        after.freezes, before.freezes,
        "the layer switch froze the picture"
    );

    // A screen share arrives: in `screen` layout it takes slot 0 at its full size and the
    // camera moves to a thumbnail at the lowest layer.
    let c = browser.open(&page(&carol));
    let carol_pub = browser.run(
        &c,
        "return await relay.publish({source: 'screen', useCamera: true, simulcast: false});",
    );
    let screen_height = layer_heights(&browser, &c, 1)[0];
    assert!(screen_height > low);
    browser.run(&w, "await relay.setLayout('screen');");
    // The relay's own account agrees in the same look: slot 0 is fed by carol's screen share and
    // the thumbnail by alice's camera. The bandwidth estimate may still be ramping, so a
    // thumbnail the page decoded a moment ago can be withheld again; look until both agree.
    let deadline = Instant::now() + SETTLE;
    let screen = loop {
        let screen = wait_for(&browser, &w, "screen layout", |s| {
            let thumb = s.iter().find(|x| x.mid != 0 && x.height == low)?;
            (slot(s, 0).height == screen_height).then_some(vec![0, thumb.mid])
        });
        let room = relay.get("/api/rooms/lobby", Some(&bob));
        assert_eq!(room.status, 200, "{}", room.body);
        let info = room.json();
        let watcher = info["subscribers"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["user"].as_str() == Some("bob")))
            .unwrap_or_else(|| panic!("bob is not watching: {info}"))
            .clone();
        let fed_by = |mid: &str| {
            watcher["slots"]
                .as_array()
                .and_then(|v| v.iter().find(|s| s["mid"].as_str() == Some(mid)))
                .map(|s| s["publisher"].as_str().unwrap_or_default().to_string())
        };
        let thumb = screen.iter().find(|s| s.mid != 0 && s.height == low);
        let thumb_mid = thumb.map(|s| s.mid.to_string()).unwrap_or_default();
        let agreed = fed_by("0") == Some(session_of(&carol_pub))
            && fed_by(&thumb_mid) == Some(session_of(&alice_pub));
        if agreed {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "the relay's slots disagree with the page: {info}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };

    // Junk at every media port: random bytes and truncated RTP, RTCP and STUN. The relay drops
    // it and the running session does not notice.
    let ports = relay
        .startup_field("media")
        .expect("media ports in the start-up line");
    let junk = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for addr in ports.split(',') {
        for i in 0..3000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 1200) as usize;
            let mut d: Vec<u8> = (0..len).map(|k| (rng >> (k % 56)) as u8).collect();
            match (i % 4, d.first_mut()) {
                (0, Some(b)) => *b = 0x80, // RTP version 2, truncated anywhere
                (1, Some(b)) => {
                    *b = 0x81;
                    if let Some(pt) = d.get_mut(1) {
                        *pt = 200 + (rng % 7) as u8; // RTCP SR..PSFB
                    }
                }
                (2, Some(b)) => *b = 0x00, // STUN-looking
                _ => {}
            }
            let _ = junk.send_to(&d, addr);
        }
    }
    let after_junk = wait_for(&browser, &w, "decoding after the junk", |s| {
        (slot(s, 0).height == screen_height).then_some(vec![0])
    });
    assert!(slot(&after_junk, 0).frames > slot(&screen, 0).frames);
    assert_eq!(relay.get("/healthz", None).status, 200);

    // The publisher leaves: its thumbnail is freed.
    browser.run(&a, "await relay.end('pub');");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let info = relay.get("/api/rooms/lobby", Some(&bob)).json();
        let alice_gone = !info.to_string().contains(&session_of(&alice_pub));
        if alice_gone {
            break;
        }
        assert!(Instant::now() < deadline, "alice still in the room: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let forwarded = relay
        .metric("relay_media_packets_forwarded_total")
        .unwrap_or(0.0);
    assert!(forwarded > 0.0);
    // The watcher's session offers no transport-cc, so Chromium reports its receive-side
    // estimate by REMB, which the relay's budget follows.
    let reports = relay
        .metric("relay_media_bandwidth_reports_total")
        .unwrap_or(0.0);
    assert!(reports > 0.0, "Chromium sent no REMB");
    eprintln!(
        "freezes per slot across the run: {:?}",
        slots(&browser, &w)
            .iter()
            .map(|s| (s.mid, s.freezes))
            .collect::<Vec<_>>()
    );
}
