//! The file plane's client: what `relay files put|get|ls|rm` do over one QUIC connection. The
//! connection, its requests and the transfers run several at a time are here; uploads in
//! [`put`], downloads in [`get`].

mod get;
mod put;

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::transport::{self, ALPN, PARALLEL_CHUNKS};
use super::wire::{FileEntry, Request, Response};

pub use get::GetReport;
pub use put::{PutOptions, PutReport, STREAM_FROM};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The command was used wrongly (bad address, missing token, unreadable CA).
    #[error("{0}")]
    Usage(String),
    /// The connection could not be made or was lost.
    #[error("{0}")]
    Connection(String),
    /// The relay refused: `code` is the contract's (`quota`, `file_type`, ...).
    #[error("denied ({code}): {message}")]
    Refused { code: String, message: String },
    /// The relay could not do it (`not_found`, `corrupt`, ...).
    #[error("{code}: {message}")]
    Failed { code: String, message: String },
    #[error("{path}: {1}", path = .0.display())]
    Io(PathBuf, io::Error),
    /// The relay answered something that does not fit, or sent bytes that do not match.
    #[error("{0}")]
    Protocol(String),
    /// In a cluster, the file is stored by another node: at `addr`, with the certificate `cert`
    /// (DER), vouched for by the node that answered.
    #[error("the file is stored by the node at {addr}")]
    Elsewhere { addr: String, cert: Vec<u8> },
}

impl ClientError {
    /// The contract's code for `--json` error output.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Usage(_) => "usage",
            ClientError::Connection(_) => "connection",
            ClientError::Refused { code, .. } | ClientError::Failed { code, .. } => code,
            ClientError::Io(..) => "io",
            ClientError::Protocol(_) => "protocol",
            ClientError::Elsewhere { .. } => "elsewhere",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ClientError + '_ {
    move |e| ClientError::Io(path.to_path_buf(), e)
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Refused { code, message } => ClientError::Refused { code, message },
        Response::Failed { code, message } => ClientError::Failed { code, message },
        Response::Elsewhere { addr, cert } => ClientError::Elsewhere {
            addr,
            cert: cert.to_vec(),
        },
        other => ClientError::Protocol(format!("unexpected answer {other:?}")),
    }
}

/// Progress of a transfer, in logical bytes, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

/// A connection to a relay's file plane.
#[derive(Debug)]
pub struct Client {
    conn: quinn::Connection,
    /// Held so that the endpoint, whose socket the connection sends on, lives as the client does.
    _endpoint: quinn::Endpoint,
    token: String,
}

fn client_config(ca_der: Vec<u8>) -> Result<quinn::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der))
        .map_err(|e| ClientError::Usage(format!("the relay certificate is not usable: {e}")))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(transport::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Usage(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport::transport(transport::MAX_UDP_PAYLOAD)));
    Ok(config)
}

impl Client {
    /// Connects to `server` (`HOST:PORT`), trusting the certificate `ca_der`. Must run inside a
    /// Tokio runtime.
    pub async fn connect(
        server: &str,
        ca_der: Vec<u8>,
        token: String,
    ) -> Result<Client, ClientError> {
        let (host, _) = server
            .rsplit_once(':')
            .ok_or_else(|| ClientError::Usage(format!("--server {server:?} is not HOST:PORT")))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addr: SocketAddr = server
            .to_socket_addrs()
            .map_err(|e| ClientError::Usage(format!("--server {server}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::Usage(format!("--server {server}: no address")))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let (socket, _) = transport::udp_socket(bind, 8 << 20, false)
            .map_err(|e| ClientError::Connection(format!("cannot open a UDP socket: {e}")))?;
        let mut endpoint = transport::endpoint(socket, None)
            .map_err(|e| ClientError::Connection(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(client_config(ca_der)?);
        let conn = endpoint
            .connect(addr, &host)
            .map_err(|e| ClientError::Connection(format!("{server}: {e}")))?
            .await
            .map_err(|e| ClientError::Connection(format!("{server}: {e}")))?;
        Ok(Client {
            conn,
            _endpoint: endpoint,
            token,
        })
    }

    /// Closes the connection and waits (at most 2 s) until the close has been sent, not for
    /// QUIC's draining period after it.
    pub async fn close(self) {
        let before = self.conn.stats().udp_tx.datagrams;
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
        // The close must leave before the process ends, or the relay holds the connection until
        // its idle timeout. The draining period after it (three probe timeouts, 10 to 20 ms on
        // loopback after a transfer) only absorbs stray packets, so a client that is about to end
        // waits for its close to be sent (a closed connection sends nothing else), not for the
        // drain.
        let sent = async {
            while self.conn.stats().udp_tx.datagrams == before {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sent).await;
    }

    /// The connection as quinn counts it: the path (datagram size, losses, round trip) and the
    /// datagrams and bytes each way.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends one request on its own stream and reads the answer.
    pub async fn request(&self, req: &Request) -> Result<Response, ClientError> {
        request_on(&self.conn, req, 0).await
    }

    pub async fn list(&self) -> Result<Vec<FileEntry>, ClientError> {
        match self
            .request(&Request::List {
                token: self.token.clone(),
            })
            .await?
        {
            Response::Listing(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    pub async fn remove(&self, id: &str) -> Result<(), ClientError> {
        match self
            .request(&Request::Remove {
                token: self.token.clone(),
                file: id.into(),
            })
            .await?
        {
            Response::Removed { .. } => Ok(()),
            r => Err(unexpected(r)),
        }
    }
}

/// Sends `req` and reads the answer; a chunk in the answer is placed `phase` bytes past a block
/// boundary in memory ([`transport::read_frame`]).
async fn request_on(
    conn: &quinn::Connection,
    req: &Request,
    phase: usize,
) -> Result<Response, ClientError> {
    let lost =
        |e: &dyn fmt::Display| ClientError::Connection(format!("connection to the relay: {e}"));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    transport::write_frame(&mut send, req.encode())
        .await
        .map_err(|e| lost(&e))?;
    send.finish().map_err(|e| lost(&e))?;
    let (kind, body) = transport::read_frame(&mut recv, phase, None)
        .await
        .map_err(|e| lost(&e))?
        .ok_or_else(|| {
            ClientError::Connection("the relay closed the stream without an answer".into())
        })?;
    Response::decode(kind, body).map_err(|e| ClientError::Protocol(format!("bad answer: {e}")))
}

/// Runs a chunk transfer for each item of `queue`, started by `start`, up to [`PARALLEL_CHUNKS`]
/// in flight, until the queue is closed and empty. A failure (a transfer's, or one put in the
/// queue by whoever fills it) closes the queue (whoever fills it hears so) and no new transfer
/// starts; the ones in flight finish, and the first failure is the result.
async fn in_parallel<T, F>(
    mut queue: mpsc::UnboundedReceiver<Result<T, ClientError>>,
    mut start: impl FnMut(T) -> F,
) -> Result<(), ClientError>
where
    F: Future<Output = Result<(), ClientError>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    let mut failure = None;
    let mut open = true;
    loop {
        let taking = open && failure.is_none() && tasks.len() < PARALLEL_CHUNKS;
        if !taking && tasks.is_empty() {
            break;
        }
        tokio::select! {
            item = queue.recv(), if taking => match item {
                Some(Ok(t)) => {
                    tasks.spawn(start(t));
                }
                Some(Err(e)) => {
                    failure.get_or_insert(e);
                    queue.close();
                }
                None => open = false,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let result = done
                    .map_err(|e| ClientError::Protocol(format!("chunk task failed: {e}")))
                    .and_then(|r| r);
                if let Err(e) = result {
                    failure.get_or_insert(e);
                    queue.close();
                }
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// A closed queue of `items`.
fn queue_of<T>(
    items: impl IntoIterator<Item = T>,
) -> mpsc::UnboundedReceiver<Result<T, ClientError>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for t in items {
        // The receiver is held right here.
        let _ = tx.send(Ok(t));
    }
    rx
}
