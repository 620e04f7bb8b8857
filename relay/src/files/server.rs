//! The file plane's QUIC shell: the quinn endpoint, one task per connection and per stream.
//!
//! One request per bidirectional stream, answered with one frame: the shell reads the frame,
//! hands the request to [`Service::handle`] on the blocking pool once (the checks, hashing,
//! fsync and SQLite all happen there), and writes the answer, so the network tasks keep
//! turning.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    #[error(transparent)]
    Store(StoreError),
}

/// The running file plane.
#[derive(Debug)]
pub struct FilePlane {
    endpoint: quinn::Endpoint,
    local: SocketAddr,
    service: Arc<Service>,
    pub buffers: Buffers,
}

/// Decrements a gauge when dropped.
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn server_config(secrets: &Secrets) -> Result<quinn::ServerConfig, FilesError> {
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
    server.transport_config(Arc::new(transport::transport()));
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
        let store = ChunkStore::open(data).map_err(FilesError::Store)?;
        store.remove_temp_files();
        let server = server_config(secrets)?;
        let (socket, buffers) =
            transport::udp_socket(settings.listen, settings.socket_buffer_bytes)
                .map_err(|e| FilesError::Bind(settings.listen, e))?;
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
                "file plane UDP buffers"
            );
        }
        let endpoint = transport::endpoint(socket, Some(server))
            .map_err(|e| FilesError::Bind(settings.listen, e))?;
        let local = endpoint
            .local_addr()
            .map_err(|e| FilesError::Bind(settings.listen, e))?;
        let service = Arc::new(Service::new(control, Arc::new(store), settings.clone()));
        tokio::spawn(accept(endpoint.clone(), service.clone()));
        tokio::spawn(collect_garbage(service.clone()));
        Ok(FilePlane {
            endpoint,
            local,
            service,
            buffers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn counters(&self) -> &Counters {
        self.service.counters()
    }

    pub fn store(&self) -> &ChunkStore {
        self.service.store()
    }

    /// The file service: its store and quotas, for what stores files without a client
    /// (recordings).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops accepting, closes connections and waits briefly for them to go.
    pub async fn shutdown(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"relay is stopping");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

async fn accept(endpoint: quinn::Endpoint, service: Arc<Service>) {
    while let Some(incoming) = endpoint.accept().await {
        let service = service.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(service, conn).await,
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
    let Some((kind, body)) = transport::read_frame(&mut recv, 0).await? else {
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
