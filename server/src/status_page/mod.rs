//! The status page: `GET /` on the metrics listener serves one self-contained HTML page (no
//! external assets, no build step) that reads `GET /status.json` every two seconds. The JSON is
//! the same [`NodeStatus`] snapshot that `system.*` and `/metrics` render.

use apiary_runtime::NodeStatus;
use serde_json::{Value, json};

/// The page itself, compiled into the binary.
pub const PAGE: &str = include_str!("page.html");

/// A status snapshot as the page reads it.
pub fn json(st: &NodeStatus) -> Value {
    let cache = st.cache.map(|c| {
        let reads = c.hits + c.misses;
        json!({
            "hits": c.hits,
            "misses": c.misses,
            "hit_rate": (reads > 0).then(|| c.hits as f64 / reads as f64),
            "bytes": c.bytes,
            "entries": c.entries,
        })
    });
    json!({
        "node": {
            "id": st.node_id,
            "flight_url": st.flight_url,
            "version": st.version,
            "storage": st.storage,
            "started_at": st.started_at.to_rfc3339(),
            "uptime_s": st.uptime.as_secs_f64(),
            "cores": st.cores,
            "bees": st.bees,
            "memory_budget": st.memory_budget,
        },
        "temperature": {
            "value": st.temperature.value,
            "band": st.temperature.band.as_str(),
        },
        "load": {
            "bees": st.load.bees,
            "busy": st.load.busy,
            "memory_budget": st.load.memory_budget,
            "memory_reserved": st.load.memory_reserved,
            "queued": st.load.queued,
            "queue_capacity": st.load.queue_capacity,
        },
        "queries_total": st.queries_total,
        "distributed": {
            "fragments": st.distributed.fragments,
            "coordinated": st.distributed.coordinated,
            "inbox_polls": st.distributed.inbox_polls,
            "dispatch_p50_s": st.distributed.dispatch_p50,
            "dispatch_p95_s": st.distributed.dispatch_p95,
        },
        "cache": cache,
        "bees": st.bee_slots.iter().map(|b| json!({
            "id": b.id,
            "busy": b.busy,
            "query_id": b.query_id,
            "memory_reserved": b.memory_reserved,
            "memory_budget": b.memory_budget,
        })).collect::<Vec<_>>(),
        "queries": st.queries.iter().map(|q| json!({
            "id": q.id,
            "user": q.user,
            "state": if q.queued { "queued" } else { "running" },
            "bee": q.bee,
            "elapsed_ms": q.elapsed.as_millis() as u64,
            "rows": q.rows,
            "sql": q.sql,
        })).collect::<Vec<_>>(),
        "swarm": st.swarm.iter().map(|n| json!({
            "node_id": n.heartbeat.node_id,
            "flight_url": n.heartbeat.flight_url,
            "state": n.state.as_str(),
            "band": n.heartbeat.band,
            "temperature": n.heartbeat.temperature,
            "bees": n.heartbeat.bees_total,
            "bees_busy": n.heartbeat.bees_busy,
            "age_ms": n.age.as_millis() as u64,
            "is_self": n.heartbeat.node_id == st.node_id,
        })).collect::<Vec<_>>(),
        "failures": st.failures.iter().map(|f| json!({
            "id": f.id,
            "user": f.user,
            "sql": f.sql,
            "error": f.error,
            "at": f.at.to_rfc3339(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_self_contained() {
        let page = super::PAGE;
        assert!(page.contains("status.json"));
        // No external assets: nothing is fetched but the status.
        for needle in ["src=\"http", "href=\"http", "@import", "<link"] {
            assert!(!page.contains(needle), "{needle}");
        }
        // Values are set as text, never as markup.
        assert!(!page.contains("innerHTML"));
    }
}
