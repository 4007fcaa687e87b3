//! Casts of a timestamp to its date or time of day, kept out of DataFusion's interval analysis.
//!
//! DataFusion estimates a filter's selectivity by carrying the input's bounds through the
//! predicate, and carries a cast's bounds back by casting them: through `CAST(ts AS DATE) <
//! DATE '2024-01-02'` over a frame whose statistics bound `ts`, the estimate came out above 1
//! and failed its own assertion ("Selectivity is out of limit"), so the query answered
//! INTERNAL. [`TemporalCasts`], run once types are coerced, writes such a cast as the same
//! `TRY_CAST`, which the analysis does not follow (the filter takes its default selectivity) and
//! which answers the same: a timestamp always has a date and a time of day. A cast to the time
//! of day is not monotonic either, so a scan must not prune with it
//! (`apiary_storage::nan::prunable`).

use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, ExprSchema, Result as DfResult};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::{Cast, TryCast};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::optimizer::AnalyzerRule;

use super::checked::{any_expression, rewrite_expressions};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct TemporalCasts;

impl AnalyzerRule for TemporalCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let to_part = |e: &Expr| matches!(e, Expr::Cast(c) if is_part(c.field.data_type()));
        // Results keep the names their columns had (`CAST(t.ts AS Date32)`).
        rewrite_expressions(
            plan,
            |node| any_expression(node, to_part),
            |e, schema| Ok(untracked(e, schema)),
        )
    }

    fn name(&self) -> &str {
        "apiary_temporal_casts"
    }
}

/// A date or a time of day: a part of a timestamp.
fn is_part(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32 | DataType::Date64 | DataType::Time32(_) | DataType::Time64(_)
    )
}

fn untracked(e: Expr, schema: &DFSchema) -> Transformed<Expr> {
    let Expr::Cast(Cast { expr, field }) = e else {
        return Transformed::no(e);
    };
    let from = expr.get_type(schema as &dyn ExprSchema);
    if !(is_part(field.data_type()) && matches!(from, Ok(DataType::Timestamp(..)))) {
        return Transformed::no(Expr::Cast(Cast { expr, field }));
    }
    Transformed::yes(Expr::TryCast(TryCast { expr, field }))
}
