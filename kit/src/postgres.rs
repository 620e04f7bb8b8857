//! A throwaway PostgreSQL: a cluster of its own in a temporary directory, on a free loopback
//! port, with a database `relay` that the user `relay` may use without a password. Dropping it
//! stops the server and removes the directory.
//!
//! PostgreSQL refuses to run as root, so as root the directory is given to the `postgres`
//! account and the server runs as that account (`runuser`); otherwise as the caller. It listens
//! on 127.0.0.1 only, and its socket is in its own directory.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Postgres {
    /// Holds the data directory, the socket and the log.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Whether the server runs as `postgres` (when the caller is root).
    as_postgres: bool,
    /// Whether the server is up, so that Drop stops it.
    running: bool,
}

impl Postgres {
    /// Starts a cluster with the database `relay`; its URL is [`Postgres::url`].
    pub fn start() -> io::Result<Postgres> {
        let bin = binaries()?;
        let as_postgres = fs::metadata("/proc/self")?.uid() == 0;
        let dir = fresh_dir()?;
        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            as_postgres,
            running: false,
        };
        if as_postgres {
            check(
                "chown",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&pg.dir)
                    .output()?,
            )?;
        }
        let data = pg.data();
        check(
            "initdb",
            pg.server_command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "relay", "-E", "UTF8", "--no-sync"])
                .output()?,
        )?;
        // A free port may be taken between the probe and the start; another is tried then.
        let mut last = None;
        for _ in 0..3 {
            pg.port = free_port()?;
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                pg.port,
                pg.dir.display()
            );
            let started = pg
                .server_command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(options)
                .arg("-l")
                .arg(pg.dir.join("pg.log"))
                .args(["-w", "-t", "60", "start"])
                .output()?;
            match check("pg_ctl start", started) {
                Ok(()) => {
                    pg.running = true;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if !pg.running {
            let log = fs::read_to_string(pg.dir.join("pg.log")).unwrap_or_default();
            let why = last.map_or_else(String::new, |e| e.to_string());
            return Err(io::Error::other(format!("{why}\n{log}")));
        }
        pg.create_database("relay")?;
        Ok(pg)
    }

    /// `postgres://relay@127.0.0.1:PORT/relay`.
    pub fn url(&self) -> String {
        self.url_of("relay")
    }

    /// The URL of the database `name` in this cluster.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://relay@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates the empty database `name` and gives its URL: a test's own, beside the others.
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        check(
            "createdb",
            Command::new(self.bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "relay", name])
                .output()?,
        )?;
        Ok(self.url_of(name))
    }

    /// Runs `sql` in the database `db` through `psql`; gives its output, unaligned, without
    /// headers: one line a row, `|` between columns.
    pub fn sql(&self, db: &str, sql: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "relay",
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(sql)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        check("psql", out)?;
        Ok(text)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// One of the server's programs, as the account the server runs as.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed PostgreSQL's programs: `/usr/lib/postgresql/<version>/bin`.
fn binaries() -> io::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let newest = fs::read_dir(root)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.display())))?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v);
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no PostgreSQL under /usr/lib/postgresql (apt-get install postgresql)",
        )
    })
}

/// A new empty directory under /tmp, whose parents every account may pass through.
fn fresh_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/tmp/relay-pg-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A loopback port nothing listened on a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check(what: &str, out: Output) -> io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
