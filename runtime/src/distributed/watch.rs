//! On a local root, the node also watches `_apiary/` for changes (inotify on Linux), so that a
//! task posted to its inbox, or a `done`/`failed` marker of a query it coordinates, wakes the
//! worker or the query's monitor at once instead of at its next poll.
//!
//! This is still coordination through storage: the watch only says *when* to look, and what is
//! acted on is what a LIST then reads, exactly as after a poll. Polling goes on as before, so a
//! lost or late event (a queue overflow, a directory created and written before its watch was
//! added, a root shared over NFS, where other hosts' writes raise no events) costs at most one
//! poll interval. An S3 root has no such events and polls only.

use std::path::{Component, Path, PathBuf};
use std::sync::Weak;
use std::sync::atomic::Ordering;

use apiary_storage::paths::{self, InternalChange};
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tracing::{debug, warn};

use super::DistContext;

/// A running watch of a local root's `_apiary/`: ends when dropped.
pub(crate) struct StorageWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for StorageWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageWatch")
    }
}

/// Watch `ctx`'s root when it is a local directory and the config allows it. `None` when there is
/// nothing to watch or the watch could not start (logged; the node then polls only).
pub(crate) fn start(ctx: &std::sync::Arc<DistContext>) -> Option<StorageWatch> {
    if !ctx.config.storage_events {
        return None;
    }
    let root = ctx.storage.local_dir()?;
    let internal = root.join(paths::INTERNAL_ROOT);
    let weak = std::sync::Arc::downgrade(ctx);
    let base = root.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) => on_event(&weak, &base, &event),
        Err(e) => debug!(error = %e, "storage watch"),
    };
    let started = std::fs::create_dir_all(&internal)
        .map_err(notify::Error::io)
        .and_then(|()| notify::recommended_watcher(handler))
        .and_then(|mut w| {
            w.watch(&internal, RecursiveMode::Recursive)?;
            Ok(w)
        });
    match started {
        Ok(watcher) => {
            debug!(dir = %internal.display(), "watching the storage root for tasks and outcomes");
            Some(StorageWatch { _watcher: watcher })
        }
        Err(e) => {
            warn!(dir = %internal.display(), error = %e, "cannot watch the storage root; polling only");
            None
        }
    }
}

/// A put makes an object visible by a rename (a staged write moved into place) or a creation (a
/// put-if-absent's link, or a new directory); writes to a staging file, the other halves of a
/// rename and removals say nothing new.
fn on_event(ctx: &Weak<DistContext>, root: &Path, event: &notify::Event) {
    if !matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To))
    ) {
        return;
    }
    let Some(ctx) = ctx.upgrade() else { return };
    for path in &event.paths {
        let Some(parts) = relative_parts(root, path) else {
            continue;
        };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let woke = match paths::internal_change(&parts) {
            Some(InternalChange::Inbox(node)) if node.is_none_or(|n| n == ctx.node_id) => {
                ctx.inbox_wake.notify_one();
                true
            }
            Some(InternalChange::Outcome(query)) => ctx.outcomes.wake(query),
            _ => false,
        };
        if woke {
            ctx.metrics.storage_wakes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `path` relative to `root`, as plain UTF-8 names; `None` outside the root or for names that
/// are not ours.
fn relative_parts(root: &Path, path: &Path) -> Option<Vec<String>> {
    let rel: PathBuf = path.strip_prefix(root).ok()?.to_path_buf();
    rel.components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().map(str::to_string),
            _ => None,
        })
        .collect()
}
