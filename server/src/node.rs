//! Assemble a node (storage, lakehouse, engine) from configuration.

use std::sync::Arc;

use anyhow::Context;
use apiary_runtime::{Engine, EngineConfig};
use apiary_storage::{Lakehouse, LedgerConfig, Storage, leafcutter_cell_size};
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

/// Number of bees: the flag, or one per core.
pub fn bee_count(node: &NodeArgs) -> usize {
    node.bees
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
}

/// Everything a node needs to run statements.
#[derive(Debug, Clone)]
pub struct Node {
    pub lakehouse: Lakehouse,
    pub engine: Engine,
}

pub async fn build(storage: &StorageArgs, node: &NodeArgs) -> anyhow::Result<Node> {
    let store = Storage::open(&storage.storage, &storage.s3_options())
        .with_context(|| format!("opening storage {}", storage.storage))?;
    let memory = node.memory.resolve(physical_memory());
    let bees = bee_count(node);
    let cell_target_bytes = match node.cell_target_size {
        Some(size) => size.resolve(memory),
        None => leafcutter_cell_size(memory / bees as u64),
    };
    let ledger = LedgerConfig {
        cell_target_bytes,
        ..Default::default()
    };
    let lakehouse = Lakehouse::open(store, ledger)
        .await
        .with_context(|| format!("opening storage {}", storage.storage))?;
    let runtime = Arc::new(RuntimeEnvBuilder::new().build()?);
    let engine = Engine::new(lakehouse.clone(), EngineConfig::default(), runtime);
    Ok(Node { lakehouse, engine })
}
