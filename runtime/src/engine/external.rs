//! External frames: `CREATE EXTERNAL TABLE name STORED AS PARQUET|CSV|DELTA LOCATION '…'`
//! registers data in place as a read-only frame.
//!
//! The location is a path relative to the storage root, or an absolute path / URL under the
//! root or under a root the operator allowed (`--external-root`); anything else, and Apiary's
//! own `_apiary/` objects, is PERMISSION_DENIED ([`apiary_storage::Storage::external_location`]).
//! The engine's object-store registry serves reads, never writes, under those roots, so no plan
//! reaches further. Delta tables are read through the ledger (pinned versions, statistics);
//! Parquet and CSV through DataFusion's listing table, its schema inferred at each query.

use std::sync::Arc;

use apiary_storage::{ExternalFormat, ExternalV1, FrameRef, Opened};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::common::Statistics;
use datafusion::common::config::ConfigFileType;
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectStoreExt;

use super::Engine;
use super::types::Output;
use crate::error::{Error, Result};

impl Engine {
    /// `CREATE EXTERNAL TABLE`: check the location and options, then register the frame.
    pub(super) async fn create_external(
        &self,
        c: Box<CreateExternalTable>,
        state: &SessionState,
        frame: FrameRef,
    ) -> Result<Output> {
        let refuse = |what: &str| Err(Error::Unsupported(format!("{what} on an external frame")));
        if c.or_replace {
            return refuse("CREATE OR REPLACE (drop it, then create it again)");
        }
        if c.temporary || c.unbounded {
            return refuse("TEMPORARY and UNBOUNDED");
        }
        if !c.table_partition_cols.is_empty() {
            return refuse("PARTITIONED BY");
        }
        if !c.order_exprs.is_empty() || !c.constraints.is_empty() {
            return refuse("WITH ORDER and constraints");
        }
        if !c.schema.fields().is_empty() {
            return refuse("a column list (the columns are read from the data)");
        }
        let Some(format) = ExternalFormat::parse(&c.file_type) else {
            return Err(Error::Unsupported(format!(
                "external {} data (external frames read parquet, csv, delta)",
                c.file_type
            )));
        };
        let [location] = c.locations.as_slice() else {
            return refuse("more than one LOCATION");
        };
        let location = self.lakehouse.storage().external_location(location)?;
        let external = ExternalV1 {
            format,
            location: location.to_string(),
            options: c.options.clone().into_iter().collect(),
        };
        // Options that do not apply fail now, not at every later query.
        match external.format {
            ExternalFormat::Delta if !external.options.is_empty() => {
                return refuse("OPTIONS for Delta data");
            }
            ExternalFormat::Delta => {}
            _ => {
                file_format(&external, state)?;
            }
        }
        self.lakehouse
            .create_external(&frame, external, c.if_not_exists)
            .await?;
        Ok(Output::Done)
    }

    /// What a name in a box is and, when asked, the columns it serves (GetTables); `None` if it
    /// does not exist. One catalog read without the schema; one open with it.
    pub async fn frame_entry(
        &self,
        frame: &FrameRef,
        with_schema: bool,
    ) -> Result<Option<super::FrameEntry>> {
        if !with_schema {
            let marker = match self.lakehouse.catalog().frame_marker(frame).await {
                Ok(m) => m,
                // Listed as a frame, as SHOW TABLES lists it.
                Err(e) if e.is_damage() => {
                    tracing::warn!(frame = %frame, error = %e, "unreadable catalog entry listed as a frame");
                    return Ok(Some(super::FrameEntry {
                        view: false,
                        schema: None,
                    }));
                }
                Err(e) => return Err(e.into()),
            };
            return Ok(marker.map(|m| super::FrameEntry {
                view: m.view.is_some(),
                schema: None,
            }));
        }
        // A view whose query no longer plans (a frame it reads was dropped), or external files
        // that cannot be read, is listed without columns: one broken entry must not fail a
        // listing of every frame (GetTables with schemas, as BI tools ask for columns).
        let unreadable = |what: &str, e: Error| {
            tracing::warn!(frame = %frame, error = %e, "{what}: listed without columns");
            None
        };
        let (view, schema) = match self.lakehouse.open_frame(frame, None).await {
            Ok(Opened::Frame(s)) => (
                false,
                Some(apiary_storage::schema::described_schema(s.schema())),
            ),
            Ok(Opened::Files(e)) => (
                false,
                match self.external_files(&e, self.base_state()).await {
                    Ok(files) => Some(files.schema()),
                    Err(e) => unreadable("external frame unreadable", e),
                },
            ),
            Ok(Opened::View(_)) => {
                let session = super::Session {
                    role: super::Role::Reader,
                    ..super::Session::new("catalog")
                };
                (
                    true,
                    match self.view_schema(&session, frame).await {
                        Ok(schema) => Some(schema),
                        Err(e) => unreadable("view does not plan", e),
                    },
                )
            }
            Err(apiary_storage::Error::NotFound { .. }) => return Ok(None),
            // A damaged frame (its log or marker does not read); storage out of reach fails.
            Err(e) if e.is_damage() => (false, unreadable("frame unreadable", e.into())),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(super::FrameEntry { view, schema }))
    }

    /// The columns a view answers with (its query, planned as it would run).
    pub(super) async fn view_schema(
        &self,
        session: &super::Session,
        view: &FrameRef,
    ) -> Result<SchemaRef> {
        let q = |i: &apiary_storage::Ident| format!("\"{}\"", i.as_str());
        let text = format!(
            "SELECT * FROM {}.{}.{}",
            q(&view.hive),
            q(&view.box_name),
            q(&view.name)
        );
        let parsed = self
            .base_state()
            .sql_to_statement(&text, &datafusion::config::Dialect::Generic)?;
        // Only its schema is wanted: information_schema tables it reads list nothing.
        super::information_schema::SCHEMA_ONLY
            .scope((), async {
                let (state, _) = self
                    .statement_state(session, &parsed, &super::Pins::new(), Default::default())
                    .await?;
                let plan = state.statement_to_plan(parsed).await?;
                Ok(Arc::new(plan.schema().as_arrow().clone()))
            })
            .await
    }

    /// External Parquet or CSV files as a read-only table.
    pub(super) async fn external_files(
        &self,
        external: &ExternalV1,
        state: &SessionState,
    ) -> Result<Arc<dyn TableProvider>> {
        let storage = self.lakehouse.storage();
        let key = apiary_storage::paths::external_key(&external.location)?;
        storage.check_external_key(&key)?;
        let dir = storage.url_for_key(&key)?;
        // One file, or a directory of them.
        let is_file = storage.raw_store().head(&key).await.is_ok();
        let url = match is_file {
            true => dir.as_str().trim_end_matches('/').to_string(),
            false => dir.to_string(),
        };
        let url = ListingTableUrl::parse(&url)?;
        let (format, extension) = file_format(external, state)?;
        let mut options = ListingOptions::new(format);
        if !is_file {
            options = options.with_file_extension(extension);
        }
        let schema = options.infer_schema(state, &url).await?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        Ok(Arc::new(ReadOnly(Arc::new(ListingTable::try_new(config)?))))
    }
}

/// The file format of external files with the frame's options, and the file extension read
/// from a directory.
fn file_format(
    external: &ExternalV1,
    state: &SessionState,
) -> Result<(Arc<dyn FileFormat>, &'static str)> {
    let mut table = state.default_table_options();
    let (kind, extension) = match external.format {
        ExternalFormat::Csv => (ConfigFileType::CSV, ".csv"),
        _ => (ConfigFileType::PARQUET, ".parquet"),
    };
    table.set_config_format(kind);
    let options = external.options.clone().into_iter().collect();
    table
        .alter_with_string_hash_map(&options)
        .map_err(|e| Error::Sql(format!("OPTIONS of an external frame: {e}")))?;
    let format: Arc<dyn FileFormat> = match external.format {
        ExternalFormat::Csv => Arc::new(CsvFormat::default().with_options(table.csv)),
        _ => Arc::new(ParquetFormat::default().with_options(table.parquet)),
    };
    Ok((format, extension))
}

/// A table that reads and refuses every write.
#[derive(Debug)]
struct ReadOnly(Arc<dyn TableProvider>);

#[async_trait]
impl TableProvider for ReadOnly {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.0.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.0.statistics()
    }

    async fn insert_into(
        &self,
        _state: &dyn DfSession,
        _input: Arc<dyn ExecutionPlan>,
        _op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(never_written())
    }

    async fn delete_from(
        &self,
        _state: &dyn DfSession,
        _filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(never_written())
    }

    async fn update(
        &self,
        _state: &dyn DfSession,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(never_written())
    }

    async fn truncate(&self, _state: &dyn DfSession) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(never_written())
    }

    async fn merge_into(
        &self,
        _state: &dyn DfSession,
        _source: Arc<dyn ExecutionPlan>,
        _merge_schema: datafusion::common::DFSchemaRef,
        _on: Expr,
        _clauses: Vec<datafusion::logical_expr::dml::MergeIntoClause>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(never_written())
    }
}

/// Every write to an external frame of files (PERMISSION_DENIED, as for an external Delta
/// table; DataFusion's own answer was NOT_IMPLEMENTED).
fn never_written() -> DataFusionError {
    DataFusionError::External(Box::new(apiary_storage::Error::NotAllowed(
        "an external frame is read in place and never written".into(),
    )))
}
