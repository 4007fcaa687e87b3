//! Decimal `+`, `-` and `*` without a checked multiply per row.
//!
//! Arrow's kernels for `Decimal128` check every row for i128 overflow: a product is one checked
//! multiply, and a sum or difference of operands with different scales rescales each side with
//! a checked multiply first (`1 - l_discount` is `1 * 100 - l_discount`). A checked i128
//! multiply is a library call on x86-64, so TPC-H's `l_extendedprice * (1 - l_discount)` cost
//! about three of them per row: at SF10, q01 spent 1.7 s of its 8.5 CPU-seconds on that one
//! projection and 1.8 s more on the aggregate's `… * (1 + l_tax)`.
//!
//! [`FastDecimals`] puts [`DecimalArith`] in place of such an expression in projections and
//! aggregate arguments. It bounds each batch first: when the largest magnitudes of its operands
//! (after rescaling) cannot overflow an i128, every row is computed with plain wrapping
//! arithmetic, which then gives exactly Arrow's values, precision and scale. A batch whose bound
//! does not hold goes to Arrow's kernel, so it fails as it always did. The expression prints as the
//! plain `BinaryExpr` it stands for, in parentheses, and travels to other nodes as that.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, RecordBatch};
use arrow::compute::kernels::numeric;
use arrow::datatypes::{DECIMAL128_MAX_PRECISION, DECIMAL128_MAX_SCALE, DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::sort_properties::ExprProperties;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::BinaryExpr;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_expr_common::datum::apply;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion_proto::protobuf::PhysicalExprNode;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct FastDecimals;

impl PhysicalOptimizerRule for FastDecimals {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                return projection(p).map(|new| match new {
                    Some(new) => Transformed::yes(new),
                    None => Transformed::no(node.clone()),
                });
            }
            if let Some(a) = node.downcast_ref::<AggregateExec>() {
                return aggregate(a).map(|new| match new {
                    Some(new) => Transformed::yes(new),
                    None => Transformed::no(node.clone()),
                });
            }
            Ok(Transformed::no(node))
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_fast_decimals"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `p` with its decimal arithmetic replaced, if it has any.
fn projection(p: &ProjectionExec) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let schema = p.input().schema();
    let mut changed = false;
    let exprs = p
        .expr()
        .iter()
        .map(|e| {
            let new = rewrite(&e.expr, &schema)?;
            changed |= new.transformed;
            Ok(ProjectionExpr {
                expr: new.data,
                alias: e.alias.clone(),
            })
        })
        .collect::<DfResult<Vec<_>>>()?;
    if !changed {
        return Ok(None);
    }
    let new = ProjectionExec::try_new_with_schema_metadata(exprs, p.input().clone(), &p.schema())?;
    Ok(Some(Arc::new(new)))
}

/// `a` with the decimal arithmetic in its aggregates' arguments replaced, if it evaluates them
/// (a final aggregate merges states instead) and has any.
fn aggregate(a: &AggregateExec) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    if matches!(
        a.mode(),
        AggregateMode::Final | AggregateMode::FinalPartitioned
    ) {
        return Ok(None);
    }
    let schema = a.input_schema();
    let mut changed = false;
    let mut aggregates = Vec::with_capacity(a.aggr_expr().len());
    for f in a.aggr_expr() {
        let mut args = Vec::new();
        let mut own = false;
        for arg in f.expressions() {
            let new = rewrite(&arg, &schema)?;
            own |= new.transformed;
            args.push(new.data);
        }
        let order: Vec<_> = f.order_bys().iter().map(|s| s.expr.clone()).collect();
        match own.then(|| f.with_new_expressions(args, order)).flatten() {
            Some(new) => {
                changed = true;
                aggregates.push(Arc::new(new) as Arc<AggregateFunctionExpr>);
            }
            None => aggregates.push(f.clone()),
        }
    }
    Ok(changed.then(|| Arc::new(a.with_new_aggr_exprs(aggregates)) as Arc<dyn ExecutionPlan>))
}

/// `expr` with every decimal `+`, `-` and `*` in it computed by [`DecimalArith`].
fn rewrite(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> DfResult<Transformed<Arc<dyn PhysicalExpr>>> {
    Arc::clone(expr).transform_up(|e| {
        let Some(b) = e.downcast_ref::<BinaryExpr>() else {
            return Ok(Transformed::no(e));
        };
        let decimal = |x: &Arc<dyn PhysicalExpr>| {
            matches!(x.data_type(schema), Ok(DataType::Decimal128(_, _)))
        };
        let arithmetic = matches!(
            b.op(),
            Operator::Plus | Operator::Minus | Operator::Multiply
        );
        if !arithmetic || !decimal(b.left()) || !decimal(b.right()) {
            return Ok(Transformed::no(e));
        }
        let new = DecimalArith {
            op: *b.op(),
            left: b.left().clone(),
            right: b.right().clone(),
            plain: e.clone(),
        };
        Ok(Transformed::yes(Arc::new(new) as Arc<dyn PhysicalExpr>))
    })
}

/// `left op right` over two `Decimal128` operands, `op` being `+`, `-` or `*`; see the module's
/// documentation.
#[derive(Debug, Clone)]
pub(crate) struct DecimalArith {
    op: Operator,
    left: Arc<dyn PhysicalExpr>,
    right: Arc<dyn PhysicalExpr>,
    /// The `BinaryExpr` this computes: its type, display and wire form.
    plain: Arc<dyn PhysicalExpr>,
}

// Its plain form holds its operator and operands.
impl PartialEq for DecimalArith {
    fn eq(&self, other: &Self) -> bool {
        self.plain.as_ref() == other.plain.as_ref()
    }
}

impl Eq for DecimalArith {}

impl std::hash::Hash for DecimalArith {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.plain.hash(state)
    }
}

// In parentheses: a `BinaryExpr` above sets only its `BinaryExpr` operands in them by
// precedence, and `price * (1 - discount)` must not print as `price * 1 - discount`.
impl fmt::Display for DecimalArith {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({})", self.plain)
    }
}

impl PhysicalExpr for DecimalArith {
    fn data_type(&self, input_schema: &Schema) -> DfResult<DataType> {
        self.plain.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> DfResult<bool> {
        self.plain.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let l = self.left.evaluate(batch)?;
        let r = self.right.evaluate(batch)?;
        if let Some(array) = unchecked(self.op, &l, &r)? {
            return Ok(ColumnarValue::Array(array));
        }
        checked(self.op, &l, &r)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.left, &self.right]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let plain = Arc::clone(&self.plain).with_new_children(children.clone())?;
        let [left, right] = <[_; 2]>::try_from(children).map_err(|c| {
            datafusion::error::DataFusionError::Internal(format!(
                "decimal arithmetic has two operands, not {}",
                c.len()
            ))
        })?;
        Ok(Arc::new(Self {
            op: self.op,
            left,
            right,
            plain,
        }))
    }

    fn evaluate_bounds(&self, children: &[&Interval]) -> DfResult<Interval> {
        self.plain.evaluate_bounds(children)
    }

    fn get_properties(&self, children: &[ExprProperties]) -> DfResult<ExprProperties> {
        self.plain.get_properties(children)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.plain.fmt_sql(f)
    }

    fn try_to_proto(&self, ctx: &PhysicalExprEncodeCtx<'_>) -> DfResult<Option<PhysicalExprNode>> {
        ctx.encode_child(&self.plain).map(Some)
    }
}

/// `l op r` by Arrow's kernels, as `BinaryExpr` calls them (they check decimals either way).
fn checked(op: Operator, l: &ColumnarValue, r: &ColumnarValue) -> DfResult<ColumnarValue> {
    match op {
        Operator::Plus => apply(l, r, numeric::add_wrapping),
        Operator::Minus => apply(l, r, numeric::sub_wrapping),
        _ => apply(l, r, numeric::mul_wrapping),
    }
}

/// One operand of a batch: a column of values, or one value for every row.
enum Operand<'a> {
    Column(&'a Decimal128Array),
    Value(i128),
}

impl<'a> Operand<'a> {
    /// The operand and its precision and scale; `None` for a null value (Arrow's kernel then
    /// gives the nulls).
    fn of(v: &'a ColumnarValue) -> Option<(Self, u8, i8)> {
        match v {
            ColumnarValue::Array(a) => match a.data_type() {
                DataType::Decimal128(p, s) => Some((Self::Column(a.as_primitive()), *p, *s)),
                _ => None,
            },
            ColumnarValue::Scalar(ScalarValue::Decimal128(Some(x), p, s)) => {
                Some((Self::Value(*x), *p, *s))
            }
            ColumnarValue::Scalar(_) => None,
        }
    }

    /// The largest magnitude among its values (null slots included: a bound, not an answer).
    fn bound(&self) -> u128 {
        match self {
            Self::Column(a) => a
                .values()
                .iter()
                .fold(0u128, |m, x| m.max(x.unsigned_abs())),
            Self::Value(x) => x.unsigned_abs(),
        }
    }
}

/// `l op r` with wrapping arithmetic, when no row can overflow and at least one side is a
/// column; `None` sends the batch to Arrow's kernel. Precision and scale follow Arrow's rules
/// (`arrow_arith::numeric`), so the result is the array that kernel would make.
fn unchecked(op: Operator, l: &ColumnarValue, r: &ColumnarValue) -> DfResult<Option<ArrayRef>> {
    let (Some((l, p1, s1)), Some((r, p2, s2))) = (Operand::of(l), Operand::of(r)) else {
        return Ok(None);
    };
    if matches!((&l, &r), (Operand::Value(_), Operand::Value(_))) {
        return Ok(None);
    }
    let fits = |x: Option<u128>| x.is_some_and(|x| x <= i128::MAX as u128);
    let (array, precision, scale) = match op {
        Operator::Multiply => {
            let scale = s1.saturating_add(s2);
            if scale > DECIMAL128_MAX_SCALE || !fits(l.bound().checked_mul(r.bound())) {
                return Ok(None);
            }
            let precision = p1.saturating_add(p2 + 1).min(DECIMAL128_MAX_PRECISION);
            (combine(&l, &r, |x, y| x.wrapping_mul(y))?, precision, scale)
        }
        Operator::Plus | Operator::Minus => {
            let scale = s1.max(s2);
            let precision = (scale.saturating_add((p1 as i8 - s1).max(p2 as i8 - s2)) as u8)
                .saturating_add(1)
                .min(DECIMAL128_MAX_PRECISION);
            let factor = |s: i8| {
                u32::try_from(scale - s)
                    .ok()
                    .and_then(|k| 10i128.checked_pow(k))
            };
            let (Some(lm), Some(rm)) = (factor(s1), factor(s2)) else {
                return Ok(None);
            };
            let scaled = |o: &Operand, m: i128| o.bound().checked_mul(m as u128);
            let bound = scaled(&l, lm)
                .zip(scaled(&r, rm))
                .and_then(|(a, b)| a.checked_add(b));
            if !fits(bound) {
                return Ok(None);
            }
            let array = match (op, lm, rm) {
                (Operator::Plus, 1, 1) => combine(&l, &r, |x, y| x.wrapping_add(y))?,
                (Operator::Minus, 1, 1) => combine(&l, &r, |x, y| x.wrapping_sub(y))?,
                (Operator::Plus, _, _) => combine(&l, &r, |x, y| {
                    x.wrapping_mul(lm).wrapping_add(y.wrapping_mul(rm))
                })?,
                _ => combine(&l, &r, |x, y| {
                    x.wrapping_mul(lm).wrapping_sub(y.wrapping_mul(rm))
                })?,
            };
            (array, precision, scale)
        }
        _ => return Ok(None),
    };
    Ok(Some(Arc::new(
        array.with_precision_and_scale(precision, scale)?,
    )))
}

/// `f` over the rows of `l` and `r` (not both values); nulls are those of either column.
fn combine(l: &Operand, r: &Operand, f: impl Fn(i128, i128) -> i128) -> DfResult<Decimal128Array> {
    Ok(match (l, r) {
        (Operand::Column(a), Operand::Column(b)) => arrow::compute::binary(*a, *b, f)?,
        (Operand::Column(a), Operand::Value(y)) => a.unary(|x| f(x, *y)),
        (Operand::Value(x), Operand::Column(b)) => b.unary(|y| f(*x, y)),
        (Operand::Value(_), Operand::Value(_)) => {
            unreachable!("two values are left to Arrow's kernel")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::datatypes::Field;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn decimals(values: &[Option<i128>], p: u8, s: i8) -> ArrayRef {
        Arc::new(
            Decimal128Array::from(values.to_vec())
                .with_precision_and_scale(p, s)
                .unwrap(),
        )
    }

    #[test]
    fn every_row_is_what_arrows_kernel_gives() {
        let prices: Vec<Option<i128>> = (0..2000)
            .map(|i| (i % 7 != 3).then_some((i as i128 * 7919 % 10_000_000) - 4_000_000))
            .collect();
        let discounts: Vec<Option<i128>> = (0..2000)
            .map(|i| (i % 11 != 5).then_some(i as i128 % 11))
            .collect();
        let columns = [
            ColumnarValue::Array(decimals(&prices, 15, 2)),
            ColumnarValue::Array(decimals(&discounts, 15, 2)),
            ColumnarValue::Array(decimals(&discounts, 12, 0)),
            ColumnarValue::Array(decimals(&prices, 20, -2)),
        ];
        let values = [
            ColumnarValue::Scalar(ScalarValue::Decimal128(Some(1), 20, 0)),
            ColumnarValue::Scalar(ScalarValue::Decimal128(Some(-125), 5, 3)),
        ];
        let mut compared = 0;
        for op in [Operator::Plus, Operator::Minus, Operator::Multiply] {
            for l in columns.iter().chain(&values) {
                for r in columns.iter().chain(&values) {
                    let Some(got) = unchecked(op, l, r).unwrap() else {
                        continue;
                    };
                    let want = checked(op, l, r).unwrap().into_array(2000).unwrap();
                    assert_eq!(got.data_type(), want.data_type(), "{op}");
                    assert_eq!(
                        &got,
                        &want,
                        "{op} over {:?} and {:?}",
                        l.data_type(),
                        r.data_type()
                    );
                    compared += 1;
                }
            }
        }
        // Every pair but the two values with each other, for each of the three operators.
        assert_eq!(compared, 3 * (36 - 4));
    }

    #[test]
    fn a_batch_that_could_overflow_goes_to_arrows_kernel_and_fails_there() {
        let big = ColumnarValue::Array(decimals(&[Some(1), Some(i128::MAX / 3)], 38, 0));
        let four = ColumnarValue::Scalar(ScalarValue::Decimal128(Some(4), 38, 0));
        assert!(
            unchecked(Operator::Multiply, &big, &four)
                .unwrap()
                .is_none()
        );
        let e = DecimalArith {
            op: Operator::Multiply,
            left: Arc::new(datafusion::physical_expr::expressions::Column::new("a", 0)),
            right: Arc::new(datafusion::physical_expr::expressions::Literal::new(
                ScalarValue::Decimal128(Some(4), 38, 0),
            )),
            plain: Arc::new(datafusion::physical_expr::expressions::Literal::new(
                ScalarValue::Null,
            )),
        };
        let schema = Arc::new(Schema::new(vec![Field::new(
            "a",
            DataType::Decimal128(38, 0),
            true,
        )]));
        let big = decimals(&[Some(1), Some(i128::MAX / 3)], 38, 0);
        let batch = RecordBatch::try_new(schema, vec![big]).unwrap();
        let err = e.evaluate(&batch).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("overflow"), "{err}");
        // Scaling a sum's operand can overflow too.
        let wide = ColumnarValue::Array(decimals(&[Some(i128::MAX / 5)], 38, 0));
        let tenth = ColumnarValue::Scalar(ScalarValue::Decimal128(Some(1), 38, 1));
        assert!(unchecked(Operator::Plus, &wide, &tenth).unwrap().is_none());
    }

    /// A context over table `t` (price DECIMAL(15,2), discount DECIMAL(15,2), k INT), with or
    /// without the rule.
    async fn context(with_rule: bool) -> SessionContext {
        let mut builder = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features();
        if with_rule {
            builder = builder.with_physical_optimizer_rule(Arc::new(FastDecimals));
        }
        let ctx = SessionContext::new_with_state(builder.build());
        let schema = Arc::new(Schema::new(vec![
            Field::new("price", DataType::Decimal128(15, 2), true),
            Field::new("discount", DataType::Decimal128(15, 2), true),
            Field::new("k", DataType::Int32, false),
        ]));
        let batches = (0..4)
            .map(|b| {
                let rows = 0..1000i128;
                let price: Vec<_> = rows
                    .clone()
                    .map(|i| (i % 13 != 0).then_some((b * 1000 + i) * 104_729 % 10_000_000))
                    .collect();
                let discount: Vec<_> = rows.clone().map(|i| Some(i % 11)).collect();
                let k = Int32Array::from_iter_values((0..1000).map(|i| i % 5));
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        decimals(&price, 15, 2),
                        decimals(&discount, 15, 2),
                        Arc::new(k),
                    ],
                )
                .unwrap()
            })
            .collect();
        let table = MemTable::try_new(schema, vec![batches]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    const REVENUE: &str = "SELECT k, sum(price * (1 - discount)) AS revenue, \
        sum(price * (1 - discount) * (1 + discount)) AS charge, \
        max(price - discount) AS spread \
        FROM t GROUP BY k ORDER BY k";

    async fn revenue_plan(ctx: &SessionContext) -> Arc<dyn ExecutionPlan> {
        let frame = ctx.sql(REVENUE).await.unwrap();
        frame.create_physical_plan().await.unwrap()
    }

    /// How many [`DecimalArith`]s a plan's projections and aggregate arguments hold.
    fn fast_exprs(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut found = 0;
        plan.apply(|node| {
            let exprs: Vec<Arc<dyn PhysicalExpr>> =
                if let Some(a) = node.downcast_ref::<AggregateExec>() {
                    a.aggr_expr().iter().flat_map(|f| f.expressions()).collect()
                } else if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                    p.expr().iter().map(|e| e.expr.clone()).collect()
                } else {
                    vec![]
                };
            for e in exprs {
                e.apply(|x| {
                    found += usize::from(x.is::<DecimalArith>());
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })?;
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        found
    }

    #[tokio::test]
    async fn revenue_sums_run_on_the_unchecked_path_with_the_same_answer() {
        let fast = context(true).await;
        let plan = revenue_plan(&fast).await;
        let found = fast_exprs(&plan);
        assert!(
            found >= 3,
            "{found} in\n{}",
            displayable(plan.as_ref()).indent(true)
        );
        let got = collect(plan, fast.task_ctx()).await.unwrap();
        let want = context(false)
            .await
            .sql(REVENUE)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            arrow::compute::concat_batches(&got[0].schema(), &got).unwrap(),
            arrow::compute::concat_batches(&want[0].schema(), &want).unwrap()
        );
    }

    #[tokio::test]
    async fn a_plan_with_it_travels_as_plain_datafusion() {
        let fast = context(true).await;
        let plan = revenue_plan(&fast).await;
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes(plan.clone()).unwrap();
        let back =
            datafusion_proto::bytes::physical_plan_from_bytes(&bytes, &fast.task_ctx()).unwrap();
        let text = displayable(back.as_ref()).indent(true).to_string();
        assert!(text.contains("price@0 * (1 - discount@1)"), "{text}");
        assert_eq!(fast_exprs(&back), 0, "{text}");
        // The node that runs the decoded plan puts the fast path back.
        let back = crate::engine::in_fragment(back, &ConfigOptions::default(), u64::MAX).unwrap();
        assert_eq!(fast_exprs(&back), fast_exprs(&plan));
        let got = collect(back, fast.task_ctx()).await.unwrap();
        let want = collect(plan, fast.task_ctx()).await.unwrap();
        assert_eq!(got, want);
    }
}
