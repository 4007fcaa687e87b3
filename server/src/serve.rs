//! `apiary serve`: the Flight SQL server process.

use std::collections::HashMap;

use anyhow::{Context, bail};
use apiary_storage::Storage;
use arrow_flight::flight_service_server::FlightServiceServer;
use bytes::Bytes;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::assemble;
use crate::auth::{AuthLayer, Authenticator, Signer};
use crate::config::{MemorySize, ServeArgs};
use crate::flight_sql::{ApiaryFlightService, FlightSql};

/// `name:hash` entries into a user map.
pub fn parse_users(entries: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut users = HashMap::new();
    for e in entries {
        let e = e.trim();
        if e.is_empty() {
            continue;
        }
        let (name, hash) = e
            .split_once(':')
            .with_context(|| "users are given as name:argon2-hash")?;
        if name.is_empty() {
            bail!("a user needs a name");
        }
        users.insert(name.to_string(), hash.to_string());
    }
    Ok(users)
}

/// The swarm's signing key: from config, or created once in storage and shared through it.
async fn signing_key(configured: Option<&str>, storage: &Storage) -> anyhow::Result<Vec<u8>> {
    if let Some(k) = configured {
        if k.len() < 16 {
            bail!("--token-secret must be at least 16 characters");
        }
        return Ok(k.as_bytes().to_vec());
    }
    let key = apiary_storage::paths::secret();
    let fresh: [u8; 32] = rand::random();
    let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    storage.put_if_absent(&key, Bytes::from(hex)).await?;
    let (body, _) = storage
        .get_opt(&key)
        .await?
        .context("signing key vanished from storage")?;
    Ok(body.to_vec())
}

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
    info!("shutting down");
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let flight = &args.flight;
    let users = parse_users(&flight.users)?;
    let listener = TcpListener::bind(&flight.listen)
        .await
        .with_context(|| format!("binding {}", flight.listen))?;
    let addr = listener.local_addr()?;
    if users.is_empty() && !addr.ip().is_loopback() && !flight.allow_anonymous {
        bail!(
            "refusing to serve {addr} without authentication: configure users (--user) or pass --allow-anonymous"
        );
    }
    if users.is_empty() && !addr.ip().is_loopback() {
        warn!(%addr, "serving without authentication");
    }
    let tls = flight.tls_cert.is_some();
    let advertise = match &flight.advertise_url {
        Some(u) => u.clone(),
        None => {
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            format!(
                "{}://{host}:{}",
                if tls { "grpc+tls" } else { "grpc" },
                addr.port()
            )
        }
    };
    let node = assemble::build(&args.storage, &args.node, advertise).await?;
    let key = signing_key(flight.token_secret.as_deref(), node.storage()).await?;
    let signer = Signer::new(&key);
    let auth = Authenticator::new(users, signer.clone(), flight.token_ttl)?;
    node.start();
    let metrics = match &flight.metrics_listen {
        Some(a) => Some(crate::metrics::serve(a, node.clone()).await?),
        None => None,
    };
    let service = ApiaryFlightService::new(FlightSql::new(node.clone(), signer, flight.ticket_ttl));
    let max = match flight.max_message_size {
        MemorySize::Bytes(b) => b.min(usize::MAX as u64) as usize,
        MemorySize::Percent(_) => bail!("--max-message-size takes a size, not a percentage"),
    };
    let grpc = FlightServiceServer::new(service)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let mut builder = Server::builder();
    let scheme = if let (Some(cert), Some(key)) = (&flight.tls_cert, &flight.tls_key) {
        let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &flight.tls_client_ca {
            let ca = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls)?;
        "grpc+tls"
    } else {
        "grpc"
    };
    info!(
        storage = %node.storage().display_url(),
        node_id = %node.id(),
        auth = auth.enabled(),
        "listening on {scheme}://{addr}"
    );
    let served = builder
        .layer(AuthLayer::new(auth))
        .add_service(grpc)
        .serve_with_incoming_shutdown(
            // Nagle off on every accepted connection: small replies (SELECT 1, GetFlightInfo)
            // otherwise wait for the client's delayed ACK, ~40 ms each.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal(),
        )
        .await;
    // Leave the swarm even if serving failed.
    node.shutdown().await;
    drop(metrics);
    served?;
    info!("stopped");
    Ok(())
}
