//! The node's work: queries (in a bee, or spread over the swarm), statements without results,
//! and bulk ingest — each registered in `system.runtime.queries` while it runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::{StreamExt, TryStreamExt};
use tracing::info;

use super::Node;
use super::plans::StaysLocal;
use crate::bees::BeeLease;
use crate::distributed;
use crate::distributed::DistributedRun;
use crate::engine::{Pins, PlanTarget, PlannedQuery, Role, Session, Statement};
use crate::error::{Error, Result};
use crate::queries::{QueryGuard, TrackedStream};
use crate::service::{IngestRequest, QueryRequest};
use crate::sql::Command;
use crate::swarm::NodeState;

/// What a result stream keeps alive until it is dropped.
#[derive(Debug)]
enum Held {
    /// Status queries and EXPLAIN: nothing.
    Nothing,
    /// The bee the query runs in.
    Bee(#[allow(dead_code)] BeeLease),
    /// A distributed query's run (its monitor; cleanup when dropped).
    Distributed(#[allow(dead_code)] DistributedRun),
}

/// Partitions a query is planned for at most, whatever the swarm's heartbeats claim.
const MAX_PLAN_PARTITIONS: usize = 1024;

impl Node {
    fn check_param_rows(&self, rows: usize) -> Result<()> {
        let max = self.engine.limits().max_param_rows;
        if rows > max {
            return Err(Error::Sql(format!(
                "{rows} parameter rows; the limit is {max} (--max-param-rows); use bulk ingest for more"
            )));
        }
        Ok(())
    }

    /// Parse-and-plan work, off the IO runtime: on the CPU runtime (whose threads have room for
    /// deep expressions), under the query deadline, abandoned when it passes.
    pub(super) async fn planning<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.cpu
            .run(
                work,
                &tokio_util::sync::CancellationToken::new(),
                Some(self.config.bees.query_timeout),
            )
            .await
    }

    /// How many partitions queries are planned for: this node's own (`None`), or on a swarm
    /// every bee of it, so that aggregations and sorts split into partial and final steps that
    /// fragments can run.
    pub(super) fn plan_partitions(&self) -> Option<usize> {
        let swarm_bees: usize = self
            .world
            .seen_from(&self.config.node_id)
            .iter()
            .filter(|v| v.state == NodeState::Alive)
            .map(|v| v.heartbeat.bees_total.max(1) as usize)
            .sum();
        (swarm_bees > self.config.bees.bees).then_some(swarm_bees.min(MAX_PLAN_PARTITIONS))
    }

    /// What a query is planned for: the swarm's partitions when its frames hold enough cells
    /// to spread (`--distribute-min-bytes`), else this node's own — planned once, as it runs.
    /// A statement that lately spread nothing is planned for this node's own at once.
    pub(super) fn swarm_target(&self, session: &Session, sql: &str) -> PlanTarget<'static> {
        let target = self.swarm_wide_target();
        match target.partitions {
            Some(p) if self.stays_local.holds(StaysLocal::key(session, sql, p)) => {
                PlanTarget::default()
            }
            _ => target,
        }
    }

    /// Whether `sql` would now be planned for this node alone.
    #[cfg(test)]
    pub(crate) fn plans_locally(&self, session: &Session, sql: &str) -> bool {
        self.swarm_target(session, sql).partitions.is_none()
    }

    /// The swarm's partitions when the frames hold enough cells, whatever the statement did
    /// lately (EXPLAIN shows how the swarm would run it).
    fn swarm_wide_target(&self) -> PlanTarget<'static> {
        PlanTarget {
            env: None,
            partitions: self.plan_partitions(),
            spread_from: self.config.distribution.min_bytes,
        }
    }

    /// How the result of `plan`, planned for `partitions`, would be shared out over the swarm's
    /// nodes (`--share-results`); every node plans a share for the same partitions: the
    /// swarm's, or this node's own.
    pub(super) fn shares_of(
        &self,
        plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        partitions: Option<usize>,
    ) -> Option<crate::service::Shares> {
        let planned_for = partitions.or(Some(self.config.engine.target_partitions));
        self.config
            .distribution
            .share_results
            .then(|| distributed::propose_shares(&self.dist, plan, planned_for))
            .flatten()
    }

    /// Register a query (it shows in `system.runtime.queries` until the guard drops).
    pub(super) fn register(&self, query_id: &str, user: &str, sql: &str) -> QueryGuard {
        self.queries_total.fetch_add(1, Ordering::Relaxed);
        self.queries.register(query_id, user, sql)
    }

    /// Run a query; the stream holds what the query uses (a bee, or a distributed run) until it
    /// ends or is dropped. Several parameter rows run as several statements, one after the
    /// other.
    ///
    /// Status queries (only `system.*`) and EXPLAIN take no bee, so they answer on a saturated
    /// node. A query over enough cells on a swarm of two or more is cut into fragments for the
    /// swarm; its coordinator part runs outside the bee slots (with a bee-sized memory pool), so
    /// that this node's own bees stay free for the fragments it is assigned. Everything else
    /// runs in a bee.
    pub async fn query(
        &self,
        stmt: &Statement,
        request: QueryRequest,
    ) -> Result<SendableRecordBatchStream> {
        let QueryRequest {
            query_id,
            session,
            params: param_rows,
            pins,
            plan_key,
            share,
            ..
        } = request;
        let (query_id, session, pins, plan_key) = (&query_id, &session, &pins, plan_key.as_deref());
        self.check_param_rows(param_rows.len())?;
        let mut guard = self.register(query_id, &session.user, &stmt.text);
        let several = param_rows.len() > 1;
        let param_sets: Vec<Option<Vec<ScalarValue>>> = if param_rows.is_empty() {
            vec![None]
        } else {
            param_rows.into_iter().map(Some).collect()
        };
        // A share is planned as the node that shared the result out planned it, so that every
        // node cuts the same plan into the same shares.
        let target = match share {
            Some(s) => PlanTarget {
                partitions: s.partitions.map(|p| p.clamp(1, MAX_PLAN_PARTITIONS)),
                ..Default::default()
            },
            None => self.swarm_target(session, &stmt.text),
        };
        // The plan GetFlightInfo made here for this ticket, when it is still here: one planning
        // per query. Parameter rows beyond one are planned each.
        let kept = match (plan_key, param_sets.len()) {
            (Some(key), 1) => self
                .plans
                .take(key, target.partitions)
                // A share is cut from the plan the issuing node made for the swarm, never from
                // one made for a node alone.
                .filter(|p| {
                    p.pins == *pins && (share.is_none() || p.planned_for == target.partitions)
                }),
            _ => None,
        };
        let first_params = param_sets[0].clone();
        let mut plans = match kept {
            Some(kept) => vec![kept],
            None => {
                self.plan_each(session, stmt, param_sets, pins, target)
                    .await?
            }
        };
        if let Some(share) = share {
            let [planned] = plans.as_mut_slice() else {
                return Err(Error::Sql(
                    "a share of a result is one statement with at most one parameter row".into(),
                ));
            };
            planned.plan = distributed::share_plan(
                &planned.plan,
                share,
                self.storage().prefix(),
                self.config.engine.target_partitions,
            )?;
            self.dist
                .metrics
                .shares_served
                .fetch_add(1, Ordering::Relaxed);
        }
        let schema = plans[0].schema.clone();
        let timeout = self.config.bees.query_timeout;
        let mut deadline = Instant::now() + timeout;
        let mut explain_budget: Option<Box<dyn Fn(Error) -> Error + Send>> = None;
        let (ctx, held) = if plans[0].system_only || stmt.explained.is_some() {
            (
                self.engine.task_context(&self.coordinator_env()?),
                Held::Nothing,
            )
        } else if let Some(proposal) =
            (plans.len() == 1 && share.is_none() && plans[0].planned_for.is_some())
                .then(|| distributed::propose(&self.dist, &plans[0].plan))
                .flatten()
        {
            // Each redemption of a ticket is its own run: two DoGets of one ticket never share
            // storage objects. Fragments here follow this query's cancellation via the alias.
            let run_id = uuid::Uuid::now_v7().to_string();
            self.queries.alias(&run_id, guard.entry());
            let (root, mut run) = distributed::start(
                &self.dist,
                &run_id,
                &stmt.text,
                &plans[0].plan,
                proposal,
                timeout,
            )
            .await?;
            if let Some(bees) = plans[0].planned_for
                && self.dist.config.min_bytes > 0
            {
                // A run that shipped back much of what it scanned lost to running here: plan
                // the statement for this node alone for a while, as one that spread nothing.
                // (A threshold of zero spreads every stage, whatever it ships.)
                let (memo, key) = (
                    self.stays_local.clone(),
                    StaysLocal::key(session, &stmt.text, bees),
                );
                let query_id = run_id.clone();
                run.when_it_shipped_much(move |share| {
                    info!(
                        query_id = %query_id,
                        shipped_share = share,
                        "the query shipped much of what it scanned; its statement runs here for a while"
                    );
                    memo.remember(key);
                });
            }
            self.dist
                .metrics
                .coordinated
                .fetch_add(1, Ordering::Relaxed);
            plans[0].plan = root;
            guard.entry().set_bee(None);
            (
                self.engine.task_context(&self.coordinator_env()?),
                Held::Distributed(run),
            )
        } else {
            if let (1, Some(bees), None) = (plans.len(), plans[0].planned_for, share) {
                // Planned for the swarm's bees, but nothing spreads: plan again for this node's
                // own, as a node alone would (a plan of more partitions than bees only adds
                // repartitioning on the same cores), and for a while plan the statement so
                // from the start.
                self.stays_local
                    .remember(StaysLocal::key(session, &stmt.text, bees));
                let local = PlanTarget::default();
                plans = self
                    .plan_each(session, stmt, vec![first_params], pins, local)
                    .await?;
            }
            let lease = guard.admit(&self.bees).await?;
            deadline = lease.deadline();
            explain_budget = Some(Box::new(lease.explainer()));
            (self.engine.task_context(lease.env()), Held::Bee(lease))
        };
        if let Some(inner) = &stmt.explained {
            // EXPLAIN shows, besides DataFusion's plan, how the swarm would run the query.
            if let Some(batch) = self.explain_distributed(session, inner, pins).await? {
                plans.push(PlannedQuery::from_batch(batch)?);
            }
        }
        // Several parameter rows are one result: a column may be NULL in one row's plan and
        // not in another's (a NULL after a value failed as INTERNAL "declared as non-nullable").
        let schema = match several {
            true => Arc::new(crate::engine::nullable(&schema)),
            false => schema,
        };
        let cpu_schema = schema.clone();
        let batch_schema = schema.clone();
        // Plans name cells by their keys in the store, which for a local root begin with the
        // server's own directories: only admins see those.
        let redact = (session.role != Role::Admin && crate::sql::is_explain(&stmt.text))
            .then(|| format!("{}/", self.storage().prefix()))
            .filter(|p| p.len() > 1);
        let stream = self.cpu.stream(schema, move || {
            let streams = futures::stream::iter(plans)
                .map(move |p: PlannedQuery| {
                    p.execute_with(ctx.clone())
                        .map_err(datafusion::error::DataFusionError::from)
                })
                .try_flatten()
                .and_then(move |b| {
                    let out = match &redact {
                        Some(prefix) => crate::engine::redact_text(&b, prefix),
                        None => Ok(b),
                    }
                    .and_then(|b| match several {
                        true => arrow::array::RecordBatch::try_new(
                            batch_schema.clone(),
                            b.columns().to_vec(),
                        )
                        .map_err(|e| {
                            datafusion::error::DataFusionError::ArrowError(Box::new(e), None)
                        }),
                        false => Ok(b),
                    });
                    futures::future::ready(out)
                });
            Ok(Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    cpu_schema, streams,
                ),
            ) as SendableRecordBatchStream)
        });
        guard.watch_storage_from_start(self.storage().clone());
        let mut tracked = TrackedStream::new(stream, guard, held).with_deadline(deadline, timeout);
        if let Some(f) = explain_budget {
            tracked = tracked.with_error_map(f);
        }
        Ok(tracked.served(self.config.result_idle_timeout))
    }

    /// One plan per parameter set, for `target`, on the planning runtime.
    async fn plan_each(
        &self,
        session: &Session,
        stmt: &Statement,
        param_sets: Vec<Option<Vec<ScalarValue>>>,
        pins: &Pins,
        target: PlanTarget<'static>,
    ) -> Result<Vec<PlannedQuery>> {
        let (engine, session, stmt, pins) = (
            self.engine.clone(),
            session.clone(),
            stmt.clone(),
            pins.clone(),
        );
        self.planning(async move {
            let mut plans = Vec::with_capacity(param_sets.len());
            for params in param_sets {
                plans.push(
                    engine
                        .plan_query_for(&session, &stmt, params, &pins, target)
                        .await?,
                );
            }
            Ok(plans)
        })
        .await
    }

    /// A memory pool the size of one bee that takes no bee slot (coordinators, status queries).
    fn coordinator_env(&self) -> Result<Arc<RuntimeEnv>> {
        Ok(datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(crate::memory::HeadroomPool::new(
                self.bees.bee_budget() as usize,
            )))
            .with_object_store_registry(self.engine.runtime_env().object_store_registry.clone())
            .build_arc()?)
    }

    /// For `EXPLAIN <query>`: one more (plan_type, plan) row with the distributed plan.
    async fn explain_distributed(
        &self,
        session: &Session,
        inner: &str,
        pins: &Pins,
    ) -> Result<Option<arrow::array::RecordBatch>> {
        let Ok(inner) = self.engine.parse_one(inner) else {
            return Ok(None);
        };
        if !inner.returns_rows() || inner.params > 0 {
            return Ok(None);
        }
        let target = self.swarm_wide_target();
        let planned = {
            let (engine, session, pins) = (self.engine.clone(), session.clone(), pins.clone());
            // Planned as the query itself would be: for the swarm's bees.
            self.planning(async move {
                engine
                    .plan_query_for(&session, &inner, None, &pins, target)
                    .await
            })
            .await?
        };
        let text = match self.shares_of(&planned.plan, planned.planned_for) {
            Some(s) => format!(
                "result in {} shares, one endpoint each (a plain union over one scan's cells): \
                 each share is computed where it is served, nothing goes through storage\n{}",
                s.homes.len(),
                s.homes
                    .iter()
                    .enumerate()
                    .map(|(i, url)| format!(
                        "  share {i}: {}\n",
                        if i == 0 { "this connection" } else { url }
                    ))
                    .collect::<String>()
            ),
            None => match distributed::propose_or_why_not(&self.dist, &planned.plan) {
                Ok(p) => distributed::describe(&p),
                Err(why) => format!(
                    "runs on this node ({}): {}\n",
                    self.id(),
                    why.explain(self.config.distribution.min_bytes)
                ),
            },
        };
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("plan_type", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new("plan", arrow::datatypes::DataType::Utf8, false),
        ]));
        Ok(Some(arrow::array::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::StringArray::from(vec!["distributed_plan"])),
                Arc::new(arrow::array::StringArray::from(vec![text])),
            ],
        )?))
    }

    /// Run a statement that returns no result set, once per parameter row (or once): in a bee,
    /// unless it only changes the namespace.
    /// Returns the rows affected and the session afterwards.
    pub async fn update(
        &self,
        query_id: &str,
        session: &Session,
        stmt: &Statement,
        param_rows: Vec<Vec<ScalarValue>>,
    ) -> Result<(u64, Session)> {
        self.check_param_rows(param_rows.len())?;
        if session.role == Role::Reader
            && !matches!(
                stmt.command,
                Command::Use { .. } | Command::SetOption { .. }
            )
        {
            return Err(Error::NotAllowed(format!(
                "{} is a reader: statements that change data or the namespace are refused",
                session.user
            )));
        }
        let guard = self.register(query_id, &session.user, &stmt.text);
        // A change to the namespace alone takes no bee (see `Command::needs_bee`).
        let lease = match stmt.command.needs_bee() {
            true => match guard.admit(&self.bees).await {
                Ok(l) => Some(l),
                Err(e) => {
                    guard.fail(&e);
                    return Err(e);
                }
            },
            false => None,
        };
        let engine = self.engine.clone();
        let env = lease.as_ref().map(|l| l.env().clone());
        let mut session = session.clone();
        let stmt = stmt.clone();
        let work = async move {
            let n = engine
                .execute_rows(env.as_ref(), &mut session, &stmt, param_rows)
                .await?;
            Ok((n, session))
        };
        let token = guard.entry().cancel_token().clone();
        let timeout = Some(self.config.bees.query_timeout);
        match self.cpu.run(work, &token, timeout).await {
            Ok((n, s)) => {
                guard.finish(n);
                Ok((n, s))
            }
            Err(e) => {
                guard.fail(&e);
                Err(match &lease {
                    Some(lease) => lease.explain(e),
                    None => e,
                })
            }
        }
    }

    /// Bulk ingest in a bee, shown in `system.runtime.queries` like any other work.
    pub async fn ingest_stream(
        &self,
        request: IngestRequest,
        schema: Option<SchemaRef>,
        data: SendableRecordBatchStream,
    ) -> Result<u64> {
        if request.role == Role::Reader {
            return Err(Error::NotAllowed(format!(
                "{} is a reader: ingest is refused",
                request.user
            )));
        }
        let query_id = uuid::Uuid::now_v7().to_string();
        let what = format!("INGEST INTO {}", request.frame);
        let guard = self.register(&query_id, &request.user, &what);
        let lease = match guard.admit(&self.bees).await {
            Ok(l) => l,
            Err(e) => {
                guard.fail(&e);
                return Err(e);
            }
        };
        // Batches flow from the client straight into cells; nothing is buffered whole.
        let data = idle_bounded(data, self.config.ingest_idle_timeout);
        match self
            .engine
            .ingest(
                &request.frame,
                &request.mode,
                schema.as_ref(),
                data,
                lease.env(),
            )
            .await
        {
            Ok(rows) => {
                guard.finish(rows);
                info!(frame = %request.frame, rows, user = %request.user, "ingest committed");
                Ok(rows)
            }
            Err(e) => {
                // What the client's stream failed with, as the cell writer passed it on.
                let e = match e {
                    Error::Storage(apiary_storage::Error::DataFusion(e)) => Error::from(*e),
                    e => e,
                };
                guard.fail(&e);
                Err(lease.explain(e))
            }
        }
    }
}

/// `data`, failing with [`Error::ClientIdle`] when its client sends nothing for `idle` (zero:
/// no bound), and ending there. Only the wait for the client counts, never the time the writer
/// spends between batches.
fn idle_bounded(data: SendableRecordBatchStream, idle: Duration) -> SendableRecordBatchStream {
    if idle.is_zero() {
        return data;
    }
    let schema = data.schema();
    let batches = futures::stream::unfold(Some(data), move |data| async move {
        let mut data = data?;
        match tokio::time::timeout(idle, data.next()).await {
            Ok(Some(item)) => Some((item, Some(data))),
            Ok(None) => None,
            Err(_) => {
                let e =
                    datafusion::error::DataFusionError::External(Box::new(Error::ClientIdle(idle)));
                Some((Err(e), None))
            }
        }
    });
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, batches))
}
