//! Values a Delta table cannot hold as written, refused before a cell is written: other Delta
//! readers must read every frame, and delta-rs's own writer must not meet them. Rows Apiary
//! writes are checked as batches ([`check_writable`]); the values an UPDATE or a MERGE computes,
//! which delta-rs writes itself, are checked as they are computed ([`checked`]).
//!
//! - A decimal with more digits than its type holds (Arrow's arithmetic checks only that it fits
//!   in 128 bits): nothing could read the column back.
//! - Dates and timestamps outside the years 0001–9999 (Delta's range). delta-rs's statistics
//!   writer panicked on the largest `DATE` (the ingest's stream was reset, an empty frame left
//!   behind), and a frame holding year −1 could not be read by delta-rs Python at all.
//! - An empty string as a partition value: the Delta protocol reads an empty partition value
//!   as NULL, so other readers answered NULL where Apiary answered `''`.
//! - The string `__HIVE_DEFAULT_PARTITION__` as a partition value: delta-rs writes it as NULL.
//! - A partition value whose directory name (`column=value`, escaped) is longer than a file
//!   name may be (255 bytes): the write failed deep in the object store as an internal error.
//! - A string longer than its column's declared `VARCHAR(n)` or `CHAR(n)` (see
//!   [`crate::lengths`]); one whose excess characters are spaces is cut to length instead.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Decimal128Type, Decimal256Type, DecimalType, Field, Int64Type, TimeUnit,
};
use datafusion::common::{ScalarValue, internal_err};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{Error, Result};
use crate::lengths::{Declared, fit};

/// Days from 1970-01-01 to 0001-01-01 and to 9999-12-31.
const FIRST_DAY: i64 = -719_162;
const LAST_DAY: i64 = 2_932_896;
const SECONDS_PER_DAY: i64 = 86_400;

/// The directory name Hive-style writers give a NULL partition value: delta-rs reads the value
/// written as NULL.
const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// The longest directory name a partition value may make.
const MAX_PARTITION_DIR_BYTES: usize = 255;

/// `batch` (already in the frame's schema) as the table takes it: refused if it holds a value
/// the table cannot hold, with strings cut to their declared lengths where PostgreSQL cuts them.
pub(crate) fn writable(batch: RecordBatch, partition_columns: &[String]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut columns: Option<Vec<ArrayRef>> = None;
    for (i, (field, column)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        let partition = partition_columns.iter().any(|c| c == field.name());
        // Cut to length first: a partition value is checked as it is written.
        let cut = match Declared::of(field) {
            Some(declared) => fit(field.name(), declared, column)?,
            None => None,
        };
        check_column(
            field.name(),
            cut.as_ref().unwrap_or(column).as_ref(),
            partition,
        )?;
        if let Some(cut) = cut {
            columns.get_or_insert_with(|| batch.columns().to_vec())[i] = cut;
        }
    }
    match columns {
        None => Ok(batch),
        Some(columns) => Ok(RecordBatch::try_new(schema, columns)?),
    }
}

/// Refuse `column`'s values if the table cannot hold one of them (as a partition column's
/// values if `partition`).
fn check_column(name: &str, column: &dyn Array, partition: bool) -> Result<()> {
    if let Some(value) = decimal_out_of_range(column) {
        return Err(Error::InvalidArgument(format!(
            "column {name} holds {value}, more digits than its type {} holds",
            column.data_type()
        )));
    }
    if let Some(days) = day_range(column)?
        && (days.0 < FIRST_DAY || days.1 > LAST_DAY)
    {
        return Err(Error::InvalidArgument(format!(
            "column {name} holds a date outside the years 0001 to 9999, which Delta tables \
             cannot hold"
        )));
    }
    if !partition {
        return Ok(());
    }
    // delta-rs reads a partition column dictionary-encoded.
    if let DataType::Dictionary(_, values) = column.data_type() {
        let plain = arrow::compute::cast(column, values)
            .map_err(|e| Error::Internal(format!("reading a dictionary's values: {e}")))?;
        return check_column(name, plain.as_ref(), partition);
    }
    // delta-rs writes a float's partition value in full (1e308 is 309 digits, 5e-324 is 326):
    // its directory name was too long for the file system, an INTERNAL error and a panic.
    match column.data_type() {
        DataType::Float32 => {
            let longest =
                longest_float(name, column.as_primitive::<arrow::datatypes::Float32Type>());
            return directory_fits(name, longest);
        }
        DataType::Float64 => {
            let longest =
                longest_float(name, column.as_primitive::<arrow::datatypes::Float64Type>());
            return directory_fits(name, longest);
        }
        _ => {}
    }
    let strings: Box<dyn Iterator<Item = Option<&str>>> = match column.data_type() {
        DataType::Utf8 => Box::new(column.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(column.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(column.as_string_view().iter()),
        _ => return Ok(()),
    };
    for value in strings.flatten() {
        if value.is_empty() || value == HIVE_NULL {
            return Err(Error::InvalidArgument(format!(
                "partition column {name} cannot hold {}: Delta tables read it as NULL (write \
                 NULL, or another value)",
                match value.is_empty() {
                    true => "an empty string".to_string(),
                    false => format!("'{HIVE_NULL}'"),
                }
            )));
        }
        directory_fits(name, escaped_len(value))?;
    }
    Ok(())
}

/// Refuse a value of partition column `name` written in `bytes` bytes if its directory name
/// (`name=value`) would be longer than a file name may be.
fn directory_fits(name: &str, bytes: usize) -> Result<()> {
    let dir = name.len() + 1 + bytes;
    if dir > MAX_PARTITION_DIR_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a value of partition column {name} is too long: its directory name would be {dir} \
             bytes, and at most {MAX_PARTITION_DIR_BYTES} are allowed"
        )));
    }
    Ok(())
}

/// A value of `column`, formatted, that has more digits than its decimal type holds, if it is
/// a decimal column and holds one. Arrow's arithmetic checks only that a result fits in its
/// 128 or 256 bits. Its smallest and largest values are checked (vectorised) first; only a
/// column that fails that is looked at row by row.
pub fn decimal_out_of_range(column: &dyn Array) -> Option<String> {
    fn first_out<T: DecimalType>(column: &dyn Array, precision: u8, scale: i8) -> Option<String> {
        let values = column.as_primitive::<T>();
        let fits =
            |v: Option<T::Native>| v.is_none_or(|v| T::is_valid_decimal_precision(v, precision));
        if fits(arrow::compute::min(values)) && fits(arrow::compute::max(values)) {
            return None;
        }
        let out = values
            .iter()
            .flatten()
            .find(|v| !T::is_valid_decimal_precision(*v, precision))?;
        Some(T::format_decimal(out, precision.saturating_add(1), scale))
    }
    match column.data_type() {
        DataType::Decimal128(p, s) => first_out::<Decimal128Type>(column, *p, *s),
        DataType::Decimal256(p, s) => first_out::<Decimal256Type>(column, *p, *s),
        _ => None,
    }
}

/// What a refused value's error says first, so that it is told apart from the engine's own
/// errors once delta-rs has passed it on as text.
pub(crate) const REFUSED: &str = "value refused: ";

/// `value`, the new value of `column` (a stored field) an UPDATE or MERGE computes, checked as
/// an INSERT's values are ([`writable`]): delta-rs writes those rows itself, past that check, and
/// wrote an empty partition value (read back as NULL by other engines), or panicked in its
/// statistics writer on a date past year 9999.
pub(crate) fn checked(value: Expr, column: &Field, partition: bool) -> Expr {
    let udf = ScalarUDF::new_from_impl(Writable {
        column: column.name().to_string(),
        partition,
        declared: Declared::of(column),
        signature: Signature::any(1, Volatility::Immutable),
    });
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), vec![value]))
}

/// The check of [`checked`]: its argument, unchanged, or an error.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Writable {
    column: String,
    partition: bool,
    declared: Option<Declared>,
    signature: Signature,
}

impl ScalarUDFImpl for Writable {
    fn name(&self) -> &str {
        "apiary_writable"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types {
            [t] => Ok(t.clone()),
            _ => internal_err!("apiary_writable takes one argument"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Some(value) = args.args.into_iter().next() else {
            return internal_err!("apiary_writable takes one argument");
        };
        let refused = |e: Error| {
            DataFusionError::Execution(match e {
                Error::InvalidArgument(m) => format!("{REFUSED}{m}"),
                other => other.to_string(),
            })
        };
        let array = value.to_array(1)?;
        let cut = match self.declared {
            Some(declared) => fit(&self.column, declared, &array).map_err(refused)?,
            None => None,
        };
        check_column(
            &self.column,
            cut.as_ref().unwrap_or(&array).as_ref(),
            self.partition,
        )
        .map_err(refused)?;
        Ok(match cut {
            None => value,
            Some(cut) => match value {
                ColumnarValue::Scalar(_) => {
                    ColumnarValue::Scalar(ScalarValue::try_from_array(&cut, 0)?)
                }
                ColumnarValue::Array(_) => ColumnarValue::Array(cut),
            },
        })
    }
}

/// Bytes of the longest value of a float column as a partition directory names it (Rust's
/// `Display`, as delta-rs writes it), or an upper bound of it when `name` leaves room for any
/// value of a usual magnitude: only values outside 1e-5 to 1e15 are then written out.
fn longest_float<T>(name: &str, column: &arrow::array::PrimitiveArray<T>) -> usize
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: std::fmt::Display + Into<f64>,
{
    /// Longest `Display` of a float of magnitude 1e-5 to 1e15: sign, 15 integer digits, the
    /// point, 4 zeros and 17 significant digits.
    const USUAL: usize = 38;
    let all = name.len() + 1 + USUAL > MAX_PARTITION_DIR_BYTES;
    // (Values left out are at most USUAL bytes, which `name` leaves room for.)
    column
        .iter()
        .flatten()
        .filter(|v| {
            let m = (*v).into().abs();
            all || !(m == 0.0 || (1e-5..1e15).contains(&m))
        })
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(0)
}

/// Bytes of `value` once escaped for a path, at most: a byte that is not a plain ASCII letter,
/// digit, `-`, `_` or `.` may become `%XX`.
fn escaped_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                1
            } else {
                3
            }
        })
        .sum()
}

/// The first and last day (since 1970-01-01) a date or timestamp column holds, if it is one
/// and holds any value: its values as integers (a reinterpretation for all but `Date32`), their
/// min and max, in days.
fn day_range(column: &dyn Array) -> Result<Option<(i64, i64)>> {
    let per_day = match column.data_type() {
        DataType::Date32 => 1,
        DataType::Date64 => SECONDS_PER_DAY * 1_000,
        DataType::Timestamp(unit, _) => {
            SECONDS_PER_DAY
                * match unit {
                    TimeUnit::Second => 1,
                    TimeUnit::Millisecond => 1_000,
                    TimeUnit::Microsecond => 1_000_000,
                    TimeUnit::Nanosecond => 1_000_000_000,
                }
        }
        _ => return Ok(None),
    };
    let ints = arrow::compute::cast(column, &DataType::Int64)
        .map_err(|e| Error::Internal(format!("reading dates as integers: {e}")))?;
    let ints = ints.as_primitive::<Int64Type>();
    Ok(arrow::compute::min(ints)
        .zip(arrow::compute::max(ints))
        .map(|(lo, hi)| (lo.div_euclid(per_day), hi.div_euclid(per_day))))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(field: Field, array: Arc<dyn Array>) -> RecordBatch {
        RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array]).unwrap()
    }

    #[test]
    fn dates_outside_delta_years_are_refused() {
        let ok = batch(
            Field::new("d", DataType::Date32, true),
            Arc::new(Date32Array::from(vec![
                Some(FIRST_DAY as i32),
                None,
                Some(LAST_DAY as i32),
            ])),
        );
        assert!(writable(ok, &[]).is_ok());
        for day in [i32::MAX, (FIRST_DAY - 1) as i32, (LAST_DAY + 1) as i32] {
            let bad = batch(
                Field::new("d", DataType::Date32, true),
                Arc::new(Date32Array::from(vec![day])),
            );
            assert!(writable(bad, &[]).is_err(), "{day}");
        }
        let before_year_one = batch(
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Arc::new(TimestampMicrosecondArray::from(vec![
                (FIRST_DAY - 1) * 86_400_000_000,
            ])),
        );
        assert!(writable(before_year_one, &[]).is_err());
    }

    #[test]
    fn empty_and_overlong_partition_values_are_refused() {
        let values = |v: Vec<Option<&str>>| {
            batch(
                Field::new("p", DataType::Utf8, true),
                Arc::new(StringArray::from(v)),
            )
        };
        assert!(writable(values(vec![Some("eu"), None]), &["p".into()]).is_ok());
        assert!(writable(values(vec![Some("")]), &["p".into()]).is_err());
        // Not a partition column: any string.
        assert!(writable(values(vec![Some("")]), &[]).is_ok());
        let long = "x".repeat(300);
        assert!(writable(values(vec![Some(&long)]), &["p".into()]).is_err());
        let accents = "é".repeat(60); // 120 bytes, escaped to 360
        assert!(writable(values(vec![Some(&accents)]), &["p".into()]).is_err());
    }
}
