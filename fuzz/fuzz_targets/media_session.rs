//! A live room on a simulated clock (`relay::media::sim`): one publisher with three simulcast
//! layers and two subscribers, connected through ICE and DTLS. Each input drives what arrives
//! at the core: RTP of any content, sequence jump and timestamp from the publisher, encrypted by
//! the publisher's own stack so it passes SRTP and reaches the forwarding path (keyframe tests,
//! VP8 heights, picture ids, rewriting, slot switches); and raw datagrams from the publisher's
//! and a subscriber's known addresses. The room lives across inputs and is rebuilt when a
//! session has gone. Nothing may panic.
#![no_main]

use std::cell::RefCell;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use relay::media::sim::{CoreWire, Sim, core_datagram};
use relay::media::types::{Layout, Source};

const SESSIONS: usize = 3;

fn room() -> Sim {
    let mut sim = Sim::new();
    sim.add_publisher("alice", 1, Source::Camera);
    sim.add_subscriber("bob", 2, 1, Layout::Grid);
    sim.add_subscriber("carol", 1, 0, Layout::Screen);
    sim.run(Duration::from_secs(2));
    sim
}

thread_local! {
    static ROOM: RefCell<Option<Sim>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    ROOM.with_borrow_mut(|slot| {
        if slot
            .as_ref()
            .is_none_or(|s| s.core.session_count() < SESSIONS)
        {
            *slot = Some(room());
        }
        let Some(sim) = slot.as_mut() else { return };
        for op in data.split(|b| *b == 0xff).take(8) {
            let Some((&kind, rest)) = op.split_first() else {
                continue;
            };
            let now = sim.now;
            match kind % 3 {
                0 => {
                    // [layer, jump, ts (4), marker, payload...]
                    if rest.len() < 7 {
                        continue;
                    }
                    let ts = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
                    let publisher = &mut sim.clients[0];
                    publisher.peer.send_raw_video(
                        usize::from(rest[0]),
                        rest[1] as i8,
                        ts,
                        rest[6] & 1 == 1,
                        &rest[7..],
                        now,
                    );
                    publisher.drain(&mut sim.net, now);
                }
                k => {
                    let from = sim.clients[usize::from(k)].addr;
                    let mut wire = CoreWire {
                        from: sim.core_addr,
                        net: &mut sim.net,
                    };
                    core_datagram(&mut sim.core, from, rest, now, &mut wire);
                }
            }
        }
        sim.run(Duration::from_millis(3));
    });
});
