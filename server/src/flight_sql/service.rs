//! arrow-flight's `FlightSqlService` for [`FlightSql`]: one- or two-line delegations, each
//! converting our [`Error`](crate::error::Error) to a status at the boundary.

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
    CommandStatementUpdate, DoPutPreparedStatementResult, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, FlightDescriptor,
    FlightInfo, HandshakeRequest, HandshakeResponse, RenewFlightEndpointRequest, Ticket,
};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::FlightSql;
use super::statement::SessionBack;
use super::wire::{BoxStream, action_result, one_batch};
use crate::auth;
use crate::error::Error;

type DataStream = Response<BoxStream<arrow_flight::FlightData>>;

const NO_TRANSACTIONS: &str = "transactions are not supported: every statement commits on its own";

impl FlightSql {
    async fn metadata_get(&self, cmd: Command) -> Result<DataStream, Status> {
        Ok(Response::new(one_batch(self.metadata_batch(cmd).await?)))
    }

    fn metadata_flight_info(
        &self,
        cmd: Command,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(
            self.metadata_info(cmd, request.into_inner())?,
        ))
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
        info!(user = %auth::principal(&request).user, "handshake");
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
    ) -> Result<DataStream, Status> {
        Err(Error::invalid(format!("unknown ticket type {}", message.type_url)).into())
    }

    async fn do_put_error_callback(
        &self,
        _request: Request<PeekableFlightDataStream>,
        error: arrow_flight::sql::server::DoPutError,
    ) -> Result<Response<BoxStream<arrow_flight::PutResult>>, Status> {
        use arrow_flight::sql::server::DoPutError;
        Err(Error::invalid(match error {
            // ADBC's Flight SQL driver sends its command with the first batch's schema, and
            // nothing at all for a table without batches (an empty pyarrow Table).
            DoPutError::MissingCommand => "DoPut carried no message, so no command or target: \
                a bulk ingest of no batches sends nothing (ADBC's Flight SQL driver with an \
                empty pyarrow Table); send a RecordBatch of 0 rows to create an empty frame"
                .to_string(),
            other => format!("DoPut needs a Flight SQL command in its first message: {other}"),
        })
        .into())
    }

    // ---- GetFlightInfo ------------------------------------------------------------------------

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if query.transaction_id.is_some() {
            return Err(Error::Unimplemented(NO_TRANSACTIONS.into()).into());
        }
        let who = auth::principal(&request);
        let slot = auth::session_slot(&request);
        let info = self
            .flight_info_for_query(
                &who,
                SessionBack { caller: &who, slot },
                &query.query,
                bytes::Bytes::new(),
                request.into_inner(),
                None,
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
        let slot = auth::session_slot(&request);
        let info = self
            .prepared_info(
                &who,
                slot,
                &cmd.prepared_statement_handle,
                request.into_inner(),
            )
            .await?;
        Ok(Response::new(info))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetCatalogs(query), request)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetDbSchemas(query), request)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetTables(query), request)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetTableTypes(query), request)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetSqlInfo(query), request)
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetPrimaryKeys(query), request)
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetExportedKeys(query), request)
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetImportedKeys(query), request)
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetCrossReference(query), request)
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.metadata_flight_info(Command::CommandGetXdbcTypeInfo(query), request)
    }

    // ---- DoGet --------------------------------------------------------------------------------

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        let who = auth::principal(&request);
        let t = self.open_ticket(&ticket.statement_handle)?;
        Ok(self.execute_ticket(&who, t).await?)
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        let who = auth::principal(&request);
        Ok(self
            .get_prepared(&who, &query.prepared_statement_handle)
            .await?)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetCatalogs(query)).await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetDbSchemas(query)).await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetTables(query)).await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetTableTypes(query))
            .await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetSqlInfo(query)).await
    }

    async fn do_get_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetPrimaryKeys(query))
            .await
    }

    async fn do_get_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetExportedKeys(query))
            .await
    }

    async fn do_get_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetImportedKeys(query))
            .await
    }

    async fn do_get_cross_reference(
        &self,
        query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetCrossReference(query))
            .await
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<DataStream, Status> {
        self.metadata_get(Command::CommandGetXdbcTypeInfo(query))
            .await
    }

    // ---- DoPut --------------------------------------------------------------------------------

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if cmd.transaction_id.is_some() {
            return Err(Error::Unimplemented(NO_TRANSACTIONS.into()).into());
        }
        let who = auth::principal(&request);
        let slot = auth::session_slot(&request);
        Ok(self.update_statements(&who, slot, &cmd.query).await?)
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = auth::principal(&request);
        Ok(self.ingest(&who, cmd, request.into_inner()).await?)
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let who = auth::principal(&request);
        let handle = query.prepared_statement_handle;
        Ok(self.bind(&who, &handle, request.into_inner()).await?)
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let who = auth::principal(&request);
        let slot = auth::session_slot(&request);
        let handle = query.prepared_statement_handle;
        Ok(self
            .execute_prepared_update(&who, slot, &handle, request.into_inner())
            .await?)
    }

    // ---- actions ------------------------------------------------------------------------------

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        if query.transaction_id.is_some() {
            return Err(Error::Unimplemented(NO_TRANSACTIONS.into()).into());
        }
        let who = auth::principal(&request);
        Ok(self.prepare(&who, query.query).await?)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles are stateless: nothing to free. A handle we never sealed is refused; an
        // expired one of ours closes quietly (clients close at cleanup, however late).
        self.signer
            .open("prepared", &query.prepared_statement_handle)?;
        Ok(())
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Error::Unimplemented(NO_TRANSACTIONS.into()).into())
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Error::Unimplemented(NO_TRANSACTIONS.into()).into())
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(Error::Unimplemented("savepoints are not supported".into()).into())
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Error::Unimplemented("savepoints are not supported".into()).into())
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let who = auth::principal(&request);
        let info =
            FlightInfo::decode(query.info).map_err(|_| Error::invalid("malformed FlightInfo"))?;
        let status = self.cancel_info(&who, &info).await?;
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
                    .map_err(|_| Error::invalid("malformed CancelFlightInfoRequest"))?;
                let info = req
                    .info
                    .ok_or_else(|| Error::invalid("CancelFlightInfo without info"))?;
                let status = self.cancel_info(&who, &info).await?;
                Ok(action_result(CancelFlightInfoResult {
                    status: status as i32,
                }))
            }
            "RenewFlightEndpoint" => {
                let req = RenewFlightEndpointRequest::decode(action.body)
                    .map_err(|_| Error::invalid("malformed RenewFlightEndpointRequest"))?;
                let ep = req
                    .endpoint
                    .ok_or_else(|| Error::invalid("RenewFlightEndpoint without endpoint"))?;
                Ok(action_result(self.renew(&who, ep)?))
            }
            "SetSessionOptions" => Ok(action_result(
                self.set_session_options(&who, slot, action.body).await?,
            )),
            "GetSessionOptions" => Ok(action_result(self.get_session_options(&who))),
            "CloseSession" => Ok(action_result(self.close_session(slot))),
            other => Err(Error::Unimplemented(format!(
                "unknown action {other} (ListActions lists those this server has)"
            ))
            .into()),
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
