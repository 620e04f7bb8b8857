//! `relay-loadtest`: load against a relay, and the machine's own floor to compare it with.

mod floor;
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

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Floor {
            duration,
            max_packets,
            json,
        } => match floor::measure(duration, max_packets) {
            Ok(report) => {
                print!("{}", report.summary());
                if let Some(path) = json {
                    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                    if let Err(e) = std::fs::write(&path, text) {
                        eprintln!("relay-loadtest: cannot write {}: {e}", path.display());
                        return ExitCode::from(1);
                    }
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
