//! The registry in the appliance's SQLite database. Several processes may open it at once (the
//! server and `relay admin --data`); WAL mode and a busy timeout let them share it.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::database::{self, Durability};

use super::model::{Device, DeviceKind, Notice, Org, Room, User, shown};
use super::registry::{
    Registry, RegistryError, Result, check_level, check_name, check_notice_text, user_named,
};

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
    r#"
CREATE TABLE notices (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    org     TEXT NOT NULL REFERENCES orgs(name),
    room    TEXT,
    text    TEXT NOT NULL,
    sender  TEXT NOT NULL,
    sent_at INTEGER NOT NULL
) STRICT;
CREATE INDEX notices_by_org ON notices (org, id);
"#,
    // The generation moves in the transaction of every change of the tables a token's standing
    // and a room's admission are checked against, and of the notices (which go out when it
    // moves), whoever writes them.
    r#"
CREATE TRIGGER orgs_insert_moves_generation AFTER INSERT ON orgs
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER orgs_update_moves_generation AFTER UPDATE ON orgs
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER orgs_delete_moves_generation AFTER DELETE ON orgs
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER users_insert_moves_generation AFTER INSERT ON users
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER users_update_moves_generation AFTER UPDATE ON users
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER users_delete_moves_generation AFTER DELETE ON users
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER devices_insert_moves_generation AFTER INSERT ON devices
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER devices_update_moves_generation AFTER UPDATE ON devices
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER devices_delete_moves_generation AFTER DELETE ON devices
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER rooms_insert_moves_generation AFTER INSERT ON rooms
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER rooms_update_moves_generation AFTER UPDATE ON rooms
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER rooms_delete_moves_generation AFTER DELETE ON rooms
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER revoked_tokens_insert_moves_generation AFTER INSERT ON revoked_tokens
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER revoked_tokens_update_moves_generation AFTER UPDATE ON revoked_tokens
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER revoked_tokens_delete_moves_generation AFTER DELETE ON revoked_tokens
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER user_removals_insert_moves_generation AFTER INSERT ON user_removals
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER user_removals_update_moves_generation AFTER UPDATE ON user_removals
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER user_removals_delete_moves_generation AFTER DELETE ON user_removals
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER notices_insert_moves_generation AFTER INSERT ON notices
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER notices_update_moves_generation AFTER UPDATE ON notices
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER notices_delete_moves_generation AFTER DELETE ON notices
    BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
"#,
];

/// Notices kept per organisation; older ones are deleted as new ones come.
const NOTICES_KEPT: i64 = 500;

fn notice_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Notice> {
    Ok(Notice {
        id: r.get::<_, i64>(0)? as u64,
        org: r.get(1)?,
        room: r.get(2)?,
        text: r.get(3)?,
        from: r.get(4)?,
        sent_at: r.get::<_, i64>(5)? as u64,
    })
}

/// An open registry database.
#[derive(Debug)]
pub struct SqliteRegistry {
    conn: Connection,
}

impl SqliteRegistry {
    /// Opens an existing database, checks it, and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteRegistry> {
        if !path.exists() {
            return Err(RegistryError::NotFound(format!(
                "database {}",
                path.display()
            )));
        }
        Self::open_or_create(path)
    }

    /// Opens the database, creating it when missing; it and its WAL are private (0600).
    pub fn open_or_create(path: &Path) -> Result<SqliteRegistry> {
        crate::private::file(path).map_err(|e| {
            RegistryError::Corrupt(format!("{}: cannot make it private: {e}", path.display()))
        })?;
        let conn = Connection::open(path)?;
        let check = |conn: &Connection| -> rusqlite::Result<String> {
            database::configure(conn, Durability::Normal)?;
            conn.query_row("PRAGMA quick_check", [], |r| r.get(0))
        };
        match check(&conn) {
            Ok(s) if s == "ok" => {}
            Ok(s) => return Err(RegistryError::Corrupt(format!("{}: {s}", path.display()))),
            Err(e) => return Err(RegistryError::Corrupt(format!("{}: {e}", path.display()))),
        }
        let mut reg = SqliteRegistry { conn };
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

    fn require_org(&self, org: &str) -> Result<()> {
        match self.org(org)? {
            Some(_) => Ok(()),
            None => Err(RegistryError::NotFound(format!(
                "organisation {}",
                shown(org)
            ))),
        }
    }

    /// Copies the write-ahead log into the main database file.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl Registry for SqliteRegistry {
    fn add_org(&self, name: &str, quota_bytes: Option<u64>) -> Result<Org> {
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

    fn org(&self, name: &str) -> Result<Option<Org>> {
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

    fn add_user(&self, org: &str, name: &str, clearance: u8) -> Result<User> {
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
    fn remove_user(&self, org: &str, name: &str, now: u64) -> Result<User> {
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
    fn set_clearance(&self, org: &str, name: &str, clearance: u8) -> Result<User> {
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
    fn revoke_token(&self, org: &str, jti: &str, now: u64) -> Result<()> {
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
    fn token_revoked(&self, org: &str, user: &str, jti: &str, iat: u64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE org = ?1 AND jti = ?3)
                     OR EXISTS (SELECT 1 FROM user_removals
                                WHERE org = ?1 AND name = ?2 AND removed_at >= ?4)",
            )?
            .query_row(params![org, user, jti, iat as i64], |r| r.get(0))?)
    }

    fn user(&self, org: &str, name: &str) -> Result<Option<User>> {
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

    fn add_device(
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

    fn revoke_device(&self, org: &str, id: &str) -> Result<()> {
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

    fn device(&self, org: &str, id: &str) -> Result<Option<Device>> {
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

    fn add_room(
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

    fn room(&self, org: &str, name: &str) -> Result<Option<Room>> {
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

    fn add_notice(
        &self,
        org: &str,
        room: Option<&str>,
        text: &str,
        from: &str,
        now: u64,
    ) -> Result<Notice> {
        check_notice_text(text)?;
        self.require_org(org)?;
        if let Some(r) = room
            && self.room(org, r)?.is_none()
        {
            return Err(RegistryError::NotFound(format!(
                "room {} in {}",
                shown(r),
                shown(org)
            )));
        }
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO notices (org, room, text, sender, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![org, room, text, from, now as i64],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "DELETE FROM notices WHERE org = ?1 \
             AND id NOT IN (SELECT id FROM notices WHERE org = ?1 ORDER BY id DESC LIMIT ?2)",
            params![org, NOTICES_KEPT],
        )?;
        tx.commit()?;
        Ok(Notice {
            id: id as u64,
            org: org.into(),
            room: room.map(Into::into),
            text: text.into(),
            from: from.into(),
            sent_at: now,
        })
    }

    fn notices(&self, org: &str, limit: usize) -> Result<Vec<Notice>> {
        let mut rows: Vec<Notice> = self
            .conn
            .prepare_cached(
                "SELECT id, org, room, text, sender, sent_at FROM notices WHERE org = ?1 \
                 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(params![org, limit as i64], notice_row)?
            .collect::<rusqlite::Result<_>>()?;
        rows.reverse();
        Ok(rows)
    }

    fn notices_after(&self, after: u64, limit: usize) -> Result<Vec<Notice>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, org, room, text, sender, sent_at FROM notices WHERE id > ?1 \
                 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after as i64, limit as i64], notice_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn last_notice_id(&self) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM notices")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    fn generation(&self) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT n FROM generation WHERE id = 1")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The audit chain's last anchored position: (line count, hash of the last line).
    fn audit_head(&self) -> Result<Option<(u64, String)>> {
        Ok(self
            .conn
            .query_row("SELECT lines, hash FROM audit_head WHERE id = 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()?)
    }

    fn set_audit_head(&self, lines: u64, hash: &str) -> Result<()> {
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

    fn temp_registry() -> (tempfile::TempDir, SqliteRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = SqliteRegistry::open_or_create(&dir.path().join("relay.db")).unwrap();
        (dir, reg)
    }

    #[test]
    fn notices_are_kept_per_organisation_and_pruned() {
        let (_d, reg) = temp_registry();
        reg.add_org("acme", None).unwrap();
        reg.add_org("other", None).unwrap();
        reg.add_room("acme", "ops", 0, false).unwrap();
        let first = reg
            .add_notice("acme", None, "fire drill", "operator", 10)
            .unwrap();
        let second = reg
            .add_notice("acme", Some("ops"), "ops only", "ann", 11)
            .unwrap();
        let theirs = reg
            .add_notice("other", None, "elsewhere", "bob", 12)
            .unwrap();
        assert!(first.id < second.id && second.id < theirs.id);
        let mine = reg.notices("acme", 10).unwrap();
        assert_eq!(mine, vec![first.clone(), second.clone()]);
        assert_eq!(reg.notices("acme", 1).unwrap(), vec![second.clone()]);
        assert_eq!(reg.last_notice_id().unwrap(), theirs.id);
        assert_eq!(
            reg.notices_after(first.id, 10).unwrap(),
            vec![second, theirs]
        );
        assert!(matches!(
            reg.add_notice("acme", Some("nowhere"), "x", "ann", 13),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.add_notice("acme", None, "  ", "ann", 13),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            reg.add_notice("acme", None, "bell\u{7}", "ann", 13),
            Err(RegistryError::Invalid(_))
        ));
        for i in 0..NOTICES_KEPT + 5 {
            reg.add_notice("acme", None, &format!("n{i}"), "ann", 20)
                .unwrap();
        }
        let kept = reg.notices("acme", 10_000).unwrap();
        assert_eq!(kept.len() as i64, NOTICES_KEPT);
        assert_eq!(kept.last().unwrap().text, format!("n{}", NOTICES_KEPT + 4));
        assert_eq!(reg.notices("other", 10).unwrap().len(), 1);
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
        let reg = SqliteRegistry::open(&dir.path().join("relay.db")).unwrap();
        assert!(reg.org("acme").unwrap().is_some());
    }

    #[test]
    fn garbage_file_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = SqliteRegistry::open(&path).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt(_)), "{err}");
        // The damaged file is left as it was, for the operator to inspect.
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
    }
}
