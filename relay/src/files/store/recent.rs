//! The chunks most recently stored or served, kept in memory up to a byte budget, so that a file
//! fetched soon after it arrived (a broadcast that every office downloads, a recording watched
//! as it closes) is served without reading the disk again. Chunks are named by their content,
//! so a kept chunk can never be stale; a read from here is checked against its seal as a read
//! from disk is. The oldest kept chunk goes first when the budget is reached.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use super::Hash;
use super::blobs::Stored;
use crate::files::chunker::Seal;

#[derive(Debug)]
pub(super) struct Recent {
    budget: usize,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    bytes: usize,
    order: VecDeque<Hash>,
    chunks: HashMap<Hash, (Bytes, Seal)>,
}

impl Recent {
    /// Keeps up to `budget` bytes of chunks; 0 keeps none.
    pub(super) fn new(budget: usize) -> Recent {
        Recent {
            budget,
            kept: Mutex::new(Kept::default()),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        // Every change below leaves the lists whole before it can panic.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk `hash`, if it is kept.
    pub(super) fn get(&self, hash: &Hash) -> Option<Stored> {
        if self.budget == 0 {
            return None;
        }
        self.kept().chunks.get(hash).map(|(data, seal)| Stored {
            data: data.clone(),
            seal: Some(*seal),
        })
    }

    /// Keeps `data`, the bytes of chunk `hash` with their seal, letting the oldest go to stay
    /// within the budget. A chunk larger than the budget is not kept.
    pub(super) fn keep(&self, hash: &Hash, data: &Bytes, seal: Seal) {
        if data.len() > self.budget {
            return;
        }
        let mut k = self.kept();
        if k.chunks.contains_key(hash) {
            return;
        }
        while k.bytes + data.len() > self.budget {
            let Some(old) = k.order.pop_front() else {
                break;
            };
            if let Some((gone, _)) = k.chunks.remove(&old) {
                k.bytes -= gone.len();
            }
        }
        k.bytes += data.len();
        k.order.push_back(*hash);
        k.chunks.insert(*hash, (data.clone(), seal));
    }

    /// Bytes kept now.
    pub(super) fn bytes(&self) -> usize {
        self.kept().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_the_budget_holds() {
        let r = Recent::new(10);
        let chunk = |n: u8, len: usize| ([n; 32], Bytes::from(vec![n; len]));
        for (n, len) in [(1, 4), (2, 4), (3, 4)] {
            let (h, d) = chunk(n, len);
            r.keep(&h, &d, [n; 8]);
        }
        assert!(r.get(&[1; 32]).is_none(), "the oldest went");
        assert_eq!(r.get(&[2; 32]).unwrap().data, vec![2u8; 4]);
        assert_eq!(r.get(&[3; 32]).unwrap().seal, Some([3; 8]));
        assert_eq!(r.bytes(), 8);
        // Too large for the budget: not kept, and nothing else goes for it.
        let (h, d) = chunk(4, 11);
        r.keep(&h, &d, [4; 8]);
        assert!(r.get(&h).is_none());
        assert_eq!(r.bytes(), 8);
        // Kept twice, counted once.
        let (h, d) = chunk(3, 4);
        r.keep(&h, &d, [3; 8]);
        assert_eq!(r.bytes(), 8);
        // A budget of nothing keeps nothing.
        let none = Recent::new(0);
        let (h, d) = chunk(5, 1);
        none.keep(&h, &d, [5; 8]);
        assert!(none.get(&h).is_none());
    }
}
