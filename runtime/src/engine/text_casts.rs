//! Timestamps and floats cast to text as PostgreSQL writes them.
//!
//! Arrow's cast writes a timestamp in ISO 8601's `T` form (`2024-01-05T10:00:00`, with
//! `+00:00` when zoned) and a float with a trailing `.0` (`2::double::text` was `2.0`), so
//! `'at ' || ts`, `concat(…)`, `ts::text LIKE '2024-01-05 %'` and `x::text = '2'` read
//! differently from PostgreSQL. [`TextCasts`], run once types are coerced (which adds the casts
//! of `||` and `concat`), writes each such cast as [`postgres_text`] of its operand:
//! - a timestamp as `2024-01-05 10:00:00`, its fraction without trailing zeros
//!   (`10:00:00.5`), a zoned one in its own zone with the offset PostgreSQL prints (`+00`,
//!   `+05:30`), a year before 1 as PostgreSQL's `BC` year;
//! - a time of day without trailing zeros in its fraction (`10:00:00.5`, Arrow wrote
//!   `10:00:00.500`);
//! - an interval as PostgreSQL's default `IntervalStyle` writes it (`1 day 03:00:00`, Arrow
//!   wrote `1 days 3 hours`), a difference of timestamps as days and a time of day;
//! - an array as PostgreSQL's literal: `{1,2,NULL}`, `{"a b",c}`, `{{1,2},{3,4}}` (Arrow
//!   wrote `[1, 2, ]`);
//! - a float in the shortest digits that read back the same, as `float8out` writes them: `2`,
//!   `0.1`, `1e+15`, `1.5e-05`, `NaN`, `Infinity`: exponent form below 10^-4 and from 10^15
//!   (10^6 for a `REAL`).
//!
//! The result keeps the type the cast asked for, and the column its name.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type, TimeUnit};
use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::{Cast, ScalarFunction, TryCast};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use super::bounded::within_generated_bound;
use super::checked::{any_expression, rewrite_expressions};
use super::postgres_functions::DAY_NANOS;

/// The rule; see the module's documentation.
#[derive(Debug, Default)]
pub(super) struct TextCasts;

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn written_our_way(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..)
            | DataType::Float64
            | DataType::Float32
            | DataType::Interval(_)
            | DataType::Duration(_)
            | DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::List(_)
            | DataType::LargeList(_)
    )
}

impl AnalyzerRule for TextCasts {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> DfResult<LogicalPlan> {
        let to_text = |e: &Expr| match e {
            Expr::Cast(c) => is_text(c.field.data_type()),
            Expr::TryCast(c) => is_text(c.field.data_type()),
            _ => false,
        };
        // A zoned timestamp is written in the session's time zone, as PostgreSQL writes a
        // `timestamptz`.
        let zone = config.execution.time_zone.clone().filter(|z| !z.is_empty());
        rewrite_expressions(
            plan,
            |node| any_expression(node, to_text),
            |e, schema| rewrite(e, schema, zone.as_deref()),
        )
    }

    fn name(&self) -> &str {
        "apiary_text_casts"
    }
}

fn rewrite(e: Expr, schema: &DFSchema, zone: Option<&str>) -> DfResult<Transformed<Expr>> {
    let (inner, field, try_cast) = match &e {
        Expr::Cast(Cast { expr, field }) => (expr, field, false),
        Expr::TryCast(TryCast { expr, field }) => (expr, field, true),
        _ => return Ok(Transformed::no(e)),
    };
    if !is_text(field.data_type())
        || matches!(inner.as_ref(), Expr::ScalarFunction(f) if f.name() == NAME)
    {
        return Ok(Transformed::no(e));
    }
    let zoned = match inner.get_type(schema) {
        Ok(t) if written_our_way(&t) => matches!(t, DataType::Timestamp(_, Some(_))),
        _ => return Ok(Transformed::no(e)),
    };
    let mut args = vec![inner.as_ref().clone()];
    if let (true, Some(zone)) = (zoned, zone) {
        args.push(datafusion::logical_expr::lit(zone));
    }
    let text = Expr::ScalarFunction(ScalarFunction::new_udf(function(), args));
    let field = field.clone();
    Ok(Transformed::yes(if try_cast {
        Expr::TryCast(TryCast {
            expr: Box::new(text),
            field,
        })
    } else {
        Expr::Cast(Cast {
            expr: Box::new(text),
            field,
        })
    }))
}

/// [`postgres_text`]'s name, by which it travels to other nodes.
const NAME: &str = "postgres_text";

/// The function, by the name it travels under.
pub(crate) fn function_named(name: &str) -> Option<Arc<ScalarUDF>> {
    (name == NAME).then(function)
}

fn function() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(PostgresText {
        signature: Signature::one_of(
            vec![
                datafusion::logical_expr::TypeSignature::Any(1),
                datafusion::logical_expr::TypeSignature::Any(2),
            ],
            Volatility::Immutable,
        ),
    }))
}

/// `postgres_text(x [, zone])`: a timestamp, time, interval or float as PostgreSQL writes it,
/// a zoned timestamp in `zone` when given; see the module's documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PostgresText {
    signature: Signature,
}

impl ScalarUDFImpl for PostgresText {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args {
            [t] if written_our_way(t) => Ok(DataType::Utf8),
            [DataType::Timestamp(_, Some(_)), z] if is_text(z) => Ok(DataType::Utf8),
            _ => plan_err!("{NAME}() takes a timestamp, a time, an interval or a float"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let scalar = matches!(args.args[..], [ColumnarValue::Scalar(_), ..]);
        let (arg, zone) = match args.args.as_slice() {
            [arg] => (arg, None),
            [arg, ColumnarValue::Scalar(z)] => match z.try_as_str() {
                Some(Some(z)) => (arg, Some(z.parse::<Tz>()?)),
                _ => return plan_err!("{NAME}()'s zone must be a constant text"),
            },
            _ => return plan_err!("{NAME}() takes a value and a zone"),
        };
        let a = arg.to_array(1)?;
        let text = written(&a, zone)?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&text, 0)?)
        } else {
            ColumnarValue::Array(text)
        })
    }
}

/// Each value of `a` as text, a zoned timestamp in `session_zone` when given (else its own).
fn written(a: &ArrayRef, session_zone: Option<Tz>) -> DfResult<ArrayRef> {
    let mut out = StringBuilder::with_capacity(a.len(), a.len() * 20);
    let mut each = |text: Option<String>| out.append_option(text);
    match a.data_type() {
        DataType::Float64 => a
            .as_primitive::<Float64Type>()
            .iter()
            .for_each(|v| each(v.map(float))),
        DataType::Float32 => a
            .as_primitive::<Float32Type>()
            .iter()
            .for_each(|v| each(v.map(real))),
        DataType::Timestamp(unit, zone) => {
            let zone = match (zone, session_zone) {
                (Some(_), Some(session)) => Some(session),
                (Some(z), None) => Some(z.parse::<Tz>()?),
                (None, _) => None,
            };
            // A timestamp's value is its count of units since the epoch.
            let per_second = 1_000_000_000 / nanos_per(unit);
            let raw = arrow::compute::cast(a, &DataType::Int64)?;
            for v in raw.as_primitive::<Int64Type>().iter() {
                match v {
                    None => each(None),
                    Some(v) => each(Some(timestamp(v, per_second, zone.as_ref())?)),
                }
            }
        }
        DataType::Interval(_) => {
            let months_days_nanos = arrow::compute::cast(
                a,
                &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
            )?;
            months_days_nanos
                .as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>()
                .iter()
                .for_each(|v| {
                    each(
                        v.map(|v| interval(v.months, i64::from(v.days), i128::from(v.nanoseconds))),
                    )
                });
        }
        DataType::Duration(unit) => {
            // A difference of timestamps: PostgreSQL's interval of days and a time of day. Read
            // as raw units: a cast to nanoseconds gave NULL past 292 years.
            let (unit, day) = (i128::from(nanos_per(unit)), i128::from(DAY_NANOS));
            let raw = arrow::compute::cast(a, &DataType::Int64)?;
            raw.as_primitive::<Int64Type>().iter().for_each(|v| {
                each(v.map(|v| {
                    let nanos = i128::from(v) * unit;
                    interval(0, (nanos / day) as i64, nanos % day)
                }))
            });
        }
        DataType::Time32(_) | DataType::Time64(_) => {
            let nanos = arrow::compute::cast(a, &DataType::Time64(TimeUnit::Nanosecond))?;
            nanos
                .as_primitive::<arrow::datatypes::Time64NanosecondType>()
                .iter()
                .for_each(|v| each(v.map(|v| interval(0, 0, i128::from(v)))));
        }
        DataType::List(_) => {
            array_literals(a.as_list::<i32>(), session_zone, &mut each)?;
        }
        DataType::LargeList(_) => {
            array_literals(a.as_list::<i64>(), session_zone, &mut each)?;
        }
        other => return exec_err!("{NAME}() cannot write {other}"),
    }
    Ok(Arc::new(out.finish()))
}

/// Each list of `lists` as PostgreSQL's array literal, given to `each` (`None` for NULL),
/// bounded at [`within_generated_bound`]'s size for the batch. Only the elements the lists
/// reach are written: a slice of a larger array (a window's batch) holds all of its values.
fn array_literals<O: arrow::array::OffsetSizeTrait>(
    lists: &arrow::array::GenericListArray<O>,
    session_zone: Option<Tz>,
    each: &mut impl FnMut(Option<String>),
) -> DfResult<()> {
    let offsets = lists.offsets();
    let first = offsets.first().map_or(0, |o| o.as_usize());
    let last = offsets.last().map_or(0, |o| o.as_usize());
    let values = lists.values().slice(first, last - first);
    let (elements, nested) = element_texts(&values, session_zone)?;
    let elements = elements.as_string::<i32>();
    let mut bytes = 0_u128;
    for (i, range) in offsets.windows(2).enumerate() {
        let range = range[0].as_usize() - first..range[1].as_usize() - first;
        let text = lists
            .is_valid(i)
            .then(|| array_literal(elements, nested, range));
        bytes += text.as_ref().map_or(0, |t| t.len() as u128);
        within_generated_bound("a cast to text", bytes)?;
        each(text);
    }
    Ok(())
}

/// An array's elements as PostgreSQL writes them inside one: as they cast to text, a boolean
/// as `t`/`f`, an array nested in braces (then `true`: never quoted).
fn element_texts(values: &ArrayRef, session_zone: Option<Tz>) -> DfResult<(ArrayRef, bool)> {
    // Each element writes at least a character and a separator: refused before writing any.
    within_generated_bound("a cast to text", 2 * values.len() as u128)?;
    let nested = matches!(
        values.data_type(),
        DataType::List(_) | DataType::LargeList(_)
    );
    let texts = match values.data_type() {
        t if written_our_way(t) => written(values, session_zone)?,
        DataType::Boolean => Arc::new(
            values
                .as_boolean()
                .iter()
                .map(|b| b.map(|b| if b { "t" } else { "f" }))
                .collect::<arrow::array::StringArray>(),
        ),
        _ => arrow::compute::cast(values, &DataType::Utf8)?,
    };
    Ok((texts, nested))
}

/// The elements `range` of `elements` as PostgreSQL's array literal: `{1,2,NULL}`, an element
/// in double quotes (with `"` and `\` escaped) when it is empty, `NULL`, or holds a brace, a
/// comma, a quote, a backslash or white space; a `nested` array as it is.
fn array_literal(
    elements: &arrow::array::StringArray,
    nested: bool,
    range: std::ops::Range<usize>,
) -> String {
    let mut out = String::from("{");
    for (n, i) in range.enumerate() {
        if n > 0 {
            out.push(',');
        }
        if elements.is_null(i) {
            out.push_str("NULL");
            continue;
        }
        let text = elements.value(i);
        let quoted = !nested
            && (text.is_empty()
                || text.eq_ignore_ascii_case("NULL")
                || text.chars().any(|c| {
                    matches!(c, '{' | '}' | ',' | '"' | '\\' | '\x0b') || c.is_ascii_whitespace()
                }));
        if quoted {
            out.push('"');
            for c in text.chars() {
                if matches!(c, '"' | '\\') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(text);
        }
    }
    out.push('}');
    out
}

/// `v` as `float8out` writes it: shortest round-trip digits, in exponent form below 10^-4 and
/// from 10^15.
fn float(v: f64) -> String {
    float_digits(&format!("{v:e}"), v.is_finite(), v.is_nan(), 15).unwrap_or_else(|| v.to_string())
}

/// `v` as `float4out` writes it: its own shortest digits (0.1 as a `REAL` is not the double
/// 0.100000001490116), in exponent form from 10^6.
fn real(v: f32) -> String {
    float_digits(&format!("{v:e}"), v.is_finite(), v.is_nan(), 6).unwrap_or_else(|| v.to_string())
}

/// Lays out Rust's shortest `{:e}` form (`-1.2345e-7`) as PostgreSQL does.
fn float_digits(e_form: &str, finite: bool, nan: bool, digits: i32) -> Option<String> {
    if nan {
        return Some("NaN".into());
    }
    if !finite {
        return Some(
            if e_form.starts_with('-') {
                "-Infinity"
            } else {
                "Infinity"
            }
            .into(),
        );
    }
    let (mantissa, exponent) = e_form.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let figures: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if figures.chars().all(|c| c == '0') {
        return Some(format!("{sign}0"));
    }
    let mut out = String::from(sign);
    if exponent < -4 || exponent >= digits {
        out.push_str(&figures[..1]);
        if figures.len() > 1 {
            out.push('.');
            out.push_str(&figures[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.unsigned_abs()
        );
    } else if exponent >= 0 {
        let whole = usize::try_from(exponent).ok()? + 1;
        if figures.len() <= whole {
            out.push_str(&figures);
            out.push_str(&"0".repeat(whole - figures.len()));
        } else {
            out.push_str(&figures[..whole]);
            out.push('.');
            out.push_str(&figures[whole..]);
        }
    } else {
        out.push_str("0.");
        out.push_str(&"0".repeat(usize::try_from(-exponent - 1).ok()?));
        out.push_str(&figures);
    }
    Some(out)
}

/// An interval as PostgreSQL writes it (`IntervalStyle` postgres): `1 year 2 mons 3 days
/// 04:05:06.5`, `-1 days +02:00:00`, `00:00:00` when empty.
fn interval(months: i32, days: i64, nanos: i128) -> String {
    let mut out = String::new();
    let mut empty = true;
    let mut after_negative = false;
    let mut part = |value: i64, unit: &str, out: &mut String| {
        if value == 0 {
            return;
        }
        let _ = write!(
            out,
            "{}{}{value} {unit}{}",
            if empty { "" } else { " " },
            if after_negative && value > 0 { "+" } else { "" },
            if value == 1 { "" } else { "s" }
        );
        after_negative = value < 0;
        empty = false;
    };
    part(i64::from(months / 12), "year", &mut out);
    part(i64::from(months % 12), "mon", &mut out);
    part(days, "day", &mut out);
    if empty || nanos != 0 {
        let sign = if nanos < 0 {
            "-"
        } else if after_negative {
            "+"
        } else {
            ""
        };
        let n = nanos.unsigned_abs();
        let (seconds, fraction) = (n / 1_000_000_000, n % 1_000_000_000);
        let _ = write!(
            out,
            "{}{sign}{:02}:{:02}:{:02}",
            if empty { "" } else { " " },
            seconds / 3600,
            seconds % 3600 / 60,
            seconds % 60
        );
        if fraction > 0 {
            let digits = format!("{fraction:09}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
    }
    out
}

/// Nanoseconds in one `unit`.
pub(super) fn nanos_per(unit: &TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// `v` units of `1 / per_second` s since the epoch, as PostgreSQL writes a timestamp (in
/// `zone`, with its offset, when zoned).
fn timestamp(v: i64, per_second: i64, zone: Option<&Tz>) -> DfResult<String> {
    let (seconds, part) = (v.div_euclid(per_second), v.rem_euclid(per_second));
    let nanos = part * (1_000_000_000 / per_second);
    let Some(utc) = DateTime::from_timestamp(seconds, nanos as u32) else {
        return exec_err!("timestamp out of range: {v}");
    };
    let (local, offset) = match zone {
        Some(z) => {
            let offset = z.offset_from_utc_datetime(&utc.naive_utc()).fix();
            let Some(local) = utc.naive_utc().checked_add_offset(offset) else {
                return exec_err!("timestamp out of range: {v}");
            };
            (local, Some(offset.local_minus_utc()))
        }
        None => (utc.naive_utc(), None),
    };
    let year = local.year();
    let mut out = String::with_capacity(32);
    let shown = if year < 1 { 1 - year } else { year };
    let _ = write!(
        out,
        "{shown:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second()
    );
    let fraction = local.nanosecond() % 1_000_000_000;
    if fraction > 0 {
        let digits = format!("{fraction:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    if let Some(offset) = offset {
        let sign = if offset < 0 { '-' } else { '+' };
        let offset = offset.unsigned_abs();
        let _ = write!(out, "{sign}{:02}", offset / 3600);
        if offset % 3600 != 0 {
            let _ = write!(out, ":{:02}", offset % 3600 / 60);
        }
        if offset % 60 != 0 {
            let _ = write!(out, ":{:02}", offset % 60);
        }
    }
    if year < 1 {
        out.push_str(" BC");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_postgres_writes_them() {
        // PostgreSQL 15, float8out.
        for (v, text) in [
            (2.0, "2"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (1e300, "1e+300"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(float(v), text, "{v}");
        }
        // A REAL: 10^6 starts the exponent form, and its own digits.
        let reals: ArrayRef = Arc::new(arrow::array::Float32Array::from(vec![
            0.1f32, 1234567.0, 100000.0,
        ]));
        let written = written(&reals, None).unwrap();
        let written = written.as_string::<i32>();
        assert_eq!(written.value(0), "0.1");
        assert_eq!(written.value(1), "1.234567e+06");
        assert_eq!(written.value(2), "100000");
    }

    #[test]
    fn intervals_are_written_as_postgres_writes_them() {
        let h = |n: i128| n * 3_600_000_000_000;
        // PostgreSQL 15.
        assert_eq!(interval(0, 1, h(3)), "1 day 03:00:00");
        assert_eq!(interval(0, 0, 0), "00:00:00");
        assert_eq!(interval(14, 3, 0), "1 year 2 mons 3 days");
        assert_eq!(interval(0, -1, h(2)), "-1 days +02:00:00");
        assert_eq!(interval(0, 0, -1_500_000_000), "-00:00:01.5");
        assert_eq!(interval(-13, 2, 0), "-1 years -1 mons +2 days");
        assert_eq!(interval(0, 0, h(30)), "30:00:00");
    }

    #[test]
    fn timestamps_are_written_as_postgres_writes_them() {
        let utc: Tz = "+00:00".parse().unwrap();
        let india: Tz = "Asia/Kolkata".parse().unwrap();
        let micros = 1_704_448_800_000_000; // 2024-01-05 10:00:00 UTC
        assert_eq!(
            timestamp(micros, 1_000_000, None).unwrap(),
            "2024-01-05 10:00:00"
        );
        assert_eq!(
            timestamp(micros + 500_000, 1_000_000, None).unwrap(),
            "2024-01-05 10:00:00.5"
        );
        assert_eq!(
            timestamp(micros + 1, 1_000_000, Some(&utc)).unwrap(),
            "2024-01-05 10:00:00.000001+00"
        );
        assert_eq!(
            timestamp(micros, 1_000_000, Some(&india)).unwrap(),
            "2024-01-05 15:30:00+05:30"
        );
        // Past chrono's last year in a zone ahead of UTC: an error, not a panic.
        let five: Tz = "+05:00".parse().unwrap();
        assert!(timestamp(8_210_266_876_799_000_000, 1_000_000, Some(&five)).is_err());
        // Before the epoch, and before year 1 (PostgreSQL: 0001-12-31 … BC is year 0).
        assert_eq!(timestamp(-1, 1, None).unwrap(), "1969-12-31 23:59:59");
        assert_eq!(
            timestamp(-62_135_596_800 - 86_400, 1, None).unwrap(),
            "0001-12-31 00:00:00 BC"
        );
    }
}
