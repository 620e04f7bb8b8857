//! A network namespace of the caller's own, and the `ip` and `tc` commands run inside it, for
//! runs that must change routes or shape links without touching the machine's own loopback.
//!
//! Unsafe code is allowed here only for `unshare`, which takes a flag word.
#![allow(unsafe_code)]

use std::io;
use std::process::Command;

/// Moves the calling thread, and every thread and process it starts from now on, into a new
/// network namespace of its own (needs CAP_SYS_ADMIN, as root has). Its loopback device starts
/// down: bring it up with `ip(&["link", "set", "lo", "up"])`.
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs `ip ARGS` (iproute2); the error says which call failed and why.
pub fn ip(args: &[&str]) -> Result<(), String> {
    tool("ip", args)
}

/// Runs `tc ARGS` (iproute2); the error says which call failed and why.
pub fn tc(args: &[&str]) -> Result<(), String> {
    tool("tc", args)
}

fn tool(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("run {program} (apt-get install -y iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
