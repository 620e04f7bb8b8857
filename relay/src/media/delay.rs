//! When the last copy of each forwarded datagram left: the forward delay's bookkeeping.
//!
//! Job: a forwarded datagram becomes one [`Ticket`]; every copy written for it is counted on
//! the ticket and queued on its subscriber line ([`Pending`]); when str0m transmits an RTP
//! packet on that line, the line's oldest copy has left. When a ticket's last copy has left,
//! its read time is handed to the worker, which records the delay after the `sendmmsg`.
//!
//! str0m's pacer releases one packet per session per timeout pass, so the copies of one
//! datagram (and of a keyframe burst) leave over several passes; counting only the first pass
//! would understate the delay of every burst.
//!
//! Invariants:
//! - the ring of open tickets and every line's queue are fixed in size: nothing allocates per
//!   packet; a ticket overwritten while copies are still out is handed over as left then (its
//!   delay is at least that), a copy that finds its line's queue full is not counted;
//! - a stale ticket (its ring slot reused) is ignored, so a late transmit never completes the
//!   wrong datagram.

use std::collections::VecDeque;
use std::time::Instant;

/// Open tickets kept: at 10,000 forwarded datagrams per second on one worker, 400 ms.
const TICKETS: usize = 4096;

/// Copies queued per subscriber line before further ones go uncounted.
pub const LINE_QUEUE: usize = 256;

/// One forwarded datagram, named by a counter that only grows; its ring slot is `id % TICKETS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u32);

#[derive(Debug, Clone, Copy)]
struct Open {
    id: u32,
    read_at: Instant,
    /// Copies written and not yet transmitted.
    out: u32,
    /// Still being forwarded: copies may yet be written.
    writing: bool,
    /// Some copy was written.
    fed: bool,
}

/// The worker core's open tickets and the read times of those whose copies have all left.
#[derive(Debug)]
pub struct Book {
    ring: Vec<Option<Open>>,
    next: u32,
    left: Vec<Instant>,
}

impl Default for Book {
    fn default() -> Book {
        Book {
            ring: vec![None; TICKETS],
            next: 0,
            left: Vec::with_capacity(TICKETS),
        }
    }
}

impl Book {
    /// A datagram read at `read_at` starts being forwarded.
    pub fn open(&mut self, read_at: Instant) -> Ticket {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let slot = &mut self.ring[id as usize % TICKETS];
        if let Some(old) = slot.take()
            && old.out > 0
        {
            push_bounded(&mut self.left, old.read_at);
        }
        *slot = Some(Open {
            id,
            read_at,
            out: 0,
            writing: true,
            fed: false,
        });
        Ticket(id)
    }

    /// One copy of `t` was written and queued on `line`.
    pub fn wrote(&mut self, t: Ticket, line: &mut Pending) {
        if line.0.len() >= LINE_QUEUE {
            return;
        }
        if let Some(o) = self.get(t) {
            o.out += 1;
            o.fed = true;
            line.0.push_back(t);
        }
    }

    /// `t` is forwarded to every line it goes to.
    pub fn sealed(&mut self, t: Ticket) {
        if let Some(o) = self.get(t) {
            o.writing = false;
            self.settle(t);
        }
    }

    /// `line` transmitted an RTP packet: its oldest copy left.
    pub fn transmitted(&mut self, line: &mut Pending) {
        if let Some(t) = line.0.pop_front() {
            self.copy_left(t);
        }
    }

    /// `line` is gone: its queued copies will never leave; stop waiting for them.
    pub fn dropped(&mut self, line: &mut Pending) {
        while let Some(t) = line.0.pop_front() {
            self.copy_left(t);
        }
    }

    /// Read times of the datagrams whose copies have all left since the last call.
    pub fn take_left(&mut self) -> std::vec::Drain<'_, Instant> {
        self.left.drain(..)
    }

    /// Tickets with copies still out (for tests).
    pub fn open_tickets(&self) -> usize {
        self.ring.iter().flatten().filter(|o| o.out > 0).count()
    }

    fn copy_left(&mut self, t: Ticket) {
        if let Some(o) = self.get(t) {
            o.out = o.out.saturating_sub(1);
            self.settle(t);
        }
    }

    /// Hand `t` over once it is sealed and its last copy left. A datagram that fed no line
    /// (its copies all gated off) records nothing.
    fn settle(&mut self, t: Ticket) {
        let slot = &mut self.ring[t.0 as usize % TICKETS];
        if let Some(o) = *slot
            && !o.writing
            && o.out == 0
        {
            *slot = None;
            if o.fed {
                push_bounded(&mut self.left, o.read_at);
            }
        }
    }

    fn get(&mut self, t: Ticket) -> Option<&mut Open> {
        self.ring[t.0 as usize % TICKETS]
            .as_mut()
            .filter(|o| o.id == t.0)
    }
}

/// The copies queued on one subscriber line, oldest first.
#[derive(Debug)]
pub struct Pending(VecDeque<Ticket>);

impl Default for Pending {
    fn default() -> Pending {
        Pending(VecDeque::with_capacity(LINE_QUEUE))
    }
}

/// The shell takes the list every loop turn; should it not, the oldest read times stay and
/// newer ones are dropped rather than grow the list.
fn push_bounded(v: &mut Vec<Instant>, t: Instant) {
    if v.len() < v.capacity() {
        v.push(t);
    }
}

/// The SSRC of an outgoing SRTP packet (its header is in the clear), or `None` for SRTCP,
/// STUN and DTLS.
pub fn rtp_ssrc(datagram: &[u8]) -> Option<u32> {
    let head: &[u8; 12] = datagram.get(..12)?.try_into().ok()?;
    // RTP version 2; RTCP packet types 192..=223 share the second byte (RFC 5761).
    if head[0] >> 6 != 2 || (192..=223).contains(&head[1]) {
        return None;
    }
    Some(u32::from_be_bytes([head[8], head[9], head[10], head[11]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_datagram_is_left_when_its_last_copy_leaves() {
        let t0 = Instant::now();
        let mut b = Book::default();
        let (mut a, mut c) = (Pending::default(), Pending::default());
        let t = b.open(t0);
        b.wrote(t, &mut a);
        b.wrote(t, &mut c);
        b.sealed(t);
        b.transmitted(&mut a);
        assert_eq!(b.take_left().count(), 0, "one copy still out");
        b.transmitted(&mut c);
        assert_eq!(b.take_left().collect::<Vec<_>>(), vec![t0]);
        assert_eq!(b.open_tickets(), 0);
        // A transmit with nothing queued (padding, RTX) changes nothing.
        b.transmitted(&mut c);
        assert_eq!(b.take_left().count(), 0);
    }

    #[test]
    fn copies_leave_in_order_per_line_and_bursts_complete_one_by_one() {
        let t0 = Instant::now();
        let mut b = Book::default();
        let mut lines: Vec<Pending> = (0..3).map(|_| Pending::default()).collect();
        let reads: Vec<Instant> = (0..5).map(|i| t0 + Duration::from_millis(i)).collect();
        for &r in &reads {
            let t = b.open(r);
            for l in &mut lines {
                b.wrote(t, l);
            }
            b.sealed(t);
        }
        for (i, &r) in reads.iter().enumerate() {
            for l in &mut lines {
                b.transmitted(l);
            }
            assert_eq!(b.take_left().collect::<Vec<_>>(), vec![r], "pass {i}");
        }
    }

    #[test]
    fn nothing_written_records_nothing_and_a_dropped_line_releases_its_copies() {
        let t0 = Instant::now();
        let mut b = Book::default();
        let t = b.open(t0);
        b.sealed(t);
        assert_eq!(b.take_left().count(), 0);

        let mut l = Pending::default();
        let t = b.open(t0);
        b.wrote(t, &mut l);
        b.sealed(t);
        b.dropped(&mut l);
        assert_eq!(b.take_left().count(), 1);
    }

    #[test]
    fn a_reused_slot_hands_the_old_ticket_over_and_ignores_its_late_copies() {
        let t0 = Instant::now();
        let mut b = Book::default();
        let mut slow = Pending::default();
        let first = b.open(t0);
        b.wrote(first, &mut slow);
        b.sealed(first);
        for _ in 1..TICKETS {
            let t = b.open(t0);
            b.sealed(t);
        }
        assert_eq!(b.take_left().count(), 0);
        let t = b.open(t0 + Duration::from_secs(1));
        assert_eq!(
            b.take_left().collect::<Vec<_>>(),
            vec![t0],
            "overwritten: handed over"
        );
        let mut fresh = Pending::default();
        b.wrote(t, &mut fresh);
        b.sealed(t);
        // The slow line's late transmit names the old ticket: ignored, the new one stays open.
        b.transmitted(&mut slow);
        assert_eq!(b.take_left().count(), 0);
        assert_eq!(b.open_tickets(), 1);
    }

    #[test]
    fn a_full_line_stops_counting() {
        let mut b = Book::default();
        let mut l = Pending::default();
        let t = b.open(Instant::now());
        for _ in 0..LINE_QUEUE + 10 {
            b.wrote(t, &mut l);
        }
        b.sealed(t);
        for _ in 0..LINE_QUEUE {
            b.transmitted(&mut l);
        }
        assert_eq!(b.take_left().count(), 1);
    }

    #[test]
    fn rtp_ssrc_reads_rtp_only() {
        let mut rtp = [0u8; 20];
        rtp[0] = 0x80;
        rtp[1] = 96;
        rtp[8..12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(rtp_ssrc(&rtp), Some(0xdead_beef));
        let mut rtcp = rtp;
        rtcp[1] = 200;
        assert_eq!(rtp_ssrc(&rtcp), None);
        assert_eq!(
            rtp_ssrc(&[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42]),
            None,
            "STUN"
        );
        assert_eq!(rtp_ssrc(&[22u8; 40]), None, "DTLS");
        assert_eq!(rtp_ssrc(&rtp[..11]), None, "short");
    }
}
