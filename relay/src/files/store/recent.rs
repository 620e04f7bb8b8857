//! Recent chunks kept in memory up to a byte budget, the oldest going first: each chunk just
//! written whose bytes arrived in the relay's chunk pool (a file is usually fetched soon after it
//! is sent), and each chunk read more than once lately, so that a file many fetch (a broadcast
//! that every office downloads) is read from disk twice, not once per download, while a file
//! read once does not push out what was kept. The store puts every kept chunk in its pool (see
//! [`crate::files::pool`]); each is charged the memory it holds. Chunks are named by their
//! content, so a kept chunk can never be stale; a read from here is checked against its seal as
//! a read from disk is.

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
    /// What the kept chunks are charged: the memory each holds, and [`ENTRY`].
    bytes: usize,
    order: VecDeque<(Hash, u64)>,
    chunks: HashMap<Hash, Entry>,
    /// Chunks read once lately and not kept, oldest first, at most [`SEEN`].
    seen: VecDeque<(Hash, u64)>,
    seen_at: HashMap<Hash, u64>,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    data: Bytes,
    seal: Seal,
    n: u64,
    cost: usize,
}

/// How many chunks read once are remembered: 64 GiB of chunks at the average size.
const SEEN: usize = 1 << 16;

/// What a kept chunk's entries in the lists are charged, besides its memory.
pub(super) const ENTRY: usize = 256;

impl Kept {
    fn remove(&mut self, hash: &Hash) -> Option<Entry> {
        let gone = self.chunks.remove(hash)?;
        self.bytes -= gone.cost;
        Some(gone)
    }

    /// Lets go of the oldest kept chunk whose bytes satisfy `which`; whether there was one.
    fn let_go_first(&mut self, which: impl Fn(&[u8]) -> bool) -> bool {
        let found = self.order.iter().position(|(hash, n)| {
            self.chunks
                .get(hash)
                .is_some_and(|e| e.n == *n && which(&e.data))
        });
        let Some(i) = found else {
            return false;
        };
        if let Some((hash, _)) = self.order.remove(i) {
            self.remove(&hash);
        }
        true
    }
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
        self.kept().chunks.get(hash).map(|e| Stored {
            data: e.data.clone(),
            seal: Some(e.seal),
        })
    }

    /// Notes that chunk `hash` was read from disk; whether it was read lately before, and so is
    /// worth keeping now.
    pub(super) fn read_again(&self, hash: &Hash) -> bool {
        if self.budget == 0 {
            return false;
        }
        let mut k = self.kept();
        if k.seen_at.remove(hash).is_some() {
            return true;
        }
        if k.seen.len() >= SEEN
            && let Some((old, at)) = k.seen.pop_front()
            && k.seen_at.get(&old) == Some(&at)
        {
            k.seen_at.remove(&old);
        }
        let n = k.next;
        k.next += 1;
        k.seen.push_back((*hash, n));
        k.seen_at.insert(*hash, n);
        false
    }

    /// Keeps `data`, the bytes of chunk `hash` with their seal, charged `memory` (what holding
    /// `data` keeps from other use) and [`ENTRY`], letting the oldest go to stay within the
    /// budget. A chunk that would cost more than the budget, or is kept already, is not kept.
    pub(super) fn keep(&self, hash: &Hash, data: Bytes, seal: Seal, memory: usize) {
        let cost = memory + ENTRY;
        if cost > self.budget {
            return;
        }
        let mut k = self.kept();
        if k.chunks.contains_key(hash) {
            return;
        }
        k.seen_at.remove(hash);
        while k.bytes + cost > self.budget {
            let Some((old, at)) = k.order.pop_front() else {
                break;
            };
            if k.chunks.get(&old).is_some_and(|e| e.n == at) {
                k.remove(&old);
            }
        }
        let n = k.next;
        k.next += 1;
        k.bytes += cost;
        k.order.push_back((*hash, n));
        k.chunks.insert(
            *hash,
            Entry {
                data,
                seal,
                n,
                cost,
            },
        );
    }

    /// Lets go of the oldest kept chunk whose bytes satisfy `which`; whether there was one.
    pub(super) fn let_go_first(&self, which: impl Fn(&[u8]) -> bool) -> bool {
        self.kept().let_go_first(which)
    }

    /// Lets chunk `hash` go: collected from the store, or its kept copy found damaged.
    pub(super) fn forget(&self, hash: &Hash) {
        if self.budget == 0 {
            return;
        }
        let mut k = self.kept();
        k.remove(hash);
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
        let cost = 4 + ENTRY;
        let r = Recent::new(2 * cost);
        let chunk = |n: u8| ([n; 32], Bytes::from(vec![n; 4]));
        for n in 1..=3 {
            let (h, d) = chunk(n);
            r.keep(&h, d, [n; 8], 4);
        }
        assert!(r.get(&[1; 32]).is_none(), "the oldest went");
        assert_eq!(r.get(&[2; 32]).unwrap().data, vec![2u8; 4]);
        assert_eq!(r.get(&[3; 32]).unwrap().seal, Some([3; 8]));
        assert_eq!(r.bytes(), 2 * cost);
        // Too large for the budget: not kept, and nothing else goes for it.
        let (h, d) = chunk(4);
        r.keep(&h, d, [4; 8], 2 * cost);
        assert!(r.get(&h).is_none());
        assert_eq!(r.bytes(), 2 * cost);
        // Kept twice, counted once.
        let (h, d) = chunk(3);
        r.keep(&h, d, [3; 8], 4);
        assert_eq!(r.bytes(), 2 * cost);
        // Forgotten, then kept again, and not taken out by its old entry.
        r.forget(&[2; 32]);
        assert!(r.get(&[2; 32]).is_none());
        assert_eq!(r.bytes(), cost);
        let (h, d) = chunk(2);
        r.keep(&h, d, [2; 8], 4);
        let (h5, d5) = chunk(5);
        r.keep(&h5, d5, [5; 8], 4);
        assert!(r.get(&[3; 32]).is_none(), "the oldest kept went");
        assert!(r.get(&[2; 32]).is_some(), "kept anew, it stays");
        assert!(r.get(&h5).is_some());
        // Let go by where their bytes are: the oldest that matches, and only that one.
        assert!(r.let_go_first(|d| d[0] == 5));
        assert!(r.get(&h5).is_none() && r.get(&[2; 32]).is_some());
        assert!(!r.let_go_first(|d| d[0] == 5));
        assert_eq!(r.bytes(), cost);
        // A budget of nothing keeps nothing.
        let none = Recent::new(0);
        let (h, d) = chunk(6);
        assert!(!none.read_again(&h) && !none.read_again(&h));
        none.keep(&h, d, [6; 8], 1);
        assert!(none.get(&h).is_none());
    }

    #[test]
    fn a_chunk_read_once_is_remembered_among_the_latest_only() {
        let r = Recent::new(1 << 20);
        let hash = |i: usize| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            h
        };
        assert!(!r.read_again(&hash(0)));
        for i in 1..=SEEN {
            assert!(!r.read_again(&hash(i)));
        }
        // The first fell out of the window: its next read counts as its first.
        assert!(!r.read_again(&hash(0)));
        assert!(r.read_again(&hash(SEEN)));
        assert!(!r.read_again(&hash(SEEN)), "read again, it starts over");
        assert!(r.kept().seen.len() <= SEEN && r.kept().seen_at.len() <= SEEN);
    }
}
