//! Keeping frames healthy: `OPTIMIZE` (compact cells, optionally Z-ordered), `VACUUM` (delete
//! cells no version within the retention needs, and leftovers of writes that never committed),
//! `ALTER TABLE … ADD COLUMN`, and checkpoints.
//!
//! VACUUM asks delta-rs which files to delete (a dry run, listing the frame's directory) and
//! deletes them itself, object by object: object_store 0.13's bulk delete fails on AWS S3
//! (delta-io/delta-rs#4644). Like delta-rs, it records a `VACUUM START` and a `VACUUM END` commit.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::Arc;

use datafusion::execution::context::SessionState;
use deltalake::DeltaTableError;
use deltalake::kernel::StructField;
use deltalake::kernel::schema::partitions::{FilterValue, filter_literal};
use deltalake::kernel::transaction::{CommitBuilder, TransactionError};
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tracing::{info, warn};

use crate::dml::operation_session;
use crate::error::{Error, Result};
use crate::ledger::{FrameSnapshot, Ledger};
use crate::paths;
use crate::shape::{CLUSTER_BY_PROPERTY, cluster_property, validate_clustering};

/// Values of each partition column holding a `~`, which delta-rs's compaction cannot read the
/// cells of: it escapes the cell's key again (object_store escapes `~`, Hive's partition
/// escaping does not), looks for `p=a%7Eb/…` where the cell is `p=a~b/…`, and fails the whole
/// OPTIMIZE. Left out of compaction; everything else reads and writes them.
fn uncompactable(snapshot: &FrameSnapshot) -> Vec<(String, Vec<String>)> {
    let mut found: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    if snapshot.partition_columns().is_empty() {
        return Vec::new();
    }
    for cell in snapshot.cells() {
        for (column, value) in cell.partition_values {
            if let Some(v) = value.filter(|v| v.contains('~')) {
                found.entry(column).or_default().insert(v);
            }
        }
    }
    found
        .into_iter()
        .map(|(c, v)| (c, v.into_iter().collect()))
        .collect()
}

/// One `column op value(s)` condition on a partition column, values as partition strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCondition {
    pub column: String,
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`, `in` or `not in`.
    pub op: String,
    pub values: Vec<String>,
}

/// What `OPTIMIZE` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Optimized {
    pub version: Option<i64>,
    pub cells_removed: u64,
    pub cells_added: u64,
}

/// What `VACUUM` did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    /// Keys, relative to the frame's root.
    pub files: Vec<String>,
    pub dry_run: bool,
}

/// Delta's default: a removed cell is kept a week, so that readers of recent versions and
/// writers that have not committed yet still find their files.
pub const DEFAULT_RETENTION_HOURS: f64 = 168.0;

/// Times an OPTIMIZE plans and writes before it gives up to commits racing it (ABORTED).
const OPTIMIZE_ATTEMPTS: u32 = 3;

/// Most deletes VACUUM has in flight.
const DELETE_CONCURRENCY: usize = 8;

impl Ledger {
    /// `OPTIMIZE`: rewrite small cells into cells of the target size (Z-ordered by `zorder`
    /// when given), in the partitions `conditions` select. One commit; appends may run alongside.
    pub async fn optimize(
        &self,
        snapshot: &FrameSnapshot,
        conditions: &[PartitionCondition],
        zorder: Vec<String>,
        session: &SessionState,
        user: &str,
    ) -> Result<Optimized> {
        // Any failure, a read again of the frame after a lost race included, may be the drop.
        let done = self
            .optimize_read(snapshot, conditions, zorder, session, user)
            .await;
        self.unless_dropped_in(snapshot, done).await
    }

    async fn optimize_read(
        &self,
        snapshot: &FrameSnapshot,
        conditions: &[PartitionCondition],
        zorder: Vec<String>,
        session: &SessionState,
        user: &str,
    ) -> Result<Optimized> {
        for c in &zorder {
            if snapshot.partition_columns().contains(c) {
                return Err(Error::InvalidArgument(format!(
                    "ZORDER BY {c}: {c} is a partition column (each cell holds one value)"
                )));
            }
            snapshot
                .schema()
                .field_with_name(c)
                .map_err(|_| Error::Schema(format!("{} has no column {c}", snapshot.frame())))?;
        }
        let literals = conditions
            .iter()
            .map(|c| {
                if !snapshot.partition_columns().contains(&c.column) {
                    return Err(Error::InvalidArgument(format!(
                        "OPTIMIZE … WHERE takes partition columns only; {} is not one of {}",
                        c.column,
                        snapshot.frame()
                    )));
                }
                let value = match c.op.as_str() {
                    "in" | "not in" => {
                        FilterValue::Set(c.values.iter().map(String::as_str).collect())
                    }
                    _ => FilterValue::Scalar(c.values.first().map(String::as_str).unwrap_or("")),
                };
                Ok(filter_literal(&c.column, &c.op, value)?)
            })
            .collect::<Result<Vec<_>>>()?;
        // A clustered frame is re-clustered: its cells, each sorted by one write, become cells
        // sorted across all of them.
        let zorder = match zorder.is_empty() {
            true => snapshot.cluster_by(),
            false => zorder,
        };
        let target = NonZeroU64::new(self.config().cell_target_bytes)
            .ok_or_else(|| Error::Internal("cell target size is zero".into()))?;
        let kind = || match zorder.is_empty() {
            true => OptimizeType::Compact,
            false => OptimizeType::ZOrder(zorder.clone()),
        };
        // delta-rs lets a compaction commit over another that removed the same cells (their
        // removes change no data, so it sees no conflict): two OPTIMIZEs at once each wrote the
        // rows again, and a frame of 500 rows held 2,000. So a compaction commits only on the
        // version it read, and one that lost the race plans again from the newer version.
        let mut snapshot = snapshot.clone();
        let mut attempt = 1;
        loop {
            let mut filters = literals.clone();
            let skipped = uncompactable(&snapshot);
            for (column, values) in &skipped {
                warn!(frame = %snapshot.frame(), column, ?values, "OPTIMIZE leaves out partitions whose value holds '~' (delta-rs cannot find their cells)");
                let set = FilterValue::Set(values.iter().map(String::as_str).collect());
                filters.push(filter_literal(column, "not in", set)?);
            }
            let done = self
                .delta_table_only_next(&snapshot)?
                .optimize()
                .with_type(kind())
                .with_filters(&filters)
                .with_target_size(target)
                .with_writer_properties(self.writer_properties()?)
                .with_commit_properties(self.commit_properties(user))
                .with_max_concurrent_tasks(1)
                .with_session_state(Arc::new(operation_session(session)?))
                .await;
            match done {
                Ok((table, metrics)) => {
                    let version = self.settle(&snapshot, &table, "optimize");
                    return Ok(Optimized {
                        version,
                        cells_removed: metrics.num_files_removed,
                        cells_added: metrics.num_files_added,
                    });
                }
                Err(DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(_),
                }) if attempt < OPTIMIZE_ATTEMPTS => {
                    info!(frame = %snapshot.frame(), attempt, "OPTIMIZE lost a race to another commit; planning again");
                    attempt += 1;
                    snapshot = self
                        .snapshot(snapshot.frame(), snapshot.incarnation(), None)
                        .await?;
                }
                Err(e) => return self.checked(&snapshot, Err(e)).await,
            }
        }
    }

    /// `VACUUM`: delete the files of `snapshot`'s frame that no version within `retain_hours`
    /// references (removed cells, and cells of writes that never committed). `min_hours` is the
    /// shortest retention allowed (the server refuses shorter ones unless told otherwise).
    pub async fn vacuum(
        &self,
        snapshot: &FrameSnapshot,
        retain_hours: f64,
        min_hours: f64,
        dry_run: bool,
        user: &str,
    ) -> Result<Vacuumed> {
        // Its reads of the log and its staged deletions too may meet the drop.
        let done = self
            .vacuum_read(snapshot, retain_hours, min_hours, dry_run, user)
            .await;
        self.unless_dropped_in(snapshot, done).await
    }

    async fn vacuum_read(
        &self,
        snapshot: &FrameSnapshot,
        retain_hours: f64,
        min_hours: f64,
        dry_run: bool,
        user: &str,
    ) -> Result<Vacuumed> {
        if retain_hours < min_hours {
            return Err(Error::InvalidArgument(format!(
                "VACUUM {} RETAIN {retain_hours} HOURS: the shortest retention this server allows \
                 is {min_hours} hours; a shorter one can delete cells that running readers and \
                 uncommitted writers still need (start the server with \
                 --vacuum-min-retention-hours to change it)",
                snapshot.frame()
            )));
        }
        let table = self.delta_table(snapshot)?;
        let retention = chrono::Duration::milliseconds((retain_hours * 3_600_000.0) as i64);
        let planned = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Full)
            .with_dry_run(true)
            .await;
        let (_, plan) = self.checked(snapshot, planned).await?;
        // Never a cell the snapshot reads, whatever the plan says (a key escaped one time too
        // many or too few would otherwise name a live file as garbage).
        let live: HashSet<String> = snapshot
            .delta_state()
            .log_data()
            .iter()
            .map(|f| f.object_store_path().to_string())
            .collect();
        let (files, kept): (Vec<String>, Vec<String>) = plan
            .files_deleted
            .into_iter()
            .partition(|f| !live.contains(paths::table_file_key(f).as_ref()));
        if !kept.is_empty() {
            let first: Vec<&String> = kept.iter().take(5).collect();
            warn!(frame = %snapshot.frame(), kept = kept.len(), ?first, "VACUUM's plan named live cells; kept them");
        }
        // Nor a cell removed within the retention. delta-rs judges each removal of a path on
        // its own: a cell removed long ago, brought back by a RESTORE and removed again a
        // moment ago was deleted for its old removal, and the versions in between lost it.
        let cutoff = chrono::Utc::now().timestamp_millis() - retention.num_milliseconds();
        let log_store = self.writing_log_store(snapshot)?;
        let fresh = removed_since(snapshot, log_store.as_ref(), cutoff).await?;
        let mut files: Vec<String> = files
            .into_iter()
            .filter(|f| !fresh.contains(paths::table_file_key(f).as_ref()))
            .collect();
        // Once each, and only what is there: a path removed twice is named twice, and a cell
        // deleted by an earlier VACUUM is named until its removal leaves the log.
        files.sort();
        files.dedup();
        let store = log_store.object_store(None);
        let files: Vec<String> = futures::stream::iter(files)
            .map(|f| {
                let store = store.clone();
                async move {
                    match store.head(&paths::table_file_key(&f)).await {
                        Ok(_) => Ok(Some(f)),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(Error::from(e)),
                    }
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_filter_map(|f| std::future::ready(Ok(f)))
            .try_collect()
            .await?;
        let staged = self.stale_staged(snapshot, retain_hours).await?;
        if dry_run || (files.is_empty() && staged.is_empty()) {
            let files = files.into_iter().chain(staged).collect();
            return Ok(Vacuumed { files, dry_run });
        }
        let props = self.commit_properties_with(
            user,
            Some(serde_json::json!({ "numFilesToDelete": files.len() + staged.len() })),
        );
        let start = CommitBuilder::from(props)
            .build(
                Some(snapshot.delta_state()),
                log_store.clone(),
                DeltaOperation::VacuumStart {
                    retention_check_enabled: true,
                    specified_retention_millis: Some(retention.num_milliseconds()),
                    default_retention_millis: (DEFAULT_RETENTION_HOURS * 3_600_000.0) as i64,
                },
            )
            .await;
        let start = self.checked(snapshot, start).await?;
        let mut deleted = self.delete_staged(snapshot, staged).await?;
        let from_plan: Vec<String> = futures::stream::iter(files)
            .map(|f| {
                let store = store.clone();
                async move {
                    match store.delete(&paths::table_file_key(&f)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(f),
                        Err(e) => Err(Error::from(e)),
                    }
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect()
            .await?;
        deleted.extend(from_plan);
        let props = self.commit_properties_with(
            user,
            Some(serde_json::json!({ "numDeletedFiles": deleted.len(), "numVacuumedDirectories": 0 })),
        );
        let end = CommitBuilder::from(props)
            .build(
                Some(&start.snapshot()),
                log_store,
                DeltaOperation::VacuumEnd {
                    status: "COMPLETED".into(),
                },
            )
            .await;
        let end = self.checked(snapshot, end).await?;
        info!(frame = %snapshot.frame(), deleted = deleted.len(), version = end.version(), "vacuumed");
        self.remember(snapshot.frame(), snapshot.incarnation(), end.snapshot());
        Ok(Vacuumed {
            files: deleted,
            dry_run: false,
        })
    }

    /// The local directory of `snapshot`'s frame, on a local root.
    fn local_frame_dir(&self, snapshot: &FrameSnapshot) -> Option<std::path::PathBuf> {
        let root = self.storage().local_dir()?;
        Some(root.join(paths::frame_root(snapshot.frame()).as_ref()))
    }

    /// Uploads that writers left staged in `snapshot`'s frame on a local root, last touched
    /// more than `retain_hours` ago (relative to the frame's directory). object_store writes a
    /// file as `<name>#<n>` and moves it into place; a writer killed before that leaves it, and
    /// no listing shows such names, so delta-rs's plan cannot name them.
    async fn stale_staged(
        &self,
        snapshot: &FrameSnapshot,
        retain_hours: f64,
    ) -> Result<Vec<String>> {
        let Some(dir) = self.local_frame_dir(snapshot) else {
            return Ok(Vec::new());
        };
        let age = std::time::Duration::try_from_secs_f64(retain_hours.max(0.0) * 3600.0)
            .unwrap_or(std::time::Duration::MAX);
        let Some(cutoff) = std::time::SystemTime::now().checked_sub(age) else {
            return Ok(Vec::new());
        };
        blocking(move || Ok(staged_files(&dir, cutoff))).await
    }

    /// Delete what [`Self::stale_staged`] found; returns what is gone.
    async fn delete_staged(
        &self,
        snapshot: &FrameSnapshot,
        staged: Vec<String>,
    ) -> Result<Vec<String>> {
        let Some(dir) = self
            .local_frame_dir(snapshot)
            .filter(|_| !staged.is_empty())
        else {
            return Ok(Vec::new());
        };
        blocking(move || {
            for f in &staged {
                match std::fs::remove_file(dir.join(f)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::Internal(format!("VACUUM deleting {f}: {e}")));
                    }
                    _ => {}
                }
            }
            Ok(staged)
        })
        .await
    }

    /// Make the state `table` committed the frame's latest known one; returns its version.
    fn adopt(&self, snapshot: &FrameSnapshot, table: &deltalake::DeltaTable) -> Result<i64> {
        let state = table.snapshot()?.clone();
        let version = state.version() as i64;
        self.remember(snapshot.frame(), snapshot.incarnation(), state);
        Ok(version)
    }

    /// `ALTER TABLE … CLUSTER BY (cols)` (or `CLUSTER BY NONE`, `cluster_by` empty): record the
    /// columns later writes sort by, in one metadata commit. Cells already written keep their
    /// order until an `OPTIMIZE` re-clusters them.
    pub async fn set_cluster_by(
        &self,
        snapshot: &FrameSnapshot,
        cluster_by: &[String],
        user: &str,
    ) -> Result<i64> {
        snapshot.writable()?;
        validate_clustering(snapshot.schema(), snapshot.partition_columns(), cluster_by)?;
        let table = self.delta_table(snapshot)?;
        let table = table
            .set_tbl_properties()
            .with_properties(HashMap::from([(
                CLUSTER_BY_PROPERTY.to_string(),
                cluster_property(cluster_by),
            )]))
            .with_raise_if_not_exists(false)
            .with_commit_properties(self.commit_properties(user))
            .await;
        let table = self.checked(snapshot, table).await?;
        self.adopt(snapshot, &table)
    }

    /// `ALTER TABLE … ADD COLUMN`: new nullable columns at the end; existing cells read them as
    /// NULL. Returns the committed version.
    pub async fn add_columns(
        &self,
        snapshot: &FrameSnapshot,
        fields: Vec<arrow::datatypes::Field>,
        user: &str,
    ) -> Result<i64> {
        let mut delta_fields: Vec<StructField> = Vec::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            // Delta column names are case-insensitive.
            let taken = snapshot
                .schema()
                .fields()
                .iter()
                .map(|g| g.name())
                .chain(fields[..i].iter().map(|g| g.name()))
                .any(|g| g.eq_ignore_ascii_case(f.name()));
            if taken {
                return Err(Error::AlreadyExists {
                    kind: crate::error::ObjectKind::Frame,
                    name: format!("column {} of {}", f.name(), snapshot.frame()),
                });
            }
            let one = crate::schema::to_delta(&Arc::new(arrow::datatypes::Schema::new(vec![
                f.clone().with_nullable(true),
            ])))?;
            delta_fields.extend(one.fields().cloned());
        }
        let table = self.delta_table(snapshot)?;
        let table = table
            .add_columns()
            .with_fields(delta_fields)
            .with_commit_properties(self.commit_properties(user))
            .await;
        let table = self.checked(snapshot, table).await?;
        self.adopt(snapshot, &table)
    }
}

/// Keys of the cells `snapshot` records a removal of at or after `cutoff` (milliseconds since
/// the epoch), whatever older removals of the same cells say.
async fn removed_since(
    snapshot: &FrameSnapshot,
    log_store: &dyn deltalake::logstore::LogStore,
    cutoff: i64,
) -> Result<HashSet<String>> {
    snapshot
        .delta_state()
        .all_tombstones(log_store)
        .try_filter_map(|t| {
            let fresh = t.deletion_timestamp().unwrap_or(0) >= cutoff;
            std::future::ready(Ok(
                fresh.then(|| paths::table_file_key(t.path().as_ref()).to_string())
            ))
        })
        .try_collect()
        .await
        .map_err(Error::from)
}

/// Deepest directory a frame's walk for staged files descends (partition columns nest one level
/// each).
const STAGED_WALK_DEPTH: usize = 64;

/// Files under `dir` named `<name>#<digits>` (object_store's staged uploads) last modified before
/// `cutoff`, as `/`-separated paths relative to `dir`. Symbolic links are neither followed nor
/// returned; unreadable entries are skipped.
fn staged_files(dir: &std::path::Path, cutoff: std::time::SystemTime) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), String::new(), 0usize)];
    while let Some((path, rel, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let key = match rel.is_empty() {
                true => name.clone(),
                false => format!("{rel}/{name}"),
            };
            if kind.is_dir() && depth < STAGED_WALK_DEPTH {
                pending.push((entry.path(), key, depth + 1));
            } else if kind.is_file()
                && paths::is_staged_name(&name)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff)
            {
                found.push(key);
            }
        }
    }
    found.sort();
    found
}

/// Run blocking filesystem work off the async threads, in the caller's tracing span.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let span = tracing::Span::current();
    datafusion::common::runtime::SpawnedTask::spawn_blocking(move || span.in_scope(f))
        .join()
        .await
        .map_err(|e| Error::Internal(format!("VACUUM's walk of the frame: {e}")))?
}
