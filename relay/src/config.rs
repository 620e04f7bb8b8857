//! The appliance's configuration: one loader, TOML in, a checked [`Config`] out.
//!
//! Every key has an embedded default, so an empty file (or none) is a working appliance bound to
//! loopback. An unknown key or a bad value is an error naming the key; `relay` exits 2 on it.
//! `configs/relay.toml` lists every key with its default and must stay in step with this file
//! (a test loads it and compares).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State directory: database, keys, certificate, chunk store, audit log.
    pub data_dir: PathBuf,
    pub http: Http,
    pub media: Media,
    pub tokens: Tokens,
    pub log: Log,
    pub tls: Tls,
    pub files: Files,
    pub audit: Audit,
    pub registry: RegistryConfig,
    pub cluster: ClusterConfig,
}

/// Where the registry lives.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `postgres://USER@HOST:PORT/DB` to share one registry between the nodes of a cluster.
    /// Empty: SQLite in the data directory.
    pub url: String,
}

/// Several relays as one appliance; unset `redis_url`: a single relay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The room directory: `redis://HOST:PORT/DB`. Empty: no cluster.
    pub redis_url: String,
    /// How clients and other nodes reach this node's HTTP. Empty: `http://` and `http.listen`.
    pub public_url: String,
    /// This node's id in the cluster. Empty: the host and port of `public_url`.
    pub node_id: String,
    /// How long a node's and a room's claim last without renewal: a dead node's rooms move after
    /// at most this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            public_url: String::new(),
            node_id: String::new(),
            lease: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// How clients and other nodes reach this node's HTTP, without a trailing `/`.
    pub fn public_url(&self) -> String {
        if self.cluster.public_url.is_empty() {
            format!("http://{}", self.http.listen)
        } else {
            self.cluster.public_url.trim_end_matches('/').to_string()
        }
    }

    /// This node's id: `cluster.node_id`, or the authority of its public URL.
    pub fn node_id(&self) -> String {
        if !self.cluster.node_id.is_empty() {
            return self.cluster.node_id.clone();
        }
        let url = self.public_url();
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_string()
    }
}

/// The audit log's witnesses outside the relay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    /// A syslog server that receives every audit line as it is written: `tcp://HOST:PORT`
    /// (RFC 5424 over TCP). Empty: none (the journal still does, where systemd runs the relay).
    pub syslog: String,
    /// How often the chain's head (line count and last hash) goes to the witnesses.
    #[serde(with = "humantime_serde")]
    pub head_interval: Duration,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            syslog: String::new(),
            head_interval: crate::control::audit::DEFAULT_HEAD_INTERVAL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub listen: SocketAddr,
    /// How long shutdown waits for open requests before giving up on them.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// Address the media workers bind and announce as their ICE candidate.
    pub bind: std::net::IpAddr,
    /// Worker `i` listens on UDP `first_port + i`.
    pub first_port: u16,
    /// Media workers (one room lives on one worker); 0 = one per core.
    pub workers: usize,
    /// Publishers plus subscribers in one room; past it, 503 with Retry-After.
    pub max_sessions_per_room: usize,
    /// Rooms on one worker; past it on every worker, 503 with Retry-After.
    pub max_rooms_per_worker: usize,
    /// Datagrams per `recvmmsg`/`sendmmsg` call (1 = one per syscall).
    pub io_batch: usize,
    /// The datagram path: "mmsg" (`recvmmsg`/`sendmmsg`) or "uring" (io_uring, falling back to
    /// mmsg with a log line where the kernel refuses it).
    pub io: String,
    /// Video m-lines (slots) one offer may carry; beyond it 400.
    pub max_slots: usize,
    /// Audio m-lines one offer may carry; beyond it 400.
    pub max_audio_lines: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tokens {
    /// Lifetime of a token when `--ttl` is not given.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Longest lifetime `relay token` and the API will mint.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Slack for the clocks of different nodes when a token's `exp` and `nbf` are checked, in
    /// whole seconds; the only allowance: expired means expired.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// The signing key (32 bytes); every node of a cluster reads the same file. Unset: `token.key`
    /// in the data directory, made on first start.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter: `info`, `relay=debug`, ...
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Names and addresses in the certificate generated on first start.
    pub subject_alt_names: Vec<String>,
}

/// The file plane (QUIC).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Files {
    pub listen: SocketAddr,
    /// Content types (magic bytes, not names) that may be stored: `type/subtype` or `type/*`;
    /// content with no known signature is `application/octet-stream`.
    pub allowed_types: Vec<String>,
    /// Logical bytes one user may store; 0 = no per-user limit.
    pub user_quota_bytes: u64,
    /// How long an unfinished upload keeps its chunks and reservation without progress.
    #[serde(with = "humantime_serde")]
    pub upload_lease: Duration,
    /// How long an unreferenced chunk stays before it is collected.
    #[serde(with = "humantime_serde")]
    pub gc_grace: Duration,
    /// UDP receive and send buffer asked of the kernel.
    pub socket_buffer_bytes: usize,
    /// Threads that run the QUIC endpoint; with a fixed port, each has a socket of its own on
    /// `listen` and the kernel spreads connections over them (with port 0 there is one).
    /// 0 = one per four cores, at least one.
    pub io_threads: usize,
    /// Memory for recent chunks, reserved at start with room for chunks on their way in: those
    /// just received and those read more than once lately; 0 = none, nothing reserved.
    pub recent_chunk_bytes: usize,
    /// The largest UDP payload the file plane sends or accepts (1200 to 65527): the bound of
    /// QUIC's path MTU discovery, which climbs from 1200 to what the path carries. Lower it where
    /// a path drops large datagrams without telling (a tunnel that breaks discovery); the
    /// default lets a jumbo-frame intranet and loopback use large datagrams.
    pub max_udp_payload: u16,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            allowed_types: [
                "video/*",
                "audio/*",
                "image/*",
                "application/pdf",
                "application/octet-stream",
            ]
            .map(String::from)
            .to_vec(),
            user_quota_bytes: 0,
            upload_lease: Duration::from_secs(24 * 3600),
            gc_grace: Duration::from_secs(3600),
            socket_buffer_bytes: 8 << 20,
            io_threads: 0,
            recent_chunk_bytes: 1 << 30,
            max_udp_payload: crate::files::transport::MAX_UDP_PAYLOAD,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./relay-data"),
            http: Http::default(),
            media: Media::default(),
            tokens: Tokens::default(),
            log: Log::default(),
            tls: Tls::default(),
            files: Files::default(),
            audit: Audit::default(),
            registry: RegistryConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for Media {
    fn default() -> Self {
        Media {
            bind: std::net::IpAddr::from([127, 0, 0, 1]),
            first_port: 40_000,
            workers: 0,
            max_sessions_per_room: 100,
            max_rooms_per_worker: 1_000,
            io_batch: crate::media::plane::DEFAULT_IO_BATCH,
            io: crate::media::datagrams::IoKind::default()
                .label()
                .to_string(),
            max_slots: crate::media::plane::DEFAULT_MAX_SLOTS,
            max_audio_lines: crate::media::plane::DEFAULT_MAX_AUDIO_LINES,
        }
    }
}

impl Media {
    /// The media plane's settings.
    pub fn plane(&self) -> crate::media::MediaConfig {
        crate::media::MediaConfig {
            bind_ip: self.bind,
            first_port: self.first_port,
            workers: self.workers,
            max_sessions_per_room: self.max_sessions_per_room,
            max_rooms_per_worker: self.max_rooms_per_worker,
            io_batch: self.io_batch,
            io: crate::media::datagrams::IoKind::parse(&self.io).unwrap_or_default(),
            max_slots: self.max_slots,
            max_audio_lines: self.max_audio_lines,
        }
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            clock_skew: Duration::from_secs(crate::control::token::DEFAULT_CLOCK_SKEW_SECS),
            key_file: None,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            subject_alt_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        }
    }
}

/// A configuration that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending key, dotted (`http.listen`), or empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration: {}", self.message)
        } else {
            write!(f, "configuration key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("", e.to_string()))?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner().to_string();
                err(&key, inner)
            })?;
        config.check()?;
        Ok(config)
    }

    /// Reads `path`, or returns the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| err("", format!("cannot read {}: {e}", p.display())))?;
                Config::parse(&text).map_err(|e| ConfigError {
                    message: format!("{} ({})", e.message, p.display()),
                    ..e
                })
            }
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "must not be empty"));
        }
        if self.media.bind.is_unspecified() {
            return Err(err(
                "media.bind",
                "must be a concrete address: peers are told to send to it",
            ));
        }
        if self.media.workers > 1024 {
            return Err(err("media.workers", "must be at most 1024"));
        }
        if self.media.first_port != 0
            && usize::from(self.media.first_port) + self.media.workers.max(1) > 65_536
        {
            return Err(err(
                "media.first_port",
                "leaves no room for one port per worker",
            ));
        }
        if self.media.max_sessions_per_room == 0 {
            return Err(err("media.max_sessions_per_room", "must be at least 1"));
        }
        if self.media.max_rooms_per_worker == 0 {
            return Err(err("media.max_rooms_per_worker", "must be at least 1"));
        }
        if !(1..=crate::media::udp::MAX_BATCH).contains(&self.media.io_batch) {
            return Err(err(
                "media.io_batch",
                format!("must be from 1 to {}", crate::media::udp::MAX_BATCH),
            ));
        }
        if crate::media::datagrams::IoKind::parse(&self.media.io).is_none() {
            return Err(err("media.io", "must be \"mmsg\" or \"uring\""));
        }
        if !self.audit.syslog.is_empty()
            && let Err(m) = crate::control::witness::parse_url(&self.audit.syslog)
        {
            return Err(err("audit.syslog", m));
        }
        if self.audit.head_interval.is_zero() {
            return Err(err("audit.head_interval", "must be longer than zero"));
        }
        if self.media.max_slots == 0 {
            return Err(err("media.max_slots", "must be at least 1"));
        }
        if self.tokens.default_ttl.is_zero() {
            return Err(err("tokens.default_ttl", "must be longer than zero"));
        }
        if self.tokens.clock_skew > Duration::from_secs(60) {
            return Err(err(
                "tokens.clock_skew",
                "must be at most 1m: it only covers clocks of different nodes",
            ));
        }
        if self.tokens.max_ttl < self.tokens.default_ttl {
            return Err(err("tokens.max_ttl", "must be at least tokens.default_ttl"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(err(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
            ));
        }
        if self.tls.subject_alt_names.is_empty() {
            return Err(err(
                "tls.subject_alt_names",
                "must name at least one host or address",
            ));
        }
        self.check_cluster()?;
        self.files.check()
    }

    fn check_cluster(&self) -> Result<(), ConfigError> {
        let url = &self.registry.url;
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(err(
                "registry.url",
                "must be empty (SQLite in the data directory) or a postgres:// URL",
            ));
        }
        let redis = &self.cluster.redis_url;
        if !redis.is_empty() && !redis.starts_with("redis://") {
            return Err(err("cluster.redis_url", "must be empty or a redis:// URL"));
        }
        let public = &self.cluster.public_url;
        if !public.is_empty() && !public.starts_with("http://") && !public.starts_with("https://") {
            return Err(err(
                "cluster.public_url",
                "must be an http:// or https:// URL",
            ));
        }
        if let Err(e) = crate::control::registry::check_node_id(&self.node_id()) {
            return Err(err(
                "cluster.node_id",
                format!("{e} (set it when the public URL's host and port are not)"),
            ));
        }
        if self.cluster.lease < Duration::from_secs(1) {
            return Err(err("cluster.lease", "must be at least 1s"));
        }
        if !redis.is_empty() && url.is_empty() {
            return Err(err(
                "registry.url",
                "a cluster (cluster.redis_url) needs a shared registry: a postgres:// URL",
            ));
        }
        if self
            .tokens
            .key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(err("tokens.key_file", "must not be empty"));
        }
        Ok(())
    }
}

impl Files {
    /// The file plane's QUIC threads, with 0 resolved to one per four cores.
    pub fn io_threads(&self) -> usize {
        match self.io_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(4)),
            n => n,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        for t in &self.allowed_types {
            let ok = t.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && !a.contains('*') && (b == "*" || !b.contains('*'))
            });
            if !ok {
                return Err(err(
                    "files.allowed_types",
                    format!("{t:?} is not a content type (type/subtype or type/*)"),
                ));
            }
        }
        if self.upload_lease < Duration::from_secs(60) {
            return Err(err("files.upload_lease", "must be at least 1m"));
        }
        if self.socket_buffer_bytes > 1 << 30 {
            return Err(err("files.socket_buffer_bytes", "must be at most 1 GiB"));
        }
        if self.io_threads > 64 {
            return Err(err("files.io_threads", "must be at most 64"));
        }
        if !(1200..=65527).contains(&self.max_udp_payload) {
            return Err(err(
                "files.max_udp_payload",
                "must be from 1200 (QUIC's least) to 65527 (quinn's most)",
            ));
        }
        Ok(())
    }
}

/// Durations as humantime text ("30s", "1h").
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_defaults_on_loopback() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.http.listen.ip().is_loopback());
    }

    #[test]
    fn shipped_file_is_the_defaults() {
        let text = include_str!("../../configs/relay.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_key() {
        #[rustfmt::skip]
        let table = [
            ("lisen = 1", "lisen"),
            ("[http]\nlisten = \"nowhere\"", "http.listen"),
            ("[http]\nport = 80", "http.port"),
            ("[tokens]\ndefault_ttl = \"soon\"", "tokens.default_ttl"),
            ("[tokens]\ndefault_ttl = \"0s\"", "tokens.default_ttl"),
            ("[tokens]\nmax_ttl = \"1m\"", "tokens.max_ttl"),
            ("[log]\nformat = \"xml\"", "log.format"),
            ("[log]\nlevel = \"[[\"", "log.level"),
            ("[tls]\nsubject_alt_names = []", "tls.subject_alt_names"),
            ("data_dir = \"\"", "data_dir"),
            ("[media]\nbind = \"0.0.0.0\"", "media.bind"),
            ("[media]\nworkers = 5000", "media.workers"),
            ("[media]\nfirst_port = 65535\nworkers = 4", "media.first_port"),
            ("[media]\nmax_sessions_per_room = 0", "media.max_sessions_per_room"),
            ("[media]\nio_batch = 0", "media.io_batch"),
            ("[media]\nio_batch = 65", "media.io_batch"),
            ("[media]\nio = \"epoll\"", "media.io"),
            ("[media]\nfirst_port = -1", "media.first_port"),
            ("[files]\nlisten = \"x\"", "files.listen"),
            ("[files]\nallowed_types = [\"video\"]", "files.allowed_types"),
            ("[files]\nallowed_types = [\"*/mp4\"]", "files.allowed_types"),
            ("[files]\nupload_lease = \"1s\"", "files.upload_lease"),
            ("[files]\ngc_grace = \"later\"", "files.gc_grace"),
            ("[files]\nsocket_buffer_bytes = -1", "files.socket_buffer_bytes"),
            ("[files]\nio_threads = 65", "files.io_threads"),
            ("[files]\nmax_udp_payload = 1199", "files.max_udp_payload"),
            ("[files]\nmax_udp_payload = 65528", "files.max_udp_payload"),
            ("[files]\nquota = 1", "files.quota"),
            ("[registry]\nurl = \"mysql://x\"", "registry.url"),
            ("[cluster]\nredis_url = \"redis://127.0.0.1:6379\"", "registry.url"),
            ("[cluster]\nredis_url = \"tcp://x\"", "cluster.redis_url"),
            ("[cluster]\npublic_url = \"10.0.0.1:8080\"", "cluster.public_url"),
            ("[cluster]\nnode_id = \"a b\"", "cluster.node_id"),
            ("[cluster]\nlease = \"100ms\"", "cluster.lease"),
            ("[cluster]\nleese = \"5s\"", "cluster.leese"),
        ];
        for (text, key) in table {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text:?}: {e}");
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = Config::parse("[http\n").unwrap_err();
        assert!(e.key.is_empty());
    }

    #[test]
    fn values_are_read() {
        let c = Config::parse(
            "data_dir = \"/var/lib/relay\"\n[http]\nlisten = \"[::1]:9000\"\n[tokens]\ndefault_ttl = \"15m\"\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/relay"));
        assert_eq!(c.http.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.tokens.default_ttl, Duration::from_secs(900));
    }
}
