//! Prepared statements, stateless: the handle carries the SQL, the session it was prepared in
//! and the bound parameters; binding returns a new handle (DoPutPreparedStatementResult), so no
//! node keeps prepared state in memory.

use std::sync::Arc;

use apiary_proto::v1::PreparedStatementV1;
use apiary_runtime::Session;
use apiary_storage::Ident;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{ActionCreatePreparedStatementResult, DoPutPreparedStatementResult};
use arrow_flight::{FlightDescriptor, FlightInfo};

use super::FlightSql;
use super::statement::{SessionBack, remember_changes};
use super::ticket::{options_of, options_to, session_of};
use super::wire::{
    batch_rows, decode_param_rows, encode_params, ipc_schema, read_batches, wire_schema, wire_type,
};
use crate::auth::{Principal, SessionSlot};
use crate::error::Error;
use crate::error::Result;

/// The principal as the prepared statement's session sees it.
fn in_session_of(who: &Principal, p: &PreparedStatementV1) -> Principal {
    let mut in_session = who.clone();
    in_session.hive = p.default_hive.clone();
    in_session.box_name = p.default_box.clone();
    in_session.options = options_of(&p.options);
    in_session
}

impl FlightSql {
    /// CreatePreparedStatement: result schema and one concretely typed field per parameter
    /// (Utf8 where nothing constrains the type).
    pub(super) async fn prepare(
        &self,
        who: &Principal,
        sql: String,
    ) -> Result<ActionCreatePreparedStatementResult> {
        let session = session_of(who)?;
        let stmt = self.parse_one(&sql)?;
        let info = self.service.statement_info(&session, &stmt).await?;
        let dataset = if info.returns_rows {
            wire_schema(&info.schema)
        } else {
            Arc::new(Schema::empty())
        };
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
            sql,
            parameters: bytes::Bytes::new(),
            default_hive: session.hive.to_string(),
            default_box: session.box_name.to_string(),
            user: who.user.clone(),
            expires_at_ms: self.expiry(),
            options: options_to(&session.options),
            dataset_schema: match info.returns_rows {
                true => ipc_schema(&dataset)?,
                false => bytes::Bytes::new(),
            },
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: self.seal_prepared(&handle),
            dataset_schema: ipc_schema(&dataset)?,
            parameter_schema: ipc_schema(&params)?,
        })
    }

    /// GetFlightInfo for a prepared statement: as for a statement, in the handle's session.
    pub(super) async fn prepared_info(
        &self,
        who: &Principal,
        slot: Option<SessionSlot>,
        handle: &[u8],
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        let p = self.open_prepared(handle, who)?;
        // One schema from prepare to stream: the one CreatePreparedStatement announced.
        let announced = match p.dataset_schema.is_empty() {
            true => None,
            false => Some(Arc::new(
                arrow::ipc::convert::try_schema_from_ipc_buffer(&p.dataset_schema)
                    .map_err(|_| Error::invalid("malformed prepared statement handle"))?,
            )),
        };
        self.flight_info_for_query(
            &in_session_of(who, &p),
            SessionBack { caller: who, slot },
            &p.sql,
            p.parameters,
            descriptor,
            announced,
        )
        .await
    }

    /// DoPut with parameters for a query: bind them into a new handle.
    pub(super) async fn bind(
        &self,
        who: &Principal,
        handle: &[u8],
        data: PeekableFlightDataStream,
    ) -> Result<DoPutPreparedStatementResult> {
        let mut p = self.open_prepared(handle, who)?;
        let batches: Vec<RecordBatch> = read_batches(data, self.max_param_rows).await?;
        p.parameters = encode_params(&batches)?;
        p.expires_at_ms = self.expiry();
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(self.seal_prepared(&p)),
        })
    }

    /// DoPut for a prepared update: run it once per parameter row sent (or bound before).
    pub(super) async fn execute_prepared_update(
        &self,
        who: &Principal,
        slot: Option<SessionSlot>,
        handle: &[u8],
        data: PeekableFlightDataStream,
    ) -> Result<i64> {
        let p = self.open_prepared(handle, who)?;
        let mut rows = Vec::new();
        for b in &read_batches(data, self.max_param_rows).await? {
            rows.extend(batch_rows(b)?);
        }
        if rows.is_empty() {
            rows = decode_param_rows(&p.parameters)?;
        }
        let session = Session {
            hive: Ident::parse(&p.default_hive)?,
            box_name: Ident::parse(&p.default_box)?,
            user: who.user.clone(),
            role: who.role,
            options: options_of(&p.options),
        };
        let stmt = self.parse_one(&p.sql)?;
        let (n, after) = self.run_update(&session, &stmt, rows).await?;
        remember_changes(slot, &session_of(who)?, &session, &after);
        Ok(n as i64)
    }

    /// DoGet on a prepared-statement handle (some clients redeem the handle itself).
    pub(super) async fn get_prepared(
        &self,
        who: &Principal,
        handle: &[u8],
    ) -> Result<tonic::Response<super::wire::BoxStream<arrow_flight::FlightData>>> {
        let p = self.open_prepared(handle, who)?;
        let t = self.ticket_of_prepared(who, p)?;
        self.execute_ticket(who, t).await
    }
}
