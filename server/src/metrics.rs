//! Prometheus `/metrics` and `/healthz` over HTTP (`--metrics-listen`): the same figures as the
//! `system.*` tables.

use std::fmt::Write as _;
use std::sync::Arc;

use apiary_runtime::Node;
use apiary_runtime::swarm::NodeState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::info;

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let load = node.bees().load();
    let t = node.temperature();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge("apiary_bees", "Bees of this node.", load.bees as f64);
    gauge(
        "apiary_bees_busy",
        "Bees running a query.",
        load.busy as f64,
    );
    gauge(
        "apiary_memory_budget_bytes",
        "Memory budget of the node.",
        load.memory_budget as f64,
    );
    gauge(
        "apiary_memory_reserved_bytes",
        "Memory reserved by running queries.",
        load.memory_reserved as f64,
    );
    gauge(
        "apiary_queue_capacity",
        "Queries that may wait for a bee.",
        load.queue_capacity as f64,
    );
    gauge(
        "apiary_queue_depth",
        "Queries waiting for a bee.",
        load.queued as f64,
    );
    gauge(
        "apiary_temperature",
        "Colony temperature in [0, 1].",
        t.value,
    );
    gauge(
        "apiary_uptime_seconds",
        "Seconds since the node started.",
        node.uptime().as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "# HELP apiary_queries_total Queries and statements started.\n# TYPE apiary_queries_total counter\napiary_queries_total {}",
        node.queries_total()
    );
    let _ = writeln!(
        out,
        "# HELP apiary_temperature_band Current band (1 for the active one).\n# TYPE apiary_temperature_band gauge"
    );
    for band in ["cold", "ideal", "warm", "hot", "critical"] {
        let v = if band == t.band.as_str() { 1 } else { 0 };
        let _ = writeln!(out, "apiary_temperature_band{{band=\"{band}\"}} {v}");
    }
    let m = node.metrics();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        &mut out,
        "apiary_inbox_polls_total",
        "LIST requests on this node's fragment inbox.",
        m.inbox_polls.load(std::sync::atomic::Ordering::Relaxed),
    );
    counter(
        &mut out,
        "apiary_fragments_executed_total",
        "Fragments of distributed queries this node executed.",
        m.fragments.load(std::sync::atomic::Ordering::Relaxed),
    );
    counter(
        &mut out,
        "apiary_queries_coordinated_total",
        "Distributed queries this node coordinated.",
        m.coordinated.load(std::sync::atomic::Ordering::Relaxed),
    );
    let (p50, p95, n) = m.dispatch_quantiles();
    let _ = writeln!(
        out,
        "# HELP apiary_fragment_dispatch_seconds Posting to claiming of recent fragments.\n# TYPE apiary_fragment_dispatch_seconds summary\napiary_fragment_dispatch_seconds{{quantile=\"0.5\"}} {p50}\napiary_fragment_dispatch_seconds{{quantile=\"0.95\"}} {p95}\napiary_fragment_dispatch_seconds_count {n}"
    );
    if let Some(c) = node.cache_stats() {
        counter(
            &mut out,
            "apiary_cache_hits_total",
            "Cell reads served from the local cache.",
            c.hits,
        );
        counter(
            &mut out,
            "apiary_cache_misses_total",
            "Cell reads fetched from object storage.",
            c.misses,
        );
        let _ = writeln!(
            out,
            "# HELP apiary_cache_bytes Bytes in the local cell cache.\n# TYPE apiary_cache_bytes gauge\napiary_cache_bytes {}",
            c.bytes
        );
        let _ = writeln!(
            out,
            "# HELP apiary_cache_entries Cells in the local cell cache.\n# TYPE apiary_cache_entries gauge\napiary_cache_entries {}",
            c.entries
        );
    }
    let nodes = node.world().nodes();
    let _ = writeln!(
        out,
        "# HELP apiary_swarm_nodes Nodes of the swarm by state, as this node sees it.\n# TYPE apiary_swarm_nodes gauge"
    );
    for state in [NodeState::Alive, NodeState::Suspect, NodeState::Dead] {
        let n = nodes.iter().filter(|v| v.state == state).count();
        let _ = writeln!(
            out,
            "apiary_swarm_nodes{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
}

async fn healthz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let t = node.temperature();
    let body = serde_json::json!({
        "status": "ok",
        "node_id": node.id(),
        "temperature": t.value,
        "band": t.band.as_str(),
        "uptime_s": node.uptime().as_secs_f64(),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Serve metrics until the process ends.
pub async fn serve(addr: &str, node: Arc<Node>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!("metrics on http://{local}/metrics");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(node);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server");
        }
    }))
}
