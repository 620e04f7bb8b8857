//! The file plane's QUIC shell: the quinn endpoint, one task per connection and per stream.
//!
//! One request per bidirectional stream, answered with one frame: the shell reads the frame,
//! hands the request to [`Service::handle`] on the blocking pool once (the checks, hashing,
//! fsync and SQLite all happen there), and writes the answer, so the network tasks keep
//! turning.
//!
//! Each endpoint, with its connections and streams, runs on a thread of its own: a
//! single-threaded runtime (`relay-files-N`), not the process's shared workers. A datagram, the
//! connection it belongs to and the streams it feeds are then handled in turn on one thread, with
//! no hand-over between workers; on the shared workers that hand-over cost the relay about a
//! fifth more CPU per GiB served and a sixth more per GiB received (bench/RESULTS.md).
//! Each thread's runtime has its own blocking pool, which spreads the requests over the cores.
//! With `files.io_threads` above one and a fixed port, every thread has its own socket on the
//! same address (`SO_REUSEPORT`) and the kernel spreads the peers over them by address.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::service::{Counters, Service};
use super::store::{ChunkStore, StoreError};
use super::transport::{self, ALPN, Buffers};
use super::wire::{Request, Response};
use crate::config;
use crate::control::{Control, unix_now};
use crate::datadir::{Secrets, pem_body};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on UDP {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot start the file plane's thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Store(StoreError),
}

/// The running file plane.
#[derive(Debug)]
pub struct FilePlane {
    /// One endpoint per QUIC thread, all on `local`.
    endpoints: Vec<quinn::Endpoint>,
    local: SocketAddr,
    service: Arc<Service>,
    /// The first socket's buffers (every socket asks for the same).
    pub buffers: Buffers,
    /// The threads that run the endpoints, until [`FilePlane::shutdown`] joins them.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Connections each thread accepted.
    accepted: Vec<Arc<AtomicU64>>,
}

/// A plane dropped without [`FilePlane::shutdown`] (the relay failed to start after it) still
/// ends its threads, so that what they hold (the control plane, and its audit log) is let go.
impl Drop for FilePlane {
    fn drop(&mut self) {
        join_all(self.close());
    }
}

/// Joins `threads`, logging the message of any that panicked.
fn join_all(threads: Vec<JoinHandle<()>>) {
    for thread in threads {
        if let Err(panic) = thread.join() {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "a file plane thread panicked");
        }
    }
}

/// Decrements a gauge when dropped.
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn server_config(
    secrets: &Secrets,
    max_udp_payload: u16,
) -> Result<quinn::ServerConfig, FilesError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let key = pem_body(&secrets.key_pem, "PRIVATE KEY")
        .ok_or_else(|| FilesError::Tls("the TLS key is not PEM".into()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(transport::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| FilesError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(secrets.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .map_err(|e| FilesError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| FilesError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport::transport(max_udp_payload)));
    Ok(server)
}

impl FilePlane {
    /// Opens the store in `data` and starts serving. Must run inside a Tokio runtime.
    pub fn start(
        settings: &config::Files,
        data: &Path,
        secrets: &Secrets,
        control: Arc<Control>,
    ) -> Result<FilePlane, FilesError> {
        let mut store = ChunkStore::open(data).map_err(FilesError::Store)?;
        store.remove_temp_files().map_err(FilesError::Store)?;
        store.keep_recent(settings.recent_chunk_bytes);
        let server = server_config(secrets, settings.max_udp_payload)?;
        let service = Arc::new(Service::new(control, Arc::new(store), settings.clone()));
        let mut count = settings.io_threads();
        if count > 1 && settings.listen.port() == 0 {
            // The kernel may hand out, for port 0, a port that another socket of this user
            // already shares: only a fixed port can be shared safely.
            tracing::info!(
                io_threads = count,
                "files.listen asks for any port: the file plane runs one QUIC thread"
            );
            count = 1;
        }
        let config = transport::endpoint_config(settings.max_udp_payload);
        let mut plane = FilePlane {
            endpoints: Vec::with_capacity(count),
            local: settings.listen,
            service,
            buffers: Buffers {
                requested: settings.socket_buffer_bytes,
                recv: 0,
                send: 0,
            },
            threads: Mutex::new(Vec::with_capacity(count)),
            accepted: Vec::with_capacity(count),
        };
        for i in 0..count {
            // On an error, dropping the plane closes the endpoints started so far and joins their
            // threads (each ends once its connections are told, at most 2 s).
            plane.start_thread(i, count > 1, &config, &server)?;
        }
        let buffers = plane.buffers;
        // Linux reports twice what it grants (half is bookkeeping), so compare against that.
        if buffers.recv < 2 * buffers.requested || buffers.send < 2 * buffers.requested {
            tracing::warn!(
                requested = buffers.requested,
                recv_granted = buffers.recv / 2,
                send_granted = buffers.send / 2,
                "the kernel granted smaller UDP buffers than asked; raise net.core.rmem_max and net.core.wmem_max"
            );
        } else {
            tracing::info!(
                recv_granted = buffers.recv / 2,
                send_granted = buffers.send / 2,
                threads = count,
                "file plane UDP buffers"
            );
        }
        tokio::spawn(collect_garbage(plane.service.clone()));
        Ok(plane)
    }

    /// Starts QUIC thread `i`: a socket on the plane's address (the first one settles the port
    /// when the configured one is 0), and a thread with a single-threaded runtime that makes an
    /// endpoint on it and runs the endpoint with its connections and streams. The runtime is
    /// made, run and dropped on that thread alone.
    fn start_thread(
        &mut self,
        i: usize,
        shared: bool,
        config: &quinn::EndpointConfig,
        server: &quinn::ServerConfig,
    ) -> Result<(), FilesError> {
        let addr = self.local;
        let (socket, buffers) = transport::udp_socket(addr, self.buffers.requested, shared)
            .map_err(|e| FilesError::Bind(addr, e))?;
        let accepted = Arc::new(AtomicU64::new(0));
        let (made, endpoint) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("relay-files-{i}"))
            .spawn({
                let (config, server) = (config.clone(), server.clone());
                let (service, accepted) = (self.service.clone(), accepted.clone());
                move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(format!("relay-files-{i}-pool"))
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = made.send(Err(FilesError::Thread(e)));
                            return;
                        }
                    };
                    // The endpoint starts its driver on the runtime it is made in.
                    let endpoint = {
                        let _in = runtime.enter();
                        transport::endpoint_with(config, socket, Some(server))
                    };
                    let endpoint = match endpoint {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = made.send(Err(FilesError::Bind(addr, e)));
                            return;
                        }
                    };
                    let _ = made.send(Ok(endpoint.clone()));
                    runtime.block_on(async {
                        accept(endpoint.clone(), service, accepted).await;
                        // Closed: let the connections tell their peers, briefly.
                        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle())
                            .await;
                    });
                    // Dropped here, the runtime waits for requests still on its blocking pool,
                    // so that what they write (the audit log among it) is finished.
                    drop(runtime);
                }
            })
            .map_err(FilesError::Thread)?;
        let endpoint = match endpoint.recv() {
            Ok(Ok(endpoint)) => endpoint,
            Ok(Err(e)) => {
                join_all(vec![thread]);
                return Err(e);
            }
            Err(_) => {
                join_all(vec![thread]);
                return Err(FilesError::Thread(std::io::Error::other(
                    "the file plane's thread ended before its endpoint was made",
                )));
            }
        };
        if i == 0 {
            match endpoint.local_addr() {
                Ok(local) => self.local = local,
                Err(e) => {
                    endpoint.close(quinn::VarInt::from_u32(0), b"relay is stopping");
                    join_all(vec![thread]);
                    return Err(FilesError::Bind(addr, e));
                }
            }
            self.buffers = buffers;
        }
        self.endpoints.push(endpoint);
        self.accepted.push(accepted);
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(thread);
        Ok(())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn counters(&self) -> &Counters {
        self.service.counters()
    }

    /// Connections accepted so far by each QUIC thread, in thread order.
    pub fn accepted(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    pub fn store(&self) -> &ChunkStore {
        self.service.store()
    }

    /// The file service: its store and quotas, for what stores files without a client
    /// (recordings).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops accepting and closes connections; each thread lets its connections tell their peers
    /// (at most 2 s) and waits for its requests still running, and then ends.
    pub async fn shutdown(&self) {
        let threads = self.close();
        if tokio::task::spawn_blocking(move || join_all(threads))
            .await
            .is_err()
        {
            tracing::warn!("joining the file plane's threads failed");
        }
    }

    /// Closes the endpoints and hands over the threads not joined yet.
    fn close(&self) -> Vec<JoinHandle<()>> {
        for endpoint in &self.endpoints {
            endpoint.close(quinn::VarInt::from_u32(0), b"relay is stopping");
        }
        std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn accept(endpoint: quinn::Endpoint, service: Arc<Service>, accepted: Arc<AtomicU64>) {
    while let Some(incoming) = endpoint.accept().await {
        let (service, accepted) = (service.clone(), accepted.clone());
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    serve_connection(service, conn).await
                }
                Err(e) => tracing::debug!(error = %e, "file plane handshake failed"),
            }
        });
    }
}

async fn serve_connection(service: Arc<Service>, conn: quinn::Connection) {
    service
        .counters()
        .transfers_active
        .fetch_add(1, Ordering::Relaxed);
    let _active = Active(&service.counters().transfers_active);
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let service = service.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_stream(&service, send, recv).await {
                        tracing::debug!(error = %e, "file plane stream failed");
                    }
                });
            }
            Err(e) => {
                tracing::debug!(remote = %conn.remote_address(), reason = %e, "file plane connection closed");
                return;
            }
        }
    }
}

async fn serve_stream(
    service: &Arc<Service>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), transport::StreamError> {
    let Some((kind, body)) = transport::read_frame(&mut recv, 0, service.store().pool()).await?
    else {
        return Ok(());
    };
    let response = match Request::decode(kind, body) {
        Ok(req) => {
            let service = service.clone();
            tokio::task::spawn_blocking(move || service.handle(req))
                .await
                .unwrap_or_else(|e| Response::failed("internal", format!("request failed: {e}")))
        }
        Err(e) => Response::failed("bad_request", e.to_string()),
    };
    transport::write_frame(&mut send, response.encode()).await?;
    // quinn keeps delivering a finished stream's data after the handle is dropped.
    send.finish().map_err(transport::StreamError::Closed)
}

/// Runs `f` on the blocking pool; a panic there is an internal failure, not a crash.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Invalid(format!("store task failed: {e}"))))
}

/// Expires uploads and collects unreferenced chunks, once a minute.
async fn collect_garbage(service: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let store = service.store().clone();
        let grace = service.settings().gc_grace;
        match blocking(move || store.gc(unix_now(), grace)).await {
            Ok(r) if r.chunks > 0 || r.uploads_expired > 0 => tracing::info!(
                chunks = r.chunks,
                bytes = r.bytes,
                uploads_expired = r.uploads_expired,
                "file store collected"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "file store collection failed"),
        }
    }
}
