//! Results served by several nodes at once. When a query's result is a plain union of what each
//! share of one scan's cells gives (a scan, filters, projections, probe-only joins against a
//! small side; no merge, order, limit or aggregate above), GetFlightInfo hands out one endpoint
//! per share and the client reads them in parallel, each from the node it names.
//!
//! ```text
//!  GetFlightInfo on A: plan; the result is a plain union over one scan, ≥ min_bytes of cells
//!     ──▶ endpoints: share 0 of N (this connection), share 1 of N (node B's URL, then A's), …
//!  DoGet(share k) on any node: plan at the ticket's pins for the ticket's partitions, keep
//!     share k of the scan's cells (cells sorted by key, spread N ways: alike on every node),
//!     run it here in a bee, stream it straight to the client
//! ```
//!
//! Nothing goes through storage: each share is computed where it is served. A ticket of a share
//! is redeemable on every node, like any ticket; its location only says where it is cheapest.

use std::sync::Arc;

use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

use super::DistContext;
use super::assign::Candidate;
use super::cut::{self, PlanRef, Shuffles, Stage};
use crate::error::{Error, Result};
use crate::service::{Share, Shares};

/// Smallest piece a cell is cut into when shares split cells by byte ranges.
const MIN_RANGE_BYTES: usize = 4 * 1024 * 1024;

/// Most shares (endpoints) one result is split into.
const MAX_SHARES: usize = 256;

/// How the result of `plan` (planned for `partitions`) would be shared over the live nodes:
/// `None` when it is not a plain union over one scan, when its cells are fewer than
/// `min_bytes`, or when fewer than two nodes (or shares) would serve it.
pub(crate) fn propose(
    ctx: &DistContext,
    plan: &PlanRef,
    partitions: Option<usize>,
) -> Option<Shares> {
    let stage = shared_stage(plan, ctx.storage.prefix())?;
    if stage.bytes < ctx.config.min_bytes.max(1) {
        return None;
    }
    let view = ctx.swarm_view();
    let own = view
        .iter()
        .find(|v| v.heartbeat.node_id == ctx.node_id)
        .map(|v| v.heartbeat.flight_url.clone())
        .unwrap_or_default();
    // Nodes that would take a task (alive, not critical) and can be reached.
    let mut others: Vec<(String, String)> = view
        .into_iter()
        .filter(|v| Candidate::from_view(v).is_some() && v.heartbeat.node_id != ctx.node_id)
        .filter(|v| !v.heartbeat.flight_url.is_empty())
        .map(|v| (v.heartbeat.node_id.clone(), v.heartbeat.flight_url.clone()))
        .collect();
    others.sort();
    others.truncate(MAX_SHARES - 1);
    let of = others.len() + 1;
    let groups = split(stage.scan.as_ref()?, of).len();
    if groups < 2 {
        return None;
    }
    let homes = std::iter::once(own)
        .chain(others.into_iter().map(|(_, url)| url))
        .take(groups)
        .collect();
    Some(Shares {
        of: of as u32,
        partitions,
        homes,
    })
}

/// `plan` computing only `share` of its result, with the share's cells spread over
/// `local_partitions` partitions. Fails (never answers wrongly) when this node's plan is not
/// the plain union the share was cut from.
pub(crate) fn share_plan(
    plan: &PlanRef,
    share: Share,
    root: &object_store::path::Path,
    local_partitions: usize,
) -> Result<PlanRef> {
    let refuse = || {
        Error::Unavailable(
            "this node plans the query differently from the node that shared it out; \
             run the statement again"
                .into(),
        )
    };
    if share.of == 0 || share.of as usize > MAX_SHARES || share.index >= share.of {
        return Err(Error::Sql(format!(
            "share {} of {} does not exist",
            share.index, share.of
        )));
    }
    let stage = shared_stage(plan, root).ok_or_else(refuse)?;
    let scan = stage.scan.as_ref().ok_or_else(refuse)?;
    let mine: Vec<PartitionedFile> = split(scan, share.of as usize)
        .into_iter()
        .nth(share.index as usize)
        .map(|g| g.files().to_vec())
        .unwrap_or_default();
    let groups = local_groups(mine, local_partitions.max(1));
    let body = cut::task_plan_over(&stage, groups)?;
    Ok(match body.output_partitioning().partition_count() {
        1 => body,
        _ => Arc::new(CoalescePartitionsExec::new(body)),
    })
}

/// The one stage whose outputs, put together, are the result of `plan`: the plan is that stage
/// (under at most a `CoalescePartitionsExec` without a limit), rests on one scan of cells under
/// `root`, and aggregates nothing partially. Plans that promise an order are not shared.
fn shared_stage(plan: &PlanRef, root: &object_store::path::Path) -> Option<Stage> {
    let body = match plan.downcast_ref::<CoalescePartitionsExec>() {
        Some(c) if c.fetch().is_none() => c.input().clone(),
        Some(_) => return None,
        None if plan.output_ordering().is_some() => return None,
        None => plan.clone(),
    };
    if partially_aggregates(&body) || cut::validate_fragment(&body, root, "").is_err() {
        return None;
    }
    let mut stages = cut::find_stages(&body, Shuffles::None);
    match stages.as_slice() {
        [s] if Arc::ptr_eq(&s.leaf, &body) && s.scan.is_some() => stages.pop(),
        _ => None,
    }
}

/// A partial aggregate's states are not rows of the result (DataFusion never plans one at the
/// top of a result; this keeps it so whatever the plan).
fn partially_aggregates(node: &PlanRef) -> bool {
    node.downcast_ref::<AggregateExec>()
        .is_some_and(|a| *a.mode() == AggregateMode::Partial)
        || node.children().into_iter().any(partially_aggregates)
}

/// The scan's cells split `of` ways, alike on every node: whole cells, each once, sorted by
/// key, spread by size (byte ranges where cells are too few).
fn split(scan: &FileScanConfig, of: usize) -> Vec<FileGroup> {
    let mut files = cut::whole_cells(scan);
    if files.is_empty() {
        return vec![];
    }
    files.sort_by(|a, b| a.object_meta.location.cmp(&b.object_meta.location));
    apiary_storage::spread_cells(files, of, MIN_RANGE_BYTES)
        .into_iter()
        .filter(|g| !g.files().is_empty())
        .collect()
}

/// A share's cells over this node's partitions: whole cells spread again, or (a share of
/// byte ranges) its ranges dealt out in turn.
fn local_groups(files: Vec<PartitionedFile>, partitions: usize) -> Vec<FileGroup> {
    if files.is_empty() {
        return vec![FileGroup::new(vec![])];
    }
    if files.iter().all(|f| f.range.is_none()) {
        return apiary_storage::spread_cells(files, partitions, MIN_RANGE_BYTES);
    }
    let n = partitions.min(files.len());
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n];
    for (i, f) in files.into_iter().enumerate() {
        groups[i % n].push(f);
    }
    groups.into_iter().map(FileGroup::new).collect()
}
