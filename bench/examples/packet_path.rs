//! The per-packet path of the media core in a simulated room, for instruction counting.
//!
//! `packet_path N SECONDS [small|camera|idle]`: one publisher (three simulcast layers and audio) and
//! N subscribers with one video slot and one audio line each, settled for six simulated
//! seconds, then run for SECONDS more. The publisher sends in the kit's small shape (one packet
//! per layer and frame, the top layer at 154 kbit/s) or, with `camera`, as a camera encoder does
//! (the top layer at 1.5 Mbit/s, six packets a frame); with `idle` there is no publisher, and the
//! N subscribers stay connected with nothing to receive. It prints the copies forwarded in each phase. Under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='relay::media::sim::core_*'`
//! only the core's own calls are counted; `bench/callgrind-packet-path.sh` runs it with and
//! without the measured phase and divides the difference by the copies forwarded in it.

use std::time::Duration;

use relay::media::sim::{Shape, Sim};
use relay::media::types::{Layout, Source};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parse = |i: usize, default: u64| -> u64 {
        args.get(i)
            .map(|a| match a.parse() {
                Ok(v) => v,
                Err(_) => {
                    eprintln!("usage: packet_path SUBSCRIBERS SECONDS [small|camera|idle]");
                    std::process::exit(2);
                }
            })
            .unwrap_or(default)
    };
    let n = parse(1, 10) as usize;
    let seconds = parse(2, 2);
    let mut sim = Sim::with_room_size(n + 1);
    let shape = args.get(3).map(String::as_str).unwrap_or("small");
    sim.shape = match shape {
        "small" | "idle" => Shape::SMALL,
        "camera" => Shape::CAMERA,
        other => {
            eprintln!("unknown shape {other}: small, camera or idle");
            std::process::exit(2);
        }
    };
    if shape != "idle" {
        sim.add_publisher("p", 1, Source::Camera);
    }
    for i in 0..n {
        sim.add_subscriber(&format!("s{i}"), 1, 1, Layout::Grid);
    }
    // Long enough for a camera's top layer: the first probe holds after about five seconds.
    sim.run(Duration::from_secs(6));
    let settled = sim.counters();
    sim.run(Duration::from_secs(seconds));
    let end = sim.counters();
    println!(
        "subscribers {n} settle_copies {} measured_seconds {seconds} measured_copies {} measured_received {}",
        settled.packets_forwarded,
        end.packets_forwarded - settled.packets_forwarded,
        end.packets_received - settled.packets_received,
    );
}
