//! Server processes started by the load tester and the tests: a [`Daemon`] with its output
//! collected and stopped when its handle drops, and a [`RelayProcess`] that waits for the relay's
//! start-up line and reads the addresses it bound from it.
//!
//! Unsafe code is allowed here only for `kill` and `prctl`, which take plain integers.
#![allow(unsafe_code)]

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines of a child's output kept; past them the log is cut (the markers looked for come first).
const MAX_LOG_LINES: usize = 20_000;
/// How long a dropped daemon gets between SIGTERM and SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// A server process, its stdout and stderr collected line by line, stopped (SIGTERM, then
/// SIGKILL) when dropped. It also gets SIGTERM if the thread that started it ends first (a load
/// tester killed), so no server outlives its caller.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn spawn(cmd: &mut Command) -> Result<Daemon, String> {
        terminate_with_parent(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", cmd.get_program().to_string_lossy()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let collect = |out: Option<Box<dyn io::Read + Send>>| {
            let Some(out) = out else { return };
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() < MAX_LOG_LINES {
                        log.push(line);
                    }
                }
            });
        };
        collect(child.stdout.take().map(|o| Box::new(o) as _));
        collect(child.stderr.take().map(|o| Box::new(o) as _));
        Ok(Daemon {
            child: Some(child),
            log,
        })
    }

    /// The process id, while it has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has ended.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Everything it has printed so far, one line each.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. The exit status if it exited
    /// by itself (also before the call); None if it had to be killed or was stopped before.
    pub fn stop_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_within(DROP_GRACE);
    }
}

/// The message of the relay's start-up line, logged once every plane is up. Its fields name
/// what was bound: `http`, `media` (the workers' addresses, comma-separated), `files`, `data`.
pub const UP_MESSAGE: &str = "relay is up";

/// The value of `key=` on the start-up line among `lines` (text log format), unquoted.
pub fn startup_field<'a>(lines: impl IntoIterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    let line = lines.into_iter().find(|l| l.contains(UP_MESSAGE))?;
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(line[start..].split_whitespace().next()?.trim_matches('"'))
}

/// A relay this caller started: `relay serve` on a data directory, up once its start-up line
/// was logged.
#[derive(Debug)]
pub struct RelayProcess {
    pub daemon: Daemon,
    /// Where its HTTP API listens.
    pub http: SocketAddr,
}

impl RelayProcess {
    /// Runs `bin serve --config CONFIG --data DATA` with `env` (and without `RELAY_TOKEN` from
    /// this environment), and waits up to `timeout` for the start-up line. The error carries
    /// what the relay logged.
    pub fn start(
        bin: &Path,
        config: &Path,
        data: &Path,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<RelayProcess, String> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .env_remove("RELAY_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut daemon = Daemon::spawn(&mut cmd)?;
        let deadline = Instant::now() + timeout;
        loop {
            let http = {
                let lines = daemon.lines();
                startup_field(lines.iter().map(String::as_str), "http").map(str::parse)
            };
            match http {
                Some(Ok(http)) => return Ok(RelayProcess { daemon, http }),
                Some(Err(_)) => return Err(format!("no address in http=:\n{}", daemon.log())),
                None => {}
            }
            if daemon.exited() || Instant::now() > deadline {
                // The last lines may still be on their way through the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return Err(daemon.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of `key=` on its start-up line.
    pub fn startup_field(&self, key: &str) -> Option<String> {
        let lines = self.daemon.lines();
        startup_field(lines.iter().map(String::as_str), key).map(str::to_owned)
    }
}

/// The `relay` binary of the build a test under `cargo test` belongs to, built once per
/// process (a test executable sits in `target/<profile>/deps/`; the binary goes to
/// `target/<profile>/relay`). Panics if it cannot be built: for tests only.
pub fn relay_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>/relay
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile directory");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "relay", "--bin", "relay"]);
        // `cargo test` gives this process the test package's CARGO_MANIFEST_DIR and friends;
        // some build scripts watch them, so passing them on would rebuild half the tree.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || k == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(&key);
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the relay binary failed");
        profile_dir.join("relay")
    })
    .clone()
}

fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes the process `cmd` starts get SIGTERM when the thread that started it ends.
fn terminate_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec and calls only prctl, which is
    // async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_the_startup_line() {
        let lines = [
            "2026-11-29T21:00:00Z  INFO relay::serve: listening",
            "2026-11-29T21:00:01Z  INFO relay::serve: relay is up http=127.0.0.1:8080 \
             media=127.0.0.1:40000,127.0.0.1:40001 files=127.0.0.1:4433 data=\"/var/lib/relay\"",
        ];
        let field = |k| startup_field(lines, k);
        assert_eq!(field("http"), Some("127.0.0.1:8080"));
        assert_eq!(field("media"), Some("127.0.0.1:40000,127.0.0.1:40001"));
        assert_eq!(field("data"), Some("/var/lib/relay"));
        assert_eq!(field("ttp"), None, "a key is matched whole");
        assert_eq!(startup_field(["relay starting http=1"], "http"), None);
    }

    #[test]
    fn a_daemon_that_will_not_start_says_why_and_one_that_runs_is_stopped() {
        assert!(Daemon::spawn(&mut Command::new("/nonexistent/relay")).is_err());
        let mut d = Daemon::spawn(Command::new("sh").args(["-c", "echo hello; exec sleep 30"]))
            .expect("sh runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.log().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(d.log(), "hello");
        assert!(!d.exited());
        // sleep dies of SIGTERM: stopped by the signal, not killed after the grace.
        let status = d
            .stop_within(Duration::from_secs(5))
            .expect("exited on SIGTERM");
        assert!(!status.success());
        assert_eq!(d.pid(), None);
    }
}
