//! A frame's versions: its history (one row per commit), the version in force at an instant
//! (`TIMESTAMP AS OF`), and `RESTORE` to an earlier version.
//!
//! Every figure comes from the Delta log itself (`_delta_log/<v>.json`: the `commitInfo` action
//! and the `add`/`remove` actions), so a history read by Spark or delta-rs says the same.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deltalake::logstore::LogStoreRef;
use futures::TryStreamExt;
use tracing::info;

use crate::dml::conflict;
use crate::error::{Error, ObjectKind, Result};
use crate::ledger::{FrameSnapshot, Ledger};

/// One commit of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub version: i64,
    /// Milliseconds since the epoch (the commit's own timestamp, else the log object's).
    pub timestamp_ms: Option<i64>,
    pub operation: Option<String>,
    /// The operation's parameters as a JSON object.
    pub parameters: Option<String>,
    pub user: Option<String>,
    pub cells_added: u64,
    pub cells_removed: u64,
    /// Rows in the cells the commit added.
    pub rows_added: Option<u64>,
    /// Rows the commit deleted (from the operation's metrics, else the removed cells' stats).
    pub rows_removed: Option<u64>,
}

/// What `RESTORE` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub version: i64,
    pub cells_added: u64,
    pub cells_removed: u64,
}

/// Most commits one history request reads.
pub const MAX_HISTORY: usize = 10_000;

impl Ledger {
    /// The log store `snapshot` was read from (elsewhere for an external Delta frame).
    fn log_store_of(&self, snapshot: &FrameSnapshot) -> Result<LogStoreRef> {
        match snapshot.is_external() {
            false => self.log_store(snapshot.frame()),
            true => self.external_log_store(snapshot.location()),
        }
    }

    /// The newest `limit` commits up to `snapshot`'s version, newest first. Commits whose log
    /// entry was cleaned up (older than the log retention) are left out.
    pub async fn history(&self, snapshot: &FrameSnapshot, limit: usize) -> Result<Vec<Commit>> {
        let log_store = self.log_store_of(snapshot)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let latest = snapshot.version();
        // From the version the frame began at: those before are a dropped frame's.
        let oldest = (latest + 1 - limit.min(MAX_HISTORY) as i64).max(snapshot.first_version());
        let mut out = Vec::new();
        for v in (oldest..=latest).rev() {
            if let Some(c) = read_commit(&log_store, v).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The version of `snapshot`'s frame in force at `at`: the newest commit made at or before
    /// it. Commit times come from the log (binary search, as Delta readers do).
    pub async fn version_at(&self, snapshot: &FrameSnapshot, at: DateTime<Utc>) -> Result<i64> {
        let log_store = self.log_store_of(snapshot)?;
        let target = at.timestamp_millis();
        let earliest = earliest_version(&log_store)
            .await?
            .unwrap_or(0)
            .max(snapshot.first_version());
        let ts = |v: i64| {
            let log_store = log_store.clone();
            async move {
                Ok::<_, Error>(
                    read_commit(&log_store, v)
                        .await?
                        .and_then(|c| c.timestamp_ms)
                        .unwrap_or(i64::MAX),
                )
            }
        };
        if ts(earliest).await? > target {
            return Err(Error::NotFound {
                kind: ObjectKind::Frame,
                name: format!(
                    "{} at {} (its oldest version in the log, {earliest}, is newer)",
                    snapshot.frame(),
                    at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
                ),
            });
        }
        let (mut lo, mut hi) = (earliest, snapshot.version());
        while lo < hi {
            let mid = lo + (hi - lo + 1) / 2;
            if ts(mid).await? <= target {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }

    /// `RESTORE f TO VERSION AS OF v`: one commit that makes the frame's cells those of `v`
    /// again (cells VACUUM deleted cannot come back: that fails and changes nothing).
    pub async fn restore(
        &self,
        snapshot: &FrameSnapshot,
        version: i64,
        user: &str,
    ) -> Result<Restored> {
        if version < 0 || version > snapshot.version() {
            return Err(Error::NotFound {
                kind: ObjectKind::Frame,
                name: format!("{} at version {version}", snapshot.frame()),
            });
        }
        if version < snapshot.first_version() {
            return Err(Error::NotFound {
                kind: ObjectKind::Frame,
                name: format!(
                    "{} at version {version} (it was dropped and created again since, and \
                     began again at version {})",
                    snapshot.frame(),
                    snapshot.first_version()
                ),
            });
        }
        // The frame is at that version already: nothing to restore (delta-rs refuses it).
        if version == snapshot.version() {
            return Ok(Restored {
                version,
                cells_added: 0,
                cells_removed: 0,
            });
        }
        let restored = self
            .delta_table(snapshot)?
            .restore()
            .with_version_to_restore(version as u64)
            .with_commit_properties(self.commit_properties(user))
            .await
            .map_err(|e| {
                // delta-rs says these in text only (they were INTERNAL).
                let text = e.to_string();
                // The version's commit is no longer in the log (cleaned up after the log
                // retention): no log segment ends there.
                if matches!(e, deltalake::DeltaTableError::NotATable(_)) {
                    Error::NotFound {
                        kind: ObjectKind::Frame,
                        name: format!(
                            "{} at version {version} (its commit is no longer in the log)",
                            snapshot.frame()
                        ),
                    }
                } else if text.contains("not found") || text.contains("missing") {
                    Error::Gone(format!(
                        "{} cannot be restored to version {version}: VACUUM deleted cells it \
                         needs",
                        snapshot.frame()
                    ))
                } else if text.contains("should be less then") {
                    Error::Conflict {
                        frame: snapshot.frame().to_string(),
                        detail: format!(
                            "it changed while it was restored to version {version}; run it again"
                        ),
                    }
                } else {
                    conflict(snapshot, e)
                }
            });
        let (table, metrics) = self.unless_dropped_in(snapshot, restored).await?;
        let state = table.snapshot()?.clone();
        let new_version = state.version() as i64;
        info!(frame = %snapshot.frame(), to = version, version = new_version, "restored");
        self.remember(snapshot.frame(), snapshot.incarnation(), state);
        Ok(Restored {
            version: new_version,
            cells_added: metrics.num_restored_file as u64,
            cells_removed: metrics.num_removed_file as u64,
        })
    }
}

/// The oldest commit still in the log.
async fn earliest_version(log_store: &LogStoreRef) -> Result<Option<i64>> {
    let store = log_store.object_store(None);
    let entries: Vec<_> = store.list(Some(log_store.log_path())).try_collect().await?;
    Ok(entries
        .iter()
        .filter_map(|m| m.location.filename())
        .filter_map(|f| f.strip_suffix(".json"))
        .filter_map(|v| v.parse::<i64>().ok())
        .min())
}

/// Commit `v` as the log records it; `None` when its entry is gone.
async fn read_commit(log_store: &LogStoreRef, v: i64) -> Result<Option<Commit>> {
    let Some(bytes) = log_store.read_commit_entry(v as u64).await? else {
        return Ok(None);
    };
    let mut c = Commit {
        version: v,
        timestamp_ms: None,
        operation: None,
        parameters: None,
        user: None,
        cells_added: 0,
        cells_removed: 0,
        rows_added: None,
        rows_removed: None,
    };
    let mut removed_rows: Option<u64> = None;
    let mut metrics: HashMap<String, serde_json::Value> = HashMap::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
            return Err(Error::Unreadable {
                what: "Delta commit",
                detail: format!("version {v} has a line that is not JSON"),
            });
        };
        let records = |a: &serde_json::Value| {
            a.get("stats")
                .and_then(|s| s.as_str())
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|s| s.get("numRecords").and_then(|n| n.as_u64()))
        };
        if let Some(info) = action.get("commitInfo") {
            c.timestamp_ms = info
                .get("inCommitTimestamp")
                .or_else(|| info.get("timestamp"))
                .and_then(|t| t.as_i64());
            c.operation = info
                .get("operation")
                .and_then(|o| o.as_str())
                .map(str::to_string);
            c.parameters = info.get("operationParameters").map(|p| p.to_string());
            c.user = info
                .get("userName")
                .or_else(|| info.get("userId"))
                .and_then(|u| u.as_str())
                .map(str::to_string);
            if let Some(m) = info.get("operationMetrics").and_then(|m| m.as_object()) {
                metrics = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
        } else if let Some(add) = action.get("add") {
            c.cells_added += 1;
            if let Some(n) = records(add) {
                c.rows_added = Some(c.rows_added.unwrap_or(0) + n);
            }
        } else if let Some(remove) = action.get("remove") {
            c.cells_removed += 1;
            if let Some(n) = records(remove) {
                removed_rows = Some(removed_rows.unwrap_or(0) + n);
            }
        }
    }
    let metric = |k: &str| {
        metrics.get(k).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
    };
    c.rows_removed = metric("num_deleted_rows")
        .or_else(|| metric("num_target_rows_deleted"))
        .or_else(|| metric("numDeletedRows"))
        .or(match c.operation.as_deref() {
            // A rewrite removes cells whose surviving rows it adds again: only the metric says
            // how many rows went.
            Some("DELETE" | "UPDATE" | "MERGE") => None,
            _ => removed_rows,
        });
    if c.cells_removed == 0 && c.rows_removed.is_none() {
        c.rows_removed = Some(0);
    }
    if c.cells_added == 0 && c.rows_added.is_none() {
        c.rows_added = Some(0);
    }
    Ok(Some(c))
}
