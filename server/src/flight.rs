//! The Flight SQL service.
//!
//! [`FlightSql`] implements arrow-flight's `FlightSqlService` (commands, prepared statements,
//! ingest, metadata, actions); [`ApiaryFlightService`] wraps it to add the Flight calls the trait
//! hard-codes as unimplemented (GetSchema, PollFlightInfo).
//!
//! ```text
//!  GetFlightInfo(query) ─ plan once (schema, pinned versions) ─▶ FlightInfo{signed ticket}
//!  DoGet(ticket)        ─ verify, re-plan at the pinned versions, execute ─▶ Schema, batches…
//! ```
//!
//! Nothing lives in one node's memory between calls: tickets and prepared-statement handles are
//! signed, self-contained messages (SQL, bound parameters, pins, session, user, expiry), and the
//! session travels in the bearer token, so any node of a swarm can serve any call.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apiary_proto::flight_session as fs;
use apiary_proto::v1::{PinnedFrameV1, PreparedStatementV1, StatementTicketV1};
use apiary_runtime::queries::{self, QueryRegistry};
use apiary_runtime::system::{SYSTEM_TABLES, SystemTables};
use apiary_runtime::{Engine, Node, Pins, Session, Statement};
use apiary_storage::{FrameRef, Ident, Lakehouse, ObjectKind};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{
    GetCatalogsBuilder, GetTablesBuilder, SqlInfoData, XdbcTypeInfoData,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionEndSavepointRequest, ActionEndTransactionRequest,
    Any, Command, CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas,
    CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo,
    CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus,
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    PollInfo, RenewFlightEndpointRequest, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::common::ScalarValue;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use prost_types::Timestamp;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use crate::auth::{self, Principal, Signer};
use crate::metadata;
use crate::status::{arrow_status, to_status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Target size of one FlightData message; arrow-flight splits larger batches by rows. Well under
/// the 4 MiB gRPC default that many clients keep.
const MAX_FLIGHT_DATA: usize = 2 * 1024 * 1024;

/// Table types in GetTables / GetTableTypes.
const FRAME_TABLE: &str = "TABLE";
const SYSTEM_TABLE: &str = "SYSTEM TABLE";

/// Options a client may set with SetSessionOptions.
const OPT_CATALOG: &str = "catalog";
const OPT_SCHEMA: &str = "schema";

/// Shared state of the service.
pub struct FlightSql {
    node: Arc<Node>,
    engine: Engine,
    lakehouse: Lakehouse,
    signer: Signer,
    queries: Arc<QueryRegistry>,
    sql_info: SqlInfoData,
    xdbc: XdbcTypeInfoData,
    ticket_ttl: Duration,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql")
            .field("ticket_ttl", &self.ticket_ttl)
            .finish_non_exhaustive()
    }
}

impl FlightSql {
    pub fn new(node: Arc<Node>, signer: Signer, ticket_ttl: Duration) -> Self {
        Self {
            lakehouse: node.lakehouse().clone(),
            engine: node.engine().clone(),
            queries: node.queries().clone(),
            node,
            signer,
            sql_info: metadata::sql_info(),
            xdbc: metadata::xdbc_info(),
            ticket_ttl,
        }
    }

    fn expiry(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.ticket_ttl.as_millis() as i64
    }

    fn session(p: &Principal) -> Result<Session, Status> {
        Ok(Session {
            hive: Ident::parse(&p.hive).map_err(|e| to_status(e.into()))?,
            box_name: Ident::parse(&p.box_name).map_err(|e| to_status(e.into()))?,
            user: p.user.clone(),
        })
    }

    fn parse_one(&self, sql: &str) -> Result<Statement, Status> {
        self.engine.parse_one(sql).map_err(to_status)
    }

    // ---- tickets and handles -----------------------------------------------------------------

    fn ticket_for(&self, t: &StatementTicketV1) -> Ticket {
        let sealed = self.signer.seal("ticket", t.encode_to_vec());
        let tq = TicketStatementQuery {
            statement_handle: sealed.into(),
        };
        Ticket::new(tq.as_any().encode_to_vec())
    }

    fn open_ticket(&self, handle: &[u8]) -> Result<StatementTicketV1, Status> {
        let payload = self.signer.open("ticket", handle)?;
        let t = StatementTicketV1::decode(payload)
            .map_err(|_| Status::invalid_argument("malformed ticket"))?;
        if t.expires_at_ms < chrono::Utc::now().timestamp_millis() {
            return Err(Status::invalid_argument(
                "ticket expired; run the statement again",
            ));
        }
        Ok(t)
    }

    fn ticket_from_any(&self, ticket: &[u8]) -> Result<StatementTicketV1, Status> {
        let any = Any::decode(ticket).map_err(|_| Status::invalid_argument("malformed ticket"))?;
        let tq: TicketStatementQuery = any
            .unpack()
            .map_err(arrow_status)?
            .ok_or_else(|| Status::invalid_argument("not a statement ticket"))?;
        self.open_ticket(&tq.statement_handle)
    }

    fn seal_prepared(&self, p: &PreparedStatementV1) -> bytes::Bytes {
        self.signer.seal("prepared", p.encode_to_vec()).into()
    }

    fn open_prepared(&self, handle: &[u8], who: &Principal) -> Result<PreparedStatementV1, Status> {
        let payload = self.signer.open("prepared", handle)?;
        let p = PreparedStatementV1::decode(payload)
            .map_err(|_| Status::invalid_argument("malformed prepared statement handle"))?;
        if p.expires_at_ms < chrono::Utc::now().timestamp_millis() {
            return Err(Status::invalid_argument(
                "prepared statement expired; prepare it again",
            ));
        }
        if p.user != who.user {
            return Err(Status::permission_denied(
                "prepared statement belongs to another user",
            ));
        }
        Ok(p)
    }

    fn pins_of(t: &StatementTicketV1) -> Result<Pins, Status> {
        let mut pins = Pins::new();
        for p in &t.pins {
            let f = FrameRef::new(
                Ident::parse(&p.hive).map_err(|e| to_status(e.into()))?,
                Ident::parse(&p.box_name).map_err(|e| to_status(e.into()))?,
                Ident::parse(&p.frame).map_err(|e| to_status(e.into()))?,
            );
            pins.insert(f, p.version);
        }
        Ok(pins)
    }

    // ---- queries -----------------------------------------------------------------------------

    /// Plan a query and describe it as a FlightInfo with one self-contained ticket.
    async fn flight_info_for_query(
        &self,
        who: &Principal,
        sql: &str,
        params: bytes::Bytes,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let session = Self::session(who)?;
        let stmt = self.parse_one(sql)?;
        let rows = decode_param_rows(&params)?;
        if !stmt.returns_rows() {
            // A statement without a result set: run it now, answer with no endpoints.
            // total_records carries the affected-row count (DB-API rowcount).
            let (count, _) = self.run_update(who, &stmt, &rows).await?;
            return FlightInfo::new()
                .try_with_schema(&Schema::empty())
                .map_err(arrow_status)
                .map(|i| {
                    i.with_descriptor(descriptor)
                        .with_total_records(count)
                        .with_total_bytes(0)
                });
        }
        let first = rows.first().cloned();
        if stmt.params > 0 && first.is_none() {
            return Err(Status::invalid_argument(format!(
                "the statement takes {} parameter(s); bind them first",
                stmt.params
            )));
        }
        let planned = self
            .engine
            .plan_query(&session, &stmt, first, &Pins::new())
            .await
            .map_err(to_status)?;
        let schema = wire_schema(&planned.schema);
        let ticket = StatementTicketV1 {
            query_id: uuid::Uuid::now_v7().to_string(),
            sql: sql.to_string(),
            parameters: params,
            default_hive: session.hive.to_string(),
            default_box: session.box_name.to_string(),
            pins: planned
                .pins
                .iter()
                .map(|(f, v)| PinnedFrameV1 {
                    hive: f.hive.to_string(),
                    box_name: f.box_name.to_string(),
                    frame: f.name.to_string(),
                    version: *v,
                })
                .collect(),
            user: who.user.clone(),
            expires_at_ms: self.expiry(),
            jdbc: who.jdbc,
            part: None,
        };
        let endpoint = FlightEndpoint::new()
            .with_ticket(self.ticket_for(&ticket))
            .with_expiration_time(timestamp_ms(ticket.expires_at_ms));
        Ok(FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(arrow_status)?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1)
            .with_ordered(false))
    }

    /// Execute a ticket: re-plan at its pinned versions and stream the result.
    async fn execute_ticket(
        &self,
        who: &Principal,
        t: StatementTicketV1,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        if t.user != who.user {
            return Err(Status::permission_denied("ticket belongs to another user"));
        }
        let storage = self.lakehouse.storage().clone();
        if queries::cancel_requested(&storage, &t.query_id)
            .await
            .map_err(to_status)?
        {
            return Err(Status::cancelled("query was cancelled"));
        }
        let session = Session {
            hive: Ident::parse(&t.default_hive).map_err(|e| to_status(e.into()))?,
            box_name: Ident::parse(&t.default_box).map_err(|e| to_status(e.into()))?,
            user: t.user.clone(),
        };
        let stmt = self.parse_one(&t.sql)?;
        let pins = Self::pins_of(&t)?;
        let rows = decode_param_rows(&t.parameters)?;
        let param_sets: Vec<Option<Vec<ScalarValue>>> = rows.into_iter().map(Some).collect();
        let (schema, stream) = self
            .node
            .query(&t.query_id, &session, &stmt, param_sets, &pins)
            .await
            .map_err(to_status)?;
        Ok(Response::new(encode_stream(wire_schema(&schema), stream)))
    }

    // ---- updates -----------------------------------------------------------------------------

    /// Run a statement that does not return rows, once per parameter row (or once).
    /// Returns the rows affected and the session after the statement (USE changes it).
    async fn run_update(
        &self,
        who: &Principal,
        stmt: &Statement,
        rows: &[Vec<ScalarValue>],
    ) -> Result<(i64, Session), Status> {
        let session = Self::session(who)?;
        let query_id = uuid::Uuid::now_v7().to_string();
        let (n, session) = self
            .node
            .update(&query_id, &session, stmt, rows.to_vec())
            .await
            .map_err(to_status)?;
        Ok((n as i64, session))
    }

    // ---- ingest ------------------------------------------------------------------------------

    async fn ingest(
        &self,
        who: &Principal,
        cmd: CommandStatementIngest,
        stream: PeekableFlightDataStream,
    ) -> Result<i64, Status> {
        let opts = cmd
            .table_definition_options
            .ok_or_else(|| Status::invalid_argument("ingest needs table_definition_options"))?;
        let if_not_exist = TableNotExistOption::try_from(opts.if_not_exist)
            .unwrap_or(TableNotExistOption::Unspecified);
        let if_exists =
            TableExistsOption::try_from(opts.if_exists).unwrap_or(TableExistsOption::Unspecified);
        if if_not_exist == TableNotExistOption::Unspecified
            || if_exists == TableExistsOption::Unspecified
        {
            return Err(Status::invalid_argument(
                "ingest needs if_not_exist and if_exists to be specified",
            ));
        }
        if cmd.temporary {
            return Err(Status::unimplemented("temporary frames are not supported"));
        }
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let session = Self::session(who)?;
        let parse = |s: &str| Ident::parse(s).map_err(|e| to_status(e.into()));
        let frame = FrameRef::new(
            match cmd.catalog.as_deref().filter(|c| !c.is_empty()) {
                Some(c) => parse(c)?,
                None => session.hive.clone(),
            },
            match cmd.schema.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => parse(s)?,
                None => session.box_name.clone(),
            },
            parse(&cmd.table)?,
        );
        let partition_by: Vec<String> = cmd
            .options
            .get("apiary.partition_by")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();

        let mut batches = arrow_messages(stream);
        // The first message carries the schema; read until it is known (or the stream ends).
        let first = batches.next().await.transpose().map_err(flight_status)?;
        let incoming: Option<SchemaRef> = batches.schema().cloned();
        let lh = &self.lakehouse;
        let existing = match lh.frame(&frame, None).await {
            Ok(s) => Some(s),
            Err(apiary_storage::Error::NotFound {
                kind: ObjectKind::Frame,
                ..
            }) => None,
            Err(e) => return Err(to_status(e.into())),
        };
        let (snapshot, overwrite) = match (existing, if_exists, if_not_exist) {
            (Some(_), TableExistsOption::Fail, _) => {
                return Err(Status::already_exists(format!(
                    "frame {frame} already exists"
                )));
            }
            (Some(s), TableExistsOption::Append, _) => (s, false),
            (Some(s), TableExistsOption::Replace, _) => {
                let same_shape = incoming.as_ref().is_none_or(|i| {
                    apiary_storage::schema::frame_schema_for(i)
                        .map(|fs| &fs == s.schema())
                        .unwrap_or(false)
                });
                if same_shape {
                    (s, true)
                } else {
                    lh.drop_frame(&frame, true)
                        .await
                        .map_err(|e| to_status(e.into()))?;
                    (
                        self.create_for_ingest(&frame, &incoming, &partition_by)
                            .await?,
                        false,
                    )
                }
            }
            (None, _, TableNotExistOption::Fail) => {
                lh.catalog()
                    .require_box(&frame.box_ref())
                    .await
                    .map_err(|e| to_status(e.into()))?;
                return Err(Status::not_found(format!("frame {frame} does not exist")));
            }
            (None, _, _) => (
                self.create_for_ingest(&frame, &incoming, &partition_by)
                    .await?,
                false,
            ),
            (Some(_), TableExistsOption::Unspecified, _) => {
                return Err(Status::invalid_argument("if_exists is unspecified"));
            }
        };
        // Ingest is work like any other: it takes a bee and shows in system.runtime.queries.
        let query_id = uuid::Uuid::now_v7().to_string();
        let guard = self
            .queries
            .register(&query_id, &who.user, &format!("INGEST INTO {frame}"));
        let lease = self.node.admit(&query_id).await.map_err(to_status)?;
        guard.entry().set_bee(Some(lease.bee()));
        let table = self.engine.frame_table(snapshot);
        let sink = apiary_storage::FrameSink::new(table, overwrite);
        let schema = incoming
            .clone()
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        // Batches flow from the client straight into cells; nothing is buffered whole.
        let rest =
            futures::stream::iter(first.map(Ok)).chain(batches.map_err(|e| {
                datafusion::error::DataFusionError::External(Box::new(flight_status(e)))
            }));
        let data = Box::pin(RecordBatchStreamAdapter::new(schema, rest));
        let (rows, version) = match sink.write_stream(data).await {
            Ok(done) => done,
            Err(e) => {
                guard.fail();
                return Err(to_status(e.into()));
            }
        };
        guard.finish(rows);
        info!(frame = %frame, rows, version, user = %who.user, "ingest committed");
        Ok(rows as i64)
    }

    async fn create_for_ingest(
        &self,
        frame: &FrameRef,
        incoming: &Option<SchemaRef>,
        partition_by: &[String],
    ) -> Result<apiary_storage::FrameSnapshot, Status> {
        let incoming = incoming.as_ref().ok_or_else(|| {
            Status::invalid_argument("cannot create a frame from a stream without a schema")
        })?;
        let schema =
            apiary_storage::schema::frame_schema_for(incoming).map_err(|e| to_status(e.into()))?;
        match self
            .lakehouse
            .create_frame(frame, &schema, partition_by, true)
            .await
            .map_err(|e| to_status(e.into()))?
        {
            Some(s) => Ok(s),
            // Created concurrently by another client (create_append): append to it.
            None => self
                .lakehouse
                .frame(frame, None)
                .await
                .map_err(|e| to_status(e.into())),
        }
    }

    // ---- metadata ----------------------------------------------------------------------------

    async fn catalogs_batch(&self) -> Result<RecordBatch, Status> {
        let mut b = GetCatalogsBuilder::new();
        for h in self
            .lakehouse
            .catalog()
            .list_hives()
            .await
            .map_err(|e| to_status(e.into()))?
        {
            b.append(h.as_str());
        }
        b.append(apiary_storage::paths::SYSTEM_HIVE);
        b.build().map_err(arrow_status)
    }

    async fn schemas_batch(&self, cmd: CommandGetDbSchemas) -> Result<RecordBatch, Status> {
        let mut b = cmd.into_builder();
        for bx in self
            .lakehouse
            .catalog()
            .list_boxes(None)
            .await
            .map_err(|e| to_status(e.into()))?
        {
            b.append(bx.hive.as_str(), bx.name.as_str());
        }
        let mut system_boxes: Vec<&str> = SYSTEM_TABLES.iter().map(|(bx, _)| *bx).collect();
        system_boxes.dedup();
        for bx in system_boxes {
            b.append(apiary_storage::paths::SYSTEM_HIVE, bx);
        }
        b.build().map_err(arrow_status)
    }

    async fn tables_batch(&self, cmd: CommandGetTables) -> Result<RecordBatch, Status> {
        let include_schema = cmd.include_schema;
        let catalog_filter = cmd.catalog.clone();
        let schema_pattern = cmd.db_schema_filter_pattern.clone();
        let table_pattern = cmd.table_name_filter_pattern.clone();
        let types = cmd.table_types.clone();
        let mut b: GetTablesBuilder = cmd.into_builder();
        let wants = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
        if wants(SYSTEM_TABLE) {
            let system = apiary_storage::paths::SYSTEM_HIVE;
            for (bx, t) in SYSTEM_TABLES {
                let selected = catalog_filter.as_ref().is_none_or(|c| c == system)
                    && schema_pattern
                        .as_ref()
                        .is_none_or(|p| metadata::like(p, bx))
                    && table_pattern.as_ref().is_none_or(|p| metadata::like(p, t));
                if !selected {
                    continue;
                }
                let schema = if include_schema {
                    let s = SystemTables::schema_of(bx, t).expect("listed system table");
                    metadata::annotate_schema(&s, system, bx, t)
                } else {
                    Schema::empty()
                };
                b.append(system, bx, t, SYSTEM_TABLE, &schema)
                    .map_err(arrow_status)?;
            }
        }
        if !wants(FRAME_TABLE) {
            return b.build().map_err(arrow_status);
        }
        let cat = self.lakehouse.catalog();
        for bx in cat
            .list_boxes(None)
            .await
            .map_err(|e| to_status(e.into()))?
        {
            if catalog_filter
                .as_ref()
                .is_some_and(|c| c != bx.hive.as_str())
            {
                continue;
            }
            if schema_pattern
                .as_ref()
                .is_some_and(|p| !metadata::like(p, bx.name.as_str()))
            {
                continue;
            }
            for f in cat
                .list_frames(&bx)
                .await
                .map_err(|e| to_status(e.into()))?
            {
                if table_pattern
                    .as_ref()
                    .is_some_and(|p| !metadata::like(p, f.as_str()))
                {
                    continue;
                }
                let schema = if include_schema {
                    let fr = FrameRef::new(bx.hive.clone(), bx.name.clone(), f.clone());
                    match self.lakehouse.frame(&fr, None).await {
                        Ok(s) => metadata::annotate_schema(
                            &wire_schema(s.schema()),
                            bx.hive.as_str(),
                            bx.name.as_str(),
                            f.as_str(),
                        ),
                        // Dropped since it was listed.
                        Err(apiary_storage::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(to_status(e.into())),
                    }
                } else {
                    Schema::empty()
                };
                b.append(
                    bx.hive.as_str(),
                    bx.name.as_str(),
                    f.as_str(),
                    "TABLE",
                    &schema,
                )
                .map_err(arrow_status)?;
            }
        }
        b.build().map_err(arrow_status)
    }

    fn table_types_batch(&self) -> Result<RecordBatch, Status> {
        let mut b = CommandGetTableTypes {}.into_builder();
        b.append(FRAME_TABLE);
        b.append(SYSTEM_TABLE);
        b.build().map_err(arrow_status)
    }

    fn metadata_info(
        &self,
        cmd_any: Any,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(cmd_any.encode_to_vec()));
        Ok(Response::new(
            FlightInfo::new()
                .try_with_schema(schema)
                .map_err(arrow_status)?
                .with_endpoint(endpoint)
                .with_descriptor(descriptor)
                .with_total_records(-1)
                .with_total_bytes(-1),
        ))
    }

    /// Schema of what a descriptor's command returns, without running it (GetSchema).
    async fn schema_for(&self, who: &Principal, cmd: Command) -> Result<SchemaRef, Status> {
        Ok(match cmd {
            Command::CommandStatementQuery(q) => self.query_schema(who, &q.query, None).await?,
            Command::CommandPreparedStatementQuery(h) => {
                let p = self.open_prepared(&h.prepared_statement_handle, who)?;
                self.query_schema(who, &p.sql, Some(p.parameters)).await?
            }
            Command::CommandGetCatalogs(c) => c.into_builder().schema(),
            Command::CommandGetDbSchemas(c) => c.into_builder().schema(),
            Command::CommandGetTables(c) => c.into_builder().schema(),
            Command::CommandGetTableTypes(c) => c.into_builder().schema(),
            Command::CommandGetSqlInfo(_) => self.sql_info.schema(),
            Command::CommandGetXdbcTypeInfo(_) => self.xdbc.schema(),
            Command::CommandGetPrimaryKeys(_) => metadata::primary_keys_schema(),
            Command::CommandGetExportedKeys(_)
            | Command::CommandGetImportedKeys(_)
            | Command::CommandGetCrossReference(_) => metadata::foreign_keys_schema(),
            other => {
                return Err(Status::unimplemented(format!(
                    "GetSchema for {}",
                    other.type_url()
                )));
            }
        })
    }

    async fn query_schema(
        &self,
        who: &Principal,
        sql: &str,
        params: Option<bytes::Bytes>,
    ) -> Result<SchemaRef, Status> {
        let session = Self::session(who)?;
        let stmt = self.parse_one(sql)?;
        if !stmt.returns_rows() {
            return Ok(Arc::new(Schema::empty()));
        }
        let first = match params {
            Some(p) => decode_param_rows(&p)?.into_iter().next(),
            None => None,
        };
        if first.is_none() && stmt.params > 0 {
            let info = self
                .engine
                .statement_info(&session, &stmt)
                .await
                .map_err(to_status)?;
            return Ok(wire_schema(&info.schema));
        }
        let planned = self
            .engine
            .plan_query(&session, &stmt, first, &Pins::new())
            .await
            .map_err(to_status)?;
        Ok(wire_schema(&planned.schema))
    }

    // ---- cancel / renew ----------------------------------------------------------------------

    async fn cancel_info(&self, info: &FlightInfo) -> Result<CancelStatus, Status> {
        let mut status = CancelStatus::NotCancellable;
        for ep in &info.endpoint {
            let Some(ticket) = &ep.ticket else { continue };
            let Ok(t) = self.ticket_from_any(&ticket.ticket) else {
                continue;
            };
            let here = self.queries.cancel(&t.query_id);
            // Other nodes redeeming the ticket see the marker.
            queries::write_cancel_marker(self.lakehouse.storage(), &t.query_id)
                .await
                .map_err(to_status)?;
            debug!(query_id = %t.query_id, here, "cancel requested");
            status = CancelStatus::Cancelled;
        }
        Ok(status)
    }
}

fn timestamp_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        FlightError::Arrow(a) => Status::invalid_argument(a.to_string()),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// The type a result column travels in: view types become their plain forms, which every client
/// (JDBC up to v18 included) reads, and which avoids shipping shared view buffers with every
/// batch (arrow-rs #7185).
fn wire_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::ListView(f) => DataType::List(Arc::new(wire_field(f))),
        DataType::LargeListView(f) => DataType::LargeList(Arc::new(wire_field(f))),
        DataType::List(f) => DataType::List(Arc::new(wire_field(f))),
        DataType::LargeList(f) => DataType::LargeList(Arc::new(wire_field(f))),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(Arc::new(wire_field(f)), *n),
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| Arc::new(wire_field(f)))
                .collect::<Vec<_>>()
                .into(),
        ),
        DataType::Map(f, sorted) => DataType::Map(Arc::new(wire_field(f)), *sorted),
        other => other.clone(),
    }
}

fn wire_field(f: &Field) -> Field {
    f.clone().with_data_type(wire_type(f.data_type()))
}

/// The schema announced in FlightInfo and sent first on every DoGet stream.
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| wire_field(f))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// Make a batch carry exactly the announced schema (types cast, nullability relabelled).
fn to_wire(
    batch: RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// Encode a result stream as FlightData: the schema first (even for zero rows), batches split to
/// at most [`MAX_FLIGHT_DATA`] per message.
fn encode_stream(
    schema: SchemaRef,
    stream: impl Stream<Item = Result<RecordBatch, datafusion::error::DataFusionError>> + Send + 'static,
) -> BoxStream<arrow_flight::FlightData> {
    let wire = schema.clone();
    let batches = stream.map(move |r| match r {
        Ok(b) => to_wire(b, &wire).map_err(FlightError::Arrow),
        Err(e) => Err(FlightError::Tonic(Box::new(to_status(e.into())))),
    });
    let encoder = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_max_flight_data_size(MAX_FLIGHT_DATA)
        .build(batches);
    Box::pin(encoder.map_err(flight_status))
}

/// A result with `schema` and no rows (keys: Apiary frames declare none).
fn no_rows(schema: SchemaRef) -> BoxStream<arrow_flight::FlightData> {
    one_batch(RecordBatch::new_empty(schema))
}

fn one_batch(batch: RecordBatch) -> BoxStream<arrow_flight::FlightData> {
    let schema = batch.schema();
    encode_stream(schema, futures::stream::iter(vec![Ok(batch)]))
}

/// IPC-encode a schema the way FlightInfo and prepared-statement results carry it.
fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(arrow_status)?;
    Ok(bytes)
}

/// Bound parameters travel as an Arrow IPC stream.
fn encode_params(batches: &[RecordBatch]) -> Result<bytes::Bytes, Status> {
    let Some(first) = batches.first() else {
        return Ok(bytes::Bytes::new());
    };
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &first.schema()).map_err(arrow_status)?;
        for b in batches {
            w.write(b).map_err(arrow_status)?;
        }
        w.finish().map_err(arrow_status)?;
    }
    Ok(buf.into())
}

/// Parameter rows of an IPC stream, one `Vec<ScalarValue>` per row.
fn decode_param_rows(bytes: &[u8]) -> Result<Vec<Vec<ScalarValue>>, Status> {
    if bytes.is_empty() {
        return Ok(vec![]);
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(arrow_status)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(arrow_status)?;
        rows.extend(batch_rows(&batch)?);
    }
    Ok(rows)
}

fn batch_rows(batch: &RecordBatch) -> Result<Vec<Vec<ScalarValue>>, Status> {
    (0..batch.num_rows())
        .map(|r| {
            batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, r).map_err(arrow_status))
                .collect()
        })
        .collect()
}

/// The Arrow messages of a DoPut stream; descriptor-only messages (empty IPC header) carry no
/// data and are skipped.
fn arrow_messages(stream: PeekableFlightDataStream) -> FlightRecordBatchStream {
    FlightRecordBatchStream::new_from_flight_data(
        stream
            .try_filter(|fd| futures::future::ready(!fd.data_header.is_empty()))
            .map_err(FlightError::from),
    )
}

/// Read every batch of a DoPut stream (parameters are small).
async fn read_batches(stream: PeekableFlightDataStream) -> Result<Vec<RecordBatch>, Status> {
    let mut s = arrow_messages(stream);
    let mut out = Vec::new();
    while let Some(b) = s.next().await {
        out.push(b.map_err(flight_status)?);
    }
    Ok(out)
}

fn action_result(msg: impl Message) -> Response<BoxStream<arrow_flight::Result>> {
    let body = msg.encode_to_vec();
    Response::new(Box::pin(futures::stream::iter(vec![Ok(
        arrow_flight::Result { body: body.into() },
    )])))
}

fn session_value(s: &str) -> fs::SessionOptionValue {
    fs::SessionOptionValue {
        option_value: Some(fs::session_option_value::OptionValue::StringValue(
            s.to_string(),
        )),
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<HandshakeResponse>>, Status> {
        // Credentials were checked by the auth layer; it also returns the token as a header.
        let who = auth::principal(&request);
        info!(user = %who.user, "handshake");
        let resp = HandshakeResponse {
            protocol_version: 0,
            payload: bytes::Bytes::new(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter(vec![Ok(
            resp,
        )]))))
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Err(Status::invalid_argument(format!(
            "unknown ticket type {}",
            message.type_url
        )))
    }

    async fn do_put_error_callback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        error: arrow_flight::sql::server::DoPutError,
    ) -> Result<Response<BoxStream<arrow_flight::PutResult>>, Status> {
        Err(Status::invalid_argument(format!(
            "DoPut needs a Flight SQL command in its first message: {error}"
        )))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let who = auth::principal(&request);
        let info = self
            .flight_info_for_query(
                &who,
                &query.query,
                bytes::Bytes::new(),
                request.into_inner(),
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let who = auth::principal(&request);
        let p = self.open_prepared(&cmd.prepared_statement_handle, &who)?;
        let mut session_who = who.clone();
        session_who.hive = p.default_hive.clone();
        session_who.box_name = p.default_box.clone();
        let info = self
            .flight_info_for_query(&session_who, &p.sql, p.parameters, request.into_inner())
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.sql_info.schema();
        self.metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query.as_any(),
            &metadata::primary_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query.as_any(),
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query.as_any(),
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_info(
            query.as_any(),
            &metadata::foreign_keys_schema(),
            request.into_inner(),
        )
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.xdbc.schema();
        self.metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let who = auth::principal(&request);
        let t = self.open_ticket(&ticket.statement_handle)?;
        self.execute_ticket(&who, t).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        // Some clients redeem the handle itself as a ticket.
        let who = auth::principal(&request);
        let p = self.open_prepared(&query.prepared_statement_handle, &who)?;
        let t = StatementTicketV1 {
            query_id: uuid::Uuid::now_v7().to_string(),
            sql: p.sql,
            parameters: p.parameters,
            default_hive: p.default_hive,
            default_box: p.default_box,
            pins: vec![],
            user: who.user.clone(),
            expires_at_ms: self.expiry(),
            jdbc: who.jdbc,
            part: None,
        };
        self.execute_ticket(&who, t).await
    }

    async fn do_get_catalogs(
        &self,
        _query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(one_batch(self.catalogs_batch().await?)))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(one_batch(self.schemas_batch(query).await?)))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(one_batch(self.tables_batch(query).await?)))
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(one_batch(self.table_types_batch()?)))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(arrow_status)?;
        Ok(Response::new(one_batch(batch)))
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(no_rows(metadata::primary_keys_schema())))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(no_rows(metadata::foreign_keys_schema())))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(no_rows(metadata::foreign_keys_schema())))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        Ok(Response::new(no_rows(metadata::foreign_keys_schema())))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>, Status> {
        let batch = query
            .into_builder(&self.xdbc)
            .build()
            .map_err(arrow_status)?;
        Ok(Response::new(one_batch(batch)))
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if cmd.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let who = auth::principal(&request);
        let slot = auth::session_slot(&request);
        let statements = self.engine.parse(&cmd.query).map_err(to_status)?;
        let mut total = 0;
        let mut now = who.clone();
        for stmt in &statements {
            if stmt.params > 0 {
                return Err(Status::invalid_argument(
                    "parameters need a prepared statement",
                ));
            }
            // A USE earlier in the text applies to the statements after it.
            let (n, session) = self.run_update(&now, stmt, &[]).await?;
            total += n;
            now.hive = session.hive.to_string();
            now.box_name = session.box_name.to_string();
        }
        if now != who
            && let Some(s) = slot
        {
            s.set(&now.hive, &now.box_name);
        }
        Ok(total)
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = auth::principal(&request);
        self.ingest(&who, cmd, request.into_inner()).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let who = auth::principal(&request);
        let mut p = self.open_prepared(&query.prepared_statement_handle, &who)?;
        let batches = read_batches(request.into_inner()).await?;
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        p.parameters = encode_params(&batches)?;
        p.expires_at_ms = self.expiry();
        // Stateless: the bound parameters come back inside a new handle, always filled in.
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(self.seal_prepared(&p)),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = auth::principal(&request);
        let slot = auth::session_slot(&request);
        let p = self.open_prepared(&query.prepared_statement_handle, &who)?;
        let batches = read_batches(request.into_inner()).await?;
        let mut rows = Vec::new();
        for b in &batches {
            rows.extend(batch_rows(b)?);
        }
        if rows.is_empty() {
            rows = decode_param_rows(&p.parameters)?;
        }
        let mut session_who = who.clone();
        session_who.hive = p.default_hive.clone();
        session_who.box_name = p.default_box.clone();
        let stmt = self.parse_one(&p.sql)?;
        let (n, session) = self.run_update(&session_who, &stmt, &rows).await?;
        if (session.hive.as_str(), session.box_name.as_str())
            != (who.hive.as_str(), who.box_name.as_str())
            && let Some(s) = slot
        {
            s.set(session.hive.as_str(), session.box_name.as_str());
        }
        Ok(n)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        if query.transaction_id.is_some() {
            return Err(Status::unimplemented("transactions are not supported"));
        }
        let who = auth::principal(&request);
        let session = Self::session(&who)?;
        let stmt = self.parse_one(&query.query)?;
        let info = self
            .engine
            .statement_info(&session, &stmt)
            .await
            .map_err(to_status)?;
        let dataset = if info.returns_rows {
            wire_schema(&info.schema)
        } else {
            Arc::new(Schema::empty())
        };
        // One concretely typed field per marker; Utf8 where nothing constrains the type.
        let params = Schema::new(
            info.parameters
                .iter()
                .map(|f| {
                    let dt = match f.data_type() {
                        DataType::Null => DataType::Utf8,
                        dt => wire_type(dt),
                    };
                    Field::new(f.name(), dt, true)
                })
                .collect::<Vec<_>>(),
        );
        let handle = PreparedStatementV1 {
            sql: query.query,
            parameters: bytes::Bytes::new(),
            default_hive: session.hive.to_string(),
            default_box: session.box_name.to_string(),
            user: who.user.clone(),
            expires_at_ms: self.expiry(),
            is_query: info.returns_rows,
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: self.seal_prepared(&handle),
            dataset_schema: ipc_schema(&dataset)?,
            parameter_schema: ipc_schema(&params)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: nothing to free.
        Ok(())
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Status::unimplemented(
            "transactions are not supported: every statement commits on its own",
        ))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented(
            "transactions are not supported: every statement commits on its own",
        ))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented("savepoints are not supported"))
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(query.info)
            .map_err(|_| Status::invalid_argument("malformed FlightInfo"))?;
        let status = self.cancel_info(&info).await?;
        // CancelResult: 1 = CANCELLED, 3 = NOT_CANCELLABLE (same numbering as CancelStatus).
        Ok(ActionCancelQueryResult {
            result: status as i32,
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
        let who = auth::principal(&request);
        let slot = auth::session_slot(&request);
        let action = request.into_inner();
        match action.r#type.as_str() {
            "CancelFlightInfo" => {
                let req = CancelFlightInfoRequest::decode(action.body)
                    .map_err(|_| Status::invalid_argument("malformed CancelFlightInfoRequest"))?;
                let info = req
                    .info
                    .ok_or_else(|| Status::invalid_argument("CancelFlightInfo without info"))?;
                let status = self.cancel_info(&info).await?;
                Ok(action_result(CancelFlightInfoResult {
                    status: status as i32,
                }))
            }
            "RenewFlightEndpoint" => {
                let req = RenewFlightEndpointRequest::decode(action.body).map_err(|_| {
                    Status::invalid_argument("malformed RenewFlightEndpointRequest")
                })?;
                let ep = req.endpoint.ok_or_else(|| {
                    Status::invalid_argument("RenewFlightEndpoint without endpoint")
                })?;
                let ticket = ep
                    .ticket
                    .as_ref()
                    .ok_or_else(|| Status::invalid_argument("endpoint without ticket"))?;
                let mut t = self.ticket_from_any(&ticket.ticket)?;
                if t.user != who.user {
                    return Err(Status::permission_denied("ticket belongs to another user"));
                }
                t.expires_at_ms = self.expiry();
                let renewed = FlightEndpoint {
                    ticket: Some(self.ticket_for(&t)),
                    location: ep.location.clone(),
                    expiration_time: Some(timestamp_ms(t.expires_at_ms)),
                    app_metadata: ep.app_metadata.clone(),
                };
                Ok(action_result(renewed))
            }
            "SetSessionOptions" => {
                let req = fs::SetSessionOptionsRequest::decode(action.body)
                    .map_err(|_| Status::invalid_argument("malformed SetSessionOptionsRequest"))?;
                let mut hive = who.hive.clone();
                let mut box_name = who.box_name.clone();
                let mut errors = HashMap::new();
                let err = |v: fs::set_session_options_result::ErrorValue| {
                    fs::set_session_options_result::Error { value: v as i32 }
                };
                for (name, value) in req.session_options {
                    let text = match value.option_value {
                        Some(fs::session_option_value::OptionValue::StringValue(s)) => Some(s),
                        _ => None,
                    };
                    match (name.as_str(), text) {
                        (OPT_CATALOG, Some(v)) => {
                            match Ident::parse(&v) {
                                Ok(h)
                                    if self
                                        .lakehouse
                                        .catalog()
                                        .hive_exists(&h)
                                        .await
                                        .unwrap_or(false) =>
                                {
                                    hive = h.to_string();
                                    // The box is kept if the new hive has it, else it is the default.
                                    let b = apiary_storage::BoxRef::new(
                                        h.clone(),
                                        Ident::parse(&box_name)
                                            .unwrap_or_else(|_| Ident::default_box()),
                                    );
                                    if !self
                                        .lakehouse
                                        .catalog()
                                        .box_exists(&b)
                                        .await
                                        .unwrap_or(false)
                                    {
                                        box_name = apiary_storage::paths::DEFAULT_BOX.to_string();
                                    }
                                }
                                _ => {
                                    errors.insert(name, err(fs::set_session_options_result::ErrorValue::InvalidValue));
                                }
                            }
                        }
                        (OPT_SCHEMA, Some(v)) => {
                            let ok = match (Ident::parse(&hive), Ident::parse(&v)) {
                                (Ok(h), Ok(b)) => self
                                    .lakehouse
                                    .catalog()
                                    .box_exists(&apiary_storage::BoxRef::new(h, b))
                                    .await
                                    .unwrap_or(false),
                                _ => false,
                            };
                            if ok {
                                box_name = v.to_ascii_lowercase();
                            } else {
                                errors.insert(
                                    name,
                                    err(fs::set_session_options_result::ErrorValue::InvalidValue),
                                );
                            }
                        }
                        (OPT_CATALOG | OPT_SCHEMA, None) => {
                            errors.insert(
                                name,
                                err(fs::set_session_options_result::ErrorValue::InvalidValue),
                            );
                        }
                        _ => {
                            errors.insert(
                                name,
                                err(fs::set_session_options_result::ErrorValue::InvalidName),
                            );
                        }
                    }
                }
                if let Some(s) = slot {
                    s.set(&hive, &box_name);
                }
                Ok(action_result(fs::SetSessionOptionsResult { errors }))
            }
            "GetSessionOptions" => {
                let mut options = HashMap::new();
                options.insert(OPT_CATALOG.to_string(), session_value(&who.hive));
                options.insert(OPT_SCHEMA.to_string(), session_value(&who.box_name));
                Ok(action_result(fs::GetSessionOptionsResult {
                    session_options: options,
                }))
            }
            "CloseSession" => {
                if let Some(s) = slot {
                    s.set(
                        apiary_storage::paths::DEFAULT_HIVE,
                        apiary_storage::paths::DEFAULT_BOX,
                    );
                }
                Ok(action_result(fs::CloseSessionResult {
                    status: fs::close_session_result::Status::Closed as i32,
                }))
            }
            other => Err(Status::invalid_argument(format!("unknown action {other}"))),
        }
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        let describe = |t: &str, d: &str| {
            Ok(ActionType {
                r#type: t.to_string(),
                description: d.to_string(),
            })
        };
        Some(vec![
            describe("CancelFlightInfo", "Cancel a running query (any node)"),
            describe(
                "RenewFlightEndpoint",
                "Extend the expiry of an endpoint's ticket",
            ),
            describe(
                "SetSessionOptions",
                "Set session options: catalog (hive), schema (box)",
            ),
            describe("GetSessionOptions", "Get session options"),
            describe("CloseSession", "Reset the session"),
        ])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The Flight service clients talk to: [`FlightSql`] plus GetSchema and PollFlightInfo.
#[derive(Debug, Clone)]
pub struct ApiaryFlightService {
    sql: Arc<FlightSql>,
}

impl ApiaryFlightService {
    pub fn new(sql: FlightSql) -> Self {
        Self { sql: Arc::new(sql) }
    }

    fn command(descriptor: &FlightDescriptor) -> Result<Command, Status> {
        let any = Any::decode(&*descriptor.cmd)
            .map_err(|_| Status::invalid_argument("malformed command"))?;
        Command::try_from(any).map_err(arrow_status)
    }
}

#[tonic::async_trait]
impl FlightService for ApiaryFlightService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<arrow_flight::FlightData>;
    type DoPutStream = BoxStream<arrow_flight::PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<arrow_flight::FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        FlightService::handshake(self.sql.as_ref(), request).await
    }

    async fn list_flights(
        &self,
        _request: Request<arrow_flight::Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "ListFlights: use GetTables (Flight SQL) to list frames",
        ))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        FlightService::get_flight_info(self.sql.as_ref(), request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        // Planning is synchronous here, so the first poll is already complete: no further
        // descriptor, progress 1.0; results are read with DoGet as usual.
        let info = FlightService::get_flight_info(self.sql.as_ref(), request)
            .await?
            .into_inner();
        Ok(Response::new(PollInfo {
            info: Some(info),
            flight_descriptor: None,
            progress: Some(1.0),
            expiration_time: None,
        }))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let who = auth::principal(&request);
        let cmd = Self::command(request.get_ref())?;
        let schema = self.sql.schema_for(&who, cmd).await?;
        let result: SchemaResult = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(arrow_status)?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(self.sql.as_ref(), request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(self.sql.as_ref(), request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(self.sql.as_ref(), request).await
    }

    async fn list_actions(
        &self,
        request: Request<arrow_flight::Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(self.sql.as_ref(), request).await
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }
}
