//! The media workers' datagram I/O, chosen by `media.io`: batched `recvmmsg`/`sendmmsg`
//! ([`super::udp`]) or io_uring ([`super::uring`]), behind one interface.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use super::{udp, uring};

/// Which datagram path the workers use (`media.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoKind {
    /// `recvmmsg` and `sendmmsg`, readiness from epoll.
    #[default]
    Mmsg,
    /// A multishot receive with provided buffers and batched sends on io_uring.
    Uring,
}

impl IoKind {
    pub fn parse(s: &str) -> Option<IoKind> {
        match s {
            "mmsg" => Some(IoKind::Mmsg),
            "uring" => Some(IoKind::Uring),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            IoKind::Mmsg => "mmsg",
            IoKind::Uring => "uring",
        }
    }
}

/// Where received datagrams come from.
#[derive(Debug)]
pub enum Reader {
    Mmsg(udp::Inbox),
    Uring(Box<uring::Inbox>),
}

/// Where outgoing datagrams queue.
#[derive(Debug)]
pub enum Writer {
    Mmsg(udp::Outbox),
    Uring(Box<uring::Outbox>),
}

/// The reader and writer of `kind` on `socket`, in batches of `batch`. Where io_uring is
/// refused (an old kernel, `kernel.io_uring_disabled`, a seccomp filter), the plain path, with
/// the reason, so the caller can say so once.
pub fn open(
    kind: IoKind,
    socket: &impl AsRawFd,
    batch: usize,
) -> (Reader, Writer, Option<io::Error>) {
    let mmsg = || {
        (
            Reader::Mmsg(udp::Inbox::new(batch)),
            Writer::Mmsg(udp::Outbox::new(batch)),
        )
    };
    if kind == IoKind::Mmsg {
        let (r, w) = mmsg();
        return (r, w, None);
    }
    match (uring::Inbox::new(socket, batch), uring::Outbox::new(batch)) {
        (Ok(r), Ok(w)) => (Reader::Uring(Box::new(r)), Writer::Uring(Box::new(w)), None),
        (Err(e), _) | (_, Err(e)) => {
            let (r, w) = mmsg();
            (r, w, Some(e))
        }
    }
}

impl Reader {
    /// Read what is waiting, up to the batch; the count. `WouldBlock` when nothing is.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        match self {
            Reader::Mmsg(i) => i.recv(socket),
            Reader::Uring(i) => i.recv(socket),
        }
    }

    /// Datagram `i` of the last read: its source and bytes.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        match self {
            Reader::Mmsg(r) => r.get(i),
            Reader::Uring(r) => r.get(i),
        }
    }

    /// The descriptor that becomes readable when datagrams wait: the ring's for io_uring,
    /// else the socket's.
    pub fn ready_fd(&self, socket: &impl AsRawFd) -> RawFd {
        match self {
            Reader::Mmsg(_) => socket.as_raw_fd(),
            Reader::Uring(r) => r.fd(),
        }
    }
}

impl Writer {
    /// Queue one datagram; the count refused.
    pub fn push(&mut self, socket: &impl AsRawFd, to: SocketAddr, data: &[u8]) -> usize {
        match self {
            Writer::Mmsg(o) => o.push(socket, to, data),
            Writer::Uring(o) => o.push(socket, to, data),
        }
    }

    /// Send everything queued; the count refused.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> usize {
        match self {
            Writer::Mmsg(o) => o.flush(socket),
            Writer::Uring(o) => o.flush(socket),
        }
    }

    /// Whether sends still use UDP segmentation offload (off for good once refused).
    pub fn offload(&self) -> bool {
        match self {
            Writer::Mmsg(o) => o.offload(),
            Writer::Uring(o) => o.offload(),
        }
    }

    /// Messages handed to the kernel so far.
    pub fn messages(&self) -> u64 {
        match self {
            Writer::Mmsg(o) => o.messages(),
            Writer::Uring(o) => o.messages(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    use super::*;

    /// Reads until `want` datagrams came or two seconds passed.
    fn read_all(r: &mut Reader, socket: &UdpSocket, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < want && Instant::now() < deadline {
            match r.recv(socket) {
                Ok(n) => {
                    for i in 0..n {
                        let (from, data) = r.get(i).expect("a datagram with its source");
                        got.push((from, data.to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    fn both_ways(kind: IoKind, batch: usize) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        let (mut r, mut w, refused) = open(kind, &socket, batch);
        assert!(refused.is_none(), "{kind:?} refused: {refused:?}");
        assert_eq!(matches!(r, Reader::Uring(_)), kind == IoKind::Uring);
        assert_eq!(matches!(w, Writer::Uring(_)), kind == IoKind::Uring);

        // In: more datagrams than a batch, of every size up to a full slot, each with its
        // source (in rounds that fit the socket's default receive buffer).
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let sizes: Vec<usize> = (0..200).map(|i| 1 + (i * 37) % udp::SLOT).collect();
        let mut got = Vec::new();
        for round in sizes.chunks(50).enumerate() {
            for (k, n) in round.1.iter().enumerate() {
                let i = round.0 * 50 + k;
                let d: Vec<u8> = (0..*n).map(|k| (i + k) as u8).collect();
                peer.send_to(&d, socket.local_addr().unwrap())
                    .expect("send");
            }
            got.extend(read_all(&mut r, &socket, round.1.len()));
        }
        assert_eq!(got.len(), sizes.len());
        for (i, (from, d)) in got.iter().enumerate() {
            assert_eq!(*from, peer.local_addr().unwrap());
            assert_eq!(d.len(), sizes[i], "datagram {i}");
            assert!(d.iter().enumerate().all(|(k, b)| *b == (i + k) as u8));
        }

        // Out: queued datagrams leave on a flush (or when a batch fills), in order.
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = peer.local_addr().unwrap();
        let mut refused = 0;
        for i in 0..100u8 {
            refused += w.push(&socket, to, &[i; 300]);
        }
        refused += w.flush(&socket);
        assert_eq!(refused, 0);
        let mut buf = [0u8; 2048];
        for i in 0..100u8 {
            let (n, from) = peer.recv_from(&mut buf).expect("a sent datagram");
            assert_eq!(from, socket.local_addr().unwrap());
            assert_eq!(&buf[..n], &[i; 300][..]);
        }
    }

    /// Queues runs of datagrams to three receivers (equal sizes with a shorter last one, a
    /// longer one that must start a new message, an empty one, runs longer than a batch),
    /// flushes, and checks that each receiver got exactly its datagrams, in order, with
    /// their bounds. The count of datagrams.
    fn runs_arrive_whole(w: &mut Writer, socket: &UdpSocket) -> u64 {
        let rx: Vec<UdpSocket> = (0..3)
            .map(|_| {
                let r = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
                r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                r
            })
            .collect();
        let mut want: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        let mut refused = 0;
        let mut n = 0u32;
        let runs: [(usize, &[usize]); 6] = [
            (0, &[1100, 1100, 1100, 700]),
            (1, &[500; 70]),
            (0, &[900, 900, 1000, 1000, 0, 40]),
            (2, &[1200]),
            (1, &[300, 300, 300]),
            (2, &[10, 20, 30]),
        ];
        for (to, sizes) in runs {
            for &size in sizes {
                let mut d = vec![(n % 251) as u8; size];
                if size >= 4 {
                    d[..4].copy_from_slice(&n.to_be_bytes());
                }
                n += 1;
                refused += w.push(socket, rx[to].local_addr().unwrap(), &d);
                want[to].push(d);
            }
        }
        refused += w.flush(socket);
        assert_eq!(refused, 0);
        let mut buf = [0u8; udp::SLOT];
        for (to, want) in want.iter().enumerate() {
            for (k, w) in want.iter().enumerate() {
                let got = rx[to].recv(&mut buf).expect("a datagram");
                assert_eq!(&buf[..got], &w[..], "receiver {to}, datagram {k}");
            }
        }
        u64::from(n)
    }

    fn offloaded(kind: IoKind) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (_, mut w, refused) = open(kind, &socket, udp::MAX_BATCH);
        assert!(refused.is_none(), "{kind:?} refused: {refused:?}");
        let datagrams = runs_arrive_whole(&mut w, &socket);
        assert!(w.offload(), "offload stayed on");
        // 87 datagrams: grouped, the runs make 12 messages (the batch of 64 cuts one run).
        assert!(
            w.messages() <= 14,
            "{kind:?}: {} messages for {datagrams} datagrams",
            w.messages()
        );
    }

    fn refused_offload(kind: IoKind) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // A socket that sends without UDP checksums cannot offload: the kernel refuses the
        // first grouped message (EINVAL) and takes the same datagrams one by one.
        udp::send_without_checksums(&socket);
        let (_, mut w, _) = open(kind, &socket, udp::MAX_BATCH);
        runs_arrive_whole(&mut w, &socket);
        assert!(!w.offload(), "{kind:?}: offload turned off");
    }

    #[test]
    fn a_subscribers_run_goes_in_one_message_and_arrives_as_datagrams() {
        offloaded(IoKind::Mmsg);
        offloaded(IoKind::Uring);
    }

    #[test]
    fn a_refused_offload_falls_back_to_a_datagram_per_message() {
        refused_offload(IoKind::Mmsg);
        refused_offload(IoKind::Uring);
    }

    #[test]
    fn recvmmsg_and_sendmmsg_carry_datagrams_both_ways() {
        both_ways(IoKind::Mmsg, 32);
    }

    #[test]
    fn io_uring_carries_datagrams_both_ways() {
        both_ways(IoKind::Uring, 32);
        both_ways(IoKind::Uring, 1);
    }

    #[test]
    fn the_names_of_the_paths() {
        for k in [IoKind::Mmsg, IoKind::Uring] {
            assert_eq!(IoKind::parse(k.label()), Some(k));
        }
        assert_eq!(IoKind::parse("epoll"), None);
    }
}
