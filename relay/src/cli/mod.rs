//! The command line: `relay serve | token | admin | files | store ...`.
//!
//! [`admin`]: `token` and `admin`, on the data directory or through a running appliance;
//! [`files`]: the file client; `store check` here; [`error`]: how a command fails.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error, 3 denied.

pub mod admin;
pub mod error;
pub mod files;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

pub use error::{CliError, CliResult};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "relay", version, about = "Media and file relay appliance")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance.
    Serve {
        /// TOML configuration file; without it, the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// State directory (overrides `data_dir` of the configuration).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Mint a token; prints the token alone on stdout.
    Token(admin::TokenArgs),
    /// Move files through the file plane (QUIC).
    Files {
        #[command(subcommand)]
        command: files::FilesCommand,
    },
    /// Check the file plane's chunk store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Change or check the registry and the audit log.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
        #[command(flatten)]
        target: admin::Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-hash every stored chunk against its name and recount the references of every file;
    /// exits 1 when anything is wrong. Safe beside a running relay.
    Check {
        /// The data directory (default: the configuration's).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `token`, `admin` and `files` commands. (`serve` is run by the binary, which owns the runtime.)
pub fn run_offline(command: Command) -> CliResult {
    match command {
        Command::Serve { .. } => Err(CliError::Usage("serve is not an offline command".into())),
        Command::Token(args) => admin::token(args),
        Command::Admin { command, target } => admin::admin(command, &target),
        Command::Files { command } => files::run(command),
        Command::Store {
            command: StoreCommand::Check { data, json },
        } => store_check(data, json),
    }
}

fn store_check(data: Option<PathBuf>, json: bool) -> CliResult {
    use crate::files::store::ChunkStore;
    let dir = data.unwrap_or_else(|| Config::default().data_dir);
    if !dir.join("files.db").exists() {
        return Err(CliError::Usage(format!(
            "{} holds no file store (files.db)",
            dir.display()
        )));
    }
    let store = ChunkStore::open(&dir).map_err(|e| CliError::Failure(e.to_string()))?;
    let r = store
        .check()
        .map_err(|e| CliError::Failure(e.to_string()))?;
    let hexes = |v: &[[u8; 32]]| v.iter().map(hex::encode).collect::<Vec<_>>();
    if json {
        let org: Vec<Value> = r
            .org_miscounted
            .iter()
            .map(|(o, h)| json!({ "org": o, "chunk": hex::encode(h) }))
            .collect();
        println!(
            "{}",
            json!({
                "checked": r.checked,
                "clean": r.is_clean(),
                "corrupt": hexes(&r.corrupt),
                "missing": hexes(&r.missing),
                "miscounted": hexes(&r.miscounted),
                "org_miscounted": org,
            })
        );
    } else {
        println!("checked {} chunks", r.checked);
        for (what, list) in [
            ("corrupt (bytes do not match the name)", &r.corrupt),
            ("missing", &r.missing),
            ("reference count differs from the files", &r.miscounted),
        ] {
            for h in list {
                println!("{what}: {}", hex::encode(h));
            }
        }
        for (org, h) in &r.org_miscounted {
            println!(
                "organisation {org}: reference count differs from its files: {}",
                hex::encode(h)
            );
        }
    }
    if r.is_clean() {
        if !json {
            println!("store intact");
        }
        Ok(())
    } else {
        Err(CliError::Failure("the store check found problems".into()))
    }
}
