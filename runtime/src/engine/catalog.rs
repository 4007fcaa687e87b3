//! Names and the per-statement catalog: the one place where a name as written (`f`, `b.f`,
//! `h.b.f`, or a DataFusion `TableReference`) becomes a hive, box or frame, and where the frames a
//! statement names are loaded, each at one pinned version.

use std::collections::HashMap;
use std::sync::Arc;

use apiary_storage::paths::SYSTEM_HIVE;
use apiary_storage::{BoxRef, FrameRef, Ident, Opened};
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::common::TableReference;
use datafusion::execution::context::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::sql::parser::Statement as DfStatement;
use tracing::debug;

use super::{Caller, Engine, Pins, PlanTarget, Session};
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

/// What resolving a statement's names found.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    /// The version each frame was loaded at.
    pub(super) pins: Pins,
    /// A frame that does not exist, reported if planning fails.
    pub(super) missing: Vec<(String, apiary_storage::Error)>,
    /// The statement names tables, all of them in `system`.
    pub(super) system_only: bool,
}

impl Engine {
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
        let refs = self.base.resolve_table_references(statement)?;
        let catalogs = MemoryCatalogProviderList::new();
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
                    let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
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
        let mut loaded: HashMap<(FrameRef, String), Arc<dyn TableProvider>> = HashMap::new();
        for r in refs {
            let mut parts = table_ref_parts(&r);
            if is_system(&parts) {
                continue;
            }
            resolved.system_only = false;
            // The name DataFusion looks up; `f@v3` is frame `f` at version 3 (time travel).
            let Some(registered) = parts.last().cloned() else {
                continue;
            };
            let (name, as_of) = travel::split(&registered)?;
            if let Some(last) = parts.last_mut() {
                *last = name.to_string();
            }
            let Ok(frame) = frame_ref(session, &parts) else {
                continue;
            };
            if loaded.contains_key(&(frame.clone(), registered.clone())) {
                continue;
            }
            let opened = match as_of {
                None => {
                    self.lakehouse
                        .open_frame(&frame, pins.get(&frame).copied())
                        .await
                }
                Some(at) => self.open_as_of(&frame, at).await,
            };
            match opened {
                Ok(opened) => {
                    let table: Arc<dyn TableProvider> = match opened {
                        Opened::Frame(snapshot) if as_of.is_some() => {
                            Arc::new(self.frame_table(snapshot.historic()))
                        }
                        Opened::Frame(snapshot) => {
                            resolved.pins.insert(frame.clone(), snapshot.version());
                            Arc::new(self.frame_table(snapshot).with_user(session.user.clone()))
                        }
                        // No versions to pin: files are listed again when the ticket runs.
                        Opened::Files(external) => {
                            self.external_files(&external, &self.base).await?
                        }
                    };
                    let schema = ensure_schema(frame.hive.as_str(), frame.box_name.as_str())?;
                    schema.register_table(registered.clone(), table.clone())?;
                    loaded.insert((frame, registered), table);
                }
                Err(e @ apiary_storage::Error::NotFound { .. }) => {
                    debug!(frame = %frame, "referenced frame not found");
                    let looked_up = format!("{}.{}.{registered}", frame.hive, frame.box_name);
                    resolved.missing.push((looked_up, e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut config = self.base.config().clone().with_extension(Arc::new(Caller {
            user: session.user.clone(),
            role: session.role,
        }));
        super::options::apply(config.options_mut(), session)?;
        config.options_mut().catalog.default_catalog = session.hive.to_string();
        config.options_mut().catalog.default_schema = session.box_name.to_string();
        if let Some(n) = target.partitions {
            config.options_mut().execution.target_partitions = n.max(1);
        }
        let mut builder = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_config(config)
            .with_catalog_list(Arc::new(catalogs));
        if let Some(env) = target.env {
            builder = builder.with_runtime_env(env.clone());
        }
        let mut state = builder.build();
        // What SessionContext does for every statement: fix the statement's start time, so that
        // now(), current_date and current_time are simplified to that one instant when planning
        // (without it they reach execution unsimplified and fail there).
        let options = Arc::new(state.config_options().as_ref().clone());
        state.execution_props_mut().mark_start_execution(options);
        Ok((state, resolved))
    }
}
