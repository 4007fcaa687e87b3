//! `SHOW HIVES|BOXES|FRAMES`, `SHOW name|ALL` and `DESCRIBE`.

use std::sync::Arc;

use apiary_storage::{BoxRef, Ident};
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use super::catalog;
use super::{Engine, Session};
use crate::error::{Error, Result};
use crate::sql::{Command, NameParts};

impl Engine {
    pub(super) async fn show(&self, session: &Session, cmd: &Command) -> Result<RecordBatch> {
        let cat = self.lakehouse.catalog();
        match cmd {
            Command::ShowHives => {
                let hives = cat.list_hives().await?;
                string_batch(
                    &["hive"],
                    vec![hives.iter().map(|h| h.to_string()).collect()],
                )
            }
            Command::ShowBoxes { hive } => {
                let hive = match hive {
                    Some(h) => Ident::parse(h)?,
                    None => session.hive.clone(),
                };
                cat.require_hive(&hive).await?;
                let boxes = cat.list_boxes(Some(&hive)).await?;
                string_batch(
                    &["hive", "box"],
                    vec![
                        boxes.iter().map(|b| b.hive.to_string()).collect(),
                        boxes.iter().map(|b| b.name.to_string()).collect(),
                    ],
                )
            }
            Command::ShowFrames { scope } => {
                let b = match scope {
                    None => BoxRef::new(session.hive.clone(), session.box_name.clone()),
                    Some(parts) => catalog::box_ref(session, parts)?,
                };
                cat.require_box(&b).await?;
                let frames = self.lakehouse.list_visible_frames(&b).await?;
                string_batch(
                    &["hive", "box", "frame"],
                    vec![
                        frames.iter().map(|_| b.hive.to_string()).collect(),
                        frames.iter().map(|_| b.name.to_string()).collect(),
                        frames.iter().map(|f| f.to_string()).collect(),
                    ],
                )
            }
            Command::ShowOptions { name } => self.show_options(session, name.as_deref()),
            _ => Err(Error::Internal("show() on another command".into())),
        }
    }

    /// `DESCRIBE f` in the layout Spark and Databricks users know: one row per column, then a
    /// partition section and a detail section, as (col_name, data_type, comment).
    pub(super) async fn describe(
        &self,
        session: &Session,
        name: &NameParts,
    ) -> Result<RecordBatch> {
        let frame = catalog::frame_ref(session, name)?;
        // A system or information_schema table: its columns, as the engine plans it.
        if frame.hive.as_str() == apiary_storage::paths::SYSTEM_HIVE
            || frame.box_name.as_str() == super::information_schema::INFORMATION_SCHEMA
        {
            let schema = self.view_schema(session, &frame).await?;
            let mut rows = column_rows(&schema);
            rows.push(("# Frame Information".into(), String::new(), String::new()));
            rows.push(("Frame".into(), frame.to_string(), String::new()));
            rows.push(("System".into(), "read-only".into(), String::new()));
            return describe_batch(&rows);
        }
        let snap = match self.lakehouse.open_frame(&frame, None).await? {
            apiary_storage::Opened::Frame(s) => s,
            apiary_storage::Opened::Files(e) => return self.describe_files(&frame, &e).await,
            apiary_storage::Opened::View(v) => {
                let schema = self.view_schema(session, &frame).await?;
                let mut rows = column_rows(&schema);
                rows.push(("# View Information".into(), String::new(), String::new()));
                rows.push(("View".into(), frame.to_string(), String::new()));
                rows.push(("Query".into(), v.query, String::new()));
                return describe_batch(&rows);
            }
        };
        let stats = snap.stats();
        let described = apiary_storage::schema::described_schema(snap.schema());
        let mut rows = column_rows(&described);
        if !snap.partition_columns().is_empty() {
            rows.push((
                "# Partition Information".into(),
                String::new(),
                String::new(),
            ));
            for p in snap.partition_columns() {
                let dt = described
                    .field_with_name(p)
                    .map(apiary_storage::schema::column_type_name)
                    .unwrap_or_default();
                rows.push((p.clone(), dt, String::new()));
            }
        }
        rows.push(("# Frame Information".into(), String::new(), String::new()));
        // Admins see where the frame lives (to read it with Spark or DuckDB); others see it
        // relative to the storage root, not the server's directories.
        let storage = self.lakehouse.storage();
        let location = match (session.role, storage.relative(snap.location())) {
            (super::Role::Admin, _) => storage.url_for_key(snap.location())?.to_string(),
            (_, Some(relative)) => format!("{relative}/ (in the storage root)"),
            (_, None) => "outside the storage root".to_string(),
        };
        if snap.writable().is_err() {
            rows.push((
                "External".into(),
                "delta table, read-only".into(),
                String::new(),
            ));
        }
        for (k, v) in [
            ("Frame", frame.to_string()),
            ("Version", snap.version().to_string()),
            ("Cells", stats.cells.to_string()),
            ("Rows", stats.rows.to_string()),
            ("Bytes", stats.bytes.to_string()),
            ("Partition columns", snap.partition_columns().join(", ")),
            ("Cluster columns", snap.cluster_by().join(", ")),
            ("Location", location),
        ] {
            rows.push((k.to_string(), v, String::new()));
        }
        describe_batch(&rows)
    }

    /// `DESCRIBE` of an external frame over Parquet or CSV files: columns as read from the
    /// data, then where it is.
    async fn describe_files(
        &self,
        frame: &apiary_storage::FrameRef,
        external: &apiary_storage::ExternalV1,
    ) -> Result<RecordBatch> {
        let table = self.external_files(external, self.base_state()).await?;
        let mut rows = column_rows(&table.schema());
        rows.push(("# Frame Information".into(), String::new(), String::new()));
        for (k, v) in [
            ("Frame", frame.to_string()),
            (
                "External",
                format!("{} files, read-only", external.format.as_str()),
            ),
        ] {
            rows.push((k.to_string(), v, String::new()));
        }
        describe_batch(&rows)
    }
}

fn string_batch(names: &[&str], columns: Vec<Vec<String>>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect();
    Ok(RecordBatch::try_new(schema, arrays)?)
}

pub(super) fn one_batch_stream(batch: RecordBatch) -> SendableRecordBatchStream {
    let schema = batch.schema();
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(vec![Ok(batch)]),
    ))
}

/// `batch` with `needle` removed from every text value (storage prefixes in EXPLAIN output).
pub(crate) fn redact_text(
    batch: &RecordBatch,
    needle: &str,
) -> datafusion::error::Result<RecordBatch> {
    use arrow::array::{Array, AsArray};
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.as_string_opt::<i32>() {
            Some(s) => Arc::new(
                s.iter()
                    .map(|v| v.map(|v| v.replace(needle, "")))
                    .collect::<StringArray>(),
            ) as Arc<dyn Array>,
            None => c.clone(),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// DESCRIBE's rows for the columns of `schema`: (name, SQL type, NOT NULL or nothing).
fn column_rows(schema: &arrow::datatypes::Schema) -> Vec<(String, String, String)> {
    schema
        .fields()
        .iter()
        .map(|f| {
            (
                f.name().clone(),
                apiary_storage::schema::column_type_name(f),
                if f.is_nullable() { "" } else { "NOT NULL" }.to_string(),
            )
        })
        .collect()
}

/// DESCRIBE's answer: (col_name, data_type, comment) rows.
fn describe_batch(rows: &[(String, String, String)]) -> Result<RecordBatch> {
    string_batch(
        &["col_name", "data_type", "comment"],
        vec![
            rows.iter().map(|r| r.0.clone()).collect(),
            rows.iter().map(|r| r.1.clone()).collect(),
            rows.iter().map(|r| r.2.clone()).collect(),
        ],
    )
}
