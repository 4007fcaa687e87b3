//! `apiary serve`: the Flight SQL server process; and `apiary check-config`, which runs the same
//! checks without serving.
//!
//! Shutdown (SIGTERM or Ctrl-C) is bounded: the listener stops taking calls, the node hands back
//! the fragments it runs (as retryable failures, so their coordinators reassign them) and deletes
//! its heartbeat, calls in flight get `--shutdown-timeout` to finish, and the process exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use apiary_storage::Storage;
use arrow_flight::flight_service_server::FlightServiceServer;
use bytes::Bytes;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::assemble;
use crate::auth::{AuthLayer, Authenticator, Signer, parse_users};
use crate::config::{FlightArgs, MemorySize, ServeArgs};
use crate::flight_sql::{ApiaryFlightService, FlightSql};

/// Where the key comes from, for logs and `check-config`.
#[derive(Debug)]
enum KeySource {
    Flag,
    File(PathBuf),
    Bucket,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Flag => f.write_str("--token-secret"),
            KeySource::File(p) => write!(f, "{}", p.display()),
            KeySource::Bucket => f.write_str("the storage root (no users configured)"),
        }
    }
}

/// Read a key file, refusing one that others may read.
fn read_key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    let _ = meta;
    let key = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string();
    if key.len() < 16 {
        bail!("{} must hold at least 16 characters", path.display());
    }
    Ok(key.into_bytes())
}

/// Create a key file (0600) unless it exists.
fn ensure_key_file(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut f) => {
            use std::io::Write;
            let fresh: [u8; 32] = rand::random();
            f.write_all(apiary_storage::format::hex(&fresh).as_bytes())?;
            info!(path = %path.display(), "created a token key file");
            Ok(())
        }
        // Another process made it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn default_key_file() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context(
        "with users configured, give --token-secret or --token-secret-file (no HOME for the default key file)",
    )?;
    Ok(PathBuf::from(home).join(".config/apiary/token.key"))
}

/// The swarm's signing key. With users configured it never comes from the bucket (anyone who
/// can read the data could forge tokens): it is `--token-secret`, or a key file outside the
/// storage root. Without users, a key created once in the storage root is shared through it.
async fn signing_key(
    flight: &FlightArgs,
    auth_on: bool,
    storage: &Storage,
) -> anyhow::Result<(Vec<u8>, KeySource)> {
    if let Some(k) = &flight.token_secret {
        return Ok((k.as_bytes().to_vec(), KeySource::Flag));
    }
    if let Some(path) = &flight.token_secret_file {
        outside_root(path, storage)?;
        return Ok((read_key_file(path)?, KeySource::File(path.clone())));
    }
    if auth_on {
        let path = default_key_file()?;
        outside_root(&path, storage)?;
        ensure_key_file(&path)?;
        return Ok((read_key_file(&path)?, KeySource::File(path)));
    }
    let key = apiary_storage::paths::secret();
    let fresh: [u8; 32] = rand::random();
    let hex = apiary_storage::format::hex(&fresh);
    storage.put_if_absent(&key, Bytes::from(hex)).await?;
    let (body, _) = storage
        .get_opt(&key)
        .await?
        .context("signing key vanished from storage")?;
    Ok((body.to_vec(), KeySource::Bucket))
}

/// Refuse a key file inside a local storage root: any writer could read it there as an
/// external table, and sign tokens and tickets with it.
fn outside_root(key: &Path, storage: &Storage) -> anyhow::Result<()> {
    // The root is canonical already.
    match storage.local_dir() {
        Some(root) if resolved(key).starts_with(&root) => bail!(
            "the token key file {} is inside the storage root {}: writers could read it there; keep it outside",
            key.display(),
            root.display()
        ),
        _ => Ok(()),
    }
}

/// `p` made absolute, its nearest existing ancestor resolved (symbolic links) and the rest as
/// given (a key file is checked before it is created).
fn resolved(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut head = p.as_path();
    let mut tail = Vec::new();
    while !head.exists() {
        let (Some(parent), Some(name)) = (head.parent(), head.file_name()) else {
            break;
        };
        tail.push(name);
        head = parent;
    }
    let mut resolved = head.canonicalize().unwrap_or_else(|_| head.to_path_buf());
    resolved.extend(tail.iter().rev());
    resolved
}

/// The most `--max-connections` may be.
const MAX_CONNECTIONS: usize = 1 << 20;

/// What `serve` and `check-config` both check before touching the network or storage.
struct Checked {
    users: HashMap<String, (String, apiary_runtime::Role)>,
    max_message_size: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn check(args: &ServeArgs) -> anyhow::Result<Checked> {
    let flight = &args.flight;
    let users = parse_users(&flight.users)?;
    // Hashes are checked here, with a throwaway key: a bad one fails now, not at first login.
    Authenticator::new(
        users.clone(),
        Signer::new(b"check"),
        flight.token_ttl,
        flight.token_max_lifetime,
    )?;
    if let Some(k) = &flight.token_secret
        && k.len() < 16
    {
        bail!("--token-secret must be at least 16 characters");
    }
    let max_message_size = match flight.max_message_size {
        MemorySize::Bytes(b) => b.min(usize::MAX as u64) as usize,
        MemorySize::Percent(_) => bail!("--max-message-size takes a size, not a percentage"),
    };
    if max_message_size < 1 << 20 {
        bail!("--max-message-size must be at least 1MiB");
    }
    if flight.ticket_ttl.is_zero() {
        bail!("--ticket-ttl must be more than 0s: every ticket would have expired when issued");
    }
    let node = &args.node;
    if !(node.vacuum_min_retention_hours.is_finite() && node.vacuum_min_retention_hours >= 0.0) {
        bail!("--vacuum-min-retention-hours must be a number of hours, 0 or more");
    }
    if node.bees.is_some_and(|b| b > MAX_BEES) {
        bail!("--bees takes at most {MAX_BEES} (a bee is a thread with its own memory budget)");
    }
    if flight.max_calls == 0 || flight.max_calls_per_connection == 0 || flight.max_connections == 0
    {
        bail!("--max-calls, --max-calls-per-connection and --max-connections must be at least 1");
    }
    if flight.max_connections > MAX_CONNECTIONS {
        bail!("--max-connections takes at most {MAX_CONNECTIONS} (each holds a file descriptor)");
    }
    let tls = match (&flight.tls_cert, &flight.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &std::path::Path| -> anyhow::Result<Vec<u8>> {
                let body = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                if !String::from_utf8_lossy(&body).contains("-----BEGIN") {
                    bail!("{} is not a PEM file", p.display());
                }
                Ok(body)
            };
            let ca = match &flight.tls_client_ca {
                Some(ca) => Some(read(ca)?),
                None => None,
            };
            // Parsed now, so that check-config finds what serving would: a key that does not
            // match the certificate, a certificate given as the key, a CA that is no
            // certificate.
            let tls = crate::accept::tls_config(&read(cert)?, &read(key)?, ca.as_deref())?;
            Some(tls)
        }
        _ => None,
    };
    Ok(Checked {
        users,
        max_message_size,
        tls,
    })
}

fn refuse_anonymous(
    args: &ServeArgs,
    users: &HashMap<String, (String, apiary_runtime::Role)>,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    if users.is_empty() && !addr.ip().is_loopback() && !args.flight.allow_anonymous {
        bail!(
            "refusing to serve {addr} without authentication: configure users (--user) or pass --allow-anonymous"
        );
    }
    let tls = args.flight.tls_cert.is_some();
    if !users.is_empty() && !tls && !addr.ip().is_loopback() && !args.flight.insecure_auth {
        bail!(
            "refusing to serve {addr} with users but without TLS: passwords and tokens would cross the network in clear; give --tls-cert and --tls-key, or pass --insecure-auth when a proxy in front terminates TLS or the network is private"
        );
    }
    Ok(())
}

/// `apiary check-config`: everything `serve` would check, plus reaching the storage, without
/// serving or writing anything.
pub async fn check_config(args: &ServeArgs) -> anyhow::Result<()> {
    let checked = check(args)?;
    let flight = &args.flight;
    let addrs: Vec<SocketAddr> = match flight.listen.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => tokio::net::lookup_host(&flight.listen)
            .await
            .with_context(|| format!("--listen {}: not an address", flight.listen))?
            .collect(),
    };
    if addrs.is_empty() {
        bail!("--listen {}: resolves to no address", flight.listen);
    }
    for addr in addrs {
        refuse_anonymous(args, &checked.users, addr)?;
    }
    refuse_public_metrics(flight).await?;
    let storage = args.storage.open()?;
    storage
        .list(&apiary_storage::paths::hives_prefix())
        .await
        .with_context(|| format!("reaching storage {}", storage.display_url()))?;
    let secret = match (&flight.token_secret, &flight.token_secret_file) {
        (Some(_), _) => "from --token-secret".to_string(),
        (None, Some(path)) => {
            read_key_file(path)?;
            format!("from {}", path.display())
        }
        (None, None) if !checked.users.is_empty() => {
            let path = default_key_file()?;
            if path.exists() {
                read_key_file(&path)?;
                format!("from {}", path.display())
            } else {
                format!("will be created at {} at first start", path.display())
            }
        }
        (None, None) => match storage.get_opt(&apiary_storage::paths::secret()).await? {
            Some(_) => "shared through the storage root".to_string(),
            None => "will be created in the storage root at first start".to_string(),
        },
    };
    println!(
        "configuration OK\n  storage: {} (reachable)\n  users: {}\n  token key: {secret}\n  TLS: {}",
        storage.display_url(),
        if checked.users.is_empty() {
            "none (authentication off)".to_string()
        } else {
            checked.users.len().to_string()
        },
        if checked.tls.is_some() { "on" } else { "off" },
    );
    Ok(())
}

/// The status page shows running SQL: off loopback only when the operator asks for it.
async fn refuse_public_metrics(flight: &FlightArgs) -> anyhow::Result<()> {
    if let Some(m) = &flight.metrics_listen
        && !flight.metrics_public
        && !is_loopback(m).await
    {
        bail!(
            "--metrics-listen {m} is not a loopback address: the status page shows running SQL; pass --metrics-public to serve it anyway"
        );
    }
    Ok(())
}

/// Whether `addr` (host:port) names only loopback addresses.
async fn is_loopback(addr: &str) -> bool {
    match tokio::net::lookup_host(addr).await {
        Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
        Err(_) => false,
    }
}

/// Most bees a node runs (what other nodes believe of a heartbeat).
const MAX_BEES: usize = 256;

/// How long a draining node waits with no call admitted before it takes no new streams.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// Longest wait, after serving ended, for leaving the swarm.
const LAST_LEAVE: Duration = Duration::from_secs(5);

/// Longest wait, once the shutdown timeout has run out, for the statements still running to
/// be cut short, and again for their cleanup (the Kubernetes manifest's grace is 15 s longer
/// than the default timeout).
const CUT_SHORT_GRACE: Duration = Duration::from_secs(3);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let checked = check(&args)?;
    let flight = &args.flight;
    let listener = TcpListener::bind(&flight.listen)
        .await
        .with_context(|| format!("binding {}", flight.listen))?;
    let addr = listener.local_addr()?;
    refuse_anonymous(&args, &checked.users, addr)?;
    if checked.users.is_empty() && !addr.ip().is_loopback() {
        warn!(%addr, "serving without authentication");
    }
    let scheme = if checked.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let advertise = match &flight.advertise_url {
        Some(u) => u.clone(),
        None => {
            let host = match addr.ip() {
                ip if ip.is_unspecified() => {
                    warn!(%addr, "no --advertise-url: other nodes and clients are sent to 127.0.0.1; set it to an address they reach");
                    "127.0.0.1".to_string()
                }
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            format!("{scheme}://{host}:{}", addr.port())
        }
    };
    refuse_public_metrics(flight).await?;
    let storage = args.storage.open()?;
    let auth_on = !checked.users.is_empty();
    let (key, source) = signing_key(flight, auth_on, &storage).await?;
    info!(%source, "token and swarm key");
    let node = assemble::build(&args.storage, &args.node, advertise, &key).await?;
    let signer = Signer::new(&key);
    let auth = Authenticator::new(
        checked.users,
        signer.clone(),
        flight.token_ttl,
        flight.token_max_lifetime,
    )?;
    // Bounded concurrency: a call over either limit is shed at once (RESOURCE_EXHAUSTED), so
    // memory is bounded by the limits times the message size rather than by what clients send.
    let builder = Server::builder()
        .load_shed(true)
        .concurrency_limit_per_connection(flight.max_calls_per_connection)
        .http2_keepalive_interval(Some(flight.keepalive).filter(|k| !k.is_zero()))
        .http2_keepalive_timeout(Some(flight.keepalive_timeout));
    node.start();
    let drain = Arc::new(crate::limit::Drain::default());
    let metrics = match &flight.metrics_listen {
        Some(a) => Some(crate::metrics::serve(a, node.clone(), drain.clone()).await?),
        None => None,
    };
    let service = ApiaryFlightService::new(
        FlightSql::new(node.clone(), signer, flight.ticket_ttl)
            .with_max_cancel_endpoints(args.node.limits.max_cancel_endpoints)
            .with_max_param_rows(args.node.limits.max_param_rows)
            .with_statement_limits(
                args.node.limits.max_columns,
                args.node.limits.sql_bytes()?,
                args.node.limits.max_sql_relations,
            ),
    );
    let grpc = FlightServiceServer::new(service)
        .max_decoding_message_size(checked.max_message_size)
        .max_encoding_message_size(checked.max_message_size);
    info!(
        storage = %node.storage().display_url(),
        node_id = %node.id(),
        auth = auth.enabled(),
        "listening on {scheme}://{addr}"
    );
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let serve = builder
        // Authentication first: a call without valid credentials holds no call slot (a flood
        // of wrong passwords took all of them, and logged-in users were refused). Password
        // checks are bounded by themselves (two at a time, 16 per address, 256 in all).
        .layer(AuthLayer::new(auth))
        .layer(crate::limit::CallLimitLayer::new(
            flight.max_calls,
            drain.clone(),
        ))
        .add_service(grpc)
        .serve_with_incoming_shutdown(
            crate::accept::incoming(
                listener,
                crate::accept::Admission {
                    max: flight.max_connections,
                    handshake: Some(flight.handshake_timeout).filter(|t| !t.is_zero()),
                    tls: checked.tls,
                },
            ),
            {
                let drain = drain.clone();
                let timeout = flight.shutdown_timeout;
                async move {
                    shutdown_signal().await;
                    drain.begin();
                    let _ = stopping_tx.send(());
                    // New work is refused from here; results already promised are fetched
                    // until none has been for a moment. Then no new stream is taken.
                    let _ = tokio::time::timeout(timeout, drain.settled(DRAIN_QUIET)).await;
                }
            },
        );
    let timeout = flight.shutdown_timeout;
    let drain = async {
        if stopping.await.is_err() {
            return std::future::pending().await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        info!(
            ?timeout,
            "shutting down: taking no new work, handing back fragments, leaving the swarm"
        );
        // Bounded by the timeout too: a storage that hangs would hold the heartbeat's delete
        // for the store's own request timeout, past any supervisor's grace.
        if tokio::time::timeout_at(deadline, node.shutdown())
            .await
            .is_err()
        {
            warn!("leaving the swarm did not finish within the shutdown timeout");
        }
        tokio::time::sleep_until(deadline).await;
    };
    let served = tokio::select! {
        r = serve => r.map_err(anyhow::Error::from),
        _ = drain => {
            // Statements still running are cut short as a cancel would, so that what they
            // leave (a CTAS's reserved name) is undone before the process exits.
            let cancelled = node.stop_statements(CUT_SHORT_GRACE).await;
            warn!(
                ?timeout,
                cancelled, "calls still running after the shutdown timeout; exiting anyway"
            );
            return Ok(());
        }
    };
    // Leave the swarm even if serving failed, or ended while the drain's call was under way
    // (that call was dropped with the drain; this one finishes it, or does nothing after it),
    // for a few seconds at most. A drain that ran out of time has tried already.
    if tokio::time::timeout(LAST_LEAVE, node.shutdown())
        .await
        .is_err()
    {
        warn!("could not leave the swarm: other nodes will find this node dead");
    }
    drop(metrics);
    served?;
    info!("stopped");
    Ok(())
}
