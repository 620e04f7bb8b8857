//! The per-packet path of the media core in a simulated room, for instruction counting.
//!
//! `packet_path N SECONDS`: one publisher (three simulcast layers and audio) and N subscribers
//! with one video slot and one audio line each, settled for three simulated seconds, then run
//! for SECONDS more. It prints the copies forwarded in each phase. Under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='relay::media::sim::core_*'`
//! only the core's own calls are counted; `bench/callgrind-packet-path.sh` runs it with and
//! without the measured phase and divides the difference by the copies forwarded in it.

use std::time::Duration;

use relay::media::sim::Sim;
use relay::media::types::{Layout, Source};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parse = |i: usize, default: u64| -> u64 {
        args.get(i)
            .map(|a| match a.parse() {
                Ok(v) => v,
                Err(_) => {
                    eprintln!("usage: packet_path SUBSCRIBERS SECONDS");
                    std::process::exit(2);
                }
            })
            .unwrap_or(default)
    };
    let n = parse(1, 10) as usize;
    let seconds = parse(2, 2);
    let mut sim = Sim::with_room_size(n + 1);
    sim.add_publisher("p", 1, Source::Camera);
    for i in 0..n {
        sim.add_subscriber(&format!("s{i}"), 1, 1, Layout::Grid);
    }
    sim.run(Duration::from_secs(3));
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
