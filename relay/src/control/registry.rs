//! The registry: organisations, users, devices and rooms, in the appliance's SQLite database.
//!
//! It is the live truth that every request is checked against: nothing here is cached, so a
//! revocation holds from the next request on. Several processes may open the database at once
//! (the server and `relay admin --data`); WAL mode and a busy timeout let them share it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Highest clearance or classification level.
pub const MAX_LEVEL: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Org {
    pub name: String,
    pub quota_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub org: String,
    pub name: String,
    pub clearance: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Browser,
    Terminal,
    Recorder,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Browser => "browser",
            DeviceKind::Terminal => "terminal",
            DeviceKind::Recorder => "recorder",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceKind> {
        [
            DeviceKind::Browser,
            DeviceKind::Terminal,
            DeviceKind::Recorder,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub org: String,
    pub id: String,
    pub kind: DeviceKind,
    pub max_clearance: u8,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Room {
    pub org: String,
    pub name: String,
    pub classification: u8,
    pub secure_view: bool,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum RegistryError {
    Db(rusqlite::Error),
    /// The database file is damaged or not ours.
    Corrupt(String),
    Exists(String),
    NotFound(String),
    Invalid(String),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::Db(e) => write!(f, "database error: {e}"),
            RegistryError::Corrupt(m) => write!(f, "database is corrupt: {m}"),
            RegistryError::Exists(m) => write!(f, "{m} already exists"),
            RegistryError::NotFound(m) => write!(f, "{m} is not registered"),
            RegistryError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Db(e)
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orgs (
    name        TEXT PRIMARY KEY NOT NULL,
    quota_bytes INTEGER
) STRICT;
CREATE TABLE users (
    org       TEXT NOT NULL REFERENCES orgs(name),
    name      TEXT NOT NULL,
    clearance INTEGER NOT NULL CHECK (clearance BETWEEN 0 AND 3),
    PRIMARY KEY (org, name)
) STRICT;
CREATE TABLE devices (
    org           TEXT NOT NULL REFERENCES orgs(name),
    id            TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('browser', 'terminal', 'recorder')),
    max_clearance INTEGER NOT NULL CHECK (max_clearance BETWEEN 0 AND 3),
    revoked       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org, id)
) STRICT;
CREATE TABLE rooms (
    org            TEXT NOT NULL REFERENCES orgs(name),
    name           TEXT NOT NULL,
    classification INTEGER NOT NULL CHECK (classification BETWEEN 0 AND 3),
    secure_view    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org, name)
) STRICT;
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    lines INTEGER NOT NULL,
    hash  TEXT NOT NULL
) STRICT;
"#,
    r#"
CREATE TABLE revoked_tokens (
    org        TEXT NOT NULL REFERENCES orgs(name),
    jti        TEXT NOT NULL,
    revoked_at INTEGER NOT NULL,
    PRIMARY KEY (org, jti)
) STRICT, WITHOUT ROWID;
CREATE TABLE generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
) STRICT;
INSERT INTO generation (id, n) VALUES (1, 0);
CREATE TABLE user_removals (
    org        TEXT NOT NULL REFERENCES orgs(name),
    name       TEXT NOT NULL,
    removed_at INTEGER NOT NULL,
    PRIMARY KEY (org, name)
) STRICT, WITHOUT ROWID;
"#,
];

/// A name as an error message shows it: at most 64 characters, so a huge name given by a client
/// is not echoed back whole.
pub fn shown(name: &str) -> String {
    let clipped = clip(name, 64);
    if clipped.len() == name.len() {
        format!("{name:?}")
    } else {
        format!("{clipped:?}... ({} bytes)", name.len())
    }
}

/// At most the first `max` characters of `text`.
pub fn clip(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// "user NAME in ORG", for messages.
fn user_named(org: &str, name: &str) -> String {
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

/// An open registry database.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
}

impl Registry {
    /// Opens an existing database, checks it, and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Registry> {
        if !path.exists() {
            return Err(RegistryError::NotFound(format!(
                "database {}",
                path.display()
            )));
        }
        Self::open_or_create(path)
    }

    /// Opens the database, creating it when missing; it and its WAL are private (0600).
    pub fn open_or_create(path: &Path) -> Result<Registry> {
        crate::private::file(path).map_err(|e| {
            RegistryError::Corrupt(format!("{}: cannot make it private: {e}", path.display()))
        })?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let check = |conn: &Connection| -> rusqlite::Result<String> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.query_row("PRAGMA quick_check", [], |r| r.get(0))
        };
        match check(&conn) {
            Ok(s) if s == "ok" => {}
            Ok(s) => return Err(RegistryError::Corrupt(format!("{}: {s}", path.display()))),
            Err(e) => return Err(RegistryError::Corrupt(format!("{}: {e}", path.display()))),
        }
        let mut reg = Registry { conn };
        reg.migrate()?;
        Ok(reg)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            return Err(RegistryError::Corrupt(format!(
                "schema version {version} is newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn add_org(&self, name: &str, quota_bytes: Option<u64>) -> Result<Org> {
        check_name("organisation", name)?;
        let quota = quota_bytes
            .map(|q| i64::try_from(q).map_err(|_| RegistryError::Invalid("quota too large".into())))
            .transpose()?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO orgs (name, quota_bytes) VALUES (?1, ?2)",
            params![name, quota],
        )?;
        if n == 0 {
            return Err(RegistryError::Exists(format!(
                "organisation {}",
                shown(name)
            )));
        }
        Ok(Org {
            name: name.into(),
            quota_bytes,
        })
    }

    pub fn org(&self, name: &str) -> Result<Option<Org>> {
        Ok(self
            .conn
            .prepare_cached("SELECT name, quota_bytes FROM orgs WHERE name = ?1")?
            .query_row([name], |r| {
                Ok(Org {
                    name: r.get(0)?,
                    quota_bytes: r.get::<_, Option<i64>>(1)?.map(|q| q as u64),
                })
            })
            .optional()?)
    }

    fn require_org(&self, org: &str) -> Result<()> {
        match self.org(org)? {
            Some(_) => Ok(()),
            None => Err(RegistryError::NotFound(format!(
                "organisation {}",
                shown(org)
            ))),
        }
    }

    pub fn add_user(&self, org: &str, name: &str, clearance: u8) -> Result<User> {
        check_name("user", name)?;
        check_level("clearance", clearance)?;
        self.require_org(org)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO users (org, name, clearance) VALUES (?1, ?2, ?3)",
            params![org, name, clearance],
        )?;
        if n == 0 {
            return Err(RegistryError::Exists(user_named(org, name)));
        }
        Ok(User {
            org: org.into(),
            name: name.into(),
            clearance,
        })
    }

    /// Removes a user. Every token minted for that name before now stays refused, even if a user
    /// of the same name is registered again later.
    pub fn remove_user(&self, org: &str, name: &str, now: u64) -> Result<User> {
        let user = self
            .user(org, name)?
            .ok_or_else(|| RegistryError::NotFound(user_named(org, name)))?;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "DELETE FROM users WHERE org = ?1 AND name = ?2",
            params![org, name],
        )?;
        tx.execute(
            "INSERT INTO user_removals (org, name, removed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (org, name) DO UPDATE SET removed_at = excluded.removed_at",
            params![org, name, now as i64],
        )?;
        tx.commit()?;
        Ok(user)
    }

    /// Sets a user's clearance; it holds from the next request of any of the user's tokens.
    pub fn set_clearance(&self, org: &str, name: &str, clearance: u8) -> Result<User> {
        check_level("clearance", clearance)?;
        let n = self.conn.execute(
            "UPDATE users SET clearance = ?3 WHERE org = ?1 AND name = ?2",
            params![org, name, clearance],
        )?;
        if n == 0 {
            return Err(RegistryError::NotFound(user_named(org, name)));
        }
        Ok(User {
            org: org.into(),
            name: name.into(),
            clearance,
        })
    }

    /// Revokes one token by its id (`jti`). Revoking twice is not an error.
    pub fn revoke_token(&self, org: &str, jti: &str, now: u64) -> Result<()> {
        if jti.is_empty() || jti.len() > 64 || !jti.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Invalid(format!(
                "token id {} must be the hexadecimal id a token carries",
                shown(jti)
            )));
        }
        self.require_org(org)?;
        self.conn.execute(
            "INSERT OR IGNORE INTO revoked_tokens (org, jti, revoked_at) VALUES (?1, ?2, ?3)",
            params![org, jti, now as i64],
        )?;
        Ok(())
    }

    /// Is the token `jti` of `org`'s `user`, minted at `iat`, revoked: by its id, or by the
    /// user's removal after it was minted?
    pub fn token_revoked(&self, org: &str, user: &str, jti: &str, iat: u64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE org = ?1 AND jti = ?3)
                     OR EXISTS (SELECT 1 FROM user_removals
                                WHERE org = ?1 AND name = ?2 AND removed_at >= ?4)",
            )?
            .query_row(params![org, user, jti, iat as i64], |r| r.get(0))?)
    }

    pub fn user(&self, org: &str, name: &str) -> Result<Option<User>> {
        Ok(self
            .conn
            .prepare_cached("SELECT clearance FROM users WHERE org = ?1 AND name = ?2")?
            .query_row([org, name], |r| {
                Ok(User {
                    org: org.into(),
                    name: name.into(),
                    clearance: r.get(0)?,
                })
            })
            .optional()?)
    }

    pub fn add_device(
        &self,
        org: &str,
        id: &str,
        kind: DeviceKind,
        max_clearance: u8,
    ) -> Result<Device> {
        check_name("device", id)?;
        check_level("max clearance", max_clearance)?;
        self.require_org(org)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO devices (org, id, kind, max_clearance) VALUES (?1, ?2, ?3, ?4)",
            params![org, id, kind.as_str(), max_clearance],
        )?;
        if n == 0 {
            return Err(RegistryError::Exists(format!(
                "device {} in {}",
                shown(id),
                shown(org)
            )));
        }
        Ok(Device {
            org: org.into(),
            id: id.into(),
            kind,
            max_clearance,
            revoked: false,
        })
    }

    pub fn revoke_device(&self, org: &str, id: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE devices SET revoked = 1 WHERE org = ?1 AND id = ?2",
            [org, id],
        )?;
        if n == 0 {
            return Err(RegistryError::NotFound(format!(
                "device {} in {}",
                shown(id),
                shown(org)
            )));
        }
        Ok(())
    }

    pub fn device(&self, org: &str, id: &str) -> Result<Option<Device>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT kind, max_clearance, revoked FROM devices WHERE org = ?1 AND id = ?2",
            )?
            .query_row([org, id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })
            .optional()?;
        row.map(|(kind, max_clearance, revoked)| {
            let kind = DeviceKind::parse(&kind)
                .ok_or_else(|| RegistryError::Corrupt(format!("device {id}: kind {kind:?}")))?;
            Ok(Device {
                org: org.into(),
                id: id.into(),
                kind,
                max_clearance,
                revoked,
            })
        })
        .transpose()
    }

    pub fn add_room(
        &self,
        org: &str,
        name: &str,
        classification: u8,
        secure_view: bool,
    ) -> Result<Room> {
        check_name("room", name)?;
        check_level("classification", classification)?;
        self.require_org(org)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO rooms (org, name, classification, secure_view) VALUES (?1, ?2, ?3, ?4)",
            params![org, name, classification, secure_view],
        )?;
        if n == 0 {
            return Err(RegistryError::Exists(format!(
                "room {} in {}",
                shown(name),
                shown(org)
            )));
        }
        Ok(Room {
            org: org.into(),
            name: name.into(),
            classification,
            secure_view,
        })
    }

    pub fn room(&self, org: &str, name: &str) -> Result<Option<Room>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT classification, secure_view FROM rooms WHERE org = ?1 AND name = ?2",
            )?
            .query_row([org, name], |r| {
                Ok(Room {
                    org: org.into(),
                    name: name.into(),
                    classification: r.get(0)?,
                    secure_view: r.get(1)?,
                })
            })
            .optional()?)
    }

    /// The registry's generation: it moves with every change of users, devices, rooms or
    /// revocations, from any process on the database.
    pub fn generation(&self) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT n FROM generation WHERE id = 1")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Moves the generation on, after a change.
    pub fn bump_generation(&self) -> Result<()> {
        self.conn
            .execute("UPDATE generation SET n = n + 1 WHERE id = 1", [])?;
        Ok(())
    }

    /// Copies the write-ahead log into the main database file.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The audit chain's last anchored position: (line count, hash of the last line).
    pub fn audit_head(&self) -> Result<Option<(u64, String)>> {
        Ok(self
            .conn
            .query_row("SELECT lines, hash FROM audit_head WHERE id = 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    pub fn set_audit_head(&self, lines: u64, hash: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO audit_head (id, lines, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET lines = excluded.lines, hash = excluded.hash",
            params![lines as i64, hash],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_registry() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open_or_create(&dir.path().join("relay.db")).unwrap();
        (dir, reg)
    }

    #[test]
    fn register_and_look_up() {
        let (_d, reg) = temp_registry();
        reg.add_org("acme", Some(1 << 30)).unwrap();
        assert!(matches!(
            reg.add_org("acme", None),
            Err(RegistryError::Exists(_))
        ));
        reg.add_user("acme", "ann", 2).unwrap();
        reg.add_device("acme", "pc1", DeviceKind::Terminal, 3)
            .unwrap();
        reg.add_room("acme", "ops", 1, true).unwrap();
        assert_eq!(reg.org("acme").unwrap().unwrap().quota_bytes, Some(1 << 30));
        assert_eq!(reg.user("acme", "ann").unwrap().unwrap().clearance, 2);
        assert!(reg.user("other", "ann").unwrap().is_none());
        let d = reg.device("acme", "pc1").unwrap().unwrap();
        assert_eq!(
            (d.kind, d.max_clearance, d.revoked),
            (DeviceKind::Terminal, 3, false)
        );
        reg.revoke_device("acme", "pc1").unwrap();
        assert!(reg.device("acme", "pc1").unwrap().unwrap().revoked);
        assert!(matches!(
            reg.revoke_device("acme", "nope"),
            Err(RegistryError::NotFound(_))
        ));
        let r = reg.room("acme", "ops").unwrap().unwrap();
        assert_eq!((r.classification, r.secure_view), (1, true));
    }

    #[test]
    fn rejects_bad_input() {
        let (_d, reg) = temp_registry();
        assert!(matches!(
            reg.add_user("ghost", "ann", 1),
            Err(RegistryError::NotFound(_))
        ));
        reg.add_org("acme", None).unwrap();
        assert!(matches!(
            reg.add_user("acme", "ann", 4),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            reg.add_user("acme", "a/b", 1),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            reg.add_user("acme", "", 1),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            reg.add_room("acme", "..", 0, false),
            Err(RegistryError::Invalid(_))
        ));
    }

    #[test]
    fn reopen_keeps_data_and_schema() {
        let (dir, reg) = temp_registry();
        reg.add_org("acme", None).unwrap();
        drop(reg);
        let reg = Registry::open(&dir.path().join("relay.db")).unwrap();
        assert!(reg.org("acme").unwrap().is_some());
    }

    #[test]
    fn garbage_file_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Registry::open(&path).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt(_)), "{err}");
        // The damaged file is left as it was, for the operator to inspect.
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
    }
}
