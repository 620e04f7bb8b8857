//! Where a room's sessions go: the decision alone, from what the directory says, with no I/O.
//!
//! A room has at most one home node. A request for a room reaching any node is served there when
//! that node is the home, sent to the home when another live node holds it, and otherwise the
//! room is claimed for the least-loaded live node. A home whose node is no longer live (its lease
//! ran out) counts as no home: the room moves on the next join.

use serde::{Deserialize, Serialize};

/// A live node as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's id (`cluster.node_id`), unique in the cluster.
    pub id: String,
    /// How clients and other nodes reach its HTTP (`cluster.public_url`), without a trailing `/`.
    pub url: String,
    /// Its media workers' addresses.
    pub media: Vec<String>,
    /// Its media sessions (publishers and subscribers) when it last renewed its lease.
    pub load: u64,
}

/// What to do with a request for a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This node is the room's home.
    Serve,
    /// Another live node is the room's home.
    Redirect(Node),
    /// The room has no live home: claim it for this node.
    Claim(Node),
}

/// Decides for a request reaching node `me`, given the room's recorded home and the live nodes.
/// `None` when no node is live (not even `me`, whose lease the directory has lost).
pub fn decide(me: &str, home: Option<&str>, live: &[Node]) -> Option<Decision> {
    if let Some(home) = home {
        if home == me {
            return Some(Decision::Serve);
        }
        if let Some(n) = live.iter().find(|n| n.id == home) {
            return Some(Decision::Redirect(n.clone()));
        }
    }
    least_loaded(live).map(|n| Decision::Claim(n.clone()))
}

/// The live node with the fewest sessions; ties go to the smallest id, so every node picks the
/// same one from the same listing.
pub fn least_loaded(live: &[Node]) -> Option<&Node> {
    live.iter()
        .min_by(|a, b| a.load.cmp(&b.load).then_with(|| a.id.cmp(&b.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, load: u64) -> Node {
        Node {
            id: id.into(),
            url: format!("http://{id}"),
            media: vec![],
            load,
        }
    }

    #[test]
    fn the_home_serves_and_others_redirect_to_it() {
        let live = [node("a", 5), node("b", 0)];
        assert_eq!(decide("a", Some("a"), &live), Some(Decision::Serve));
        assert_eq!(
            decide("b", Some("a"), &live),
            Some(Decision::Redirect(node("a", 5)))
        );
    }

    #[test]
    fn a_room_without_a_home_goes_to_the_least_loaded_node() {
        let live = [node("a", 5), node("b", 1), node("c", 3)];
        assert_eq!(
            decide("a", None, &live),
            Some(Decision::Claim(node("b", 1)))
        );
        // Ties go to the smallest id, whichever node decides.
        let tied = [node("c", 1), node("b", 1)];
        assert_eq!(
            decide("c", None, &tied),
            Some(Decision::Claim(node("b", 1)))
        );
        assert_eq!(
            decide("b", None, &tied),
            Some(Decision::Claim(node("b", 1)))
        );
    }

    #[test]
    fn a_home_whose_lease_ran_out_is_no_home() {
        let live = [node("b", 2), node("c", 0)];
        assert_eq!(
            decide("b", Some("a"), &live),
            Some(Decision::Claim(node("c", 0)))
        );
    }

    #[test]
    fn no_live_node_no_decision() {
        assert_eq!(decide("a", None, &[]), None);
        // Its own home still serves: the lease on the room is what the directory holds.
        assert_eq!(decide("a", Some("a"), &[]), Some(Decision::Serve));
    }
}
