//! [`StageExec`]: where a leaf stage was, on the coordinator; streams its tasks' outputs.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

use super::coordinator::Dispatch;
use super::cut::Stage;

/// Placeholder for a leaf stage on the coordinator: partition `p` yields the outputs of the
/// tasks feeding `p`, as each completes.
pub(crate) struct StageExec {
    stage: u32,
    tasks: usize,
    dispatch: Arc<Dispatch>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for StageExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StageExec(stage={})", self.stage)
    }
}

impl StageExec {
    pub(crate) fn new(stage: &Stage, tasks: usize, dispatch: Arc<Dispatch>) -> Self {
        let schema = stage.leaf.schema();
        let eq: EquivalenceProperties = stage.leaf.equivalence_properties().clone();
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(stage.partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stage: stage.id,
            tasks,
            dispatch,
            schema,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for StageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StageExec: stage={}, tasks={}, nodes=[{}]",
            self.stage,
            self.tasks,
            self.dispatch.nodes().join(", ")
        )
    }
}

impl ExecutionPlan for StageExec {
    fn name(&self) -> &str {
        "StageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.dispatch
            .partition_stream(self.stage, partition, self.schema.clone(), context)
    }
}
