//! `relay-loadtest files`: concurrent uploads and downloads through the relay's file plane,
//! with the relay library's own file client, and what they cost the relay.
//!
//! The run goes in steps of 1, 2, 4, ... clients up to `--clients`. In a step every client, on
//! its own QUIC connection and with its own user's token, uploads three generated files (random
//! bytes, compressible text, and an edited copy of its random file, which should travel as
//! little more than the edits), then, once every client has uploaded, downloads all three to
//! fresh paths and compares them byte for byte with the originals. Figures: throughput of each
//! phase in logical bytes, bytes that travelled versus logical bytes, and the relay's CPU
//! seconds per GB moved. The whole run is bounded by `--duration`; a step that would outlast it
//! is cut, reported as such, and ends the run.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay::files::client::{Client, Progress, PutOptions};
use serde::Serialize;
use tokio::sync::Barrier;

use crate::appliance::{self, Api, Cpu, Metrics, RelayIo};
use crate::output;
use crate::plot;

/// Longest run accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(1800);
const MAX_CLIENTS: usize = 64;
const MIN_SIZE: u64 = 64 << 10;
const MAX_SIZE: u64 = 1 << 30;
const DEVICE: &str = "relay-loadtest";
/// Bytes overwritten, and bytes inserted, in the edited copy.
const EDIT_OVERWRITE: u64 = 4096;
const EDIT_INSERT: u64 = 1000;
const MB: f64 = 1e6;
/// `media.io_batch` of a relay this starts: the relay's default, since no media flows here.
const RELAY_IO_BATCH: u16 = 32;

/// The three kinds of file each client moves, in upload order.
pub const KINDS: [&str; 3] = ["incompressible", "compressible", "edited"];

/// What to run: the `files` subcommand's options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub relay: appliance::Target,
    /// Concurrent clients in the last step; steps go 1, 2, 4, ... up to it.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Size of each generated file, in bytes (64 KiB to 1 GiB).
    #[arg(long, default_value_t = 16 << 20)]
    pub size: u64,
    /// Upper bound on the whole run (at most 30 minutes).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Draw a progress line on stderr.
    #[arg(skip = true)]
    pub progress: bool,
}

impl Options {
    /// Checks the figures; the message names the option.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return Err(format!("--clients must be 1 to {MAX_CLIENTS}"));
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(format!("--size must be {MIN_SIZE} to {MAX_SIZE} bytes"));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(format!(
                "--duration must be more than 0 and at most {}",
                humantime::format_duration(MAX_DURATION)
            ));
        }
        self.relay.check()
    }

    /// Client counts of the steps: powers of two below `clients`, then `clients`.
    pub fn steps(&self) -> Vec<usize> {
        let mut v: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
            .take_while(|n| *n < self.clients)
            .collect();
        v.push(self.clients);
        v
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub target: Option<String>,
    pub clients: usize,
    pub size: u64,
    pub steps: Vec<usize>,
    pub duration_limit_seconds: f64,
}

/// One kind of file over a step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindFigures {
    pub kind: &'static str,
    pub files: u64,
    pub logical_bytes: u64,
    pub bytes_sent: u64,
    pub chunks: u64,
    pub chunks_sent: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    pub clients: usize,
    pub files_put: u64,
    pub files_got: u64,
    /// Downloads identical to their originals, byte for byte.
    pub files_verified: u64,
    pub mismatches: u64,
    pub logical_bytes_put: u64,
    /// Chunk bytes that travelled on upload, after deduplication and compression.
    pub bytes_sent: u64,
    pub logical_bytes_got: u64,
    pub bytes_received: u64,
    pub bytes_verified: u64,
    pub put_seconds: f64,
    pub get_seconds: f64,
    /// Logical megabytes (10^6) per second of each phase, all clients together.
    pub put_mb_per_s: f64,
    pub get_mb_per_s: f64,
    pub relay_cpu_seconds: f64,
    /// Relay CPU seconds per 10^9 logical bytes moved (put and get together).
    pub relay_cpu_seconds_per_gb: f64,
    /// From the relay's /metrics over the step.
    pub relay_bytes_received: u64,
    pub relay_bytes_deduplicated: u64,
    pub kinds: Vec<KindFigures>,
    /// The first few failures, if any.
    pub errors: Vec<String>,
    /// The run's time bound cut this step.
    pub cut_short: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_unix: u64,
    pub setup: Setup,
    pub steps: Vec<Step>,
    pub files_put: u64,
    pub files_got: u64,
    pub files_verified: u64,
    pub logical_bytes_put: u64,
    pub bytes_sent: u64,
    pub bytes_verified: u64,
    pub cpu_source: &'static str,
    pub elapsed_seconds: f64,
    /// Every step ran to its end within the time bound.
    pub stopped_by_itself: bool,
}

/// Runs the whole load test.
pub fn run(o: &Options) -> Result<Report, String> {
    o.check()?;
    let t0 = Instant::now();
    let deadline = t0 + o.duration;
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (own, api, cpu) = appliance::attach(&o.relay, 1, RELAY_IO_BATCH, RelayIo::Mmsg, 4, |m| {
        output::say(o.progress, m)
    })?;
    let result = drive(o, &api, cpu, own.as_ref(), started_unix, deadline);
    if let Some(mut relay) = own {
        if result.is_err() {
            eprintln!("relay log:\n{}", relay.log());
        }
        relay.stop();
    }
    let (steps, complete) = result?;
    let sum = |f: fn(&Step) -> u64| steps.iter().map(f).sum();
    Ok(Report {
        started_unix,
        setup: Setup {
            target: o.relay.target.clone(),
            clients: o.clients,
            size: o.size,
            steps: o.steps(),
            duration_limit_seconds: o.duration.as_secs_f64(),
        },
        files_put: sum(|s| s.files_put),
        files_got: sum(|s| s.files_got),
        files_verified: sum(|s| s.files_verified),
        logical_bytes_put: sum(|s| s.logical_bytes_put),
        bytes_sent: sum(|s| s.bytes_sent),
        bytes_verified: sum(|s| s.bytes_verified),
        steps,
        cpu_source: cpu.source(),
        elapsed_seconds: t0.elapsed().as_secs_f64(),
        stopped_by_itself: complete,
    })
}

/// Where the clients connect and what they trust.
struct Plane {
    server: String,
    ca_der: Vec<u8>,
}

fn drive(
    o: &Options,
    api: &Api,
    cpu: Cpu,
    own: Option<&appliance::OwnRelay>,
    started_unix: u64,
    deadline: Instant,
) -> Result<(Vec<Step>, bool), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("start the runtime: {e}"))?;
    let info = api.info()?;
    let server = info
        .quic
        .ok_or_else(|| "the relay's /api/info names no file plane".to_string())?;
    let ca_der = match own {
        Some(relay) => {
            let path = relay::datadir::DataDir::new(&relay.data).cert();
            let pem = std::fs::read_to_string(&path)
                .map_err(|e| format!("read {}: {e}", path.display()))?;
            relay::datadir::pem_body(&pem, "CERTIFICATE")
                .ok_or_else(|| format!("{} holds no certificate", path.display()))?
        }
        None => runtime.block_on(fetch_certificate(&server, &info.cert_sha256))?,
    };
    let plane = Arc::new(Plane { server, ca_der });
    let tmp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let prefix = format!("lt{:06x}", started_unix & 0xff_ffff);
    api.add_device(DEVICE)?;
    let mut steps = Vec::new();
    for (k, &n) in o.steps().iter().enumerate() {
        if Instant::now() >= deadline {
            return Ok((steps, false));
        }
        output::say(o.progress, &format!("step {}: {n} clients", k + 1));
        let dir = tmp.path().join(format!("step{k}"));
        let mut tokens = Vec::new();
        let mut files = Vec::new();
        for i in 0..n {
            let user = format!("{prefix}-f{k}-c{i}");
            api.add_user(&user)?;
            tokens.push(api.mint_with(&user, DEVICE, &["files"])?);
            let seed = started_unix ^ ((k as u64) << 32) ^ ((i as u64) << 8);
            files.push(
                generate(&dir.join(format!("c{i}")), o.size, seed)
                    .map_err(|e| format!("generate files: {e}"))?,
            );
        }
        let a = api.metrics()?;
        let cpu_a = cpu.seconds(&a)?;
        let step = runtime.block_on(run_step(o, plane.clone(), tokens, files, deadline));
        let b = api.metrics()?;
        let cpu_b = cpu.seconds(&b)?;
        let step = finish(step, n, &a, &b, cpu_b - cpu_a);
        let _ = std::fs::remove_dir_all(&dir);
        let cut = step.cut_short;
        steps.push(step);
        if cut {
            return Ok((steps, false));
        }
    }
    Ok((steps, true))
}

/// Per-step figures the clients produce; the relay's side is added by [`finish`].
fn finish(mut s: Step, clients: usize, a: &Metrics, b: &Metrics, cpu: f64) -> Step {
    s.clients = clients;
    s.put_mb_per_s = s.logical_bytes_put as f64 / MB / s.put_seconds.max(1e-9);
    s.get_mb_per_s = s.logical_bytes_got as f64 / MB / s.get_seconds.max(1e-9);
    s.relay_cpu_seconds = cpu.max(0.0);
    let moved = (s.logical_bytes_put + s.logical_bytes_got) as f64;
    s.relay_cpu_seconds_per_gb = if moved > 0.0 {
        s.relay_cpu_seconds / (moved / 1e9)
    } else {
        0.0
    };
    s.relay_bytes_received = (b.files_bytes_received - a.files_bytes_received).max(0.0) as u64;
    s.relay_bytes_deduplicated =
        (b.files_bytes_deduplicated - a.files_bytes_deduplicated).max(0.0) as u64;
    s
}

/// The three files of one client, in [`KINDS`] order.
type Files = [PathBuf; 3];

/// Writes a client's three files under `dir`. Each starts with a line of text, so its type is
/// plain data to the relay's magic-byte check whatever the random bytes after it are.
fn generate(dir: &Path, size: u64, seed: u64) -> io::Result<Files> {
    std::fs::create_dir_all(dir)?;
    let paths = KINDS.map(|k| dir.join(format!("{k}.bin")));
    let mut rng = relay_kit::Noise::new(seed);
    let header = b"relay-loadtest data\n";

    let mut w = BufWriter::with_capacity(1 << 20, File::create(&paths[0])?);
    w.write_all(header)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size - header.len() as u64;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;

    // Log-like lines: zstd shrinks them several times, yet no two chunks are alike.
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&paths[1])?);
    w.write_all(header)?;
    let mut written = header.len() as u64;
    let mut line = 0u64;
    while written < size {
        let r = rng.next_u64();
        let text = format!(
            "{seed:016x} {line:010} level=info msg=\"chunk stored\" room=r{} bytes={} ok\n",
            r % 7,
            (r >> 8) % 1500
        );
        let take = (size - written).min(text.len() as u64) as usize;
        w.write_all(&text.as_bytes()[..take])?;
        written += take as u64;
        line += 1;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;

    // The random file with a block overwritten at a third and bytes inserted at two thirds.
    let mut src = File::open(&paths[0])?;
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&paths[2])?);
    let (a, b) = (size / 3, size * 2 / 3);
    let mut edit = vec![0u8; (EDIT_OVERWRITE + EDIT_INSERT) as usize];
    rng.fill(&mut edit);
    io::copy(&mut (&mut src).take(a), &mut w)?;
    w.write_all(&edit[..EDIT_OVERWRITE as usize])?;
    src.seek(SeekFrom::Start(a + EDIT_OVERWRITE))?;
    io::copy(&mut (&mut src).take(b - a - EDIT_OVERWRITE), &mut w)?;
    w.write_all(&edit[EDIT_OVERWRITE as usize..])?;
    io::copy(&mut src, &mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(paths)
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// What one client did in a step.
#[derive(Debug, Default)]
struct ClientResult {
    puts: Vec<(usize, relay::files::client::PutReport)>,
    gets: Vec<(usize, relay::files::client::GetReport, bool)>,
    put_span: Option<(Instant, Instant)>,
    get_span: Option<(Instant, Instant)>,
    error: Option<String>,
}

/// Transfers in flight, for the progress line.
type Live = Arc<Mutex<Vec<Arc<Progress>>>>;

fn track(live: &Live) -> Arc<Progress> {
    let p = Arc::new(Progress::default());
    live.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(p.clone());
    p
}

async fn client(
    plane: Arc<Plane>,
    token: String,
    files: Files,
    start: Arc<Barrier>,
    uploaded: Arc<Barrier>,
    live: Live,
) -> ClientResult {
    let mut r = ClientResult::default();
    let conn = Client::connect(&plane.server, plane.ca_der.clone(), token).await;
    // Everyone passes both barriers whatever happened, so no client waits for a failed one.
    start.wait().await;
    let c = match conn {
        Ok(c) => Some(c),
        Err(e) => {
            r.error = Some(format!("connect: {e}"));
            None
        }
    };
    let mut ids = Vec::new();
    if let Some(c) = &c {
        let t = Instant::now();
        for (k, path) in files.iter().enumerate() {
            match c.put(path, PutOptions::default(), track(&live)).await {
                Ok(p) => {
                    ids.push((k, p.entry.id.clone()));
                    r.puts.push((k, p));
                }
                Err(e) => {
                    r.error = Some(format!("put {}: {e}", KINDS[k]));
                    break;
                }
            }
        }
        r.put_span = Some((t, Instant::now()));
    }
    uploaded.wait().await;
    let Some(c) = c else { return r };
    if r.error.is_none() {
        let t = Instant::now();
        for (k, id) in ids {
            let out = files[k].with_extension("got");
            match c.get(&id, Some(&out), track(&live)).await {
                Ok(g) => {
                    let (a, b) = (files[k].clone(), out.clone());
                    let same = tokio::task::spawn_blocking(move || same_bytes(&a, &b))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(false);
                    r.gets.push((k, g, same));
                }
                Err(e) => {
                    r.error = Some(format!("get {}: {e}", KINDS[k]));
                    break;
                }
            }
        }
        r.get_span = Some((t, Instant::now()));
    }
    c.close().await;
    r
}

async fn run_step(
    o: &Options,
    plane: Arc<Plane>,
    tokens: Vec<String>,
    files: Vec<Files>,
    deadline: Instant,
) -> Step {
    let n = tokens.len();
    let start = Arc::new(Barrier::new(n));
    let uploaded = Arc::new(Barrier::new(n));
    let live: Live = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for (token, f) in tokens.into_iter().zip(files) {
        tasks.spawn(client(
            plane.clone(),
            token,
            f,
            start.clone(),
            uploaded.clone(),
            live.clone(),
        ));
    }
    let total = 3 * 2 * n as u64 * o.size;
    let t0 = Instant::now();
    let mut results = Vec::new();
    let mut step = Step::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let until = tokio::time::Instant::from_std(deadline);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(r)) => results.push(r),
                Some(Err(e)) => step.errors.push(format!("a client task failed: {e}")),
                None => break,
            },
            _ = tick.tick() => {
                let done: u64 = live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|p| p.done.load(Ordering::Relaxed))
                    .sum();
                output::progress_line(
                    o.progress,
                    &format!(
                        "{n} clients: {:.1}/{:.1} MB moved t={:.1}s",
                        done as f64 / MB,
                        total as f64 / MB,
                        t0.elapsed().as_secs_f64()
                    ),
                );
            }
            _ = tokio::time::sleep_until(until) => {
                step.cut_short = true;
                tasks.abort_all();
                break;
            }
        }
    }
    output::end_progress(o.progress);
    tally(&mut step, results);
    step
}

/// Adds the clients' results into the step.
fn tally(step: &mut Step, results: Vec<ClientResult>) {
    let mut kinds: Vec<KindFigures> = KINDS
        .iter()
        .map(|&kind| KindFigures {
            kind,
            ..KindFigures::default()
        })
        .collect();
    let span = |spans: &mut dyn Iterator<Item = (Instant, Instant)>| {
        let (lo, hi) = spans.fold((None::<Instant>, None::<Instant>), |(lo, hi), (a, b)| {
            (
                Some(lo.map_or(a, |l| l.min(a))),
                Some(hi.map_or(b, |h| h.max(b))),
            )
        });
        lo.zip(hi).map_or(0.0, |(a, b)| (b - a).as_secs_f64())
    };
    step.put_seconds = span(&mut results.iter().filter_map(|r| r.put_span));
    step.get_seconds = span(&mut results.iter().filter_map(|r| r.get_span));
    for r in results {
        for (k, p) in &r.puts {
            let f = &mut kinds[*k];
            f.files += 1;
            f.logical_bytes += p.entry.size;
            f.bytes_sent += p.bytes_sent;
            f.chunks += p.chunks as u64;
            f.chunks_sent += p.chunks_sent;
            step.files_put += 1;
            step.logical_bytes_put += p.entry.size;
            step.bytes_sent += p.bytes_sent;
        }
        for (_, g, same) in &r.gets {
            step.files_got += 1;
            step.logical_bytes_got += g.entry.size;
            step.bytes_received += g.bytes_received;
            if *same {
                step.files_verified += 1;
                step.bytes_verified += g.entry.size;
            } else {
                step.mismatches += 1;
            }
        }
        if let Some(e) = r.error
            && step.errors.len() < 10
        {
            step.errors.push(e);
        }
    }
    step.kinds = kinds;
}

/// The file plane's certificate, taken from a handshake and accepted only if its SHA-256 is
/// the one the relay's API announced (`cert_sha256` of `/api/info`).
async fn fetch_certificate(server: &str, sha256_hex: &str) -> Result<Vec<u8>, String> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    fn taken() -> rustls::Error {
        rustls::Error::General("certificate taken".into())
    }

    /// Keeps the certificate and ends the handshake: nothing is sent over this connection.
    #[derive(Debug)]
    struct Capture {
        seen: Mutex<Option<Vec<u8>>>,
        schemes: Vec<SignatureScheme>,
    }
    impl ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
            Err(taken())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(taken())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(taken())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.schemes.clone()
        }
    }

    let provider = relay::files::transport::crypto_provider();
    let capture = Arc::new(Capture {
        seen: Mutex::new(None),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![relay::files::transport::ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let addr: std::net::SocketAddr = server
        .parse()
        .map_err(|e| format!("file plane address {server:?}: {e}"))?;
    let bind: std::net::SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|e| format!("{e}"))?
    } else {
        "[::]:0".parse().map_err(|e| format!("{e}"))?
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| format!("open a UDP socket: {e}"))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint
        .connect(addr, &addr.ip().to_string())
        .map_err(|e| format!("{server}: {e}"))?;
    // The handshake fails on purpose once the certificate is in; bound it anyway.
    let _ = tokio::time::timeout(Duration::from_secs(10), connecting).await;
    endpoint.close(quinn::VarInt::from_u32(0), b"");
    let der = capture
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| format!("{server}: no certificate in the handshake"))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if !hex.eq_ignore_ascii_case(sha256_hex) {
        return Err(format!(
            "{server}: the certificate's SHA-256 {hex} is not the {sha256_hex} /api/info announced"
        ));
    }
    Ok(der)
}

impl Report {
    /// A human summary.
    pub fn summary(&self) -> String {
        let s = &self.setup;
        let mut out = format!(
            "files load: steps of {:?} clients, each moving {} files of {} bytes \
             (incompressible, compressible, edited copy) up then down\n",
            s.steps,
            KINDS.len(),
            s.size
        );
        for st in &self.steps {
            out += &format!(
                "  {:>2} clients: put {:.1} MB/s ({:.2} s)  get {:.1} MB/s ({:.2} s)  \
                 relay CPU {:.2} s = {:.2} s/GB{}\n",
                st.clients,
                st.put_mb_per_s,
                st.put_seconds,
                st.get_mb_per_s,
                st.get_seconds,
                st.relay_cpu_seconds,
                st.relay_cpu_seconds_per_gb,
                if st.cut_short { "  (cut short)" } else { "" }
            );
            for k in &st.kinds {
                let ratio = if k.logical_bytes > 0 {
                    k.bytes_sent as f64 / k.logical_bytes as f64 * 100.0
                } else {
                    0.0
                };
                out += &format!(
                    "      {:<14} {} files  {:.1} MB logical  {:.1} MB sent ({ratio:.1}%)  \
                     chunks {}/{} sent\n",
                    k.kind,
                    k.files,
                    k.logical_bytes as f64 / MB,
                    k.bytes_sent as f64 / MB,
                    k.chunks_sent,
                    k.chunks
                );
            }
            if st.mismatches > 0 {
                out += &format!(
                    "      {} downloads differ from their originals\n",
                    st.mismatches
                );
            }
            for e in &st.errors {
                out += &format!("      error: {e}\n");
            }
        }
        out += &format!(
            "files put {} got {} verified {}; {:.1} MB logical put, {:.1} MB sent ({:.1}%)\n",
            self.files_put,
            self.files_got,
            self.files_verified,
            self.logical_bytes_put as f64 / MB,
            self.bytes_sent as f64 / MB,
            if self.logical_bytes_put > 0 {
                self.bytes_sent as f64 / self.logical_bytes_put as f64 * 100.0
            } else {
                0.0
            }
        );
        if self.cpu_source == "metrics" {
            out += "  (relay CPU from its process_cpu_seconds_total: whole seconds only)\n";
        }
        if !self.stopped_by_itself {
            out += "  the time bound (--duration) ended the run before every step was done\n";
        }
        out
    }

    /// Throughput and relay CPU per GB against the number of clients.
    pub fn chart(&self) -> plot::Chart {
        let series = |name: &str, f: fn(&Step) -> f64| plot::Series {
            name: name.into(),
            points: self
                .steps
                .iter()
                .map(|s| (s.clients as f64, f(s)))
                .collect(),
        };
        plot::Chart {
            title: format!(
                "relay file plane: 3 files of {:.1} MB per client",
                self.setup.size as f64 / MB
            ),
            x_label: "concurrent clients".into(),
            panels: vec![
                plot::Panel {
                    y_label: "throughput, logical MB/s (all clients)".into(),
                    series: vec![
                        series("put", |s| s.put_mb_per_s),
                        series("get", |s| s.get_mb_per_s),
                    ],
                    limit: None,
                },
                plot::Panel {
                    y_label: "relay CPU seconds per GB moved".into(),
                    series: vec![series("relay CPU s/GB", |s| s.relay_cpu_seconds_per_gb)],
                    limit: None,
                },
            ],
            marker: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_up_to_the_client_count() {
        let o = |clients| Options {
            relay: appliance::Target::default(),
            clients,
            size: MIN_SIZE,
            duration: Duration::from_secs(1),
            progress: false,
        };
        assert_eq!(o(1).steps(), vec![1]);
        assert_eq!(o(2).steps(), vec![1, 2]);
        assert_eq!(o(6).steps(), vec![1, 2, 4, 6]);
        assert_eq!(o(8).steps(), vec![1, 2, 4, 8]);
    }

    #[test]
    fn generated_files_have_the_size_and_the_edit() {
        let dir = tempfile::tempdir().unwrap();
        let size = 300_000;
        let [inc, comp, edited] = generate(dir.path(), size, 7).unwrap();
        let read = |p: &Path| std::fs::read(p).unwrap();
        let (a, c, e) = (read(&inc), read(&comp), read(&edited));
        assert_eq!((a.len() as u64, c.len() as u64), (size, size));
        assert_eq!(e.len() as u64, size + EDIT_INSERT);
        let third = (size / 3) as usize;
        assert_eq!(a[..third], e[..third]);
        assert_ne!(a[third..third + 4096], e[third..third + 4096]);
        assert_eq!(a[size as usize - 1000..], e[e.len() - 1000..]);
        assert!(same_bytes(&inc, &inc).unwrap());
        assert!(!same_bytes(&inc, &edited).unwrap());
        // Same seed, same bytes.
        let again = tempfile::tempdir().unwrap();
        let [inc2, ..] = generate(again.path(), size, 7).unwrap();
        assert!(same_bytes(&inc, &inc2).unwrap());
    }
}
