//! Recent chunks kept in memory up to a byte budget, the oldest going first: each chunk just
//! written whose bytes arrived in the relay's chunk pool (a file is usually fetched soon after it
//! is sent; the pool's memory costs nothing more to hold, see [`crate::files::pool`]), and each
//! chunk read more than once lately, so that a file many fetch (a broadcast that every office
//! downloads) is read from disk twice, not once per download. A chunk read from disk is kept only
//! at its second read: memory taken for it costs the relay about a quarter of what serving it
//! costs (the pages are faulted in and zeroed), which a chunk read once would pay for nothing.
//! Chunks are named by their content, so a kept chunk can never be stale; a read from here is
//! checked against its seal as a read from disk is.

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

/// The lists behind the lock. Each entry carries the number it was added under, so that an
/// older entry for the same hash, still queued, never takes a newer one with it.
#[derive(Debug, Default)]
struct Kept {
    /// What the kept chunks are charged (see [`charge`]).
    bytes: usize,
    order: VecDeque<(Hash, u64)>,
    chunks: HashMap<Hash, (Bytes, Seal, u64)>,
    /// Chunks read once lately and not kept, oldest first, at most [`SEEN`].
    seen: VecDeque<(Hash, u64)>,
    seen_at: HashMap<Hash, u64>,
    next: u64,
}

/// How many chunks read once are remembered: 64 GiB of chunks at the average size.
const SEEN: usize = 1 << 16;

/// What keeping a chunk of `len` bytes costs: its read buffer (whole blocks, and one more for
/// the alignment) and its entries in the lists.
pub(super) fn charge(len: usize) -> usize {
    len.next_multiple_of(4096) + 4096 + 256
}

impl Recent {
    /// Keeps chunks charged up to `budget` bytes; 0 keeps none.
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
        self.kept().chunks.get(hash).map(|(data, seal, _)| Stored {
            data: data.clone(),
            seal: Some(*seal),
        })
    }

    /// Offers `data`, the bytes of chunk `hash` just read with their seal: kept if the chunk
    /// was read lately before, letting the oldest go to stay within the budget. A chunk that
    /// would cost more than the budget is not kept.
    pub(super) fn offer(&self, hash: &Hash, data: &Bytes, seal: Seal) {
        self.add(hash, data, seal, false);
    }

    /// Keeps `data`, the bytes of chunk `hash` just written, at once: their memory is the
    /// relay's chunk pool, which costs nothing more to hold (see [`crate::files::pool`]).
    pub(super) fn keep(&self, hash: &Hash, data: &Bytes, seal: Seal) {
        self.add(hash, data, seal, true);
    }

    fn add(&self, hash: &Hash, data: &Bytes, seal: Seal, at_once: bool) {
        let cost = charge(data.len());
        if cost > self.budget {
            return;
        }
        let mut k = self.kept();
        if k.chunks.contains_key(hash) {
            return;
        }
        let n = k.next;
        k.next += 1;
        if k.seen_at.remove(hash).is_none() && !at_once {
            if k.seen.len() >= SEEN
                && let Some((old, at)) = k.seen.pop_front()
                && k.seen_at.get(&old) == Some(&at)
            {
                k.seen_at.remove(&old);
            }
            k.seen.push_back((*hash, n));
            k.seen_at.insert(*hash, n);
            return;
        }
        while k.bytes + cost > self.budget {
            let Some((old, at)) = k.order.pop_front() else {
                break;
            };
            if k.chunks.get(&old).is_some_and(|e| e.2 == at)
                && let Some((gone, _, _)) = k.chunks.remove(&old)
            {
                k.bytes -= charge(gone.len());
            }
        }
        k.bytes += cost;
        k.order.push_back((*hash, n));
        k.chunks.insert(*hash, (data.clone(), seal, n));
    }

    /// Lets chunk `hash` go: collected from the store, or its kept copy found damaged.
    pub(super) fn forget(&self, hash: &Hash) {
        if self.budget == 0 {
            return;
        }
        let mut k = self.kept();
        if let Some((gone, _, _)) = k.chunks.remove(hash) {
            k.bytes -= charge(gone.len());
        }
        k.seen_at.remove(hash);
    }

    /// What the kept chunks are charged now.
    pub(super) fn bytes(&self) -> usize {
        self.kept().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_the_budget_holds() {
        let r = Recent::new(2 * charge(4));
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
        assert_eq!(r.bytes(), 2 * charge(4));
        // Too large for the budget: not kept, and nothing else goes for it.
        let (h, d) = chunk(4, 2 * charge(4));
        r.offer(&h, &d, [4; 8]);
        r.offer(&h, &d, [4; 8]);
        assert!(r.get(&h).is_none());
        assert_eq!(r.bytes(), 2 * charge(4));
        // Kept twice, counted once.
        let (h, d) = chunk(3, 4);
        r.offer(&h, &d, [3; 8]);
        assert_eq!(r.bytes(), 2 * charge(4));
        // Forgotten, then kept again at its second read, and not taken out by its old entry.
        r.forget(&[2; 32]);
        assert!(r.get(&[2; 32]).is_none());
        assert_eq!(r.bytes(), charge(4));
        let (h, d) = chunk(2, 4);
        r.offer(&h, &d, [2; 8]);
        r.offer(&h, &d, [2; 8]);
        let (h5, d5) = chunk(5, 4);
        r.offer(&h5, &d5, [5; 8]);
        r.offer(&h5, &d5, [5; 8]);
        assert!(r.get(&[3; 32]).is_none(), "the oldest kept went");
        assert!(r.get(&[2; 32]).is_some(), "kept anew, it stays");
        assert!(r.get(&h5).is_some());
        // A budget of nothing keeps nothing.
        let none = Recent::new(0);
        let (h, d) = chunk(6, 1);
        none.offer(&h, &d, [6; 8]);
        none.offer(&h, &d, [6; 8]);
        assert!(none.get(&h).is_none());
    }

    #[test]
    fn a_chunk_read_once_is_remembered_among_the_latest_only() {
        let r = Recent::new(1 << 20);
        let d = Bytes::from_static(b"x");
        let hash = |i: usize| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            h
        };
        r.offer(&hash(0), &d, [0; 8]);
        for i in 1..=SEEN {
            r.offer(&hash(i), &d, [0; 8]);
        }
        // The first fell out of the window: its next read counts as its first.
        r.offer(&hash(0), &d, [0; 8]);
        assert!(r.get(&hash(0)).is_none());
        r.offer(&hash(SEEN), &d, [0; 8]);
        assert!(r.get(&hash(SEEN)).is_some());
        assert!(r.kept().seen.len() <= SEEN && r.kept().seen_at.len() <= SEEN);
    }
}
