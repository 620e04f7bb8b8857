//! The cluster's routing and leases against a directory in memory, with leases that end when a
//! test says so.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::directory::{Directory, Leased, Result};
use super::placement::Node;
use super::{Cluster, Route};

/// Nodes and room homes; a node or room is live while its entry is present.
#[derive(Debug, Default)]
struct Shared {
    nodes: HashMap<String, Node>,
    rooms: HashMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Memory(Arc<Mutex<Shared>>);

impl Memory {
    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    /// A node's lease runs out: it and every room it was home of are gone.
    fn expire_node(&self, id: &str) {
        self.with(|s| {
            s.nodes.remove(id);
            s.rooms.retain(|_, n| n != id);
        });
    }
}

const LEASE: Duration = Duration::from_secs(5);

impl Directory for Memory {
    fn announce(&self, node: &Node, _: Duration) -> Result<()> {
        self.with(|s| s.nodes.insert(node.id.clone(), node.clone()));
        Ok(())
    }
    fn withdraw(&self, node: &str) -> Result<()> {
        self.with(|s| s.nodes.remove(node));
        Ok(())
    }
    fn nodes(&self) -> Result<Vec<Leased<Node>>> {
        Ok(self.with(|s| {
            s.nodes
                .values()
                .map(|n| Leased {
                    value: n.clone(),
                    lease_left: LEASE,
                })
                .collect()
        }))
    }
    fn home(&self, room: &str) -> Result<Option<String>> {
        Ok(self.with(|s| s.rooms.get(room).cloned()))
    }
    fn claim(&self, room: &str, node: &str, was: Option<&str>, _: Duration) -> Result<bool> {
        Ok(self.with(|s| {
            if s.rooms.get(room).map(String::as_str) == was {
                s.rooms.insert(room.into(), node.into());
                true
            } else {
                false
            }
        }))
    }
    fn renew(&self, room: &str, node: &str, _: Duration) -> Result<bool> {
        Ok(self.with(|s| s.rooms.get(room).map(String::as_str) == Some(node)))
    }
    fn release(&self, room: &str, node: &str) -> Result<()> {
        self.with(|s| {
            if s.rooms.get(room).map(String::as_str) == Some(node) {
                s.rooms.remove(room);
            }
        });
        Ok(())
    }
    fn rooms(&self) -> Result<Vec<Leased<(String, String)>>> {
        Ok(self.with(|s| {
            s.rooms
                .iter()
                .map(|(r, n)| Leased {
                    value: (r.clone(), n.clone()),
                    lease_left: LEASE,
                })
                .collect()
        }))
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        url: format!("http://{id}.test"),
        media: vec![],
        load: 0,
    }
}

fn cluster(dir: &Memory, id: &str, lease: Duration) -> Cluster {
    Cluster::join(node(id), lease, Box::new(dir.clone())).unwrap()
}

fn none() -> HashSet<String> {
    HashSet::new()
}

#[test]
fn a_room_is_homed_once_and_every_other_node_sends_its_joins_there() {
    let dir = Memory::default();
    let a = cluster(&dir, "a", LEASE);
    let b = cluster(&dir, "b", LEASE);
    let c = cluster(&dir, "c", LEASE);
    // b and c carry sessions: the room goes to a, whichever node is asked.
    b.renew(4, &none()).unwrap();
    c.renew(2, &none()).unwrap();
    assert_eq!(
        c.route("o/r").unwrap(),
        Route::Elsewhere("http://a.test".into())
    );
    assert_eq!(
        b.route("o/r").unwrap(),
        Route::Elsewhere("http://a.test".into())
    );
    assert_eq!(a.route("o/r").unwrap(), Route::Here);
    assert_eq!(dir.home("o/r").unwrap().as_deref(), Some("a"));
    assert_eq!((b.redirects(), c.redirects(), a.redirects()), (1, 1, 0));
    assert_eq!(a.live_nodes(), 3);
    // The next room goes to the least loaded of what is left.
    a.renew(9, &HashSet::from(["o/r".to_string()])).unwrap();
    assert_eq!(
        a.route("o/s").unwrap(),
        Route::Elsewhere("http://c.test".into())
    );
}

#[test]
fn a_dead_home_loses_its_rooms_and_the_next_join_homes_them_elsewhere() {
    let dir = Memory::default();
    let a = cluster(&dir, "a", LEASE);
    let b = cluster(&dir, "b", LEASE);
    assert_eq!(a.route("o/r").unwrap(), Route::Here);
    assert_eq!(
        b.route("o/r").unwrap(),
        Route::Elsewhere("http://a.test".into())
    );
    // a stops renewing: its node lease is gone, its room lease too.
    dir.expire_node("a");
    assert_eq!(b.route("o/r").unwrap(), Route::Here);
    assert_eq!(dir.home("o/r").unwrap().as_deref(), Some("b"));
    // a is no longer live, but its pages may still ask b where the room went.
    assert_eq!(b.node_urls(), ["http://b.test"]);
    assert!(b.is_node_url("http://a.test"));
    assert!(!b.is_node_url("http://elsewhere.test"));
    // A node lease gone while the room key stays (its lease outlasting the node's) is no home
    // either: the room is taken over from the dead node.
    let c = cluster(&dir, "c", LEASE);
    dir.with(|s| s.nodes.remove("b"));
    assert_eq!(c.route("o/r").unwrap(), Route::Here);
    assert_eq!(dir.home("o/r").unwrap().as_deref(), Some("c"));
    // b finds out at its next renewal and holds the room no more.
    b.renew(0, &HashSet::from(["o/r".to_string()])).unwrap();
    assert_eq!(dir.home("o/r").unwrap().as_deref(), Some("c"));
    assert!(b.held().is_empty());
}

#[test]
fn rooms_claimed_in_a_burst_spread_over_the_idle_nodes() {
    let dir = Memory::default();
    let a = cluster(&dir, "a", LEASE);
    let _b = cluster(&dir, "b", LEASE);
    let _c = cluster(&dir, "c", LEASE);
    // No renewal in between: the loads say nothing yet, the rooms homed do.
    let homes: Vec<Route> = (0..6)
        .map(|i| a.route(&format!("o/r{i}")).unwrap())
        .collect();
    let on = |url: &str| {
        homes
            .iter()
            .filter(|r| **r == Route::Elsewhere(url.into()))
            .count()
    };
    assert_eq!(homes.iter().filter(|r| **r == Route::Here).count(), 2);
    assert_eq!((on("http://b.test"), on("http://c.test")), (2, 2));
}

#[test]
fn draining_hands_the_rooms_back_at_once() {
    let dir = Memory::default();
    let a = cluster(&dir, "a", LEASE);
    let b = cluster(&dir, "b", LEASE);
    b.renew(3, &none()).unwrap();
    assert_eq!(a.route("o/r").unwrap(), Route::Here);
    a.drain();
    assert_eq!(dir.home("o/r").unwrap(), None);
    assert_eq!(b.route("o/r").unwrap(), Route::Here);
}

#[test]
fn a_room_nobody_uses_is_given_up_after_a_lease_and_a_live_one_is_kept() {
    let dir = Memory::default();
    let lease = Duration::from_millis(30);
    let a = cluster(&dir, "a", lease);
    assert_eq!(a.route("o/idle").unwrap(), Route::Here);
    assert_eq!(a.route("o/busy").unwrap(), Route::Here);
    std::thread::sleep(lease * 2);
    a.renew(1, &HashSet::from(["o/busy".to_string()])).unwrap();
    assert_eq!(dir.home("o/idle").unwrap(), None);
    assert_eq!(dir.home("o/busy").unwrap().as_deref(), Some("a"));
    // A live room whose key vanished (the directory restarted) is claimed again.
    dir.with(|s| s.rooms.clear());
    a.renew(1, &HashSet::from(["o/busy".to_string()])).unwrap();
    assert_eq!(dir.home("o/busy").unwrap().as_deref(), Some("a"));
}

#[test]
fn with_no_live_node_there_is_no_route() {
    let dir = Memory::default();
    let a = cluster(&dir, "a", LEASE);
    dir.expire_node("a");
    assert!(matches!(
        a.route("o/r"),
        Err(super::ClusterError::NoLiveNode)
    ));
}
