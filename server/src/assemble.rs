//! Assemble a node (storage, lakehouse, engine, bees, swarm) from configuration: the typed
//! runtime configuration is derived here, once, from the flags.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apiary_runtime::bees::BeeConfig;
use apiary_runtime::distributed::DistributionConfig;
use apiary_runtime::swarm::SwarmTiming;
use apiary_runtime::{Engine, EngineConfig, Node, NodeConfig};
use apiary_storage::{Lakehouse, LedgerConfig, cell_size_for_budget};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;

use crate::config::{NodeArgs, StorageArgs};

/// Physical memory of this machine in bytes (from /proc/meminfo; 4 GiB if unreadable).
pub fn physical_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Number of bees: the flag, or one per core.
pub fn bee_count(node: &NodeArgs) -> usize {
    node.bees.unwrap_or_else(cores).max(1)
}

async fn open_lakehouse(
    storage: &StorageArgs,
    node: &NodeArgs,
) -> anyhow::Result<(Lakehouse, u64)> {
    let store = storage.open()?;
    let memory = node.memory.resolve(physical_memory());
    let bees = bee_count(node);
    let cell_target_bytes = match node.cell_target_size {
        Some(size) => size.resolve(memory),
        None => cell_size_for_budget(memory / bees as u64),
    };
    let ledger = LedgerConfig {
        cell_target_bytes,
        pause_before_commit: node
            .faults
            .pause_before_commit_ms
            .map(Duration::from_millis),
        checkpoint_interval: node.checkpoint_interval.max(1),
        compression: node.cell_compression,
        metadata_cache_bytes: usize::try_from(node.metadata_cache_size.resolve(memory))
            .unwrap_or(usize::MAX),
        ..Default::default()
    };
    let lakehouse = Lakehouse::open(store, ledger)
        .await
        .with_context(|| format!("opening storage {}", storage.storage))?;
    Ok((lakehouse, memory))
}

/// An engine without the node around it (one-shot `apiary sql`).
pub async fn engine(storage: &StorageArgs, node: &NodeArgs) -> anyhow::Result<Engine> {
    let (lakehouse, _) = open_lakehouse(storage, node).await?;
    let runtime = Arc::new(RuntimeEnvBuilder::new().build()?);
    Ok(Engine::try_new(lakehouse, engine_config(node)?, runtime)?)
}

fn engine_config(node: &NodeArgs) -> anyhow::Result<EngineConfig> {
    let mut options = Vec::new();
    // Empty entries (`APIARY_DATAFUSION_OPTIONS=""`, a trailing `;`) name no option.
    for kv in node
        .datafusion_options
        .iter()
        .filter(|kv| !kv.trim().is_empty())
    {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--datafusion-option {kv:?}: expected key=value"))?;
        options.push((k.trim().to_string(), v.trim().to_string()));
    }
    let limits = &node.limits;
    let max_sql_bytes = limits.sql_bytes()?;
    Ok(EngineConfig {
        datafusion_options: options,
        limits: apiary_runtime::Limits {
            max_sql_bytes,
            max_sql_tokens: limits.max_sql_tokens,
            max_sql_depth: limits.max_sql_depth,
            max_sql_relations: limits.max_sql_relations,
            max_param_rows: limits.max_param_rows,
            max_columns: limits.max_columns,
        },
        vacuum_min_retention_hours: node.vacuum_min_retention_hours.max(0.0),
        ..Default::default()
    })
}

/// A full node; background work (heartbeats) starts with [`Node::start`].
pub async fn build(
    storage: &StorageArgs,
    node: &NodeArgs,
    advertise_url: String,
    swarm_key: &[u8],
) -> anyhow::Result<Arc<Node>> {
    let (lakehouse, memory) = open_lakehouse(storage, node).await?;
    let node_id = node
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    let node_id_for_cache = node_id.clone();
    let scratch_root = node
        .scratch_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("apiary-scratch"));
    let config = NodeConfig {
        node_id,
        advertise_url,
        bees: BeeConfig {
            bees: bee_count(node),
            memory_budget: memory,
            queue_depth: node.queue_depth,
            // 0s: no bound, as for the other timeouts (a year stands for none).
            query_timeout: match node.query_timeout.is_zero() {
                true => Duration::from_secs(365 * 86_400),
                false => node.query_timeout,
            },
            scratch_root,
            spill_limit: node.spill_limit()?,
        },
        engine: EngineConfig {
            target_partitions: bee_count(node),
            ..engine_config(node)?
        },
        swarm: SwarmTiming {
            interval: node.heartbeat_interval.max(Duration::from_millis(10)),
            suspect_after: node.suspect_after.max(1),
            dead_after: node.dead_after.max(node.suspect_after + 1),
            grace: node.dead_grace,
        },
        // A bee is one core: the CPU runtime has a thread per bee.
        cpu_threads: bee_count(node),
        distribution: DistributionConfig {
            min_bytes: node.distribute_min_bytes.resolve(memory),
            poll_min: node.poll_min,
            poll_max: node.poll_max.max(node.poll_min),
            claim_timeout: node.claim_timeout,
            steal_after: node.steal_after,
            awake_window: node.awake_window,
            trials: node.fragment_trials.max(1),
            orphan_ttl: node.orphan_ttl,
            share_results: node.share_results,
            storage_events: node.storage_events,
            fault_fragment_delay: node.faults.fragment_delay_ms.map(Duration::from_millis),
            ..Default::default()
        },
        cache: {
            let size = node.cache_size.resolve(memory);
            (size > 0).then(|| {
                let dir = node.cache_dir.clone().unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("apiary-cache-{node_id_for_cache}"))
                });
                (dir, size)
            })
        },
        shutdown_grace: Duration::from_secs(5),
        ingest_idle_timeout: node.ingest_idle_timeout,
        result_idle_timeout: node.result_idle_timeout,
        swarm_key: apiary_storage::format::SwarmKey::new(swarm_key),
        fault_clock_skew_secs: node.faults.clock_skew_secs.unwrap_or(0),
    };
    Ok(Node::new(lakehouse, config)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Command, parse_args};

    fn options_of(args: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
        let cli = parse_args(
            ["apiary", "serve", "--storage", "/tmp/x"]
                .iter()
                .chain(args),
        )?;
        let Command::Serve(serve) = cli.command else {
            anyhow::bail!("not serve");
        };
        Ok(engine_config(&serve.node)?.datafusion_options)
    }

    #[test]
    fn empty_datafusion_options_name_nothing_and_bad_ones_are_refused() {
        assert_eq!(options_of(&["--datafusion-option", ""]).unwrap(), vec![]);
        assert_eq!(
            options_of(&[
                "--datafusion-option",
                "datafusion.execution.batch_size=4096;"
            ])
            .unwrap(),
            vec![(
                "datafusion.execution.batch_size".to_string(),
                "4096".to_string()
            )]
        );
        assert!(options_of(&["--datafusion-option", "batch_size"]).is_err());
    }
}
