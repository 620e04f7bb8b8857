//! `relay files put|get|ls|rm`: the file client's command line.
//!
//! CONN is `[--server HOST:PORT] [--token T] [--ca FILE | --data DIR]`: the token also comes from
//! `RELAY_TOKEN`, and the relay's certificate from `--ca` or else `<data>/tls.crt` (data default
//! `./relay-data`), so the commands work at once beside a relay on embedded defaults. With
//! `--json` the result (or the error, with its code) is one JSON object on stdout. Exit codes:
//! 0 success, 1 runtime failure, 2 usage, 3 denied.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::error::CliError;
use crate::config::Config;
use crate::datadir::{DataDir, pem_body};
use crate::files::client::{Client, ClientError, Progress, PutOptions};
use crate::files::scan_cache::{self, ScanCache};
use crate::files::wire::FileEntry;

/// How the file commands reach the relay.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// The relay's file plane, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:4433")]
    pub server: String,
    /// Bearer token with the `files` grant.
    #[arg(long, env = "RELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The relay's certificate (PEM).
    #[arg(long, conflicts_with = "data")]
    pub ca: Option<PathBuf>,
    /// Trust the certificate in this data directory (default ./relay-data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Upload a file; only chunks the relay lacks travel, and a re-run resumes.
    Put {
        path: PathBuf,
        /// Share the file into this room (its classification is the least the file gets).
        #[arg(long)]
        room: Option<String>,
        /// 0..3
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
        classification: u8,
        /// Serve the file only to terminal devices.
        #[arg(long)]
        view_only: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Download a file; a re-run resumes, and a previous version at OUT is reused.
    Get {
        id: String,
        /// Output path (default: the stored name in the current directory).
        #[arg(short = 'o', long = "output")]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the organisation's files this token may see.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a file.
    Rm {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

impl FilesCommand {
    fn conn(&self) -> &Conn {
        match self {
            FilesCommand::Put { conn, .. }
            | FilesCommand::Get { conn, .. }
            | FilesCommand::Ls { conn }
            | FilesCommand::Rm { conn, .. } => conn,
        }
    }
}

fn entry_json(e: &FileEntry) -> Value {
    json!({
        "id": e.id, "name": e.name, "size": e.size, "chunks": e.chunks,
        "classification": e.classification, "view_only": e.view_only,
        "owner": e.owner, "created": e.created,
    })
}

fn cli_error(e: &ClientError) -> CliError {
    match e {
        ClientError::Refused { .. } => CliError::Denied(e.to_string()),
        ClientError::Usage(_) => CliError::Usage(e.to_string()),
        _ => CliError::Failure(e.to_string()),
    }
}

/// Runs a file command to its end.
pub fn run(command: FilesCommand) -> Result<(), CliError> {
    crate::files::heap::keep_freed_memory(crate::files::heap::Keeper::Transfer);
    let json_out = command.conn().json;
    // One thread runs the connection and its streams, as on the relay's side (see
    // `files::server`); hashing, cutting and disk work go to the blocking pool. Two workers
    // handing the connection's work between them cost the client about an eighth more CPU per
    // GiB downloaded.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failure(format!("cannot start the runtime: {e}")))?;
    match runtime.block_on(execute(command)) {
        Ok(v) => {
            if json_out {
                println!("{v}");
            }
            Ok(())
        }
        Err(e) => {
            if json_out {
                println!("{}", json!({"error": e.code(), "message": e.to_string()}));
            }
            Err(cli_error(&e))
        }
    }
}

fn certificate(conn: &Conn) -> Result<Vec<u8>, ClientError> {
    let path = match (&conn.ca, &conn.data) {
        (Some(ca), _) => ca.clone(),
        (None, Some(d)) => DataDir::new(d).cert(),
        (None, None) => DataDir::new(Config::default().data_dir).cert(),
    };
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        ClientError::Usage(format!(
            "cannot read the relay certificate {}: {e} (use --ca FILE or --data DIR)",
            path.display()
        ))
    })?;
    pem_body(&pem, "CERTIFICATE")
        .ok_or_else(|| ClientError::Usage(format!("{} is not a PEM certificate", path.display())))
}

/// Draws a progress bar on stderr while a transfer runs, when stderr is a terminal.
fn progress_bar(progress: Arc<Progress>) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            draw(&progress);
        }
    }))
}

fn draw(progress: &Progress) {
    let done = progress.done.load(Ordering::Relaxed);
    let total = progress.total.load(Ordering::Relaxed).max(1);
    let filled = (done.min(total) * 30 / total) as usize;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprint!(
        "\r[{}{}] {:>3}% {:.1}/{:.1} MiB",
        "#".repeat(filled),
        "-".repeat(30 - filled),
        done.min(total) * 100 / total,
        mib(done),
        mib(total)
    );
    let _ = std::io::stderr().flush();
}

/// Stops the bar, leaving it at its final state: a short transfer still shows what it moved.
fn end_bar(bar: Option<tokio::task::JoinHandle<()>>, progress: &Progress) {
    if let Some(b) = bar {
        b.abort();
        draw(progress);
        eprintln!();
    }
}

async fn execute(command: FilesCommand) -> Result<Value, ClientError> {
    let conn = command.conn().clone();
    let token = conn
        .token
        .clone()
        .ok_or_else(|| ClientError::Usage("a token is needed: --token T or RELAY_TOKEN".into()))?;
    let client = Client::connect(&conn.server, certificate(&conn)?, token).await?;
    let progress = Arc::new(Progress::default());
    let result = match &command {
        FilesCommand::Put {
            path,
            room,
            classification,
            view_only,
            ..
        } => {
            let bar = progress_bar(progress.clone());
            let cache = scan_cache::default_dir().map(|d| ScanCache::new(&d));
            let opts = PutOptions {
                room: room.as_deref(),
                classification: *classification,
                view_only: *view_only,
                scan_cache: cache.as_ref(),
                stream_from: None,
            };
            let r = client.put(path, opts, progress.clone()).await;
            end_bar(bar, &progress);
            r.map(|r| {
                if !conn.json {
                    println!("{}", r.entry.id);
                }
                let mut v = entry_json(&r.entry);
                v["chunks"] = json!(r.chunks);
                v["chunks_sent"] = json!(r.chunks_sent);
                v["bytes_sent"] = json!(r.bytes_sent);
                v["resumed"] = json!(r.resumed);
                v["scan"] = json!(r.scan.as_str());
                v["manifest_parts"] = json!(r.manifest_parts);
                v
            })
        }
        FilesCommand::Get { id, out, .. } => {
            let bar = progress_bar(progress.clone());
            let r = match client.get(id, out.as_deref(), progress.clone()).await {
                // A node of a cluster that does not hold the file says which node does: the
                // download goes there, once.
                Err(ClientError::Elsewhere { addr, cert }) => {
                    let home = Client::connect(&addr, cert, client.token().to_string()).await?;
                    let r = home.get(id, out.as_deref(), progress.clone()).await;
                    home.close().await;
                    r
                }
                r => r,
            };
            end_bar(bar, &progress);
            r.map(|r| {
                if !conn.json {
                    println!("{}", r.path.display());
                }
                let mut v = entry_json(&r.entry);
                v["path"] = json!(r.path.display().to_string());
                v["chunks"] = json!(r.chunks);
                v["chunks_received"] = json!(r.chunks_received);
                v["bytes_received"] = json!(r.bytes_received);
                v["chunks_local"] = json!(r.chunks_local);
                v
            })
        }
        FilesCommand::Ls { .. } => client.list().await.map(|files| {
            if !conn.json {
                for f in &files {
                    println!(
                        "{}  {:>12}  c{}{}  {}",
                        f.id,
                        f.size,
                        f.classification,
                        if f.view_only { " view-only" } else { "" },
                        f.name
                    );
                }
            }
            json!({"files": files.iter().map(entry_json).collect::<Vec<_>>()})
        }),
        FilesCommand::Rm { id, .. } => match client.remove(id).await {
            // As a download: the node that stores the file removes it.
            Err(ClientError::Elsewhere { addr, cert }) => {
                let home = Client::connect(&addr, cert, client.token().to_string()).await?;
                let r = home.remove(id).await;
                home.close().await;
                r
            }
            r => r,
        }
        .map(|()| {
            if !conn.json {
                println!("removed {id}");
            }
            json!({"id": id, "removed": true})
        }),
    };
    client.close().await;
    result
}
