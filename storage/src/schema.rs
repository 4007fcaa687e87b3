//! Frame schemas: which Arrow types a frame stores, and conforming incoming batches to them.
//!
//! A frame is a Delta table, so it stores what Delta can represent. Incoming schemas (from
//! `CREATE TABLE`, a query result or a bulk ingest) are mapped to that set once, when the frame is
//! created ([`frame_schema_for`]); afterwards every incoming batch is cast to the frame's schema
//! ([`conform_batch`]), or refused with an error that names the column.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};

use crate::error::{Error, Result};

/// The type a frame stores for an incoming column type, or an error naming the column.
fn frame_type(column: &str, dt: &DataType) -> Result<DataType> {
    use DataType::*;
    let unsupported = || {
        Error::Schema(format!(
            "column {column}: type {dt} cannot be stored in a frame"
        ))
    };
    Ok(match dt {
        Boolean | Int8 | Int16 | Int32 | Int64 | Float32 | Float64 | Date32 | Utf8 | Binary => {
            dt.clone()
        }
        UInt8 => Int16,
        UInt16 => Int32,
        UInt32 | UInt64 => Int64,
        Float16 => Float32,
        Utf8View | LargeUtf8 => Utf8,
        BinaryView | LargeBinary | FixedSizeBinary(_) => Binary,
        Date64 => Date32,
        Timestamp(_, tz) => Timestamp(TimeUnit::Microsecond, tz.clone()),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) if *p <= 38 => Decimal128(*p, *s),
        Dictionary(_, value) => frame_type(column, value)?,
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) | FixedSizeList(f, _) => {
            List(Arc::new(frame_field(f)?.with_name("element")))
        }
        Struct(fields) => Struct(
            fields
                .iter()
                .map(|f| frame_field(f).map(Arc::new))
                .collect::<Result<Vec<FieldRef>>>()?
                .into(),
        ),
        Map(entries, sorted) => Map(Arc::new(frame_field(entries)?), *sorted),
        Null => {
            return Err(Error::Schema(format!(
                "column {column} has no type (NULL); cast it to a type, e.g. CAST(NULL AS VARCHAR)"
            )));
        }
        _ => return Err(unsupported()),
    })
}

fn frame_field(field: &Field) -> Result<Field> {
    let dt = frame_type(field.name(), field.data_type())?;
    Ok(Field::new(field.name(), dt, field.is_nullable()))
}

/// The schema a new frame stores for `incoming`: names kept as given (Delta is case-preserving,
/// SQL folds unquoted names to lowercase), types mapped to the Delta-representable set.
pub fn frame_schema_for(incoming: &Schema) -> Result<SchemaRef> {
    let mut seen = std::collections::HashSet::new();
    let mut fields = Vec::with_capacity(incoming.fields().len());
    for f in incoming.fields() {
        if f.name().is_empty() {
            return Err(Error::Schema("column names may not be empty".into()));
        }
        if !seen.insert(f.name().to_ascii_lowercase()) {
            return Err(Error::Schema(format!("duplicate column name {}", f.name())));
        }
        fields.push(frame_field(f)?);
    }
    if fields.is_empty() {
        return Err(Error::Schema("a frame needs at least one column".into()));
    }
    let schema = Schema::new(fields);
    // Round-trip through Delta so that what we hand out equals what a reload produces.
    from_delta(&to_delta(&schema)?)
}

/// Arrow → Delta schema.
pub fn to_delta(schema: &Schema) -> Result<StructType> {
    schema
        .try_into_kernel()
        .map_err(|e| Error::Schema(format!("schema cannot be stored: {e}")))
}

/// Delta → Arrow schema.
pub fn from_delta(schema: &StructType) -> Result<SchemaRef> {
    let arrow: Schema = schema
        .try_into_arrow()
        .map_err(|e| Error::Internal(format!("frame schema has no Arrow form: {e}")))?;
    // Field metadata from Delta (column mapping ids, comments) is not part of the SQL schema.
    let fields: Vec<Field> = arrow
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_metadata(Default::default()))
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// Cast `batch` to `target` by column name. Missing nullable columns become NULL; unknown
/// columns, impossible casts, overflow and NULLs in non-nullable columns are errors that name
/// the column.
pub fn conform_batch(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().as_ref() == target.as_ref() {
        return Ok(batch.clone());
    }
    let source = batch.schema();
    for f in source.fields() {
        if target
            .fields()
            .iter()
            .all(|t| !t.name().eq_ignore_ascii_case(f.name()))
        {
            return Err(Error::Schema(format!(
                "column {} does not exist in the frame (columns: {})",
                f.name(),
                target
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for t in target.fields() {
        let found = source
            .fields()
            .iter()
            .position(|f| f.name() == t.name())
            .or_else(|| {
                source
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(t.name()))
            });
        let array = match found {
            Some(i) => {
                let col = batch.column(i);
                if col.data_type() == t.data_type() {
                    col.clone()
                } else {
                    cast_with_options(col, t.data_type(), &opts).map_err(|e| {
                        Error::Schema(format!(
                            "column {}: cannot convert {} to {}: {e}",
                            t.name(),
                            col.data_type(),
                            t.data_type()
                        ))
                    })?
                }
            }
            None if t.is_nullable() => new_null_array(t.data_type(), batch.num_rows()),
            None => {
                return Err(Error::Schema(format!(
                    "column {} is missing and does not accept NULL",
                    t.name()
                )));
            }
        };
        if !t.is_nullable() && array.null_count() > 0 {
            return Err(Error::Schema(format!(
                "column {} does not accept NULL",
                t.name()
            )));
        }
        columns.push(array);
    }
    Ok(RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// SQL-ish name of a frame column type, for DESCRIBE.
pub fn sql_type_name(dt: &DataType) -> String {
    use DataType::*;
    match dt {
        Boolean => "BOOLEAN".into(),
        Int8 => "TINYINT".into(),
        Int16 => "SMALLINT".into(),
        Int32 => "INT".into(),
        Int64 => "BIGINT".into(),
        Float32 => "REAL".into(),
        Float64 => "DOUBLE".into(),
        Utf8 | Utf8View | LargeUtf8 => "VARCHAR".into(),
        Binary | BinaryView | LargeBinary => "VARBINARY".into(),
        Date32 => "DATE".into(),
        Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE".into(),
        Timestamp(_, None) => "TIMESTAMP".into(),
        Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        List(f) => format!("ARRAY<{}>", sql_type_name(f.data_type())),
        Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Map(entries, _) => match entries.data_type() {
            Struct(kv) if kv.len() == 2 => format!(
                "MAP<{}, {}>",
                sql_type_name(kv[0].data_type()),
                sql_type_name(kv[1].data_type())
            ),
            other => format!("MAP<{other}>"),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, UInt64Array};

    #[test]
    fn maps_types_to_the_delta_set() {
        let s = Schema::new(vec![
            Field::new("a", DataType::Utf8View, true),
            Field::new("b", DataType::UInt32, false),
            Field::new("c", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]);
        let f = frame_schema_for(&s).unwrap();
        assert_eq!(f.field(0).data_type(), &DataType::Utf8);
        assert_eq!(f.field(1).data_type(), &DataType::Int64);
        assert!(!f.field(1).is_nullable());
        assert_eq!(
            f.field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
    }

    #[test]
    fn refuses_untyped_and_duplicate_columns() {
        let err = frame_schema_for(&Schema::new(vec![Field::new("n", DataType::Null, true)]))
            .unwrap_err();
        assert!(err.to_string().contains("column n"), "{err}");
        let err = frame_schema_for(&Schema::new(vec![
            Field::new("x", DataType::Int32, true),
            Field::new("X", DataType::Int32, true),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn conform_casts_fills_and_names_bad_columns() {
        let target = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::UInt64, false)])),
            vec![Arc::new(UInt64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let out = conform_batch(&batch, &target).unwrap();
        assert_eq!(out.schema(), target);
        assert_eq!(out.column(1).null_count(), 2);
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 2]);

        let bad = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)])),
            vec![Arc::new(StringArray::from(vec!["x"]))],
        )
        .unwrap();
        let err = conform_batch(&bad, &target).unwrap_err().to_string();
        assert!(err.contains("column id"), "{err}");

        let unknown = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("zzz", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        let err = conform_batch(&unknown, &target).unwrap_err().to_string();
        assert!(err.contains("zzz"), "{err}");
    }
}
