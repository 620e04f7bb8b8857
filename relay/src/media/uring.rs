//! The io_uring datagram path for the media workers (`media.io = "uring"`), behind the same
//! batch interface as [`super::udp`]'s `recvmmsg`/`sendmmsg`.
//!
//! - [`Inbox`]: one multishot `recvmsg` with provided buffers (a registered buffer ring) reads
//!   every datagram that arrives without a system call per read; the worker waits on the ring's
//!   file descriptor, which is readable when completions wait. A read hands back up to a batch
//!   of completions; their buffers return to the ring at the next read.
//! - [`Outbox`]: outgoing datagrams are copied into fixed slots, as for `sendmmsg`, and a flush
//!   submits one `sendmsg` entry per message in one `io_uring_enter`, waiting for all of them;
//!   a message carries one datagram, or a subscriber's consecutive ones with UDP segmentation
//!   offload, grouped and falling back as on the `sendmmsg` path.
//!
//! Each has a ring of its own, so a flush in the middle of a read's batch never sees the read's
//! completions. Where the kernel (or a seccomp filter) refuses io_uring, [`Inbox::new`] fails
//! and the worker falls back to the plain path.
//!
//! Invariants: every buffer the kernel may write into (the receive buffers, the buffer ring)
//! or read from (send slots, their headers and addresses) is owned by the struct, allocated
//! once, never moved (boxed slices), and outlives every request that names it: a send is
//! waited for before its slot is reused, and the receive is cancelled and waited for before
//! its buffers are freed.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut};
use io_uring::{IoUring, cqueue, opcode};
use socket2::{SockAddr, SockAddrStorage};

use super::udp::{Cmsg, MAX_BATCH, SLOT, group_len, offload_refused, send_one, set_segment};

/// Receive buffers in the ring (a power of two).
const RECV_BUFS: u16 = 512;
/// One receive buffer: the kernel's `io_uring_recvmsg_out` header, the source address and
/// the datagram.
const RECV_BUF: usize = 16 + size_of::<libc::sockaddr_storage>() + SLOT;
/// The buffer group of the receive.
const GROUP: u16 = 0;
/// `user_data` of the multishot receive (and of its cancel).
const RECV: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;

/// Datagrams read by the multishot receive.
pub struct Inbox {
    ring: IoUring,
    buf_ring: NonNull<BufRingEntry>,
    buf_ring_layout: Layout,
    bufs: Box<[u8]>,
    /// The receive's header: only the name and control lengths are read by the kernel.
    hdr: Box<libc::msghdr>,
    armed: bool,
    tail: u16,
    /// (buffer id, bytes) of the current batch.
    batch: Vec<(u16, usize)>,
    max: usize,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Inbox")
            .field("batch", &self.batch.len())
            .field("armed", &self.armed)
            .finish()
    }
}

// SAFETY: the raw pointer is the buffer ring this struct owns alone; nothing else refers to it.
unsafe impl Send for Inbox {}

impl Inbox {
    /// A ring reading `socket` in batches of up to `batch` datagrams; fails where io_uring,
    /// provided buffer rings or multishot receives are not available.
    pub fn new(socket: &impl AsRawFd, batch: usize) -> io::Result<Inbox> {
        let ring = IoUring::builder()
            .setup_cqsize(u32::from(RECV_BUFS) * 2)
            .build(8)?;
        let layout =
            Layout::from_size_align(usize::from(RECV_BUFS) * size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        let Some(buf_ring) = NonNull::new(ptr) else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        // SAFETY: hdr is plain old data; all zeroes is a valid (empty) header.
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let mut inbox = Inbox {
            ring,
            buf_ring,
            buf_ring_layout: layout,
            bufs: vec![0u8; usize::from(RECV_BUFS) * RECV_BUF].into_boxed_slice(),
            hdr,
            armed: false,
            tail: 0,
            batch: Vec::with_capacity(MAX_BATCH),
            max: batch.clamp(1, MAX_BATCH),
        };
        // SAFETY: the ring memory is page aligned, zeroed, RECV_BUFS entries long, and owned by
        // `inbox` until after the ring is gone (Drop unregisters it first).
        unsafe {
            inbox.ring.submitter().register_buf_ring_with_flags(
                buf_ring.as_ptr() as u64,
                RECV_BUFS,
                GROUP,
                0,
            )?;
        }
        for bid in 0..RECV_BUFS {
            inbox.give_back(bid);
        }
        inbox.arm(socket.as_raw_fd())?;
        Ok(inbox)
    }

    /// The descriptor to wait on: readable while completions wait.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Hands buffer `bid` back to the kernel.
    fn give_back(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (RECV_BUFS - 1));
        let addr = self.bufs[usize::from(bid) * RECV_BUF..].as_ptr() as u64;
        // SAFETY: idx < RECV_BUFS, so the entry lies in the ring this struct owns; the kernel
        // reads entries only up to the tail, which is published after the entry is written.
        unsafe {
            let e = &mut *self.buf_ring.as_ptr().add(idx);
            e.set_addr(addr);
            e.set_len(RECV_BUF as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field is a u16 inside the first entry, which lives as long as self;
        // the kernel reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.buf_ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn arm(&mut self, fd: RawFd) -> io::Result<()> {
        let sqe = opcode::RecvMsgMulti::new(Fd(fd), &raw const *self.hdr, GROUP)
            .build()
            .user_data(RECV);
        // SAFETY: the entry names self.hdr, which is boxed and outlives the request (Drop
        // cancels it and waits), and buffers of the group this struct registered.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.ring.submit()?;
        self.armed = true;
        Ok(())
    }

    /// Take up to a batch of received datagrams; the count. `WouldBlock` when none waits.
    /// The buffers of the previous batch go back to the kernel first.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let done: Vec<u16> = self.batch.drain(..).map(|(bid, _)| bid).collect();
        for bid in done {
            self.give_back(bid);
        }
        let mut failed = None;
        {
            let max = self.max;
            let mut cq = self.ring.completion();
            while self.batch.len() < max {
                let Some(cqe) = cq.next() else { break };
                if cqe.user_data() != RECV {
                    continue;
                }
                if !cqueue::more(cqe.flags()) {
                    self.armed = false;
                }
                let res = cqe.result();
                match (res, cqueue::buffer_select(cqe.flags())) {
                    (n, Some(bid)) if n >= 0 => self.batch.push((bid, n as usize)),
                    (n, Some(bid)) => {
                        // An error that still used a buffer: give it back with the next batch.
                        self.batch.push((bid, 0));
                        failed = Some(io::Error::from_raw_os_error(-n));
                    }
                    // Out of buffers (the multishot ends; re-armed below) or another error.
                    (n, None) if n < 0 && n != -libc::ENOBUFS => {
                        failed = Some(io::Error::from_raw_os_error(-n));
                    }
                    _ => {}
                }
            }
        }
        if !self.armed {
            self.arm(socket.as_raw_fd())?;
        }
        if self.batch.is_empty() {
            return Err(failed.unwrap_or_else(|| io::Error::from(io::ErrorKind::WouldBlock)));
        }
        Ok(self.batch.len())
    }

    /// Datagram `i` of the last read: its source (None if not an IP address, or if nothing
    /// usable arrived in it) and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let (bid, n) = *self.batch.get(i)?;
        let start = usize::from(bid) * RECV_BUF;
        let buf = self.bufs.get(start..start + n.min(RECV_BUF))?;
        let out = RecvMsgOut::parse(buf, &self.hdr).ok()?;
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            return None;
        }
        let name = out.name_data();
        let len = (out.incoming_name_len() as usize).min(name.len());
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: SockAddrStorage is a sockaddr_storage; `len` bytes of a socket address the
        // kernel wrote are copied into it (len <= its size), and SockAddr reads no further.
        let addr = unsafe {
            let dst = storage.view_as::<libc::sockaddr_storage>() as *mut libc::sockaddr_storage;
            let len = len.min(size_of::<libc::sockaddr_storage>());
            std::ptr::copy_nonoverlapping(name.as_ptr(), dst.cast::<u8>(), len);
            SockAddr::new(storage, len as libc::socklen_t)
        }
        .as_socket()?;
        let len = out.payload_data().len();
        let start = 16 + self.hdr.msg_namelen as usize + self.hdr.msg_controllen;
        Some((addr, buf.get(start..start + len)?))
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Cancel the receive and wait for its last completion, so the kernel writes into no
        // buffer of ours after this; then unregister the ring before its memory goes.
        if self.armed {
            let sqe = opcode::AsyncCancel::new(RECV).build().user_data(CANCEL);
            // SAFETY: the cancel names no memory.
            let pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
            let mut open = pushed;
            for _ in 0..1_000 {
                if !open {
                    break;
                }
                if self.ring.submit_and_wait(1).is_err() {
                    break;
                }
                for cqe in self.ring.completion() {
                    if cqe.user_data() == RECV && !cqueue::more(cqe.flags()) {
                        open = false;
                    }
                }
            }
            if open {
                // The kernel still holds the receive: leak the buffers rather than free them
                // under it.
                std::mem::forget(std::mem::take(&mut self.bufs));
                return;
            }
        }
        let _ = self.ring.submitter().unregister_buf_ring(GROUP);
        // SAFETY: allocated in `new` with this layout; the kernel no longer refers to it.
        unsafe { dealloc(self.buf_ring.as_ptr().cast(), self.buf_ring_layout) };
    }
}

/// Outgoing datagrams waiting for one submission of `sendmsg` entries.
pub struct Outbox {
    ring: IoUring,
    data: Box<[u8]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::msghdr]>,
    cmsgs: Box<[Cmsg]>,
    /// Per message, by the index of its first datagram: how many datagrams it carries.
    groups: Box<[usize]>,
    addrs: Vec<SockAddr>,
    lens: Vec<usize>,
    batch: usize,
    n: usize,
    offload: bool,
    messages: u64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("uring::Outbox")
            .field("batch", &self.batch)
            .field("n", &self.n)
            .field("offload", &self.offload)
            .finish()
    }
}

// SAFETY: the iovec and msghdr pointers point into buffers this struct owns alone.
unsafe impl Send for Outbox {}

impl Outbox {
    /// Room for `batch` datagrams (1..=[`MAX_BATCH`]).
    pub fn new(batch: usize) -> io::Result<Outbox> {
        let batch = batch.clamp(1, MAX_BATCH);
        let ring = IoUring::builder().build(MAX_BATCH as u32)?;
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Ok(Outbox {
            ring,
            data: vec![0u8; batch * SLOT].into_boxed_slice(),
            iovs: vec![empty; batch].into_boxed_slice(),
            // SAFETY: msghdr is plain old data; all zeroes is a valid (empty) header.
            hdrs: (0..batch).map(|_| unsafe { zeroed() }).collect(),
            cmsgs: vec![[0; 4]; batch].into_boxed_slice(),
            groups: vec![0; batch].into_boxed_slice(),
            addrs: Vec::with_capacity(batch),
            lens: vec![0; batch],
            batch,
            n: 0,
            offload: true,
            messages: 0,
        })
    }

    /// Whether sends still use segmentation offload.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Messages submitted so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Queue one datagram; the count refused (a flush when the batch is full).
    pub fn push(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: &[u8]) -> usize {
        if data.len() > SLOT {
            return usize::from(send_one(socket, &SockAddr::from(to), data).is_err());
        }
        let i = self.n;
        self.data[i * SLOT..i * SLOT + data.len()].copy_from_slice(data);
        self.lens[i] = data.len();
        if self.addrs.len() > i {
            self.addrs[i] = SockAddr::from(to);
        } else {
            self.addrs.push(SockAddr::from(to));
        }
        self.n += 1;
        if self.n == self.batch {
            self.flush(socket)
        } else {
            0
        }
    }

    /// Send everything queued in one submission and wait for it; the count refused. A
    /// subscriber's consecutive datagrams go as one message with segmentation offload, as on
    /// the `sendmmsg` path.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> usize {
        let n = self.n;
        if n == 0 {
            return 0;
        }
        self.n = 0;
        let fd = Fd(socket.as_raw_fd());
        for i in 0..n {
            self.iovs[i].iov_base = self.data[i * SLOT..].as_mut_ptr().cast();
            self.iovs[i].iov_len = self.lens[i];
        }
        let mut messages = 0;
        let mut i = 0;
        while i < n {
            let group = group_len(&self.lens[..n], &self.addrs[..n], i, self.offload);
            self.groups[i] = group;
            let h = &mut self.hdrs[i];
            h.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            h.msg_namelen = self.addrs[i].len();
            h.msg_iov = &raw mut self.iovs[i];
            h.msg_iovlen = group;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            if group > 1 {
                set_segment(h, &mut self.cmsgs[i], self.lens[i]);
            }
            let sqe = opcode::SendMsg::new(fd, &raw const self.hdrs[i])
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(i as u64);
            // SAFETY: the entry names hdrs[i], its iovecs (group of them from i), slots,
            // control message and address, all owned by self and left untouched until this
            // flush has reaped every completion below.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                return n;
            }
            messages += 1;
            i += group;
        }
        self.messages += messages as u64;
        let mut refused = 0;
        let mut seen = 0;
        let mut failed: [(usize, i32); MAX_BATCH] = [(0, 0); MAX_BATCH];
        let mut failures = 0;
        // Bounded: each round waits for at least one completion; an interrupted wait retries.
        while seen < messages {
            match self.ring.submit_and_wait(messages - seen) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The ring itself failed (it does not for a valid ring): count every
                // datagram of the flush as refused, not knowing which messages left.
                Err(_) => return n,
            }
            for cqe in self.ring.completion() {
                seen += 1;
                if cqe.result() < 0 {
                    failed[failures] = (cqe.user_data() as usize, -cqe.result());
                    failures += 1;
                }
            }
        }
        for &(start, errno) in &failed[..failures] {
            refused += self.failed_message(socket, start, errno);
        }
        refused
    }

    /// The message of the datagrams from `start` failed with `errno`; the count refused. If
    /// offload was what the kernel refused, it is off from now on and the datagrams go one by
    /// one.
    fn failed_message(&mut self, socket: &impl AsRawFd, start: usize, errno: i32) -> usize {
        let group = self.groups[start];
        let datagram = |k: usize| &self.data[k * SLOT..k * SLOT + self.lens[k]];
        let e = io::Error::from_raw_os_error(errno);
        if group < 2 || !offload_refused(socket, &self.addrs[start], datagram(start), &e) {
            return group;
        }
        self.offload = false;
        // The lone first datagram, then each of the others, one message apiece.
        self.messages += group as u64;
        (start + 1..start + group)
            .filter(|&k| send_one(socket, &self.addrs[k], datagram(k)).is_err())
            .count()
    }
}
