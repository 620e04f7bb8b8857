//! In-memory tests of the SFU core against str0m client peers on a simulated clock
//! ([`super::sim`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::Input;
use str0m::media::{KeyframeRequestKind, Mid};

use super::sfu::PLI_THROTTLE;
use super::sim::{Client, CoreWire, Got, Sim};
use super::types::{Layout, Source};

/// Packets a subscriber got since `since`, per mid: (publisher, layer) of the last one.
fn last_by_mid(c: &Client, since: Instant) -> Vec<(Mid, u8, u8)> {
    let mut out: Vec<(Mid, u8, u8)> = Vec::new();
    for g in c.got.iter().filter(|g| g.at >= since) {
        match out.iter_mut().find(|o| o.0 == g.mid) {
            Some(o) => *o = (g.mid, g.publisher, g.layer),
            None => out.push((g.mid, g.publisher, g.layer)),
        }
    }
    out.sort_by_key(|o| o.1);
    out
}

/// Within each mid, sequence numbers go up by exactly one and timestamps never step back,
/// and the first packet of every (publisher, layer) run is a keyframe.
fn assert_continuous(c: &Client) {
    let mut mids: Vec<Mid> = c.got.iter().map(|g| g.mid).collect();
    mids.sort();
    mids.dedup();
    for mid in mids {
        let pkts: Vec<&Got> = c.got.iter().filter(|g| g.mid == mid).collect();
        assert!(pkts[0].keyframe, "slot {mid} starts on a keyframe");
        for w in pkts.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1, "slot {mid}: sequence continues");
            let dt = w[1].ts.wrapping_sub(w[0].ts);
            assert!(
                dt < 90_000 * 5,
                "slot {mid}: timestamp moves forward ({} -> {})",
                w[0].ts,
                w[1].ts
            );
            if (w[1].publisher, w[1].layer) != (w[0].publisher, w[0].layer) {
                assert!(
                    w[1].keyframe,
                    "slot {mid}: switch from {:?} to {:?} on a keyframe",
                    (w[0].publisher, w[0].layer),
                    (w[1].publisher, w[1].layer)
                );
            }
        }
    }
}

/// With loss and retransmission: in sequence-number order, every change of (publisher,
/// layer) within a slot lands on a keyframe (or just after a gap, where the network lost the
/// keyframe and its repairs), and each sequence number carries one source.
fn assert_switches_on_keyframes(c: &Client) {
    let mut mids: Vec<Mid> = c.got.iter().map(|g| g.mid).collect();
    mids.sort();
    mids.dedup();
    for mid in mids {
        let mut pkts: Vec<&Got> = c.got.iter().filter(|g| g.mid == mid).collect();
        pkts.sort_by_key(|g| g.seq);
        for w in pkts.windows(2) {
            if w[0].seq == w[1].seq {
                assert_eq!((w[0].publisher, w[0].layer), (w[1].publisher, w[1].layer));
                continue;
            }
            if (w[1].publisher, w[1].layer) != (w[0].publisher, w[0].layer) {
                assert!(
                    w[1].keyframe || w[1].seq > w[0].seq + 1,
                    "slot {mid}: switch at seq {} on a keyframe",
                    w[1].seq
                );
            }
        }
    }
}

#[test]
fn slots_layers_layout_switch_and_departure() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let b = sim.add_publisher("bob", 2, Source::Camera);
    let s = sim.add_subscriber("carol", 2, 1, Layout::Grid);
    // Alice's own subscriber: must never see alice.
    let sa = sim.add_subscriber("alice", 2, 1, Layout::Grid);
    sim.run(Duration::from_secs(3));

    // Two tiles: both publishers at the middle layer, one per slot.
    let t = sim.now - Duration::from_millis(500);
    let got = last_by_mid(&sim.clients[s], t);
    assert_eq!(got.len(), 2, "both slots fed: {got:?}");
    assert_eq!((got[0].1, got[0].2), (1, 1), "alice at middle layer");
    assert_eq!((got[1].1, got[1].2), (2, 1), "bob at middle layer");
    assert_ne!(got[0].0, got[1].0, "distinct slots");
    // Alice sees only bob, alone in the grid: highest layer.
    let own = last_by_mid(&sim.clients[sa], t);
    assert_eq!(
        own.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(2, 2)]
    );
    assert!(
        sim.clients[sa].got.iter().all(|g| g.publisher != 1),
        "nobody gets their own video"
    );
    assert!(
        sim.clients[sa].got_audio.iter().all(|g| g.1 != 1),
        "nobody gets their own audio"
    );
    assert!(!sim.clients[s].got_audio.is_empty(), "audio line fed");

    // Layout change: cap at 180 lines -> lowest layer, switched only on a keyframe.
    let sid = sim.clients[s].session.clone().expect("session");
    let before = sim.counters();
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    sim.core
        .set_layout(&sid, Layout::Grid, Some(180), now, &mut wire)
        .expect("layout");
    sim.run(Duration::from_secs(2));
    let got = last_by_mid(&sim.clients[s], sim.now - Duration::from_millis(300));
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(1, 0), (2, 0)]
    );
    let after = sim.counters();
    assert!(
        after.layer_switches >= before.layer_switches + 2,
        "two layer switches counted"
    );
    assert!(
        after.keyframe_requests > before.keyframe_requests,
        "keyframes requested"
    );
    assert_continuous(&sim.clients[s]);

    // Room view names the slots' publishers and layers.
    let info = sim.core.room_info("org/room").expect("room");
    assert_eq!(info.publishers.len(), 2);
    let carol = info
        .subscribers
        .iter()
        .find(|x| x.user == "carol")
        .expect("carol");
    assert!(
        carol
            .slots
            .iter()
            .all(|sl| sl.layer.as_deref() == Some("l")),
        "{carol:?}"
    );

    // Alice leaves: her slot is freed within a second, bob goes on.
    let aid = sim.clients[a].session.clone().expect("session");
    sim.clients[a].sending = false;
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    sim.core.end(&aid, now, &mut wire).expect("end");
    let left = sim.now;
    sim.run(Duration::from_secs(1));
    assert!(
        sim.clients[s]
            .got
            .iter()
            .filter(|g| g.at > left)
            .all(|g| g.publisher != 1),
        "no alice after she left"
    );
    let got = last_by_mid(&sim.clients[s], sim.now - Duration::from_millis(300));
    assert_eq!(
        got.iter().map(|o| o.1).collect::<Vec<_>>(),
        vec![2],
        "bob still flowing"
    );
    let info = sim.core.room_info("org/room").expect("room");
    assert_eq!(info.publishers.len(), 1);
    assert!(sim.counters().packets_forwarded > 100);
    assert_continuous(&sim.clients[s]);
    let _ = b;
}

#[test]
fn silent_publisher_frees_slot_and_empty_room_disappears() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let s = sim.add_subscriber("carol", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(2));
    assert!(sim.clients[s].got.iter().any(|g| g.publisher == 1));
    // Alice stops sending (still connected): the slot empties within a second.
    sim.clients[a].sending = false;
    sim.run(Duration::from_secs(1));
    let info = sim.core.room_info("org/room").expect("room");
    assert_eq!(info.subscribers[0].slots[0].publisher, None, "{info:?}");
    // Everyone leaves: the room disappears.
    for c in [a, s] {
        let id = sim.clients[c].session.clone().expect("session");
        let now = sim.now;
        let mut wire = CoreWire {
            from: sim.core_addr,
            net: &mut sim.net,
        };
        sim.core.end(&id, now, &mut wire).expect("end");
    }
    assert!(sim.core.room_info("org/room").is_none());
    assert_eq!(sim.core.session_count(), 0);
    assert_eq!(sim.counters().rooms, 0);
}

#[test]
fn unplugged_peers_are_removed_after_the_silence_timeout() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let s = sim.add_subscriber("carol", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.core.session_count(), 2);
    sim.clients[s].cut = true;
    sim.run(super::sfu::SILENCE_TIMEOUT - Duration::from_millis(500));
    assert_eq!(sim.core.session_count(), 2, "not before the timeout");
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.core.session_count(), 1, "carol removed");
    let info = sim.core.room_info("org/room").expect("room");
    assert!(info.subscribers.is_empty());
    let (gone, _) = sim.core.take_gone();
    assert_eq!(gone, vec![sim.clients[s].session.clone().expect("id")]);
    sim.clients[a].cut = true;
    sim.run(super::sfu::SILENCE_TIMEOUT + Duration::from_millis(200));
    assert_eq!(sim.core.session_count(), 0);
    assert!(sim.core.room_info("org/room").is_none(), "empty room gone");
    let (_, rooms) = sim.core.take_gone();
    assert_eq!(rooms, vec!["org/room".to_owned()]);
}

#[test]
fn screen_layout_and_loudest_speaker() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let b = sim.add_publisher("bob", 2, Source::Camera);
    // Dave shares his screen from a second WHIP session.
    let d = sim.add_publisher("dave", 3, Source::Screen);
    sim.clients[a].peer.audio_level = -60;
    sim.clients[b].peer.audio_level = -20;
    sim.clients[d].peer.audio_level = -127;
    let s = sim.add_subscriber("carol", 3, 1, Layout::Screen);
    let g = sim.add_subscriber("erin", 1, 1, Layout::Grid);
    sim.run(Duration::from_secs(3));

    // Screen layout: the share at its highest layer, cameras at their lowest, the most recent
    // speaker (bob) first.
    let sid = sim.clients[s].session.clone().expect("id");
    let info = sim.core.room_info("org/room").expect("room");
    let carol = info
        .subscribers
        .iter()
        .find(|x| x.session == sid)
        .expect("carol");
    let share = sim.clients[d].session.clone().expect("id");
    assert_eq!(carol.slots[0].publisher, Some(share), "{carol:?}");
    assert_eq!(carol.slots[0].layer.as_deref(), Some("h"));
    assert_eq!(carol.slots[1].publisher, sim.clients[b].session.clone());
    assert_eq!(carol.slots[2].publisher, sim.clients[a].session.clone());
    assert!(
        carol.slots[1..]
            .iter()
            .all(|x| x.layer.as_deref() == Some("l"))
    );
    let recent = sim.now - Duration::from_millis(300);
    let got = last_by_mid(&sim.clients[s], recent);
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(1, 0), (2, 0), (3, 2)]
    );

    // One audio line: the loudest (bob).
    let tail: Vec<u8> = sim.clients[s]
        .got_audio
        .iter()
        .rev()
        .take(10)
        .map(|x| x.1)
        .collect();
    assert!(
        tail.iter().all(|&l| l == 2),
        "loudest on the line: {tail:?}"
    );

    // Grid with one slot: the most recent speaker (bob) at the highest layer.
    let got = last_by_mid(&sim.clients[g], recent);
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(2, 2)]
    );

    // Alice starts talking loudly, bob falls silent: she takes the one-slot grid and the
    // audio line, switching on a keyframe.
    sim.clients[a].peer.audio_level = -10;
    sim.clients[b].peer.audio_level = -127;
    sim.run(Duration::from_secs(3));
    let recent = sim.now - Duration::from_millis(300);
    let got = last_by_mid(&sim.clients[g], recent);
    assert_eq!(
        got.iter().map(|o| (o.1, o.2)).collect::<Vec<_>>(),
        vec![(1, 2)]
    );
    let tail: Vec<u8> = sim.clients[g]
        .got_audio
        .iter()
        .rev()
        .take(10)
        .map(|x| x.1)
        .collect();
    assert!(
        tail.iter().all(|&l| l == 1),
        "alice on the line now: {tail:?}"
    );
    assert_continuous(&sim.clients[g]);
    assert_continuous(&sim.clients[s]);
}

#[test]
fn bandwidth_estimate_lowers_layers_and_raises_them_again() {
    let mut sim = Sim::new();
    sim.add_publisher("alice", 1, Source::Camera);
    sim.add_publisher("bob", 2, Source::Camera);
    let s = sim.add_subscriber("carol", 2, 0, Layout::Grid);
    sim.run(Duration::from_secs(3));
    let layers = |sim: &Sim| {
        let recent = sim.now - Duration::from_millis(500);
        last_by_mid(&sim.clients[s], recent)
            .iter()
            .map(|o| o.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        layers(&sim),
        vec![1, 1],
        "middle layers with plenty of bandwidth"
    );

    // About 235 kbit/s needed for two middle layers, 140 for two lowest: squeeze to 160.
    // The receiver's REMB falls within about a second; the layers follow within 3 s, and
    // probes that fail do not bring them back for long.
    sim.clients[s].link_bps = Some(160_000);
    sim.run(Duration::from_secs(3));
    assert_eq!(
        layers(&sim),
        vec![0, 0],
        "lowest layers under the bottleneck"
    );
    // Probes reach for the middle layers and fail (a second or two each, further apart each
    // time): most of the time the slots stay at their lowest.
    let from = sim.now;
    sim.run(Duration::from_secs(9));
    let window: Vec<&Got> = sim.clients[s].got.iter().filter(|g| g.at >= from).collect();
    let lowest = window.iter().filter(|g| g.layer == 0).count();
    assert!(
        lowest * 10 >= window.len() * 7,
        "{lowest} of {} packets at the lowest layer",
        window.len()
    );

    // The next probe finds the room: both middle layers within 10 s.
    sim.clients[s].link_bps = None;
    sim.run(Duration::from_secs(10));
    assert_eq!(
        layers(&sim),
        vec![1, 1],
        "middle layers again once a probe holds"
    );
    assert_switches_on_keyframes(&sim.clients[s]);
}

#[test]
fn loss_on_both_links_is_repaired_by_nack() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let b = sim.add_subscriber("bob", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(2));
    // 5% loss from the publisher to the relay and from the relay to the subscriber.
    sim.clients[a].loss_permille = 50;
    sim.clients[b].loss_permille = 50;
    let from = sim.now;
    sim.run(Duration::from_secs(4));
    let until = sim.now;
    sim.clients[a].loss_permille = 0;
    sim.clients[b].loss_permille = 0;
    // Time for the last repairs to land.
    sim.run(Duration::from_secs(1));
    let lost = sim.clients[a].lost + sim.clients[b].lost;
    assert!(lost > 20, "the network lost only {lost} packets");

    let c = &sim.clients[b];
    let mut all: Vec<u64> = c.got.iter().map(|g| g.seq).collect();
    all.sort_unstable();
    all.dedup();
    let window: Vec<u64> = c
        .got
        .iter()
        .filter(|g| g.at >= from && g.at < until)
        .map(|g| g.seq)
        .collect();
    let (Some(&first), Some(&last)) = (window.iter().min(), window.iter().max()) else {
        panic!("nothing arrived while the links were lossy");
    };
    let missing: Vec<u64> = (first..=last)
        .filter(|s| all.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} sequence numbers never arrived after {lost} losses: {missing:?}",
        missing.len(),
        last - first + 1
    );
    assert_switches_on_keyframes(c);
}

#[test]
fn a_subscribers_keyframe_request_reaches_the_feeding_layer_throttled() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let s = sim.add_subscriber("carol", 1, 0, Layout::Grid);
    sim.run(Duration::from_secs(2));
    // One tile: the highest layer feeds carol's slot.
    let got = last_by_mid(&sim.clients[s], sim.now - Duration::from_millis(300));
    assert_eq!(
        got.iter().map(|g| (g.1, g.2)).collect::<Vec<_>>(),
        vec![(1, 2)]
    );
    let mid = got[0].0;
    // Past the allocator's own requests' throttle window.
    sim.run(Duration::from_secs(1));
    let before = sim.clients[a].key_requests;
    let counted = sim.counters().keyframe_requests;

    let pli = |sim: &mut Sim| {
        let c = &mut sim.clients[s];
        c.peer
            .rtc
            .direct_api()
            .stream_rx_by_mid(mid, None)
            .expect("slot stream")
            .request_keyframe(KeyframeRequestKind::Pli);
        let now = sim.now;
        c.peer
            .rtc
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        c.drain(&mut sim.net, now);
    };
    pli(&mut sim);
    sim.run(Duration::from_millis(50));
    let after = sim.clients[a].key_requests;
    assert_eq!(after[2], before[2] + 1, "the feeding layer was asked once");
    assert_eq!(
        (after[0], after[1]),
        (before[0], before[1]),
        "no other layer"
    );
    assert_eq!(sim.counters().keyframe_requests, counted + 1);

    // A second request within the throttle window is absorbed; one after it goes through.
    pli(&mut sim);
    sim.run(Duration::from_millis(100));
    assert_eq!(sim.clients[a].key_requests[2], after[2], "throttled");
    sim.run(PLI_THROTTLE);
    pli(&mut sim);
    sim.run(Duration::from_millis(50));
    assert_eq!(
        sim.clients[a].key_requests[2],
        after[2] + 1,
        "after the window"
    );
}

#[test]
fn a_forwarded_datagram_counts_once_its_last_copy_has_left() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let subs: Vec<usize> = ["bob", "carol", "dave"]
        .iter()
        .map(|u| sim.add_subscriber(u, 1, 1, Layout::Grid))
        .collect();
    sim.run(Duration::from_secs(3));
    // Everything forwarded so far: one record per datagram that reached the subscribers,
    // and none still waiting once the publisher has stopped.
    let since = sim.start;
    sim.clients[a].sending = false;
    sim.run(Duration::from_millis(200));
    let recorded = sim.core.take_left().count();
    let bob = &sim.clients[subs[0]];
    let delivered = bob.got.iter().filter(|g| g.at >= since).count() + bob.got_audio.len();
    for &s in &subs[1..] {
        let c = &sim.clients[s];
        assert_eq!(
            c.got.len() + c.got_audio.len(),
            delivered,
            "subscribers got the same"
        );
    }
    assert_eq!(recorded, delivered);
    assert_eq!(sim.core.forwarding(), 0);

    // A burst of eight packets on the layer feeding the slots: no pacer holds a copy back, so
    // one timeout pass (the one after the read) sends every copy of all eight, and each is
    // recorded with the delay of that one pass (none, on a simulated clock).
    let layer = usize::from(sim.clients[subs[0]].got.last().expect("video").layer);
    let now = sim.now;
    let mut payload = vec![0xaa; 400];
    payload[..2].copy_from_slice(&[0x10, 0x01]);
    for i in 0..8 {
        sim.clients[a]
            .peer
            .send_raw_video(layer, 0, 90_000 + i, i == 7, &payload, now);
    }
    let now = sim.now;
    sim.clients[a].drain(&mut sim.net, now);
    let mut delays = Vec::new();
    for _ in 0..100 {
        sim.run(Duration::from_millis(1));
        let at = sim.now;
        delays.extend(sim.core.take_left().map(|t| at - t));
    }
    assert_eq!(delays.len(), 8, "{delays:?} {}", sim.core.forwarding());
    assert!(delays.iter().all(|d| d.is_zero()), "{delays:?}");
    assert_eq!(sim.core.forwarding(), 0);
}

#[test]
fn subscribers_are_answered_for_remb_and_publishers_keep_transport_cc() {
    let mut sim = Sim::new();
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    let mut sub = Client::new(6000, now, now);
    let offer = sub.subscriber_offer(2, 1);
    assert!(offer.contains("transport-wide-cc") && offer.contains("goog-remb"));
    let answer = sim
        .core
        .subscribe(
            "org/room",
            "bob",
            Layout::Grid,
            true,
            &offer,
            now,
            &mut wire,
        )
        .expect("subscribe")
        .answer_sdp;
    assert!(!answer.contains("transport-wide-cc"), "{answer}");
    assert!(!answer.contains("transport-cc"), "{answer}");
    assert!(answer.contains("goog-remb"), "{answer}");
    assert!(answer.contains("abs-send-time"), "{answer}");
    // Only what a copy carries: the MID and the audio level, not the stream ids of simulcast.
    assert!(offer.contains("sdes:rtp-stream-id"), "{offer}");
    assert!(answer.contains("sdes:mid"), "{answer}");
    assert!(answer.contains("ssrc-audio-level"), "{answer}");
    assert!(!answer.contains("rtp-stream-id"), "{answer}");
    assert!(!answer.contains("video-orientation"), "{answer}");

    let mut publisher = Client::new(6001, now, now);
    let offer = publisher.publisher_offer(1);
    let answer = sim
        .core
        .publish("org/room", "alice", Source::Camera, &offer, now, &mut wire)
        .expect("publish")
        .answer_sdp;
    assert!(answer.contains("transport-wide-cc"), "{answer}");
}

#[test]
fn receivers_report_their_estimate_about_once_a_second() {
    let mut sim = Sim::new();
    sim.add_publisher("alice", 1, Source::Camera);
    sim.add_subscriber("bob", 1, 1, Layout::Grid);
    sim.run(Duration::from_secs(3));
    // About one report a second from the subscriber's peer (more while its estimate falls).
    let reports = sim.counters().bandwidth_reports;
    assert!((2..=6).contains(&reports), "{reports} reports");
}

/// Starts recording `room` in the simulated core.
fn record(sim: &mut Sim, room: &str) -> Result<(), super::types::MediaError> {
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    sim.core.start_recording(room, true, now, &mut wire)
}

/// The publisher label and layer each recorded frame came from (the stamp in its first packet).
fn recorded_from(frames: &[super::sfu::RecordedFrame]) -> Vec<(u8, u8, bool)> {
    use relay_kit::peer::{Stamp, VIDEO_STAMP_AT};
    frames
        .iter()
        .filter_map(|f| {
            // The recorded frame is the payloads without their one-byte descriptors.
            let s = Stamp::read(f.data.get(VIDEO_STAMP_AT - 1..)?)?;
            Some((s.publisher as u8, s.layer, f.keyframe))
        })
        .collect()
}

#[test]
fn the_recording_follows_the_speaker_and_the_screen_share_on_keyframes() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    let b = sim.add_publisher("bob", 2, Source::Camera);
    sim.clients[a].peer.audio_level = -127;
    sim.clients[b].peer.audio_level = -20;
    sim.run(Duration::from_secs(1));
    record(&mut sim, "org/room").expect("the room exists");
    assert!(
        record(&mut sim, "org/nowhere").is_err(),
        "no room, no recording"
    );
    sim.run(Duration::from_secs(3));
    let first = sim.core.take_recorded("org/room").expect("recording");
    // Both voices are handed out, every 20 ms each, in arrival order.
    let mut voices: HashMap<u64, Vec<&super::sfu::RecordedAudio>> = HashMap::new();
    for a in &first.audio {
        voices.entry(a.voice).or_default().push(a);
    }
    assert_eq!(voices.len(), 2, "alice's and bob's voices");
    for v in voices.values() {
        assert!((130..=160).contains(&v.len()), "{} packets in 3 s", v.len());
        assert!(
            v.windows(2)
                .all(|w| w[1].ms >= w[0].ms && w[1].ts.wrapping_sub(w[0].ts) == 960)
        );
    }
    let mut all = first.video;
    let from = recorded_from(&all);
    assert!(from.len() > 60, "{} frames in 3 s", from.len());
    assert!(from[0].2, "the recording starts on a keyframe");
    assert!(
        from[from.len() - 30..].iter().all(|f| (f.0, f.1) == (2, 2)),
        "bob, the speaker, at his highest layer: {:?}",
        &from[from.len() - 30..]
    );

    // Alice speaks, bob falls silent: the recording follows her from a keyframe of hers.
    sim.clients[a].peer.audio_level = -10;
    sim.clients[b].peer.audio_level = -127;
    sim.run(Duration::from_secs(3));
    let part = sim.core.take_recorded("org/room").expect("recording").video;
    let from = recorded_from(&part);
    let first_alice = from.iter().position(|f| f.0 == 1).expect("alice recorded");
    assert!(from[first_alice].2, "the switch lands on a keyframe");
    assert!(from[first_alice..].iter().all(|f| (f.0, f.1) == (1, 2)));
    all.extend(part);

    // Dave shares his screen: it takes the recording; when the share ends, the speaker again.
    let d = sim.add_publisher("dave", 3, Source::Screen);
    sim.clients[d].peer.audio_level = -127;
    sim.run(Duration::from_secs(3));
    let part = sim.core.take_recorded("org/room").expect("recording").video;
    let from = recorded_from(&part);
    let first_share = from
        .iter()
        .position(|f| f.0 == 3)
        .expect("the share recorded");
    assert!(from[first_share].2);
    assert!(from[first_share..].iter().all(|f| f.0 == 3 && f.1 == 2));
    all.extend(part);
    let did = sim.clients[d].session.clone().expect("session");
    sim.clients[d].sending = false;
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    sim.core.end(&did, now, &mut wire).expect("end");
    sim.run(Duration::from_secs(2));
    let part = sim.core.take_recorded("org/room").expect("recording").video;
    let from = recorded_from(&part);
    assert!(from.last().is_some_and(|f| f.0 == 1), "back to alice");
    all.extend(part);

    // One timeline across every switch: never back, never a jump.
    for w in all.windows(2) {
        let step = w[1].ms as i64 - w[0].ms as i64;
        assert!(
            (0..200).contains(&step),
            "a step of {step} ms in the recording"
        );
    }
    assert!(all.last().expect("frames").ms > 9_000);

    // Stopped, the room records nothing more.
    assert!(sim.core.stop_recording("org/room").is_some());
    sim.run(Duration::from_millis(500));
    assert!(sim.core.take_recorded("org/room").is_none());
}

#[test]
fn a_call_is_recorded_without_its_video() {
    let mut sim = Sim::new();
    sim.add_publisher("alice", 1, Source::Camera);
    sim.run(Duration::from_millis(500));
    let now = sim.now;
    let mut wire = CoreWire {
        from: sim.core_addr,
        net: &mut sim.net,
    };
    sim.core
        .start_recording("org/room", false, now, &mut wire)
        .expect("room");
    sim.run(Duration::from_secs(2));
    let got = sim.core.take_recorded("org/room").expect("recording");
    assert!(got.video.is_empty(), "{} video frames", got.video.len());
    assert!(
        got.audio.len() > 80,
        "{} audio packets in 2 s",
        got.audio.len()
    );
}

#[test]
fn a_gap_in_the_recorded_video_resumes_on_a_keyframe_later_on_the_timeline() {
    let mut sim = Sim::new();
    let a = sim.add_publisher("alice", 1, Source::Camera);
    sim.run(Duration::from_millis(500));
    record(&mut sim, "org/room").expect("room");
    sim.run(Duration::from_secs(2));
    let before = sim.core.take_recorded("org/room").expect("recording").video;
    // Alice's camera stops for two seconds, then sends again.
    sim.clients[a].sending = false;
    sim.run(Duration::from_secs(2));
    sim.clients[a].sending = true;
    sim.run(Duration::from_secs(2));
    let after = sim.core.take_recorded("org/room").expect("recording").video;
    assert!(!before.is_empty() && !after.is_empty());
    assert!(after[0].keyframe, "video resumes on a keyframe");
    let last = before.last().expect("frames").ms;
    assert!(
        after[0].ms >= last + 1_500,
        "the pause is on the timeline: {last} then {}",
        after[0].ms
    );
    for w in before.iter().chain(&after).collect::<Vec<_>>().windows(2) {
        assert!(w[1].ms >= w[0].ms, "time never runs back");
    }
}
