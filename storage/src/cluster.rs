//! Clustering a write: the rows of one write into a frame with cluster columns
//! (`CREATE TABLE … CLUSTER BY (cols)`) are sorted by those columns before they become cells, so
//! that each cell and each row group holds a narrow range of them. The statistics the Delta log
//! and the Parquet footers keep then let a filter on those columns skip whole cells and row
//! groups.
//!
//! The sort is DataFusion's own `SortExec` in the writer's task context: it reserves memory in
//! the bee's pool, at most [`sort_memory`] of it, and spills sorted runs to the bee's scratch
//! space when the write is bigger, then merges them, so a write of any size streams into cells.
//! The cap keeps a big ingest from holding all of a large bee's budget: memory the allocator got
//! for a sort stays with the process after the write.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::col;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

/// Most memory one clustered write sorts in before it spills: eight cells' worth, the same
/// share of a bee that the cell writer's own buffers are sized from.
pub(crate) fn sort_memory(cell_target_bytes: u64) -> usize {
    (cell_target_bytes.saturating_mul(8)).clamp(16 << 20, 1 << 30) as usize
}

/// `data` sorted by `columns` (ascending, nulls first), executed in `ctx` with at most
/// `memory` bytes of its pool.
pub(crate) fn sorted(
    data: SendableRecordBatchStream,
    columns: &[String],
    ctx: Arc<TaskContext>,
    memory: usize,
) -> DfResult<SendableRecordBatchStream> {
    let env = RuntimeEnvBuilder::from_runtime_env(ctx.runtime_env().as_ref())
        .with_memory_pool(Arc::new(Capped::new(ctx.memory_pool().clone(), memory)))
        .build_arc()?;
    // A sort needs the session's options and the runtime, no functions.
    let ctx = Arc::new(TaskContext::new(
        ctx.task_id(),
        ctx.session_id(),
        ctx.session_config().clone(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        env,
    ));
    let schema = data.schema();
    let exprs = columns
        .iter()
        .map(|c| Ok(PhysicalSortExpr::new_default(col(c, &schema)?)))
        .collect::<DfResult<Vec<_>>>()?;
    let Some(ordering) = LexOrdering::new(exprs) else {
        return Ok(data);
    };
    let source = Arc::new(StreamingTableExec::try_new(
        schema.clone(),
        vec![Arc::new(Once::new(schema, data))],
        None,
        Vec::<LexOrdering>::new(),
        false,
        None,
    )?);
    SortExec::new(ordering, source).execute(0, ctx)
}

/// A stream handed to DataFusion as a partition that can be executed once.
struct Once {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl Once {
    fn new(schema: SchemaRef, stream: SendableRecordBatchStream) -> Self {
        Self {
            schema,
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl fmt::Debug for Once {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Once").finish_non_exhaustive()
    }
}

impl PartitionStream for Once {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        match taken {
            Some(s) => s,
            None => Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    self.schema.clone(),
                    futures::stream::once(async {
                        Err(DataFusionError::Internal(
                            "a write's rows were read twice".into(),
                        ))
                    }),
                ),
            ),
        }
    }
}

/// A share of another pool: reservations count against both `cap` and the pool underneath.
#[derive(Debug)]
struct Capped {
    inner: Arc<dyn MemoryPool>,
    cap: usize,
    used: AtomicUsize,
}

impl Capped {
    fn new(inner: Arc<dyn MemoryPool>, cap: usize) -> Self {
        Self {
            inner,
            cap,
            used: AtomicUsize::new(0),
        }
    }
}

impl fmt::Display for Capped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} bytes of {}", self.cap, self.inner)
    }
}

impl MemoryPool for Capped {
    fn name(&self) -> &str {
        "apiary-capped"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::SeqCst);
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::SeqCst);
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        let cap = self.cap;
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                u.checked_add(additional).filter(|&n| n <= cap)
            })
            .map_err(|u| {
                DataFusionError::ResourcesExhausted(format!(
                    "a clustered write's sort may hold {cap} bytes; {u} are held and \
                     {additional} more were asked for"
                ))
            })?;
        if let Err(e) = self.inner.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    fn memory_limit(&self) -> MemoryLimit {
        match self.inner.memory_limit() {
            MemoryLimit::Finite(n) => MemoryLimit::Finite(n.min(self.cap)),
            _ => MemoryLimit::Finite(self.cap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::{GreedyMemoryPool, UnboundedMemoryPool};

    #[test]
    fn a_capped_pool_refuses_past_its_cap_and_past_the_pool_below() {
        let below: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let capped: Arc<dyn MemoryPool> = Arc::new(Capped::new(below.clone(), 1000));
        let r = MemoryConsumer::new("sort").register(&capped);
        r.try_grow(600).unwrap();
        assert!(r.try_grow(600).is_err(), "past the cap");
        assert_eq!((capped.reserved(), below.reserved()), (600, 600));
        r.shrink(200);
        r.try_grow(600).unwrap();
        assert_eq!((capped.reserved(), below.reserved()), (1000, 1000));
        drop(r);
        assert_eq!((capped.reserved(), below.reserved()), (0, 0));

        // The pool below may be the tighter one: its refusal leaves the cap's count as it was.
        let below: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(500));
        let capped: Arc<dyn MemoryPool> = Arc::new(Capped::new(below.clone(), 1000));
        let r = MemoryConsumer::new("sort").register(&capped);
        assert!(r.try_grow(600).is_err());
        assert_eq!(capped.reserved(), 0);
        r.try_grow(400).unwrap();
        assert!(matches!(capped.memory_limit(), MemoryLimit::Finite(500)));
    }
}
