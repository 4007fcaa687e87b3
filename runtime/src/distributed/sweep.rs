//! Orphan cleanup: what distributed queries left behind when their coordinator died.

use std::time::Duration;

use apiary_storage::format::{QueryManifestV1, SwarmKey};
use apiary_storage::{Storage, paths};
use chrono::Utc;
use tracing::{info, warn};

/// Delete query prefixes in which nothing changed within `ttl` and whose query's deadline (from
/// its sealed manifest, when readable) passed more than `ttl` ago, and inbox entries older than
/// `ttl`. Run by idle nodes only; deleting twice is harmless. A query that runs longer than
/// `ttl` without a fragment finishing is therefore never swept while it may still run.
pub(crate) async fn sweep_orphans(storage: &Storage, key: &SwarmKey, ttl: Duration) {
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
        if newest.is_some_and(|t| t < cutoff) && !still_running(storage, key, &q, ttl).await {
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

/// Whether the query under `prefix` may still be running: its sealed manifest names a deadline
/// that passed less than `ttl` ago (the margin covers clocks and a slow cleanup). An unreadable
/// or forged manifest protects nothing.
async fn still_running(
    storage: &Storage,
    key: &SwarmKey,
    prefix: &object_store::path::Path,
    ttl: chrono::Duration,
) -> bool {
    let Some(id) = prefix.filename() else {
        return false;
    };
    let Ok(path) = paths::query_manifest(id) else {
        return false;
    };
    let Ok(Some((body, _))) = storage.get_opt(&path).await else {
        return false;
    };
    let Ok(manifest) = key.open_object::<QueryManifestV1>(&path, &body) else {
        return false;
    };
    let deadline = chrono::DateTime::from_timestamp_millis(manifest.deadline_at_ms);
    deadline.is_some_and(|d| d + ttl > Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_storage::format::now_ms;

    fn manifest(id: &str, deadline_at_ms: i64) -> QueryManifestV1 {
        QueryManifestV1 {
            v: 1,
            query_id: id.into(),
            coordinator: "node-a".into(),
            created_at_ms: now_ms(),
            deadline_at_ms,
            sql: "SELECT 1".into(),
            stages: vec![],
        }
    }

    #[tokio::test]
    async fn quiet_queries_before_their_deadline_stay_and_forged_deadlines_protect_nothing() {
        let storage = Storage::open("memory://sweep", &Default::default()).unwrap();
        let key = SwarmKey::new(b"the swarm key of this test");
        let other = SwarmKey::new(b"a key from somewhere else");
        let hour = 3_600_000;
        let id = || uuid::Uuid::now_v7().to_string();
        let cases = [
            (id(), &key, now_ms() + hour, true),
            (id(), &key, now_ms() - hour, false),
            (id(), &other, now_ms() + hour, false),
        ];
        for (id, k, deadline, _) in &cases {
            let path = paths::query_manifest(id).unwrap();
            storage
                .put(&path, k.seal_object(&path, &manifest(id, *deadline)))
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // Every object is older than a TTL of 10 ms: only the deadline decides.
        sweep_orphans(&storage, &key, std::time::Duration::from_millis(10)).await;
        for (id, _, _, kept) in &cases {
            let left = storage
                .list(&paths::query_prefix(id).unwrap())
                .await
                .unwrap();
            assert_eq!(!left.is_empty(), *kept, "{id}");
        }
    }
}
