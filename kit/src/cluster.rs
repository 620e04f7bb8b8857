//! Several relays as one appliance on loopback, for the tests and load runs of a cluster: a
//! throwaway PostgreSQL (the shared registry) and Redis (the room directory), and relay nodes
//! that read one signing key. Everything is stopped when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::postgres::Postgres;
use crate::process::RelayProcess;
use crate::redis::Redis;

/// The engines a cluster shares, and where its nodes keep their state.
#[derive(Debug)]
pub struct Engines {
    pub postgres: Postgres,
    pub redis: Redis,
    /// The signing key every node reads.
    pub key_file: PathBuf,
    dir: PathBuf,
}

/// One relay of a cluster.
#[derive(Debug)]
pub struct Node {
    pub id: String,
    pub process: RelayProcess,
    pub data: PathBuf,
    pub config: PathBuf,
}

impl Engines {
    /// Starts PostgreSQL and Redis, and writes a signing key, under `dir`.
    pub fn start(dir: &Path) -> Result<Engines, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let postgres = Postgres::start().map_err(|e| format!("PostgreSQL: {e}"))?;
        let redis = Redis::start()?;
        let key_file = dir.join("token.key");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        std::fs::write(&key_file, crate::noise(seed, 32))
            .map_err(|e| format!("{}: {e}", key_file.display()))?;
        Ok(Engines {
            postgres,
            redis,
            key_file,
            dir: dir.to_path_buf(),
        })
    }

    /// Starts node `id` of the cluster, on loopback ports of its own, with `lease` and room for
    /// `max_sessions` sessions in a room, and waits for its start-up line; `relay` is the
    /// binary.
    pub fn node(
        &self,
        relay: &Path,
        id: &str,
        lease: Duration,
        max_sessions: usize,
    ) -> Result<Node, String> {
        let data = self.dir.join(id);
        let config = self.dir.join(format!("{id}.toml"));
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"3s\"\n\
             [media]\nfirst_port = 0\nworkers = 1\nmax_sessions_per_room = {}\n\
             [files]\nlisten = \"127.0.0.1:0\"\n\
             [tokens]\nkey_file = \"{}\"\n\
             [registry]\nurl = \"{}\"\n\
             [cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\nlease = \"{}ms\"\n",
            max_sessions.max(1),
            self.key_file.display(),
            self.postgres.url(),
            self.redis.url(),
            lease.as_millis()
        );
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        let process = RelayProcess::start(relay, &config, &data, &[], Duration::from_secs(60))
            .map_err(|log| format!("node {id} did not start:\n{log}"))?;
        Ok(Node {
            id: id.to_string(),
            process,
            data,
            config,
        })
    }
}

impl Node {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.process.http)
    }

    /// `relay ARGS --data DATA --config CONFIG`, the command line on this node's state: its
    /// standard output, trimmed, or what it said on failure.
    pub fn cli(&self, relay: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(relay)
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RELAY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {}: {e}", relay.display()))?;
        if !out.status.success() {
            return Err(format!(
                "relay {args:?} on node {}: {}",
                self.id,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}
