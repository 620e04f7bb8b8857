//! Batched datagram I/O for the media workers: `recvmmsg` in, `sendmmsg` out.
//!
//! Job: an SFU sends many copies of each packet it receives, each to a different address, so
//! the per-syscall cost (entry, socket lookup, exit) is paid per copy unless the copies are
//! handed to the kernel together. [`Inbox`] reads up to its batch of datagrams in one
//! `recvmmsg`; [`Outbox`] copies outgoing datagrams into fixed slots and hands them to one
//! `sendmmsg` when full or flushed. A batch of 1 is the plain path (one datagram per syscall),
//! kept so the two can be measured side by side (`media.io_batch`).
//!
//! Invariants:
//! - buffers are allocated once, when the worker starts: the packet path allocates nothing;
//! - a datagram larger than a slot ([`SLOT`], above any MTU-sized WebRTC datagram) is sent on
//!   its own, never truncated;
//! - a send error drops that datagram only (counted by the caller), never the rest of the batch.
//!
//! This is the one module of the media plane that calls libc directly (`unsafe`): every call
//! passes pointers into buffers owned by `self` that outlive the call, with lengths taken from
//! those same buffers.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{SockAddr, SockAddrStorage};

/// Bytes per datagram slot: larger than any datagram a WebRTC peer sends or str0m produces.
pub const SLOT: usize = 2048;

/// The largest batch a worker may be configured with.
pub const MAX_BATCH: usize = 64;

/// Received datagrams of one `recvmmsg`.
pub struct Inbox {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    batch: usize,
    n: usize,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("batch", &self.batch)
            .field("n", &self.n)
            .finish()
    }
}

impl Inbox {
    /// Room for `batch` datagrams (1..=[`MAX_BATCH`]).
    pub fn new(batch: usize) -> Inbox {
        let batch = batch.clamp(1, MAX_BATCH);
        Inbox {
            bufs: vec![0; batch * SLOT],
            lens: vec![0; batch],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { zeroed() }; batch],
            addr_lens: vec![0; batch],
            batch,
            n: 0,
        }
    }

    /// Read what is waiting, up to the batch; the count read. `WouldBlock` when nothing is.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.n = 0;
        let mut iovs: [libc::iovec; MAX_BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_BATCH];
        // SAFETY: mmsghdr is plain old data; all zeroes is a valid (empty) header.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        for i in 0..self.batch {
            iovs[i].iov_base = self.bufs[i * SLOT..].as_mut_ptr().cast();
            iovs[i].iov_len = SLOT;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points into self.bufs / self.addrs (sized above for
        // self.batch entries) and into iovs, all alive for the call; vlen <= their lengths.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                self.batch as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.n = r as usize;
        for (i, m) in msgs.iter().take(self.n).enumerate() {
            self.lens[i] = (m.msg_len as usize).min(SLOT);
            self.addr_lens[i] = m.msg_hdr.msg_namelen;
        }
        Ok(self.n)
    }

    /// Datagram `i` of the last read: its source (None if not an IP address) and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.n {
            return None;
        }
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: SockAddrStorage is a sockaddr_storage; the kernel wrote a socket address of
        // addr_lens[i] bytes into addrs[i], and SockAddr reads no further than that length.
        let addr = unsafe {
            *storage.view_as::<libc::sockaddr_storage>() = self.addrs[i];
            SockAddr::new(storage, self.addr_lens[i])
        }
        .as_socket()?;
        Some((addr, &self.bufs[i * SLOT..i * SLOT + self.lens[i]]))
    }
}

/// Outgoing datagrams waiting for one `sendmmsg`.
pub struct Outbox {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<SockAddr>,
    batch: usize,
    n: usize,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("batch", &self.batch)
            .field("queued", &self.n)
            .finish()
    }
}

impl Outbox {
    /// Room for `batch` datagrams (1..=[`MAX_BATCH`]).
    pub fn new(batch: usize) -> Outbox {
        let batch = batch.clamp(1, MAX_BATCH);
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        Outbox {
            bufs: vec![0; batch * SLOT],
            lens: vec![0; batch],
            addrs: vec![unspecified; batch],
            batch,
            n: 0,
        }
    }

    /// Datagrams queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.n
    }

    /// Queue `data` for `to`, sending the batch first if it is full. The count of datagrams
    /// the socket refused (0 in the usual case).
    pub fn push(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: &[u8]) -> usize {
        if data.len() > SLOT {
            let refused = self.flush(socket);
            return refused + usize::from(send_one(socket, &SockAddr::from(to), data).is_err());
        }
        let mut refused = 0;
        if self.n == self.batch {
            refused = self.flush(socket);
        }
        let i = self.n;
        self.bufs[i * SLOT..i * SLOT + data.len()].copy_from_slice(data);
        self.lens[i] = data.len();
        self.addrs[i] = SockAddr::from(to);
        self.n += 1;
        if self.batch == 1 {
            refused += self.flush(socket);
        }
        refused
    }

    /// Send everything queued; the count the socket refused. A full send buffer drops the
    /// rest of the batch rather than block: RTP recovers by NACK and keyframe requests, and
    /// blocking would stall every session on the worker.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> usize {
        let mut refused = 0;
        let mut start = 0;
        while start < self.n {
            match self.send_from(socket, start) {
                Ok(sent) => start += sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    refused += self.n - start;
                    break;
                }
                // An error for the first datagram (such as an earlier ICMP report, or a
                // route refusing it): drop that one and go on with the others.
                Err(_) => {
                    refused += 1;
                    start += 1;
                }
            }
        }
        self.n = 0;
        refused
    }

    fn send_from(&mut self, socket: &impl AsRawFd, start: usize) -> io::Result<usize> {
        let count = self.n - start;
        let mut iovs: [libc::iovec; MAX_BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_BATCH];
        // SAFETY: mmsghdr is plain old data; all zeroes is a valid (empty) header.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        for k in 0..count {
            let i = start + k;
            iovs[k].iov_base = self.bufs[i * SLOT..].as_mut_ptr().cast();
            iovs[k].iov_len = self.lens[i];
            let h = &mut msgs[k].msg_hdr;
            h.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.addrs[i].len();
            h.msg_iov = &raw mut iovs[k];
            h.msg_iovlen = 1;
        }
        // SAFETY: each header points at a queued slot of self.bufs (lens[i] <= SLOT bytes),
        // at its SockAddr and at iovs, all alive for the call; vlen = count <= MAX_BATCH.
        let r = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        match r {
            r if r < 0 => Err(io::Error::last_os_error()),
            // The kernel always takes at least one when it reports no error.
            0 => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            r => Ok(r as usize),
        }
    }
}

pub(super) fn send_one(socket: &impl AsRawFd, to: &SockAddr, data: &[u8]) -> io::Result<()> {
    // SAFETY: data and the address are valid for the lengths passed, for the whole call.
    let r = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
            to.as_ptr().cast(),
            to.len(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Read from `inbox` until `want` datagrams came or a second passed.
    fn read_all(inbox: &mut Inbox, socket: &UdpSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let t0 = Instant::now();
        while got.len() < want && t0.elapsed() < Duration::from_secs(1) {
            match inbox.recv(socket) {
                Ok(n) => {
                    for i in 0..n {
                        let (a, d) = inbox.get(i).unwrap();
                        got.push((a, d.to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    #[test]
    fn batches_carry_every_datagram_in_order_with_its_address() {
        for batch in [1, 7, 32] {
            let (a, b) = pair();
            let (c, _) = pair();
            let mut out = Outbox::new(batch);
            let to_b = b.local_addr().unwrap();
            let to_c = c.local_addr().unwrap();
            let mut refused = 0;
            for i in 0..100u32 {
                let size = 4 + (i as usize * 37) % 1400;
                let mut d = vec![(i % 251) as u8; size];
                d[..4].copy_from_slice(&i.to_be_bytes());
                let to = if i % 3 == 0 { to_c } else { to_b };
                refused += out.push(&a, to, &d);
            }
            refused += out.flush(&a);
            assert_eq!(refused, 0);
            assert_eq!(out.queued(), 0);
            let mut inbox = Inbox::new(batch);
            let got_b = read_all(&mut inbox, &b, 66);
            let got_c = read_all(&mut inbox, &c, 34);
            assert_eq!(got_b.len(), 66, "batch {batch}");
            assert_eq!(got_c.len(), 34, "batch {batch}");
            let from = a.local_addr().unwrap();
            let ids: Vec<u32> = got_b
                .iter()
                .map(|(src, d)| {
                    assert_eq!(*src, from);
                    u32::from_be_bytes(d[..4].try_into().unwrap())
                })
                .collect();
            let want: Vec<u32> = (0..100).filter(|i| i % 3 != 0).collect();
            assert_eq!(ids, want, "batch {batch}");
            for (_, d) in &got_b {
                let i = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
                assert_eq!(d.len(), 4 + (i * 37) % 1400);
                assert!(d[4..].iter().all(|&x| x == (i % 251) as u8));
            }
        }
    }

    #[test]
    fn an_oversized_datagram_is_sent_whole_and_after_what_was_queued() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let mut out = Outbox::new(8);
        assert_eq!(out.push(&a, to, b"first"), 0);
        let big = vec![7u8; SLOT + 500];
        assert_eq!(out.push(&a, to, &big), 0);
        assert_eq!(out.queued(), 0);
        let mut buf = vec![0u8; 4096];
        let t0 = Instant::now();
        let mut got = Vec::new();
        while got.len() < 2 && t0.elapsed() < Duration::from_secs(1) {
            if let Ok(n) = b.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        assert_eq!(got[0], b"first");
        assert_eq!(got[1], big);
    }

    #[test]
    fn an_unreachable_address_drops_only_its_own_datagram() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let mut out = Outbox::new(8);
        // Port 0 is refused by the kernel (EINVAL) at send time.
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 0));
        out.push(&a, to, b"one");
        out.push(&a, nowhere, b"lost");
        out.push(&a, to, b"two");
        assert_eq!(out.flush(&a), 1);
        let mut inbox = Inbox::new(8);
        let got: Vec<Vec<u8>> = read_all(&mut inbox, &b, 2)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn an_empty_socket_reports_would_block() {
        let (a, _) = pair();
        let mut inbox = Inbox::new(4);
        let e = inbox.recv(&a).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(inbox.get(0).is_none());
    }
}
