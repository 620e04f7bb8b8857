//! What the QUIC server and client share: TLS and transport settings sized for multi-GB
//! transfers, UDP sockets with raised buffers, and reading and writing frames on streams.
//!
//! quinn's defaults limit a stream to its 1.25 MB receive window per round trip, and Linux's
//! default socket buffer (about 212 KB) drops datagrams under load; both are raised here, and the
//! buffer sizes the kernel actually granted are reported, since it caps them at
//! `net.core.rmem_max` / `wmem_max` without an error.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;

use super::DIRECT_ALIGN;
use super::wire::{self, Frame, HEADER_LEN, WireError};

/// The ALPN protocol of the file plane.
pub const ALPN: &[u8] = b"relay-files/1";

/// Chunk requests one client keeps in flight, each on its own stream.
pub const PARALLEL_CHUNKS: usize = 8;

/// The largest UDP payload the file plane sends and accepts. MTU discovery starts from QUIC's 1200
/// bytes and climbs to what the path carries, so on ordinary Ethernet it settles near 1452 as
/// quinn's default bound did, while loopback and jumbo-frame intranets send a third as many
/// packets for the same bytes (each costing a header, a seal, an acknowledgement and its share of
/// a system call): a quarter less client CPU per GB on loopback here. A bound of 8952 (a whole
/// jumbo frame) lost packets on loopback under load and tripped quinn's black-hole detection,
/// which drops to 1200 bytes for a minute; 4096 did not.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// The endpoint settings of both ends: receive datagrams up to [`MAX_UDP_PAYLOAD`].
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // The bound lies inside the range quinn accepts (1200..=65527), so this cannot fail.
    let _ = c.max_udp_payload_size(MAX_UDP_PAYLOAD);
    c
}

/// Transport settings: a stream can hold two maximal chunks in flight, the connection every
/// parallel stream's worth, so a transfer is limited by the link, not by flow control.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let stream = 2 * super::chunker::MAX_CHUNK as u32;
    t.stream_receive_window(VarInt::from_u32(stream));
    t.receive_window(VarInt::from_u32(stream * (PARALLEL_CHUNKS as u32 + 2)));
    t.send_window(u64::from(stream) * (PARALLEL_CHUNKS as u64 + 2));
    t.max_concurrent_bidi_streams(VarInt::from_u32(4 * PARALLEL_CHUNKS as u32));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Ask the peer to acknowledge within 2 ms rather than its default 25 ms. The closing side
    // waits three probe timeouts, each including that delay, before it lets the connection go;
    // at 25 ms that wait was most of a command that sent nothing.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(Duration::from_millis(2)));
    t.ack_frequency_config(Some(ack));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // A peer that vanished (killed, unplugged) is noticed within 10 s; keep-alives stop a quiet
    // but living connection from timing out.
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(10)).ok());
    t
}

/// The crypto provider of the file plane, chosen explicitly so that another crate's choice of
/// process default cannot change it.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Socket buffer sizes as the kernel reports them after asking for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    pub requested: usize,
    pub recv: usize,
    pub send: usize,
}

/// A UDP socket bound to `addr` with buffers of `buffer_bytes` asked for.
pub fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, Buffers)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
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

/// Reads one frame; `None` if the peer finished the stream before a frame began.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<(u8, Bytes)>, StreamError> {
    let mut head = [0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(StreamError::Read(e)),
    }
    let (kind, len) = wire::parse_header(head).map_err(StreamError::Wire)?;
    let mut body = Body::new(len);
    if len >= 2 {
        let mut first = [0u8; 2];
        recv.read_exact(&mut first)
            .await
            .map_err(StreamError::Read)?;
        if let Some(at) = wire::chunk_offset(kind, first) {
            body.align_at(at);
        }
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

/// A frame's body as it arrives, with room in front so that a chunk inside it can begin at a
/// [`DIRECT_ALIGN`] boundary in memory.
struct Body {
    buf: Vec<u8>,
    /// Where the body begins in `buf`: after the padding.
    start: usize,
}

impl Body {
    fn new(len: usize) -> Body {
        Body {
            buf: Vec::with_capacity(len + DIRECT_ALIGN),
            start: 0,
        }
    }

    /// Pads the front so that offset `at` of the body lies on a block boundary. Only before any
    /// byte of the body was appended.
    fn align_at(&mut self, at: usize) {
        let to_boundary = self
            .buf
            .as_ptr()
            .wrapping_add(at)
            .align_offset(DIRECT_ALIGN);
        if to_boundary < DIRECT_ALIGN && self.buf.is_empty() {
            // Within the spare capacity: the buffer does not move.
            self.buf.resize(to_boundary, 0);
            self.start = to_boundary;
        }
    }

    fn len(&self) -> usize {
        self.buf.len() - self.start
    }
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..]
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

    #[test]
    fn a_body_puts_its_chunk_on_a_block_boundary() {
        for (len, at) in [(10_000, 0), (10_000, 37), (2 << 20, 4200), (5, 5)] {
            let mut body = Body::new(len);
            body.align_at(at);
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            body.buf.extend_from_slice(&bytes);
            let held = Bytes::from_owner(body);
            assert_eq!(&held[..], &bytes[..], "{len} at {at}");
            assert_eq!(
                held[at..].as_ptr().align_offset(DIRECT_ALIGN),
                0,
                "{len} at {at}"
            );
        }
    }
}
