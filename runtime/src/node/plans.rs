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

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::engine::{PlannedQuery, Session};
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

/// How long a statement that did not spread is planned for this node alone.
pub(crate) const STAYS_LOCAL: Duration = Duration::from_secs(60);
/// Most statements remembered as staying local.
pub(crate) const MAX_LOCAL: usize = 1024;

/// Statements that, planned for the swarm, spread nothing: each such run planned twice (for the
/// swarm, then for this node's bees) and asked the swarm for nothing. Also those that spread
/// and shipped back more than `shipped_share_max` of what they scanned (their stages cost more
/// through storage than the other nodes' cores saved). Planned for this node alone, once, for
/// [`STAYS_LOCAL`] after; keyed by the text, where it runs (box, options) and
/// the swarm's bees, so a swarm that grows or shrinks asks again. Being wrong costs only speed:
/// a statement whose frames grew meanwhile runs here until the entry expires.
#[derive(Debug, Default)]
pub(crate) struct StaysLocal {
    entries: Mutex<HashMap<u64, Instant>>,
}

impl StaysLocal {
    pub(crate) fn key(session: &Session, sql: &str, swarm_bees: usize) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            sql,
            session.hive.as_str(),
            session.box_name.as_str(),
            &session.options,
            swarm_bees,
        )
            .hash(&mut h);
        h.finish()
    }

    /// Remember that the statement under `key` spread nothing.
    pub(crate) fn remember(&self, key: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if entries.len() >= MAX_LOCAL {
            entries.retain(|_, at| now.duration_since(*at) < STAYS_LOCAL);
            if entries.len() >= MAX_LOCAL {
                entries.clear();
            }
        }
        entries.insert(key, now);
    }

    /// Whether the statement under `key` spread nothing within [`STAYS_LOCAL`].
    pub(crate) fn holds(&self, key: u64) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&key)
            .is_some_and(|at| at.elapsed() < STAYS_LOCAL)
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
    fn a_statement_stays_local_per_text_place_and_swarm_and_within_a_bound() {
        let memo = StaysLocal::default();
        let s = Session::new("u");
        let k = StaysLocal::key(&s, "SELECT 1", 2);
        assert!(!memo.holds(k));
        memo.remember(k);
        assert!(memo.holds(k));
        assert!(!memo.holds(StaysLocal::key(&s, "SELECT 2", 2)));
        assert!(
            !memo.holds(StaysLocal::key(&s, "SELECT 1", 3)),
            "the swarm grew"
        );
        let mut other = s.clone();
        other.options = vec![("datafusion.x".into(), "1".into())];
        assert!(!memo.holds(StaysLocal::key(&other, "SELECT 1", 2)));
        for i in 0..MAX_LOCAL as u64 {
            memo.remember(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        assert!(memo.entries.lock().unwrap().len() <= MAX_LOCAL);
        // An expired entry no longer holds.
        memo.entries
            .lock()
            .unwrap()
            .insert(k, Instant::now() - STAYS_LOCAL);
        assert!(!memo.holds(k));
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
