//! What the QUIC server and client share: TLS and transport settings sized for multi-GB
//! transfers, UDP sockets with raised buffers, and reading and writing frames on streams.
//!
//! quinn's defaults limit a stream to its 1.25 MB receive window per round trip, and Linux's
//! default socket buffer (about 212 KB) drops datagrams under load; both are raised here, and the
//! buffer sizes the kernel actually granted are reported, since it caps them at
//! `net.core.rmem_max` / `wmem_max` without an error.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;

use super::DIRECT_ALIGN;
use super::pool::{ChunkPool, PoolBuf};
use super::wire::{self, Frame, HEADER_LEN, WireError};

/// The ALPN protocol of the file plane.
pub const ALPN: &[u8] = b"relay-files/1";

/// Chunk requests one client keeps in flight, each on its own stream.
pub const PARALLEL_CHUNKS: usize = 8;

/// The largest UDP payload the file plane sends and accepts by default (`files.max_udp_payload`
/// on the relay; the client's own bound): an upper bound for MTU discovery,
/// which starts from QUIC's 1200 bytes and climbs to what the path carries. On ordinary Ethernet
/// it settles near 1452, on a jumbo-frame intranet near 8952, and on loopback it reaches this
/// bound. Fewer, larger datagrams cost fewer headers, seals, acknowledgements and system calls
/// per byte: against a bound of 4096, 15% less client CPU and 20% less relay CPU per GiB served
/// on loopback here, with the transfers as fast or faster; a bound of 65,000 measured the same
/// as this one, with a quinn receive buffer four times as large.
pub const MAX_UDP_PAYLOAD: u16 = 16_384;

/// The most bytes one segmentation-offload send may carry: the datagrams of a batch travel as one
/// IP packet until the kernel cuts them, and an IP packet holds 65,535 bytes with its headers.
/// (The media plane's outbox keeps the same bound under the same name.)
const MAX_OFFLOAD_BYTES: usize = 65_000;

/// An endpoint on `socket`, with a server's settings or none (a client's). quinn hands a send
/// up to ten datagrams of the path's size; above 6,500 bytes ten exceed an IP packet, the kernel
/// refuses the send (`EMSGSIZE`) and quinn drops it as though the path had, which its black-hole
/// detection then takes for a path that cannot carry large datagrams. The socket given to quinn
/// therefore splits such a send into sends that each fit.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    endpoint_with(endpoint_config(MAX_UDP_PAYLOAD), socket, server)
}

/// An endpoint with the configuration given (see [`endpoint_config`]).
pub fn endpoint_with(
    config: quinn::EndpointConfig,
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    use quinn::Runtime;
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = runtime.wrap_udp_socket(socket)?;
    let socket = Arc::new(Splitting { inner });
    quinn::Endpoint::new_with_abstract_socket(config, server, socket, runtime)
}

/// quinn's socket for its runtime, splitting a send of several datagrams that would not fit in
/// one IP packet.
#[derive(Debug)]
struct Splitting {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
}

impl quinn::AsyncUdpSocket for Splitting {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    /// A part refused as `WouldBlock` after earlier parts went out makes quinn send the whole
    /// transmit again later: the parts already sent arrive twice, and the peer drops the second
    /// copies as packets it has. Only a full socket buffer does that.
    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        for part in split(transmit) {
            self.inner.try_send(&part)?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// `transmit` as sends of at most [`MAX_OFFLOAD_BYTES`] each (a single datagram of any size
/// stays whole), each part a run of whole datagrams.
fn split<'a>(
    transmit: &'a quinn::udp::Transmit<'a>,
) -> impl Iterator<Item = quinn::udp::Transmit<'a>> + 'a {
    let size = transmit
        .segment_size
        .unwrap_or(transmit.contents.len())
        .max(1);
    let per_send = (MAX_OFFLOAD_BYTES / size).max(1) * size;
    transmit
        .contents
        .chunks(per_send)
        .map(move |part| quinn::udp::Transmit {
            contents: part,
            segment_size: transmit.segment_size.filter(|&s| s < part.len()),
            ..transmit.clone()
        })
}

/// The endpoint settings of both ends: receive datagrams up to `max_udp_payload` (see
/// [`MAX_UDP_PAYLOAD`]), which the peer learns and does not send beyond.
///
/// Endpoints that share one address take clones of one configuration, so that they share its
/// stateless reset key: a packet that the kernel hands to another endpoint than its
/// connection's (the peer's address changed) is answered with a reset the peer accepts, and the
/// peer learns at once that the connection is gone instead of waiting out the idle timeout.
pub fn endpoint_config(max_udp_payload: u16) -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // The relay's configuration keeps the value in the range quinn accepts (1200..=65527).
    let accepted = c.max_udp_payload_size(max_udp_payload).is_ok();
    debug_assert!(
        accepted,
        "max_udp_payload {max_udp_payload} out of quinn's range"
    );
    c
}

/// Transport settings: a stream can hold two maximal chunks in flight, the connection every
/// parallel stream's worth, so a transfer is limited by the link, not by flow control.
pub fn transport(max_udp_payload: u16) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let stream = 2 * super::chunker::MAX_CHUNK as u32;
    t.stream_receive_window(VarInt::from_u32(stream));
    t.receive_window(VarInt::from_u32(stream * (PARALLEL_CHUNKS as u32 + 2)));
    t.send_window(u64::from(stream) * (PARALLEL_CHUNKS as u64 + 2));
    t.max_concurrent_bidi_streams(VarInt::from_u32(4 * PARALLEL_CHUNKS as u32));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Ask the peer to acknowledge within 2 ms rather than its default 25 ms. A relay shutting
    // down waits three probe timeouts, each including that delay, before it lets its connections
    // go (a client waits only for its close to be sent); at 25 ms that wait was most of a command
    // that sent nothing, when clients waited for it too.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(Duration::from_millis(2)));
    t.ack_frequency_config(Some(ack));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(max_udp_payload);
    t.mtu_discovery_config(Some(mtu));
    // A peer that vanished (killed, unplugged) is noticed within 10 s; keep-alives stop a quiet
    // but living connection from timing out.
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(10)).ok());
    t
}

/// The crypto provider of the file plane, chosen explicitly so that another crate's choice of
/// process default cannot change it.
///
/// The bulk cipher is aws-lc's (the library the media plane's SRTP uses), with TLS 1.3's
/// AES-128-GCM suite first: the suite QUIC's Initial packets use anyway, and it seals a 16 KiB
/// datagram about 30% faster than ring's AES-256-GCM here. AES-256-GCM stays offered, so a peer
/// that asks for it first still gets it. Key exchange and randomness are ring's: aws-lc's random
/// generator gathers CPU jitter entropy on first use, about 30 ms of CPU, which a short `relay
/// files` command would pay every time.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Socket buffer sizes as the kernel reports them after asking for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    pub requested: usize,
    pub recv: usize,
    pub send: usize,
}

/// A UDP socket bound to `addr` with buffers of `buffer_bytes` asked for; with `shared`, other
/// sockets of this process may bind the same address (`SO_REUSEPORT`), and the kernel spreads
/// the peers' addresses over them.
pub fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
    shared: bool,
) -> std::io::Result<(std::net::UdpSocket, Buffers)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if shared {
        sock.set_reuse_port(true)?;
    }
    if buffer_bytes > 0 {
        // Refusals here are not fatal: the sizes granted are read back and reported.
        let _ = sock.set_recv_buffer_size(buffer_bytes);
        let _ = sock.set_send_buffer_size(buffer_bytes);
    }
    sock.bind(&addr.into())?;
    let buffers = Buffers {
        requested: buffer_bytes,
        recv: sock.recv_buffer_size()?,
        send: sock.send_buffer_size()?,
    };
    Ok((sock.into(), buffers))
}

/// Why a stream could not carry a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("reading a stream: {0}")]
    Read(quinn::ReadExactError),
    #[error("writing a stream: {0}")]
    Write(quinn::WriteError),
    #[error("closing a stream: {0}")]
    Closed(quinn::ClosedStream),
    #[error("bad frame: {0}")]
    Wire(WireError),
}

/// Reads one frame; `None` if the peer finished the stream before a frame began. A chunk the
/// frame carries ([`wire::chunk_offset`]) is placed in memory `phase` bytes past a block
/// boundary ([`DIRECT_ALIGN`]): 0 for a chunk stored as a file of its own, the chunk's offset in
/// its file for a download, so that the whole blocks inside it go to disk from where they are.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    phase: usize,
    pool: Option<&Arc<ChunkPool>>,
) -> Result<Option<(u8, Bytes)>, StreamError> {
    let mut head = [0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(StreamError::Read(e)),
    }
    let (kind, len) = wire::parse_header(head).map_err(StreamError::Wire)?;
    // The body's first two bytes tell whether it carries a chunk, and where.
    let first = if len >= 2 {
        let mut first = [0u8; 2];
        recv.read_exact(&mut first)
            .await
            .map_err(StreamError::Read)?;
        Some(first)
    } else {
        None
    };
    let chunk_at = first.and_then(|f| wire::chunk_offset(kind, f));
    // A body that carries a chunk goes to the pool, if there is one.
    let mut body = Body::new(len, pool.filter(|_| chunk_at.is_some()));
    if let Some(at) = chunk_at {
        body.place_at(at, phase);
    }
    if let Some(first) = first {
        body.buf.extend_from_slice(&first);
    }
    // Appended piece by piece as quinn hands them over, rather than read into a zeroed buffer.
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(piece)) => body.buf.extend_from_slice(&piece.bytes),
            Ok(None) => {
                return Err(StreamError::Read(quinn::ReadExactError::FinishedEarly(
                    body.len(),
                )));
            }
            Err(e) => return Err(StreamError::Read(quinn::ReadExactError::ReadError(e))),
        }
    }
    Ok(Some((kind, Bytes::from_owner(body))))
}

/// A frame's body as it arrives, with room in front so that a chunk inside it can begin at any
/// place relative to a [`DIRECT_ALIGN`] boundary in memory.
struct Body {
    buf: BodyBuf,
    /// Where the body begins in `buf`: after the padding.
    start: usize,
}

/// Where a body's bytes are: the relay's chunk pool, or the heap.
enum BodyBuf {
    Pool(PoolBuf),
    Heap(Vec<u8>),
}

impl BodyBuf {
    fn as_slice(&self) -> &[u8] {
        match self {
            BodyBuf::Pool(p) => p.as_ref(),
            BodyBuf::Heap(v) => v,
        }
    }

    /// Appends `bytes`: within the capacity the body was made with, which a frame's declared
    /// length bounds, so a buffer in the pool never runs out.
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        match self {
            BodyBuf::Pool(p) => {
                p.extend_from_slice(bytes);
            }
            BodyBuf::Heap(v) => v.extend_from_slice(bytes),
        }
    }
}

impl Body {
    /// Room for `len` bytes and the padding: in `pool` when there is one with room, else
    /// on the heap.
    fn new(len: usize, pool: Option<&Arc<ChunkPool>>) -> Body {
        let want = len + DIRECT_ALIGN;
        let buf = match pool.and_then(|p| p.take(want)) {
            Some(p) => BodyBuf::Pool(p),
            None => BodyBuf::Heap(SPARE.take(want).unwrap_or_else(|| Vec::with_capacity(want))),
        };
        Body { buf, start: 0 }
    }

    /// Pads the front so that offset `at` of the body lies `phase` bytes (taken modulo
    /// [`DIRECT_ALIGN`]) past a block boundary. Only before any byte of the body was appended.
    fn place_at(&mut self, at: usize, phase: usize) {
        let to_boundary = self
            .buf
            .as_slice()
            .as_ptr()
            .wrapping_add(at)
            .align_offset(DIRECT_ALIGN);
        if to_boundary < DIRECT_ALIGN && self.buf.as_slice().is_empty() {
            let pad = (to_boundary + phase) % DIRECT_ALIGN;
            // Within the spare capacity: the buffer does not move.
            match &mut self.buf {
                BodyBuf::Pool(p) => p.extend_zeros(pad),
                BodyBuf::Heap(v) => v.resize(pad, 0),
            }
            self.start = pad;
        }
    }

    fn len(&self) -> usize {
        self.buf.as_slice().len() - self.start
    }
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.buf.as_slice()[self.start..]
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let BodyBuf::Heap(v) = &mut self.buf {
            SPARE.give_back(std::mem::take(v));
        }
    }
}

/// The frame bodies' spare buffers, shared by every stream of the process.
static SPARE: Spare = Spare::new(64 << 20);

/// Buffers of frames that were let go, kept for the next frames. A chunk's frame is about a MiB,
/// and memory taken afresh for each one came from the kernel again, faulted in and zeroed page
/// by page: about 5% of the relay's CPU while receiving (glibc gives large freed blocks back).
/// Only buffers of at least [`Spare::SMALLEST`] are kept, and at most `limit` bytes of them.
struct Spare {
    limit: usize,
    kept: Mutex<Vec<Vec<u8>>>,
}

impl Spare {
    const SMALLEST: usize = 64 << 10;

    const fn new(limit: usize) -> Spare {
        Spare {
            limit,
            kept: Mutex::new(Vec::new()),
        }
    }

    /// An empty kept buffer with room for at least `len` bytes, if one is kept.
    fn take(&self, len: usize) -> Option<Vec<u8>> {
        if len < Self::SMALLEST {
            return None;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let i = kept.iter().position(|b| b.capacity() >= len)?;
        Some(kept.swap_remove(i))
    }

    /// Keeps `buf` for a later frame, emptied, unless it is small or the spare is full.
    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() < Self::SMALLEST {
            return;
        }
        buf.clear();
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = kept.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= self.limit {
            kept.push(buf);
        }
    }
}

pub async fn write_frame(send: &mut quinn::SendStream, frame: Frame) -> Result<(), StreamError> {
    send.write_all(&frame.head)
        .await
        .map_err(StreamError::Write)?;
    if !frame.payload.is_empty() {
        // Handed to quinn as it is: no copy of the chunk into the stream's buffer.
        send.write_chunk(frame.payload)
            .await
            .map_err(StreamError::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};

    /// Runs a TLS 1.3 handshake in memory between a client with `client_provider` and a server
    /// with the file plane's provider; returns the suite both sides agreed on.
    fn negotiated_suite(client_provider: rustls::crypto::CryptoProvider) -> rustls::CipherSuite {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let certified = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let server = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("relay.test").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            s.read_tls(&mut &wire[..]).unwrap();
            s.process_new_packets().unwrap();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            c.read_tls(&mut &wire[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!c.is_handshaking(), "the handshake did not finish");
        let suite = c.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(Some(suite), s.negotiated_cipher_suite().map(|s| s.suite()));
        suite
    }

    #[test]
    fn both_ends_agree_on_aes_128_gcm() {
        let ours = Arc::try_unwrap(crypto_provider()).unwrap();
        assert_eq!(negotiated_suite(ours), TLS13_AES_128_GCM_SHA256);
    }

    #[test]
    fn a_client_that_asks_for_aes_256_gcm_first_still_gets_it() {
        // rustls's own order, as earlier releases of the client used.
        let theirs = rustls::crypto::ring::default_provider();
        assert_eq!(theirs.cipher_suites[0].suite(), TLS13_AES_256_GCM_SHA384);
        assert_eq!(negotiated_suite(theirs), TLS13_AES_256_GCM_SHA384);
    }

    #[test]
    fn a_send_over_one_ip_packet_is_split_into_runs_of_whole_datagrams() {
        let contents: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let transmit = |len: usize, segment_size: Option<usize>| quinn::udp::Transmit {
            destination: to,
            ecn: None,
            contents: &contents[..len],
            segment_size,
            src_ip: None,
        };
        // (length, segment size) -> the parts' (length, segment size)
        type Shape = (usize, Option<usize>);
        let cases: [(usize, Option<usize>, &[Shape]); 6] = [
            // Ten datagrams of 16,384 with a short last: three to a send.
            (
                9 * 16_384 + 100,
                Some(16_384),
                &[
                    (3 * 16_384, Some(16_384)),
                    (3 * 16_384, Some(16_384)),
                    (3 * 16_384, Some(16_384)),
                    (100, None),
                ],
            ),
            // Jumbo frames: seven to a send.
            (
                10 * 8_952,
                Some(8_952),
                &[(7 * 8_952, Some(8_952)), (3 * 8_952, Some(8_952))],
            ),
            // Ten Ethernet-sized datagrams fit in one send: unchanged.
            (10 * 1_452, Some(1_452), &[(10 * 1_452, Some(1_452))]),
            // A single datagram stays whole, whatever its size.
            (1_200, None, &[(1_200, None)]),
            (65_000, None, &[(65_000, None)]),
            // Two datagrams of 40,000 cannot share a send.
            (80_000, Some(40_000), &[(40_000, None), (40_000, None)]),
        ];
        for (len, seg, want) in cases {
            let t = transmit(len, seg);
            let parts: Vec<_> = split(&t).collect();
            let got: Vec<_> = parts
                .iter()
                .map(|p| (p.contents.len(), p.segment_size))
                .collect();
            assert_eq!(got, want, "{len} bytes in datagrams of {seg:?}");
            assert!(
                parts
                    .iter()
                    .all(|p| p.contents.len() <= MAX_OFFLOAD_BYTES || p.segment_size.is_none())
            );
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.contents.to_vec()).collect();
            assert_eq!(joined, &contents[..len]);
        }
    }

    #[test]
    fn a_body_puts_its_chunk_at_the_asked_place_from_a_block_boundary() {
        let pool = ChunkPool::reserve(8 << 20).unwrap();
        for (len, at, phase, from_pool) in [
            (10_000, 0, 0),
            (10_000, 37, 0),
            (2 << 20, 4200, 0),
            (5, 5, 0),
            (10_000, 5, 1),
            (2 << 20, 5, 4095),
            (10_000, 37, 3000),
            (10_000, 0, DIRECT_ALIGN + 7),
        ]
        .into_iter()
        .flat_map(|(len, at, phase)| [(len, at, phase, false), (len, at, phase, true)])
        {
            let mut body = Body::new(len, Some(&pool).filter(|_| from_pool));
            body.place_at(at, phase);
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            body.buf.extend_from_slice(&bytes);
            let held = Bytes::from_owner(body);
            assert_eq!(&held[..], &bytes[..], "{len} at {at}");
            assert_eq!(pool.region_of(&held).is_some(), from_pool, "{len} at {at}");
            assert_eq!(
                held[at..].as_ptr() as usize % DIRECT_ALIGN,
                phase % DIRECT_ALIGN,
                "{len} at {at}, phase {phase}"
            );
        }
    }

    #[test]
    fn spare_buffers_come_back_empty_within_their_bound() {
        let spare = Spare::new(3 << 20);
        let mut a = Vec::with_capacity(1 << 20);
        a.extend_from_slice(&[7u8; 1000]);
        let at = a.as_ptr();
        spare.give_back(a);
        // Too large for the one kept: none; small requests and buffers are never pooled.
        assert!(spare.take(2 << 20).is_none());
        assert!(spare.take(1000).is_none());
        spare.give_back(Vec::with_capacity(1000));
        let again = spare.take(512 << 10).expect("the kept buffer");
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        assert!(spare.take(512 << 10).is_none(), "taken once");
        // At most 3 MiB kept: the fourth 1 MiB buffer is let go.
        for _ in 0..4 {
            spare.give_back(Vec::with_capacity(1 << 20));
        }
        let kept = (0..4).filter_map(|_| spare.take(1 << 20)).count();
        assert_eq!(kept, 3);
    }
}
