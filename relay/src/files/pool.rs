//! Memory reserved at start for the chunks a relay receives, so that a chunk just written can
//! stay in memory for the downloads that follow it without the relay taking new pages for it.
//!
//! Job: one anonymous mapping, faulted in when the relay starts, handed out in regions to the
//! frames that carry chunks ([`ChunkPool::take`]), first in, first out. A region's bytes are
//! the frame's body; the store keeps a chunk whose bytes lie in the pool
//! ([`ChunkPool::region_of`]) among its recent chunks, and copies a chunk it keeps from a disk
//! read into a region of its own ([`ChunkPool::copy`]). A region is reused once the last
//! reference to it is gone.
//! Memory taken afresh for each kept chunk was faulted in and zeroed page by page, which cost
//! the relay a third more CPU per GiB received; the pool pays that once, at start.
//!
//! Invariants:
//! - regions never overlap, and a region's memory is written only through the one [`PoolBuf`]
//!   that owns it; it is handed out again only after that buffer was dropped;
//! - regions are handed out in a ring, in order: the free space is the part between the newest
//!   region's end and the oldest live region. A region freed before older ones stays unused
//!   until they are freed too; a frame that finds no room takes heap memory instead, so a full
//!   pool slows nothing down, it only keeps less;
//! - every region begins on a [`DIRECT_ALIGN`] boundary.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use super::DIRECT_ALIGN;

/// Room for the chunks on their way in, besides those kept: a few clients' chunks in flight.
pub const IN_FLIGHT: usize = 64 << 20;

#[derive(Debug)]
pub struct ChunkPool {
    base: NonNull<u8>,
    size: usize,
    ring: Mutex<Ring>,
}

// SAFETY: the mapping is plain memory owned by the pool; each region is written only through
// the one `PoolBuf` that owns it (see the invariants), and the ring is behind a lock.
unsafe impl Send for ChunkPool {}
// SAFETY: as for `Send`: shared access only reads the mapping's address or takes the lock.
unsafe impl Sync for ChunkPool {}

/// The live regions, oldest first; region `id`'s place in `live` is `id - first`.
#[derive(Debug, Default)]
struct Ring {
    live: VecDeque<Region>,
    first: u64,
    /// Where the next region begins when there is room after the newest one.
    head: usize,
}

#[derive(Debug, Clone, Copy)]
struct Region {
    at: usize,
    len: usize,
    freed: bool,
}

impl ChunkPool {
    /// Reserves `size` bytes (rounded up to whole blocks) and faults them in; `None` if the
    /// system refuses the mapping.
    pub fn reserve(size: usize) -> Option<Arc<ChunkPool>> {
        let size = size.checked_next_multiple_of(DIRECT_ALIGN)?;
        if size == 0 {
            return None;
        }
        // SAFETY: a new private anonymous mapping; no memory of the process is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Arc::new(ChunkPool {
            base: NonNull::new(p.cast::<u8>())?,
            size,
            ring: Mutex::new(Ring::default()),
        }))
    }

    /// The bytes reserved.
    pub fn size(&self) -> usize {
        self.size
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Every change below leaves the ring whole before it can panic.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer with room for `len` bytes, beginning on a block boundary; `None` when
    /// the ring has no room for it now.
    pub fn take(self: &Arc<Self>, len: usize) -> Option<PoolBuf> {
        let len = len.max(1).next_multiple_of(DIRECT_ALIGN);
        let mut ring = self.ring();
        let at = ring.place(len, self.size)?;
        let id = ring.first + ring.live.len() as u64;
        ring.live.push_back(Region {
            at,
            len,
            freed: false,
        });
        ring.head = at + len;
        drop(ring);
        Some(PoolBuf {
            pool: self.clone(),
            id,
            // SAFETY: `at + len <= size`, within the mapping.
            ptr: unsafe { self.base.add(at) },
            cap: len,
            len: 0,
        })
    }

    /// A copy of `data` in a region of its own, with the region's size; `None` without room.
    pub fn copy(self: &Arc<Self>, data: &[u8]) -> Option<(bytes::Bytes, usize)> {
        let mut buf = self.take(data.len())?;
        buf.extend_from_slice(data);
        let size = buf.capacity();
        Some((bytes::Bytes::from_owner(buf), size))
    }

    /// Where `bytes` begin and end in the mapping, if they lie in it.
    fn place_of(&self, bytes: &[u8]) -> Option<(usize, usize)> {
        let at = (bytes.as_ptr() as usize).checked_sub(self.base.as_ptr() as usize)?;
        let end = at.checked_add(bytes.len())?;
        (end <= self.size).then_some((at, end))
    }

    /// The size of the region that `bytes` lie in, if they lie in one handed out.
    pub fn region_of(&self, bytes: &[u8]) -> Option<usize> {
        let (at, end) = self.place_of(bytes)?;
        self.ring()
            .live
            .iter()
            .rev()
            .find(|r| !r.freed && r.at <= at && end <= r.at + r.len)
            .map(|r| r.len)
    }

    /// A test of whether bytes lie in the oldest region still held, the one that keeps the
    /// ring from handing out what lies after it (as it is now: the test takes no lock).
    pub fn in_oldest(&self) -> impl Fn(&[u8]) -> bool + '_ {
        let oldest = self.ring().live.front().map(|r| (r.at, r.at + r.len));
        move |bytes| match (oldest, self.place_of(bytes)) {
            (Some((start, stop)), Some((at, end))) => start <= at && end <= stop,
            _ => false,
        }
    }

    /// The largest region [`ChunkPool::take`] could hand out now.
    pub fn room(&self) -> usize {
        let ring = self.ring();
        match (ring.live.front(), ring.live.back()) {
            (Some(old), Some(new)) if new.at >= old.at => (self.size - ring.head).max(old.at),
            (Some(old), Some(_)) => old.at - ring.head,
            _ => self.size,
        }
    }

    /// The bytes in regions handed out and not yet free for reuse.
    pub fn in_use(&self) -> usize {
        let ring = self.ring();
        match (ring.live.front(), ring.live.back()) {
            (Some(old), Some(new)) if new.at >= old.at => new.at + new.len - old.at,
            (Some(old), Some(new)) => self.size - old.at + new.at + new.len,
            _ => 0,
        }
    }

    fn release(&self, id: u64) {
        let mut ring = self.ring();
        let first = ring.first;
        if let Some(r) = id
            .checked_sub(first)
            .and_then(|i| ring.live.get_mut(i as usize))
        {
            r.freed = true;
        }
        while ring.live.front().is_some_and(|r| r.freed) {
            ring.live.pop_front();
            ring.first += 1;
        }
        if ring.live.is_empty() {
            ring.head = 0;
        }
    }
}

impl Ring {
    /// Where a region of `len` bytes goes, if there is room.
    fn place(&self, len: usize, size: usize) -> Option<usize> {
        let (Some(old), Some(new)) = (self.live.front(), self.live.back()) else {
            return (len <= size).then_some(0);
        };
        if new.at >= old.at {
            // Not wrapped: room after the newest, else from the start up to the oldest.
            if size - self.head >= len {
                Some(self.head)
            } else {
                (old.at >= len).then_some(0)
            }
        } else {
            // Wrapped: room between the newest and the oldest.
            (old.at - self.head >= len).then_some(self.head)
        }
    }
}

impl Drop for ChunkPool {
    fn drop(&mut self) {
        // SAFETY: every `PoolBuf` holds the pool, so none is left; the mapping is the pool's.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.size);
        }
    }
}

/// A region of the pool used as a buffer that fills up to its capacity.
#[derive(Debug)]
pub struct PoolBuf {
    pool: Arc<ChunkPool>,
    id: u64,
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer owns its region alone (see the invariants of the module).
unsafe impl Send for PoolBuf {}
// SAFETY: shared access only reads the written bytes; writing takes `&mut self`.
unsafe impl Sync for PoolBuf {}

impl PoolBuf {
    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Appends as much of `bytes` as there is room for; answers how much that was.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.cap - self.len);
        // SAFETY: `len + n <= cap`, inside the region this buffer owns; `bytes` cannot lie in
        // the unwritten part of the region, which nobody else can reach.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(self.len), n);
        }
        self.len += n;
        n
    }

    /// Appends `n` zeros, as many as there is room for.
    pub fn extend_zeros(&mut self, n: usize) {
        let n = n.min(self.cap - self.len);
        // SAFETY: as in `extend_from_slice`.
        unsafe {
            std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, n);
        }
        self.len += n;
    }
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the region were written through this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        self.pool.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = DIRECT_ALIGN;

    #[test]
    fn regions_are_aligned_apart_and_hold_what_was_written() {
        let pool = ChunkPool::reserve(16 * B).unwrap();
        let mut a = pool.take(3 * B - 10).unwrap();
        let mut b = pool.take(1).unwrap();
        assert_eq!((a.capacity(), b.capacity()), (3 * B, B));
        assert_eq!(a.as_ptr().align_offset(B), 0);
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 3 * B);
        a.extend_zeros(7);
        assert_eq!(a.extend_from_slice(&[1; 100]), 100);
        // Never past the region: the rest is refused, not written into the next one.
        assert_eq!(b.extend_from_slice(&[2; 2 * B]), B);
        assert_eq!(b.extend_from_slice(&[3]), 0);
        assert_eq!(&a.as_ref()[..7], &[0; 7]);
        assert_eq!(&a.as_ref()[7..], &[1; 100][..]);
        assert_eq!(b.as_ref(), &[2; B][..]);
        assert_eq!(pool.region_of(&a.as_ref()[7..]), Some(3 * B));
        assert_eq!(pool.region_of(b.as_ref()), Some(B));
        assert_eq!(pool.region_of(&[0u8; 4]), None);
        let in_oldest = pool.in_oldest();
        assert!(in_oldest(&a.as_ref()[1..]) && !in_oldest(b.as_ref()) && !in_oldest(&[0u8; 4]));
        assert_eq!(pool.in_use(), 4 * B);
        assert_eq!(pool.room(), 12 * B);
    }

    #[test]
    fn space_comes_back_oldest_first_and_the_ring_wraps() {
        let pool = ChunkPool::reserve(10 * B).unwrap();
        let a = pool.take(4 * B).unwrap();
        let b = pool.take(4 * B).unwrap();
        assert!(
            pool.take(3 * B).is_none(),
            "2 blocks left at the end, none before the oldest"
        );
        // A newer region freed first gives nothing back while the oldest lives.
        drop(b);
        assert_eq!(pool.in_use(), 8 * B);
        assert!(pool.take(3 * B).is_none());
        drop(a);
        assert_eq!(pool.in_use(), 0);
        let c = pool.take(6 * B).unwrap();
        let d = pool.take(3 * B).unwrap();
        // `c` gone: the ring wraps to the start, up to `d`.
        drop(c);
        let e = pool.take(5 * B).unwrap();
        assert_eq!(e.as_ptr(), pool.base.as_ptr().cast_const());
        assert!(
            pool.take(2 * B).is_none(),
            "1 block between the newest and the oldest"
        );
        assert!(pool.take(B).is_some());
        assert_eq!(pool.in_use(), 10 * B, "from d to the block after e");
        drop((d, e));
        assert_eq!(pool.room(), 10 * B);
        assert!(pool.take(11 * B).is_none(), "larger than the pool");
        assert!(pool.take(10 * B).is_some());
    }

    #[test]
    fn the_pool_outlives_its_buffers_and_bytes_keep_their_region() {
        let pool = ChunkPool::reserve(4 * B).unwrap();
        let mut buf = pool.take(B).unwrap();
        buf.extend_from_slice(b"chunk");
        drop(pool);
        let bytes = bytes::Bytes::from_owner(buf);
        assert_eq!(&bytes[..], b"chunk");
    }
}
