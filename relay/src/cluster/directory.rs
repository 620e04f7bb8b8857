//! The room directory: which nodes are live and which node is each room's home, each under a
//! lease. [`Directory`] is what the cluster asks; [`RedisDirectory`] keeps it in Redis, so nodes
//! share it with nothing home-made for consensus: a key that expires is a lease, `SET NX` and a
//! compare-and-set script are the claims.
//!
//! Keys: `relay:node:{id}` holds a node's JSON ([`Node`]) and expires with its lease;
//! `relay:room:{org}/{room}` holds the home node's id and expires with the room's lease.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::placement::Node;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The directory cannot be reached or answered with an error.
    #[error("room directory: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, DirectoryError>;

/// A live node and what is left of its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased<T> {
    pub value: T,
    pub lease_left: Duration,
}

/// The directory as the cluster uses it. Every call is a short blocking exchange.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// Registers `node` (or refreshes it) for `lease`.
    fn announce(&self, node: &Node, lease: Duration) -> Result<()>;
    /// Removes `node`'s registration at once.
    fn withdraw(&self, node: &str) -> Result<()>;
    /// The live nodes.
    fn nodes(&self) -> Result<Vec<Leased<Node>>>;
    /// The id of `room`'s home node, if its lease holds.
    fn home(&self, room: &str) -> Result<Option<String>>;
    /// Makes `node` the home of `room` for `lease`, if the room's home is still `was` (`None`:
    /// no home). False when another claim came first.
    fn claim(&self, room: &str, node: &str, was: Option<&str>, lease: Duration) -> Result<bool>;
    /// Extends `node`'s lease on `room`; false when `node` is no longer its home.
    fn renew(&self, room: &str, node: &str, lease: Duration) -> Result<bool>;
    /// Gives up `node`'s home of `room`, if it still holds it.
    fn release(&self, room: &str, node: &str) -> Result<()>;
    /// Every room with a home: (room, node id).
    fn rooms(&self) -> Result<Vec<Leased<(String, String)>>>;
}

const NODE_PREFIX: &str = "relay:node:";
const ROOM_PREFIX: &str = "relay:room:";

/// How long a call to Redis may take before the directory counts as unreachable.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// The directory in Redis, over one connection made again when it breaks.
pub struct RedisDirectory {
    client: redis::Client,
    conn: Mutex<Option<redis::Connection>>,
    claim: redis::Script,
    renew: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory").finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisDirectory {
    /// Opens the directory at `url` (`redis://HOST:PORT/DB`) and checks that it answers.
    pub fn connect(url: &str) -> Result<RedisDirectory> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let dir = RedisDirectory {
            client,
            conn: Mutex::new(None),
            // A claim succeeds when the room's home is still the one the claimer saw: none
            // (ARGV[3] empty) or a node whose lease has run out.
            claim: redis::Script::new(
                r"local cur = redis.call('GET', KEYS[1])
                  if (cur == false and ARGV[3] == '') or cur == ARGV[3] then
                    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                    return 1
                  end
                  return 0",
            ),
            renew: redis::Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                  end
                  return 0",
            ),
            release: redis::Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                  end
                  return 0",
            ),
        };
        dir.with(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(dir)
    }

    fn lock(&self) -> MutexGuard<'_, Option<redis::Connection>> {
        // The slot holds a connection or none; a panicking holder leaves either, both usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection, made first when there is none; a failed call drops the
    /// connection so the next call starts afresh.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut slot = self.lock();
        if slot.is_none() {
            let c = self
                .client
                .get_connection_with_timeout(IO_TIMEOUT)
                .map_err(unavailable)?;
            c.set_read_timeout(Some(IO_TIMEOUT)).map_err(unavailable)?;
            c.set_write_timeout(Some(IO_TIMEOUT)).map_err(unavailable)?;
            *slot = Some(c);
        }
        let Some(conn) = slot.as_mut() else {
            return Err(DirectoryError::Unavailable("no connection".into()));
        };
        let out = f(conn);
        if out.is_err() {
            *slot = None;
        }
        out.map_err(unavailable)
    }

    /// Every key under `prefix`, with its value and what is left of its lease.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, String, Duration)>> {
        self.with(|c| {
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(256)
                    .query(c)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // Every value and lease in one round trip.
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
            }
            let answers: Vec<(Option<String>, i64)> = pipe.query(c)?;
            Ok(keys
                .iter()
                .zip(answers)
                // A key that expired between the scan and the read is gone.
                .filter_map(|(key, (value, ttl))| {
                    let ms = u64::try_from(ttl).ok()?;
                    Some((
                        key[prefix.len()..].to_string(),
                        value?,
                        Duration::from_millis(ms),
                    ))
                })
                .collect())
        })
    }
}

impl Directory for RedisDirectory {
    fn announce(&self, node: &Node, lease: Duration) -> Result<()> {
        let json = serde_json::to_string(node)
            .map_err(|e| DirectoryError::Unavailable(format!("node record: {e}")))?;
        self.with(|c| {
            redis::cmd("SET")
                .arg(format!("{NODE_PREFIX}{}", node.id))
                .arg(json)
                .arg("PX")
                .arg(millis(lease))
                .query::<()>(c)
        })
    }

    fn withdraw(&self, node: &str) -> Result<()> {
        self.with(|c| {
            redis::cmd("DEL")
                .arg(format!("{NODE_PREFIX}{node}"))
                .query::<()>(c)
        })
    }

    fn nodes(&self) -> Result<Vec<Leased<Node>>> {
        let mut nodes: Vec<Leased<Node>> = self
            .scan(NODE_PREFIX)?
            .into_iter()
            .filter_map(|(_, json, lease_left)| {
                // A record this build cannot read is not a node it can send anyone to.
                serde_json::from_str(&json)
                    .ok()
                    .map(|value| Leased { value, lease_left })
            })
            .collect();
        nodes.sort_by(|a, b| a.value.id.cmp(&b.value.id));
        Ok(nodes)
    }

    fn home(&self, room: &str) -> Result<Option<String>> {
        self.with(|c| {
            redis::cmd("GET")
                .arg(format!("{ROOM_PREFIX}{room}"))
                .query(c)
        })
    }

    fn claim(&self, room: &str, node: &str, was: Option<&str>, lease: Duration) -> Result<bool> {
        let won: i64 = self.with(|c| {
            self.claim
                .key(format!("{ROOM_PREFIX}{room}"))
                .arg(node)
                .arg(millis(lease))
                .arg(was.unwrap_or(""))
                .invoke(c)
        })?;
        Ok(won == 1)
    }

    fn renew(&self, room: &str, node: &str, lease: Duration) -> Result<bool> {
        let kept: i64 = self.with(|c| {
            self.renew
                .key(format!("{ROOM_PREFIX}{room}"))
                .arg(node)
                .arg(millis(lease))
                .invoke(c)
        })?;
        Ok(kept == 1)
    }

    fn release(&self, room: &str, node: &str) -> Result<()> {
        self.with(|c| {
            self.release
                .key(format!("{ROOM_PREFIX}{room}"))
                .arg(node)
                .invoke::<i64>(c)
        })
        .map(|_| ())
    }

    fn rooms(&self) -> Result<Vec<Leased<(String, String)>>> {
        let mut rooms: Vec<_> = self
            .scan(ROOM_PREFIX)?
            .into_iter()
            .map(|(room, node, lease_left)| Leased {
                value: (room, node),
                lease_left,
            })
            .collect();
        rooms.sort_by(|a, b| a.value.cmp(&b.value));
        Ok(rooms)
    }
}
