//! Functions whose output grows with an argument, bounded.
//!
//! `repeat('x', 1500000000)`, `lpad`, `range(1, 200000000)` and `array_repeat` allocate what their
//! arguments ask for, outside the memory pool: four such statements took a node started with
//! `--memory 1GiB` to 5.9 GB of RSS, and a little more would have had it killed. Each is
//! wrapped here: before it runs, the bytes it would produce for the batch are worked out from
//! its arguments, and past [`MAX_GENERATED_BYTES`] the statement fails with
//! RESOURCE_EXHAUSTED instead.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type, IntervalMonthDayNano};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue, exec_datafusion_err};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::optimizer::AnalyzerRule;

/// Most bytes one call of a growing function may produce for one batch.
pub(super) const MAX_GENERATED_BYTES: u128 = 256 << 20;

/// How a function's output grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `n` times `s`.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters of up to 4 bytes.
    Pad,
    /// `replace(s, from, to)`: every `from` in `s` becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, to [, flags])`: at most one `to` per position of `s`.
    RegexpReplace,
    /// `array_repeat(v, n)`: `n` copies of `v`.
    ArrayRepeat,
    /// `range(start, stop [, step])`, `generate_series`: one value per step.
    Range,
    /// `array_resize(a, n [, v])`: `n` copies of `v`.
    ArrayResize,
    /// `encode(s, format)`: at most twice `s` (hex).
    Encode,
    /// `concat(s, …)`: its literals, and its columns again when one comes twice.
    Concat,
    /// `concat_ws(sep, s, …)`: the same, and a separator between each two.
    ConcatWs,
    /// `array_to_string(a, sep [, null])`: each element's text, and a separator (or the null
    /// text) for each.
    Join,
    /// `array_concat(a, …)`, `make_array(v, …)`: a copy of all of their arguments.
    Copy,
    /// `levenshtein(a, b)`: no output to speak of, but work of the product of the lengths,
    /// which no deadline interrupts (one call of two 300,000-character strings held a core
    /// for many minutes after its query had timed out).
    Pairs,
    /// `regexp_like(s, pattern …)`, `regexp_match`, `regexp_count`, `regexp_instr`: no output
    /// to speak of, but a pattern compiled with work that grows faster than its length, which
    /// no deadline interrupts (`repeat('(a|b)', 1000000)`, 5 MB, held a core for a minute and
    /// took 1 GB before the regex engine refused it as too big).
    Pattern,
}

/// The longest regular expression a function compiles (about half a second of work; a list
/// of 20,000 words compiles in a tenth of that).
pub(super) const MAX_PATTERN_BYTES: u128 = 256 << 10;

/// Most character pairs a function of [`Growth::Pairs`] compares in one row (about a second
/// of work).
pub(super) const MAX_PAIRS: u128 = 1 << 30;

/// The functions bounded here, by DataFusion's name.
const GROWING: [(&str, Growth); 20] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
    ("array_resize", Growth::ArrayResize),
    ("encode", Growth::Encode),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::ConcatWs),
    ("array_to_string", Growth::Join),
    ("array_concat", Growth::Copy),
    ("make_array", Growth::Copy),
    ("levenshtein", Growth::Pairs),
    ("regexp_like", Growth::Pattern),
    ("regexp_match", Growth::Pattern),
    ("regexp_count", Growth::Pattern),
    ("regexp_instr", Growth::Pattern),
];

/// The bounded forms of those of `registered` (DataFusion's functions by name) that grow.
pub(super) fn wrap(registered: impl Fn(&str) -> Option<Arc<ScalarUDF>>) -> Vec<Arc<ScalarUDF>> {
    GROWING
        .iter()
        .filter_map(|(name, growth)| {
            let inner = registered(name)?;
            Some(Arc::new(ScalarUDF::new_from_impl(Bounded {
                inner,
                growth: *growth,
            })))
        })
        .collect()
}

/// A function of DataFusion's, run only when what it would produce is within bounds.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
}

impl ScalarUDFImpl for Bounded {
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

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        // `concat` of literals is computed right here, by DataFusion's simplification (not
        // through a call): its literals are bounded as a call's would be.
        if matches!(self.growth, Growth::Concat | Growth::ConcatWs) {
            let literals = args
                .iter()
                .map(|a| match a {
                    Expr::Literal(v, _) => literal_bytes(v),
                    _ => 0,
                })
                .fold(0u128, u128::saturating_add);
            self.within_bounds(literals)?;
        }
        // `regexp_like` simplifies to the `~` operator, whose pattern no call would bound.
        if self.growth == Growth::Pattern {
            return Ok(ExprSimplifyResult::Original(args));
        }
        Ok(match self.inner.simplify(args, info)? {
            // DataFusion's simplification of `concat` builds a call of its own, unbounded form.
            ExprSimplifyResult::Simplified(e) => ExprSimplifyResult::Simplified(self.rebound(e)?),
            original => original,
        })
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if self.growth == Growth::Pairs {
            let pairs = paired(&args.args, args.number_rows);
            if pairs > MAX_PAIRS {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{}() would compare about {} million character pairs in one row; {} is \
                     {} million",
                    self.name(),
                    pairs / 1_000_000,
                    crate::bees::GENERATED_BOUND,
                    MAX_PAIRS / 1_000_000
                )));
            }
            return self.inner.invoke_with_args(args);
        }
        if matches!(self.growth, Growth::Pattern | Growth::RegexpReplace) {
            let pattern = args.args.get(1).map_or(0, longest);
            if pattern > MAX_PATTERN_BYTES {
                return Err(pattern_too_long(&format!("{}()", self.name()), pattern));
            }
            if self.growth == Growth::Pattern {
                return self.inner.invoke_with_args(args);
            }
        }
        self.within_bounds(produced(self.growth, &args.args, args.number_rows))?;
        self.inner.invoke_with_args(args)
    }
}

/// An error once `bytes` that `what` writes for one batch pass [`MAX_GENERATED_BYTES`].
pub(super) fn within_generated_bound(what: &str, bytes: u128) -> DfResult<()> {
    match bytes > MAX_GENERATED_BYTES {
        true => Err(DataFusionError::ResourcesExhausted(format!(
            "{what} would produce more than {} MiB for one batch; {} is {} MiB",
            MAX_GENERATED_BYTES >> 20,
            crate::bees::GENERATED_BOUND,
            MAX_GENERATED_BYTES >> 20
        ))),
        false => Ok(()),
    }
}

impl Bounded {
    fn within_bounds(&self, bytes: u128) -> DfResult<()> {
        match bytes > MAX_GENERATED_BYTES {
            true => Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would produce about {} MiB for one batch; {} is {} MiB",
                self.name(),
                bytes >> 20,
                crate::bees::GENERATED_BOUND,
                MAX_GENERATED_BYTES >> 20
            ))),
            false => Ok(()),
        }
    }

    /// `e` with every call of a growing function in its unbounded form bounded again
    /// (`concat_ws('', …)` simplifies to DataFusion's own `concat`).
    fn rebound(&self, e: Expr) -> DfResult<Expr> {
        bound_calls(e).data()
    }
}

/// `e` with every call of a growing function in its unbounded form bounded.
fn bound_calls(e: Expr) -> DfResult<Transformed<Expr>> {
    e.transform(|e| match e {
        Expr::ScalarFunction(mut call)
            if (call.func.inner().as_ref() as &dyn std::any::Any)
                .downcast_ref::<Bounded>()
                .is_none() =>
        {
            let growth = GROWING
                .iter()
                .find(|(name, _)| *name == call.func.name())
                .map(|(_, g)| *g);
            match growth {
                Some(growth) => {
                    call.func = Arc::new(ScalarUDF::new_from_impl(Bounded {
                        inner: call.func.clone(),
                        growth,
                    }));
                    Ok(Transformed::yes(Expr::ScalarFunction(call)))
                }
                None => Ok(Transformed::no(Expr::ScalarFunction(call))),
            }
        }
        other => Ok(Transformed::no(other)),
    })
}

/// Bounds the growing functions DataFusion plans without the registry: `[a, b]` and
/// `ARRAY[…]` are `make_array`, `list || list` is `array_concat`, both DataFusion's own.
#[derive(Debug, Default)]
pub(super) struct BoundedCalls;

impl AnalyzerRule for BoundedCalls {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| node.map_expressions(bound_calls))
            .data()
    }

    fn name(&self) -> &str {
        "apiary_bounded_calls"
    }
}

/// One argument's value in one row, as far as sizes go.
#[derive(Clone, Copy)]
enum Value {
    /// A string's or binary's length in bytes.
    Bytes(u128),
    /// An integer.
    Int(i128),
    /// A date or time, in nanoseconds.
    Nanos(i128),
    /// An interval's shortest length in nanoseconds (`None`: it may be zero or negative).
    Step(Option<i128>),
    /// NULL, or a type sizes do not depend on.
    Other,
}

/// An argument: one value for every row, or a value per row.
enum Values {
    One(Value),
    Each(Vec<Value>),
}

impl Values {
    fn at(&self, row: usize) -> Value {
        match self {
            Values::One(v) => *v,
            Values::Each(v) => v.get(row).copied().unwrap_or(Value::Other),
        }
    }
}

/// The error for a regular expression of `bytes` given to `operator` (a function's name and
/// its parentheses, or an operator) over [`MAX_PATTERN_BYTES`]: INVALID_ARGUMENT.
pub(super) fn pattern_too_long(operator: &str, bytes: u128) -> DataFusionError {
    DataFusionError::ArrowError(
        Box::new(arrow::error::ArrowError::ComputeError(format!(
            "{operator}: a regular expression of {} KiB; the longest one compiled is {} KiB",
            bytes >> 10,
            MAX_PATTERN_BYTES >> 10
        ))),
        None,
    )
}

/// The bytes of a string or binary literal (0 for any other).
pub(super) fn literal_bytes(v: &ScalarValue) -> u128 {
    match scalar(v) {
        Value::Bytes(n) => n,
        _ => 0,
    }
}

/// The longest text `arg` holds, in bytes.
pub(super) fn longest(arg: &ColumnarValue) -> u128 {
    let bytes = |v: Value| match v {
        Value::Bytes(n) => n,
        _ => 0,
    };
    match values(arg) {
        Ok(Values::One(v)) => bytes(v),
        Ok(Values::Each(all)) => all.into_iter().map(bytes).max().unwrap_or(0),
        Err(_) => 0,
    }
}

/// The bytes `growth` produces for one batch of `rows` rows with `args`.
fn produced(growth: Growth, args: &[ColumnarValue], rows: usize) -> u128 {
    match growth {
        Growth::Concat | Growth::ConcatWs => return concatenated(args, rows),
        Growth::Join => return joined(args, rows),
        Growth::Copy => return copied(args, rows),
        _ => {}
    }
    let Ok(values) = args.iter().map(values).collect::<DfResult<Vec<_>>>() else {
        return 0;
    };
    let all_scalar = values.iter().all(|v| matches!(v, Values::One(_)));
    let rows = if all_scalar { 1 } else { rows };
    let mut total = 0u128;
    for row in 0..rows {
        let arg = |i: usize| values.get(i).map_or(Value::Other, |v| v.at(row));
        total = total.saturating_add(per_row(growth, &arg));
        if total > MAX_GENERATED_BYTES {
            break;
        }
    }
    total
}

/// What a concatenation of `args` adds to the inputs it was given, in O(1) an argument: each
/// literal once a row, and an array again for each time it comes after the first (the columns
/// of a row are already held; `concat(title, body)` over large documents is not growth, and
/// `concat(c, c)` is).
fn concatenated(args: &[ColumnarValue], rows: usize) -> u128 {
    let mut seen: Vec<&ArrayRef> = Vec::new();
    let mut added = 0u128;
    for arg in args {
        let bytes = match arg {
            ColumnarValue::Scalar(s) => match scalar(s) {
                Value::Bytes(n) => n.saturating_mul(rows as u128),
                _ => 0,
            },
            ColumnarValue::Array(a) if seen.iter().any(|b| Arc::ptr_eq(a, b)) => {
                a.get_buffer_memory_size() as u128
            }
            ColumnarValue::Array(a) => {
                seen.push(a);
                0
            }
        };
        added = added.saturating_add(bytes);
    }
    added
}

/// The bytes of a copy of `args` for `rows` rows.
fn copied(args: &[ColumnarValue], rows: usize) -> u128 {
    args.iter()
        .map(|a| match a {
            ColumnarValue::Array(a) => a.get_buffer_memory_size() as u128,
            ColumnarValue::Scalar(s) => (s.size() as u128).saturating_mul(rows as u128),
        })
        .fold(0, u128::saturating_add)
}

/// Leaf values of a list array (the values of its innermost lists).
fn leaves(a: &dyn Array) -> u128 {
    match a.data_type() {
        DataType::List(_) => leaves(a.as_list::<i32>().values().as_ref()),
        DataType::LargeList(_) => leaves(a.as_list::<i64>().values().as_ref()),
        DataType::FixedSizeList(..) => leaves(a.as_fixed_size_list().values().as_ref()),
        _ => a.len() as u128,
    }
}

/// What `array_to_string(list, sep [, null])` produces for one batch: the list's own bytes,
/// and for each leaf value (nested lists are joined too) 24 bytes of a number's text and the
/// longest separator or null text of the batch. A constant list counts once a row.
fn joined(args: &[ColumnarValue], rows: usize) -> u128 {
    let Some(list) = args.first() else {
        return 0;
    };
    let (text, values) = match list {
        ColumnarValue::Array(a) => (a.get_buffer_memory_size() as u128, leaves(a.as_ref())),
        ColumnarValue::Scalar(s) => {
            let each = s.to_array_of_size(1).map_or(0, |a| leaves(a.as_ref()));
            let rows = rows.max(1) as u128;
            (
                (s.size() as u128).saturating_mul(rows),
                each.saturating_mul(rows),
            )
        }
    };
    let longest = args[1..]
        .iter()
        .filter_map(|a| match a {
            ColumnarValue::Scalar(s) => match scalar(s) {
                Value::Bytes(n) => Some(n),
                _ => None,
            },
            ColumnarValue::Array(a) => match array(a) {
                Ok(v) => v
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::Bytes(n) => Some(n),
                        _ => None,
                    })
                    .max(),
                Err(_) => None,
            },
        })
        .max()
        .unwrap_or(0);
    text.saturating_add(values.saturating_mul(longest.saturating_add(24)))
}

/// The most character pairs `levenshtein(a, b)` compares in one row of a batch: the product of
/// the lengths (in bytes, at least the characters). Bounded per row, so that ordinary fuzzy
/// matching over full batches is not refused by the batch's size.
fn paired(args: &[ColumnarValue], rows: usize) -> u128 {
    let Ok(values) = args.iter().map(values).collect::<DfResult<Vec<_>>>() else {
        return 0;
    };
    let rows = match values.iter().all(|v| matches!(v, Values::One(_))) {
        true => 1,
        false => rows,
    };
    let len = |v: Value| match v {
        Value::Bytes(n) => n,
        _ => 0,
    };
    (0..rows)
        .map(|row| {
            let at = |i: usize| values.get(i).map_or(Value::Other, |v| v.at(row));
            len(at(0)).saturating_mul(len(at(1)))
        })
        .max()
        .unwrap_or(0)
}

fn per_row(growth: Growth, arg: &dyn Fn(usize) -> Value) -> u128 {
    let bytes = |v: Value| match v {
        Value::Bytes(n) => n,
        _ => 16,
    };
    let count = |v: Value| match v {
        Value::Int(n) => n.max(0) as u128,
        _ => 0,
    };
    match growth {
        Growth::Repeat => bytes(arg(0)).saturating_mul(count(arg(1))),
        Growth::Pad => count(arg(1)).saturating_mul(4),
        Growth::Replace => {
            let (s, from, to) = (bytes(arg(0)), bytes(arg(1)).max(1), bytes(arg(2)));
            s.saturating_add((s / from).saturating_mul(to))
        }
        Growth::RegexpReplace => {
            let (s, to) = (bytes(arg(0)), bytes(arg(2)));
            s.saturating_add((s + 1).saturating_mul(to))
        }
        Growth::ArrayRepeat => bytes(arg(0)).saturating_mul(count(arg(1))),
        Growth::ArrayResize => bytes(arg(2)).saturating_mul(count(arg(1))),
        Growth::Encode => bytes(arg(0)).saturating_mul(2),
        // Counted by `concatenated`, `joined`, `copied` and `paired`.
        Growth::Concat
        | Growth::ConcatWs
        | Growth::Join
        | Growth::Copy
        | Growth::Pairs
        | Growth::Pattern => 0,
        Growth::Range => {
            let steps = match (arg(0), arg(1), arg(2)) {
                (Value::Int(a), Value::Int(b), step) => {
                    let step = match step {
                        Value::Int(s) if s != 0 => s.unsigned_abs(),
                        _ => 1,
                    };
                    b.abs_diff(a) / step
                }
                (Value::Nanos(a), Value::Nanos(b), step) => {
                    let step = match step {
                        Value::Step(Some(s)) => s.unsigned_abs().max(1),
                        // A step that may be zero or change sign bounds nothing: one nanosecond.
                        Value::Step(None) => 1,
                        _ => DAY_NANOS as u128,
                    };
                    b.abs_diff(a) / step
                }
                _ => 0,
            };
            steps.saturating_add(1).saturating_mul(8)
        }
    }
}

fn values(arg: &ColumnarValue) -> DfResult<Values> {
    Ok(match arg {
        ColumnarValue::Scalar(s) => Values::One(scalar(s)),
        ColumnarValue::Array(a) => Values::Each(array(a)?),
    })
}

const DAY_NANOS: i128 = 86_400_000_000_000;

fn step(i: IntervalMonthDayNano) -> Option<i128> {
    let parts = [
        i.months as i128 * 28 * DAY_NANOS,
        i.days as i128 * DAY_NANOS,
        i.nanoseconds as i128,
    ];
    let (pos, neg) = (parts.iter().all(|p| *p >= 0), parts.iter().all(|p| *p <= 0));
    let sum: i128 = parts.iter().sum();
    ((pos || neg) && sum != 0).then_some(sum)
}

fn scalar(s: &ScalarValue) -> Value {
    use ScalarValue as S;
    match s {
        S::Utf8(Some(v)) | S::LargeUtf8(Some(v)) | S::Utf8View(Some(v)) => {
            Value::Bytes(v.len() as u128)
        }
        S::Binary(Some(v)) | S::LargeBinary(Some(v)) | S::BinaryView(Some(v)) => {
            Value::Bytes(v.len() as u128)
        }
        S::Date32(Some(d)) => Value::Nanos(*d as i128 * DAY_NANOS),
        S::Date64(Some(d)) => Value::Nanos(*d as i128 * 1_000_000),
        S::TimestampSecond(Some(t), _) => Value::Nanos(*t as i128 * 1_000_000_000),
        S::TimestampMillisecond(Some(t), _) => Value::Nanos(*t as i128 * 1_000_000),
        S::TimestampMicrosecond(Some(t), _) => Value::Nanos(*t as i128 * 1_000),
        S::TimestampNanosecond(Some(t), _) => Value::Nanos(*t as i128),
        S::IntervalMonthDayNano(Some(i)) => Value::Step(step(*i)),
        S::IntervalDayTime(Some(i)) => Value::Step(step(IntervalMonthDayNano::new(
            0,
            i.days,
            i.milliseconds as i64 * 1_000_000,
        ))),
        S::IntervalYearMonth(Some(m)) => Value::Step(step(IntervalMonthDayNano::new(*m, 0, 0))),
        v if v.data_type().is_integer() && !v.is_null() => v
            .cast_to(&DataType::Int64)
            .ok()
            .and_then(|v| match v {
                S::Int64(Some(n)) => Some(Value::Int(n as i128)),
                _ => None,
            })
            .unwrap_or(Value::Other),
        // A list to repeat: its size in memory.
        v if v.data_type().is_nested() && !v.is_null() => Value::Bytes(v.size() as u128),
        _ => Value::Other,
    }
}

fn array(a: &ArrayRef) -> DfResult<Vec<Value>> {
    let n = a.len();
    let each = |f: &dyn Fn(usize) -> Value| -> Vec<Value> {
        (0..n)
            .map(|i| if a.is_null(i) { Value::Other } else { f(i) })
            .collect()
    };
    Ok(match a.data_type() {
        DataType::Utf8 => {
            let s = a.as_string::<i32>();
            each(&|i| Value::Bytes(s.value_length(i) as u128))
        }
        DataType::LargeUtf8 => {
            let s = a.as_string::<i64>();
            each(&|i| Value::Bytes(s.value_length(i) as u128))
        }
        DataType::Utf8View => {
            let s = a.as_string_view();
            each(&|i| Value::Bytes(s.value(i).len() as u128))
        }
        DataType::Binary => {
            let s = a.as_binary::<i32>();
            each(&|i| Value::Bytes(s.value_length(i) as u128))
        }
        t if t.is_integer() => {
            let ints = arrow::compute::cast(a, &DataType::Int64)?;
            let ints = ints.as_primitive::<Int64Type>();
            each(&|i| Value::Int(ints.value(i) as i128))
        }
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) | DataType::Interval(_) => (0
            ..n)
            .map(|i| {
                ScalarValue::try_from_array(a, i)
                    .map(|s| scalar(&s))
                    .map_err(|e| exec_datafusion_err!("{e}"))
            })
            .collect::<DfResult<_>>()?,
        // Values to repeat of other types: an even share of the array's memory each.
        _ => {
            let share = (a.get_array_memory_size() / n.max(1)) as u128;
            each(&|_| Value::Bytes(share))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    /// A concatenation adds its literals once a row and a column again each time it repeats;
    /// columns concatenated once each are already held, however large.
    #[test]
    fn a_concatenation_counts_what_it_adds_to_its_inputs() {
        let big = |c: &str| -> ArrayRef { Arc::new(StringArray::from(vec![c.repeat(1000); 4])) };
        let (a, b) = (big("a"), big("b"));
        let size = a.get_buffer_memory_size() as u128;
        let col = |x: &ArrayRef| ColumnarValue::Array(x.clone());
        let lit = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        assert_eq!(concatenated(&[col(&a), col(&b)], 4), 0);
        assert_eq!(concatenated(&[col(&a), col(&a), col(&a)], 4), 2 * size);
        assert_eq!(concatenated(&[col(&a), lit("xyz"), col(&b)], 4), 12);
        assert_eq!(concatenated(&[lit(""), col(&a), col(&a)], 4), size);
    }
}

/// Constants a result repeats on every row, bounded. A projection turns a constant column into
/// an array of the batch's rows, each a copy: `repeat('x', 100000000)` is one call within
/// [`MAX_GENERATED_BYTES`], but as a column over a batch of 8,192 rows it asked for 800 GB at
/// once, and the failed allocation aborted the process. A constant whose copies for a whole
/// batch would pass the same bound fails the statement with RESOURCE_EXHAUSTED instead. It runs
/// before DataFusion's own physical rules: they push a projection into a frame's scan, which
/// then copies the constant itself, out of this rule's sight.
#[derive(Debug, Default)]
pub(super) struct BoundedConstants;

impl datafusion::physical_optimizer::PhysicalOptimizerRule for BoundedConstants {
    fn optimize(
        &self,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::physical_expr::expressions::Literal;
        use datafusion::physical_plan::projection::ProjectionExec;
        use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
        let rows = config.execution.batch_size.get() as u128;
        let too_big = |e: &Arc<dyn datafusion::physical_plan::PhysicalExpr>| {
            e.downcast_ref::<Literal>().is_some_and(|l| {
                (l.value().size() as u128).saturating_mul(rows) > MAX_GENERATED_BYTES
            })
        };
        plan.apply(|node| {
            if let Some(p) = node.downcast_ref::<ProjectionExec>()
                && p.expr().iter().any(|e| too_big(&e.expr))
            {
                // A projection over a known few rows (`SELECT '<a document>'`, one row) copies
                // the constant that many times.
                let known = StatisticsContext::new()
                    .compute(p.input().as_ref(), &StatisticsArgs::new())
                    .map(|s| s.num_rows);
                let rows = match known {
                    Ok(datafusion::common::stats::Precision::Exact(n)) => rows.min(n as u128),
                    _ => rows,
                };
                for e in p.expr() {
                    if let Some(l) = e.expr.downcast_ref::<Literal>() {
                        let bytes = l.value().size() as u128;
                        if bytes.saturating_mul(rows) > MAX_GENERATED_BYTES {
                            return Err(DataFusionError::ResourcesExhausted(format!(
                                "the constant {} ({bytes} bytes) would be copied to each of up \
                                 to {rows} rows of a batch, past {} MiB: make it smaller, or \
                                 lower datafusion.execution.batch_size",
                                e.alias,
                                MAX_GENERATED_BYTES >> 20
                            )));
                        }
                    }
                }
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "apiary_bounded_constants"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
