//! Chunks read more than once lately, kept in memory up to a byte budget, so that a file many
//! fetch (a broadcast that every office downloads) is read from disk twice, not once per
//! download. A chunk is kept at its second read: memory taken for a chunk costs the relay about
//! a quarter of what serving it costs (the pages are faulted in and zeroed), which a chunk read
//! once would pay for nothing. Chunks are named by their content, so a kept chunk can never be
//! stale; a read from here is checked against its seal as a read from disk is. The oldest kept
//! chunk goes first when the budget is reached.

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
    /// Chunks read once lately and not kept, oldest first, at most [`SEEN`].
    seen: VecDeque<Hash>,
    seen_set: std::collections::HashSet<Hash>,
}

/// How many chunks read once are remembered: 64 GiB of chunks at the average size.
const SEEN: usize = 1 << 16;

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

    /// Offers `data`, the bytes of chunk `hash` just read with their seal: kept if the chunk
    /// was read lately before, letting the oldest go to stay within the budget. A chunk larger
    /// than the budget is not kept.
    pub(super) fn offer(&self, hash: &Hash, data: &Bytes, seal: Seal) {
        if data.len() > self.budget {
            return;
        }
        let mut k = self.kept();
        if k.chunks.contains_key(hash) {
            return;
        }
        if !k.seen_set.remove(hash) {
            if k.seen.len() == SEEN
                && let Some(old) = k.seen.pop_front()
            {
                k.seen_set.remove(&old);
            }
            k.seen.push_back(*hash);
            k.seen_set.insert(*hash);
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
            r.offer(&h, &d, [n; 8]);
            assert!(r.get(&h).is_none(), "read once: not kept");
            r.offer(&h, &d, [n; 8]);
        }
        assert!(r.get(&[1; 32]).is_none(), "the oldest went");
        assert_eq!(r.get(&[2; 32]).unwrap().data, vec![2u8; 4]);
        assert_eq!(r.get(&[3; 32]).unwrap().seal, Some([3; 8]));
        assert_eq!(r.bytes(), 8);
        // Too large for the budget: not kept, and nothing else goes for it.
        let (h, d) = chunk(4, 11);
        r.offer(&h, &d, [4; 8]);
        r.offer(&h, &d, [4; 8]);
        assert!(r.get(&h).is_none());
        assert_eq!(r.bytes(), 8);
        // Kept twice, counted once.
        let (h, d) = chunk(3, 4);
        r.offer(&h, &d, [3; 8]);
        assert_eq!(r.bytes(), 8);
        // A budget of nothing keeps nothing.
        let none = Recent::new(0);
        let (h, d) = chunk(5, 1);
        none.offer(&h, &d, [5; 8]);
        none.offer(&h, &d, [5; 8]);
        assert!(none.get(&h).is_none());
    }
}
