//! The read-only `system` hive: the node's status as SQL tables.
//!
//! | table                       | one row per                               |
//! |-----------------------------|-------------------------------------------|
//! | `system.runtime.node`       | this node                                  |
//! | `system.runtime.bees`       | bee                                        |
//! | `system.runtime.queries`    | running or queued query                    |
//! | `system.swarm.nodes`        | node of the swarm, as this node sees it    |
//! | `system.colony.temperature` | this node's temperature and its components |
//! | `system.lakehouse.history`  | commit of a frame (the latest 100 of each; read from the logs by the engine) |
//!
//! Every scan takes a fresh [`NodeStatus`] from the node (a [`StatusSource`]), so each query
//! sees the node as it is then; `/metrics` renders the same snapshot.

use std::sync::{Arc, OnceLock, Weak};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, Session,
    TableProvider,
};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use crate::engine::{Caller, Role, SystemCatalog};
use crate::status::{NodeStatus, StatusSource};

/// The boxes and tables of the `system` hive.
pub const SYSTEM_TABLES: &[(&str, &str)] = &[
    ("runtime", "node"),
    ("runtime", "bees"),
    ("runtime", "queries"),
    ("swarm", "nodes"),
    ("colony", "temperature"),
    ("lakehouse", "history"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Bees,
    Queries,
    SwarmNodes,
    Temperature,
}

impl Kind {
    fn of(b: &str, t: &str) -> Option<Kind> {
        Some(match (b, t) {
            ("runtime", "node") => Kind::Node,
            ("runtime", "bees") => Kind::Bees,
            ("runtime", "queries") => Kind::Queries,
            ("swarm", "nodes") => Kind::SwarmNodes,
            ("colony", "temperature") => Kind::Temperature,
            _ => return None,
        })
    }

    fn schema(&self) -> SchemaRef {
        use DataType::*;
        let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
        Arc::new(Schema::new(match self {
            Kind::Node => vec![
                f("node_id", Utf8, false),
                f("flight_url", Utf8, false),
                f("cores", Int64, false),
                f("bees", Int64, false),
                f("memory_budget", UInt64, false),
                f("bee_memory_budget", UInt64, false),
                f("storage", Utf8, false),
                f("version", Utf8, false),
                f("started_at", Utf8, false),
                f("uptime_s", Float64, false),
                f("queries_total", UInt64, false),
                f("plans_reused", UInt64, false),
                f("plans_replanned", UInt64, false),
                f("fragments_executed", UInt64, false),
                f("fragment_output_bytes", UInt64, false),
                f("shuffle_output_bytes", UInt64, false),
                f("queries_coordinated", UInt64, false),
                f("result_shares_served", UInt64, false),
                f("fragments_stolen", UInt64, false),
                f("storage_event_wakes", UInt64, false),
                f("cache_hits", UInt64, false),
                f("cache_misses", UInt64, false),
                f("cache_bytes", UInt64, false),
                f("metadata_cache_entries", UInt64, false),
                f("metadata_cache_bytes", UInt64, false),
                f("metadata_cache_hits", UInt64, false),
                f("metadata_cache_misses", UInt64, false),
            ],
            Kind::Bees => vec![
                f("bee_id", Int64, false),
                f("state", Utf8, false),
                f("query_id", Utf8, true),
                f("memory_reserved", UInt64, false),
                f("memory_budget", UInt64, false),
            ],
            Kind::Queries => vec![
                f("query_id", Utf8, false),
                f("user", Utf8, false),
                f("state", Utf8, false),
                f("bee_id", Int64, true),
                f("node_id", Utf8, false),
                f("started_at", Utf8, false),
                f("elapsed_ms", Int64, false),
                f("rows", UInt64, false),
                f("bytes", UInt64, false),
                f("sql", Utf8, false),
            ],
            Kind::SwarmNodes => vec![
                f("node_id", Utf8, false),
                f("flight_url", Utf8, false),
                f("state", Utf8, false),
                f("age_ms", Int64, false),
                f("seq", UInt64, false),
                f("bees", Int64, false),
                f("bees_busy", Int64, false),
                f("memory_budget", UInt64, false),
                f("memory_reserved", UInt64, false),
                f("queued", Int64, false),
                f("temperature", Float64, false),
                f("band", Utf8, false),
                f("version", Utf8, false),
                f("written_at", Utf8, false),
                f("is_self", Boolean, false),
            ],
            Kind::Temperature => vec![
                f("value", Float64, false),
                f("band", Utf8, false),
                f("busy", Float64, false),
                f("memory", Float64, false),
                f("queue", Float64, false),
                f("bees", Int64, false),
                f("bees_busy", Int64, false),
                f("memory_budget", UInt64, false),
                f("memory_reserved", UInt64, false),
                f("queue_capacity", Int64, false),
                f("queued", Int64, false),
            ],
        }))
    }
}

fn s(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}
fn so(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}
fn i(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}
fn io(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}
fn u(v: Vec<u64>) -> ArrayRef {
    Arc::new(UInt64Array::from(v))
}
fn f(v: Vec<f64>) -> ArrayRef {
    Arc::new(Float64Array::from(v))
}

fn render(kind: Kind, st: &NodeStatus, caller: Option<&Caller>) -> DfResult<RecordBatch> {
    let schema = kind.schema();
    let cols: Vec<ArrayRef> = match kind {
        Kind::Node => {
            let cache = st.cache.unwrap_or_default();
            vec![
                s(vec![st.node_id.clone()]),
                s(vec![st.flight_url.clone()]),
                i(vec![st.cores as i64]),
                i(vec![st.bees as i64]),
                u(vec![st.memory_budget]),
                u(vec![st.bee_memory_budget]),
                s(vec![st.storage.clone()]),
                s(vec![st.version.to_string()]),
                s(vec![st.started_at.to_rfc3339()]),
                f(vec![st.uptime.as_secs_f64()]),
                u(vec![st.queries_total]),
                u(vec![st.plans.reused]),
                u(vec![st.plans.missed]),
                u(vec![st.distributed.fragments]),
                u(vec![st.distributed.fragment_output_bytes]),
                u(vec![st.distributed.shuffle_output_bytes]),
                u(vec![st.distributed.coordinated]),
                u(vec![st.distributed.shares_served]),
                u(vec![st.distributed.stolen]),
                u(vec![st.distributed.storage_wakes]),
                u(vec![cache.hits]),
                u(vec![cache.misses]),
                u(vec![cache.bytes]),
                u(vec![st.footers.entries]),
                u(vec![st.footers.bytes]),
                u(vec![st.footers.hits]),
                u(vec![st.footers.misses]),
            ]
        }
        Kind::Bees => {
            let b = &st.bee_slots;
            vec![
                i(b.iter().map(|x| x.id as i64).collect()),
                s(b.iter()
                    .map(|x| if x.busy { "busy" } else { "idle" }.to_string())
                    .collect()),
                so(b.iter().map(|x| x.query_id.clone()).collect()),
                u(b.iter().map(|x| x.memory_reserved).collect()),
                u(b.iter().map(|x| x.memory_budget).collect()),
            ]
        }
        Kind::Queries => {
            // Other users' SQL is theirs: only an admin sees every query.
            let q: Vec<&crate::status::QueryStatus> = st
                .queries
                .iter()
                .filter(|q| match caller {
                    Some(c) if c.role != Role::Admin => q.user == c.user,
                    _ => true,
                })
                .collect();
            vec![
                s(q.iter().map(|x| x.id.clone()).collect()),
                s(q.iter().map(|x| x.user.clone()).collect()),
                s(q.iter()
                    .map(|x| if x.queued { "queued" } else { "running" }.to_string())
                    .collect()),
                io(q.iter().map(|x| x.bee.map(|b| b as i64)).collect()),
                s(q.iter().map(|_| st.node_id.clone()).collect()),
                s(q.iter().map(|x| x.started_at.to_rfc3339()).collect()),
                i(q.iter().map(|x| x.elapsed.as_millis() as i64).collect()),
                u(q.iter().map(|x| x.rows).collect()),
                u(q.iter().map(|x| x.bytes).collect()),
                s(q.iter().map(|x| x.sql.clone()).collect()),
            ]
        }
        Kind::SwarmNodes => {
            let n = &st.swarm;
            vec![
                s(n.iter().map(|x| x.heartbeat.node_id.clone()).collect()),
                s(n.iter().map(|x| x.heartbeat.flight_url.clone()).collect()),
                s(n.iter().map(|x| x.state.as_str().to_string()).collect()),
                i(n.iter().map(|x| x.age.as_millis() as i64).collect()),
                u(n.iter().map(|x| x.heartbeat.seq).collect()),
                i(n.iter().map(|x| x.heartbeat.bees_total as i64).collect()),
                i(n.iter().map(|x| x.heartbeat.bees_busy as i64).collect()),
                u(n.iter().map(|x| x.heartbeat.memory_budget).collect()),
                u(n.iter().map(|x| x.heartbeat.memory_reserved).collect()),
                i(n.iter().map(|x| x.heartbeat.queue_depth as i64).collect()),
                f(n.iter().map(|x| x.heartbeat.temperature).collect()),
                s(n.iter().map(|x| x.heartbeat.band.clone()).collect()),
                s(n.iter().map(|x| x.heartbeat.version.clone()).collect()),
                s(n.iter()
                    .map(|x| x.heartbeat.written_at.to_rfc3339())
                    .collect()),
                Arc::new(BooleanArray::from(
                    n.iter()
                        .map(|x| x.heartbeat.node_id == st.node_id)
                        .collect::<Vec<_>>(),
                )),
            ]
        }
        Kind::Temperature => {
            let (load, t) = (&st.load, &st.temperature);
            vec![
                f(vec![t.value]),
                s(vec![t.band.to_string()]),
                f(vec![t.busy]),
                f(vec![t.memory]),
                f(vec![t.queue]),
                i(vec![load.bees as i64]),
                i(vec![load.busy as i64]),
                u(vec![load.memory_budget]),
                u(vec![load.memory_reserved]),
                i(vec![load.queue_capacity as i64]),
                i(vec![load.queued as i64]),
            ]
        }
    };
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// One system table; scanning it snapshots the node's state.
#[derive(Debug)]
struct SystemTable {
    kind: Kind,
    source: Weak<dyn StatusSource>,
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.kind.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let source = self.source.upgrade().ok_or_else(|| {
            datafusion::error::DataFusionError::Execution("the node is shutting down".into())
        })?;
        let caller = state.config().get_extension::<Caller>();
        let batch = render(self.kind, &source.status(), caller.as_deref())?;
        MemorySourceConfig::try_new_exec(&[vec![batch]], self.kind.schema(), projection.cloned())
            .map(|e| e as Arc<dyn ExecutionPlan>)
    }
}

/// The `system` hive of a node.
#[derive(Debug)]
pub struct SystemTables {
    source: Weak<dyn StatusSource>,
    catalog: OnceLock<Arc<dyn CatalogProvider>>,
}

impl SystemTables {
    pub fn new(source: Weak<dyn StatusSource>) -> Self {
        Self {
            source,
            catalog: OnceLock::new(),
        }
    }

    /// Schema of a system table, for metadata listings.
    pub fn schema_of(box_name: &str, table: &str) -> Option<SchemaRef> {
        if (box_name, table) == ("lakehouse", "history") {
            return Some(crate::engine::history_schema());
        }
        Kind::of(box_name, table).map(|k| k.schema())
    }
}

impl SystemCatalog for SystemTables {
    fn catalog(&self) -> Arc<dyn CatalogProvider> {
        self.catalog
            .get_or_init(|| {
                let catalog = MemoryCatalogProvider::new();
                for (b, t) in SYSTEM_TABLES {
                    let schema = match catalog.schema(b) {
                        Some(s) => s,
                        None => {
                            let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                            catalog
                                .register_schema(b, s.clone())
                                .expect("register system box");
                            s
                        }
                    };
                    // Tables without a kind are the engine's (it registers them itself).
                    let Some(kind) = Kind::of(b, t) else {
                        continue;
                    };
                    schema
                        .register_table(
                            t.to_string(),
                            Arc::new(SystemTable {
                                kind,
                                source: self.source.clone(),
                            }),
                        )
                        .expect("register system table");
                }
                Arc::new(catalog)
            })
            .clone()
    }
}
