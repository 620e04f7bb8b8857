//! What the load tester, the end-to-end tests and the simulated room share:
//!
//! - [`peer::Peer`]: one WebRTC participant on str0m that publishes stamped simulcast VP8 and
//!   Opus-like audio or receives slots, with no I/O of its own;
//! - [`process::Daemon`] and [`process::RelayProcess`]: a server process with its output
//!   collected, and a relay started on a data directory whose addresses are read from its
//!   start-up line;
//! - [`netns`]: a network namespace of the caller's own, with `ip` and `tc` inside it;
//! - [`redis::Redis`] and [`postgres::Postgres`]: throwaway engines on loopback ports, and
//!   [`cluster`]: relays on them that act as one appliance;
//! - [`noise`] and [`Noise`]: repeatable incompressible test data.
//!
//! The shipped load tester depends on this crate, so nothing here assumes a test harness.

pub mod cluster;
pub mod netns;
pub mod peer;
pub mod postgres;
pub mod process;
pub mod redis;

/// `len` incompressible bytes, the same for the same `seed`, so tests need no data files.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Noise::new(seed).fill(&mut out);
    out
}

/// A repeatable stream of incompressible bytes (BLAKE3's extendable output of the seed), for
/// data too big to hold at once: [`noise`] is its first `len` bytes.
#[derive(Debug, Clone)]
pub struct Noise(blake3::OutputReader);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(
            blake3::Hasher::new()
                .update(&seed.to_le_bytes())
                .finalize_xof(),
        )
    }

    /// The next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill(buf);
    }

    /// The next 8 bytes of the stream, as a number.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn noise_is_repeatable_and_differs_by_seed() {
        assert_eq!(super::noise(7, 1000), super::noise(7, 1000));
        assert_ne!(super::noise(7, 1000), super::noise(8, 1000));
        assert_eq!(super::noise(7, 10)[..], super::noise(7, 1000)[..10]);
        let mut stream = super::Noise::new(7);
        let mut head = [0u8; 600];
        stream.fill(&mut head);
        let next = stream.next_u64().to_le_bytes();
        assert_eq!([&head[..], &next[..]].concat(), super::noise(7, 608));
    }
}
