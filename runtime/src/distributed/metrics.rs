//! Counters of distributed execution on one node (rendered through [`crate::status`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::DistributedStats;

/// Recent dispatch latencies kept for quantiles.
const DISPATCH_WINDOW: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct DistMetrics {
    pub(crate) inbox_polls: AtomicU64,
    pub(crate) fragments: AtomicU64,
    /// Bytes of output objects this node's fragments wrote: what they shipped through storage.
    pub(crate) fragment_output_bytes: AtomicU64,
    /// The part of `fragment_output_bytes` written as hash-partitioned (shuffle) output.
    pub(crate) shuffle_output_bytes: AtomicU64,
    pub(crate) coordinated: AtomicU64,
    /// Shares of results this node served as one endpoint of several.
    pub(crate) shares_served: AtomicU64,
    /// Attempts this node, as coordinator, took over from a node that had not claimed them.
    pub(crate) stolen: AtomicU64,
    /// Wakes of the inbox worker or a query's monitor by a change seen in a watched local root.
    pub(crate) storage_wakes: AtomicU64,
    /// Recent fragment dispatch latencies (posting to claiming), seconds.
    dispatch: Mutex<VecDeque<f64>>,
}

impl DistMetrics {
    pub(crate) fn record_dispatch(&self, secs: f64) {
        let mut d = self.dispatch.lock().expect("metrics");
        if d.len() >= DISPATCH_WINDOW {
            d.pop_front();
        }
        d.push_back(secs);
    }

    pub(crate) fn stats(&self) -> DistributedStats {
        let mut v: Vec<f64> = self
            .dispatch
            .lock()
            .expect("metrics")
            .iter()
            .copied()
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * p).round() as usize]
            }
        };
        DistributedStats {
            inbox_polls: self.inbox_polls.load(Ordering::Relaxed),
            fragments: self.fragments.load(Ordering::Relaxed),
            fragment_output_bytes: self.fragment_output_bytes.load(Ordering::Relaxed),
            shuffle_output_bytes: self.shuffle_output_bytes.load(Ordering::Relaxed),
            coordinated: self.coordinated.load(Ordering::Relaxed),
            shares_served: self.shares_served.load(Ordering::Relaxed),
            stolen: self.stolen.load(Ordering::Relaxed),
            storage_wakes: self.storage_wakes.load(Ordering::Relaxed),
            dispatch_p50: q(0.5),
            dispatch_p95: q(0.95),
            dispatch_count: v.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_over_a_bounded_window() {
        let m = DistMetrics::default();
        assert_eq!(m.stats().dispatch_count, 0);
        for i in 0..2000 {
            m.record_dispatch(i as f64);
        }
        let s = m.stats();
        assert_eq!(s.dispatch_count, DISPATCH_WINDOW);
        // The window holds the latest 1024 values: 976..=1999.
        assert_eq!(s.dispatch_p50, 1488.0);
        assert_eq!(s.dispatch_p95, 1948.0);
    }
}
