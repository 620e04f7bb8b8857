//! Several relays as one appliance: each node announces itself in a shared room directory under
//! a lease, and each room has one home node, claimed under a lease of its own. A WHIP or WHEP
//! request reaching a node that is not the room's home is sent there (307).
//!
//! [`placement`] decides (pure), [`directory`] keeps the leases (Redis), [`Cluster`] is what
//! the HTTP shell and the serving loop ask. One relay without `cluster.redis_url` has none of it.
//!
//! A node's load, for placement, is its sessions at its last renewal and the rooms homed on it
//! now.
//!
//! Invariants: a node renews the lease of a room only while it has sessions in the room or was
//! asked to serve it within one lease; a room whose home stopped renewing (the node died, or
//! drained) has no home once its lease runs out, and the next join claims it for the
//! least-loaded live node.

pub mod directory;
pub mod placement;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use directory::{Directory, DirectoryError};
use placement::{Decision, Node};

/// Where a request for a room is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Here,
    /// At the home node, whose public URL this is.
    Elsewhere(String),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error("no node of the cluster holds a live lease")]
    NoLiveNode,
}

/// A node as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: String,
    pub url: String,
    pub media: Vec<String>,
    pub load: u64,
    pub lease_ms: u64,
}

/// A room's home as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomHome {
    pub room: String,
    pub node: String,
    pub lease_ms: u64,
}

/// This node's part in the cluster.
#[derive(Debug)]
pub struct Cluster {
    me: Node,
    lease: Duration,
    dir: Box<dyn Directory>,
    /// Rooms this node is home of, and when it was last asked to serve each.
    held: Mutex<HashMap<String, Instant>>,
    redirects: AtomicU64,
    live_nodes: AtomicU64,
    /// Every node's public URL seen since start: the origins whose pages may ask this node
    /// where a room lives (the page of a node that died among them).
    known_urls: Mutex<std::collections::BTreeSet<String>>,
    /// The live nodes' public URLs at the last look.
    live_urls: Mutex<Vec<String>>,
    /// Set once the node hands its rooms back: it renews nothing more.
    drained: AtomicBool,
}

impl Cluster {
    /// Joins the cluster as `me`: announces the node at once, so a directory that cannot be
    /// reached stops the start.
    pub fn join(
        me: Node,
        lease: Duration,
        dir: Box<dyn Directory>,
    ) -> Result<Cluster, ClusterError> {
        dir.announce(&me, lease)?;
        let c = Cluster {
            me,
            lease,
            dir,
            held: Mutex::new(HashMap::new()),
            redirects: AtomicU64::new(0),
            live_nodes: AtomicU64::new(0),
            known_urls: Mutex::new(Default::default()),
            live_urls: Mutex::new(Vec::new()),
            drained: AtomicBool::new(false),
        };
        c.live()?;
        Ok(c)
    }

    pub fn node_id(&self) -> &str {
        &self.me.id
    }

    /// How often [`Cluster::renew`] should run: three times a lease.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        lock(&self.held)
    }

    /// Where a request for `room` (`org/room`) is served, claiming a home for it when it has none.
    pub fn route(&self, room: &str) -> Result<Route, ClusterError> {
        // Two tries: a claim lost to another node's is followed by reading the winner.
        for _ in 0..2 {
            let home = self.dir.home(room)?;
            let mut live = self.live()?;
            let home_live = home
                .as_deref()
                .is_some_and(|h| h == self.me.id || live.iter().any(|n| n.id == h));
            if !home_live {
                self.count_homed_rooms(&mut live)?;
            }
            let target = match placement::decide(&self.me.id, home.as_deref(), &live) {
                None => return Err(ClusterError::NoLiveNode),
                Some(Decision::Serve) => return Ok(self.serve(room)),
                Some(Decision::Redirect(n)) => return Ok(self.redirect(n)),
                Some(Decision::Claim(n)) => n,
            };
            if self
                .dir
                .claim(room, &target.id, home.as_deref(), self.lease)?
            {
                tracing::info!(room, node = %target.id, "room homed");
                return Ok(if target.id == self.me.id {
                    self.serve(room)
                } else {
                    self.redirect(target)
                });
            }
        }
        Err(ClusterError::Directory(DirectoryError::Unavailable(
            "the room's home changed twice while it was read".into(),
        )))
    }

    /// The live nodes, as the directory lists them now; what the figures and the known
    /// origins are kept from.
    fn live(&self) -> Result<Vec<Node>, ClusterError> {
        let live: Vec<Node> = self.dir.nodes()?.into_iter().map(|l| l.value).collect();
        self.live_nodes.store(live.len() as u64, Ordering::Relaxed);
        let urls: Vec<String> = live.iter().map(|n| n.url.clone()).collect();
        lock(&self.known_urls).extend(urls.iter().cloned());
        *lock(&self.live_urls) = urls;
        Ok(live)
    }

    /// Adds to each node's load the rooms homed on it now. Loads are as old as the last
    /// renewal; the rooms homed are not, so rooms claimed in a burst spread over the nodes.
    fn count_homed_rooms(&self, live: &mut [Node]) -> Result<(), ClusterError> {
        for l in self.dir.rooms()? {
            if let Some(n) = live.iter_mut().find(|n| n.id == l.value.1) {
                n.load += 1;
            }
        }
        Ok(())
    }

    /// The live nodes' public URLs at the last look.
    pub fn node_urls(&self) -> Vec<String> {
        lock(&self.live_urls).clone()
    }

    /// Whether `url` is, or was since this node started, a node's public URL.
    pub fn is_node_url(&self, url: &str) -> bool {
        lock(&self.known_urls).contains(url)
    }

    /// The public URL of `room`'s home node (claiming a home when it has none): this node's own
    /// when it is the home.
    pub fn home_url(&self, room: &str) -> Result<String, ClusterError> {
        Ok(match self.route(room)? {
            Route::Here => self.me.url.clone(),
            Route::Elsewhere(url) => url,
        })
    }

    fn serve(&self, room: &str) -> Route {
        self.held().insert(room.to_string(), Instant::now());
        Route::Here
    }

    fn redirect(&self, to: Node) -> Route {
        self.redirects.fetch_add(1, Ordering::Relaxed);
        Route::Elsewhere(to.url)
    }

    /// Renews the node's lease with its `load`, and the leases of the rooms it is home of: those
    /// with sessions here (`live`) or asked for within a lease. The others are given up.
    pub fn renew(&self, load: u64, live: &HashSet<String>) -> Result<(), ClusterError> {
        if self.drained.load(Ordering::Acquire) {
            return Ok(());
        }
        let me = Node {
            load,
            ..self.me.clone()
        };
        self.dir.announce(&me, self.lease)?;
        self.live()?;
        let now = Instant::now();
        for room in live {
            // Rooms with sessions here that this node does not hold yet (it was homed here by
            // another node's claim) are taken up on their first request; a live room always is.
            self.held().entry(room.clone()).or_insert(now);
        }
        let rooms: Vec<(String, Instant)> =
            self.held().iter().map(|(r, t)| (r.clone(), *t)).collect();
        for (room, asked) in rooms {
            let wanted = live.contains(&room) || now.duration_since(asked) < self.lease;
            let kept = if wanted {
                // A live room whose lease vanished (the directory restarted) is claimed again
                // before another node can take it and split its sessions.
                self.dir.renew(&room, &self.me.id, self.lease)?
                    || (live.contains(&room)
                        && self.dir.claim(&room, &self.me.id, None, self.lease)?)
            } else {
                self.dir.release(&room, &self.me.id)?;
                false
            };
            if !kept {
                self.held().remove(&room);
            }
        }
        Ok(())
    }

    /// Hands every room's home back and withdraws the node, so new joins go elsewhere at once.
    pub fn drain(&self) {
        self.drained.store(true, Ordering::Release);
        let rooms: Vec<String> = self.held().drain().map(|(r, _)| r).collect();
        for room in rooms {
            if let Err(e) = self.dir.release(&room, &self.me.id) {
                tracing::warn!(room, error = %e, "cannot hand the room back");
            }
        }
        if let Err(e) = self.dir.withdraw(&self.me.id) {
            tracing::warn!(error = %e, "cannot withdraw from the room directory");
        }
        tracing::info!(node = %self.me.id, "left the cluster");
    }

    /// The live nodes and the rooms' homes, for `GET /api/cluster`.
    pub fn view(&self) -> Result<(Vec<NodeView>, Vec<RoomHome>), ClusterError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let nodes = self
            .dir
            .nodes()?
            .into_iter()
            .map(|l| NodeView {
                id: l.value.id,
                url: l.value.url,
                media: l.value.media,
                load: l.value.load,
                lease_ms: ms(l.lease_left),
            })
            .collect();
        let rooms = self
            .dir
            .rooms()?
            .into_iter()
            .map(|l| RoomHome {
                room: l.value.0,
                node: l.value.1,
                lease_ms: ms(l.lease_left),
            })
            .collect();
        Ok((nodes, rooms))
    }

    /// Requests sent to another node since start.
    pub fn redirects(&self) -> u64 {
        self.redirects.load(Ordering::Relaxed)
    }

    /// Live nodes at the last look.
    pub fn live_nodes(&self) -> u64 {
        self.live_nodes.load(Ordering::Relaxed)
    }
}

/// Every map here takes single inserts, removes and replacements: a poisoned one is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
