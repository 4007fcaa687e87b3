//! Per-cell column statistics for a frame scan, read from the Delta log (no Parquet footer is
//! opened): row count, null count, min/max and an in-memory byte size per column, in the shape
//! DataFusion's own `ListingTable` gives its optimizer, so join order, build sides and filter
//! selectivity are chosen from the same figures.
//!
//! ```text
//!  Delta log (stats_parsed per add action) ──▶ one column of min / max / nullCount per file
//!  cell i ──▶ Statistics { rows, per column: nulls (exact), min/max (inexact), bytes }
//! ```
//!
//! Min and max are always *inexact*: Delta truncates long strings and stores timestamps in
//! milliseconds, so they bound the values but need not be one of them. That keeps DataFusion
//! from answering `MIN`/`MAX` from the log alone, while pruning and selectivity still use them.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, UInt64Array};
use arrow::datatypes::{DataType, Schema};
use datafusion::common::stats::Precision;
use datafusion::common::{Column, ColumnStatistics, ScalarValue, Statistics};
use datafusion::datasource::physical_plan::FileGroup;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::pruning::PruningStatistics;

/// The statistics columns of a snapshot's log, one entry per file column of the scan.
pub(crate) struct LogColumnStats {
    columns: Vec<ColumnArrays>,
}

struct ColumnArrays {
    data_type: DataType,
    min: Option<ArrayRef>,
    max: Option<ArrayRef>,
    nulls: Option<ArrayRef>,
}

impl LogColumnStats {
    /// Reads min and max of each of `file_schema`'s columns from `bounds` (any
    /// [`PruningStatistics`] over the snapshot's files, in log order) and null counts from
    /// `null_counts` (each file's `nullCount` object, same order).
    ///
    /// Null counts are not taken from `bounds`: delta-rs reads them typed as the column, which
    /// gives nothing for any column that is not a long.
    pub(crate) fn read(
        bounds: &dyn PruningStatistics,
        null_counts: &[Option<serde_json::Value>],
        file_schema: &Schema,
    ) -> Self {
        let columns = file_schema
            .fields()
            .iter()
            .map(|f| {
                let column = Column::new_unqualified(f.name());
                // Nested columns carry nested statistics; only flat values are used.
                let flat = !f.data_type().is_nested();
                let nulls: UInt64Array = null_counts
                    .iter()
                    .map(|n| n.as_ref()?.get(f.name())?.as_u64())
                    .collect();
                ColumnArrays {
                    data_type: f.data_type().clone(),
                    min: flat.then(|| bounds.min_values(&column)).flatten(),
                    max: flat.then(|| bounds.max_values(&column)).flatten(),
                    nulls: (flat && nulls.null_count() < nulls.len())
                        .then(|| Arc::new(nulls) as ArrayRef),
                }
            })
            .collect();
        Self { columns }
    }

    /// The statistics of the file at `index` (log order) holding `rows` rows, if known.
    pub(crate) fn for_file(&self, index: usize, rows: Option<usize>) -> Statistics {
        let mut stats = Statistics::new_unknown(&Schema::empty());
        stats.num_rows = rows.map_or(Precision::Absent, Precision::Exact);
        stats.column_statistics = self
            .columns
            .iter()
            .map(|c| c.for_file(index, rows))
            .collect();
        // No total byte size, as DataFusion's own Parquet statistics have none. DataFusion cuts
        // a scan's total down to its projected columns only when it can size them all; a scan
        // that reads a string kept the whole row's total, and join selection, which compares
        // totals before row counts, built on the larger side (TPC-H q12 hashed 1.5 M orders
        // against 31 K lineitems). Row counts decide instead (and columns have no sizes either).
        stats.total_byte_size = Precision::Absent;
        stats
    }
}

impl ColumnArrays {
    fn for_file(&self, index: usize, rows: Option<usize>) -> ColumnStatistics {
        let min = scalar_at(self.min.as_ref(), index, &self.data_type);
        let max = scalar_at(self.max.as_ref(), index, &self.data_type);
        let nulls = self
            .nulls
            .as_ref()
            .and_then(|a| scalar_at(Some(a), index, &DataType::UInt64))
            .and_then(|s| match s {
                ScalarValue::UInt64(Some(n)) => usize::try_from(n).ok(),
                _ => None,
            })
            .filter(|&n| rows.is_none_or(|r| n <= r));
        ColumnStatistics {
            null_count: nulls.map_or(Precision::Absent, Precision::Exact),
            max_value: max.map_or(Precision::Absent, Precision::Inexact),
            min_value: min.map_or(Precision::Absent, Precision::Inexact),
            sum_value: Precision::Absent,
            distinct_count: Precision::Absent,
            // No sizes: DataFusion carries a column's size unchanged through joins, so a semi
            // join's 33 K rows kept the 48 MB of the `lineitem` key column they came from, and
            // join selection built TPC-H q21's anti join on 3.8 M rows instead of those 33 K.
            // Row counts decide, which the joins do estimate.
            byte_size: Precision::Absent,
        }
    }
}

/// Each group with its files' statistics merged, and the merge over all files: the figures a
/// scan reports for one partition and for the whole scan. A cell cut into byte ranges sits in
/// several groups with its whole statistics: the whole scan counts it once, and the groups
/// holding a part of it report inexact figures.
pub(crate) fn summarise(
    groups: Vec<FileGroup>,
    scan_schema: &Schema,
) -> DfResult<(Vec<FileGroup>, Statistics)> {
    let groups = groups
        .into_iter()
        .map(|g| {
            let merged = Statistics::try_merge_iter(
                g.iter().filter_map(|f| f.statistics.as_deref()),
                scan_schema,
            )?;
            let merged = match g.iter().any(|f| f.range.is_some()) {
                true => merged.to_inexact(),
                false => merged,
            };
            Ok(g.with_statistics(Arc::new(merged)))
        })
        .collect::<DfResult<Vec<_>>>()?;
    let mut seen = std::collections::HashSet::new();
    let all = Statistics::try_merge_iter(
        groups
            .iter()
            .flat_map(|g| g.iter())
            .filter(|f| seen.insert(f.object_meta.location.clone()))
            .filter_map(|f| f.statistics.as_deref()),
        scan_schema,
    )?;
    Ok((groups, all))
}

/// The log's min and max as bounds that are safe to prune and estimate with. Delta's statistics
/// are not always exact bounds of the values in a file:
/// - timestamps are written in milliseconds, truncated: a max of `…:03.456` for a value at
///   `…:03.456789` made `ts = '…:03.456789'` skip the file. Both bounds widen by 1 ms.
/// - decimals are written as JSON floats (`DECIMAL(20,4)` 1234567890123456.1234 was logged as
///   1234567890123456.0): bounds widen by one unit of their last digit plus 2^-51 of their
///   value; unsigned 64-bit integers, stored as `DECIMAL(20,0)`, were written as i64s, clamped,
///   and a bound at the i64 limits bounds nothing.
///
/// Strings need nothing: the Parquet writer truncates a long max upwards. Floats leave NaN out
/// of their bounds; [`crate::nan`] keeps such predicates out of pruning instead.
pub(crate) struct SafeBounds<'a> {
    inner: &'a dyn PruningStatistics,
    schema: &'a Schema,
}

impl<'a> SafeBounds<'a> {
    pub(crate) fn new(inner: &'a dyn PruningStatistics, schema: &'a Schema) -> Self {
        Self { inner, schema }
    }

    fn widen(&self, column: &Column, array: Option<ArrayRef>, up: bool) -> Option<ArrayRef> {
        use arrow::array::{AsArray, PrimitiveArray};
        use arrow::datatypes::{
            Decimal128Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
            TimestampNanosecondType, TimestampSecondType,
        };
        let array = array?;
        let field = self.schema.field_with_name(&column.name).ok()?;
        let step = |v: i64, by: i64| {
            if up {
                v.saturating_add(by)
            } else {
                v.saturating_sub(by)
            }
        };
        fn ts<T: arrow::datatypes::ArrowTimestampType>(
            a: &PrimitiveArray<T>,
            tz: Option<Arc<str>>,
            f: impl Fn(i64) -> i64,
        ) -> ArrayRef {
            Arc::new(a.unary::<_, T>(f).with_timezone_opt(tz))
        }
        match (field.data_type(), array.data_type().clone()) {
            (DataType::Decimal256(..), _) => None,
            (_, DataType::Decimal128(p, s)) => {
                // A float carries 53 bits: widen by one unit of the last digit, and beyond
                // that by 2^-51 of the value, twice a float's rounding. A scale-0 bound was
                // written as an i64, clamped: at the i64 limits it bounds nothing.
                let clamped = |v: i128| s == 0 && (v >= i64::MAX as i128 || v <= i64::MIN as i128);
                let a = array.as_primitive::<Decimal128Type>();
                let widened: PrimitiveArray<Decimal128Type> = a
                    .iter()
                    .map(|v| {
                        let v = v?;
                        if clamped(v) {
                            return None;
                        }
                        let by = 1 + (v.unsigned_abs() >> 51) as i128;
                        Some(if up {
                            v.saturating_add(by)
                        } else {
                            v.saturating_sub(by)
                        })
                    })
                    .collect();
                Some(Arc::new(widened.with_precision_and_scale(p, s).ok()?))
            }
            (_, DataType::Timestamp(unit, tz)) => Some(match unit {
                TimeUnit::Second => ts(array.as_primitive::<TimestampSecondType>(), tz, |v| {
                    step(v, 1)
                }),
                TimeUnit::Millisecond => {
                    ts(array.as_primitive::<TimestampMillisecondType>(), tz, |v| {
                        step(v, 1)
                    })
                }
                TimeUnit::Microsecond => {
                    ts(array.as_primitive::<TimestampMicrosecondType>(), tz, |v| {
                        step(v, 1_000)
                    })
                }
                TimeUnit::Nanosecond => {
                    ts(array.as_primitive::<TimestampNanosecondType>(), tz, |v| {
                        step(v, 1_000_000)
                    })
                }
            }),
            _ => Some(array),
        }
    }
}

impl PruningStatistics for SafeBounds<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.widen(column, self.inner.min_values(column), false)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.widen(column, self.inner.max_values(column), true)
    }

    fn num_containers(&self) -> usize {
        self.inner.num_containers()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.inner.null_counts(column)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.inner.row_counts()
    }

    fn contained(
        &self,
        column: &Column,
        values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<arrow::array::BooleanArray> {
        self.inner.contained(column, values)
    }
}

/// The value at `index` of a statistics column, as `data_type`; `None` when absent or null.
fn scalar_at(array: Option<&ArrayRef>, index: usize, data_type: &DataType) -> Option<ScalarValue> {
    let array = array?;
    if index >= array.len() || array.is_null(index) {
        return None;
    }
    let value = ScalarValue::try_from_array(array, index).ok()?;
    if value.data_type() == *data_type {
        return Some(value);
    }
    value.cast_to(data_type).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use arrow::array::{BooleanArray, Int64Array, StringArray};
    use arrow::datatypes::Field;
    use serde_json::json;

    use super::*;

    /// Two files' statistics as a log would give them: `n` Int64, `s` Utf8.
    struct TwoFiles;

    impl PruningStatistics for TwoFiles {
        fn min_values(&self, column: &Column) -> Option<ArrayRef> {
            match column.name.as_str() {
                "n" => Some(Arc::new(Int64Array::from(vec![Some(1), None]))),
                "s" => Some(Arc::new(StringArray::from(vec![Some("ab"), Some("x")]))),
                _ => None,
            }
        }
        fn max_values(&self, column: &Column) -> Option<ArrayRef> {
            match column.name.as_str() {
                "n" => Some(Arc::new(Int64Array::from(vec![Some(9), None]))),
                "s" => Some(Arc::new(StringArray::from(vec![Some("abcd"), Some("xyz")]))),
                _ => None,
            }
        }
        fn num_containers(&self) -> usize {
            2
        }
        fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
            None
        }
        fn row_counts(&self) -> Option<ArrayRef> {
            None
        }
        fn contained(&self, _: &Column, _: &HashSet<ScalarValue>) -> Option<BooleanArray> {
            None
        }
    }

    /// Each file's `nullCount`; a hostile log claims more nulls than rows in the second file.
    fn null_counts() -> Vec<Option<serde_json::Value>> {
        vec![Some(json!({"n": 2, "s": 0})), Some(json!({"n": 1000}))]
    }

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("n", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ])
    }

    #[test]
    fn bounds_are_inexact_and_cast_to_the_scan_type() {
        let stats =
            LogColumnStats::read(&TwoFiles, &null_counts(), &schema()).for_file(0, Some(10));
        let n = &stats.column_statistics[0];
        assert_eq!(n.min_value, Precision::Inexact(ScalarValue::Int32(Some(1))));
        assert_eq!(n.max_value, Precision::Inexact(ScalarValue::Int32(Some(9))));
        assert_eq!(n.null_count, Precision::Exact(2));
        assert_eq!(n.byte_size, Precision::Absent);
        let s = &stats.column_statistics[1];
        assert_eq!(s.null_count, Precision::Exact(0));
        assert_eq!(s.byte_size, Precision::Absent);
        assert_eq!(stats.num_rows, Precision::Exact(10));
        assert_eq!(stats.total_byte_size, Precision::Absent);
    }

    #[test]
    fn missing_or_impossible_figures_are_absent() {
        let stats = LogColumnStats::read(&TwoFiles, &null_counts(), &schema()).for_file(1, Some(5));
        let n = &stats.column_statistics[0];
        assert_eq!(n.min_value, Precision::Absent);
        assert_eq!(
            n.null_count,
            Precision::Absent,
            "1000 nulls in 5 rows is refused"
        );
        let unknown_rows =
            LogColumnStats::read(&TwoFiles, &null_counts(), &schema()).for_file(0, None);
        assert_eq!(unknown_rows.total_byte_size, Precision::Absent);
        let beyond =
            LogColumnStats::read(&TwoFiles, &null_counts(), &schema()).for_file(7, Some(1));
        assert_eq!(beyond.column_statistics[1].min_value, Precision::Absent);
    }
}
