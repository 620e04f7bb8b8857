//! Batched datagram I/O for the media workers: `recvmmsg` in, `sendmmsg` out.
//!
//! Job: an SFU sends many copies of each packet it receives, each to a different address, so
//! the per-syscall cost (entry, socket lookup, exit) is paid per copy unless the copies are
//! handed to the kernel together. [`Inbox`] reads up to its batch of datagrams in one
//! `recvmmsg`; [`Outbox`] copies outgoing datagrams into fixed slots and hands them to one
//! `sendmmsg` when full or flushed, a subscriber's consecutive copies grouped into one message
//! with UDP segmentation offload. A batch of 1 is the plain path (one datagram per syscall),
//! kept so the two can be measured side by side (`media.io_batch`).
//!
//! Invariants:
//! - buffers are allocated once, when the worker starts: the packet path allocates nothing;
//! - a datagram larger than a slot ([`SLOT`], above any MTU-sized WebRTC datagram) is sent on
//!   its own, never truncated;
//! - a send error drops that message only (its datagrams all go to one address; counted by the
//!   caller), never the rest of the batch;
//! - a grouped message carries datagrams of one size and a last one no larger, so the kernel
//!   cuts it back into exactly the datagrams queued.
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

/// Datagrams one offloaded send may carry: the kernel's `UDP_MAX_SEGMENTS` since UDP
/// segmentation offload came (Linux 4.18).
const MAX_SEGMENTS: usize = 64;

/// Bytes one offloaded send may carry: under the largest UDP payload over IPv4 and IPv6.
const MAX_OFFLOAD_BYTES: usize = 65_000;

/// Room for one `UDP_SEGMENT` control message (`CMSG_SPACE` of a `u16`), kept aligned.
pub(super) type Cmsg = [u64; 4];

/// Outgoing datagrams waiting for one `sendmmsg`.
///
/// Consecutive datagrams to one address (a subscriber's copies of the packets released
/// together) go to the kernel as one message with UDP segmentation offload (`UDP_SEGMENT`): it
/// routes and builds the packet once and cuts it into the datagrams on the way out. Offload needs
/// every datagram of a message but the last at one size, and the last no larger. Where the
/// kernel or the route refuses it, the outbox sends one datagram per message from then on.
pub struct Outbox {
    bufs: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<SockAddr>,
    batch: usize,
    n: usize,
    offload: bool,
    messages: u64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("batch", &self.batch)
            .field("queued", &self.n)
            .field("offload", &self.offload)
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
            offload: true,
            messages: 0,
        }
    }

    /// Datagrams queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.n
    }

    /// Whether sends still use segmentation offload.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Messages handed to the kernel so far (fewer than the datagrams where offload groups
    /// them).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Queue `data` for `to`, sending the batch first if it is full. The count of datagrams
    /// the socket refused (0 in the usual case).
    pub fn push(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: &[u8]) -> usize {
        if data.len() > SLOT {
            let refused = self.flush(socket);
            self.messages += 1;
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
                Err(e) => {
                    let group = self.group_len(start);
                    if group > 1 && self.offload_refused(socket, start, &e) {
                        start += 1;
                    } else {
                        // An error for the first message (such as an earlier ICMP report, or
                        // a route refusing it): drop its datagrams, all to one address, and
                        // go on with the others.
                        refused += group;
                        start += group;
                    }
                }
            }
        }
        self.n = 0;
        refused
    }

    /// How many queued datagrams from `i` on go in one message.
    fn group_len(&self, i: usize) -> usize {
        group_len(&self.lens[..self.n], &self.addrs[..self.n], i, self.offload)
    }

    /// A grouped message starting at `start` failed with `e`. If the error is one a refused
    /// offload gives and the group's first datagram goes out on its own, offload is what
    /// was refused: it is off from now on, and true.
    fn offload_refused(&mut self, socket: &impl AsRawFd, start: usize, e: &io::Error) -> bool {
        let first = &self.bufs[start * SLOT..start * SLOT + self.lens[start]];
        self.messages += 1;
        if !offload_refused(socket, &self.addrs[start], first, e) {
            return false;
        }
        self.offload = false;
        true
    }

    /// One `sendmmsg` of the queued datagrams from `start` on; how many datagrams the kernel
    /// took.
    fn send_from(&mut self, socket: &impl AsRawFd, start: usize) -> io::Result<usize> {
        let mut iovs: [libc::iovec; MAX_BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_BATCH];
        for (k, iov) in iovs.iter_mut().enumerate().take(self.n - start) {
            let i = start + k;
            iov.iov_base = self.bufs[i * SLOT..].as_mut_ptr().cast();
            iov.iov_len = self.lens[i];
        }
        let mut cmsgs: [Cmsg; MAX_BATCH] = [[0; 4]; MAX_BATCH];
        let mut groups = [0usize; MAX_BATCH];
        // SAFETY: mmsghdr is plain old data; all zeroes is a valid (empty) header.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
        let mut count = 0;
        let mut i = start;
        while i < self.n {
            let group = self.group_len(i);
            let h = &mut msgs[count].msg_hdr;
            h.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.addrs[i].len();
            h.msg_iov = &raw mut iovs[i - start];
            h.msg_iovlen = group;
            if group > 1 {
                set_segment(h, &mut cmsgs[count], self.lens[i]);
            }
            groups[count] = group;
            count += 1;
            i += group;
        }
        // SAFETY: each header points at queued slots of self.bufs through iovs (lens[i] <=
        // SLOT bytes each, msg_iovlen entries inside iovs), at its SockAddr and at its cmsgs
        // entry, all alive for the call; vlen = count <= MAX_BATCH.
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
            r => {
                self.messages += r as u64;
                Ok(groups[..r as usize].iter().sum())
            }
        }
    }
}

/// How many of the datagrams `lens`/`addrs` from `i` on one message carries: with `offload`,
/// the ones to `i`'s address at `i`'s size, and one shorter (not empty) to end it, at most
/// [`MAX_SEGMENTS`] and [`MAX_OFFLOAD_BYTES`]; without it, one.
pub(super) fn group_len(lens: &[usize], addrs: &[SockAddr], i: usize, offload: bool) -> usize {
    let seg = lens[i];
    if !offload || seg == 0 {
        return 1;
    }
    let mut k = i + 1;
    let mut bytes = seg;
    while k < lens.len()
        && k - i < MAX_SEGMENTS
        && (1..=seg).contains(&lens[k])
        && bytes + lens[k] <= MAX_OFFLOAD_BYTES
        && addrs[k] == addrs[i]
    {
        bytes += lens[k];
        k += 1;
        if lens[k - 1] < seg {
            break;
        }
    }
    k - i
}

/// Points `h` at `cmsg`, filled with one `UDP_SEGMENT` of `seg` bytes: the kernel cuts the
/// message's bytes into datagrams of that size. `cmsg` must outlive the send.
pub(super) fn set_segment(h: &mut libc::msghdr, cmsg: &mut Cmsg, seg: usize) {
    h.msg_control = cmsg.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    // SAFETY: msg_control points at `cmsg`, 32 bytes aligned for a cmsghdr, and msg_controllen
    // (24) covers one header and its u16, so CMSG_FIRSTHDR is that buffer and the writes stay
    // inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        libc::CMSG_DATA(c).cast::<u16>().write_unaligned(seg as u16);
    }
}

/// An offloaded message whose first datagram is `first`, to `to`, failed with `e`. True if the
/// error is one a refused offload gives and `first` goes out on its own: offload is what was
/// refused (it says so in the log), and `first` is sent.
pub(super) fn offload_refused(
    socket: &impl AsRawFd,
    to: &SockAddr,
    first: &[u8],
    e: &io::Error,
) -> bool {
    let refusal = [libc::EIO, libc::EINVAL, libc::EOPNOTSUPP, libc::ENOPROTOOPT];
    if !e.raw_os_error().is_some_and(|c| refusal.contains(&c)) {
        return false;
    }
    if send_one(socket, to, first).is_err() {
        return false;
    }
    tracing::warn!("UDP segmentation offload refused ({e}); media datagrams go one per message");
    true
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

/// Makes `socket` send without UDP checksums (`SO_NO_CHECK`), which the kernel refuses to
/// combine with segmentation offload: how the tests see the fallback.
#[cfg(test)]
pub(super) fn send_without_checksums(socket: &impl AsRawFd) {
    let off: libc::c_int = 1;
    // SAFETY: SO_NO_CHECK takes an int; the pointer and length describe `off`.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&raw const off).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_NO_CHECK: {}", io::Error::last_os_error());
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
