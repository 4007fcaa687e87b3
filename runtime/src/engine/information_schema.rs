//! `information_schema`: the SQL-standard views of what a lakehouse holds, as tools query them
//! (`SELECT … FROM information_schema.tables / columns / schemata / views`, and DataFusion's
//! `SHOW COLUMNS`, `SHOW FUNCTIONS`, which it answers from them).
//!
//! DataFusion builds these tables from the statement's catalog, which holds only the frames the
//! statement names. So a statement that names an `information_schema` table gets, beside those
//! frames, a listing of every hive, box and frame: hives and boxes from the catalog, and each
//! frame as a [`Listed`] table that answers for its kind, its view text and, when `columns` is
//! read, its columns — and cannot be scanned. The listing is read when the statement is planned,
//! as much of it as the tables named need, and holds at most [`MAX_LISTED`] boxes and frames.
//! In every hive, `information_schema` lists all hives, as DataFusion's does and as GetTables
//! does.
//!
//! Nothing is listed when only a schema is wanted ([`SCHEMA_ONLY`]: a view planned for its
//! columns), nor for DataFusion's `SHOW` statements, which name every `information_schema`
//! table but read only what they name (`SHOW COLUMNS FROM f` reads `f`, loaded for real).
//! `df_settings` shows the server's runtime settings (its scratch directory among them): an
//! admin's only, as EXPLAIN's file paths are.

use std::collections::HashSet;
use std::sync::Arc;

use apiary_storage::{FrameRef, Opened};
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    Session as DfSession, TableProvider,
};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan, Operator, Projection, lit};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;
use futures::future::BoxFuture;
use tracing::{debug, warn};

use super::catalog::EnsureSchema;
use super::{Engine, Role, Session};
use crate::error::{Error, Result};
use crate::sql::NameParts;

/// The box every hive answers `information_schema` queries from.
pub(super) const INFORMATION_SCHEMA: &str = "information_schema";

/// Most boxes and frames one `information_schema` statement lists.
pub(super) const MAX_LISTED: usize = 10_000;

/// Frames whose marker or log is read at once while listing.
const READS_AT_ONCE: usize = 16;

/// How much of the lakehouse a statement's `information_schema` tables need, least first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Listing {
    /// `df_settings`, `routines`, `parameters`: nothing from storage.
    Nothing,
    /// `schemata`: hives and boxes.
    Boxes,
    /// `tables`, `views`: every frame's name and kind (one marker read each).
    Kinds,
    /// `columns`: every frame's columns (its log, or its query planned for a view).
    Columns,
}

/// What an `information_schema` name needs listed; `None` for any other name. `df_settings` is
/// refused to all but admins, unless `show`: DataFusion's SHOW statements name it without
/// reading it.
pub(super) fn listing_for(parts: &NameParts, role: Role, show: bool) -> Result<Option<Listing>> {
    let table = match parts.as_slice() {
        [s, t] | [_, s, t] if s == INFORMATION_SCHEMA => t.as_str(),
        _ => return Ok(None),
    };
    Ok(Some(match table {
        "schemata" => Listing::Boxes,
        "tables" | "views" => Listing::Kinds,
        "columns" => Listing::Columns,
        "df_settings" if role != Role::Admin && !show => {
            return Err(Error::NotAllowed(
                "information_schema.df_settings shows the server's runtime settings, an \
                 admin's to read; SHOW ALL lists the options a session runs with"
                    .into(),
            ));
        }
        _ => Listing::Nothing,
    }))
}

/// Whether `statement` is one of DataFusion's `SHOW` statements (answered from
/// information_schema, reading only the frame it names).
pub(super) fn is_show(statement: &DfStatement) -> bool {
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    if let DfStatement::Explain(e) = statement {
        return is_show(&e.statement);
    }
    matches!(
        statement,
        DfStatement::Statement(s) if matches!(
            **s,
            Sql::ShowColumns { .. }
                | Sql::ShowFunctions { .. }
                | Sql::ShowCreate { .. }
                | Sql::ShowVariable { .. }
                | Sql::ShowVariables { .. }
                | Sql::ShowTables { .. }
        )
    )
}

/// A frame as `information_schema` shows it: kind, view text and columns, never its rows.
#[derive(Debug)]
struct Listed {
    schema: SchemaRef,
    kind: TableType,
    definition: Option<String>,
}

#[async_trait]
impl TableProvider for Listed {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.kind
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.definition.as_deref()
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Internal(
            "a frame listed for information_schema was scanned".into(),
        ))
    }
}

tokio::task_local! {
    /// Set while a statement is planned only for its schema (a view's columns): its
    /// `information_schema` tables list nothing, their columns being fixed.
    pub(super) static SCHEMA_ONLY: ();
}

impl Engine {
    /// Add to `catalogs` every hive, box and frame, as far as `level` needs, but for the frames
    /// the statement loads itself (`loaded`: registered for real, or views still to plan).
    pub(super) async fn list_for_information_schema(
        &self,
        level: Listing,
        string_views: bool,
        loaded: &HashSet<(FrameRef, String)>,
        catalogs: &MemoryCatalogProviderList,
        ensure_schema: &EnsureSchema<'_>,
    ) -> Result<()> {
        if level == Listing::Nothing || SCHEMA_ONLY.try_with(|_| ()).is_ok() {
            return Ok(());
        }
        let catalog = self.lakehouse.catalog();
        for hive in catalog.list_hives().await? {
            if catalogs.catalog(hive.as_str()).is_none() {
                let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                catalogs.register_catalog(hive.to_string(), c);
            }
        }
        let boxes = catalog.list_boxes(None).await?;
        let too_many = || {
            Error::ResourceExhausted(format!(
                "information_schema lists at most {MAX_LISTED} boxes and frames; this lakehouse \
                 holds more (GetTables lists them with filters)"
            ))
        };
        if boxes.len() > MAX_LISTED {
            return Err(too_many());
        }
        let mut frames = Vec::new();
        for b in &boxes {
            ensure_schema(b.hive.as_str(), b.name.as_str())?;
            if level == Listing::Boxes {
                continue;
            }
            for f in self.lakehouse.list_visible_frames(b).await? {
                if boxes.len() + frames.len() >= MAX_LISTED {
                    return Err(too_many());
                }
                let f = FrameRef::new(b.hive.clone(), b.name.clone(), f);
                if !loaded.contains(&(f.clone(), f.name.to_string())) {
                    frames.push(f);
                }
            }
        }
        let listed: Vec<_> = futures::stream::iter(frames)
            .map(|f| async move {
                let listed = self.listed(&f, level, string_views).await;
                (f, listed)
            })
            .buffered(READS_AT_ONCE)
            .collect()
            .await;
        for (f, listed) in listed {
            // Dropped since it was listed.
            let Some(listed) = listed? else { continue };
            let schema = ensure_schema(f.hive.as_str(), f.box_name.as_str())?;
            if !schema.table_exist(f.name.as_str()) {
                schema.register_table(f.name.to_string(), Arc::new(listed))?;
            }
        }
        Ok(())
    }

    /// One frame as listed, its columns typed as the statement would read them (strings as
    /// views when `string_views`); `None` if it is gone.
    async fn listed(
        &self,
        f: &FrameRef,
        level: Listing,
        string_views: bool,
    ) -> Result<Option<Listed>> {
        let empty = || Arc::new(Schema::empty());
        // A frame listed without columns: one that does not read, or whose columns are not asked.
        let bare = || Listed {
            schema: empty(),
            kind: TableType::Base,
            definition: None,
        };
        if level < Listing::Columns {
            let marker = match self.lakehouse.catalog().frame_marker(f).await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(None),
                // A marker that does not read (damaged, or not ours) is listed as a frame, as
                // SHOW TABLES lists it, rather than failing the listing of every frame.
                Err(e) if e.is_damage() => {
                    warn!(frame = %f, error = %e, "unreadable catalog entry listed as a frame");
                    return Ok(Some(bare()));
                }
                Err(e) => return Err(e.into()),
            };
            return Ok(Some(match marker.view {
                Some(v) => Listed {
                    schema: empty(),
                    kind: TableType::View,
                    definition: Some(v.query),
                },
                None => bare(),
            }));
        }
        Ok(Some(match self.lakehouse.open_frame(f, None).await {
            Ok(Opened::Frame(s)) => Listed {
                schema: self.frame_table(s).with_view_types(string_views).schema(),
                kind: TableType::Base,
                definition: None,
            },
            // External files that cannot be read now (moved, or of another shape), and a view
            // that no longer plans (a frame it reads was dropped), are listed without columns
            // rather than failing the listing.
            Ok(Opened::Files(e)) => Listed {
                schema: match self.external_files(&e, self.base_state()).await {
                    Ok(t) => t.schema(),
                    Err(err) => {
                        debug!(frame = %f, error = %err, "external frame listed without its columns");
                        empty()
                    }
                },
                kind: TableType::Base,
                definition: None,
            },
            Ok(Opened::View(v)) => {
                let schema = self.listed_view_schema(f).await.unwrap_or_else(|e| {
                    debug!(view = %f, error = %e, "view listed without its columns");
                    empty()
                });
                Listed {
                    schema,
                    kind: TableType::View,
                    definition: Some(v.query),
                }
            }
            Err(apiary_storage::Error::NotFound { .. }) => return Ok(None),
            // A frame whose log or marker does not read (damaged) is listed without columns:
            // one broken frame failed every BI tool's listing. Storage out of reach fails it.
            Err(e) if e.is_damage() => {
                warn!(frame = %f, error = %e, "unreadable frame listed without columns");
                bare()
            }
            Err(e) => return Err(e.into()),
        }))
    }

    /// A view's columns, planned as a reader would (boxed: planning it may list again).
    fn listed_view_schema<'a>(&'a self, f: &'a FrameRef) -> BoxFuture<'a, Result<SchemaRef>> {
        Box::pin(async move {
            let reader = Session {
                role: Role::Reader,
                ..Session::new("catalog")
            };
            self.view_schema(&reader, f).await
        })
    }
}

/// `information_schema.columns.ordinal_position` counts from 1, as the SQL standard,
/// PostgreSQL and JDBC have it; DataFusion's counts from 0. The rule puts a projection adding 1
/// over every scan of that table (and leaves a scan under its own projection alone, so running
/// it twice adds 1 once).
#[derive(Debug, Default)]
pub(super) struct OrdinalsFromOne;

const ORDINAL: &str = "ordinal_position";

impl AnalyzerRule for OrdinalsFromOne {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            if counts_from_one(&node) {
                return Ok(Transformed::no(node));
            }
            node.map_children(|child| match columns_scan(&child) {
                true => from_one(child).map(Transformed::yes),
                false => Ok(Transformed::no(child)),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_ordinals_from_one"
    }
}

/// `information_schema.views` lists users' views and the `system` status tables (which `tables`
/// types `VIEW` too). DataFusion's lists every table, so base frames showed there as views (with
/// no definition). The rule puts a filter over every scan of that table; DataFusion's `SHOW
/// CREATE TABLE`, read from it, then answers no row for a base frame (it answered a NULL).
#[derive(Debug, Default)]
pub(super) struct OnlyViewsInViews;

const DEFINITION: &str = "definition";

impl AnalyzerRule for OnlyViewsInViews {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(s) = &node else {
                return Ok(Transformed::no(node));
            };
            if s.table_name.table() != "views" || s.table_name.schema() != Some(INFORMATION_SCHEMA)
            {
                return Ok(Transformed::no(node));
            }
            let column = |name: &str| -> DfResult<Expr> {
                let (qualifier, field) = s
                    .projected_schema
                    .qualified_field_with_unqualified_name(name)?;
                Ok(Expr::Column(Column::new(qualifier.cloned(), field.name())))
            };
            let kept = column(DEFINITION)?
                .is_not_null()
                .or(column("table_catalog")?.eq(lit(apiary_storage::paths::SYSTEM_HIVE)));
            Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(
                kept,
                Arc::new(node),
            )?)))
        })
        .data()
    }

    fn name(&self) -> &str {
        "apiary_only_views_in_views"
    }
}

/// Whether `plan` scans `information_schema.columns`, its ordinal among the columns read.
fn columns_scan(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::TableScan(s)
        if s.table_name.table() == "columns"
            && s.table_name.schema() == Some(INFORMATION_SCHEMA)
            && s.projected_schema.field_with_unqualified_name(ORDINAL).is_ok())
}

/// Whether `plan` is [`from_one`]'s projection.
fn counts_from_one(plan: &LogicalPlan) -> bool {
    let LogicalPlan::Projection(p) = plan else {
        return false;
    };
    columns_scan(&p.input)
        && p.expr.iter().any(|e| {
            matches!(e, Expr::Alias(a) if a.name == ORDINAL
                && matches!(a.expr.as_ref(), Expr::BinaryExpr(b) if b.op == Operator::Plus
                    && matches!(b.left.as_ref(), Expr::Column(c) if c.name == ORDINAL)
                    && matches!(b.right.as_ref(), Expr::Literal(ScalarValue::UInt64(Some(1)), _))))
        })
}

/// `scan` with 1 added to its ordinals, every column keeping its name and qualifier.
fn from_one(scan: LogicalPlan) -> DfResult<LogicalPlan> {
    let exprs = scan
        .schema()
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
            match field.name() == ORDINAL {
                true => (column + lit(1u64)).alias_qualified(qualifier.cloned(), ORDINAL),
                false => column,
            }
        })
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(scan),
    )?))
}
