//! Small join filters applied to rows.
//!
//! DataFusion hands a hash join's keys to the scan on its probe side as a dynamic filter. With
//! row-level filtering off (our default: turned on for every scan it lost overall, see
//! `bench/results/pushdown-filters.md`) the scan uses it for statistics pruning only and decodes
//! every row. This rule turns row filtering on for frame scans whose only predicate is such join
//! filters, or whose join filters pay there (see below: then the scan's own predicate reaches
//! the rows with them), and lets each filter reach the rows only while it is cheap and
//! selective: an `IN` list or bounds (a small build side, such as the 57 order keys of TPC-H
//! q18's `HAVING` subquery). A filter over more keys than that (more than 150 a partition: a
//! long list, up to [`LISTED_KEYS`], or beyond it a probe of the join's hash table) costs a
//! hash per row. Where it only does early what its own join does anyway (on that join's probe
//! side) it is read as `true` (TPC-H q08's `lineitem` lost 10–30 % to it).
//! Where it reaches a scan through the build side of another join below its own, or through an
//! aggregate, each row it drops is one row fewer in that join's or aggregate's hash table: there
//! it is tried on the first [`TRIAL_ROWS`] rows the scans read and kept if it kept at most
//! [`KEEP_MAX`] of them, else read as `true` from then on. (q18 at SF10: the 624 order keys of
//! its `HAVING` subquery keep 624 of 15 M `orders` rows, and the join with `lineitem` builds
//! from those instead of a 1.9 GB table of all of them. q20: 909 K `lineitem` rows went into
//! its aggregate by part and supplier, 433 do now.) The trial judges the rows it sees first,
//! so a table ordered by the join key can mislead it either way; that costs time, never rows:
//! the join itself still checks every row, and a filter only ever drops rows it would drop.
//!
//! A partitioned join's filter routes each row to its partition's list by a hash of its key
//! (`CASE hash(k) % n WHEN 0 THEN k IN (…) …`). For the scan, "k is in one of the lists" is
//! enough, so such a filter reaches the rows as one list of all the keys and the bounds that
//! hold them all, without a hash and a `CASE` per row (TPC-H q17's second `lineitem` scan:
//! 225 ms of filter evaluation for 6 M rows with the routing).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::ColumnarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, Column, DynamicFilterPhysicalExpr, InListExpr, Literal, lit,
};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{HashExpr, HashJoinExec, HashTableLookupExpr};

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct JoinFiltersOnRows;

impl PhysicalOptimizerRule for JoinFiltersOnRows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        with_rows_filtered(plan, &HashSet::new(), &HashSet::new())
    }

    fn name(&self) -> &str {
        "apiary_join_filters_on_rows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with row filtering on in its scans that [`rows_filtered`] takes.
///
/// `paying`: the join filters (by expression id) that reach `plan` through the build side of
/// a join below the join that made them, or through an aggregate, so that a row they drop in
/// a scan is a row fewer in that join's or aggregate's hash table. `open`: those made by joins
/// above that have not passed a build side or an aggregate yet: on their own join's probe side
/// they only do early what that join does anyway.
fn with_rows_filtered(
    plan: Arc<dyn ExecutionPlan>,
    paying: &HashSet<u64>,
    open: &HashSet<u64>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = rows_filtered(&plan, paying) {
        return Ok(scan);
    }
    let children = plan.children().into_iter().cloned();
    let all = || paying.union(open).copied().collect::<HashSet<u64>>();
    let children = if plan.is::<HashJoinExec>() {
        // A hash join's first input is its build side: the filters still open pay there. Its
        // own filters are open on its probe side.
        let on_build = all();
        let on_probe: HashSet<u64> = open
            .iter()
            .copied()
            .chain(
                plan.dynamic_expressions_produced()
                    .iter()
                    .filter_map(|f| f.expression_id()),
            )
            .collect();
        children
            .enumerate()
            .map(|(i, child)| match i {
                0 => with_rows_filtered(child, &on_build, &HashSet::new()),
                _ => with_rows_filtered(child, paying, &on_probe),
            })
            .collect::<DfResult<Vec<_>>>()?
    } else if plan.is::<AggregateExec>() {
        // Every row a filter drops below an aggregate is a row fewer in its hash table.
        let below = all();
        children
            .map(|child| with_rows_filtered(child, &below, &HashSet::new()))
            .collect::<DfResult<Vec<_>>>()?
    } else {
        children
            .map(|child| with_rows_filtered(child, paying, open))
            .collect::<DfResult<Vec<_>>>()?
    };
    replace_children_if_necessary(plan, children)
}

/// Whether `scan` (in `root`'s subtree) holds a join filter that pays on its rows (it reaches
/// the scan through an aggregate or another join's build side, see [`with_rows_filtered`]) and
/// that no join in `root`'s subtree makes: run elsewhere, the subtree would go without it.
pub(crate) fn awaits_paying_filter(
    root: &Arc<dyn ExecutionPlan>,
    scan: &Arc<dyn ExecutionPlan>,
) -> bool {
    let Some(predicate) = scan_predicate(scan) else {
        return false;
    };
    let mut awaited = HashSet::new();
    let _ = predicate.apply(|e| {
        if let Some(w) = e.downcast_ref::<WhileSmall>()
            && w.tries_probes
            && let Some(id) = w.filter.expression_id()
        {
            awaited.insert(id);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    awaited.difference(&filters_made(root)).next().is_some()
}

/// The ids of the join filters the joins in `root`'s subtree make.
pub(super) fn filters_made(root: &Arc<dyn ExecutionPlan>) -> HashSet<u64> {
    let mut made = HashSet::new();
    let _ = root.apply(|n| {
        made.extend(
            n.dynamic_expressions_produced()
                .iter()
                .filter_map(|f| f.expression_id()),
        );
        Ok(TreeNodeRecursion::Continue)
    });
    made
}

/// The predicate of a Parquet scan.
pub(super) fn scan_predicate(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn PhysicalExpr>> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    config
        .file_source()
        .downcast_ref::<ParquetSource>()?
        .filter()
}

/// `node` with row filtering on, when it is a Parquet scan whose predicate is join filters, or
/// holds a join filter in `paying` (as for [`with_rows_filtered`]) beside its own.
fn rows_filtered(
    node: &Arc<dyn ExecutionPlan>,
    paying: &HashSet<u64>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let parquet = config.file_source().downcast_ref::<ParquetSource>()?;
    if parquet.table_parquet_options().global.pushdown_filters {
        return None;
    }
    let predicate = parquet.filter()?;
    // (A predicate of `true` is one that `nan_pruning` emptied.)
    let (joins, fixed): (Vec<_>, Vec<_>) = split_conjunction(&predicate)
        .into_iter()
        .filter(|f| !is_true(f))
        .partition(|f| f.downcast_ref::<DynamicFilterPhysicalExpr>().is_some());
    let pays = |f: &Arc<dyn PhysicalExpr>| f.expression_id().is_some_and(|id| paying.contains(&id));
    // A scan's own predicate on rows lost overall (see the module's documentation): it goes to
    // the rows only beside a join filter that pays there.
    if joins.is_empty() || !(fixed.is_empty() || joins.iter().any(|f| pays(f))) {
        return None;
    }
    let schema = parquet.table_schema().table_schema().clone();
    let wrapped = conjunction(fixed.into_iter().cloned().chain(joins.into_iter().map(|f| {
        Arc::new(WhileSmall::new(f.clone(), schema.clone(), pays(f))) as Arc<dyn PhysicalExpr>
    })));
    let source = parquet
        .with_predicate(wrapped)
        .with_pushdown_filters(true)
        .with_reorder_filters(true);
    let config = FileScanConfigBuilder::from(config.clone())
        .with_source(Arc::new(source))
        .build();
    Some(DataSourceExec::from_data_source(config))
}

/// A join filter that reads as `true` whenever its current form probes (a hash table, or a long
/// list), unless it was tried on the rows and kept.
#[derive(Debug)]
struct WhileSmall {
    filter: Arc<dyn PhysicalExpr>,
    /// The scan's table schema, which the filter's columns index.
    schema: SchemaRef,
    /// The last form the join filter had and what it became: the scan evaluates the filter per
    /// batch, and the filter changes once, when the join's build side is complete. Shared by
    /// every copy of this wrapper, like the trial: TPC-H q17's second `lineitem` scan at SF10
    /// made 1,200 copies, and working the form out again for each cost 430 ms.
    memo: Arc<Mutex<Vec<Memo>>>,
    /// Whether a form that probes is tried on the rows at all: only where the filter's join is
    /// above a build side or an aggregate the rows feed (see [`with_rows_filtered`]).
    tries_probes: bool,
    /// How a form that probes fared on the rows: shared by every copy of this
    /// wrapper (each file a scan opens rewrites its predicate into a copy).
    trial: Arc<Mutex<Trial>>,
}

/// A join filter's generation and columns (in this copy of it), the form the scan sees, and
/// its form for rows when it probes.
type Memo = (
    u64,
    Vec<Arc<dyn PhysicalExpr>>,
    Arc<dyn PhysicalExpr>,
    Option<Arc<dyn PhysicalExpr>>,
);

/// A join filter's form for pruning, and its form that probes the hash table, if it has one.
type Forms = (Arc<dyn PhysicalExpr>, Option<Arc<dyn PhysicalExpr>>);

/// The forms a wrapper's copies keep at once: one per set of key columns (the scan's table
/// schema for pruning, each row filter's projection for rows).
const MEMO_FORMS: usize = 8;

/// Rows a filter that probes the join's hash table is evaluated on before it is judged.
const TRIAL_ROWS: u64 = 64 * 1024;

/// The share of the rows tried that a probing filter may keep and still be kept: above it,
/// hashing every row costs more than the rows it drops save (the join hashes them again).
const KEEP_MAX: f64 = 0.2;

/// A probing filter on trial: rows it saw and kept, then whether it stays.
#[derive(Debug, Default)]
struct Trial {
    seen: u64,
    kept: u64,
    verdict: Option<bool>,
}

impl Trial {
    /// Count a batch the filter was evaluated on; judge once enough rows were seen.
    fn count(&mut self, seen: usize, kept: usize) {
        if self.verdict.is_some() {
            return;
        }
        self.seen += seen as u64;
        self.kept += kept as u64;
        if self.seen >= TRIAL_ROWS {
            self.verdict = Some(self.kept as f64 <= KEEP_MAX * self.seen as f64);
        }
    }
}

impl PartialEq for WhileSmall {
    fn eq(&self, other: &Self) -> bool {
        self.filter.as_ref() == other.filter.as_ref()
    }
}

impl Eq for WhileSmall {}

impl std::hash::Hash for WhileSmall {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.filter.as_ref().hash(state)
    }
}

impl WhileSmall {
    fn new(filter: Arc<dyn PhysicalExpr>, schema: SchemaRef, tries_probes: bool) -> Self {
        Self {
            filter,
            schema,
            memo: Arc::default(),
            tries_probes,
            trial: Arc::default(),
        }
    }

    /// A copy over `filter` (the same join filter, rewritten) that shares this one's trial and
    /// memo.
    fn sharing(&self, filter: Arc<dyn PhysicalExpr>) -> Self {
        Self {
            trial: self.trial.clone(),
            memo: self.memo.clone(),
            ..Self::new(filter, self.schema.clone(), self.tries_probes)
        }
    }

    /// What the join filter means to the scan now: its current form without per-partition
    /// routing, or `true` when that form probes (for pruning, which cannot use a probe; rows
    /// see the probe through [`Self::on_rows`]).
    fn current(&self) -> DfResult<Arc<dyn PhysicalExpr>> {
        Ok(self.forms()?.0)
    }

    /// The filter on a batch of rows: a probing form while it is on trial or once it was kept,
    /// else [`Self::current`].
    fn on_rows(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let (current, probing) = self.forms()?;
        let Some(probing) = probing.filter(|_| self.tries_probes) else {
            return current.evaluate(batch);
        };
        let trial = || {
            self.trial
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let verdict = trial().verdict;
        match verdict {
            Some(false) => current.evaluate(batch),
            Some(true) => probing.evaluate(batch),
            None => {
                let out = probing.evaluate(batch)?;
                let kept = match &out {
                    ColumnarValue::Array(a) => a
                        .as_any()
                        .downcast_ref::<arrow::array::BooleanArray>()
                        .map_or(batch.num_rows(), |b| b.true_count()),
                    ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))) => 0,
                    ColumnarValue::Scalar(_) => batch.num_rows(),
                };
                trial().count(batch.num_rows(), kept);
                Ok(out)
            }
        }
    }

    /// The current form for pruning, and the form that probes, when the filter has one.
    fn forms(&self) -> DfResult<Forms> {
        // A join filter's form changes only with its generation; copies share the memo when
        // their columns are the same.
        let generation = self.filter.snapshot_generation();
        let mut memo = self
            .memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        memo.retain(|(of, ..)| *of == generation);
        if let Some((_, _, to, probing)) = memo
            .iter()
            .find(|(_, on, ..)| on.iter().eq(self.filter.children()))
        {
            return Ok((to.clone(), probing.clone()));
        }
        let filter = snapshot_physical_expr(self.filter.clone())?;
        let rows = Self::for_rows(filter.clone(), &self.schema)?;
        let (to, probing) = match probes(&filter)? {
            true => (lit(ScalarValue::Boolean(Some(true))), Some(rows)),
            false => (rows, None),
        };
        let columns = self.filter.children().into_iter().cloned().collect();
        if memo.len() >= MEMO_FORMS {
            memo.remove(0);
        }
        memo.push((generation, columns, to.clone(), probing.clone()));
        Ok((to, probing))
    }

    /// A form as the rows see it: without per-partition routing.
    fn for_rows(filter: Arc<dyn PhysicalExpr>, schema: &Schema) -> DfResult<Arc<dyn PhysicalExpr>> {
        filter
            .transform_up(|e| {
                Ok(match unrouted(&e, schema)? {
                    Some(one) => Transformed::yes(one),
                    None => Transformed::no(e),
                })
            })
            .data()
    }
}

/// Whether a join filter's form probes the join's hash table, or a set of more keys per
/// partition than DataFusion lists by default ([`SHORT_LIST`]): a hash per row either way.
fn probes(filter: &Arc<dyn PhysicalExpr>) -> DfResult<bool> {
    filter.exists(|e| {
        Ok(e.downcast_ref::<HashTableLookupExpr>().is_some()
            || e.downcast_ref::<InListExpr>()
                .is_some_and(|l| l.list().len() > SHORT_LIST))
    })
}

/// The keys per partition up to which a join filter's `IN` list reaches every scan's rows
/// (DataFusion's default `hash_join_inlist_pushdown_max_distinct_values`).
const SHORT_LIST: usize = 150;

/// The keys per partition up to which a join hands its filter on as an `IN` list, not as a
/// probe of its hash table. Over [`SHORT_LIST`] keys the list is tried like a probe, and it is
/// cheaper than one on the rows: TPC-H q17 at SF10 (2,040 part keys) spent 27–33 ns a row
/// hashing each `lineitem` row to its partition's table and probing it, and 5 ns a row on one
/// list of every partition's keys.
pub(super) const LISTED_KEYS: usize = 4096;

/// The bytes of build-side keys per partition up to which a join hands its filter on as an
/// `IN` list (DataFusion's default is 128 KiB). The list holds every build row's key, repeats
/// too: q17's 1,020 part keys per partition at SF10 come with 30 K rows, 245 KB.
pub(super) const LISTED_BYTES: usize = 1 << 20;

/// A partitioned join's routing `CASE hash(k) % n WHEN i THEN bounds_i AND k IN (list_i) …
/// ELSE false END` as `k >= min AND k <= max AND k IN (every list)`: true for every row some
/// branch keeps, and for a few more the join drops. `None` when `e` has another form (several
/// key columns, a partition whose build was cancelled).
fn unrouted(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
    let Some(case) = e.downcast_ref::<CaseExpr>() else {
        return Ok(None);
    };
    let routed = case.expr().is_some_and(|base| {
        base.downcast_ref::<BinaryExpr>().is_some_and(|b| {
            *b.op() == Operator::Modulo && b.left().downcast_ref::<HashExpr>().is_some()
        })
    });
    if !routed || !case.else_expr().is_none_or(is_false) {
        return Ok(None);
    }
    let mut key: Option<&Arc<dyn PhysicalExpr>> = None;
    let mut values = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut bounds: Option<(ScalarValue, ScalarValue)> = None;
    let mut every_branch_bounded = true;
    for (_, then) in case.when_then_expr() {
        if is_false(then) {
            continue;
        }
        let Some((branch_bounds, list)) = bounded_list(then) else {
            return Ok(None);
        };
        if list.negated() || key.is_some_and(|k| k.as_ref() != list.expr().as_ref()) {
            return Ok(None);
        }
        key = Some(list.expr());
        for v in list.list() {
            let Some(v) = v.downcast_ref::<Literal>() else {
                return Ok(None);
            };
            if seen.insert(v.value().clone()) {
                values.push(v.value().clone());
            }
        }
        match (branch_bounds, bounds.take()) {
            (Some((lo, hi)), None) if every_branch_bounded => bounds = Some((lo, hi)),
            (Some((lo, hi)), Some((min, max))) => {
                let (Some(lo_cmp), Some(hi_cmp)) = (lo.partial_cmp(&min), hi.partial_cmp(&max))
                else {
                    return Ok(None);
                };
                bounds = Some((
                    if lo_cmp.is_lt() { lo } else { min },
                    if hi_cmp.is_gt() { hi } else { max },
                ));
            }
            _ => every_branch_bounded = false,
        }
    }
    let Some(key) = key else {
        return Ok(Some(lit(ScalarValue::Boolean(Some(false)))));
    };
    let schema = key_schema(key, &values[0].data_type(), schema);
    let list: Arc<dyn PhysicalExpr> = Arc::new(InListExpr::try_new(
        key.clone(),
        values.into_iter().map(lit).collect(),
        false,
        &schema,
    )?);
    Ok(Some(match bounds.filter(|_| every_branch_bounded) {
        Some((min, max)) => {
            let lo = Arc::new(BinaryExpr::new(key.clone(), Operator::GtEq, lit(min)));
            let hi = Arc::new(BinaryExpr::new(key.clone(), Operator::LtEq, lit(max)));
            let range = Arc::new(BinaryExpr::new(lo, Operator::And, hi));
            Arc::new(BinaryExpr::new(range, Operator::And, list))
        }
        None => list,
    }))
}

/// A schema in which `key` has the type of its list's values. A copy of the filter indexes the
/// columns of whatever batch it is evaluated on (the row filter's own projection), not the
/// scan's table schema, so the table schema may hold another column at the key's index.
fn key_schema(key: &Arc<dyn PhysicalExpr>, value_type: &DataType, table: &Schema) -> Schema {
    let Some(column) = key.downcast_ref::<Column>() else {
        return table.clone();
    };
    Schema::new(
        (0..=column.index())
            .map(|i| match i == column.index() {
                true => Field::new(column.name(), value_type.clone(), true),
                false => Field::new(format!("_{i}"), DataType::Null, true),
            })
            .collect::<Vec<_>>(),
    )
}

/// A branch `k >= lo AND k <= hi AND k IN (…)`, or a bare `k IN (…)`, as its bounds and list.
fn bounded_list(
    e: &Arc<dyn PhysicalExpr>,
) -> Option<(Option<(ScalarValue, ScalarValue)>, &InListExpr)> {
    if let Some(list) = e.downcast_ref::<InListExpr>() {
        return Some((None, list));
    }
    let and = e.downcast_ref::<BinaryExpr>()?;
    if *and.op() != Operator::And {
        return None;
    }
    let list = and.right().downcast_ref::<InListExpr>()?;
    let range = and.left().downcast_ref::<BinaryExpr>()?;
    if *range.op() != Operator::And {
        return None;
    }
    let bound = |e: &Arc<dyn PhysicalExpr>, op: Operator| -> Option<ScalarValue> {
        let b = e.downcast_ref::<BinaryExpr>()?;
        let on_key = *b.op() == op && b.left().as_ref() == list.expr().as_ref();
        on_key.then(|| {
            b.right()
                .downcast_ref::<Literal>()
                .map(|l| l.value().clone())
        })?
    };
    let lo = bound(range.left(), Operator::GtEq)?;
    let hi = bound(range.right(), Operator::LtEq)?;
    Some((Some((lo, hi)), list))
}

fn is_false(e: &Arc<dyn PhysicalExpr>) -> bool {
    e.downcast_ref::<Literal>()
        .is_some_and(|l| *l.value() == ScalarValue::Boolean(Some(false)))
}

impl fmt::Display for WhileSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WhileSmall({})", self.filter)
    }
}

impl PhysicalExpr for WhileSmall {
    fn return_field(&self, input_schema: &Schema) -> DfResult<FieldRef> {
        self.filter.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        self.on_rows(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.filter]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let (Some(child), true) = (children.pop(), children.is_empty()) else {
            return Err(datafusion::error::DataFusionError::Internal(
                "WhileSmall takes one child".into(),
            ));
        };
        // DataFusion snapshots a scan's predicate for each file and row group it opens, from
        // the leaves up: the join filter first, then this wrapper over that snapshot. The
        // wrapper's own snapshot is its form from the memo, which the join filter keys, so a
        // snapshot of the filter is set aside: over a snapshot, the memo would miss and work
        // the form out again for every file and row group.
        let snapshot = self
            .filter
            .downcast_ref::<DynamicFilterPhysicalExpr>()
            .is_some()
            && child.downcast_ref::<DynamicFilterPhysicalExpr>().is_none();
        let filter = if snapshot { self.filter.clone() } else { child };
        Ok(Arc::new(self.sharing(filter)))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.filter.fmt_sql(f)
    }

    fn snapshot(&self) -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
        self.current().map(Some)
    }

    fn try_to_proto(
        &self,
        ctx: &datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx<
            '_,
        >,
    ) -> DfResult<Option<datafusion_proto::protobuf::PhysicalExprNode>> {
        // Another node decodes the join filter itself.
        ctx.encode_child(&self.filter).map(Some)
    }
}

fn is_true(e: &Arc<dyn PhysicalExpr>) -> bool {
    e.downcast_ref::<Literal>()
        .is_some_and(|l| l.value() == &ScalarValue::Boolean(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, BooleanArray, Int64Array};
    use arrow::datatypes::{DataType, Field};
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_plan::joins::SeededRandomState;

    fn int(v: i64) -> ScalarValue {
        ScalarValue::Int64(Some(v))
    }

    /// A branch as DataFusion builds it for one partition: bounds, then the partition's keys.
    fn branch(k: &Arc<dyn PhysicalExpr>, keys: &[i64], schema: &Schema) -> Arc<dyn PhysicalExpr> {
        let lo = Arc::new(BinaryExpr::new(
            k.clone(),
            Operator::GtEq,
            lit(int(*keys.iter().min().unwrap())),
        ));
        let hi = Arc::new(BinaryExpr::new(
            k.clone(),
            Operator::LtEq,
            lit(int(*keys.iter().max().unwrap())),
        ));
        let list = InListExpr::try_new(
            k.clone(),
            keys.iter().map(|v| lit(int(*v))).collect(),
            false,
            schema,
        )
        .unwrap();
        let range = Arc::new(BinaryExpr::new(lo, Operator::And, hi));
        Arc::new(BinaryExpr::new(range, Operator::And, Arc::new(list)))
    }

    fn routed(
        k: &Arc<dyn PhysicalExpr>,
        branches: Vec<Arc<dyn PhysicalExpr>>,
        otherwise: bool,
    ) -> Arc<dyn PhysicalExpr> {
        let hash = Arc::new(HashExpr::new(
            vec![k.clone()],
            SeededRandomState::with_seed(0),
            "hash_repartition".into(),
        ));
        let n = branches.len() as u64;
        let modulo = Arc::new(BinaryExpr::new(
            hash,
            Operator::Modulo,
            lit(ScalarValue::UInt64(Some(n))),
        ));
        let when_then = branches
            .into_iter()
            .enumerate()
            .map(|(i, then)| (lit(ScalarValue::UInt64(Some(i as u64))), then))
            .collect();
        Arc::new(
            CaseExpr::try_new(
                Some(modulo),
                when_then,
                Some(lit(ScalarValue::Boolean(Some(otherwise)))),
            )
            .unwrap(),
        )
    }

    fn kept(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Vec<bool> {
        let out = e
            .evaluate(batch)
            .unwrap()
            .into_array(batch.num_rows())
            .unwrap();
        let out = out.as_any().downcast_ref::<BooleanArray>().unwrap();
        (0..out.len())
            .map(|i| out.is_valid(i) && out.value(i))
            .collect()
    }

    #[test]
    fn a_copy_for_the_row_filter_merges_its_lists_whatever_the_table_holds_at_its_index() {
        // The row filter's projection holds only the key, a string; the table's first column
        // is a number.
        let rows = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, true)]));
        let table = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]);
        let k = col("name", &rows).unwrap();
        let text = |v: &str| lit(ScalarValue::Utf8(Some(v.into())));
        let list = |keys: &[&str]| -> Arc<dyn PhysicalExpr> {
            Arc::new(
                InListExpr::try_new(
                    k.clone(),
                    keys.iter().map(|v| text(v)).collect(),
                    false,
                    &rows,
                )
                .unwrap(),
            )
        };
        let filter = routed(&k, vec![list(&["a", "c"]), list(&["b"])], false);
        let plain = WhileSmall::for_rows(filter.clone(), &table).unwrap();
        assert!(plain.downcast_ref::<InListExpr>().is_some(), "{plain}");
        let batch = RecordBatch::try_new(
            rows.clone(),
            vec![Arc::new(arrow::array::StringArray::from(vec![
                "a", "b", "d", "c",
            ]))],
        )
        .unwrap();
        assert_eq!(kept(&plain, &batch), vec![true, true, false, true]);
    }

    #[test]
    fn a_partitioned_join_filter_reaches_the_rows_without_its_routing() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let k = col("k", &schema).unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter(
                (0..200).map(Some).chain([None]),
            ))],
        )
        .unwrap();
        // Each partition lists the keys that hash to it, as the join's build sides would.
        let keys = [3_i64, 17, 40, 41, 99, 150, 151, 152, 153, 154, 155, 156];
        let part = |v: &i64, n: u64| {
            let one =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![*v]))])
                    .unwrap();
            let hash = HashExpr::new(
                vec![k.clone()],
                SeededRandomState::with_seed(0),
                "hash_repartition".into(),
            );
            let h = hash.evaluate(&one).unwrap().into_array(1).unwrap();
            let h = h
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .unwrap();
            h.value(0) % n
        };
        let of = |p: u64| {
            keys.iter()
                .copied()
                .filter(|v| part(v, 2) == p)
                .collect::<Vec<_>>()
        };
        let (zero, one) = (of(0), of(1));
        assert!(
            !zero.is_empty() && !one.is_empty(),
            "keys on both partitions"
        );
        let filter = routed(
            &k,
            vec![branch(&k, &zero, &schema), branch(&k, &one, &schema)],
            false,
        );

        let plain = WhileSmall::for_rows(filter.clone(), &schema).unwrap();
        assert!(
            !plain
                .exists(|e| Ok(e.downcast_ref::<HashExpr>().is_some()
                    || e.downcast_ref::<CaseExpr>().is_some()))
                .unwrap(),
            "routing left in {plain}"
        );
        // Every row the routed filter keeps, and here exactly those: each key is in its own
        // partition's list only.
        assert_eq!(kept(&plain, &batch), kept(&filter, &batch));
        assert_eq!(
            kept(&plain, &batch).iter().filter(|k| **k).count(),
            keys.len()
        );
        // Bounds that hold every list, for pruning.
        assert!(plain.to_string().contains(">= 3"), "{plain}");
        assert!(plain.to_string().contains("<= 156"), "{plain}");

        // An empty partition's branch is `false`: the other lists stand alone.
        let one_side = routed(
            &k,
            vec![
                lit(ScalarValue::Boolean(Some(false))),
                branch(&k, &one, &schema),
            ],
            false,
        );
        let plain = WhileSmall::for_rows(one_side.clone(), &schema).unwrap();
        assert_eq!(kept(&plain, &batch), kept(&one_side, &batch));

        // A cancelled build (`ELSE true`) keeps its routing: rows routed there must pass.
        let cancelled = routed(&k, vec![branch(&k, &zero, &schema)], true);
        let kept_form = WhileSmall::for_rows(cancelled.clone(), &schema).unwrap();
        assert!(kept_form.downcast_ref::<CaseExpr>().is_some());

        // A wrapper keeps its cached form until the filter changes.
        let small = WhileSmall::new(filter.clone(), schema.clone(), true);
        let first = small.current().unwrap();
        assert!(Arc::ptr_eq(&first, &small.current().unwrap()));
    }
}
