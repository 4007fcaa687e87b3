//! Client connections before they reach gRPC: at most `--max-connections` open at once, and
//! each must finish its TLS handshake and send the HTTP/2 preface within
//! `--handshake-timeout`.
//!
//! Without this, a socket that connected and said nothing (a port scanner, a half-open
//! connection, a client that never speaks) was held for ever, with its file descriptor: enough
//! of them and the node could not open a Parquet cell or accept a real client. Once a
//! connection is HTTP/2, the keepalive pings (`--keepalive`) find a peer that went silent.
//!
//! TLS is done here rather than by tonic so that one deadline covers the handshake and the
//! preface inside it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use apiary_runtime::executor::{self, AbortOnDrop};
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often a refused connection or a failed accept is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The server's TLS configuration from PEM files: its certificate chain and key, and when
/// `client_ca` is given, client certificates signed by it are required (mTLS).
pub(crate) fn tls_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the TLS certificate")?;
    if certs.is_empty() {
        bail!("the TLS certificate file holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow::anyhow!("the TLS key file holds no private key")
        }
        e => anyhow::anyhow!("reading the TLS key: {e}"),
    })?;
    // The provider is named, not taken from the process default, so this never panics for
    // want of one.
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots
                    .add(c.context("reading the client CA")?)
                    .context("the client CA")?;
            }
            if roots.is_empty() {
                bail!("the client CA file holds no certificate");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into())
                .build()
                .context("the client CA")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            anyhow::anyhow!("the TLS key does not go with the certificate")
        }
        e => anyhow::anyhow!("the TLS certificate and key: {e}"),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How connections are admitted.
pub(crate) struct Admission {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub(crate) max: usize,
    /// From accept to the HTTP/2 preface; `None`: no bound.
    pub(crate) handshake: Option<Duration>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// The accepted connections, ready for HTTP/2. Accepting stops when this is dropped.
pub(crate) struct Incoming {
    ready: mpsc::Receiver<Conn>,
    _accepting: AbortOnDrop<()>,
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|c| c.map(Ok))
    }
}

pub(crate) fn incoming(listener: TcpListener, admission: Admission) -> Incoming {
    let (tx, ready) = mpsc::channel(16);
    Incoming {
        ready,
        _accepting: executor::spawn(accept(listener, admission, tx)),
    }
}

async fn accept(listener: TcpListener, admission: Admission, ready: mpsc::Sender<Conn>) {
    let slots = Arc::new(Semaphore::new(admission.max));
    let tls = admission.tls.map(TlsAcceptor::from);
    let mut opening = FuturesUnordered::new();
    let mut refused = Sparse::default();
    let mut failed = Sparse::default();
    loop {
        tokio::select! {
            _ = ready.closed() => return,
            Some(conn) = opening.next(), if !opening.is_empty() => {
                if let Ok(Some(conn)) = conn
                    && ready.send(conn).await.is_err()
                {
                    return;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        // A task each: TLS handshakes (a signature each) run on every core,
                        // not one after another in this loop.
                        opening.push(executor::spawn(open(
                            tcp,
                            peer,
                            slot,
                            tls.clone(),
                            admission.handshake,
                        )));
                    }
                    Err(_) => {
                        drop(tcp);
                        if let Some(more) = refused.due() {
                            warn!(
                                %peer,
                                refused = more,
                                "refusing connections: {} are open (--max-connections)",
                                admission.max
                            );
                        }
                    }
                },
                Err(e) => {
                    if let Some(more) = failed.due() {
                        warn!(error = %e, failed = more, "accepting a connection");
                    }
                    // Out of file descriptors or memory: accepting again at once would spin.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
        }
    }
}

/// A connection until it is HTTP/2: the TLS handshake, then the preface, within the deadline.
async fn open(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
    deadline: Option<Duration>,
) -> Option<Conn> {
    // Nagle off: small replies (SELECT 1, GetFlightInfo) otherwise wait for the client's
    // delayed ACK, ~40 ms each.
    let _ = tcp.set_nodelay(true);
    let info = ConnectionInfo {
        tcp: TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(peer),
        },
        id: NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    };
    let handshake = async {
        let mut io = match tls {
            Some(tls) => Either::Right(tls.accept(tcp).await?),
            None => Either::Left(tcp),
        };
        let mut preface = [0u8; PREFACE.len()];
        io.read_exact(&mut preface).await?;
        if &preface != PREFACE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not HTTP/2 (a gRPC client speaks HTTP/2)",
            ));
        }
        Ok(io)
    };
    let opened = match deadline {
        Some(d) => tokio::time::timeout(d, handshake)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        None => handshake.await,
    };
    match opened {
        Ok(io) => Some(Conn {
            io,
            replayed: 0,
            info,
            _slot: slot,
        }),
        Err(e) => {
            debug!(%peer, error = %e, "closed a connection before HTTP/2");
            None
        }
    }
}

/// One client connection, HTTP/2 from its first byte: the preface read to admit it is
/// replayed to the server. Its slot frees when it closes.
pub(crate) struct Conn {
    io: Either<TcpStream, TlsStream<TcpStream>>,
    replayed: usize,
    info: ConnectionInfo,
    _slot: OwnedSemaphorePermit,
}

/// Numbers connections, so that each is told apart from a later one of the same address.
static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What every request of a connection carries about it: the addresses, and a number no other
/// connection of this process has. A client that reconnects from the same address and port (a
/// process that died, a NAT, an ephemeral port used again) is another connection, and does not
/// take over the session the earlier one chose.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) tcp: TcpConnectInfo,
    pub(crate) id: u64,
}

impl Connected for Conn {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replayed < PREFACE.len() {
            let rest = &PREFACE[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts events and says when one is due to be logged: the first, then at most one every
/// [`LOG_EVERY`], with how many happened since.
#[derive(Default)]
struct Sparse {
    last: Option<Instant>,
    since: u64,
}

impl Sparse {
    fn due(&mut self) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|l| l.elapsed() < LOG_EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}
