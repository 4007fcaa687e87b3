//! The node as the server and status views see it: [`QueryService`] and [`StatusSource`].

use std::sync::atomic::Ordering;

use apiary_storage::{BoxRef, FrameRef, Ident};
use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;

use super::Node;
use crate::engine::{Pins, Session, Statement, StatementInfo};
use crate::error::Result;
use crate::service::{IngestRequest, Planned, QueryRequest, QueryService};
use crate::status::{NodeStatus, StatusSource};

#[async_trait::async_trait]
impl QueryService for Node {
    fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        self.engine.parse(sql)
    }

    async fn plan(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Option<Vec<ScalarValue>>,
        keep: bool,
    ) -> Result<Planned> {
        // Planned as its DoGet would plan it here, and kept for that DoGet.
        let target = self.swarm_target(session, &stmt.text);
        let (engine, session, stmt) = (self.engine.clone(), session.clone(), stmt.clone());
        let planned = self
            .planning(async move {
                engine
                    .plan_query_for(&session, &stmt, params, &Pins::new(), target)
                    .await
            })
            .await?;
        let (schema, pins, partitions) = (
            planned.schema.clone(),
            planned.pins.clone(),
            planned.planned_for,
        );
        // Status tables are read when planned: their queries plan again when they run.
        let keep = keep && !planned.reads_system;
        // A result big enough, and a plain union over one scan: served by every node, a share
        // each, straight to the client.
        let shares = keep
            .then(|| self.shares_of(&planned.plan, partitions))
            .flatten();
        Ok(Planned {
            schema,
            pins,
            plan_key: keep.then(|| self.plans.put(planned, partitions)),
            shares,
        })
    }

    async fn statement_info(&self, session: &Session, stmt: &Statement) -> Result<StatementInfo> {
        let (engine, session, stmt) = (self.engine.clone(), session.clone(), stmt.clone());
        self.planning(async move { engine.statement_info(&session, &stmt).await })
            .await
    }

    async fn query(&self, request: QueryRequest) -> Result<SendableRecordBatchStream> {
        let stmt = self.engine.parse_one(&request.sql)?;
        // A cancel that came before the DoGet is looked for beside the query, not before it
        // (no storage round trip ahead of the first batch): the result cannot end before the
        // look is over, and ends `Cancelled` when the marker is there.
        Node::query(self, &stmt, request).await
    }

    async fn update(
        &self,
        session: &Session,
        stmt: &Statement,
        params: Vec<Vec<ScalarValue>>,
    ) -> Result<(u64, Session)> {
        let query_id = uuid::Uuid::now_v7().to_string();
        Node::update(self, &query_id, session, stmt, params).await
    }

    async fn ingest(
        &self,
        request: IngestRequest,
        schema: Option<SchemaRef>,
        data: SendableRecordBatchStream,
    ) -> Result<u64> {
        self.ingest_stream(request, schema, data).await
    }

    async fn list_hives(&self) -> Result<Vec<Ident>> {
        Ok(self.lakehouse.catalog().list_hives().await?)
    }

    async fn list_boxes(&self, hive: Option<&Ident>) -> Result<Vec<BoxRef>> {
        Ok(self.lakehouse.catalog().list_boxes(hive).await?)
    }

    async fn list_frames(&self, b: &BoxRef) -> Result<Vec<Ident>> {
        Ok(self.lakehouse.list_visible_frames(b).await?)
    }

    async fn frame_entry(
        &self,
        frame: &FrameRef,
        with_schema: bool,
    ) -> Result<Option<crate::service::FrameEntry>> {
        if !with_schema {
            return self.engine.frame_entry(frame, false).await;
        }
        // A view's schema is its query planned: off the IO runtime, under the deadline.
        let (engine, frame) = (self.engine.clone(), frame.clone());
        self.planning(async move { engine.frame_entry(&frame, true).await })
            .await
    }

    async fn hive_exists(&self, hive: &Ident) -> Result<bool> {
        self.engine.hive_exists(hive).await
    }

    async fn box_exists(&self, b: &BoxRef) -> Result<bool> {
        self.engine.box_exists(b).await
    }

    async fn entry_box(&self, hive: &Ident) -> Result<Ident> {
        self.engine.entry_box(hive).await
    }

    async fn cancel(&self, query_id: &str) -> Result<()> {
        let here = self.queries.cancel(query_id);
        // Other nodes redeeming the ticket, and fragments elsewhere, see the marker.
        crate::cancel::write_marker(self.storage(), query_id).await?;
        tracing::debug!(query_id, here, "cancel requested");
        Ok(())
    }
}

impl StatusSource for Node {
    fn status(&self) -> NodeStatus {
        let load = self.bees.load();
        NodeStatus {
            node_id: self.config.node_id.clone(),
            flight_url: self.config.advertise_url.clone(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            bees: self.config.bees.bees,
            memory_budget: self.config.bees.memory_budget,
            bee_memory_budget: self.bees.bee_budget(),
            storage: self.storage().display_url().to_string(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            uptime: self.started.elapsed(),
            queries_total: self.queries_total.load(Ordering::Relaxed),
            plans: self.plans.stats(),
            footers: self.lakehouse.ledger().footers().stats(),
            distributed: self.dist.metrics.stats(),
            cache: self.cache.as_ref().map(|c| c.stats()),
            temperature: self.bees.temperature(),
            load,
            bee_slots: self.bees.status(),
            queries: self.queries.status(),
            failures: self.queries.recent_failures(),
            // This node is alive to itself even before its own heartbeat has moved.
            swarm: self.world.seen_from(&self.config.node_id),
        }
    }
}
