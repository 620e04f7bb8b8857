//! The registry: organisations, users, devices, rooms and revocations, the live truth that every
//! request is checked against. Nothing is cached: a revocation holds from the next request on.
//!
//! [`Registry`] is what the control plane asks; [`super::sqlite::SqliteRegistry`] is the
//! appliance's embedded implementation, and [`super::postgres::PgRegistry`] a database shared by
//! a cluster of relays. Both are held to one contract: the same checks, the same errors.

use std::fmt;

use super::model::{
    CataloguedFile, Device, DeviceKind, FileNode, MAX_LEVEL, MAX_NOTICE_BYTES, Notice, Org, Room,
    User, shown,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("database error: {0}")]
    Db(rusqlite::Error),
    /// The shared database failed or could not be reached. A string, so that the error type does
    /// not carry the client's types; it never holds the database's password.
    #[error("database error: {0}")]
    Postgres(String),
    /// The database file is damaged or not ours.
    #[error("database is corrupt: {0}")]
    Corrupt(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} is not registered")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Db(e)
    }
}

impl From<postgres::Error> for RegistryError {
    fn from(e: postgres::Error) -> Self {
        // The client's own text for a server error is only "db error": the server's message
        // (and its detail, when there is one) says what went wrong.
        let text = match e.as_db_error() {
            Some(db) => match db.detail() {
                Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
                None => format!("{}: {}", db.code().code(), db.message()),
            },
            None => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        };
        RegistryError::Postgres(text)
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// "user NAME in ORG", for messages.
pub(super) fn user_named(org: &str, name: &str) -> String {
    format!("user {} in {}", shown(name), shown(org))
}

/// Names of organisations, users, devices and rooms: short, printable, no path or URL syntax.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{what} name {} must be 1 to 64 characters of A-Z a-z 0-9 - _ . @, not starting with '.'",
            shown(name)
        )))
    }
}

/// A cluster node's id: 1 to 64 characters of A-Z a-z 0-9 - _ . : [ ] (a host and port will do).
pub fn check_node_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len())
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'[' | b']')
        });
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "node id {} must be 1 to 64 characters of A-Z a-z 0-9 - _ . : [ ]",
            shown(id)
        )))
    }
}

/// A clearance or classification: 0 to [`MAX_LEVEL`].
pub fn check_level(what: &str, level: u8) -> Result<()> {
    if level <= MAX_LEVEL {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{what} must be 0 to {MAX_LEVEL}, not {level}"
        )))
    }
}

/// A notice's text: not blank, at most [`MAX_NOTICE_BYTES`], no control characters but line
/// breaks and tabs.
pub fn check_notice_text(text: &str) -> Result<()> {
    if text.trim().is_empty() {
        return Err(RegistryError::Invalid("a notice needs a text".into()));
    }
    if text.len() > MAX_NOTICE_BYTES {
        return Err(RegistryError::Invalid(format!(
            "a notice is at most {MAX_NOTICE_BYTES} bytes, not {}",
            text.len()
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(RegistryError::Invalid(
            "a notice holds no control characters but line breaks and tabs".into(),
        ));
    }
    Ok(())
}

/// The registry as the control plane uses it.
pub trait Registry: Send + fmt::Debug {
    fn add_org(&self, name: &str, quota_bytes: Option<u64>) -> Result<Org>;

    fn org(&self, name: &str) -> Result<Option<Org>>;

    fn add_user(&self, org: &str, name: &str, clearance: u8) -> Result<User>;

    /// Removes a user. Every token minted for that name before now stays refused, even if a user
    /// of the same name is registered again later.
    fn remove_user(&self, org: &str, name: &str, now: u64) -> Result<User>;

    /// Sets a user's clearance; it holds from the next request of any of the user's tokens.
    fn set_clearance(&self, org: &str, name: &str, clearance: u8) -> Result<User>;

    /// Revokes one token by its id (`jti`). Revoking twice is not an error.
    fn revoke_token(&self, org: &str, jti: &str, now: u64) -> Result<()>;

    /// Is the token `jti` of `org`'s `user`, minted at `iat`, revoked: by its id, or by the
    /// user's removal after it was minted?
    fn token_revoked(&self, org: &str, user: &str, jti: &str, iat: u64) -> Result<bool>;

    fn user(&self, org: &str, name: &str) -> Result<Option<User>>;

    fn add_device(
        &self,
        org: &str,
        id: &str,
        kind: DeviceKind,
        max_clearance: u8,
    ) -> Result<Device>;

    fn revoke_device(&self, org: &str, id: &str) -> Result<()>;

    fn device(&self, org: &str, id: &str) -> Result<Option<Device>>;

    fn add_room(
        &self,
        org: &str,
        name: &str,
        classification: u8,
        secure_view: bool,
    ) -> Result<Room>;

    fn room(&self, org: &str, name: &str) -> Result<Option<Room>>;

    /// Stores a notice for `org` (or its room `room`, which must be registered).
    fn add_notice(
        &self,
        org: &str,
        room: Option<&str>,
        text: &str,
        from: &str,
        now: u64,
    ) -> Result<Notice>;

    /// The latest `limit` notices of `org`, oldest first.
    fn notices(&self, org: &str, limit: usize) -> Result<Vec<Notice>>;

    /// Notices of every organisation with an id above `after`, oldest first, at most `limit`.
    fn notices_after(&self, after: u64, limit: usize) -> Result<Vec<Notice>>;

    /// The highest notice id of the appliance (0 before the first notice).
    fn last_notice_id(&self) -> Result<u64>;

    /// The registry's generation: it moves with every change of organisations, users, devices,
    /// rooms, revocations or notices, in the change's own transaction, from any process or node on the
    /// database (the database's triggers move it, not the code that writes).
    fn generation(&self) -> Result<u64>;

    /// The audit chain's last anchored position: (line count, hash of the last line).
    fn audit_head(&self) -> Result<Option<(u64, String)>>;

    fn set_audit_head(&self, lines: u64, hash: &str) -> Result<()>;

    /// Announces this node's file plane (its QUIC address and certificate, DER), so other nodes
    /// of a cluster can send a client there. The embedded registry serves one node: nothing to do.
    fn announce_file_plane(&self, _addr: &str, _cert: &[u8]) -> Result<()> {
        Ok(())
    }

    /// Lists `file` in the shared catalogue as stored by this node (its `node` is set here).
    fn place_file(&self, _file: &CataloguedFile) -> Result<()> {
        Ok(())
    }

    /// Takes file `id` of `org` out of the shared catalogue (it was removed).
    fn forget_file(&self, _org: &str, _id: &str) -> Result<()> {
        Ok(())
    }

    /// The other node that stores file `id` of `org`, if another node does.
    fn file_node(&self, _org: &str, _id: &str) -> Result<Option<FileNode>> {
        Ok(None)
    }

    /// `org`'s files stored by the other nodes, newest first, at most `limit`.
    fn files_elsewhere(&self, _org: &str, _limit: usize) -> Result<Vec<CataloguedFile>> {
        Ok(Vec::new())
    }
}
