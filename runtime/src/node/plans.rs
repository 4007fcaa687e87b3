//! Plans kept between GetFlightInfo and DoGet, so that a query is planned once.
//!
//! ```text
//!  GetFlightInfo ──plan──▶ PlanCache::put ──key──▶ signed ticket (plan_key)
//!  DoGet on this node ──plan_key──▶ PlanCache::take ──▶ execute the same physical plan
//!  DoGet elsewhere, later, or again ──▶ not here ──▶ plan again at the ticket's pinned versions
//! ```
//!
//! An entry is taken, not read: a physical plan runs once (a `DataSourceExec` keeps state
//! between executions), so a second redemption of the same ticket plans afresh. Entries live
//! [`KEEP`] at most and the cache holds [`MAX_PLANS`]; the oldest go first. The key is only ever
//! handed out inside a signed ticket, so a client cannot name another client's plan.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::engine::PlannedQuery;
use crate::status::PlanCacheStats;

/// How long a plan waits for its DoGet.
pub(crate) const KEEP: Duration = Duration::from_secs(30);
/// Most plans kept at once (each holds a physical plan and a session state).
pub(crate) const MAX_PLANS: usize = 64;

/// Plans made for a ticket, waiting for its redemption on this node.
#[derive(Debug, Default)]
pub(crate) struct PlanCache {
    entries: Mutex<VecDeque<Entry>>,
    reused: AtomicU64,
    missed: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    key: String,
    made: Instant,
    /// The partitions it was planned for (`None`: this node's own).
    partitions: Option<usize>,
    plan: PlannedQuery,
}

impl PlanCache {
    /// Keep `plan` (made for `partitions`) and return the key a ticket carries.
    pub(crate) fn put(&self, plan: PlannedQuery, partitions: Option<usize>) -> String {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let mut entries = self.entries.lock().expect("plan cache");
        let now = Instant::now();
        while entries
            .front()
            .is_some_and(|e| now.duration_since(e.made) > KEEP)
            || entries.len() >= MAX_PLANS
        {
            entries.pop_front();
        }
        entries.push_back(Entry {
            key: key.clone(),
            made: now,
            partitions,
            plan,
        });
        key
    }

    /// The plan kept under `key`, if it is still here, still fresh and made for `partitions` or
    /// for this node's own (a query too small to spread, which runs here whatever the swarm);
    /// it leaves the cache either way.
    pub(crate) fn take(&self, key: &str, partitions: Option<usize>) -> Option<PlannedQuery> {
        let found = {
            let mut entries = self.entries.lock().expect("plan cache");
            entries
                .iter()
                .position(|e| e.key == key)
                .and_then(|i| entries.remove(i))
        };
        let usable = found.filter(|e| {
            e.made.elapsed() <= KEEP && (e.partitions.is_none() || e.partitions == partitions)
        });
        let counter = match usable {
            Some(_) => &self.reused,
            None => &self.missed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        usable.map(|e| e.plan)
    }

    pub(crate) fn stats(&self) -> PlanCacheStats {
        PlanCacheStats {
            reused: self.reused.load(Ordering::Relaxed),
            missed: self.missed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};

    use super::*;

    fn plan() -> PlannedQuery {
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from(vec![1])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        PlannedQuery::from_batch(batch).unwrap()
    }

    #[test]
    fn a_plan_is_taken_once_and_only_for_its_target() {
        let cache = PlanCache::default();
        let key = cache.put(plan(), None);
        assert!(cache.take(&key, None).is_some());
        assert!(cache.take(&key, None).is_none(), "taken, not read");
        let key = cache.put(plan(), Some(4));
        assert!(cache.take(&key, None).is_none(), "planned for a swarm of 4");
        assert!(
            cache.take(&key, Some(4)).is_none(),
            "and gone after the miss"
        );
        assert!(cache.take("no such key", None).is_none());
        let key = cache.put(plan(), None);
        assert!(
            cache.take(&key, Some(4)).is_some(),
            "planned for this node alone: it runs here on any swarm"
        );
        assert_eq!(
            cache.stats(),
            PlanCacheStats {
                reused: 2,
                missed: 4
            }
        );
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound() {
        let cache = PlanCache::default();
        let first = cache.put(plan(), None);
        for _ in 0..MAX_PLANS {
            cache.put(plan(), None);
        }
        assert_eq!(cache.entries.lock().unwrap().len(), MAX_PLANS);
        assert!(cache.take(&first, None).is_none(), "the oldest went first");
    }
}
