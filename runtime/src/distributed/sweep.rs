//! Orphan cleanup: what distributed queries left behind when their coordinator died.

use std::time::Duration;

use apiary_storage::{Storage, paths};
use chrono::Utc;
use tracing::{info, warn};

/// Delete query prefixes in which nothing changed within `ttl`, and inbox entries older than
/// it. Run by idle nodes only; deleting twice is harmless.
pub(crate) async fn sweep_orphans(storage: &Storage, ttl: Duration) {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
    let cutoff = Utc::now() - ttl;
    let Ok(queries) = storage.list_dirs(&paths::queries_prefix()).await else {
        return;
    };
    for q in queries {
        let Ok(objects) = storage.list(&q).await else {
            continue;
        };
        // A query is orphaned when nothing under it changed within the TTL.
        let newest = objects.iter().map(|m| m.last_modified).max();
        if newest.is_some_and(|t| t < cutoff) {
            match storage.delete_prefix(&q).await {
                Ok(n) => info!(prefix = %q, objects = n, "removed an orphaned query"),
                Err(e) => warn!(prefix = %q, error = %e, "removing an orphaned query"),
            }
        }
    }
    if let Ok(entries) = storage.list(&paths::inboxes_prefix()).await {
        for e in entries.iter().filter(|m| m.last_modified < cutoff) {
            let _ = storage.delete(&e.location).await;
        }
    }
}
