//! A throwaway Redis server on a loopback port, for a cluster's room directory in tests and load
//! runs: no persistence, stopped when its handle drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Daemon;

/// A running `redis-server` of the caller's own.
#[derive(Debug)]
pub struct Redis {
    pub daemon: Daemon,
    pub addr: SocketAddr,
}

impl Redis {
    /// Starts `redis-server` on a free loopback port and waits until it answers PING.
    pub fn start() -> Result<Redis, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()]);
        let mut daemon = Daemon::spawn(&mut cmd)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pong(addr) {
            if daemon.exited() || Instant::now() > deadline {
                return Err(format!("redis-server did not answer:\n{}", daemon.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis { daemon, addr })
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

fn pong(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
