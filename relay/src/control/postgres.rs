//! The registry in a PostgreSQL database shared by a cluster of relays: every node sees every
//! change of users, devices, rooms, revocations and notices from its next request on.
//!
//! It keeps [`SqliteRegistry`](super::sqlite::SqliteRegistry)'s contract: the same checks, the
//! same errors, 500 notices kept per organisation, the generation moved by any node. What is
//! not shared is the audit head: each node keeps its own audit chain and anchors its head under
//! its node id.
//!
//! Invariants:
//! - the schema is brought up to date at connect, in one transaction under an advisory lock, so
//!   nodes starting together against an empty database do not race;
//! - notice ids are handed out and committed in order (under a lock), so a reader that follows
//!   [`Registry::notices_after`] never skips a notice committed after a higher one;
//! - the database's password is never part of an error message or of `Debug`.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, Config, NoTls, Row, Transaction};

use super::model::{CataloguedFile, Device, DeviceKind, FileNode, Notice, Org, Room, User, shown};
use super::registry::{
    Registry, RegistryError, Result, check_level, check_name, check_node_id, check_notice_text,
    user_named,
};

/// Schema migrations, applied in order; the table `schema_version` lists those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE orgs (
    name        TEXT PRIMARY KEY,
    quota_bytes BIGINT CHECK (quota_bytes >= 0)
);
CREATE TABLE users (
    org       TEXT NOT NULL REFERENCES orgs(name),
    name      TEXT NOT NULL,
    clearance SMALLINT NOT NULL CHECK (clearance BETWEEN 0 AND 3),
    PRIMARY KEY (org, name)
);
CREATE TABLE devices (
    org           TEXT NOT NULL REFERENCES orgs(name),
    id            TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('browser', 'terminal', 'recorder')),
    max_clearance SMALLINT NOT NULL CHECK (max_clearance BETWEEN 0 AND 3),
    revoked       BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (org, id)
);
CREATE TABLE rooms (
    org            TEXT NOT NULL REFERENCES orgs(name),
    name           TEXT NOT NULL,
    classification SMALLINT NOT NULL CHECK (classification BETWEEN 0 AND 3),
    secure_view    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (org, name)
);
CREATE TABLE revoked_tokens (
    org        TEXT NOT NULL REFERENCES orgs(name),
    jti        TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    PRIMARY KEY (org, jti)
);
CREATE TABLE user_removals (
    org        TEXT NOT NULL REFERENCES orgs(name),
    name       TEXT NOT NULL,
    removed_at BIGINT NOT NULL,
    PRIMARY KEY (org, name)
);
CREATE TABLE generation (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO generation (id, n) VALUES (1, 0);
CREATE TABLE notices (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org     TEXT NOT NULL REFERENCES orgs(name),
    room    TEXT,
    text    TEXT NOT NULL,
    sender  TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE INDEX notices_by_org ON notices (org, id);
CREATE TABLE audit_heads (
    node  TEXT PRIMARY KEY,
    lines BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE file_planes (
    node TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    cert BYTEA NOT NULL
);
CREATE TABLE files (
    org            TEXT NOT NULL,
    id             TEXT NOT NULL,
    node           TEXT NOT NULL,
    owner          TEXT NOT NULL,
    name           TEXT NOT NULL,
    room           TEXT,
    size           BIGINT NOT NULL,
    chunks         BIGINT NOT NULL,
    classification SMALLINT NOT NULL,
    view_only      BOOLEAN NOT NULL,
    created        BIGINT NOT NULL,
    PRIMARY KEY (org, id)
);
CREATE INDEX files_by_org ON files (org, created);
"#,
    // The generation moves in the transaction of every change of the tables a token's standing
    // and a room's admission are checked against, and of the notices (which go out when it
    // moves), whichever node writes them.
    r#"
CREATE FUNCTION relay_move_generation() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE generation SET n = n + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;
CREATE TRIGGER orgs_move_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON orgs
    FOR EACH STATEMENT EXECUTE FUNCTION relay_move_generation();
CREATE TRIGGER users_move_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION relay_move_generation();
CREATE TRIGGER devices_move_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION relay_move_generation();
CREATE TRIGGER rooms_move_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rooms
    FOR EACH STATEMENT EXECUTE FUNCTION relay_move_generation();
CREATE TRIGGER revoked_tokens_move_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON revoked_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION relay_move_generation();
CREATE TRIGGER user_removals_move_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON user_removals
    FOR EACH STATEMENT EXECUTE FUNCTION relay_move_generation();
CREATE TRIGGER notices_move_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON notices
    FOR EACH STATEMENT EXECUTE FUNCTION relay_move_generation();
"#,
];

/// Notices kept per organisation; older ones are deleted as new ones come.
const NOTICES_KEPT: i64 = 500;

/// Advisory lock held by the transaction that migrates the schema ("relay" + 1).
const MIGRATION_LOCK: i64 = 0x7265_6c61_7901;

/// Advisory lock held by the transaction that stores a notice ("relay" + 2): ids are then
/// committed in the order they are handed out.
const NOTICE_LOCK: i64 = 0x7265_6c61_7902;

/// How long a connect may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A call carried to the connection's thread.
type Job = Box<dyn FnOnce(&mut Link) + Send>;

/// The registry in a shared PostgreSQL database.
///
/// `postgres::Client` drives its connection on a tokio runtime of its own and panics when it is
/// used on a thread that is already inside a runtime, which is where the control plane asks the
/// registry (from the HTTP handlers). So the client lives on a thread of its own, and each call
/// is carried to it and waited for: the registry stays synchronous for its callers, as SQLite's
/// is, and no caller's runtime ever sees the client's.
#[derive(Debug)]
pub struct PgRegistry {
    jobs: mpsc::Sender<Job>,
    /// This relay's node id: the key of its audit head.
    node: String,
}

/// The connection, owned by its thread; it is made again when it was lost.
struct Link {
    config: Config,
    /// Where the database is, for messages: host, port and database, never the password.
    target: String,
    client: Option<Client>,
}

impl Link {
    fn connect(&self) -> Result<Client> {
        self.config
            .connect(NoTls)
            .map_err(|e| match RegistryError::from(e) {
                RegistryError::Postgres(why) => {
                    RegistryError::Postgres(format!("cannot connect to {}: {why}", self.target))
                }
                other => other,
            })
    }

    /// Runs `f` on the connection, connecting first when there is none or it was lost. A lost
    /// connection fails the call that finds it lost; the next call connects again.
    fn run<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(self.connect()?);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(RegistryError::Postgres(format!(
                "no connection to {}",
                self.target
            )));
        };
        let result = f(client);
        if client.is_closed() {
            self.client = None;
        }
        result
    }
}

/// "database NAME on HOST:PORT", without user or password.
fn target(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(::postgres::config::Host::Tcp(h)) => h.clone(),
        Some(::postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("database {db:?} on {host}:{port}")
}

fn stopped() -> RegistryError {
    RegistryError::Postgres("the database connection's thread has stopped".into())
}

impl PgRegistry {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, without TLS)
    /// as the relay `node`, and brings the schema up to date.
    pub fn connect(url: &str, node: &str) -> Result<PgRegistry> {
        check_node_id(node)?;
        // The parse error names what is wrong, never the value, so the password stays out.
        let mut config: Config = url.parse().map_err(|e: ::postgres::Error| {
            RegistryError::Invalid(format!("the database URL is not valid: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name(&format!("relay {node}"));
        }
        let mut link = Link {
            target: target(&config),
            config,
            client: None,
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::sync_channel::<Result<()>>(1);
        thread::Builder::new()
            .name(format!("registry-db-{node}"))
            .spawn(move || {
                let first = link.run(migrate);
                let ok = first.is_ok();
                if ready.send(first).is_err() || !ok {
                    return;
                }
                // Ends when the registry is dropped and its sender with it.
                for job in queue {
                    job(&mut link);
                }
            })
            .map_err(|e| {
                RegistryError::Postgres(format!("cannot start the database thread: {e}"))
            })?;
        started.recv().map_err(|_| stopped())??;
        Ok(PgRegistry {
            jobs,
            node: node.into(),
        })
    }

    /// Runs `f` with the connection, on the connection's thread, and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |link: &mut Link| {
            // The caller may have gone; its answer then has no one to go to.
            let _ = reply.send(link.run(f));
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// This relay's node id, under which its audit head is kept.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Every node's anchored audit head: (node, line count, hash of the last line), by node.
    pub fn audit_heads(&self) -> Result<Vec<(String, u64, String)>> {
        self.call(|c| {
            c.query(
                "SELECT node, lines, hash FROM audit_heads ORDER BY node",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64, r.try_get(2)?)))
            .collect()
        })
    }
}

/// Brings the schema up to date: in one transaction, under a lock every node takes first.
fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let version: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .try_get(0)?;
    let version = usize::try_from(version)
        .map_err(|_| RegistryError::Corrupt(format!("schema version {version}")))?;
    if version > MIGRATIONS.len() {
        return Err(RegistryError::Corrupt(format!(
            "schema version {version} is newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(sql)?;
        let applied = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&applied],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// PostgreSQL's text holds no NUL, so a key with one is in no row: lookups answer "not there"
/// without asking, as SQLite's would.
fn storable(keys: &[&str]) -> bool {
    keys.iter().all(|k| !k.contains('\0'))
}

/// A level as stored; the schema's checks keep it 0 to 3.
fn level(row: &Row, i: usize) -> Result<u8> {
    let v: i16 = row.try_get(i)?;
    u8::try_from(v).map_err(|_| RegistryError::Corrupt(format!("level {v}")))
}

fn notice_row(r: &Row) -> Result<Notice> {
    Ok(Notice {
        id: r.try_get::<_, i64>(0)? as u64,
        org: r.try_get(1)?,
        room: r.try_get(2)?,
        text: r.try_get(3)?,
        from: r.try_get(4)?,
        sent_at: r.try_get::<_, i64>(5)? as u64,
    })
}

fn org_missing(org: &str) -> RegistryError {
    RegistryError::NotFound(format!("organisation {}", shown(org)))
}

/// An insert's failure in the registry's terms: the row is there already (`exists`), or its
/// organisation is not (a foreign key, as SQLite's check before the insert would find).
fn insert_error(e: ::postgres::Error, org: &str, exists: impl FnOnce() -> String) -> RegistryError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => RegistryError::Exists(exists()),
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => org_missing(org),
        _ => e.into(),
    }
}

fn require_org(tx: &mut Transaction<'_>, org: &str) -> Result<()> {
    let found = storable(&[org])
        && tx
            .query_opt("SELECT 1 FROM orgs WHERE name = $1", &[&org])?
            .is_some();
    if found { Ok(()) } else { Err(org_missing(org)) }
}

fn device_named(org: &str, id: &str) -> String {
    format!("device {} in {}", shown(id), shown(org))
}

fn room_named(org: &str, name: &str) -> String {
    format!("room {} in {}", shown(name), shown(org))
}

impl Registry for PgRegistry {
    fn add_org(&self, name: &str, quota_bytes: Option<u64>) -> Result<Org> {
        check_name("organisation", name)?;
        let quota = quota_bytes
            .map(|q| i64::try_from(q).map_err(|_| RegistryError::Invalid("quota too large".into())))
            .transpose()?;
        let owned = name.to_owned();
        let n = self.call(move |c| {
            c.execute(
                "INSERT INTO orgs (name, quota_bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&owned, &quota],
            )
            .map_err(|e| insert_error(e, &owned, || format!("organisation {}", shown(&owned))))
        })?;
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
        if !storable(&[name]) {
            return Ok(None);
        }
        let name = name.to_owned();
        self.call(move |c| {
            c.query_opt(
                "SELECT name, quota_bytes FROM orgs WHERE name = $1",
                &[&name],
            )?
            .map(|r| {
                Ok(Org {
                    name: r.try_get(0)?,
                    quota_bytes: r.try_get::<_, Option<i64>>(1)?.map(|q| q as u64),
                })
            })
            .transpose()
        })
    }

    fn add_user(&self, org: &str, name: &str, clearance: u8) -> Result<User> {
        check_name("user", name)?;
        check_level("clearance", clearance)?;
        let (o, u) = (org.to_owned(), name.to_owned());
        let n = self.call(move |c| {
            let mut tx = c.transaction()?;
            require_org(&mut tx, &o)?;
            let n = tx
                .execute(
                    "INSERT INTO users (org, name, clearance) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&o, &u, &i16::from(clearance)],
                )
                .map_err(|e| insert_error(e, &o, || user_named(&o, &u)))?;
            tx.commit()?;
            Ok(n)
        })?;
        if n == 0 {
            return Err(RegistryError::Exists(user_named(org, name)));
        }
        Ok(User {
            org: org.into(),
            name: name.into(),
            clearance,
        })
    }

    fn remove_user(&self, org: &str, name: &str, now: u64) -> Result<User> {
        if !storable(&[org, name]) {
            return Err(RegistryError::NotFound(user_named(org, name)));
        }
        let (o, u) = (org.to_owned(), name.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            let Some(row) = tx.query_opt(
                "DELETE FROM users WHERE org = $1 AND name = $2 RETURNING clearance",
                &[&o, &u],
            )?
            else {
                return Err(RegistryError::NotFound(user_named(&o, &u)));
            };
            let clearance = level(&row, 0)?;
            tx.execute(
                "INSERT INTO user_removals (org, name, removed_at) VALUES ($1, $2, $3)
                 ON CONFLICT (org, name) DO UPDATE SET removed_at = excluded.removed_at",
                &[&o, &u, &(now as i64)],
            )?;
            tx.commit()?;
            Ok(User {
                org: o,
                name: u,
                clearance,
            })
        })
    }

    fn set_clearance(&self, org: &str, name: &str, clearance: u8) -> Result<User> {
        check_level("clearance", clearance)?;
        if !storable(&[org, name]) {
            return Err(RegistryError::NotFound(user_named(org, name)));
        }
        let (o, u) = (org.to_owned(), name.to_owned());
        let n = self.call(move |c| {
            Ok(c.execute(
                "UPDATE users SET clearance = $3 WHERE org = $1 AND name = $2",
                &[&o, &u, &i16::from(clearance)],
            )?)
        })?;
        if n == 0 {
            return Err(RegistryError::NotFound(user_named(org, name)));
        }
        Ok(User {
            org: org.into(),
            name: name.into(),
            clearance,
        })
    }

    fn revoke_token(&self, org: &str, jti: &str, now: u64) -> Result<()> {
        if jti.is_empty() || jti.len() > 64 || !jti.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::Invalid(format!(
                "token id {} must be the hexadecimal id a token carries",
                shown(jti)
            )));
        }
        let (o, j) = (org.to_owned(), jti.to_owned());
        self.call(move |c| {
            let mut tx = c.transaction()?;
            require_org(&mut tx, &o)?;
            tx.execute(
                "INSERT INTO revoked_tokens (org, jti, revoked_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&o, &j, &(now as i64)],
            )
            .map_err(|e| insert_error(e, &o, String::new))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn token_revoked(&self, org: &str, user: &str, jti: &str, iat: u64) -> Result<bool> {
        if !storable(&[org, user, jti]) {
            return Ok(false);
        }
        let (o, u, j) = (org.to_owned(), user.to_owned(), jti.to_owned());
        self.call(move |c| {
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE org = $1 AND jti = $3)
                     OR EXISTS (SELECT 1 FROM user_removals
                                WHERE org = $1 AND name = $2 AND removed_at >= $4)",
                &[&o, &u, &j, &(iat as i64)],
            )?
            .try_get(0)?)
        })
    }

    fn user(&self, org: &str, name: &str) -> Result<Option<User>> {
        if !storable(&[org, name]) {
            return Ok(None);
        }
        let (o, u) = (org.to_owned(), name.to_owned());
        self.call(move |c| {
            let Some(row) = c.query_opt(
                "SELECT clearance FROM users WHERE org = $1 AND name = $2",
                &[&o, &u],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(User {
                clearance: level(&row, 0)?,
                org: o,
                name: u,
            }))
        })
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
        let (o, d) = (org.to_owned(), id.to_owned());
        let n = self.call(move |c| {
            let mut tx = c.transaction()?;
            require_org(&mut tx, &o)?;
            let n = tx
                .execute(
                    "INSERT INTO devices (org, id, kind, max_clearance) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&o, &d, &kind.as_str(), &i16::from(max_clearance)],
                )
                .map_err(|e| insert_error(e, &o, || device_named(&o, &d)))?;
            tx.commit()?;
            Ok(n)
        })?;
        if n == 0 {
            return Err(RegistryError::Exists(device_named(org, id)));
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
        if !storable(&[org, id]) {
            return Err(RegistryError::NotFound(device_named(org, id)));
        }
        let (o, d) = (org.to_owned(), id.to_owned());
        let n = self.call(move |c| {
            Ok(c.execute(
                "UPDATE devices SET revoked = TRUE WHERE org = $1 AND id = $2",
                &[&o, &d],
            )?)
        })?;
        if n == 0 {
            return Err(RegistryError::NotFound(device_named(org, id)));
        }
        Ok(())
    }

    fn device(&self, org: &str, id: &str) -> Result<Option<Device>> {
        if !storable(&[org, id]) {
            return Ok(None);
        }
        let (o, d) = (org.to_owned(), id.to_owned());
        self.call(move |c| {
            let Some(row) = c.query_opt(
                "SELECT kind, max_clearance, revoked FROM devices WHERE org = $1 AND id = $2",
                &[&o, &d],
            )?
            else {
                return Ok(None);
            };
            let kind: String = row.try_get(0)?;
            let kind = DeviceKind::parse(&kind)
                .ok_or_else(|| RegistryError::Corrupt(format!("device {d}: kind {kind:?}")))?;
            Ok(Some(Device {
                max_clearance: level(&row, 1)?,
                revoked: row.try_get(2)?,
                org: o,
                id: d,
                kind,
            }))
        })
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
        let (o, r) = (org.to_owned(), name.to_owned());
        let n = self.call(move |c| {
            let mut tx = c.transaction()?;
            require_org(&mut tx, &o)?;
            let n = tx
                .execute(
                    "INSERT INTO rooms (org, name, classification, secure_view)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&o, &r, &i16::from(classification), &secure_view],
                )
                .map_err(|e| insert_error(e, &o, || room_named(&o, &r)))?;
            tx.commit()?;
            Ok(n)
        })?;
        if n == 0 {
            return Err(RegistryError::Exists(room_named(org, name)));
        }
        Ok(Room {
            org: org.into(),
            name: name.into(),
            classification,
            secure_view,
        })
    }

    fn room(&self, org: &str, name: &str) -> Result<Option<Room>> {
        if !storable(&[org, name]) {
            return Ok(None);
        }
        let (o, r) = (org.to_owned(), name.to_owned());
        self.call(move |c| {
            let Some(row) = c.query_opt(
                "SELECT classification, secure_view FROM rooms WHERE org = $1 AND name = $2",
                &[&o, &r],
            )?
            else {
                return Ok(None);
            };
            Ok(Some(Room {
                classification: level(&row, 0)?,
                secure_view: row.try_get(1)?,
                org: o,
                name: r,
            }))
        })
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
        if !storable(&[from]) {
            return Err(RegistryError::Invalid(
                "a notice's sender holds no NUL character".into(),
            ));
        }
        let (o, rm, t, f) = (
            org.to_owned(),
            room.map(str::to_owned),
            text.to_owned(),
            from.to_owned(),
        );
        self.call(move |c| {
            let mut tx = c.transaction()?;
            require_org(&mut tx, &o)?;
            if let Some(r) = &rm {
                let found = storable(&[r])
                    && tx
                        .query_opt("SELECT 1 FROM rooms WHERE org = $1 AND name = $2", &[&o, r])?
                        .is_some();
                if !found {
                    return Err(RegistryError::NotFound(room_named(&o, r)));
                }
            }
            // Held to the commit: the next notice's id is taken only after this one is seen.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&NOTICE_LOCK])?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO notices (org, room, text, sender, sent_at)
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[&o, &rm, &t, &f, &(now as i64)],
                )
                .map_err(|e| insert_error(e, &o, String::new))?
                .try_get(0)?;
            tx.execute(
                "DELETE FROM notices WHERE org = $1 AND id NOT IN
                     (SELECT id FROM notices WHERE org = $1 ORDER BY id DESC LIMIT $2)",
                &[&o, &NOTICES_KEPT],
            )?;
            tx.commit()?;
            Ok(Notice {
                id: id as u64,
                org: o,
                room: rm,
                text: t,
                from: f,
                sent_at: now,
            })
        })
    }

    fn notices(&self, org: &str, limit: usize) -> Result<Vec<Notice>> {
        if !storable(&[org]) {
            return Ok(Vec::new());
        }
        let o = org.to_owned();
        // No limit (NULL) where SQLite's would be negative, that is none.
        let limit = i64::try_from(limit).ok();
        self.call(move |c| {
            let mut rows = c
                .query(
                    "SELECT id, org, room, text, sender, sent_at FROM notices WHERE org = $1
                     ORDER BY id DESC LIMIT $2",
                    &[&o, &limit],
                )?
                .iter()
                .map(notice_row)
                .collect::<Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    fn notices_after(&self, after: u64, limit: usize) -> Result<Vec<Notice>> {
        let limit = i64::try_from(limit).ok();
        self.call(move |c| {
            c.query(
                "SELECT id, org, room, text, sender, sent_at FROM notices WHERE id > $1
                 ORDER BY id LIMIT $2",
                &[&(after as i64), &limit],
            )?
            .iter()
            .map(notice_row)
            .collect()
        })
    }

    fn last_notice_id(&self) -> Result<u64> {
        self.call(|c| {
            Ok(
                c.query_one("SELECT COALESCE(MAX(id), 0)::BIGINT FROM notices", &[])?
                    .try_get::<_, i64>(0)? as u64,
            )
        })
    }

    fn generation(&self) -> Result<u64> {
        self.call(|c| {
            Ok(c.query_one("SELECT n FROM generation WHERE id = 1", &[])?
                .try_get::<_, i64>(0)? as u64)
        })
    }

    /// This node's anchored audit head; each node keeps its own chain.
    fn audit_head(&self) -> Result<Option<(u64, String)>> {
        let node = self.node.clone();
        self.call(move |c| {
            c.query_opt(
                "SELECT lines, hash FROM audit_heads WHERE node = $1",
                &[&node],
            )?
            .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?)))
            .transpose()
        })
    }

    fn set_audit_head(&self, lines: u64, hash: &str) -> Result<()> {
        let (node, hash) = (self.node.clone(), hash.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit_heads (node, lines, hash) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE SET lines = excluded.lines, hash = excluded.hash",
                &[&node, &(lines as i64), &hash],
            )?;
            Ok(())
        })
    }

    fn announce_file_plane(&self, addr: &str, cert: &[u8]) -> Result<()> {
        let (node, addr, cert) = (self.node.clone(), addr.to_owned(), cert.to_vec());
        self.call(move |c| {
            c.execute(
                "INSERT INTO file_planes (node, addr, cert) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE SET addr = excluded.addr, cert = excluded.cert",
                &[&node, &addr, &cert],
            )?;
            Ok(())
        })
    }

    fn place_file(&self, f: &CataloguedFile) -> Result<()> {
        let f = CataloguedFile {
            node: self.node.clone(),
            ..f.clone()
        };
        self.call(move |c| {
            c.execute(
                "INSERT INTO files (org, id, node, owner, name, room, size, chunks,
                                    classification, view_only, created)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (org, id) DO UPDATE SET node = excluded.node",
                &[
                    &f.org,
                    &f.id,
                    &f.node,
                    &f.owner,
                    &f.name,
                    &f.room,
                    &(f.size as i64),
                    &i64::from(f.chunks),
                    &i16::from(f.classification),
                    &f.view_only,
                    &(f.created as i64),
                ],
            )?;
            Ok(())
        })
    }

    fn forget_file(&self, org: &str, id: &str) -> Result<()> {
        let (org, id) = (org.to_owned(), id.to_owned());
        self.call(move |c| {
            c.execute("DELETE FROM files WHERE org = $1 AND id = $2", &[&org, &id])?;
            Ok(())
        })
    }

    fn files_elsewhere(&self, org: &str, limit: usize) -> Result<Vec<CataloguedFile>> {
        if !storable(&[org]) {
            return Ok(Vec::new());
        }
        let (me, org) = (self.node.clone(), org.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| {
            c.query(
                "SELECT id, org, owner, name, room, size, chunks, classification, view_only,
                        created, node
                 FROM files WHERE org = $1 AND node <> $2
                 ORDER BY created DESC, id LIMIT $3",
                &[&org, &me, &limit],
            )?
            .iter()
            .map(|r| {
                Ok(CataloguedFile {
                    id: r.try_get(0)?,
                    org: r.try_get(1)?,
                    owner: r.try_get(2)?,
                    name: r.try_get(3)?,
                    room: r.try_get(4)?,
                    size: r.try_get::<_, i64>(5)? as u64,
                    chunks: r.try_get::<_, i64>(6)? as u32,
                    classification: r.try_get::<_, i16>(7)? as u8,
                    view_only: r.try_get(8)?,
                    created: r.try_get::<_, i64>(9)? as u64,
                    node: r.try_get(10)?,
                })
            })
            .collect()
        })
    }

    fn file_node(&self, org: &str, id: &str) -> Result<Option<FileNode>> {
        if !storable(&[org, id]) {
            return Ok(None);
        }
        let (me, org, id) = (self.node.clone(), org.to_owned(), id.to_owned());
        self.call(move |c| {
            let row = c.query_opt(
                "SELECT f.node, p.addr, p.cert FROM files f
                 JOIN file_planes p ON p.node = f.node
                 WHERE f.org = $1 AND f.id = $2 AND f.node <> $3",
                &[&org, &id, &me],
            )?;
            row.map(|r| {
                Ok(FileNode {
                    node: r.try_get(0)?,
                    addr: r.try_get(1)?,
                    cert: r.try_get(2)?,
                })
            })
            .transpose()
        })
    }
}
