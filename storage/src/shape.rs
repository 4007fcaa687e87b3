//! A frame's shape as Delta records it: which partition columns are valid, and which protocol
//! (reader/writer features) its columns need.

use arrow::datatypes::{DataType, SchemaRef};

use crate::error::{Error, Result};

/// Whether a partition column's name is safe as the `<column>=` part of a cell's directory.
fn partition_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
}

#[cfg(test)]
#[test]
fn partition_names_that_would_make_paths_are_refused() {
    for bad in ["a/b", "..", ".", "", "a=b", "a\\b", "x\ny", "%2F"] {
        assert!(!partition_name_ok(bad), "{bad:?}");
    }
    for good in ["day", "Région", "order date", "a_b-2"] {
        assert!(partition_name_ok(good), "{good:?}");
    }
}

/// The protocol a table needs for `schema`, when its current one lacks a feature the columns
/// need (timestamps without a zone need `timestampNtz`); `None` when the current one will do.
/// A protocol is never downgraded.
pub(crate) fn protocol_for(
    current: &deltalake::kernel::Protocol,
    schema: &deltalake::kernel::StructType,
) -> Result<Option<deltalake::kernel::Protocol>> {
    use deltalake::kernel::{DataType, PrimitiveType};
    fn has_ntz(t: &DataType) -> bool {
        match t {
            DataType::Primitive(PrimitiveType::TimestampNtz) => true,
            DataType::Struct(s) => s.fields().any(|f| has_ntz(f.data_type())),
            DataType::Array(a) => has_ntz(a.element_type()),
            DataType::Map(m) => has_ntz(m.key_type()) || has_ntz(m.value_type()),
            _ => false,
        }
    }
    if !schema.fields().any(|f| has_ntz(f.data_type())) {
        return Ok(None);
    }
    // The kernel's Protocol has no public builder; edit its JSON form as delta-rs itself does.
    let bad = |e: serde_json::Error| Error::Schema(format!("protocol: {e}"));
    let mut json = serde_json::to_value(current).map_err(bad)?;
    let feature = serde_json::Value::from("timestampNtz");
    let has = |key: &str, json: &serde_json::Value| {
        json.get(key)
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.contains(&feature))
    };
    if has("readerFeatures", &json) && has("writerFeatures", &json) {
        return Ok(None);
    }
    let reader = json["minReaderVersion"].as_i64().unwrap_or(1);
    let writer = json["minWriterVersion"].as_i64().unwrap_or(2);
    // Features a legacy writer version implies must be listed once the table uses features;
    // each version adds to the one before it.
    const LEGACY_WRITER: [&str; 7] = [
        "appendOnly",
        "invariants",
        "checkConstraints",
        "changeDataFeed",
        "generatedColumns",
        "columnMapping",
        "identityColumns",
    ];
    let implied_writer: &[&str] = match writer {
        w if w >= 7 => &[],
        6 => &LEGACY_WRITER,
        5 => &LEGACY_WRITER[..6],
        4 => &LEGACY_WRITER[..5],
        3 => &LEGACY_WRITER[..3],
        _ => &LEGACY_WRITER[..2],
    };
    let implied_reader: &[&str] = if reader == 2 { &["columnMapping"] } else { &[] };
    let extend = |json: &mut serde_json::Value, key: &str, names: &[&str]| {
        let list = json
            .as_object_mut()
            .expect("a protocol is an object")
            .entry(key)
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let Some(a) = list.as_array_mut() {
            for n in names.iter().chain(std::iter::once(&"timestampNtz")) {
                let v = serde_json::Value::from(*n);
                if !a.contains(&v) {
                    a.push(v);
                }
            }
        }
    };
    extend(&mut json, "readerFeatures", implied_reader);
    extend(&mut json, "writerFeatures", implied_writer);
    json["minReaderVersion"] = 3.into();
    json["minWriterVersion"] = 7.into();
    serde_json::from_value(json).map(Some).map_err(bad)
}

/// The shape of a frame that does not exist yet: what its first commit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShape {
    pub schema: SchemaRef,
    pub partition_columns: Vec<String>,
    pub cluster_by: Vec<String>,
}

impl NewShape {
    /// Checks the partition and cluster columns against the schema; the schema as Delta
    /// records it.
    pub(crate) fn validate(&self) -> Result<deltalake::kernel::StructType> {
        validate_partitioning(&self.schema, &self.partition_columns)?;
        validate_clustering(&self.schema, &self.partition_columns, &self.cluster_by)?;
        crate::schema::to_delta(&self.schema)
    }
}

/// The table property that records a frame's cluster columns (`CREATE TABLE … CLUSTER BY`), as a
/// JSON array of column names. Other Delta readers ignore it; Apiary's writes sort their rows by
/// these columns, so that each cell and row group covers a narrow range of them and a filter on
/// them skips the rest.
pub(crate) const CLUSTER_BY_PROPERTY: &str = "apiary.clusterBy";

/// Most cluster columns a frame may have: past a few, a sort orders by the first ones only.
pub(crate) const MAX_CLUSTER_COLUMNS: usize = 4;

/// Checks cluster columns against a frame's columns: existing, scalar, not partition columns
/// (each cell holds one value of those), none twice, at most [`MAX_CLUSTER_COLUMNS`].
pub(crate) fn validate_clustering(
    schema: &SchemaRef,
    partition_columns: &[String],
    cluster_by: &[String],
) -> Result<()> {
    if cluster_by.len() > MAX_CLUSTER_COLUMNS {
        return Err(Error::Schema(format!(
            "CLUSTER BY takes at most {MAX_CLUSTER_COLUMNS} columns, not {}",
            cluster_by.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for c in cluster_by {
        if !seen.insert(c) {
            return Err(Error::Schema(format!("CLUSTER BY lists {c} twice")));
        }
        scalar_column(schema, c, "cluster")?;
        if partition_columns.contains(c) {
            return Err(Error::Schema(format!(
                "{c} is a partition column: each cell holds one value of it, so clustering by it \
                 orders nothing"
            )));
        }
    }
    Ok(())
}

/// The value of [`CLUSTER_BY_PROPERTY`] for `cluster_by`.
pub(crate) fn cluster_property(cluster_by: &[String]) -> String {
    serde_json::to_string(cluster_by).unwrap_or_else(|_| "[]".into())
}

/// The cluster columns a property value names. The value comes from storage, so anything but a
/// short array of strings reads as no clustering rather than failing every write.
pub(crate) fn parse_cluster_property(value: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(value) {
        Ok(v) if v.len() <= MAX_CLUSTER_COLUMNS => v,
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[test]
fn cluster_property_round_trips_and_refuses_junk() {
    let cols = vec!["l_shipdate".to_string(), "odd \"name\"".to_string()];
    assert_eq!(parse_cluster_property(&cluster_property(&cols)), cols);
    assert_eq!(
        parse_cluster_property(&cluster_property(&[])),
        Vec::<String>::new()
    );
    for junk in ["", "l_shipdate", "{}", "[1]", r#"["a","b","c","d","e"]"#] {
        assert!(parse_cluster_property(junk).is_empty(), "{junk:?}");
    }
}

/// Checks that `name` is a column of `schema` with a scalar type (`what`: its role, for errors).
fn scalar_column(schema: &SchemaRef, name: &str, what: &str) -> Result<()> {
    let field = schema
        .field_with_name(name)
        .map_err(|_| Error::Schema(format!("{what} column {name} is not a column of the frame")))?;
    if field.data_type().is_nested() {
        return Err(Error::Schema(format!(
            "{what} column {name} must have a scalar type, not {}",
            field.data_type()
        )));
    }
    Ok(())
}

pub(crate) fn validate_partitioning(
    schema: &SchemaRef,
    partition_columns: &[String],
) -> Result<()> {
    for p in partition_columns {
        // A partition column names a directory level (`<column>=<value>/`).
        if !partition_name_ok(p) {
            return Err(Error::Schema(format!(
                "partition column {p:?} cannot name a directory: use letters, digits, '_', '-' or spaces"
            )));
        }
        scalar_column(schema, p, "partition")?;
        // Delta writes a binary partition value as escaped text, which readers (delta-rs among
        // them, and so the scan) do not decode back into the bytes.
        if let Ok(f) = schema.field_with_name(p)
            && matches!(
                f.data_type(),
                DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
                    | DataType::FixedSizeBinary(_)
            )
        {
            return Err(Error::Schema(format!(
                "partition column {p:?} is binary: Delta readers do not read binary partition \
                 values back as written; partition by another column"
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if !partition_columns.iter().all(|p| seen.insert(p)) {
        return Err(Error::Schema("a partition column is listed twice".into()));
    }
    if partition_columns.len() >= schema.fields().len() {
        return Err(Error::Schema(
            "at least one column must not be a partition column".into(),
        ));
    }
    Ok(())
}

/// Refuse a Delta table whose rows Apiary's scan would read wrongly. The scan reads the cells
/// the log lists as plain Parquet: a deletion vector's rows would come back as if never
/// deleted, and under column mapping every column's values would be NULL (the files name
/// columns by their physical names). Tables written elsewhere (Databricks enables deletion
/// vectors by default) are read through `CREATE EXTERNAL TABLE … STORED AS DELTA`.
pub(crate) fn readable(state: &deltalake::table::state::DeltaTableState, name: &str) -> Result<()> {
    let mode = state
        .metadata()
        .configuration()
        .get("delta.columnMapping.mode")
        .map(|m| m.to_ascii_lowercase());
    if mode.as_deref().is_some_and(|m| m != "none") {
        return Err(Error::Unsupported(format!(
            "reading a Delta table with column mapping ({name} has delta.columnMapping.mode = \
             {})",
            mode.unwrap_or_default()
        )));
    }
    let features = serde_json::to_value(state.protocol())
        .ok()
        .and_then(|p| p.get("readerFeatures").cloned());
    let may_delete = features
        .as_ref()
        .and_then(|f| f.as_array())
        .is_some_and(|f| f.iter().any(|f| f == "deletionVectors"));
    if may_delete
        && state
            .log_data()
            .iter()
            .any(|f| f.deletion_vector_descriptor().is_some())
    {
        return Err(Error::Unsupported(format!(
            "reading a Delta table with deletion vectors ({name} has rows deleted by them; \
             rewrite it without them, e.g. Spark's REORG TABLE … APPLY (PURGE))"
        )));
    }
    Ok(())
}
