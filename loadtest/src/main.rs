//! `relay-loadtest`: load against a relay, and the machine's own floor to compare it with.

mod appliance;
mod capacity;
mod client;
mod driver;
mod files;
mod floor;
mod janus;
mod media;
mod output;
mod plot;
mod sys;
mod target;

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
        options: Box<target::Options>,
        #[command(flatten)]
        capacity: capacity::Options,
        /// Write every figure as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw relay packets per CPU-second, delay and loss against load as SVG here (a bare
        /// file name goes next to the --json file).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Concurrent uploads and downloads of generated files through the relay's file plane
    /// (QUIC): throughput, bytes sent versus logical bytes, and the relay's CPU per GB.
    ///
    /// Steps of 1, 2, 4, ... clients up to --clients; in each, every client uploads a random
    /// file, a compressible one and an edited copy of its random file, then downloads all three
    /// and compares them with the originals. Without --target it starts its own relay, as
    /// `media` does; with --target it takes the file plane's address from /api/info and
    /// accepts its certificate only if its SHA-256 is the one /api/info announces.
    Files {
        #[command(flatten)]
        options: files::Options,
        /// Write every figure as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw throughput and relay CPU per GB against the client count as SVG here (a bare
        /// file name goes next to the --json file).
        #[arg(long)]
        plot: Option<PathBuf>,
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

/// What a mode hands back: a report for the terminal and for `--json`, and a chart.
trait Outcome: serde::Serialize {
    fn summary(&self) -> String;
    fn chart(&self) -> Option<plot::Chart> {
        None
    }
}

impl Outcome for media::Report {
    fn summary(&self) -> String {
        media::Report::summary(self)
    }
    fn chart(&self) -> Option<plot::Chart> {
        Some(media::chart(
            &[self],
            self.floor_packets_per_cpu_second,
            None,
        ))
    }
}

impl Outcome for media::Beside {
    fn summary(&self) -> String {
        media::Beside::summary(self)
    }
    fn chart(&self) -> Option<plot::Chart> {
        Some(media::Beside::chart(self))
    }
}

impl Outcome for capacity::Report {
    fn summary(&self) -> String {
        capacity::Report::summary(self)
    }
    fn chart(&self) -> Option<plot::Chart> {
        Some(capacity::Report::chart(self))
    }
}

impl Outcome for files::Report {
    fn summary(&self) -> String {
        files::Report::summary(self)
    }
    fn chart(&self) -> Option<plot::Chart> {
        Some(files::Report::chart(self))
    }
}

impl Outcome for floor::Report {
    fn summary(&self) -> String {
        floor::Report::summary(self)
    }
}

/// Where a mode's report goes besides the terminal.
struct Outputs {
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
}

/// Runs a mode whose options passed `checked`, prints its summary and writes its JSON and
/// plot. Exit codes: 0 done, 1 the run or a write failed, 2 bad options.
fn finish<R: Outcome>(
    mode: &str,
    checked: Result<(), String>,
    run: impl FnOnce() -> Result<R, String>,
    out: Outputs,
) -> ExitCode {
    if let Err(e) = checked {
        eprintln!("relay-loadtest: {mode}: {e}");
        return ExitCode::from(2);
    }
    match run() {
        Ok(report) => {
            print!("{}", report.summary());
            let mut ok = true;
            if let Some(path) = &out.json {
                ok &= output::write_json(path, &report);
            }
            if let (Some(path), Some(chart)) = (&out.plot, report.chart()) {
                let path = output::plot_path(path, out.json.as_deref());
                ok &= output::write(&path, &plot::svg(&chart));
                println!("plot: {}", path.display());
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("relay-loadtest: {mode}: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Media {
            options: o,
            capacity: c,
            json,
            plot,
        } if c.find_capacity => finish(
            "media",
            o.check().and_then(|()| c.check()).and_then(|()| {
                if o.beside_janus || o.peer != target::PeerKind::Relay {
                    Err("--find-capacity loads our relay only".into())
                } else {
                    Ok(())
                }
            }),
            || capacity::run(&o, &c),
            Outputs { json, plot },
        ),
        Command::Media {
            options: o,
            json,
            plot,
            ..
        } if o.beside_janus => finish(
            "media",
            o.check(),
            || media::run_beside_janus(&o),
            Outputs { json, plot },
        ),
        Command::Media {
            options: o,
            json,
            plot,
            ..
        } => finish(
            "media",
            o.check(),
            || media::run(&o),
            Outputs { json, plot },
        ),
        Command::Files {
            options: o,
            json,
            plot,
        } => finish(
            "files",
            o.check(),
            || files::run(&o),
            Outputs { json, plot },
        ),
        Command::Floor {
            duration,
            max_packets,
            json,
        } => finish(
            "floor",
            Ok(()),
            || floor::measure(duration, max_packets).map_err(|e| e.to_string()),
            Outputs { json, plot: None },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
