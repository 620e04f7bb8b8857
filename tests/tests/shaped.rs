//! Congestion with a real browser: Chromium publishes three simulcast layers, another window
//! watches one slot at the top layer, and then the link from the relay to that window is shaped
//! with `tc`. The watcher gets lower layers while the link is limited and the top one back
//! after the limit lifts. The test prints how long each took and the freezes Chromium counted.
//!
//! The test moves into a network namespace of its own (root needed), whose loopback device it
//! shapes: the relay, chromedriver and Chromium all run there, on 127.0.0.1, and nothing else on
//! the machine sees the shaping.

use std::time::{Duration, Instant};

use relay_kit::netns;
use relay_tests::Relay;
use relay_tests::browser::{Browser, layer_heights, slot, slots, wait_for};

/// What the shaped link carries: the lowest layer and audio fit, the middle one does not.
const SHAPED_RATE: &str = "250kbit";
/// How long the link stays limited.
const SHAPED_FOR: Duration = Duration::from_secs(15);
/// How long the top layer may take to come back after the limit lifts.
const BACK_WITHIN: Duration = Duration::from_secs(60);

/// Limits the UDP datagrams to `port` on this namespace's loopback to `SHAPED_RATE`
/// (HTB, the one classful qdisc this test may count on, with a short queue of its own); the
/// rest of the loopback traffic passes at full speed. The queue holds 24,000 bytes, twenty
/// datagrams of 1,200: counted in bytes, as a router's, because the relay hands the kernel a
/// subscriber's datagrams as one segmentation-offload packet, which a queue counted in packets
/// (on loopback the datagrams are cut only after the queue) would take as one.
fn shape(port: &str) {
    let steps: [&[&str]; 4] = [
        &[
            "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "20",
        ],
        &[
            "class",
            "add",
            "dev",
            "lo",
            "parent",
            "1:",
            "classid",
            "1:10",
            "htb",
            "rate",
            SHAPED_RATE,
            "ceil",
            SHAPED_RATE,
            "burst",
            "8kb",
            "quantum",
            "1500",
        ],
        &[
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate",
            "10gbit", "quantum", "60000",
        ],
        &[
            "qdisc", "add", "dev", "lo", "parent", "1:10", "handle", "10:", "bfifo", "limit",
            "24000",
        ],
    ];
    for args in steps {
        netns::tc(args).unwrap_or_else(|e| panic!("{e}"));
    }
    netns::tc(&[
        "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
        "match", "ip", "protocol", "17", "0xff", "match", "ip", "dport", port, "0xffff", "flowid",
        "1:10",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
}

fn lift() {
    netns::tc(&["qdisc", "del", "dev", "lo", "root"]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_watcher_behind_a_shaped_downlink_gets_lower_layers_then_the_top_one_back() {
    netns::unshare_network().unwrap_or_else(|e| {
        panic!("the shaped-link test needs a network namespace of its own, as root: {e}")
    });
    netns::ip(&["link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("{e}"));

    let relay = Relay::start();
    let alice = relay.participant("alice");
    let bob = relay.participant("bob");
    let page = |t: &str| relay.url(&format!("/#token={t}&room=lobby"));
    let browser = Browser::start();
    let a = browser.open(&page(&alice));
    browser.run(
        &a,
        "return await relay.publish({source: 'camera', simulcast: true});",
    );
    let heights = layer_heights(&browser, &a, 3);
    let top = heights[2];

    let w = browser.open(&page(&bob));
    browser.run(
        &w,
        "await relay.subscribe({slots: 1, layout: 'grid', audio: 1});",
    );
    let first = wait_for(&browser, &w, "the top layer", |s| {
        (slot(s, 0).height == top).then_some(vec![0])
    });
    // Settled at the top layer: three seconds of decoding.
    let settled = wait_for(&browser, &w, "three seconds at the top layer", |s| {
        (slot(s, 0).frames >= slot(&first, 0).frames + 90 && slot(s, 0).height == top)
            .then_some(vec![0])
    });
    let before = slot(&settled, 0);

    // The watcher's own port, from its selected candidate pair: only what the relay sends it
    // is limited, not the relay's feedback to the publisher.
    let port = browser.run(
        &w,
        "const r = await state.sub.pc.getStats();
         let port = null;
         r.forEach((t) => {
           if (t.type === 'transport' && t.selectedCandidatePairId) {
             port = r.get(r.get(t.selectedCandidatePairId).localCandidateId).port;
           }
         });
         return port;",
    );
    let port = port
        .as_u64()
        .unwrap_or_else(|| panic!("no selected candidate pair: {port}"))
        .to_string();
    shape(&port);
    let shaped = Instant::now();
    let mut timeline = Vec::new();
    let mut look = |since: Instant| {
        std::thread::sleep(Duration::from_millis(500));
        let s = slot(&slots(&browser, &w), 0);
        timeline.push((since.elapsed().as_secs_f32(), s.height, s.frames, s.freezes));
        s
    };
    let mut went_down = None;
    let mut at_end = before;
    while shaped.elapsed() < SHAPED_FOR {
        at_end = look(shaped);
        if went_down.is_none() && at_end.height < top {
            went_down = Some(shaped.elapsed());
        }
    }
    lift();
    let lifted = Instant::now();
    let mut came_back = None;
    let mut after = at_end;
    while lifted.elapsed() < BACK_WITHIN {
        let s = look(lifted);
        // Back at the top and decoding there.
        if s.height == top && after.height == top && s.frames > after.frames {
            came_back = Some(lifted.elapsed());
            after = s;
            break;
        }
        after = s;
    }
    eprintln!(
        "layers {heights:?}; lower after {went_down:?}, height {} at the end of the limit, \
         the top again {came_back:?} after the lift; freezes {} before, {} after\n\
         timeline (s, height, frames, freezes): {timeline:?}",
        at_end.height, before.freezes, after.freezes
    );
    assert!(
        went_down.is_some(),
        "the watcher kept the top layer on a {SHAPED_RATE} link: {timeline:?}"
    );
    assert!(
        at_end.height < top,
        "the top layer came back while the link was still limited: {timeline:?}"
    );
    assert!(
        came_back.is_some(),
        "the top layer did not come back within {BACK_WITHIN:?} of the lift: {timeline:?}"
    );
}
