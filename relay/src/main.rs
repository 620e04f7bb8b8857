//! The `relay` binary: the appliance, its admin commands and its file client.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use relay::cli::{Cli, Command, run_offline};
use relay::config::{Config, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, data } => serve(config, data),
        other => {
            init_logging("warn", LogFormat::Text);
            match run_offline(other) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("relay: {}", e.message());
                    e.exit_code()
                }
            }
        }
    }
}

fn serve(config: Option<std::path::PathBuf>, data: Option<std::path::PathBuf>) -> ExitCode {
    let mut config = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(d) = data {
        config.data_dir = d;
    }
    init_logging(&config.log.level, config.log.format);
    relay::files::heap::keep_freed_memory(relay::files::heap::Keeper::Appliance);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(relay::serve::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay cannot run");
            eprintln!("relay: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
