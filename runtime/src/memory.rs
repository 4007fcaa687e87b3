//! The memory pool of one query on a bee.
//!
//! DataFusion's `FairSpillPool` lets spilling operators (sorts, aggregates, joins that spill)
//! share everything the non-spilling ones have not taken. When a spilling operator has grown
//! into the whole pool, a non-spilling one that asks next — the merge of a sort whose other
//! partition has finished, a `SortPreservingMergeExec` above both — finds nothing left and the
//! query fails with RESOURCE_EXHAUSTED, although the spiller would have spilled had it been
//! asked. Whether it fails depends on which partition finished first: a sort of twice its bee's
//! memory failed about one run in ten on a loaded machine.
//!
//! [`HeadroomPool`] divides memory the same way, but keeps a headroom (an eighth of the pool) that
//! spilling operators never take: they spill when they would reach it. Operators that cannot
//! spill may take the whole pool; what they hold also shrinks the spillers' part, so the
//! headroom is free whenever a spiller has just grown.

use std::fmt;
use std::sync::Mutex;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, human_readable_size,
};

/// The share of a pool kept for operators that cannot spill: one part in this many.
const HEADROOM_PARTS: usize = 8;

/// A fair memory pool with headroom for operators that cannot spill (see the module's doc).
#[derive(Debug)]
pub struct HeadroomPool {
    size: usize,
    headroom: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Spilling consumers registered.
    spillers: usize,
    spillable: usize,
    unspillable: usize,
}

impl HeadroomPool {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            headroom: size / HEADROOM_PARTS,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change under the lock is a plain addition or subtraction: a panic elsewhere
        // cannot leave the counts half updated, so a poisoned lock is still right.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(
        &self,
        r: &MemoryReservation,
        additional: usize,
        available: usize,
    ) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "Failed to allocate additional {} for {} with {} already allocated for this \
             reservation - {} remain available for the total memory pool: {self}",
            human_readable_size(additional),
            r.consumer().name(),
            human_readable_size(r.size()),
            human_readable_size(available),
        ))
    }
}

impl fmt::Display for HeadroomPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bee(pool_size: {}, kept for operators that cannot spill: {})",
            human_readable_size(self.size),
            human_readable_size(self.headroom)
        )
    }
}

impl MemoryPool for HeadroomPool {
    fn name(&self) -> &str {
        "bee"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            self.state().spillers += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            let mut s = self.state();
            s.spillers = s.spillers.saturating_sub(1);
        }
    }

    fn grow(&self, r: &MemoryReservation, additional: usize) {
        let mut s = self.state();
        if r.consumer().can_spill() {
            s.spillable += additional;
        } else {
            s.unspillable += additional;
        }
    }

    fn shrink(&self, r: &MemoryReservation, shrink: usize) {
        let mut s = self.state();
        if r.consumer().can_spill() {
            s.spillable = s.spillable.saturating_sub(shrink);
        } else {
            s.unspillable = s.unspillable.saturating_sub(shrink);
        }
    }

    fn try_grow(&self, r: &MemoryReservation, additional: usize) -> Result<()> {
        let mut s = self.state();
        let used = s.spillable + s.unspillable;
        if r.consumer().can_spill() {
            // What spillers may hold together, and each one's fair part of it.
            let for_spillers = self.size.saturating_sub(self.headroom + s.unspillable);
            let share = for_spillers / s.spillers.max(1);
            let free = for_spillers.saturating_sub(s.spillable);
            if r.size() + additional > share || additional > free {
                return Err(self.refuse(r, additional, share.saturating_sub(r.size()).min(free)));
            }
            s.spillable += additional;
        } else {
            let free = self.size.saturating_sub(used);
            if additional > free {
                return Err(self.refuse(r, additional, free));
            }
            s.unspillable += additional;
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        let s = self.state();
        s.spillable + s.unspillable
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.size)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn spillers_leave_headroom_that_operators_which_cannot_spill_grow_into() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(800));
        let sort = MemoryConsumer::new("sort")
            .with_can_spill(true)
            .register(&pool);
        // A lone spiller gets everything but the headroom, and is refused past it.
        sort.try_grow(700).unwrap();
        assert!(sort.try_grow(1).is_err());
        // A merge that cannot spill still finds the headroom.
        let merge = MemoryConsumer::new("merge").register(&pool);
        merge.try_grow(100).unwrap();
        assert!(merge.try_grow(1).is_err());
        assert_eq!(pool.reserved(), 800);
        // Two spillers share what is left for spillers fairly.
        sort.shrink(700);
        merge.shrink(100);
        let other = MemoryConsumer::new("agg")
            .with_can_spill(true)
            .register(&pool);
        sort.try_grow(350).unwrap();
        assert!(sort.try_grow(1).is_err());
        other.try_grow(350).unwrap();
        let e = other.try_grow(1).unwrap_err().to_string();
        assert!(e.contains("agg") && e.contains("bee(pool_size"), "{e}");
        // Memory held by operators that cannot spill shrinks the spillers' part.
        other.free();
        sort.free();
        merge.try_grow(300).unwrap();
        // 800 - 100 headroom - 300 = 400, halved.
        assert!(sort.try_grow(201).is_err());
        sort.try_grow(200).unwrap();
        drop(other);
        sort.try_grow(200).unwrap();
        assert!(sort.try_grow(1).is_err());
    }
}
