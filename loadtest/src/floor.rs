//! `relay-loadtest floor`: what loopback UDP costs on this machine, so relay figures can be
//! reported as a ratio to it.
//!
//! One thread sends SRTP-sized datagrams (1200 bytes) to a receiver on 127.0.0.1 and we count
//! its CPU time. On loopback the kernel delivers to the receiving socket inside the sender's
//! syscall, so the sender's CPU covers the whole trip: that is the floor a forwarding relay works
//! against, per packet it sends. Three ways are measured side by side in one run: one `send` per
//! packet, `sendmmsg` batches, and `sendmmsg` with AES-128-GCM sealing of each payload first
//! (SRTP's cipher), the floor for an SFU's egress that relay figures are reported against.
//!
//! A fourth row, `fanout_aes_gcm`, sends the same sealed datagrams the way the relay does (its own
//! `Outbox`: copy into a slot, `sendmmsg` with an address per datagram) round-robin to
//! [`FANOUT`] receiving sockets whose threads sleep in `epoll` between datagrams, as WebRTC
//! clients do. On loopback, waking a sleeping receiver runs in the sender's syscall, so this row
//! shows what loopback itself charges per copy for an SFU's traffic pattern; it is reported
//! beside the floor, not instead of it.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::Serialize;

use crate::sys;

/// Datagram size on the wire.
pub const PACKET: usize = 1200;
/// Datagrams per `sendmmsg`.
pub const BATCH: usize = 32;
/// Receiving sockets of the fan-out row (the subscribers of one room).
pub const FANOUT: usize = 50;
/// Threads draining them (as the load tester's clients).
const FANOUT_THREADS: usize = 2;
const TAG: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Send,
    Sendmmsg,
    SendmmsgAesGcm,
    FanoutAesGcm,
}

/// One method's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub method: Method,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub sender_cpu_seconds: f64,
    pub wall_seconds: f64,
    /// Packets per CPU-second of the sending thread.
    pub packets_per_cpu_second: f64,
    pub cpu_microseconds_per_packet: f64,
}

impl Measure {
    /// One method's figures from its counts and the sending thread's CPU and wall seconds.
    fn new(method: Method, sent: u64, received: u64, cpu: f64, wall: f64) -> Measure {
        Measure {
            method,
            packets_sent: sent,
            packets_received: received,
            sender_cpu_seconds: cpu,
            wall_seconds: wall,
            packets_per_cpu_second: if cpu > 0.0 { sent as f64 / cpu } else { 0.0 },
            cpu_microseconds_per_packet: if sent > 0 {
                cpu * 1e6 / sent as f64
            } else {
                0.0
            },
        }
    }
}

/// The floor report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub packet_bytes: usize,
    pub batch: usize,
    pub recv_buffer_bytes: usize,
    pub send_buffer_bytes: usize,
    pub measures: Vec<Measure>,
    /// `sendmmsg_aes_gcm` packets per CPU-second: the figure relay throughput is compared with.
    pub floor_packets_per_cpu_second: f64,
    /// `fanout_aes_gcm` packets per CPU-second: loopback's own charge for an SFU's pattern.
    pub fanout_packets_per_cpu_second: f64,
}

/// Measures each method for `duration` (and at most `max_packets` packets).
pub fn measure(duration: Duration, max_packets: u64) -> std::io::Result<Report> {
    let mut measures = Vec::new();
    let mut bufs = (0, 0);
    for method in [Method::Send, Method::Sendmmsg, Method::SendmmsgAesGcm] {
        let (m, r, s) = run(method, duration, max_packets)?;
        bufs = (r, s);
        measures.push(m);
    }
    let floor = measures.last().map_or(0.0, |m| m.packets_per_cpu_second);
    let fanout = run_fanout(duration, max_packets)?;
    let fanout_pps = fanout.packets_per_cpu_second;
    measures.push(fanout);
    Ok(Report {
        packet_bytes: PACKET,
        batch: BATCH,
        recv_buffer_bytes: bufs.0,
        send_buffer_bytes: bufs.1,
        measures,
        floor_packets_per_cpu_second: floor,
        fanout_packets_per_cpu_second: fanout_pps,
    })
}

/// Seals one payload in place as SRTP would (AES-128-GCM, tag at the end).
fn seal(key: &LessSafeKey, counter: u64, b: &mut [u8]) -> std::io::Result<()> {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    let (body, tag_out) = b.split_at_mut(PACKET - TAG);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&[0u8; 12]),
            &mut body[12..],
        )
        .map_err(|_| std::io::Error::other("seal"))?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(())
}

fn aes_key() -> std::io::Result<LessSafeKey> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &[0x42; 16]).map_err(|_| std::io::Error::other("aes key"))?,
    ))
}

/// The fan-out row: sealed datagrams through the relay's own outbox to [`FANOUT`] sockets
/// drained by threads that sleep in `epoll`.
fn run_fanout(duration: Duration, max_packets: u64) -> std::io::Result<Measure> {
    use mio::net::UdpSocket as MioSocket;
    use mio::{Events, Interest, Poll, Token};

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::with_capacity(FANOUT);
    let mut drains = Vec::new();
    for t in 0..FANOUT_THREADS {
        let mut poll = Poll::new()?;
        let mut sockets = Vec::new();
        for i in (t..FANOUT).step_by(FANOUT_THREADS) {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            sys::set_recv_buffer(&s, 1 << 20)?;
            s.set_nonblocking(true)?;
            addrs.push(s.local_addr()?);
            let mut s = MioSocket::from_std(s);
            poll.registry()
                .register(&mut s, Token(i), Interest::READABLE)?;
            sockets.push(s);
        }
        let (stop, received) = (stop.clone(), received.clone());
        drains.push(std::thread::spawn(move || {
            let mut events = Events::with_capacity(64);
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if poll
                    .poll(&mut events, Some(Duration::from_millis(50)))
                    .is_err()
                {
                    continue;
                }
                // Edge-triggered: drain every socket that became readable.
                for e in events.iter() {
                    let k = e.token().0 / FANOUT_THREADS;
                    while sockets[k].recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let sender = UdpSocket::bind("127.0.0.1:0")?;
    sys::set_send_buffer(&sender, 8 << 20)?;
    sender.set_nonblocking(true)?;
    let key = aes_key()?;
    let mut outbox = relay::media::udp::Outbox::new(BATCH);
    let mut packet = vec![0u8; PACKET];
    let (mut sent, mut refused, mut counter) = (0u64, 0u64, 0u64);
    let cpu0 = sys::thread_cpu_time();
    let t0 = Instant::now();
    while t0.elapsed() < duration && sent < max_packets {
        // One incoming packet's copies: one sealed datagram per receiver.
        for to in &addrs {
            counter += 1;
            packet[..8].copy_from_slice(&counter.to_be_bytes());
            seal(&key, counter, &mut packet)?;
            refused += outbox.push(&sender, *to, &packet) as u64;
            sent += 1;
        }
        refused += outbox.flush(&sender) as u64;
        // Pace to about 10k copies per millisecond at most, so the receivers go idle between
        // bursts as an SFU's clients do between packets.
        std::thread::sleep(Duration::from_micros(200));
    }
    let cpu = (sys::thread_cpu_time() - cpu0).as_secs_f64();
    let wall = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    for d in drains {
        let _ = d.join();
    }
    let sent = sent.saturating_sub(refused);
    Ok(Measure::new(
        Method::FanoutAesGcm,
        sent,
        received.load(Ordering::Relaxed),
        cpu,
        wall,
    ))
}

fn run(
    method: Method,
    duration: Duration,
    max_packets: u64,
) -> std::io::Result<(Measure, usize, usize)> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let recv_buf = sys::set_recv_buffer(&receiver, 8 << 20)?;
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let send_buf = sys::set_send_buffer(&sender, 8 << 20)?;
    sender.connect(receiver.local_addr()?)?;

    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drain = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if receiver.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Count what is still queued.
            receiver.set_nonblocking(true).ok();
            while receiver.recv(&mut buf).is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let key = aes_key()?;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; PACKET]).collect();
    let mut sent = 0u64;
    let mut counter = 0u64;
    let cpu0 = sys::thread_cpu_time();
    let t0 = Instant::now();
    while t0.elapsed() < duration && sent < max_packets {
        match method {
            Method::Send => {
                for b in &mut bufs {
                    counter += 1;
                    b[..8].copy_from_slice(&counter.to_be_bytes());
                    if sender.send(b).is_ok() {
                        sent += 1;
                    }
                }
            }
            // Measured by `run_fanout`, with receivers of its own.
            Method::FanoutAesGcm => break,
            Method::Sendmmsg | Method::SendmmsgAesGcm => {
                for b in &mut bufs {
                    counter += 1;
                    b[..8].copy_from_slice(&counter.to_be_bytes());
                    if method == Method::SendmmsgAesGcm {
                        seal(&key, counter, b)?;
                    }
                }
                sent += sys::sendmmsg(&sender, &mut bufs)? as u64;
            }
        }
    }
    let cpu = (sys::thread_cpu_time() - cpu0).as_secs_f64();
    let wall = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    let m = Measure::new(method, sent, received.load(Ordering::Relaxed), cpu, wall);
    Ok((m, recv_buf, send_buf))
}

impl Report {
    /// A human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "loopback UDP floor: {} B datagrams, batches of {}, buffers granted rcv {} B snd {} B\n",
            self.packet_bytes, self.batch, self.recv_buffer_bytes, self.send_buffer_bytes
        );
        for m in &self.measures {
            s += &format!(
                "  {:<18} {:>10.0} pkt per CPU-s  {:>5.2} us/pkt  sent {:>9}  received {:>9}  ({:.2} CPU-s)\n",
                serde_json::to_value(m.method)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                m.packets_per_cpu_second,
                m.cpu_microseconds_per_packet,
                m.packets_sent,
                m.packets_received,
                m.sender_cpu_seconds
            );
        }
        s += &format!(
            "floor (sendmmsg + AES-128-GCM): {:.0} packets per CPU-second; fan-out to {FANOUT} \
             sleeping receivers: {:.0}\n",
            self.floor_packets_per_cpu_second, self.fanout_packets_per_cpu_second
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_run_counts_are_consistent_and_it_stops() {
        let t0 = Instant::now();
        let r = measure(Duration::from_millis(100), 20_000).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(r.measures.len(), 4);
        for m in &r.measures {
            assert!(m.packets_sent > 0, "{m:?}");
            assert!(m.packets_sent <= 20_000 + BATCH as u64);
            // Loopback may drop under a burst, but never delivers more than was sent.
            assert!(m.packets_received <= m.packets_sent, "{m:?}");
            assert!(m.packets_received > 0, "{m:?}");
            assert!(m.sender_cpu_seconds > 0.0);
        }
        assert_eq!(
            r.floor_packets_per_cpu_second,
            r.measures[2].packets_per_cpu_second
        );
        assert_eq!(
            r.fanout_packets_per_cpu_second,
            r.measures[3].packets_per_cpu_second
        );
    }
}
