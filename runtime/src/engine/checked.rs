//! Integer `+`, `-`, `*` and negation that fail on overflow instead of wrapping, and decimal
//! arithmetic that fails on a result with more digits than its type holds.
//!
//! DataFusion computes integer arithmetic with Arrow's wrapping kernels: over an `INT` column
//! holding 2147483647, `a + a` answered -2, and over a `BIGINT` holding 9223372036854775807,
//! `b * b` answered 1 and `b + 1` the most negative BIGINT, with no error. PostgreSQL and DuckDB
//! refuse such a value ("integer out of range"). [`CheckedIntegers`] replaces every such
//! expression, once types are coerced, with a function that computes with Arrow's checked
//! kernels; an overflow fails the statement with INVALID_ARGUMENT. The function names its
//! column as the operator did (`t.a + t.b`), so results and views keep their names. Arrow
//! checks that decimal arithmetic fits its 128 (256) bits; DataFusion caps the type of a result
//! at 38 (76) digits, so a result of that type is checked for its digits too ([`Precise`]).
//! Floats overflow to infinity, as IEEE 754 says. A function travels to other nodes by its
//! name (`checked_add_subtract`, `checked_decimal_digits`), which the fragment codec reads back
//! ([`function_named`]).
//!
//! `sum` is DataFusion's with a checked add (see [`sum`]).
//!
//! A row another conjunct of the same filter rejects is still computed (`WHERE a < 100 AND a *
//! a > 0` over a row holding 2147483647 fails), as DataFusion computes a division by zero
//! there; `CASE WHEN a < 100 THEN a * a END` computes only the rows it selects.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, ArrayRef, ArrowNativeTypeOp, AsArray, BooleanArray, Datum};
use arrow::compute::kernels::numeric;
use arrow::datatypes::{
    ArrowPrimitiveType, DECIMAL128_MAX_PRECISION, DECIMAL256_MAX_PRECISION, DataType,
    Decimal128Type, DecimalType, Field, FieldRef, Int64Type, UInt64Type,
};
use arrow::error::ArrowError;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue, internal_err, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::{AggregateOrderSensitivity, merge_schema};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, BinaryExpr, ColumnarValue, Documentation, EmitTo,
    Expr, ExprSchemable, GroupsAccumulator, LogicalPlan, Operator, ReturnFieldArgs, ReversedUDAF,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, SetMonotonicity, Signature, StatisticsArgs,
    Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_expr_common::datum::apply;
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;

/// The rule; see the module's documentation. Runs after DataFusion's type coercion, before
/// constant folding, so that `CAST(2147483647 AS INT) + CAST(1 AS INT)` fails too instead of
/// being folded with wrapping arithmetic.
#[derive(Debug, Default)]
pub(super) struct CheckedIntegers;

impl AnalyzerRule for CheckedIntegers {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_expressions(plan, has_arithmetic, |e, schema| Ok(checked(e, schema)))
    }

    fn name(&self) -> &str {
        "apiary_checked_integers"
    }
}

/// Whether any expression of `node` has an operator this rule may replace.
fn has_arithmetic(node: &LogicalPlan) -> DfResult<bool> {
    any_expression(node, |e| {
        op_of(e).is_some()
            || matches!(
                e,
                Expr::BinaryExpr(BinaryExpr {
                    op: Operator::Divide,
                    ..
                })
            )
    })
}

/// Whether `node` has an expression, at any depth, for which `found` holds.
pub(super) fn any_expression(node: &LogicalPlan, found: impl Fn(&Expr) -> bool) -> DfResult<bool> {
    let mut any = false;
    node.apply_expressions(|e| {
        e.apply(|e| {
            any = found(e);
            Ok(if any {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    })?;
    Ok(any)
}

/// `plan` (its subqueries too) with `rewrite` applied bottom-up to every expression of each node
/// `wanted` picks, typed against the node's input schema. The expressions keep the names they
/// were planned with: the plan above reads a column by its name, and a window function is named
/// after its ORDER BY and PARTITION BY expressions (`sum(x) OVER (ORDER BY x + 1)` failed to
/// plan once its column was renamed after a rewritten expression).
pub(super) fn rewrite_expressions(
    plan: LogicalPlan,
    wanted: impl Fn(&LogicalPlan) -> DfResult<bool>,
    rewrite: impl Fn(Expr, &DFSchema) -> DfResult<Transformed<Expr>>,
) -> DfResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        if !wanted(&node)? {
            return Ok(Transformed::no(node));
        }
        let schema = input_schema(&node)?;
        let names = NamePreserver::new(&node);
        node.map_expressions(|e| {
            let name = names.save(&e);
            Ok(e.transform_up(|e| rewrite(e, &schema))?
                .update_data(|e| name.restore(e)))
        })
    })
    .data()
}

/// The schema `node`'s expressions are typed against, as DataFusion's type coercion builds it.
pub(super) fn input_schema(node: &LogicalPlan) -> DfResult<DFSchema> {
    let mut schema = merge_schema(&node.inputs());
    if let LogicalPlan::TableScan(scan) = node {
        let source =
            DFSchema::try_from_qualified_schema(scan.table_name.clone(), &scan.source.schema())?;
        schema.merge(&source);
    }
    // MERGE's clauses read the target, which is not one of its inputs.
    if let LogicalPlan::Dml(datafusion::logical_expr::DmlStatement {
        op: datafusion::logical_expr::WriteOp::MergeInto(_),
        table_name,
        target,
        ..
    }) = node
    {
        let target = DFSchema::try_from_qualified_schema(table_name.clone(), &target.schema())?;
        schema.merge(&target);
    }
    Ok(schema)
}

/// The checked operation an expression stands for, if it is arithmetic of the kind replaced.
fn op_of(e: &Expr) -> Option<Option<Op>> {
    match e {
        Expr::BinaryExpr(BinaryExpr { op, .. }) => match op {
            Operator::Plus => Some(Some(Op::Add)),
            Operator::Minus => Some(Some(Op::Sub)),
            Operator::Multiply => Some(Some(Op::Mul)),
            _ => None,
        },
        Expr::Negative(_) => Some(None),
        _ => None,
    }
}

/// `e` as a checked function, when it is integer arithmetic whose operands have its type. A
/// left operand that is already a checked chain takes `e` in: `a + b - c` is one function of
/// three operands, as DataFusion names every level of nested functions each time it types
/// one (a chain of 2,000 additions, as `1 + 1 + …`, nested took 6 s to plan; one function
/// plans as fast as the operators did). An expression whose types cannot be worked out here is
/// left as it is.
fn checked(e: Expr, schema: &DFSchema) -> Transformed<Expr> {
    let e = match precise(e, schema) {
        Ok(done) => return done,
        Err(e) => e,
    };
    let Some(op) = op_of(&e) else {
        return Transformed::no(e);
    };
    let operands_fit = match &e {
        Expr::BinaryExpr(BinaryExpr { left, right, .. }) => {
            match (type_of(left, schema), type_of(right, schema)) {
                (Some(l), Some(r)) => l == r && l.is_integer(),
                _ => false,
            }
        }
        Expr::Negative(inner) => type_of(inner, schema).is_some_and(|t| t.is_signed_integer()),
        _ => false,
    };
    if !operands_fit {
        return Transformed::no(e);
    }
    let (kind, args) = match (e, op) {
        (Expr::BinaryExpr(BinaryExpr { left, right, .. }), Some(op)) => {
            let chain = match &*left {
                Expr::ScalarFunction(f) => chain_of(&f.func),
                _ => None,
            };
            match (chain, *left) {
                (Some(mut ops), Expr::ScalarFunction(f)) => {
                    ops.push(op);
                    let mut args = f.args;
                    args.push(*right);
                    (Kind::Chain(ops), args)
                }
                (_, left) => (Kind::Chain(vec![op]), vec![left, *right]),
            }
        }
        (Expr::Negative(inner), None) => (Kind::Negate, vec![*inner]),
        (other, _) => return Transformed::no(other),
    };
    Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(Checked::new(kind))),
        args,
    )))
}

/// `e` as a [`Precise`] function when it is decimal arithmetic of the widest type (`Ok`);
/// otherwise `e` unchanged (`Err`). A chain (`a + b - c`) is checked once, at its top: Arrow
/// fails on an overflow of the 128 bits in between, and only the result is kept. The types are
/// worked out without naming the operands (see [`type_of`]), and an expression checked
/// already (planned again) is not checked twice.
fn precise(e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>, Expr> {
    let decimal = |e: &Expr| {
        matches!(
            type_of(e, schema),
            Some(DataType::Decimal128(..) | DataType::Decimal256(..))
        )
    };
    match e {
        Expr::ScalarFunction(f) if is_precise(&f.func) => match <[Expr; 1]>::try_from(f.args) {
            Ok([Expr::ScalarFunction(inner)]) if is_precise(&inner.func) => {
                Ok(Transformed::yes(Expr::ScalarFunction(inner)))
            }
            Ok([arg]) => Err(precise_of(arg)),
            Err(args) => Err(Expr::ScalarFunction(ScalarFunction::new_udf(f.func, args))),
        },
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(
                op,
                Operator::Plus | Operator::Minus | Operator::Multiply | Operator::Divide
            ) && (decimal(&left) || decimal(&right)) =>
        {
            let (left, was_precise) = match *left {
                Expr::ScalarFunction(f) if is_precise(&f.func) && f.args.len() == 1 => {
                    (f.args.into_iter().next().expect("one argument"), true)
                }
                other => (other, false),
            };
            let e = Expr::BinaryExpr(BinaryExpr::new(Box::new(left), op, right));
            match e.get_type(schema) {
                Ok(t) if at_widest(&t) => Ok(Transformed::yes(precise_of(e))),
                _ if was_precise => {
                    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
                        unreachable!("built above as a binary expression")
                    };
                    let left = Box::new(precise_of(*left));
                    Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                        left, op, right,
                    ))))
                }
                _ => Err(e),
            }
        }
        other => Err(other),
    }
}

fn is_precise(f: &ScalarUDF) -> bool {
    f.inner().downcast_ref::<Precise>().is_some()
}

fn precise_of(e: Expr) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::new_from_impl(Precise::default())),
        vec![e],
    ))
}

/// Whether `t` is a decimal of the most digits its width holds. DataFusion types decimal
/// arithmetic so that any result fits, but caps the precision there: `DECIMAL(38,0) + 1` is
/// `DECIMAL(38,0)`, and Arrow's kernels check only that the result fits in 128 bits. The
/// 39-digit sum was answered, and stored by INSERT … SELECT into a column no engine could then
/// read back (every later query over it failed).
fn at_widest(t: &DataType) -> bool {
    match t {
        DataType::Decimal128(p, _) => *p >= DECIMAL128_MAX_PRECISION,
        DataType::Decimal256(p, _) => *p >= DECIMAL256_MAX_PRECISION,
        _ => false,
    }
}

/// Decimal arithmetic of the widest type, failing when a result has more digits than the type
/// holds (see [`at_widest`]). It takes the operator's expression and names its column as the
/// operator did.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Precise {
    signature: Signature,
}

impl Default for Precise {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// [`Precise`]'s name, by which it travels to other nodes.
const PRECISE: &str = "checked_decimal_digits";

impl ScalarUDFImpl for Precise {
    fn name(&self) -> &str {
        PRECISE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types {
            [t @ (DataType::Decimal128(..) | DataType::Decimal256(..))] => Ok(t.clone()),
            _ => plan_err!("{PRECISE}() takes one decimal"),
        }
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let [field] = args.arg_fields else {
            return plan_err!("{PRECISE}() takes one decimal");
        };
        Ok(Arc::new(Field::new(
            PRECISE,
            self.return_type(&[field.data_type().clone()])?,
            field.is_nullable(),
        )))
    }

    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        match args {
            [e] => Ok(e.schema_name().to_string()),
            _ => Ok(PRECISE.to_string()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return internal_err!("{PRECISE}() takes one decimal");
        };
        let array = value.to_array(1)?;
        if let Some(out) = apiary_storage::decimal_out_of_range(array.as_ref()) {
            return Err(overflow(format!(
                "decimal out of range: {out} does not fit in {} (CAST an operand to DOUBLE for a \
                 wider result)",
                array.data_type()
            )));
        }
        Ok(value.clone())
    }
}

/// The operators of `f`, when it is a checked chain.
fn chain_of(f: &ScalarUDF) -> Option<Vec<Op>> {
    match &f.inner().downcast_ref::<Checked>()?.kind {
        Kind::Chain(ops) => Some(ops.clone()),
        Kind::Negate => None,
    }
}

/// `e`'s type. A checked function has its first operand's type, found without asking
/// DataFusion (whose typing of a function names every level below it).
fn type_of(mut e: &Expr, schema: &DFSchema) -> Option<DataType> {
    loop {
        match e {
            Expr::ScalarFunction(f)
                if f.func.inner().downcast_ref::<Checked>().is_some() || is_precise(&f.func) =>
            {
                e = f.args.first()?;
            }
            other => return other.get_type(schema).ok(),
        }
    }
}

/// The checked function a fragment names (`checked_add_subtract`, `checked_negate`,
/// `checked_decimal_digits`), to decode it on another node.
pub(crate) fn function_named(name: &str) -> Option<Arc<ScalarUDF>> {
    if name == PRECISE {
        return Some(Arc::new(ScalarUDF::new_from_impl(Precise::default())));
    }
    let ops = name.strip_prefix("checked_")?;
    let kind = if ops == "negate" {
        Kind::Negate
    } else {
        Kind::Chain(ops.split('_').map(Op::parse).collect::<Option<Vec<_>>>()?)
    };
    Some(Arc::new(ScalarUDF::new_from_impl(Checked::new(kind))))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "subtract",
            Op::Mul => "multiply",
        }
    }

    fn parse(word: &str) -> Option<Op> {
        [Op::Add, Op::Sub, Op::Mul]
            .into_iter()
            .find(|op| op.word() == word)
    }

    fn operator(self) -> Operator {
        match self {
            Op::Add => Operator::Plus,
            Op::Sub => Operator::Minus,
            Op::Mul => Operator::Multiply,
        }
    }

    fn kernel(self, l: &dyn Datum, r: &dyn Datum) -> Result<ArrayRef, ArrowError> {
        match self {
            Op::Add => numeric::add(l, r),
            Op::Sub => numeric::sub(l, r),
            Op::Mul => numeric::mul(l, r),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    /// `a op₁ b op₂ c …`, left to right: one operator fewer than operands.
    Chain(Vec<Op>),
    /// `- a`.
    Negate,
}

/// Checked arithmetic on integers of one type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Checked {
    kind: Kind,
    name: String,
    signature: Signature,
}

impl Checked {
    fn new(kind: Kind) -> Self {
        let (name, signature) = match &kind {
            Kind::Chain(ops) => (
                format!(
                    "checked_{}",
                    ops.iter().map(|op| op.word()).collect::<Vec<_>>().join("_")
                ),
                Signature::any(ops.len() + 1, Volatility::Immutable),
            ),
            Kind::Negate => (
                "checked_negate".to_string(),
                Signature::any(1, Volatility::Immutable),
            ),
        };
        Self {
            kind,
            name,
            signature,
        }
    }

    /// Arrow's overflow, saying which type the value left. It stays an Arrow overflow, which
    /// every path reports as the statement's fault (INVALID_ARGUMENT), row-level changes too.
    fn overflow(&self, t: &DataType, e: ArrowError) -> DataFusionError {
        match e {
            ArrowError::ArithmeticOverflow(what) => overflow(format!(
                "integer out of range: {} does not fit in {t} (the type of both operands; \
                 CAST one to BIGINT or DECIMAL for a wider result)",
                what.trim_start_matches("Overflow happened on: ")
            )),
            other => other.into(),
        }
    }
}

fn overflow(message: String) -> DataFusionError {
    DataFusionError::ArrowError(Box::new(ArrowError::ArithmeticOverflow(message)), None)
}

impl ScalarUDFImpl for Checked {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match (&self.kind, arg_types) {
            (Kind::Negate, [t]) if t.is_signed_integer() => Ok(t.clone()),
            (Kind::Chain(ops), [first, rest @ ..])
                if rest.len() == ops.len()
                    && first.is_integer()
                    && rest.iter().all(|t| t == first) =>
            {
                Ok(first.clone())
            }
            (Kind::Negate, _) => plan_err!("{}() takes one signed integer", self.name),
            (Kind::Chain(ops), _) => plan_err!(
                "{}() takes {} integers of one type",
                self.name,
                ops.len() + 1
            ),
        }
    }

    /// Nullable when an operand is, as the operator's result.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            self.return_type(&types)?,
            nullable,
        )))
    }

    /// The operators' own column name (`t.a + t.b - Int64(1)`), so that replacing them renames
    /// nothing.
    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        use std::fmt::Write;
        let mut name = String::new();
        match (&self.kind, args) {
            (Kind::Negate, [v]) => write!(name, "(- {})", v.schema_name())?,
            (Kind::Chain(ops), [first, rest @ ..]) => {
                write!(name, "{}", first.schema_name())?;
                for (op, arg) in ops.iter().zip(rest) {
                    write!(name, " {} {}", op.operator(), arg.schema_name())?;
                }
            }
            _ => name.push_str(&self.name),
        }
        Ok(name)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let t = args.return_field.data_type();
        match (&self.kind, args.args.as_slice()) {
            (Kind::Negate, [v]) => {
                let negate = |a: &ArrayRef| numeric::neg(a).map_err(|e| self.overflow(t, e));
                Ok(match v {
                    ColumnarValue::Array(a) => ColumnarValue::Array(negate(a)?),
                    ColumnarValue::Scalar(s) => {
                        let negated = negate(&s.to_array()?)?;
                        ColumnarValue::Scalar(ScalarValue::try_from_array(&negated, 0)?)
                    }
                })
            }
            (Kind::Chain(ops), [first, rest @ ..]) if rest.len() == ops.len() => {
                let mut acc = first.clone();
                for (op, arg) in ops.iter().zip(rest) {
                    acc = apply(&acc, arg, |l, r| op.kernel(l, r)).map_err(|e| match e {
                        DataFusionError::ArrowError(e, _) => self.overflow(t, *e),
                        other => other,
                    })?;
                }
                Ok(acc)
            }
            _ => plan_err!("{}() called with {} arguments", self.name, args.args.len()),
        }
    }
}

/// `sum` over integers and decimals, failing when the sum leaves its type. DataFusion's adds
/// with wrapping: the sum of 9223372036854775807 and 1 as BIGINT answered
/// -9223372036854775808. Floats, durations and intervals are summed by DataFusion's own.
pub(super) fn sum(registered: Option<Arc<AggregateUDF>>) -> Option<Arc<AggregateUDF>> {
    Some(Arc::new(AggregateUDF::new_from_impl(CheckedSum {
        inner: registered?,
    })))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedSum {
    inner: Arc<AggregateUDF>,
}

/// Whether `t` is a sum type this module checks.
fn checked_sum_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int64 | DataType::UInt64 | DataType::Decimal128(..)
    )
}

fn sum_overflow(t: &DataType) -> DataFusionError {
    let wider = match t {
        DataType::Decimal128(..) => "",
        _ => " (sum(CAST(x AS DECIMAL(38, 0))) sums wider)",
    };
    overflow(format!("sum out of range: it does not fit in {t}{wider}"))
}

impl AggregateUDFImpl for CheckedSum {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let t = args.return_field.data_type().clone();
        if !checked_sum_type(&t) {
            return self.inner.accumulator(args);
        }
        if args.is_distinct {
            return Ok(Box::new(DistinctSum {
                inner: self.inner.accumulator(args)?,
                t,
            }));
        }
        Ok(match t {
            DataType::Int64 => Box::new(SumOf::<Int64Type>::new(t)),
            DataType::UInt64 => Box::new(SumOf::<UInt64Type>::new(t)),
            _ => Box::new(SumOf::<Decimal128Type>::new(t)),
        })
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        let t = args.return_field.data_type().clone();
        if !checked_sum_type(&t) {
            return self.inner.create_groups_accumulator(args);
        }
        let overflowed = Arc::new(AtomicBool::new(false));
        let inner: Box<dyn GroupsAccumulator> = match t {
            DataType::Int64 => grouped::<Int64Type>(&t, overflowed.clone()),
            DataType::UInt64 => grouped::<UInt64Type>(&t, overflowed.clone()),
            _ => grouped::<Decimal128Type>(&t, overflowed.clone()),
        };
        Ok(Box::new(GroupedSum {
            inner,
            overflowed,
            t,
        }))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let t = args.return_field.data_type().clone();
        if args.is_distinct || !checked_sum_type(&t) {
            return self.inner.create_sliding_accumulator(args);
        }
        self.accumulator(args)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.inner.reverse_udf()
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.inner().order_sensitivity()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }

    fn value_from_stats(&self, args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner.value_from_stats(args)
    }

    fn default_value(&self, data_type: &DataType) -> DfResult<ScalarValue> {
        self.inner.default_value(data_type)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// DataFusion's grouped sum with a checked add; an overflow raises `overflowed`.
fn grouped<T>(t: &DataType, overflowed: Arc<AtomicBool>) -> Box<dyn GroupsAccumulator>
where
    T: ArrowPrimitiveType + Send,
    T::Native: ArrowNativeTypeOp,
{
    Box::new(PrimitiveGroupsAccumulator::<T, _>::new(
        t,
        move |x: &mut T::Native, y: T::Native| match x.add_checked(y) {
            Ok(sum) => *x = sum,
            Err(_) => overflowed.store(true, Ordering::Relaxed),
        },
    ))
}

/// A grouped sum that fails once any group's sum overflowed.
struct GroupedSum {
    inner: Box<dyn GroupsAccumulator>,
    overflowed: Arc<AtomicBool>,
    t: DataType,
}

impl GroupedSum {
    fn check(&self) -> DfResult<()> {
        if self.overflowed.load(Ordering::Relaxed) {
            return Err(sum_overflow(&self.t));
        }
        Ok(())
    }
}

impl GroupsAccumulator for GroupedSum {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)?;
        self.check()
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let sums = self.inner.evaluate(emit_to)?;
        if let DataType::Decimal128(p, _) = self.t {
            sums.as_primitive::<Decimal128Type>()
                .validate_decimal_precision(p)
                .map_err(|_| sum_overflow(&self.t))?;
        }
        Ok(sums)
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        self.inner.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.inner
            .merge_batch(values, group_indices, total_num_groups)?;
        self.check()
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}

/// An ungrouped (or window) sum of one primitive type, checked; retractable.
#[derive(Debug)]
struct SumOf<T: ArrowPrimitiveType> {
    sum: T::Native,
    /// Values summed (less those retracted): none is NULL.
    count: u64,
    t: DataType,
}

impl<T: ArrowPrimitiveType> SumOf<T> {
    fn new(t: DataType) -> Self {
        Self {
            sum: T::Native::default(),
            count: 0,
            t,
        }
    }

    fn add(&mut self, values: &ArrayRef, retract: bool) -> DfResult<()> {
        let values = values.as_primitive::<T>();
        let part = arrow::compute::sum_checked(values).map_err(|_| sum_overflow(&self.t))?;
        if let Some(part) = part {
            let sum = if retract {
                self.sum.sub_checked(part)
            } else {
                self.sum.add_checked(part)
            };
            self.sum = sum.map_err(|_| sum_overflow(&self.t))?;
        }
        let n = (values.len() - values.null_count()) as u64;
        self.count = if retract {
            self.count.saturating_sub(n)
        } else {
            self.count + n
        };
        Ok(())
    }

    /// The sum, checked against a decimal's precision as well.
    fn value(&self) -> DfResult<ScalarValue> {
        let v = (self.count > 0).then_some(self.sum);
        let value = ScalarValue::new_primitive::<T>(v, &self.t)?;
        if let ScalarValue::Decimal128(Some(v), p, _) = value
            && !Decimal128Type::is_valid_decimal_precision(v, p)
        {
            return Err(sum_overflow(&self.t));
        }
        Ok(value)
    }
}

impl<T: ArrowPrimitiveType + std::fmt::Debug> Accumulator for SumOf<T>
where
    T::Native: ArrowNativeTypeOp,
{
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.add(&values[0], false)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.add(&values[0], true)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.add(&states[0], false)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.value()?])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        self.value()
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// `sum(DISTINCT x)`: DataFusion's accumulator keeps the distinct values; they are summed
/// here, checked.
#[derive(Debug)]
struct DistinctSum {
    inner: Box<dyn Accumulator>,
    t: DataType,
}

impl Accumulator for DistinctSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.inner.update_batch(values)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.inner.merge_batch(states)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let Some(ScalarValue::List(list)) = self.inner.state()?.into_iter().next() else {
            return self.inner.evaluate();
        };
        let values = list.values().clone();
        let mut sum = match self.t {
            DataType::Int64 => {
                Box::new(SumOf::<Int64Type>::new(self.t.clone())) as Box<dyn Accumulator>
            }
            DataType::UInt64 => Box::new(SumOf::<UInt64Type>::new(self.t.clone())),
            _ => Box::new(SumOf::<Decimal128Type>::new(self.t.clone())),
        };
        sum.update_batch(&[values])?;
        sum.evaluate()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}
