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
        #[command(flatten)]
        options: media::Options,
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
        Command::Media { options: o, json } => {
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
