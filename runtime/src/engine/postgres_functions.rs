//! PostgreSQL functions DataFusion lacks, under PostgreSQL's names: `pg_typeof(x)`,
//! `div(a, b)`, `width_bucket(x, low, high, count)`, `format(template, …)`, `quote_ident`,
//! `quote_literal`, `quote_nullable`, `current_setting`, `make_timestamp`, `num_nulls`,
//! `num_nonnulls`, `justify_hours`, `justify_days`, `justify_interval`, and aliases of
//! DataFusion's own functions for `sign`, `gen_random_uuid`, `variance` and `every` (each was
//! "Invalid function").

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array};
use arrow::datatypes::{
    DECIMAL128_MAX_PRECISION, DataType, Decimal128Type, Float64Type, Int64Type,
};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::functions::utils::make_scalar_function;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    AggregateUDF, ColumnarValue, Expr, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility, lit,
};

/// The scalar functions of this module.
pub(super) fn scalars() -> Vec<Arc<ScalarUDF>> {
    fn udf(f: impl ScalarUDFImpl + 'static) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(f))
    }
    let user_defined = || Signature::user_defined(Volatility::Immutable);
    let mut all = vec![
        udf(TypeOf {
            signature: Signature::any(1, Volatility::Immutable),
        }),
        udf(Div {
            signature: user_defined(),
        }),
        udf(WidthBucket {
            signature: user_defined(),
        }),
        udf(Format {
            signature: user_defined(),
        }),
        udf(CurrentSetting {
            signature: Signature::user_defined(Volatility::Stable),
        }),
        udf(MakeTimestamp {
            signature: user_defined(),
        }),
        udf(CountNulls {
            nulls: true,
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
        udf(CountNulls {
            nulls: false,
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
    ];
    all.extend(
        [Justify::Hours, Justify::Days, Justify::Interval].map(|justify| {
            udf(JustifyFn {
                justify,
                signature: user_defined(),
            })
        }),
    );
    all.extend(
        [Quoting::Ident, Quoting::Literal, Quoting::Nullable].map(|quoting| {
            udf(Quote {
                quoting,
                signature: user_defined(),
            })
        }),
    );
    all
}

/// DataFusion's functions `registered` under PostgreSQL's names too.
pub(super) fn aliased_scalars(
    registered: impl Fn(&str) -> Option<Arc<ScalarUDF>>,
) -> Vec<Arc<ScalarUDF>> {
    [("signum", "sign"), ("uuid", "gen_random_uuid")]
        .into_iter()
        .filter_map(|(name, alias)| {
            registered(name).map(|f| Arc::new(f.as_ref().clone().with_aliases([alias])))
        })
        .collect()
}

/// DataFusion's aggregates `registered` under PostgreSQL's names too.
pub(super) fn aliased_aggregates(
    registered: impl Fn(&str) -> Option<Arc<AggregateUDF>>,
) -> Vec<Arc<AggregateUDF>> {
    [("var", "variance"), ("bool_and", "every")]
        .into_iter()
        .filter_map(|(name, alias)| {
            registered(name).map(|f| Arc::new(f.as_ref().clone().with_aliases([alias])))
        })
        .collect()
}

/// `pg_typeof(x)`: the name PostgreSQL gives `x`'s type, as text (`integer`, `numeric`,
/// `timestamp with time zone`, `text[]`). Types PostgreSQL lacks are named as Apiary's
/// `CREATE TABLE` spells them (`tinyint`, `bigint unsigned`) or as Arrow names them.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TypeOf {
    signature: Signature,
}

/// PostgreSQL's name for `t`.
fn postgres_name(t: &DataType) -> String {
    match t {
        DataType::Null => "unknown".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 => "tinyint unsigned".into(),
        DataType::UInt16 => "smallint unsigned".into(),
        DataType::UInt32 => "integer unsigned".into(),
        DataType::UInt64 => "bigint unsigned".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => "numeric".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("{}[]", postgres_name(f.data_type()))
        }
        DataType::Struct(_) => "record".into(),
        DataType::Dictionary(_, value) => postgres_name(value),
        other => other.to_string(),
    }
}

impl ScalarUDFImpl for TypeOf {
    fn name(&self) -> &str {
        "pg_typeof"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        match args.as_slice() {
            [x] => match info.get_data_type(x) {
                Ok(t) => Ok(ExprSimplifyResult::Simplified(lit(postgres_name(&t)))),
                Err(_) => Ok(ExprSimplifyResult::Original(args)),
            },
            _ => Ok(ExprSimplifyResult::Original(args)),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = match args.arg_fields.first() {
            Some(f) => postgres_name(f.data_type()),
            None => return exec_err!("pg_typeof takes one argument"),
        };
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// `num_nulls(…)` and `num_nonnulls(…)`: how many of the arguments are NULL, or are not.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CountNulls {
    nulls: bool,
    signature: Signature,
}

impl ScalarUDFImpl for CountNulls {
    fn name(&self) -> &str {
        match self.nulls {
            true => "num_nulls",
            false => "num_nonnulls",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let nulls = self.nulls;
        make_scalar_function(
            move |arrays: &[ArrayRef]| {
                let rows = arrays.first().map_or(0, |a| a.len());
                let mut counts = vec![0i32; rows];
                for a in arrays {
                    // Logical NULLs: a NULL-typed column has no validity buffer.
                    let a_nulls = a.logical_nulls();
                    for (i, c) in counts.iter_mut().enumerate() {
                        if a_nulls.as_ref().is_some_and(|n| n.is_null(i)) == nulls {
                            *c += 1;
                        }
                    }
                }
                Ok(Arc::new(Int32Array::from(counts)) as ArrayRef)
            },
            vec![],
        )(&args.args)
    }
}

/// `div(a, b)`: the quotient truncated toward zero, as PostgreSQL's `div(numeric, numeric)`
/// (`div(-7.5, 2)` is -3). Integers answer a `BIGINT`, decimals a `DECIMAL` with no fraction,
/// floats a `DOUBLE` with none. A zero divisor is an error.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Div {
    signature: Signature,
}

impl ScalarUDFImpl for Div {
    fn name(&self) -> &str {
        "div"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let [a, b] = arg_types else {
            return plan_err!("div takes 2 arguments, {} given", arg_types.len());
        };
        let int = |t: &DataType| t.is_integer() || t.is_null();
        if int(a) && int(b) {
            return Ok(vec![DataType::Int64, DataType::Int64]);
        }
        if !(a.is_numeric() || a.is_null()) || !(b.is_numeric() || b.is_null()) {
            return plan_err!("div takes two numbers, not {a} and {b}");
        }
        if a.is_floating() || b.is_floating() {
            return Ok(vec![DataType::Float64, DataType::Float64]);
        }
        let (a, b) = BinaryTypeCoercer::new(a, &Operator::Divide, b).get_input_types()?;
        Ok(vec![a, b])
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types {
            [DataType::Decimal128(p1, s1), DataType::Decimal128(_, s2)] => {
                let digits = i16::from(*p1) - i16::from(*s1) + i16::from(*s2);
                let digits = digits.clamp(1, i16::from(DECIMAL128_MAX_PRECISION));
                Ok(DataType::Decimal128(digits as u8, 0))
            }
            [DataType::Float64, DataType::Float64] => Ok(DataType::Float64),
            [DataType::Int64, DataType::Int64] => Ok(DataType::Int64),
            other => plan_err!("div cannot divide {other:?}"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let target = args.return_field.data_type().clone();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b] = arrays.as_slice() else {
            return exec_err!("div takes 2 arguments");
        };
        // A zero divisor is an error where the dividend is a value (a NULL answers NULL).
        let zero = ScalarValue::new_zero(b.data_type())?.to_scalar()?;
        let equal = arrow::compute::kernels::cmp::eq(b, &zero)?;
        if (0..equal.len()).any(|i| equal.is_valid(i) && equal.value(i) && a.is_valid(i)) {
            return exec_err!("division by zero");
        }
        let quotient: ArrayRef = match &target {
            DataType::Int64 => arrow::compute::kernels::numeric::div(a, b)?,
            DataType::Float64 => {
                let (a, b) = (
                    a.as_primitive::<Float64Type>(),
                    b.as_primitive::<Float64Type>(),
                );
                Arc::new(arrow::compute::binary::<_, _, _, Float64Type>(
                    a,
                    b,
                    |x, y| (x / y).trunc(),
                )?)
            }
            DataType::Decimal128(p, _) => Arc::new(whole_quotients(a, b, *p)?),
            other => return exec_err!("div cannot answer {other}"),
        };
        Ok(ColumnarValue::Array(quotient))
    }
}

/// `a / b` truncated toward zero, for decimals `a` and `b`, as a `DECIMAL(p, 0)`: computed on
/// 256 bits with both at one scale, so no value overflows on the way (Arrow's `/` multiplies
/// the dividend by 10^4 first: `div(99999999999999999999999999999999999999, 3)` overflowed).
fn whole_quotients(a: &ArrayRef, b: &ArrayRef, p: u8) -> DfResult<arrow::array::Decimal128Array> {
    use arrow::array::ArrowNativeTypeOp;
    use arrow::datatypes::i256;
    let (DataType::Decimal128(_, s1), DataType::Decimal128(_, s2)) = (a.data_type(), b.data_type())
    else {
        return exec_err!(
            "div takes decimals here, not {} and {}",
            a.data_type(),
            b.data_type()
        );
    };
    let ten = |k: i8| i256::from_i128(10).pow_checked(u32::from(k.max(0).unsigned_abs()));
    let (up_a, up_b) = (ten(*s2 - *s1)?, ten(*s1 - *s2)?);
    let limit = i256::from_i128(10).pow_checked(u32::from(p))?;
    let (a, b) = (
        a.as_primitive::<Decimal128Type>(),
        b.as_primitive::<Decimal128Type>(),
    );
    let mut out = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        if a.is_null(i) || b.is_null(i) {
            out.push(None);
            continue;
        }
        let n = i256::from_i128(a.value(i)).checked_mul(up_a);
        let d = i256::from_i128(b.value(i)).checked_mul(up_b);
        let q = n.zip(d).and_then(|(n, d)| n.checked_div(d));
        match q
            .filter(|q| q.wrapping_abs() < limit)
            .and_then(|q| q.to_i128())
        {
            Some(q) => out.push(Some(q)),
            None => return exec_err!("numeric field overflow in div"),
        }
    }
    Ok(arrow::array::Decimal128Array::from(out).with_precision_and_scale(p, 0)?)
}

/// `width_bucket(x, low, high, count)`: which of `count` equal buckets between `low` and `high`
/// holds `x`, 0 below the range and `count + 1` above it; `low` may be above `high` (buckets
/// then count down), as in PostgreSQL. Bounds that are equal or not finite, and a count below
/// 1, are errors.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WidthBucket {
    signature: Signature,
}

impl ScalarUDFImpl for WidthBucket {
    fn name(&self) -> &str {
        "width_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let number = |t: &DataType| t.is_numeric() || t.is_null();
        match arg_types {
            [x, low, high, count]
                if number(x)
                    && number(low)
                    && number(high)
                    && (count.is_integer() || count.is_null()) =>
            {
                Ok(vec![
                    DataType::Float64,
                    DataType::Float64,
                    DataType::Float64,
                    DataType::Int64,
                ])
            }
            _ => plan_err!("width_bucket takes (number, low, high, integer count)"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [x, low, high, count] = arrays.as_slice() else {
            return exec_err!("width_bucket takes 4 arguments");
        };
        let (x, low, high) = (
            x.as_primitive::<Float64Type>(),
            low.as_primitive::<Float64Type>(),
            high.as_primitive::<Float64Type>(),
        );
        let count = count.as_primitive::<Int64Type>();
        let mut out = Vec::with_capacity(x.len());
        for i in 0..x.len() {
            if x.is_null(i) || low.is_null(i) || high.is_null(i) || count.is_null(i) {
                out.push(None);
                continue;
            }
            out.push(Some(bucket(
                x.value(i),
                low.value(i),
                high.value(i),
                count.value(i),
            )?));
        }
        Ok(ColumnarValue::Array(Arc::new(Int32Array::from(out))))
    }
}

/// The bucket of `x`; see [`WidthBucket`].
fn bucket(x: f64, low: f64, high: f64, count: i64) -> DfResult<i32> {
    if count <= 0 {
        return exec_err!("count must be greater than zero");
    }
    if x.is_nan() || low.is_nan() || high.is_nan() {
        return exec_err!("operand, lower bound, and upper bound cannot be NaN");
    }
    if !low.is_finite() || !high.is_finite() {
        return exec_err!("lower and upper bounds must be finite");
    }
    if low == high {
        return exec_err!("lower bound cannot equal upper bound");
    }
    let Ok(count) = i32::try_from(count) else {
        return exec_err!("integer out of range");
    };
    let inside = |share: f64| ((share * f64::from(count)).floor() as i32).clamp(0, count - 1) + 1;
    let above = || {
        count
            .checked_add(1)
            .map_or_else(|| exec_err!("integer out of range"), Ok)
    };
    if low < high {
        if x < low {
            Ok(0)
        } else if x >= high {
            above()
        } else {
            Ok(inside((x - low) / (high - low)))
        }
    } else if x > low {
        Ok(0)
    } else if x <= high {
        above()
    } else {
        Ok(inside((low - x) / (low - high)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_postgres() {
        // PostgreSQL 15: width_bucket(5.35, 0.024, 10.06, 5) = 3; (-1, 0, 10, 5) = 0;
        // (10, 0, 10, 5) = 6; counting down: (8, 10, 0, 5) = 2.
        assert_eq!(bucket(5.35, 0.024, 10.06, 5).unwrap(), 3);
        assert_eq!(bucket(-1.0, 0.0, 10.0, 5).unwrap(), 0);
        assert_eq!(bucket(10.0, 0.0, 10.0, 5).unwrap(), 6);
        assert_eq!(bucket(8.0, 10.0, 0.0, 5).unwrap(), 2);
        assert_eq!(bucket(0.0, 0.0, 10.0, 5).unwrap(), 1);
        assert!(bucket(1.0, 1.0, 1.0, 5).is_err());
        assert!(bucket(1.0, 0.0, 2.0, 0).is_err());
        assert!(bucket(1.0, 0.0, f64::INFINITY, 3).is_err());
        assert!(bucket(1.0, 0.0, 2.0, i64::from(i32::MAX) + 1).is_err());
    }

    #[test]
    fn div_of_decimals_does_not_overflow_on_the_way() {
        let dec = |v: i128, p: u8, s: i8| -> ArrayRef {
            Arc::new(
                arrow::array::Decimal128Array::from(vec![v])
                    .with_precision_and_scale(p, s)
                    .unwrap(),
            )
        };
        let nines = 10i128.pow(38) - 1;
        let q = whole_quotients(&dec(nines, 38, 0), &dec(3, 20, 0), 38).unwrap();
        assert_eq!(q.value(0), nines / 3);
        // -7.5 / 2 and 7.5 / -0.25: toward zero.
        assert_eq!(
            whole_quotients(&dec(-75, 2, 1), &dec(2, 20, 0), 21)
                .unwrap()
                .value(0),
            -3
        );
        assert_eq!(
            whole_quotients(&dec(75, 2, 1), &dec(-25, 3, 2), 4)
                .unwrap()
                .value(0),
            -30
        );
    }

    #[test]
    fn type_names_are_postgres_names() {
        assert_eq!(postgres_name(&DataType::Int32), "integer");
        assert_eq!(
            postgres_name(&DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into())
            )),
            "timestamp with time zone"
        );
        assert_eq!(
            postgres_name(&DataType::List(Arc::new(
                arrow::datatypes::Field::new_list_field(DataType::Utf8View, true)
            ))),
            "text[]"
        );
    }
}

/// PostgreSQL 15's keywords that `quote_ident` quotes: all but the unreserved ones.
const QUOTED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// `name` as an identifier in SQL text, quoted unless it reads the same unquoted.
fn quoted_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !QUOTED_KEYWORDS.contains(&name);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `text` as a string literal in SQL text; PostgreSQL's `E''` form when it has a backslash.
fn quoted_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// What the quoting functions do with their text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Quoting {
    Ident,
    Literal,
    Nullable,
}

/// `quote_ident(text)`, `quote_literal(x)` and `quote_nullable(x)`: text to put into SQL
/// text, quoted as PostgreSQL quotes it. `quote_nullable(NULL)` is the text `NULL`; the others
/// answer NULL for NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Quote {
    quoting: Quoting,
    signature: Signature,
}

impl ScalarUDFImpl for Quote {
    fn name(&self) -> &str {
        match self.quoting {
            Quoting::Ident => "quote_ident",
            Quoting::Literal => "quote_literal",
            Quoting::Nullable => "quote_nullable",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [_] => Ok(vec![DataType::Utf8]),
            _ => plan_err!("{} takes one argument", self.name()),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [text] = arrays.as_slice() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let out: arrow::array::StringArray = text
            .as_string::<i32>()
            .iter()
            .map(|v| match (v, self.quoting) {
                (Some(v), Quoting::Ident) => Some(quoted_ident(v)),
                (Some(v), _) => Some(quoted_literal(v)),
                (None, Quoting::Nullable) => Some("NULL".to_string()),
                (None, _) => None,
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `format(template, args…)`: PostgreSQL's `format`. `%s` writes an argument as text (NULL as
/// nothing), `%I` as a quoted identifier, `%L` as a quoted literal (NULL as `NULL`), `%%` a
/// percent sign; `%2$s` takes the second argument, and a width (`%10s`, `%-10s`, `%*s`) pads
/// it. Arguments are cast to text as `::text` casts them.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Format {
    signature: Signature,
}

impl ScalarUDFImpl for Format {
    fn name(&self) -> &str {
        "format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if arg_types.is_empty() {
            return plan_err!("format takes a template and its arguments");
        }
        Ok(vec![DataType::Utf8; arg_types.len()])
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some((template, values)) = arrays.split_first() else {
            return exec_err!("format takes a template");
        };
        let template = template.as_string::<i32>();
        let values: Vec<_> = values.iter().map(|a| a.as_string::<i32>()).collect();
        let mut out = arrow::array::StringBuilder::new();
        let mut written = 0;
        for row in 0..template.len() {
            if template.is_null(row) {
                out.append_null();
                continue;
            }
            let arg = |i: usize| {
                values
                    .get(i)
                    .map(|a| (!a.is_null(row)).then(|| a.value(row)))
            };
            let text = formatted(template.value(row), arg)?;
            written += text.len();
            if written > MAX_FORMATTED_BYTES {
                return exec_err!("format() would write more than {MAX_FORMATTED_BYTES} bytes");
            }
            out.append_value(text);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `template` filled from `arg(i)` (`None` past the last argument, `Some(None)` for a NULL).
fn formatted<'a>(
    template: &str,
    arg: impl Fn(usize) -> Option<Option<&'a str>>,
) -> DfResult<String> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    let mut next = 0;
    let number = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        let mut n: Option<usize> = None;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            chars.next();
            n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
        }
        n
    };
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        // %[n$][-][width|*|*n$]type
        let mut position = None;
        let mut left = false;
        let mut width: Option<i64> = None;
        let n = number(&mut chars);
        if let Some(n) = n {
            if chars.peek() == Some(&'$') {
                chars.next();
                position = Some(n);
            } else {
                width = Some(n as i64);
            }
        }
        if width.is_none() {
            while chars.peek() == Some(&'-') {
                chars.next();
                left = true;
            }
            if chars.peek() == Some(&'*') {
                chars.next();
                let from = match number(&mut chars) {
                    Some(0) => {
                        return exec_err!(
                            "format specifies argument 0, but arguments are numbered from 1"
                        );
                    }
                    Some(n) if chars.peek() == Some(&'$') => {
                        chars.next();
                        n - 1
                    }
                    Some(_) => return exec_err!("unterminated format() type specifier"),
                    None => next,
                };
                // The width is taken before the value, which follows it.
                next = from + 1;
                match arg(from) {
                    None => return exec_err!("too few arguments for format()"),
                    // A NULL width is no width.
                    Some(None) => width = Some(0),
                    Some(Some(w)) => match w.trim().parse::<i64>() {
                        Ok(w) => width = Some(w),
                        Err(_) => {
                            return exec_err!("format() width must be an integer, not {w:?}");
                        }
                    },
                }
            } else if let Some(n) = number(&mut chars) {
                width = Some(n as i64);
            }
        }
        let Some(kind) = chars.next() else {
            return exec_err!("unterminated format() type specifier");
        };
        let index = match position {
            Some(0) => {
                return exec_err!("format specifies argument 0, but arguments are numbered from 1");
            }
            Some(p) => p - 1,
            None => next,
        };
        next = index + 1;
        let Some(value) = arg(index) else {
            return exec_err!("too few arguments for format()");
        };
        let text = match (kind, value) {
            ('s', v) => v.unwrap_or("").to_string(),
            ('I', Some(v)) => quoted_ident(v),
            ('I', None) => {
                return exec_err!("null values cannot be formatted as an SQL identifier");
            }
            ('L', Some(v)) => quoted_literal(v),
            ('L', None) => "NULL".to_string(),
            (other, _) => return exec_err!("unrecognized format() type specifier \"{other}\""),
        };
        let width = width.unwrap_or(0);
        let left = left || width < 0;
        let pad = usize::try_from(width.unsigned_abs())
            .unwrap_or(usize::MAX)
            .saturating_sub(text.chars().count());
        if out.len() + pad + text.len() > MAX_FORMATTED_BYTES {
            return exec_err!("format() would write more than {MAX_FORMATTED_BYTES} bytes");
        }
        if !left {
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(&text);
        if left {
            out.extend(std::iter::repeat_n(' ', pad));
        }
    }
    Ok(out)
}

/// Most bytes `format` writes for one batch (and so for one row).
const MAX_FORMATTED_BYTES: usize = super::bounded::MAX_GENERATED_BYTES as usize;

#[cfg(test)]
mod quoting_tests {
    use super::*;

    #[test]
    fn format_follows_postgres() {
        let args = ["one", "two words", "O'Reilly", "5"];
        let arg = |i: usize| args.get(i).map(|a| Some(*a));
        // PostgreSQL 15.
        assert_eq!(formatted("%s-%s", arg).unwrap(), "one-two words");
        assert_eq!(
            formatted("%2$s %1$s %s", arg).unwrap(),
            "two words one two words"
        );
        assert_eq!(
            formatted("[%6s][%-6s]", arg).unwrap(),
            "[   one][two words]"
        );
        assert_eq!(
            formatted("%I.%L", |i| [Some("two words"), Some("O'Reilly")]
                .get(i)
                .copied())
            .unwrap(),
            "\"two words\".'O''Reilly'"
        );
        assert_eq!(formatted("100%%", arg).unwrap(), "100%");
        assert_eq!(
            formatted("[%*s]", |i| [Some("4"), Some("ab")].get(i).copied()).unwrap(),
            "[  ab]"
        );
        assert_eq!(
            formatted("%s|%L", |i| [None, None].get(i).copied()).unwrap(),
            "|NULL"
        );
        assert!(formatted("%s %s %s %s %s", arg).is_err());
        assert!(formatted("%x", arg).is_err());
        assert!(formatted("%I", |i| [None].get(i).copied()).is_err());
        assert!(formatted("%", arg).is_err());
        assert!(formatted("%999999999s", arg).is_err());
        // PostgreSQL 15: a NULL width is none, a positional width moves the next argument
        // after it, and '-' may repeat.
        let three = |i: usize| [Some("a"), Some("5"), Some("b")].get(i).copied();
        assert_eq!(formatted("%*2$s|", three).unwrap(), "    b|");
        assert_eq!(
            formatted("%*s|", |i| [None, Some("x")].get(i).copied()).unwrap(),
            "x|"
        );
        assert_eq!(formatted("%--3s|", arg).unwrap(), "one|");
    }

    #[test]
    fn quoting_follows_postgres() {
        assert_eq!(quoted_ident("abc_1"), "abc_1");
        assert_eq!(quoted_ident("a$b"), "\"a$b\"");
        assert_eq!(quoted_ident("xmltable"), "\"xmltable\"");
        assert_eq!(quoted_ident("Abc"), "\"Abc\"");
        assert_eq!(quoted_ident("select"), "\"select\"");
        assert_eq!(quoted_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quoted_ident(""), "\"\"");
        assert_eq!(quoted_literal("it's"), "'it''s'");
        assert_eq!(quoted_literal("a\\b"), "E'a\\\\b'");
    }
}

/// `current_setting(name [, missing_ok])`: a setting's value as text, as `SHOW name` answers
/// it: DataFusion's options by their names (`datafusion.execution.batch_size`), and
/// PostgreSQL's `TimeZone` (the session's time zone, `UTC` when none is set) and `DateStyle`
/// (`ISO, MDY`: how dates are written and read). An unknown name is an error, or NULL with
/// `missing_ok` true. Read while the statement is planned, from the session's options.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [_] => Ok(vec![DataType::Utf8]),
            [_, _] => Ok(vec![DataType::Utf8, DataType::Boolean]),
            _ => plan_err!("current_setting takes a setting's name and, optionally, missing_ok"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        let constant = |e: &Expr| match e {
            Expr::Literal(v, _) => Some(v.clone()),
            Expr::Cast(c) => match c.expr.as_ref() {
                Expr::Literal(v, _) => v.cast_to(c.field.data_type()).ok(),
                _ => None,
            },
            _ => None,
        };
        let name = match args.first().and_then(constant) {
            Some(ScalarValue::Utf8(Some(n))) => n,
            Some(ScalarValue::Utf8(None)) => {
                return Ok(ExprSimplifyResult::Simplified(lit(ScalarValue::Utf8(None))));
            }
            _ => return plan_err!("current_setting takes a constant setting name"),
        };
        let missing_ok = match args.get(1).map(constant) {
            None => false,
            Some(Some(ScalarValue::Boolean(b))) => b.unwrap_or(false),
            Some(_) => return plan_err!("current_setting's missing_ok must be a constant"),
        };
        let options = info.config_options();
        let value = match name.to_ascii_lowercase().as_str() {
            "timezone" | "time zone" => Some(
                options
                    .execution
                    .time_zone
                    .clone()
                    .filter(|z| !z.is_empty())
                    .unwrap_or_else(|| "UTC".into()),
            ),
            "datestyle" => Some("ISO, MDY".into()),
            key => options
                .entries()
                .into_iter()
                .find(|e| e.key == key)
                .map(|e| e.value.unwrap_or_default()),
        };
        match value {
            Some(v) => Ok(ExprSimplifyResult::Simplified(lit(v))),
            None if missing_ok => Ok(ExprSimplifyResult::Simplified(lit(ScalarValue::Utf8(None)))),
            None => plan_err!("unrecognized configuration parameter \"{name}\""),
        }
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        exec_err!("current_setting takes a constant setting name")
    }
}

/// `make_timestamp(year, month, day, hour, minute, seconds)`: a `TIMESTAMP` from its fields,
/// the seconds with their fraction (to the microsecond); a field out of range (February 30th,
/// 61 seconds) is an error, as in PostgreSQL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MakeTimestamp {
    signature: Signature,
}

impl ScalarUDFImpl for MakeTimestamp {
    fn name(&self) -> &str {
        "make_timestamp"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let number = |t: &DataType| t.is_numeric() || t.is_null();
        match arg_types {
            [y, mo, d, h, mi, s] if [y, mo, d, h, mi, s].into_iter().all(number) => {
                let mut types = vec![DataType::Int64; 5];
                types.push(DataType::Float64);
                Ok(types)
            }
            _ => plan_err!(
                "make_timestamp takes (year, month, day, hour, minute, seconds) as numbers"
            ),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Timestamp(
            arrow::datatypes::TimeUnit::Microsecond,
            None,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [y, mo, d, h, mi, s] = arrays.as_slice() else {
            return exec_err!("make_timestamp takes 6 arguments");
        };
        let ints: Vec<_> = [y, mo, d, h, mi]
            .into_iter()
            .map(|a| a.as_primitive::<Int64Type>())
            .collect();
        let seconds = s.as_primitive::<Float64Type>();
        let mut out = Vec::with_capacity(seconds.len());
        for row in 0..seconds.len() {
            if seconds.is_null(row) || ints.iter().any(|a| a.is_null(row)) {
                out.push(None);
                continue;
            }
            let f = |i: usize| ints[i].value(row);
            out.push(Some(timestamp_of(
                [f(0), f(1), f(2), f(3), f(4)],
                seconds.value(row),
            )?));
        }
        Ok(ColumnarValue::Array(Arc::new(
            arrow::array::TimestampMicrosecondArray::from(out),
        )))
    }
}

/// Microseconds since the epoch of `[year, month, day, hour, minute]` and `seconds`.
fn timestamp_of(fields: [i64; 5], seconds: f64) -> DfResult<i64> {
    let [year, month, day, hour, minute] = fields;
    // PostgreSQL's years have no 0: -1 is 1 BC, chrono's year 0.
    let proleptic = match year {
        0 => None,
        y if y < 0 => y.checked_add(1),
        y => Some(y),
    };
    let date = proleptic
        .and_then(|y| i32::try_from(y).ok())
        .zip(u32::try_from(month).ok())
        .zip(u32::try_from(day).ok())
        .and_then(|((y, m), d)| chrono::NaiveDate::from_ymd_opt(y, m, d));
    let Some(date) = date else {
        return exec_err!("date field value out of range: {year}-{month:02}-{day:02}");
    };
    // As PostgreSQL: 24:00:00 is the next midnight, and 60 seconds the next minute.
    let past_midnight = hour == 24 && (minute > 0 || seconds > 0.0);
    if !(0..=24).contains(&hour)
        || past_midnight
        || !(0..60).contains(&minute)
        || !(0.0..=60.0).contains(&seconds)
    {
        return exec_err!("time field value out of range: {hour}:{minute:02}:{seconds}");
    }
    let micros = (seconds * 1e6).round() as i64;
    let midnight = date
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_micros());
    let Some(midnight) = midnight else {
        return exec_err!("timestamp out of range");
    };
    Ok(midnight + (hour * 3600 + minute * 60) * 1_000_000 + micros)
}

/// What a `justify_*` function moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Justify {
    /// 24 hours into a day.
    Hours,
    /// 30 days into a month.
    Days,
    /// Both, with every field given one sign.
    Interval,
}

/// `justify_hours`, `justify_days` and `justify_interval`: an interval with each 24 hours read
/// as a day and/or each 30 days as a month, as PostgreSQL's functions of those names.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JustifyFn {
    justify: Justify,
    signature: Signature,
}

/// Nanoseconds in a day.
pub(super) const DAY_NANOS: i64 = 86_400_000_000_000;

fn justified(
    v: arrow::datatypes::IntervalMonthDayNano,
    how: Justify,
) -> Option<arrow::datatypes::IntervalMonthDayNano> {
    let (mut months, mut days, mut nanos) = (v.months, v.days, v.nanoseconds);
    if how != Justify::Days {
        days = days.checked_add(i32::try_from(nanos / DAY_NANOS).ok()?)?;
        nanos %= DAY_NANOS;
    }
    if how != Justify::Hours {
        months = months.checked_add(days / 30)?;
        days %= 30;
    }
    if how == Justify::Interval {
        if months > 0 && (days < 0 || (days == 0 && nanos < 0)) {
            days += 30;
            months -= 1;
        } else if months < 0 && (days > 0 || (days == 0 && nanos > 0)) {
            days -= 30;
            months += 1;
        }
    }
    if how == Justify::Days {
        if months > 0 && days < 0 {
            days += 30;
            months -= 1;
        } else if months < 0 && days > 0 {
            days -= 30;
            months += 1;
        }
    } else if days > 0 && nanos < 0 {
        nanos += DAY_NANOS;
        days -= 1;
    } else if days < 0 && nanos > 0 {
        nanos -= DAY_NANOS;
        days += 1;
    }
    Some(arrow::datatypes::IntervalMonthDayNano::new(
        months, days, nanos,
    ))
}

impl ScalarUDFImpl for JustifyFn {
    fn name(&self) -> &str {
        match self.justify {
            Justify::Hours => "justify_hours",
            Justify::Days => "justify_days",
            Justify::Interval => "justify_interval",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [DataType::Interval(_) | DataType::Null] => Ok(vec![DataType::Interval(
                arrow::datatypes::IntervalUnit::MonthDayNano,
            )]),
            _ => plan_err!("{} takes an interval", self.name()),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Interval(
            arrow::datatypes::IntervalUnit::MonthDayNano,
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [v] = arrays.as_slice() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let v = v.as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>();
        let mut out = Vec::with_capacity(v.len());
        for x in v.iter() {
            out.push(match x {
                None => None,
                Some(x) => match justified(x, self.justify) {
                    Some(j) => Some(j),
                    None => return exec_err!("interval out of range"),
                },
            });
        }
        Ok(ColumnarValue::Array(Arc::new(
            arrow::array::IntervalMonthDayNanoArray::from(out),
        )))
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;
    use arrow::datatypes::IntervalMonthDayNano as I;

    #[test]
    fn justify_follows_postgres() {
        let h = |n: i64| n * 3_600_000_000_000;
        // PostgreSQL 15: justify_hours('27 hours') = 1 day 03:00:00;
        // justify_days('35 days') = 1 mon 5 days; justify_interval('1 mon -1 hour') = 29 days 23:00:00.
        assert_eq!(
            justified(I::new(0, 0, h(27)), Justify::Hours),
            Some(I::new(0, 1, h(3)))
        );
        assert_eq!(
            justified(I::new(0, 35, 0), Justify::Days),
            Some(I::new(1, 5, 0))
        );
        assert_eq!(
            justified(I::new(1, 0, -h(1)), Justify::Interval),
            Some(I::new(0, 29, h(23)))
        );
        assert_eq!(
            justified(I::new(0, 1, -h(25)), Justify::Hours),
            Some(I::new(0, 0, -h(1)))
        );
        assert_eq!(justified(I::new(i32::MAX, 30, 0), Justify::Days), None);
    }

    #[test]
    fn make_timestamp_checks_its_fields() {
        // 2024-01-05 10:00:00.5
        assert_eq!(
            timestamp_of([2024, 1, 5, 10, 0], 0.5).unwrap(),
            1_704_448_800_500_000
        );
        assert!(timestamp_of([2024, 2, 30, 0, 0], 0.0).is_err());
        // PostgreSQL 15: 24:00:00 and 60 seconds carry over; year -44 is 44 BC; no year 0.
        assert_eq!(
            timestamp_of([2024, 1, 1, 24, 0], 0.0).unwrap(),
            timestamp_of([2024, 1, 2, 0, 0], 0.0).unwrap()
        );
        assert_eq!(
            timestamp_of([2024, 1, 1, 0, 0], 60.0).unwrap(),
            timestamp_of([2024, 1, 1, 0, 1], 0.0).unwrap()
        );
        assert!(timestamp_of([2024, 1, 1, 24, 1], 0.0).is_err());
        assert!(timestamp_of([2024, 1, 1, 0, 0], 60.5).is_err());
        assert!(timestamp_of([0, 1, 1, 0, 0], 0.0).is_err());
        assert_eq!(
            timestamp_of([-44, 3, 15, 0, 0], 0.0).unwrap(),
            chrono::NaiveDate::from_ymd_opt(-43, 3, 15)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros()
        );
        assert!(timestamp_of([i64::MAX, 1, 1, 0, 0], 0.0).is_err());
    }
}
