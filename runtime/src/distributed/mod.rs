//! Distributed execution: a query arriving at any node is cut into fragments that the swarm runs,
//! coordinated only through storage.
//!
//! ```text
//!  coordinator                       storage                            workers
//!  propose: cut plan, place tasks
//!  start ─▶ manifest, plan.bin ─────▶ _apiary/queries/<q>/…
//!        ─▶ inbox entries ──────────▶ _apiary/inbox/<node>/<q>.s.t.a ◀── poll own inbox
//!                                    …/claim-<a>  ◀──────────────────── put-if-absent (one wins)
//!                                    …/out-<a>/part-*.arrow ◀────────── run in a bee (parts)
//!  StageExec streams parts ◀──────── …/done-<a>.json ◀───────────────── written last
//!  monitor reassigns on …/failed-<a>.json (retryable: the node gave it up), dead nodes, timeouts
//!  cleanup: delete _apiary/queries/<q>/; orphans past a TTL are deleted by any cold node
//! ```
//!
//! Everything here takes a [`DistContext`] — the parts of a node it needs — never the node.
//! The protocol's objects are in `apiary_storage::format`; `docs/distributed.md` describes it.
//!
//! | module          | owns                                                         |
//! |-----------------|--------------------------------------------------------------|
//! | `context`       | [`DistContext`], [`DistributionConfig`]                      |
//! | `cut`           | finding leaf stages and splitting their cells into tasks     |
//! | `assign`        | placing tasks on nodes                                       |
//! | `proposal`      | whether and how a query spreads (also shown by EXPLAIN)      |
//! | `run`           | posting a proposal; the [`DistributedRun`] a result holds    |
//! | `coordinator`   | watching tasks, reassigning, streaming outputs back          |
//! | `stage_exec`    | `StageExec`, the coordinator's placeholder for a leaf stage  |
//! | `shares`        | results served by several nodes: one endpoint per share of cells |
//! | `shuffle`       | hash-partitioned outputs: slice writer, shuffle reads, plan codec |
//! | `worker`        | polling the inbox, claiming, running, giving up              |
//! | `watch`         | on a local root, changes that wake the worker or a monitor   |
//! | `parts`         | the task output format: writer and checked reader            |
//! | `sweep`         | deleting what dead coordinators left                         |
//! | `metrics`       | counters for status and `/metrics`                           |

mod assign;
mod context;
mod coordinator;
mod cut;
mod metrics;
mod parts;
mod proposal;
mod run;
mod shares;
mod shuffle;
mod stage_exec;
mod sweep;
mod watch;
mod worker;

#[cfg(test)]
mod tests;

pub(crate) use context::DistContext;
pub use context::DistributionConfig;
pub(crate) use metrics::DistMetrics;
pub(crate) use proposal::{describe, propose, propose_or_why_not};
pub(crate) use run::{DistributedRun, start};
pub(crate) use shares::{propose as propose_shares, share_plan};
pub(crate) use sweep::sweep_orphans;
pub(crate) use watch::start as watch_storage;
pub(crate) use worker::run as run_worker;
