//! `system.lakehouse.history`: every frame's recent commits as one table, so that a BI tool can
//! browse versions with plain SELECTs (`WHERE hive = … AND box = … AND frame = …` narrows what is
//! read; without it every frame's log is read, within bounds).

use std::sync::Arc;

use apiary_storage::{BoxRef, FrameRef, Ident, Lakehouse};
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;

use super::operations::{commit_columns, commit_fields};

/// Commits read per frame.
const PER_FRAME: usize = 100;
/// Frames read per scan.
const MAX_FRAMES: usize = 1_000;

/// The table's columns: where the frame is, then the commit.
pub fn history_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("hive", DataType::Utf8, false),
        Field::new("box", DataType::Utf8, false),
        Field::new("frame", DataType::Utf8, false),
    ];
    fields.extend(commit_fields());
    Arc::new(Schema::new(fields))
}

#[derive(Debug)]
pub(crate) struct HistoryTable {
    pub(crate) lakehouse: Lakehouse,
}

/// `column = 'literal'` conditions among `filters`.
fn equal_to(filters: &[Expr], column: &str) -> Option<String> {
    filters
        .iter()
        .flat_map(split_conjunction)
        .find_map(|e| match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c))
                    if c.name == column =>
                {
                    v.to_string().into()
                }
                _ => None,
            },
            _ => None,
        })
}

#[async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        history_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let ext = |e: apiary_storage::Error| DataFusionError::External(Box::new(e));
        let want = |col: &str| equal_to(filters, col);
        let (hive, bx, frame) = (want("hive"), want("box"), want("frame"));
        let catalog = self.lakehouse.catalog();
        let hives = match &hive {
            Some(h) => match Ident::parse(h) {
                Ok(h) if catalog.hive_exists(&h).await.map_err(ext)? => vec![h],
                _ => vec![],
            },
            None => catalog.list_hives().await.map_err(ext)?,
        };
        let mut frames = Vec::new();
        for h in hives {
            for b in catalog.list_boxes(Some(&h)).await.map_err(ext)? {
                if bx.as_ref().is_some_and(|x| x != b.name.as_str()) {
                    continue;
                }
                let b: BoxRef = b;
                for f in self.lakehouse.list_visible_frames(&b).await.map_err(ext)? {
                    if frame.as_ref().is_some_and(|x| x != f.as_str()) {
                        continue;
                    }
                    frames.push(FrameRef::new(b.hive.clone(), b.name.clone(), f));
                }
            }
        }
        frames.truncate(MAX_FRAMES);
        let mut batches = Vec::new();
        for f in frames {
            // Views and external files have no log; a frame dropped meanwhile is skipped.
            let Ok(snapshot) = self.lakehouse.frame(&f, None).await else {
                continue;
            };
            let commits = self
                .lakehouse
                .ledger()
                .history(&snapshot, PER_FRAME)
                .await
                .map_err(ext)?;
            let n = commits.len();
            let name = |s: &str| Arc::new(StringArray::from(vec![s.to_string(); n])) as ArrayRef;
            let mut columns = vec![
                name(f.hive.as_str()),
                name(f.box_name.as_str()),
                name(f.name.as_str()),
            ];
            columns.extend(commit_columns(&commits));
            batches.push(RecordBatch::try_new(history_schema(), columns)?);
        }
        MemorySourceConfig::try_new_exec(&[batches], history_schema(), projection.cloned())
            .map(|e| e as Arc<dyn ExecutionPlan>)
    }
}
