//! `relay-loadtest`: load against a relay, and the machine's own floor to compare it with.

mod appliance;
mod client;
mod driver;
mod floor;
mod media;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "relay-loadtest",
    version,
    about = "Load tester for the relay appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rooms of simulated WebRTC publishers and subscribers against a relay: packets, loss,
    /// one-way delay, join time, and the relay's CPU per forwarded packet, next to the loopback
    /// floor measured just before.
    ///
    /// Without --target it starts the `relay` binary found beside this executable on a
    /// throwaway data directory, on 127.0.0.1 only. With --target URL --admin-token T it loads
    /// a running relay through its admin API, in the token's organisation; the relay's CPU and
    /// memory then come from its /metrics (process_*), whose CPU counter has a resolution of one
    /// second: use long windows there.
    Media {
        /// A running relay's HTTP base URL (http://host:port); needs --admin-token.
        #[arg(long)]
        target: Option<String>,
        /// A token with the admin grant for one organisation of the --target relay.
        #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Publishers per room (camera: three simulcast VP8 layers and audio).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Subscribers per room, besides the publishers.
        #[arg(long, default_value_t = 2)]
        subscribers: usize,
        /// Every publisher also subscribes as the same participant, as in a meeting.
        #[arg(long)]
        meeting: bool,
        /// Video slots per subscriber (plus one audio line).
        #[arg(long, default_value_t = 1)]
        slots: usize,
        /// Subscribers' layout; with `screen` the first publisher of each room shares a screen.
        #[arg(long, value_enum, default_value = "grid")]
        layout: media::Layout,
        /// Measured window (at most 10 minutes).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Time after everyone joined before the window opens.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// Media workers of the relay this starts (0: one per core).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Threads driving the simulated clients.
        #[arg(long, default_value_t = 2)]
        client_threads: usize,
        /// Time per method of the loopback floor measured first (0s: skip it).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        floor_duration: Duration,
        /// The relay binary to start instead of the one beside this executable.
        #[arg(long)]
        relay_bin: Option<PathBuf>,
        /// Write every figure as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Measure the loopback UDP send floor (send, sendmmsg, sendmmsg + AES-128-GCM).
    Floor {
        /// Time per method.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Upper bound on packets per method.
        #[arg(long, default_value_t = 50_000_000)]
        max_packets: u64,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> bool {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("relay-loadtest: cannot write {}: {e}", path.display());
            false
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Media {
            target,
            admin_token,
            rooms,
            publishers,
            subscribers,
            meeting,
            slots,
            layout,
            duration,
            warmup,
            workers,
            client_threads,
            floor_duration,
            relay_bin,
            json,
        } => {
            let o = media::Options {
                target,
                admin_token,
                rooms,
                publishers,
                subscribers,
                meeting,
                slots,
                layout,
                duration,
                warmup,
                workers,
                client_threads,
                floor_duration,
                relay_bin,
                progress: true,
            };
            if let Err(e) = o.check() {
                eprintln!("relay-loadtest: media: {e}");
                return ExitCode::from(2);
            }
            match media::run(&o) {
                Ok(report) => {
                    print!("{}", report.summary());
                    if let Some(path) = json
                        && !write_json(&path, &report)
                    {
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("relay-loadtest: media: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Floor {
            duration,
            max_packets,
            json,
        } => match floor::measure(duration, max_packets) {
            Ok(report) => {
                print!("{}", report.summary());
                if let Some(path) = json
                    && !write_json(&path, &report)
                {
                    return ExitCode::from(1);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay-loadtest: floor: {e}");
                ExitCode::from(1)
            }
        },
    }
}
