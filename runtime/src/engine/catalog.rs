//! Names and the per-statement catalog: the one place where a name as written (`f`, `b.f`,
//! `h.b.f`, or a DataFusion `TableReference`) becomes a hive, box or frame, and where the frames a
//! statement names are loaded, each at one pinned version.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use apiary_storage::paths::SYSTEM_HIVE;
use apiary_storage::{BoxRef, FrameRef, Ident, Opened, ViewV1};
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::common::TableReference;
use datafusion::execution::context::SessionState;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;
use tracing::debug;

use super::{Caller, Engine, Pin, Pins, PlanTarget, Session, information_schema};
use crate::error::{Error, Result};
use crate::sql::NameParts;
use crate::sql::travel::{self, AsOf};

/// A hive named by the user.
pub(super) fn hive(raw: &str) -> Result<Ident> {
    Ok(Ident::parse(raw)?)
}

/// `b` (in the session's hive) or `h.b`.
pub(super) fn box_ref(session: &Session, parts: &NameParts) -> Result<BoxRef> {
    Ok(match parts.as_slice() {
        [b] => BoxRef::new(session.hive.clone(), Ident::parse(b)?),
        [h, b] => BoxRef::new(Ident::parse(h)?, Ident::parse(b)?),
        _ => return Err(Error::Sql("a box name has one or two parts".into())),
    })
}

/// `f`, `b.f` or `h.b.f`, completed from the session.
pub(super) fn frame_ref(session: &Session, parts: &NameParts) -> Result<FrameRef> {
    Ok(match parts.as_slice() {
        [f] => FrameRef::new(
            session.hive.clone(),
            session.box_name.clone(),
            Ident::parse(f)?,
        ),
        [b, f] => FrameRef::new(session.hive.clone(), Ident::parse(b)?, Ident::parse(f)?),
        [h, b, f] => FrameRef::new(Ident::parse(h)?, Ident::parse(b)?, Ident::parse(f)?),
        _ => return Err(Error::Sql("a frame name has one to three parts".into())),
    })
}

/// A DataFusion table reference as name parts.
pub(super) fn table_ref_parts(r: &TableReference) -> NameParts {
    match r {
        TableReference::Bare { table } => vec![table.to_string()],
        TableReference::Partial { schema, table } => {
            vec![schema.to_string(), table.to_string()]
        }
        TableReference::Full {
            catalog,
            schema,
            table,
        } => vec![catalog.to_string(), schema.to_string(), table.to_string()],
    }
}

fn is_system(parts: &NameParts) -> bool {
    parts.len() == 3 && parts[0] == SYSTEM_HIVE
}

/// `parts` with the hive and box it was written in filled in: `nodes` in a session placed in
/// `system.runtime` is `system.runtime.nodes`.
fn qualified(parts: &NameParts, hive: &Ident, box_name: &Ident) -> NameParts {
    match parts.as_slice() {
        [t] => vec![hive.to_string(), box_name.to_string(), t.clone()],
        [b, t] => vec![hive.to_string(), b.clone(), t.clone()],
        _ => parts.clone(),
    }
}

/// What resolving a statement's names found.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    /// The version each frame was loaded at.
    pub(super) pins: Pins,
    /// A frame that does not exist, reported if planning fails.
    pub(super) missing: Vec<(String, apiary_storage::Error)>,
    /// The statement names tables, all of them in `system`.
    pub(super) system_only: bool,
    /// The statement names a `system` table (a snapshot taken when planned).
    pub(super) reads_system: bool,
    /// Bytes of cells in the frames it reads, summed only when planning for a swarm
    /// (saturated for external files, which are not counted).
    pub(super) cell_bytes: u64,
    /// The target's partitions, when the statement was planned for them.
    pub(super) planned_for: Option<usize>,
    /// The views the statement reads, directly or through other views.
    pub(super) views: Vec<FrameRef>,
}

/// Finds or makes the schema provider of a box in the statement's catalog.
pub(super) type EnsureSchema<'a> =
    dyn Fn(&str, &str) -> Result<Arc<dyn SchemaProvider>> + Sync + 'a;

/// Deepest nesting of views in views.
const MAX_VIEW_DEPTH: usize = 16;
/// Most views one statement reads.
const MAX_VIEWS: usize = 64;

/// Frames a statement opens at once while it is planned (each open reads its catalog marker and
/// checks its log for a newer version).
const MAX_OPENS_AT_ONCE: usize = 16;

impl Engine {
    /// Whether a session can be placed in `hive`: one in storage, or `system` (the node's
    /// status tables, which clients list as a catalog).
    pub async fn hive_exists(&self, hive: &Ident) -> Result<bool> {
        if hive.as_str() == SYSTEM_HIVE && self.system.is_some() {
            return Ok(true);
        }
        Ok(self.lakehouse.catalog().hive_exists(hive).await?)
    }

    /// Whether a session can be placed in box `b`: one in storage, a box of `system`, or any
    /// hive's `information_schema` — every box clients list.
    pub async fn box_exists(&self, b: &BoxRef) -> Result<bool> {
        if b.name.as_str() == information_schema::INFORMATION_SCHEMA {
            return self.hive_exists(&b.hive).await;
        }
        if b.hive.as_str() == SYSTEM_HIVE {
            return Ok(self
                .system
                .as_ref()
                .is_some_and(|s| s.catalog().schema(b.name.as_str()).is_some()));
        }
        Ok(self.lakehouse.catalog().box_exists(b).await?)
    }

    /// The box a session entering `hive` is placed in: `default`, or `information_schema`
    /// (which every hive has, `system` among them) where the hive has no `default` box.
    pub async fn entry_box(&self, hive: &Ident) -> Result<Ident> {
        let default = Ident::default_box();
        if self
            .box_exists(&BoxRef::new(hive.clone(), default.clone()))
            .await?
        {
            return Ok(default);
        }
        Ok(Ident::parse(information_schema::INFORMATION_SCHEMA)?)
    }

    /// Plan each view a statement reads (in its own hive and box) and register it; a view that
    /// reads another waits for that one. A view whose query no longer plans (a frame it reads
    /// was dropped) fails the statement with the reason.
    async fn plan_views(
        &self,
        state: &SessionState,
        mut pending: Vec<(FrameRef, Written, ViewV1)>,
        ensure_schema: &EnsureSchema<'_>,
    ) -> Result<()> {
        while !pending.is_empty() {
            let before = pending.len();
            let mut failed = Vec::new();
            let mut last_error = None;
            for (frame, written, view) in pending {
                // The statement's state (its functions as they are) in the view's hive and box.
                let mut in_view = state.clone();
                let names = &mut in_view.config_mut().options_mut().catalog;
                names.default_catalog = view.hive.clone();
                names.default_schema = view.box_name.clone();
                // Stored text is input like any statement: parsed, then bounded in depth,
                // before anything recursive plans it.
                let dialect = in_view.config().options().sql_parser.dialect;
                let planned = match in_view.sql_to_statement(&view.query, &dialect) {
                    Ok(mut parsed) => {
                        super::check_parsed(&parsed, &self.limits)?;
                        super::rewrite_parsed(&mut parsed, in_view.config().options());
                        super::cast_names::planned(&in_view, parsed).await
                    }
                    Err(e) => Err(e),
                };
                match planned {
                    Ok(plan) => {
                        // Stored in storage, so checked like any statement before it runs.
                        super::policy::check(&plan, super::policy::Purpose::Query)?;
                        let table = Arc::new(ViewTable::new(plan, Some(view.query.clone())));
                        written
                            .schema_of(&frame, ensure_schema)?
                            .register_table(written.name.clone(), table)?;
                    }
                    Err(e) => {
                        last_error = Some(format!("view {frame}: {e}"));
                        failed.push((frame, written, view));
                    }
                }
            }
            if failed.len() == before {
                return Err(Error::Sql(last_error.unwrap_or_default()));
            }
            pending = failed;
        }
        Ok(())
    }

    /// A frame at a version a statement named (`VERSION AS OF`, `TIMESTAMP AS OF`).
    async fn open_as_of(&self, frame: &FrameRef, at: AsOf) -> apiary_storage::Result<Opened> {
        let version = match at {
            AsOf::Version(v) => v,
            AsOf::Timestamp(t) => {
                let latest = self.lakehouse.frame(frame, None).await?;
                self.lakehouse.ledger().version_at(&latest, t).await?
            }
        };
        self.lakehouse.open_frame(frame, Some(version)).await
    }

    /// A session state whose catalog holds exactly the frames `statement` names, each pinned.
    pub(super) async fn statement_state(
        &self,
        session: &Session,
        statement: &DfStatement,
        pins: &Pins,
        target: PlanTarget<'_>,
    ) -> Result<(SessionState, Resolved)> {
        let refs = self.base_state().resolve_table_references(statement)?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let ensure_schema = |hive: &str, b: &str| -> Result<Arc<dyn SchemaProvider>> {
            let catalog = match catalogs.catalog(hive) {
                Some(c) => c,
                None => {
                    let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
                    catalogs.register_catalog(hive.to_string(), c.clone());
                    c
                }
            };
            Ok(match catalog.schema(b) {
                Some(s) => s,
                None => {
                    let s: Arc<dyn SchemaProvider> = Arc::new(StatementSchema::default());
                    catalog.register_schema(b, s.clone())?;
                    s
                }
            })
        };
        ensure_schema(session.hive.as_str(), session.box_name.as_str())?;
        if let Some(system) = &self.system {
            catalogs.register_catalog(SYSTEM_HIVE.to_string(), system.catalog());
        }
        let mut resolved = Resolved {
            system_only: !refs.is_empty(),
            ..Default::default()
        };
        let mut config = self
            .base_state()
            .config()
            .clone()
            .with_extension(Arc::new(Caller {
                user: session.user.clone(),
                role: session.role,
            }));
        super::options::apply(config.options_mut(), session)?;
        config.options_mut().catalog.default_catalog = session.hive.to_string();
        config.options_mut().catalog.default_schema = session.box_name.to_string();
        // Frames read strings as views when DataFusion would read its own Parquet tables so,
        // except in statements that change rows: delta-rs evaluates their expressions against
        // the stored (plain) types.
        let string_views =
            config.options().execution.parquet.schema_force_view_types && !changes_rows(statement);
        let mut loaded: HashSet<(FrameRef, String)> = HashSet::new();
        let mut names_seen: HashSet<(FrameRef, Option<String>, Option<String>, String)> =
            HashSet::new();
        // Names to resolve, each with the hive and box it was written in (a view's own for the
        // names inside it) and how many views deep it was found.
        let mut work: VecDeque<(NameParts, Ident, Ident, usize)> = refs
            .iter()
            .map(|r| {
                (
                    table_ref_parts(r),
                    session.hive.clone(),
                    session.box_name.clone(),
                    0,
                )
            })
            .collect();
        let mut views: Vec<(FrameRef, Written, ViewV1)> = Vec::new();
        // What the statement's `information_schema` tables need listed, if it names any.
        let mut listing: Option<information_schema::Listing> = None;
        let show = information_schema::is_show(statement);
        // Names are opened a round at a time, all of a round at once: each open is a round trip
        // or two to storage, which would otherwise add up frame by frame. A view's names make
        // the next round.
        while !work.is_empty() {
            let mut round: Vec<(FrameRef, Written, Option<AsOf>, usize)> = Vec::new();
            for (mut parts, hive, box_name, depth) in work.drain(..) {
                let full = qualified(&parts, &hive, &box_name);
                if let Some(level) = information_schema::listing_for(&full, session.role, show)? {
                    listing = listing.max(Some(level));
                    continue;
                }
                if is_system(&full) {
                    resolved.reads_system = true;
                    continue;
                }
                resolved.system_only = false;
                // The name DataFusion looks up; `f@v3` is frame `f` at version 3 (time travel).
                let Some(registered) = parts.last().cloned() else {
                    continue;
                };
                let (name, as_of) = travel::split(&registered)?;
                // DataFusion looks a qualified name up by its parts as written (a quoted
                // `"Sales".eu.t` keeps its case), while hives and boxes are stored folded.
                let written = Written {
                    hive: (parts.len() == 3).then(|| parts[0].clone()),
                    box_name: (parts.len() >= 2).then(|| parts[parts.len() - 2].clone()),
                    name: registered.clone(),
                };
                if let Some(last) = parts.last_mut() {
                    *last = name.to_string();
                }
                let context = Session {
                    hive,
                    box_name,
                    ..session.clone()
                };
                let Ok(frame) = frame_ref(&context, &parts) else {
                    continue;
                };
                // Loaded once per name as written: `"Sales".eu.t` and `sales.eu.t` are two
                // names DataFusion looks up for one frame.
                loaded.insert((frame.clone(), registered));
                let key = (
                    frame.clone(),
                    written.hive.clone(),
                    written.box_name.clone(),
                    written.name.clone(),
                );
                if names_seen.insert(key) {
                    round.push((frame, written, as_of, depth));
                }
            }
            let opens: Vec<(FrameRef, Option<AsOf>)> =
                round.iter().map(|(f, _, a, _)| (f.clone(), *a)).collect();
            let opened: Vec<_> = futures::stream::iter(opens)
                .map(|(frame, as_of)| async move {
                    match as_of {
                        None => {
                            self.lakehouse
                                .open_frame(&frame, pins.get(&frame).map(|p| p.version))
                                .await
                        }
                        Some(at) => self.open_as_of(&frame, at).await,
                    }
                })
                .buffered(MAX_OPENS_AT_ONCE)
                .collect()
                .await;
            for ((frame, written, as_of, depth), opened) in round.into_iter().zip(opened) {
                let registered = written.name.clone();
                // Cell bytes decide only between a swarm's partitions and the node's own: not
                // summed (one pass over each frame's log) when there is no swarm to plan for.
                if target.partitions.is_some()
                    && let Ok(Opened::Frame(snapshot)) = &opened
                {
                    resolved.cell_bytes =
                        resolved.cell_bytes.saturating_add(snapshot.stats().bytes);
                }
                let table: Arc<dyn TableProvider> = match opened {
                    Ok(Opened::Frame(snapshot)) if as_of.is_some() => Arc::new(
                        self.frame_table(snapshot.historic())
                            .with_view_types(string_views),
                    ),
                    Ok(Opened::Frame(snapshot)) => {
                        if let Some(pin) = pins.get(&frame)
                            && !pin.incarnation.is_empty()
                            && pin.incarnation != snapshot.incarnation()
                        {
                            return Err(Error::Storage(apiary_storage::Error::NotFound {
                                kind: apiary_storage::ObjectKind::Frame,
                                name: format!(
                                    "{frame} as planned (it was dropped and created again since)"
                                ),
                            }));
                        }
                        resolved.pins.insert(
                            frame.clone(),
                            Pin::new(snapshot.version(), snapshot.incarnation()),
                        );
                        Arc::new(
                            self.frame_table(snapshot)
                                .with_user(session.user.clone())
                                .with_view_types(string_views),
                        )
                    }
                    // No versions to pin: files are listed again when the ticket runs.
                    Ok(Opened::Files(external)) => {
                        resolved.cell_bytes = u64::MAX;
                        self.external_files(&external, self.base_state()).await?
                    }
                    // Planned once every name is loaded; what it reads is loaded like the rest.
                    Ok(Opened::View(view)) => {
                        if depth >= MAX_VIEW_DEPTH || views.len() >= MAX_VIEWS {
                            return Err(Error::Sql(format!(
                                "view {frame}: views nest more than {MAX_VIEW_DEPTH} deep, refer to \
                                 themselves, or a statement reads more than {MAX_VIEWS} of them"
                            )));
                        }
                        let parsed = self
                            .base_state()
                            .sql_to_statement(&view.query, &datafusion::config::Dialect::Generic)?;
                        let (vh, vb) = (Ident::parse(&view.hive)?, Ident::parse(&view.box_name)?);
                        for r in self.base_state().resolve_table_references(&parsed)? {
                            work.push_back((
                                table_ref_parts(&r),
                                vh.clone(),
                                vb.clone(),
                                depth + 1,
                            ));
                        }
                        resolved.views.push(frame.clone());
                        views.push((frame, written, view));
                        continue;
                    }
                    Err(e @ apiary_storage::Error::NotFound { .. }) => {
                        debug!(frame = %frame, "referenced frame not found");
                        let looked_up = format!("{}.{}.{registered}", frame.hive, frame.box_name);
                        resolved.missing.push((looked_up, e));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                written
                    .schema_of(&frame, &ensure_schema)?
                    .register_table(registered, table)?;
            }
        }
        // DataFusion's SHOW statements name every information_schema table; they read only the
        // frame they name, loaded above.
        if let Some(level) = listing.filter(|_| !show) {
            self.list_for_information_schema(
                level,
                string_views,
                &loaded,
                &catalogs,
                &ensure_schema,
            )
            .await?;
        }
        if let Some(n) = target.partitions
            && resolved.cell_bytes >= target.spread_from
        {
            config.options_mut().execution.target_partitions = n.max(1);
            resolved.planned_for = Some(n);
        }
        let mut state = self.state_for(config, catalogs.clone(), target.env);
        for f in super::functions::for_session(session) {
            state.register_udf(f)?;
        }
        // What SessionContext does for every statement: fix the statement's start time, so that
        // now(), current_date and current_time are simplified to that one instant when planning
        // (without it they reach execution unsimplified and fail there).
        let options = Arc::new(state.config_options().as_ref().clone());
        state.execution_props_mut().mark_start_execution(options);
        self.plan_views(&state, views, &ensure_schema).await?;
        Ok((state, resolved))
    }
}

/// A name as a statement wrote it: the hive and box when it gave them, and the last part.
struct Written {
    hive: Option<String>,
    box_name: Option<String>,
    name: String,
}

impl Written {
    /// The box DataFusion will look `frame` up in: the hive and box as written where given.
    fn schema_of(
        &self,
        frame: &FrameRef,
        ensure_schema: &EnsureSchema<'_>,
    ) -> Result<Arc<dyn SchemaProvider>> {
        ensure_schema(
            self.hive.as_deref().unwrap_or(frame.hive.as_str()),
            self.box_name.as_deref().unwrap_or(frame.box_name.as_str()),
        )
    }
}

/// A box as one statement sees it: the frames it loaded, registered under the names it wrote
/// them with. A time-travel read (`f@v3`, from `f VERSION AS OF 3`) resolves, but is not a name
/// the box lists: information_schema lists `f` only.
#[derive(Debug, Default)]
struct StatementSchema(MemorySchemaProvider);

#[async_trait::async_trait]
impl SchemaProvider for StatementSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.0.table_names();
        names.retain(|n| !n.contains('@'));
        names
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        self.0.table(name).await
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        self.0.register_table(name, table)
    }

    fn deregister_table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        self.0.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.0.table_exist(name)
    }
}

/// Whether `statement` deletes, updates or merges rows (also under `EXPLAIN`).
fn changes_rows(statement: &DfStatement) -> bool {
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    match statement {
        DfStatement::Statement(s) => {
            matches!(**s, Sql::Delete(_) | Sql::Update(_) | Sql::Merge(_))
        }
        DfStatement::Explain(e) => changes_rows(&e.statement),
        _ => false,
    }
}
