//! Clustering a write: the rows of one write into a frame with cluster columns
//! (`CREATE TABLE … CLUSTER BY (cols)`) are sorted by those columns before they become cells, so
//! that each cell and each row group holds a narrow range of them. The statistics the Delta log
//! and the Parquet footers keep then let a filter on those columns skip whole cells and row
//! groups.
//!
//! The sort is DataFusion's own `SortExec` in the writer's task context: it reserves memory in
//! the bee's pool and spills sorted runs to the bee's scratch space when the write is bigger
//! than the bee's budget, then merges them, so a write of any size streams into cells.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::col;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

/// `data` sorted by `columns` (ascending, nulls first), executed in `ctx`.
pub(crate) fn sorted(
    data: SendableRecordBatchStream,
    columns: &[String],
    ctx: Arc<TaskContext>,
) -> DfResult<SendableRecordBatchStream> {
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
