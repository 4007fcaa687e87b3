//! The Flight SQL service.
//!
//! [`FlightSql`] implements arrow-flight's `FlightSqlService` (in `service`, one short delegation
//! per command); [`ApiaryFlightService`] wraps it to add the Flight calls the trait hard-codes
//! as unimplemented (GetSchema, PollFlightInfo). Everything runs against an
//! `Arc<dyn QueryService>`: the Flight layer knows the runtime only through that trait.
//!
//! ```text
//!  GetFlightInfo(query) ─ plan once (schema, pinned versions; the plan kept) ─▶ FlightInfo{signed ticket}
//!  DoGet(ticket)        ─ verify, run the kept plan (or re-plan at the pinned versions) ─▶ Schema, batches…
//! ```
//!
//! Nothing lives in one node's memory between calls: tickets and prepared-statement handles are
//! signed, self-contained messages (`ticket`), and the session travels in the bearer token, so
//! any node of a swarm can serve any call.
//!
//! | module      | owns                                                                |
//! |-------------|---------------------------------------------------------------------|
//! | `service`   | the `FlightSqlService` impl: delegations only                       |
//! | `statement` | statements, updates, GetSchema of queries, cancel and renew          |
//! | `prepared`  | prepared statements: create, bind, execute                           |
//! | `ticket`    | sealing and opening tickets and handles; ticket ↔ `QueryRequest`     |
//! | `ingest`    | decoding `CommandStatementIngest`                                    |
//! | `catalog`   | catalog metadata and the key commands, GetTables patterns            |
//! | `sql_info`  | SqlInfo, XDBC types, key schemas                                     |
//! | `session`   | Set/Get/CloseSession                                                  |
//! | `wire`      | wire types and schemas, FlightData encoding, parameters              |

mod catalog;
mod ingest;
mod prepared;
mod service;
mod session;
mod sql_info;
mod statement;
mod ticket;
mod wire;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use apiary_runtime::QueryService;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::{Any, Command};
use arrow_flight::{
    Action, ActionType, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse,
    PollInfo, SchemaAsIpc, SchemaResult, Ticket,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Principal, Signer};
use crate::error::{Error, Result};
use wire::BoxStream;

pub use wire::wire_schema;

/// Shared state of the service.
pub struct FlightSql {
    service: Arc<dyn QueryService>,
    signer: Signer,
    sql_info: SqlInfoData,
    reported: sql_info::ReportedLimits,
    xdbc: XdbcTypeInfoData,
    ticket_ttl: Duration,
    max_cancel_endpoints: usize,
    max_param_rows: usize,
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql")
            .field("service", &self.service)
            .field("ticket_ttl", &self.ticket_ttl)
            .finish_non_exhaustive()
    }
}

impl FlightSql {
    pub fn new(service: Arc<dyn QueryService>, signer: Signer, ticket_ttl: Duration) -> Self {
        let reported = sql_info::ReportedLimits {
            statement_timeout_ms: i32::try_from(ticket_ttl.as_millis()).unwrap_or(i32::MAX),
            ..Default::default()
        };
        Self {
            service,
            signer,
            sql_info: sql_info::sql_info(reported),
            reported,
            xdbc: sql_info::xdbc_info(),
            ticket_ttl,
            max_cancel_endpoints: 64,
            max_param_rows: 10_000,
        }
    }

    /// At most `n` parameter rows per DoPut (the runtime's `--max-param-rows`): counted as
    /// batches arrive, before any row becomes values.
    pub fn with_max_param_rows(mut self, n: usize) -> Self {
        self.max_param_rows = n;
        self
    }

    /// Report the frame's column limit (`--max-columns`), the longest statement
    /// (`--max-sql-bytes`) and the most relations one reads (`--max-sql-relations`) in SqlInfo.
    pub fn with_statement_limits(
        mut self,
        max_columns: usize,
        max_sql_bytes: usize,
        max_sql_relations: usize,
    ) -> Self {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.reported.columns_in_table = as_i64(max_columns);
        self.reported.statement_length = as_i64(max_sql_bytes);
        self.reported.tables_in_select = as_i64(max_sql_relations);
        self.sql_info = sql_info::sql_info(self.reported);
        self
    }

    /// At most `n` endpoints per CancelFlightInfo (each costs a storage write).
    pub fn with_max_cancel_endpoints(mut self, n: usize) -> Self {
        self.max_cancel_endpoints = n.max(1);
        self
    }

    /// Schema of what a descriptor's command returns, without running it (GetSchema).
    async fn schema_for(&self, who: &Principal, cmd: Command) -> Result<SchemaRef> {
        match cmd {
            Command::CommandStatementQuery(q) => self.query_schema(who, &q.query, None).await,
            Command::CommandPreparedStatementQuery(h) => {
                let p = self.open_prepared(&h.prepared_statement_handle, who)?;
                let mut in_session = who.clone();
                in_session.hive = p.default_hive.clone();
                in_session.box_name = p.default_box.clone();
                in_session.options = ticket::options_of(&p.options);
                self.query_schema(&in_session, &p.sql, Some(p.parameters))
                    .await
            }
            other => self
                .metadata_schema(&other)
                .ok_or_else(|| Error::Unimplemented(format!("GetSchema for {}", other.type_url()))),
        }
    }
}

/// arrow-flight's Flight SQL dispatch reports a command it cannot decode as INTERNAL (an
/// `ArrowError::ParseError`); those are the client's bytes, so INVALID_ARGUMENT.
fn client_bytes(s: Status) -> Status {
    crate::error::bounded(match s.message().strip_prefix("ParseError(") {
        Some(rest) if s.code() == tonic::Code::Internal => Status::invalid_argument(format!(
            "malformed command: {}",
            rest.trim_end_matches(')').trim_matches('"')
        )),
        _ => s,
    })
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

    fn command(descriptor: &FlightDescriptor) -> Result<Command> {
        let any = Any::decode(&*descriptor.cmd).map_err(|_| Error::invalid("malformed command"))?;
        Command::try_from(any).map_err(|e| Error::invalid(format!("malformed command: {e}")))
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
        FlightService::get_flight_info(self.sql.as_ref(), request)
            .await
            .map_err(client_bytes)
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        // Planning is synchronous here, so the first poll is already complete: no further
        // descriptor, progress 1.0; results are read with DoGet as usual.
        let info = FlightService::get_flight_info(self.sql.as_ref(), request)
            .await
            .map_err(client_bytes)?
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
            .map_err(Error::encode("a schema result"))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(self.sql.as_ref(), request)
            .await
            .map_err(client_bytes)
    }

    async fn do_put(
        &self,
        request: Request<Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(self.sql.as_ref(), request)
            .await
            .map_err(client_bytes)
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(self.sql.as_ref(), request)
            .await
            .map_err(client_bytes)
    }

    async fn list_actions(
        &self,
        request: Request<arrow_flight::Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        // arrow-flight lists every Flight SQL action; these always answer UNIMPLEMENTED here
        // (no transactions, savepoints or Substrait plans), so they are not offered.
        const NOT_OFFERED: [&str; 5] = [
            "CreatePreparedSubstraitPlan",
            "BeginTransaction",
            "EndTransaction",
            "BeginSavepoint",
            "EndSavepoint",
        ];
        let all = FlightService::list_actions(self.sql.as_ref(), request)
            .await?
            .into_inner();
        let offered = futures::StreamExt::filter(all, |a| {
            let keep = !matches!(a, Ok(t) if NOT_OFFERED.contains(&t.r#type.as_str()));
            futures::future::ready(keep)
        });
        Ok(Response::new(Box::pin(offered)))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<arrow_flight::FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not supported"))
    }
}
