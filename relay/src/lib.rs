//! relay: a media and file relay appliance for closed organisational intranets.
//!
//! The control plane ([`control`]) decides who may do what; [`http`] is its thin I/O shell;
//! [`serve`] starts the appliance and [`cli`] is the command line.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod database;
pub mod datadir;
pub mod files;
pub mod http;
pub mod media;
pub mod metrics;
pub mod node;
pub mod private;
pub mod record;
pub mod recordings;
pub mod serve;

/// `N` bytes from the operating system's secure random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // Without a working random source no key, id or session could be made safely.
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    buf
}
