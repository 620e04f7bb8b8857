//! What a node's control plane stands on, as its configuration names them: the registry (SQLite
//! in the data directory, or one PostgreSQL shared by the nodes of a cluster) and the token
//! signing key (the data directory's, or one file every node reads). `relay serve` and the
//! commands that work on a node's state (`relay token`, `relay admin --data`) open them here
//! alike, so a command run beside any node sees what that node sees.

use crate::config::Config;
use crate::control::registry::{Registry, RegistryError};
use crate::control::sqlite::SqliteRegistry;
use crate::control::token::SigningKey;
use crate::datadir::{self, DataDir, DataDirError};

/// The registry the configuration names.
pub fn registry(config: &Config, dir: &DataDir) -> Result<Box<dyn Registry>, RegistryError> {
    if config.registry.url.is_empty() {
        Ok(Box::new(SqliteRegistry::open(&dir.db())?))
    } else {
        Ok(Box::new(crate::control::postgres::PgRegistry::connect(
            &config.registry.url,
            &config.node_id(),
        )?))
    }
}

/// The token signing key the configuration names: `tokens.key_file`, or the data directory's.
pub fn signing_key(config: &Config, dir: &DataDir) -> Result<SigningKey, DataDirError> {
    match &config.tokens.key_file {
        Some(path) => datadir::read_signing_key(path),
        None => datadir::read_signing_key(&dir.signing_key()),
    }
}
