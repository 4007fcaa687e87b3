//! Planning that gives up once its statement is stopped.
//!
//! A statement's task is aborted at its next await point when its deadline passes or it is
//! cancelled, but planning awaits nothing: DataFusion's analyzer, optimizer and physical rules
//! run as one synchronous call. A statement whose plan took minutes (a 150 MB constant cloned
//! and printed by rule after rule; hundreds of joins) held its CPU-runtime thread that long
//! after its client had been told DEADLINE_EXCEEDED, and on a node with one bee every other
//! query waited behind it. Every rule is wrapped here: before it runs (on each node of the plan
//! where DataFusion drives the recursion), it asks whether the statement was stopped
//! ([`apiary_storage::commit_point::stopped`]) and, if so, fails at once. What one rule call does
//! is bounded by the statement's shape (`policy::check_shape`).

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{AnalyzerRule, OptimizerConfig, OptimizerRule};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// A rule of any kind that runs only while its statement goes on.
#[derive(Debug)]
pub(super) struct Stoppable<R: ?Sized>(Arc<R>);

fn go_on() -> DfResult<()> {
    match apiary_storage::commit_point::stopped() {
        true => Err(DataFusionError::Execution(
            "the statement was stopped (deadline or cancel) while it was planned".into(),
        )),
        false => Ok(()),
    }
}

/// `rules`, each run only while its statement goes on.
pub(super) fn analyzer(
    rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>>,
) -> Vec<Arc<dyn AnalyzerRule + Send + Sync>> {
    rules
        .into_iter()
        .map(|r| Arc::new(Stoppable(r)) as Arc<dyn AnalyzerRule + Send + Sync>)
        .collect()
}

/// `rules`, each run only while its statement goes on.
pub(super) fn optimizer(
    rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>,
) -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    rules
        .into_iter()
        .map(|r| Arc::new(Stoppable(r)) as Arc<dyn OptimizerRule + Send + Sync>)
        .collect()
}

/// `rules`, each run only while its statement goes on.
pub(super) fn physical(
    rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    rules
        .into_iter()
        .map(|r| Arc::new(Stoppable(r)) as Arc<dyn PhysicalOptimizerRule + Send + Sync>)
        .collect()
}

impl AnalyzerRule for Stoppable<dyn AnalyzerRule + Send + Sync> {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> DfResult<LogicalPlan> {
        go_on()?;
        self.0.analyze(plan, config)
    }

    fn name(&self) -> &str {
        self.0.name()
    }
}

impl OptimizerRule for Stoppable<dyn OptimizerRule + Send + Sync> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        self.0.apply_order()
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        go_on()?;
        self.0.rewrite(plan, config)
    }
}

impl PhysicalOptimizerRule for Stoppable<dyn PhysicalOptimizerRule + Send + Sync> {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        go_on()?;
        self.0.optimize(plan, config)
    }

    fn optimize_with_context(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        context: &dyn datafusion::physical_optimizer::PhysicalOptimizerContext,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        go_on()?;
        self.0.optimize_with_context(plan, context)
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn schema_check(&self) -> bool {
        self.0.schema_check()
    }
}
