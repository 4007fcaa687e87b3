//! Frame schemas: which Arrow types a frame stores, which it serves, and conforming incoming
//! batches to them.
//!
//! A frame is a Delta table, so it stores what Delta can represent. Incoming schemas (from
//! `CREATE TABLE`, a query result or a bulk ingest) are mapped to that set once, when the frame is
//! created ([`frame_schema_for`]); afterwards every incoming batch is cast to the frame's schema
//! ([`conform_batch`]), or refused with an error that names the column.
//!
//! Where the stored type is not the type the client gave (a `timestamp[ms, tz=Asia/Tokyo]` is
//! stored as Delta's microsecond UTC timestamp, a `time64[ns]` as a `long`), the column's Delta
//! metadata keeps the type to serve ([`SERVED_TYPE_KEY`]) and every scan casts back to it
//! ([`served_schema`]). Other Delta readers see the stored type and ignore the key.
//!
//! The full table of incoming → stored → served types is in the README (section Types) and is
//! checked by `every_data_type_is_stored_and_served_or_refused` below.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, GenericListArray, OffsetSizeTrait, RecordBatch, RecordBatchOptions,
    StructArray, new_null_array,
};
use arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use tracing::warn;

use crate::error::{Error, Result};
use crate::lengths::Declared;

/// Delta column metadata key holding the Arrow type a column is served as, when it differs from
/// the stored type.
pub const SERVED_TYPE_KEY: &str = "apiary.servedType";

/// Longest served-type text read back from a log (hostile logs may hold anything).
const MAX_SERVED_TYPE_LEN: usize = 4096;

/// The most digits a Delta decimal holds.
const MAX_DECIMAL_DIGITS: u8 = 38;

fn decimal(column: &str, dt: &DataType, p: u8, s: i8) -> Result<DataType> {
    // A negative scale s means "unscaled × 10^-s": the same values fit decimal(p - s, 0).
    let (p, s) = if s < 0 {
        (p as i16 - s as i16, 0i8)
    } else {
        (p as i16, s)
    };
    if p > MAX_DECIMAL_DIGITS as i16 {
        return Err(Error::Schema(format!(
            "column {column}: type {dt} needs {p} digits; a frame stores decimals of at most \
             {MAX_DECIMAL_DIGITS} digits (Delta's limit)"
        )));
    }
    Ok(DataType::Decimal128(p as u8, s))
}

/// The type a frame stores for an incoming column type, or an error naming the column.
fn frame_type(column: &str, dt: &DataType) -> Result<DataType> {
    use DataType::*;
    let unsupported = |why: &str| {
        Error::Schema(format!(
            "column {column}: type {dt} cannot be stored in a frame{why}"
        ))
    };
    Ok(match dt {
        Boolean | Int8 | Int16 | Int32 | Int64 | Float32 | Float64 | Date32 | Utf8 | Binary => {
            dt.clone()
        }
        UInt8 => Int16,
        UInt16 => Int32,
        UInt32 => Int64,
        UInt64 => Decimal128(20, 0),
        Float16 => Float32,
        Utf8View | LargeUtf8 => Utf8,
        BinaryView | LargeBinary | FixedSizeBinary(_) => Binary,
        Date64 => Date32,
        // Delta stores microseconds: UTC instants (`timestamp`) or wall-clock times
        // (`timestamp_ntz`).
        Timestamp(_, Some(_)) => Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Timestamp(_, None) => Timestamp(TimeUnit::Microsecond, None),
        Time32(_) => Int32,
        Time64(_) | Duration(_) => Int64,
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
            decimal(column, dt, *p, *s)?
        }
        Dictionary(_, value) => frame_type(column, value)?,
        RunEndEncoded(_, values) => frame_type(column, values.data_type())?,
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) | FixedSizeList(f, _) => {
            List(Arc::new(stored_field(f)?.with_name("element")))
        }
        // Parquet cannot write one ("Parquet does not support writing empty structs"): the
        // ingest failed INTERNAL after creating the frame.
        Struct(fields) if fields.is_empty() => {
            return Err(unsupported(" (a struct needs at least one field)"));
        }
        Struct(fields) => Struct(
            fields
                .iter()
                .map(|f| stored_field(f).map(Arc::new))
                .collect::<Result<Vec<FieldRef>>>()?
                .into(),
        ),
        Map(entries, sorted) => Map(Arc::new(stored_field(entries)?), *sorted),
        Null => {
            return Err(Error::Schema(format!(
                "column {column} has no type (NULL); cast it to a type, e.g. CAST(NULL AS VARCHAR)"
            )));
        }
        Interval(_) => {
            return Err(unsupported(
                " (Delta has no interval type; store a duration or two timestamps)",
            ));
        }
        Union(..) => {
            return Err(unsupported(
                " (Delta has no union type; use a struct with one column per variant)",
            ));
        }
    })
}

/// The type a frame serves for an incoming column type: the client's type, decoded
/// (dictionaries and run-end encodings hold their values), with view types and list views as
/// their plain forms, and a decimal of negative scale as the one it is stored as (the same
/// values): DataFusion's kernels do not take negative scales (a comparison with a literal
/// overflowed in its planner), and SQL cannot name them.
fn served_type(dt: &DataType) -> DataType {
    use DataType::*;
    match dt {
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) if *s < 0 => {
            let digits = (*p as i16 - *s as i16).min(MAX_DECIMAL_DIGITS as i16);
            Decimal128(digits as u8, 0)
        }
        Dictionary(_, value) => served_type(value),
        RunEndEncoded(_, values) => served_type(values.data_type()),
        Utf8View => Utf8,
        BinaryView => Binary,
        List(f) | ListView(f) => List(Arc::new(served_field(f))),
        LargeList(f) | LargeListView(f) => LargeList(Arc::new(served_field(f))),
        FixedSizeList(f, n) => FixedSizeList(Arc::new(served_field(f)), *n),
        Struct(fields) => Struct(
            fields
                .iter()
                .map(|f| Arc::new(served_field(f)))
                .collect::<Vec<_>>()
                .into(),
        ),
        Map(entries, sorted) => Map(Arc::new(served_field(entries)), *sorted),
        other => other.clone(),
    }
}

fn served_field(f: &Field) -> Field {
    Field::new(f.name(), served_type(f.data_type()), f.is_nullable())
}

fn stored_field(field: &Field) -> Result<Field> {
    let dt = frame_type(field.name(), field.data_type())?;
    Ok(Field::new(field.name(), dt, field.is_nullable()))
}

/// A top-level frame column: the stored field, with the served type in its metadata when the
/// two differ (and the served type's text reads back as itself).
fn frame_field(field: &Field) -> Result<Field> {
    let stored = stored_field(field)?;
    // A declared `VARCHAR(n)` is kept; the type to serve is the stored string type.
    if let Some(declared) = Declared::of(field)
        && crate::lengths::is_string(stored.data_type())
    {
        return Ok(declared.on(stored));
    }
    let served = served_type(field.data_type());
    if &served == stored.data_type() {
        return Ok(stored);
    }
    let text = served.to_string();
    if DataType::from_str(&text).ok().as_ref() != Some(&served) {
        // Not expressible as text: serve the stored type.
        return Ok(stored);
    }
    Ok(stored.with_metadata([(SERVED_TYPE_KEY.to_string(), text)].into()))
}

/// The schema a new frame stores for `incoming`: names kept as given (Delta is case-preserving,
/// SQL folds unquoted names to lowercase), types mapped to the Delta-representable set, and the
/// type to serve kept in each changed column's metadata.
pub fn frame_schema_for(incoming: &Schema) -> Result<SchemaRef> {
    let mut seen = std::collections::HashSet::new();
    let mut fields = Vec::with_capacity(incoming.fields().len());
    for f in incoming.fields() {
        if f.name().is_empty() {
            return Err(Error::Schema("column names may not be empty".into()));
        }
        let depth = nesting(f.data_type());
        if depth > MAX_NESTING {
            return Err(Error::Schema(format!(
                "column {}: its type nests {depth} levels deep; a frame stores at most \
                 {MAX_NESTING}",
                f.name()
            )));
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

/// Most levels of nested types (structs, lists, maps) a frame column may have. delta-rs writes a
/// schema as JSON, and serde_json's recursion limit (128) panicked its writer at about 45
/// levels of structs: the create failed INTERNAL and left the name reserved.
const MAX_NESTING: usize = 32;

/// How many levels of nested types `dt` has (0 for a plain type).
fn nesting(dt: &DataType) -> usize {
    use DataType::*;
    match dt {
        List(f)
        | LargeList(f)
        | ListView(f)
        | LargeListView(f)
        | FixedSizeList(f, _)
        | Map(f, _) => 1 + nesting(f.data_type()),
        Struct(fields) => {
            1 + fields
                .iter()
                .map(|f| nesting(f.data_type()))
                .max()
                .unwrap_or(0)
        }
        Dictionary(_, v) => nesting(v),
        RunEndEncoded(_, v) => nesting(v.data_type()),
        _ => 0,
    }
}

/// The type `field` (a stored frame column) is served as: the type in its metadata when that
/// reads back and casts both ways, else the stored type.
fn served_of(field: &Field) -> DataType {
    let stored = field.data_type();
    let Some(text) = field.metadata().get(SERVED_TYPE_KEY) else {
        return stored.clone();
    };
    let parsed = (text.len() <= MAX_SERVED_TYPE_LEN)
        .then(|| DataType::from_str(text).ok())
        .flatten()
        .filter(|t| can_cast_types(stored, t) && can_cast_types(t, stored))
        // Recorded by earlier versions; served as stored now (see `served_type`).
        .filter(|t| !has_negative_scale(t));
    match parsed {
        Some(t) => t,
        None => {
            warn!(column = %field.name(), "ignoring an unreadable served type in the frame's log");
            stored.clone()
        }
    }
}

/// Whether `dt` holds a decimal of negative scale, at any depth.
fn has_negative_scale(dt: &DataType) -> bool {
    use DataType::*;
    match dt {
        Decimal32(_, s) | Decimal64(_, s) | Decimal128(_, s) | Decimal256(_, s) => *s < 0,
        List(f)
        | LargeList(f)
        | ListView(f)
        | LargeListView(f)
        | FixedSizeList(f, _)
        | Map(f, _) => has_negative_scale(f.data_type()),
        Struct(fields) => fields.iter().any(|f| has_negative_scale(f.data_type())),
        _ => false,
    }
}

/// `column` (an expression reading the stored column `name`) as the served type, when the two
/// differ: expressions typed for the served schema then evaluate on stored data, as the scan
/// reads it.
pub(crate) fn read_as_served(
    stored: &Schema,
    served: &Schema,
    name: &str,
    column: datafusion::logical_expr::Expr,
) -> datafusion::logical_expr::Expr {
    match (stored.field_with_name(name), served.field_with_name(name)) {
        (Ok(s), Ok(want)) if s.data_type() != want.data_type() => {
            datafusion::logical_expr::Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(column),
                want.data_type().clone(),
            ))
        }
        _ => column,
    }
}

/// `value` (an expression of the served type of the stored column `name`) as the stored type,
/// when the two differ: [`read_as_served`] the other way.
pub(crate) fn written_as_stored(
    stored: &Schema,
    served: &Schema,
    name: &str,
    value: datafusion::logical_expr::Expr,
) -> datafusion::logical_expr::Expr {
    match (stored.field_with_name(name), served.field_with_name(name)) {
        (Ok(s), Ok(from)) if s.data_type() != from.data_type() => {
            datafusion::logical_expr::Expr::Cast(datafusion::logical_expr::Cast::new(
                Box::new(value),
                s.data_type().clone(),
            ))
        }
        _ => value,
    }
}

/// [`read_as_served`] for every column `e` reads.
pub(crate) fn columns_as_served(
    stored: &Schema,
    served: &Schema,
    e: datafusion::logical_expr::Expr,
) -> datafusion::error::Result<datafusion::logical_expr::Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Expr;
    e.transform(|e| match &e {
        Expr::Column(c) => {
            let name = c.name.clone();
            Ok(Transformed::yes(read_as_served(stored, served, &name, e)))
        }
        _ => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
}

/// The schema a frame serves to queries, from its stored schema ([`frame_schema_for`] or a
/// loaded snapshot): served types, no metadata.
pub fn served_schema(stored: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        stored
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), served_of(f), f.is_nullable()))
            .collect::<Vec<_>>(),
    ))
}

/// The schema a frame shows to catalog readers (`DESCRIBE`, Flight SQL's GetTables): its served
/// types, with each declared `VARCHAR(n)` / `CHAR(n)` in the column's metadata
/// ([`crate::lengths::DECLARED_TYPE_KEY`]), which [`column_type_name`] reads.
pub fn described_schema(stored: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        stored
            .fields()
            .iter()
            .map(|f| {
                let served = Field::new(f.name(), served_of(f), f.is_nullable());
                match Declared::of(f) {
                    Some(declared) => declared.on(served),
                    None => served,
                }
            })
            .collect::<Vec<_>>(),
    ))
}

/// SQL name of a column of a [`described_schema`]: its declared `VARCHAR(n)`, else its type's
/// ([`sql_type_name`]).
pub fn column_type_name(field: &Field) -> String {
    match Declared::of(field) {
        Some(declared) => declared.sql_name(),
        None => sql_type_name(field.data_type()),
    }
}

/// `schema` with its top-level strings as views (`Utf8View`): what a frame's scan produces when
/// it reads views, as DataFusion's own Parquet tables do with
/// `datafusion.execution.parquet.schema_force_view_types`. The Parquet reader decodes straight
/// into views, and filters, joins and groupings compare short strings inline instead of through
/// offsets. Binaries stay plain: arrow cannot cast a `BinaryView` to a fixed-size binary, which
/// `CASE` and `arrow_cast` over binary columns need.
pub fn as_views(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View)),
                _ => f.clone(),
            })
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
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
    // Field metadata from Delta (column mapping ids, comments) is not part of the SQL schema;
    // only the served type and a declared string length are kept (a length only where it
    // reads as one).
    let fields: Vec<Field> = arrow
        .fields()
        .iter()
        .map(|f| {
            let ours = f
                .metadata()
                .iter()
                .filter(|(k, _)| k.as_str() == SERVED_TYPE_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let plain = f.as_ref().clone().with_metadata(ours);
            match Declared::of(f) {
                Some(declared) => declared.on(plain),
                None => plain,
            }
        })
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
    // The same columns under the frame's schema. Not `with_schema`: it wants the target to
    // hold the batch's schema metadata too, and an ingest from pandas carries some, so every
    // such ingest was refused ("target schema is not superset of current schema"). Columns
    // served as another type go the long way, through that type.
    if batch.schema().fields() == target.fields()
        && target
            .fields()
            .iter()
            .all(|f| !f.metadata().contains_key(SERVED_TYPE_KEY))
    {
        return Ok(RecordBatch::try_new_with_options(
            target.clone(),
            batch.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?);
    }
    let source = batch.schema();
    // A column given twice (in any case: columns match regardless of it) would be matched
    // once and the other dropped without a word.
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = source
        .fields()
        .iter()
        .find(|f| !seen.insert(f.name().to_ascii_lowercase()))
    {
        return Err(Error::Schema(format!(
            "column {} is given twice",
            twice.name()
        )));
    }
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
            // A column served as another type (a `TIME(0)` stored as integer seconds, a
            // `TIMESTAMP(0)` stored in microseconds) takes its values as that type first, so
            // that they mean what they say in their own unit: a `time32[ms]` into a `TIME(0)`
            // stored its raw milliseconds as seconds, and microseconds into a `TIMESTAMP(0)`
            // kept digits the frame does not serve (and that a `DELETE` then compared).
            Some(i) => match through(batch.column(i).data_type(), &served_of(t), t.data_type()) {
                Some(served) => {
                    let as_served = conform_array(batch.column(i), &served, t.name(), &opts)?;
                    conform_array(&as_served, t.data_type(), t.name(), &opts)?
                }
                None => conform_array(batch.column(i), t.data_type(), t.name(), &opts)?,
            },
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

/// The type a column arriving as `from` goes through on its way to `stored`, when the frame
/// serves it as `served`: the served type, for values to be read in their own unit. A timestamp
/// changes only its unit there (its zone, or none, is the one it came with: a timestamp without
/// one is UTC, as it always was); a type Arrow cannot cast to the served type goes straight to
/// the stored one, as before (a binary view into a fixed-size binary, integers into times).
fn through(from: &DataType, served: &DataType, stored: &DataType) -> Option<DataType> {
    if served == stored || from == served {
        return None;
    }
    let served = match (from, served) {
        (DataType::Timestamp(_, zone), DataType::Timestamp(unit, _)) => {
            DataType::Timestamp(*unit, zone.clone())
        }
        _ => served.clone(),
    };
    can_cast_types(from, &served).then_some(served)
}

/// `col` as `to`, struct fields matched by name at every depth. Arrow's cast matches a struct's
/// fields by name only when every target field is found; otherwise it takes them in order, and
/// drops source fields the target lacks: an append whose struct fields were renamed stored
/// them under the frame's names, and one with an extra field lost it, both without an error.
/// Here a field the frame lacks is an error, a nullable one the data lacks is NULL.
fn conform_array(
    col: &ArrayRef,
    to: &DataType,
    path: &str,
    opts: &CastOptions,
) -> Result<ArrayRef> {
    if col.data_type() == to {
        return Ok(col.clone());
    }
    let failed = |e: &dyn std::fmt::Display| {
        Error::Schema(format!(
            "column {path}: cannot convert {} to {to}: {e}",
            col.data_type()
        ))
    };
    match (col.data_type(), to) {
        (DataType::Struct(from), DataType::Struct(fields)) => {
            if let Some(extra) = from
                .iter()
                .find(|f| field_named(fields, f.name()).is_none())
            {
                return Err(Error::Schema(format!(
                    "column {path} has no field {} in the frame (fields: {})",
                    extra.name(),
                    fields
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let array = col.as_struct();
            let children = fields
                .iter()
                .map(|t| {
                    let at = format!("{path}.{}", t.name());
                    match field_named(from, t.name()) {
                        Some(i) => conform_array(array.column(i), t.data_type(), &at, opts),
                        None if t.is_nullable() => Ok(new_null_array(t.data_type(), array.len())),
                        None => Err(Error::Schema(format!(
                            "column {at} is missing and does not accept NULL"
                        ))),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let out = StructArray::try_new(fields.clone(), children, array.nulls().cloned())
                .map_err(|e| failed(&e))?;
            Ok(Arc::new(out))
        }
        (
            from @ (DataType::List(_) | DataType::LargeList(_)),
            DataType::List(item) | DataType::LargeList(item),
        ) => match from {
            DataType::List(_) => conform_list::<i32>(col, item, to, path, opts),
            _ => conform_list::<i64>(col, item, to, path, opts),
        }
        .map_err(|e| match e {
            Error::Schema(_) => e,
            other => failed(&other),
        }),
        (from, to) => {
            if let Some(mismatch) = struct_names_differ(from, to) {
                return Err(Error::Schema(format!(
                    "column {path}: {mismatch}, which the frame's type {to} does not match"
                )));
            }
            cast_with_options(col, to, opts).map_err(|e| failed(&e))
        }
    }
}

/// A list (`O`: its offsets) as `to`, a list of `item`: its values conformed, then the list.
fn conform_list<O: OffsetSizeTrait>(
    col: &ArrayRef,
    item: &FieldRef,
    to: &DataType,
    path: &str,
    opts: &CastOptions,
) -> Result<ArrayRef> {
    let list = col.as_list::<O>();
    let values = conform_array(list.values(), item.data_type(), &format!("{path}[]"), opts)?;
    let same = GenericListArray::<O>::try_new(
        item.clone(),
        list.offsets().clone(),
        values,
        list.nulls().cloned(),
    )?;
    Ok(cast_with_options(&same, to, opts)?)
}

/// The index of `fields`' field named `name` (as written, else ignoring case).
fn field_named(fields: &arrow::datatypes::Fields, name: &str) -> Option<usize> {
    fields.iter().position(|f| f.name() == name).or_else(|| {
        fields
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    })
}

/// Whether a struct at any depth of `from` (inside maps, fixed-size lists and the like, which
/// [`conform_array`] leaves to Arrow's cast) has other field names than its place in `to`.
fn struct_names_differ(from: &DataType, to: &DataType) -> Option<String> {
    use DataType::*;
    match (from, to) {
        (Struct(a), Struct(b)) => {
            // As written: Arrow's cast matches names exactly, else takes fields in order.
            fn names(f: &arrow::datatypes::Fields) -> Vec<&str> {
                let mut n: Vec<&str> = f.iter().map(|f| f.name().as_str()).collect();
                n.sort();
                n
            }
            if names(a) != names(b) {
                return Some(format!(
                    "it has fields {}",
                    a.iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            a.iter().find_map(|f| {
                let t = &b[field_named(b, f.name())?];
                struct_names_differ(f.data_type(), t.data_type())
            })
        }
        (a, b) if let Some(pairs) = items(a, b) => pairs
            .into_iter()
            .find_map(|(a, b, _)| struct_names_differ(a, b)),
        (Dictionary(_, a), b) => struct_names_differ(a, b),
        _ => None,
    }
}

/// The types inside two lists (of any kind) or two maps, paired, with how a path names each:
/// a list's items (`[]`), a map's keys and values (`[key]`, `[value]`). A map's entries are
/// paired by position: writers name them differently (`key_value{key, value}` in Delta,
/// `entries{keys, values}` from Arrow's builder), and Arrow's cast takes them in order.
fn items<'a>(
    a: &'a DataType,
    b: &'a DataType,
) -> Option<Vec<(&'a DataType, &'a DataType, &'static str)>> {
    use DataType::*;
    let item = |t: &'a DataType| match t {
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) | FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    };
    let entries = |t: &'a DataType| match t {
        Map(f, _) => match f.data_type() {
            Struct(kv) if kv.len() == 2 => Some((kv[0].data_type(), kv[1].data_type())),
            _ => None,
        },
        _ => None,
    };
    if let (Some(a), Some(b)) = (item(a), item(b)) {
        return Some(vec![(a, b, "[]")]);
    }
    let ((ka, va), (kb, vb)) = (entries(a)?, entries(b)?);
    Some(vec![(ka, kb, "[key]"), (va, vb, "[value]")])
}

/// The first field of a struct in `incoming` (at any depth, as `s.b`) that its place in `frame`
/// lacks: data an append would have to drop.
pub fn missing_nested_field(name: &str, incoming: &DataType, frame: &DataType) -> Option<String> {
    use DataType::*;
    match (incoming, frame) {
        (Struct(a), Struct(b)) => a.iter().find_map(|f| match field_named(b, f.name()) {
            None => Some(format!("{name}.{}", f.name())),
            Some(i) => missing_nested_field(
                &format!("{name}.{}", f.name()),
                f.data_type(),
                b[i].data_type(),
            ),
        }),
        (a, b) if let Some(pairs) = items(a, b) => pairs
            .into_iter()
            .find_map(|(a, b, at)| missing_nested_field(&format!("{name}{at}"), a, b)),
        (Dictionary(_, a), b) => missing_nested_field(name, a, b),
        _ => None,
    }
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
        UInt8 => "TINYINT UNSIGNED".into(),
        UInt16 => "SMALLINT UNSIGNED".into(),
        UInt32 => "INT UNSIGNED".into(),
        UInt64 => "BIGINT UNSIGNED".into(),
        Float16 => "HALF".into(),
        Float32 => "REAL".into(),
        Float64 => "DOUBLE".into(),
        Utf8 | Utf8View | LargeUtf8 => "VARCHAR".into(),
        Binary | BinaryView | LargeBinary | FixedSizeBinary(_) => "VARBINARY".into(),
        Date32 | Date64 => "DATE".into(),
        Timestamp(unit, tz) => {
            let p = match unit {
                TimeUnit::Second => "(0)",
                TimeUnit::Millisecond => "(3)",
                TimeUnit::Microsecond => "",
                TimeUnit::Nanosecond => "(9)",
            };
            match tz {
                Some(_) => format!("TIMESTAMP{p} WITH TIME ZONE"),
                None => format!("TIMESTAMP{p}"),
            }
        }
        Time32(TimeUnit::Second) => "TIME(0)".into(),
        Time32(_) => "TIME(3)".into(),
        Time64(TimeUnit::Nanosecond) => "TIME(9)".into(),
        Time64(_) => "TIME".into(),
        Decimal32(p, s) | Decimal64(p, s) | Decimal128(p, s) | Decimal256(p, s) => {
            format!("DECIMAL({p},{s})")
        }
        List(f) | LargeList(f) | FixedSizeList(f, _) => {
            format!("ARRAY<{}>", sql_type_name(f.data_type()))
        }
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
    use arrow::array::{Int64Array, ListArray, StringArray, UInt64Array};

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

    /// Every Arrow type a client can send: stored in Delta's set, served as the client's type
    /// (decoded, views and list views plain), or refused with a message naming the column.
    #[test]
    fn every_data_type_is_stored_and_served_or_refused() {
        use arrow::datatypes::{IntervalUnit, UnionFields, UnionMode};
        let item = |dt: DataType| Arc::new(Field::new("item", dt, true));
        let ts = |u, tz: Option<&str>| DataType::Timestamp(u, tz.map(Into::into));
        let entries = Arc::new(Field::new(
            "entries",
            DataType::Struct(
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::UInt64, true),
                ]
                .into(),
            ),
            false,
        ));
        let kept: Vec<DataType> = vec![
            DataType::Boolean,
            DataType::Int8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::UInt8,
            DataType::UInt16,
            DataType::UInt32,
            DataType::UInt64,
            DataType::Float16,
            DataType::Float32,
            DataType::Float64,
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Binary,
            DataType::LargeBinary,
            DataType::FixedSizeBinary(16),
            DataType::Date32,
            DataType::Date64,
            ts(TimeUnit::Second, None),
            ts(TimeUnit::Millisecond, Some("Asia/Tokyo")),
            ts(TimeUnit::Microsecond, Some("UTC")),
            ts(TimeUnit::Nanosecond, Some("+05:30")),
            DataType::Time32(TimeUnit::Second),
            DataType::Time32(TimeUnit::Millisecond),
            DataType::Time64(TimeUnit::Microsecond),
            DataType::Time64(TimeUnit::Nanosecond),
            DataType::Duration(TimeUnit::Millisecond),
            DataType::Decimal32(9, 2),
            DataType::Decimal64(18, 4),
            DataType::Decimal128(38, 10),
            DataType::Decimal256(38, 0),
            DataType::List(item(ts(TimeUnit::Nanosecond, None))),
            DataType::LargeList(item(DataType::Utf8)),
            DataType::FixedSizeList(item(DataType::Int32), 3),
            DataType::Struct(
                vec![
                    Field::new("a", DataType::UInt8, true),
                    Field::new("b", DataType::Time64(TimeUnit::Nanosecond), true),
                ]
                .into(),
            ),
            DataType::Map(entries, false),
        ];
        let decoded: Vec<(DataType, DataType)> = vec![
            (DataType::Utf8View, DataType::Utf8),
            (DataType::BinaryView, DataType::Binary),
            (
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::LargeUtf8)),
                DataType::LargeUtf8,
            ),
            (
                DataType::RunEndEncoded(
                    Arc::new(Field::new("run_ends", DataType::Int32, false)),
                    Arc::new(Field::new("values", DataType::Float16, true)),
                ),
                DataType::Float16,
            ),
            (
                DataType::ListView(item(DataType::Int64)),
                DataType::List(item(DataType::Int64)),
            ),
            (
                DataType::LargeListView(item(DataType::Int64)),
                DataType::LargeList(item(DataType::Int64)),
            ),
            (DataType::Decimal128(5, -2), DataType::Decimal128(7, 0)),
            (DataType::Decimal32(3, -1), DataType::Decimal128(4, 0)),
            (
                DataType::List(item(DataType::Decimal64(10, -3))),
                DataType::List(item(DataType::Decimal128(13, 0))),
            ),
        ];
        let cases = kept.iter().map(|t| (t.clone(), t.clone())).chain(decoded);
        for (incoming, want) in cases {
            let schema =
                frame_schema_for(&Schema::new(vec![Field::new("c", incoming.clone(), true)]))
                    .unwrap_or_else(|e| panic!("{incoming}: {e}"));
            // What a reload from the Delta log gives back.
            let reloaded = from_delta(&to_delta(&schema).unwrap()).unwrap();
            assert_eq!(reloaded, schema, "{incoming}");
            let served = served_schema(&reloaded);
            assert_eq!(served.field(0).data_type(), &want, "{incoming}");
            // Stored and served convert into each other.
            let stored = reloaded.field(0).data_type();
            assert!(can_cast_types(&want, stored), "{incoming} → {stored}");
            assert!(can_cast_types(stored, &want), "{stored} → {want}");
            assert!(!sql_type_name(&want).is_empty());
        }

        for (refused, why) in [
            (DataType::Null, "no type"),
            (DataType::Interval(IntervalUnit::MonthDayNano), "interval"),
            (
                DataType::Union(UnionFields::empty(), UnionMode::Dense),
                "union",
            ),
            (DataType::Decimal256(50, 2), "at most 38 digits"),
            (DataType::Decimal128(37, -2), "at most 38 digits"),
            (
                DataType::Struct(arrow::datatypes::Fields::empty()),
                "at least one field",
            ),
        ] {
            let err =
                frame_schema_for(&Schema::new(vec![Field::new("bad", refused.clone(), true)]))
                    .unwrap_err()
                    .to_string();
            assert!(
                err.contains("column bad") && err.contains(why),
                "{refused}: {err}"
            );
        }
    }

    #[test]
    fn a_served_type_from_the_log_is_used_only_when_it_converts_both_ways() {
        let with = |text: &str| {
            Schema::new(vec![Field::new("c", DataType::Int64, true).with_metadata(
                [(SERVED_TYPE_KEY.to_string(), text.to_string())].into(),
            )])
        };
        let served = |text: &str| served_schema(&with(text)).field(0).data_type().clone();
        assert_eq!(served("Time64(ns)"), DataType::Time64(TimeUnit::Nanosecond));
        for hostile in ["Struct()", "not a type", &"List(".repeat(10_000), "Null"] {
            assert_eq!(served(hostile), DataType::Int64, "{hostile:.40}");
        }
    }

    #[test]
    fn refuses_types_nested_past_what_the_log_can_hold() {
        let mut dt = DataType::Int32;
        for _ in 0..MAX_NESTING {
            dt = DataType::Struct(vec![Field::new("f", dt, true)].into());
        }
        let ok = Schema::new(vec![Field::new("x", dt.clone(), true)]);
        assert!(frame_schema_for(&ok).is_ok());
        let deep = DataType::List(Arc::new(Field::new("item", dt, true)));
        let err = frame_schema_for(&Schema::new(vec![Field::new("x", deep, true)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column x") && err.contains("33 levels"),
            "{err}"
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

    /// Values arrive in the unit they say: an append of another unit than the frame serves is
    /// converted to the served type before it is stored.
    #[test]
    fn an_append_in_another_unit_is_converted_through_the_served_type() {
        use arrow::array::{
            DurationMillisecondArray, Time32MillisecondArray, TimestampMicrosecondArray,
        };
        let target = frame_schema_for(&Schema::new(vec![
            Field::new("t", DataType::Time32(TimeUnit::Second), true),
            Field::new("d", DataType::Duration(TimeUnit::Second), true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Second, None), true),
        ]))
        .unwrap();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("t", DataType::Time32(TimeUnit::Millisecond), true),
                Field::new("d", DataType::Duration(TimeUnit::Millisecond), true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            ])),
            vec![
                Arc::new(Time32MillisecondArray::from(vec![1_000])),
                Arc::new(DurationMillisecondArray::from(vec![2_000])),
                Arc::new(TimestampMicrosecondArray::from(vec![10_500_000])),
            ],
        )
        .unwrap();
        let out = conform_batch(&batch, &target).unwrap();
        // Stored: seconds as integers, the timestamp in µs without the digits TIMESTAMP(0)
        // does not serve. They were 1000 s, 2000 s and 10.5 s.
        assert_eq!(
            out.column(0)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .value(0),
            1
        );
        assert_eq!(
            out.column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            2
        );
        let ts = out
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 10_000_000);

        // A value the served type cannot hold is refused, not stored to fail every read.
        let ns = frame_schema_for(&Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            Field::new("u", DataType::UInt64, true),
        ]))
        .unwrap();
        let far = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            )])),
            vec![Arc::new(TimestampMicrosecondArray::from(vec![
                253_402_214_400_000_000,
            ]))],
        )
        .unwrap();
        let err = conform_batch(&far, &ns).unwrap_err().to_string();
        assert!(err.contains("column ts"), "{err}");
        let negative = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("u", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![-1]))],
        )
        .unwrap();
        let err = conform_batch(&negative, &ns).unwrap_err().to_string();
        assert!(err.contains("column u"), "{err}");
    }

    #[test]
    fn struct_fields_are_matched_by_name_at_every_depth() {
        let fields = |names: &[&str]| -> arrow::datatypes::Fields {
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Int64, true))
                .collect()
        };
        let item =
            |names: &[&str]| Arc::new(Field::new("item", DataType::Struct(fields(names)), true));
        let target = Arc::new(Schema::new(vec![Field::new(
            "l",
            DataType::LargeList(item(&["a", "b"])),
            true,
        )]));
        // [[{b: 1, a: 2}]] as a List of structs whose fields come in another order.
        let list_of = |names: &[&str], columns: Vec<ArrayRef>| -> RecordBatch {
            let values = StructArray::try_new(fields(names), columns, None).unwrap();
            let list = ListArray::try_new(
                item(names),
                arrow::buffer::OffsetBuffer::from_lengths([1]),
                Arc::new(values),
                None,
            )
            .unwrap();
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new(
                    "l",
                    list.data_type().clone(),
                    true,
                )])),
                vec![Arc::new(list)],
            )
            .unwrap()
        };
        let one = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
        let out = conform_batch(&list_of(&["b", "a"], vec![one(1), one(2)]), &target).unwrap();
        let values = out.column(0).as_list::<i64>().values().as_struct().clone();
        assert_eq!(
            values
                .column_by_name("a")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            2
        );
        assert_eq!(
            values
                .column_by_name("b")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            1
        );
        // A field left out is NULL; a renamed or an extra one is an error, never stored under
        // the frame's names (Arrow's cast takes them in order) nor dropped.
        let out = conform_batch(&list_of(&["b"], vec![one(1)]), &target).unwrap();
        let values = out.column(0).as_list::<i64>().values().as_struct().clone();
        assert!(values.column_by_name("a").unwrap().is_null(0));
        for names in [&["x", "y"][..], &["a", "b", "c"][..]] {
            let columns = names.iter().map(|_| one(1)).collect();
            let err = conform_batch(&list_of(names, columns), &target)
                .unwrap_err()
                .to_string();
            assert!(err.contains("has no field"), "{err}");
        }
        // Where Arrow's cast is left the struct (a fixed-size list), names must be the frame's as
        // written: `{B, a}` would be taken in order.
        let fixed = |names: &[&str]| DataType::FixedSizeList(item(names), 1);
        assert!(struct_names_differ(&fixed(&["B", "a"]), &fixed(&["a", "b"])).is_some());
        assert!(struct_names_differ(&fixed(&["b", "a"]), &fixed(&["a", "b"])).is_none());
        // A map's entries are named by their writer (`keys`/`values` by Arrow's builder,
        // `key`/`value` in Delta) and paired by position.
        let map = |k: &str, v: &str, value: DataType| {
            let entries = Field::new(
                "entries",
                DataType::Struct(
                    vec![
                        Field::new(k, DataType::Utf8, false),
                        Field::new(v, value, true),
                    ]
                    .into(),
                ),
                false,
            );
            DataType::Map(Arc::new(entries), false)
        };
        let ab = DataType::Struct(fields(&["a", "b"]));
        let abc = DataType::Struct(fields(&["a", "b", "c"]));
        assert!(
            struct_names_differ(
                &map("keys", "values", ab.clone()),
                &map("key", "value", ab.clone())
            )
            .is_none()
        );
        assert_eq!(
            missing_nested_field("m", &map("keys", "values", abc), &map("key", "value", ab)),
            Some("m[value].c".to_string())
        );
    }
}
