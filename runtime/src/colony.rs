//! Colony temperature: one number in [0, 1] for how loaded this node is, and what it changes.
//!
//! ```text
//!  temperature = 0.4 · busy bees / bees  +  0.3 · memory reserved / budget  +  0.3 · queued / queue depth
//!
//!  cold  [0, 0.3)   background maintenance may run
//!  ideal [0.3, 0.7]
//!  warm  (0.7, 0.85]
//!  hot   (0.85, 0.95]  writes (INSERT, ingest) are throttled
//!  critical (0.95, 1]  new work is refused with a retryable error
//! ```
//!
//! All bees busy with little memory and no queue is *ideal* (the node is used, not overloaded);
//! it takes memory pressure and a filling queue on top to get hot.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tracing::{debug, info, warn};

const W_BUSY: f64 = 0.4;
const W_MEMORY: f64 = 0.3;
const W_QUEUE: f64 = 0.3;

/// Band of a temperature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    Cold,
    Ideal,
    Warm,
    Hot,
    Critical,
}

impl Band {
    pub fn of(t: f64) -> Band {
        if t < 0.3 {
            Band::Cold
        } else if t <= 0.7 {
            Band::Ideal
        } else if t <= 0.85 {
            Band::Warm
        } else if t <= 0.95 {
            Band::Hot
        } else {
            Band::Critical
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Band::Cold => "cold",
            Band::Ideal => "ideal",
            Band::Warm => "warm",
            Band::Hot => "hot",
            Band::Critical => "critical",
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The load figures a temperature is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Load {
    pub bees: usize,
    pub busy: usize,
    pub memory_budget: u64,
    pub memory_reserved: u64,
    pub queue_capacity: usize,
    pub queued: usize,
}

/// A temperature reading with its parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Temperature {
    pub value: f64,
    pub band: Band,
    pub busy: f64,
    pub memory: f64,
    pub queue: f64,
}

impl Temperature {
    pub fn of(load: &Load) -> Temperature {
        let ratio = |a: f64, b: f64| {
            if b <= 0.0 {
                0.0
            } else {
                (a / b).clamp(0.0, 1.0)
            }
        };
        let busy = ratio(load.busy as f64, load.bees as f64);
        let memory = ratio(load.memory_reserved as f64, load.memory_budget as f64);
        let queue = ratio(load.queued as f64, load.queue_capacity as f64);
        let value = (W_BUSY * busy + W_MEMORY * memory + W_QUEUE * queue).clamp(0.0, 1.0);
        Temperature {
            value,
            band: Band::of(value),
            busy,
            memory,
            queue,
        }
    }
}

/// Watches the temperature: logs band transitions, tells writers how long to wait.
///
/// Only the bands that change what the node does are news for an operator: entering hot or
/// critical (writes slow down, queries are refused) is a warning and leaving them is info.
/// Moves among cold, ideal and warm are debug: with one bee every query goes cold → ideal →
/// cold, which at info was two log lines per query.
#[derive(Debug, Default)]
pub struct Colony {
    last: Mutex<Option<Band>>,
}

impl Colony {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a reading; logs when the band changes (see above). Returns the reading.
    pub fn observe(&self, load: &Load) -> Temperature {
        let t = Temperature::of(load);
        let mut last = self.last.lock().expect("colony");
        if *last != Some(t.band) {
            let from = last.map(|b| b.as_str()).unwrap_or("start");
            let was_hot = last.is_some_and(|b| b >= Band::Hot);
            if t.band >= Band::Hot {
                warn!(from, to = %t.band, value = t.value, busy = t.busy, memory = t.memory, queue = t.queue, "colony temperature");
            } else if was_hot {
                info!(from, to = %t.band, value = t.value, busy = t.busy, memory = t.memory, queue = t.queue, "colony temperature");
            } else {
                debug!(from, to = %t.band, value = t.value, busy = t.busy, memory = t.memory, queue = t.queue, "colony temperature");
            }
            *last = Some(t.band);
        }
        t
    }

    /// How long a writer should wait before its next batch: nothing below hot, longer the hotter.
    pub fn write_delay(t: &Temperature) -> Duration {
        match t.band {
            Band::Hot => Duration::from_millis(20 + ((t.value - 0.85) * 2000.0) as u64),
            Band::Critical => Duration::from_millis(250),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_boundaries() {
        assert_eq!(Band::of(0.0), Band::Cold);
        assert_eq!(Band::of(0.2999), Band::Cold);
        assert_eq!(Band::of(0.3), Band::Ideal);
        assert_eq!(Band::of(0.7), Band::Ideal);
        assert_eq!(Band::of(0.7001), Band::Warm);
        assert_eq!(Band::of(0.85), Band::Warm);
        assert_eq!(Band::of(0.8501), Band::Hot);
        assert_eq!(Band::of(0.95), Band::Hot);
        assert_eq!(Band::of(0.9501), Band::Critical);
        assert_eq!(Band::of(1.0), Band::Critical);
    }

    fn load(busy: usize, mem: u64, queued: usize) -> Load {
        Load {
            bees: 2,
            busy,
            memory_budget: 100,
            memory_reserved: mem,
            queue_capacity: 10,
            queued,
        }
    }

    #[test]
    fn components() {
        assert_eq!(Temperature::of(&load(0, 0, 0)).band, Band::Cold);
        // Every bee busy, little memory, no queue: the node is used, not overloaded.
        assert_eq!(Temperature::of(&load(2, 10, 0)).band, Band::Ideal);
        assert_eq!(Temperature::of(&load(2, 90, 2)).band, Band::Warm);
        assert_eq!(Temperature::of(&load(2, 100, 7)).band, Band::Hot);
        assert_eq!(Temperature::of(&load(2, 100, 10)).band, Band::Critical);
        // Over-budget figures are clamped.
        let t = Temperature::of(&load(5, 500, 50));
        assert!((t.value - 1.0).abs() < 1e-9);
        // An empty node has no division by zero.
        assert_eq!(Temperature::of(&Load::default()).band, Band::Cold);
    }

    #[test]
    fn writes_are_throttled_only_when_hot() {
        for (l, throttled) in [
            (load(0, 0, 0), false),
            (load(2, 10, 0), false),
            (load(2, 90, 2), false),
            (load(2, 100, 7), true),
            (load(2, 100, 10), true),
        ] {
            let t = Temperature::of(&l);
            assert_eq!(Colony::write_delay(&t) > Duration::ZERO, throttled, "{t:?}");
        }
        let hot = Temperature::of(&load(2, 100, 6));
        let hotter = Temperature::of(&load(2, 100, 8));
        assert!(Colony::write_delay(&hotter) >= Colony::write_delay(&hot));
    }

    #[test]
    fn transitions_are_tracked() {
        let c = Colony::new();
        assert_eq!(c.observe(&load(0, 0, 0)).band, Band::Cold);
        assert_eq!(c.observe(&load(2, 100, 10)).band, Band::Critical);
        assert_eq!(*c.last.lock().unwrap(), Some(Band::Critical));
    }
}
