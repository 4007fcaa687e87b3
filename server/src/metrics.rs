//! The node's HTTP listener (`--metrics-listen`): Prometheus `/metrics`, `/healthz`, and the
//! status page (`/` and `/status.json`) — all of them render the same [`NodeStatus`] snapshot
//! the `system.*` tables do.

use std::fmt::Write as _;
use std::sync::Arc;

use apiary_runtime::executor::AbortOnDrop;
use apiary_runtime::swarm::NodeState;
use apiary_runtime::{NodeStatus, StatusSource};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::info;

type Source = Arc<dyn StatusSource>;

use crate::limit::Drain;

/// The Prometheus text exposition of a status snapshot.
pub fn render(st: &NodeStatus) -> String {
    let mut out = String::new();
    let mut metric = |kind: &str, name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let load = &st.load;
    metric(
        "gauge",
        "apiary_bees",
        "Bees of this node.",
        load.bees as f64,
    );
    metric(
        "gauge",
        "apiary_bees_busy",
        "Bees running a query.",
        load.busy as f64,
    );
    metric(
        "gauge",
        "apiary_memory_budget_bytes",
        "Memory budget of the node.",
        load.memory_budget as f64,
    );
    metric(
        "gauge",
        "apiary_memory_reserved_bytes",
        "Memory reserved by running queries.",
        load.memory_reserved as f64,
    );
    metric(
        "gauge",
        "apiary_queue_capacity",
        "Queries that may wait for a bee.",
        load.queue_capacity as f64,
    );
    metric(
        "gauge",
        "apiary_queue_depth",
        "Queries waiting for a bee.",
        load.queued as f64,
    );
    metric(
        "gauge",
        "apiary_temperature",
        "Colony temperature in [0, 1].",
        st.temperature.value,
    );
    metric(
        "gauge",
        "apiary_uptime_seconds",
        "Seconds since the node started.",
        st.uptime.as_secs_f64(),
    );
    metric(
        "counter",
        "apiary_queries_total",
        "Queries and statements started.",
        st.queries_total as f64,
    );
    metric(
        "counter",
        "apiary_plans_reused_total",
        "DoGets that ran the plan GetFlightInfo made on this node (one planning per query).",
        st.plans.reused as f64,
    );
    metric(
        "counter",
        "apiary_plans_replanned_total",
        "DoGets of a ticket whose plan was not kept here (another node, expired, redeemed again).",
        st.plans.missed as f64,
    );
    let d = &st.distributed;
    metric(
        "counter",
        "apiary_inbox_polls_total",
        "LIST requests on this node's fragment inbox.",
        d.inbox_polls as f64,
    );
    metric(
        "counter",
        "apiary_fragments_executed_total",
        "Fragments of distributed queries this node executed.",
        d.fragments as f64,
    );
    metric(
        "counter",
        "apiary_fragment_output_bytes_total",
        "Bytes of output objects this node's fragments wrote to storage.",
        d.fragment_output_bytes as f64,
    );
    metric(
        "counter",
        "apiary_shuffle_output_bytes_total",
        "Bytes of hash-partitioned (shuffle) output this node's fragments wrote to storage.",
        d.shuffle_output_bytes as f64,
    );
    metric(
        "counter",
        "apiary_result_shares_served_total",
        "Shares of results this node served as one endpoint of several.",
        d.shares_served as f64,
    );
    metric(
        "counter",
        "apiary_fragments_stolen_total",
        "Fragments this node, as coordinator, ran instead of a node that had not claimed them.",
        d.stolen as f64,
    );
    metric(
        "counter",
        "apiary_storage_event_wakes_total",
        "Wakes of the inbox worker or a query's monitor by a change seen in a watched local root.",
        d.storage_wakes as f64,
    );
    metric(
        "counter",
        "apiary_queries_coordinated_total",
        "Distributed queries this node coordinated.",
        d.coordinated as f64,
    );
    if let Some(c) = &st.cache {
        metric(
            "counter",
            "apiary_cache_hits_total",
            "Cell reads served from the local cache.",
            c.hits as f64,
        );
        metric(
            "counter",
            "apiary_cache_misses_total",
            "Cell reads fetched from object storage.",
            c.misses as f64,
        );
        metric(
            "gauge",
            "apiary_cache_bytes",
            "Bytes in the local cell cache.",
            c.bytes as f64,
        );
        metric(
            "gauge",
            "apiary_cache_entries",
            "Cells in the local cell cache.",
            c.entries as f64,
        );
    }
    let f = &st.footers;
    metric(
        "counter",
        "apiary_metadata_cache_hits_total",
        "Parquet footers served decoded from the node's metadata cache.",
        f.hits as f64,
    );
    metric(
        "counter",
        "apiary_metadata_cache_misses_total",
        "Parquet footers read and decoded from the cell.",
        f.misses as f64,
    );
    metric(
        "gauge",
        "apiary_metadata_cache_bytes",
        "Bytes of decoded Parquet footers in the metadata cache.",
        f.bytes as f64,
    );
    metric(
        "gauge",
        "apiary_metadata_cache_entries",
        "Cells whose decoded footer is in the metadata cache.",
        f.entries as f64,
    );
    let _ = writeln!(
        out,
        "# HELP apiary_temperature_band Current band (1 for the active one).\n# TYPE apiary_temperature_band gauge"
    );
    for band in ["cold", "ideal", "warm", "hot", "critical"] {
        let v = if band == st.temperature.band.as_str() {
            1
        } else {
            0
        };
        let _ = writeln!(out, "apiary_temperature_band{{band=\"{band}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP apiary_fragment_dispatch_seconds Posting to claiming of recent fragments.\n# TYPE apiary_fragment_dispatch_seconds summary\napiary_fragment_dispatch_seconds{{quantile=\"0.5\"}} {}\napiary_fragment_dispatch_seconds{{quantile=\"0.95\"}} {}\napiary_fragment_dispatch_seconds_count {}",
        d.dispatch_p50, d.dispatch_p95, d.dispatch_count
    );
    let _ = writeln!(
        out,
        "# HELP apiary_swarm_nodes Nodes of the swarm by state, as this node sees it.\n# TYPE apiary_swarm_nodes gauge"
    );
    for state in [NodeState::Alive, NodeState::Suspect, NodeState::Dead] {
        let n = st.swarm.iter().filter(|v| v.state == state).count();
        let _ = writeln!(
            out,
            "apiary_swarm_nodes{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }
    out
}

async fn metrics(State(source): State<Source>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&source.status()),
    )
}

/// 200 while the node takes work; 503 once it drains for a shutdown, so that a load balancer
/// or a readiness probe stops sending it clients.
async fn healthz(source: Source, drain: Arc<Drain>) -> impl IntoResponse {
    let st = source.status();
    let (code, status) = match drain.is_draining() {
        false => (StatusCode::OK, "ok"),
        true => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
    };
    let body = serde_json::json!({
        "status": status,
        "node_id": st.node_id,
        "temperature": st.temperature.value,
        "band": st.temperature.band.as_str(),
        "uptime_s": st.uptime.as_secs_f64(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(crate::status_page::PAGE),
    )
}

async fn status_json(State(source): State<Source>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        crate::status_page::json(&source.status()).to_string(),
    )
}

/// On a loopback listener, only requests that name a loopback host. A page from another site
/// can reach it through DNS rebinding (its own name, resolved to 127.0.0.1): the request then
/// names that site's host, and the status page shows the SQL that is running.
async fn loopback_host_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or(""));
    match host.is_none_or(loopback_host) {
        true => next.run(request).await,
        false => (
            StatusCode::MISDIRECTED_REQUEST,
            "this listener answers requests for localhost only\n",
        )
            .into_response(),
    }
}

/// Whether a `Host` header (`name[:port]`, `[v6][:port]`) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(v6, _)| v6),
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Serve metrics until the returned handle is dropped.
pub async fn serve(
    addr: &str,
    source: Source,
    drain: Arc<Drain>,
) -> anyhow::Result<AbortOnDrop<()>> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!("metrics on http://{local}/metrics (status page on http://{local}/)");
    let app = Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .route("/healthz", {
            let source = source.clone();
            get(move || healthz(source.clone(), drain.clone()))
        })
        .with_state(source);
    let app = match local.ip().is_loopback() {
        true => app.layer(axum::middleware::from_fn(loopback_host_only)),
        false => app,
    };
    Ok(apiary_runtime::executor::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server");
        }
    }))
}
